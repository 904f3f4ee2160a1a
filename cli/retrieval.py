"""`llqa eval passkey | topics | lines`: passkey retrieval and LongChat topic and line retrieval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    ProgressOpt,
    SeedOpt,
    check_ctx,
    console,
    float_list,
    int_list,
    locks_out,
    shared_options,
)
from llqa.checks import check_range
from llqa.errors import LlqaError
from llqa.models import DEFAULT_MODEL

app = typer.Typer(rich_markup_mode=None)


_RETRIEVAL_ENGINE_HELP = (
    " Greedy decoding with a KV cache, full attention (SDPA), Position Interpolation from --ctx, prompts "
    "grouped by length into left-padded batches under --batch-tokens. The chat template is applied when "
    "the model has one (--chat-template auto) and its tokens count towards the prompt length. Prompts "
    "longer than the context are skipped and counted (--overlong skip), cut in the middle (middle: the "
    "task at the start and the question at the end survive) or run as they are (keep). Results resume "
    "from --out/cells.jsonl; result.json, result.csv and PNG plots land in --out."
)
RetrChatOpt = Annotated[
    str, typer.Option("--chat-template", help="auto (apply the model's chat template when it has one) or none.")
]
RetrOverlongOpt = Annotated[
    str,
    typer.Option(
        "--overlong",
        help="Prompts longer than the context: skip (counted, not scored), middle (truncate the middle) or keep.",
    ),
]
RetrBatchOpt = Annotated[
    int | None,
    typer.Option("--batch-tokens", help="Batch size x longest prompt per batch. Default: 262144 on GPU, 16384 on CPU."),
]
RetrNewTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="Tokens generated per prompt at most.")]


@dataclass(frozen=True)
class RetrievalOptions:
    """The options passkey, topics and lines share, declared once, in --help order (see `shared_options`)."""

    chat_template: RetrChatOpt = "auto"
    overlong: RetrOverlongOpt = "skip"
    max_new_tokens: RetrNewTokensOpt = None
    batch_tokens: RetrBatchOpt = None
    seed: SeedOpt = 0
    dtype: DtypeOpt = "auto"
    device: DeviceOpt = "auto"
    out: OutOpt = Path("runs/retrieval")  # each command sets its own
    overwrite: OverwriteOpt = False
    progress: ProgressOpt = True


@app.command(
    "passkey",
    short_help="Passkey retrieval over a length x depth grid (PI / LongLoRA protocol).",
    help="Passkey retrieval (Position Interpolation / LongLoRA protocol). Each prompt: the task line, "
    "filler ('The grass is green. The sky is blue. ...' repeated, or --haystack text), the line "
    "'The pass key is K. Remember it. K is the pass key.' at a depth, more filler, then 'What is the "
    "pass key? The pass key is'. Keys: random 5-digit numbers, seeded per cell. Prompts have exactly "
    "the requested number of tokens (chat template included). A trial is correct when the first "
    "integer generated equals the key. Reported: accuracy per length and per (length, depth), and the "
    "effective context window (PI): the largest tested length k such that every tested length <= k "
    "reaches accuracy >= --threshold. Diagnostic, not used for the window: near misses (the first "
    "integer is one digit dropped, added or changed from the key) and accuracy within one edit."
    + _RETRIEVAL_ENGINE_HELP,
)
@shared_options(RetrievalOptions, defaults={"out": Path("runs/passkey")})
@locks_out
def passkey_cmd(
    opts: RetrievalOptions,
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    lengths: Annotated[
        str | None,
        typer.Option(
            "--lengths",
            "-L",
            help="Prompt lengths in tokens, comma-separated. "
            "Default: 32 lengths uniformly up to the context (ctx/32, ..., ctx).",
        ),
    ] = None,
    depths: Annotated[
        str | None,
        typer.Option(
            "--depths",
            help="Key depths in [0, 1], comma-separated (share of the filler before the key). Default: 0,0.1,...,1.0.",
        ),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials (keys) per (length, depth).")] = 10,
    haystack: Annotated[
        str,
        typer.Option(
            "--haystack",
            help="filler (PI's repeated sentences) or a folder of .txt "
            "files (e.g. essays) / a text file, repeated when too short.",
        ),
    ] = "filler",
    threshold: Annotated[
        float, typer.Option("--threshold", help="Accuracy a length must reach for the effective context window.")
    ] = 0.2,
) -> None:
    from evals.passkey import DEFAULT_DEPTHS, DEFAULT_MAX_NEW_TOKENS, PasskeyConfig, run_passkey
    from llqa.models import load_model

    check_ctx(ctx)
    check_range("--batch-tokens", opts.batch_tokens, low=1, example="16384")
    cfg = PasskeyConfig(
        lengths=int_list(lengths, "--lengths", "1024,2048,4096"),
        depths=float_list(depths, "--depths", "0,0.5,1") or list(DEFAULT_DEPTHS),
        trials=trials,
        seed=opts.seed,
        haystack=haystack,
        chat_template=opts.chat_template,
        overlong=opts.overlong,
        max_new_tokens=opts.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        batch_tokens=opts.batch_tokens,
        threshold=threshold,
    )
    if cfg.haystack != "filler" and not Path(cfg.haystack).expanduser().exists():
        raise LlqaError(
            f"--haystack {cfg.haystack}: no such file or folder",
            "pass `filler` or a folder of .txt files (e.g. essays)",
        )
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device)
    summary = run_passkey(loaded, cfg, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx)
    if summary is None:  # a torchrun rank other than 0: its trials are logged, rank 0 writes the result
        return
    table = Table(title=f"passkey — {loaded.info.spec} at ctx {ctx or loaded.info.target_ctx}")
    for col in ("length", "trials", "accuracy", "skipped"):
        table.add_column(col, justify="right")
    for r in summary["by_length"]:
        acc = "—" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        table.add_row(str(r["length"]), str(r["trials"]), acc, str(r["skipped"]))
    console.print(table)
    console.print(
        f"effective context window (accuracy >= {cfg.threshold:g}): "
        f"{summary['effective_context_window']} tokens; results in {opts.out}"
    )


def _longeval(
    task: str,
    opts: RetrievalOptions,
    *,
    model,
    ctx,
    testcases,
    sizes,
    generate,
    generate_only,
    conversations,
    cases,
    limit,
    judge_cmd,
) -> None:
    from evals.longchat import LongEvalConfig, load_testcases, prepare_testcases, run_longeval
    from llqa.models import load_model, load_tokenizer, resolve

    check_ctx(ctx)
    check_range("--batch-tokens", opts.batch_tokens, low=1, example="16384")
    cfg = LongEvalConfig(
        task=task,
        sizes=int_list(sizes, "--sizes", "1,5,10"),
        testcases=str(testcases) if testcases else None,
        generate=generate or generate_only,
        conversations=str(conversations) if conversations else None,
        cases=cases,
        limit=limit,
        seed=opts.seed,
        chat_template=opts.chat_template,
        overlong=opts.overlong,
        max_new_tokens=opts.max_new_tokens,
        batch_tokens=opts.batch_tokens,
        judge_cmd=judge_cmd,
    )
    if generate_only:
        files = prepare_testcases(cfg, opts.out, load_tokenizer(resolve(model)) if task == "lines" else None)
        for n, path in files.items():
            console.print(f"{n}: {path}")
        return
    # bad or missing data fails before the weights load: every file is found and parsed
    for path in prepare_testcases(cfg, opts.out, load_tokenizer(resolve(model))).values():
        load_testcases(path, task)
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device)
    rows = run_longeval(loaded, cfg, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx)
    if rows is None:  # a torchrun rank other than 0: its cases are logged, rank 0 writes the result
        return
    table = Table(title=f"LongChat {task} — {loaded.info.spec} at ctx {ctx or loaded.info.target_ctx}")
    cols = ["N", "cases", "skipped", "mean prompt tokens", "accuracy"]
    cols += ["mean F1", "judge"] if task == "topics" else []
    for col in cols:
        table.add_column(col, justify="right")

    def fmt(v):
        return "—" if v is None else f"{v:.2f}"

    for r in rows:
        cells = [str(r["n"]), str(r["cases"]), str(r["skipped"]), f"{r['mean_prompt_tokens']:.0f}", fmt(r["accuracy"])]
        if task == "topics":
            cells += [fmt(r["mean_f1"]), fmt(r["judge_accuracy"])]
        table.add_row(*cells)
    console.print(table)
    console.print(f"results in {opts.out}")


_LONGEVAL_DATA_HELP = (
    " Test cases: LongChat's own files (N_{task}.jsonl) from --testcases DIR (searched recursively); without it "
    "the published files are downloaded from LongChat's GitHub repository (offline: an error naming the fix). "
    "--generate writes seeded test cases in the same format into --out/testcases for the --sizes the folder lacks."
)
TestcasesOpt = Annotated[
    Path | None,
    typer.Option(
        "--testcases", help="Folder holding LongChat N_<task>.jsonl files (e.g. LongChat's longeval/evaluation)."
    ),
]
GenerateOpt = Annotated[
    bool,
    typer.Option(
        "--generate",
        help="Write seeded test cases for the --sizes that --testcases lacks (into --out/testcases), then evaluate.",
    ),
]
GenerateOnlyOpt = Annotated[bool, typer.Option("--generate-only", help="Write the test cases and stop.")]
CasesOpt = Annotated[int, typer.Option("--cases", help="Test cases per generated file (LongChat: 50).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N cases of each file.")]


@app.command(
    "topics",
    short_help="LongChat topic retrieval: name the first of N conversation topics.",
    help="LongChat (LongEval) topic retrieval: a record of N conversations, then 'What is the first "
    "topic we discussed?'. Scored without a GPT judge: match = the gold topic (topics[0]), lower-cased "
    "with punctuation and a/an/the removed, occurs as a contiguous word sequence in the answer "
    "(accuracy = mean match per N); f1 = SQuAD token F1 against the gold topic. --judge-cmd CMD adds an "
    "optional judge: CMD gets JSON {task, test_id, question, gold, answer} on stdin and prints "
    '{"correct": true|false} or yes/no. Max new tokens default 50 (LongChat).'
    + _LONGEVAL_DATA_HELP.format(task="topics")
    + _RETRIEVAL_ENGINE_HELP,
)
@shared_options(RetrievalOptions, defaults={"out": Path("runs/topics")})
@locks_out
def topics_cmd(
    opts: RetrievalOptions,
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    testcases: TestcasesOpt = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            "--sizes",
            help="Numbers of topics N, comma-separated. Default: every file in --testcases (downloaded: 1,5,10).",
        ),
    ] = None,
    generate: GenerateOpt = False,
    generate_only: GenerateOnlyOpt = False,
    conversations: Annotated[
        Path | None,
        typer.Option(
            "--conversations",
            help="jsonl of {topic, conversation} "
            "(LongChat's conversations.jsonl) or {title, text} documents "
            "for --generate. Default: LongChat's, downloaded.",
        ),
    ] = None,
    cases: CasesOpt = 50,
    limit: LimitOpt = None,
    judge_cmd: Annotated[str | None, typer.Option("--judge-cmd", help="Optional judge command (see above).")] = None,
) -> None:
    _longeval(
        "topics",
        opts,
        model=model,
        ctx=ctx,
        testcases=testcases,
        sizes=sizes,
        generate=generate,
        generate_only=generate_only,
        conversations=conversations,
        cases=cases,
        limit=limit,
        judge_cmd=judge_cmd,
    )


@app.command(
    "lines",
    short_help="LongChat line retrieval: the number on one of N lines.",
    help="LongChat (LongEval) line retrieval: N lines 'line <name>: REGISTER_CONTENT is <number>', "
    "then a question about one line. Correct when the last integer in the output equals expected_number "
    "(LongChat's rule); accuracy per N. Max new tokens default 100 (LongChat)."
    + _LONGEVAL_DATA_HELP.format(task="lines")
    + _RETRIEVAL_ENGINE_HELP,
)
@shared_options(RetrievalOptions, defaults={"out": Path("runs/lines")})
@locks_out
def lines_cmd(
    opts: RetrievalOptions,
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    testcases: TestcasesOpt = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            "--sizes",
            help="Numbers of lines N, comma-separated. Default: every file in --testcases (downloaded: 200,300,400).",
        ),
    ] = None,
    generate: GenerateOpt = False,
    generate_only: GenerateOnlyOpt = False,
    cases: CasesOpt = 50,
    limit: LimitOpt = None,
) -> None:
    _longeval(
        "lines",
        opts,
        model=model,
        ctx=ctx,
        testcases=testcases,
        sizes=sizes,
        generate=generate,
        generate_only=generate_only,
        conversations=None,
        cases=cases,
        limit=limit,
        judge_cmd=None,
    )
