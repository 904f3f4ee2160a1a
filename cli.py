"""`llqa`: the command line. Option parsing and calls into the library packages, nothing else.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `llqa --help` is instant.
User mistakes arrive as `LlqaError` and leave as one red line with exit code 2; set LLQA_DEBUG=1 to
see the traceback.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Annotated, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from llqa.errors import LlqaError
from llqa.models import DEFAULT_MODEL

app = typer.Typer(
    name="llqa",
    help="Long-context LMs in one tool: build LongQA, score long-context perplexity and retrieval, "
    "and extend a model's context with Position Interpolation, S2-Attn and LoRA+.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts quote prompt formats like [INST]...[/INST]: print them literally
)
eval_app = typer.Typer(
    help="Score a model: perplexity and retrieval evals.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

# ----------------------------------------------------------------------------- shared options

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Alias (smollm2-135m, 7b, 13b, 70b; see `llqa models`), random:<shape>, a hub id, "
        "or a local model / adapter / llqa run directory.",
    ),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx",
        help="Target context in tokens. Above the model's native context, Position Interpolation "
        "applies linear RoPE scaling by ctx/native, multiplied with any scaling the checkpoint carries.",
    ),
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (every sampled choice derives from it).")]


def locks_out(command):
    """Hold a lock on an eval's --out (`opts.out`) while the command runs: a second run into it is refused with the
    holder's PID instead of computing every cell twice. Under torchrun each rank locks the folder it writes
    (rank 0 --out, rank r --out/rank{r}). The lock also checks --out: a file or an unwritable place is one line."""

    @functools.wraps(command)
    def wrapper(*args, opts, **kwargs):
        from llqa.io import OutLock
        from llqa.ranks import dist_env

        rank = dist_env()[0]
        with OutLock(opts.out if rank == 0 else opts.out / f"rank{rank}"):
            return command(*args, opts=opts, **kwargs)

    return wrapper


def _check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx <= 0:
        raise LlqaError(f"--ctx must be a positive number of tokens, got {ctx}", "e.g. --ctx 32768")


def shared_options(
    options_class,
    *,
    own_after: str | None = None,
    omit: tuple[str, ...] = (),
    defaults: dict | None = None,
    annotations: dict | None = None,
):
    """Add a frozen dataclass's fields (less `omit`) to a command's options and pass them as one `opts` object.

    Typer reads a command's options from its signature, so the wrapper carries the combined one, in --help
    order: the command's own parameters first, or right after the field `own_after`. For this command only,
    `defaults` replaces a field's default and `annotations` its `Annotated[type, typer.Option(...)]` (e.g. its
    help text). The fields' annotations are such `Annotated` types; a field without a default is a required option.
    """
    hints = get_type_hints(options_class, include_extras=True)
    defaults, annotations = defaults or {}, annotations or {}
    shared = []
    for f in fields(options_class):
        if f.name in omit:
            continue
        default = inspect.Parameter.empty if f.default is MISSING else f.default
        shared.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(f.name, default),
                annotation=annotations.get(f.name, hints[f.name]),
            )
        )
    split = 0 if own_after is None else 1 + [p.name for p in shared].index(own_after)

    def decorate(command):
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)  # keyword-only, as they may follow shared ones
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "opts"
        ]
        params = shared[:split] + own + shared[split:]

        @functools.wraps(command)
        def wrapper(**options):
            opts = options_class(**{p.name: options.pop(p.name) for p in shared})
            return command(opts=opts, **options)

        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# ----------------------------------------------------------------------------- models / info


@app.command("models")
def models_cmd() -> None:
    """List the model aliases: native context, parameters, where each comes from."""
    from llqa.models import ALIASES, RANDOM_SHAPES

    table = Table(title="llqa model aliases")
    for col in ("alias", "hub id", "native ctx", "params", "source"):
        table.add_column(col)
    for a in ALIASES.values():
        table.add_row(a.name, a.hub_id, str(a.native_ctx), a.params, a.about)
    console.print(table)
    console.print(
        f"Random-weight shapes for speed/memory work: "
        f"{', '.join('random:' + s for s in RANDOM_SHAPES)}. "
        "Any hub id or local directory is accepted too."
    )


@app.command("info")
def info_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a model's resolved configuration at --ctx (no weights are loaded)."""
    import json

    from llqa.models import describe

    _check_ctx(ctx)
    info = describe(model, ctx=ctx, dtype=dtype, device=device)
    if json_out:
        console.print_json(json.dumps(info.to_dict()))
        return
    table = Table(title=f"llqa info: {model}", show_header=False)
    rows = [
        ("source", info.source),
        ("architecture", info.architecture),
        ("layers", str(info.layers)),
        ("heads / KV heads", f"{info.heads} / {info.kv_heads}"),
        ("hidden", str(info.hidden)),
        ("vocab", str(info.vocab)),
        ("native context", str(info.native_ctx)),
        ("target context", str(info.target_ctx)),
        ("RoPE scaling factor", f"{info.rope_factor:g} (checkpoint {info.checkpoint_rope_factor:g})"),
        ("dtype", info.dtype),
        ("device", info.device),
        ("parameters", f"{info.params:,}"),
    ]
    if info.adapter:
        rows.append(("adapter", info.adapter))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


# ----------------------------------------------------------------------------- eval: perplexity (issue 3)

PPL_SEMANTICS_HELP = (
    "Scored tokens: windows of L tokens slide over each document (--concat: over all documents joined); "
    "sliding (default, Press et al./PI) starts a window every --stride tokens and scores only tokens no "
    "earlier window scored, so each token after the first is scored exactly once with >= L-S tokens of "
    "context; all-tokens (LongLoRA eval.py) scores every token of every full window; disjoint "
    "(lm-eval-harness) scores each token once with context restarting every L-1 tokens. "
    "Reported per L: ppl = exp(total NLL / scored tokens) (headline), window_ppl = exp(mean of window mean "
    "NLLs) (YaRN; LongLoRA with all-tokens), bits per byte over the UTF-8 bytes of the scored tokens. "
    "--bos auto puts the tokenizer's BOS before each document when the tokenizer adds one by default; "
    "never mid-document. One model at PI context --ctx (default: the longest L) scores every L; --no-pi "
    "keeps the model's own RoPE, so L beyond its context measures extrapolation (result.json: pi false)."
)
LengthsOpt = Annotated[
    str | None,
    typer.Option(
        "--lengths", "-L", help="Window lengths, comma-separated (e.g. 2048,4096,8192). Default: --ctx, else 4096."
    ),
]
StrideOpt = Annotated[
    int,
    typer.Option(
        "--stride",
        "-S",
        help="Tokens between window starts (sliding, all-tokens); must be < L for sliding. Ignored by disjoint.",
    ),
]
ScoringOpt = Annotated[str, typer.Option("--scoring", help="sliding | all-tokens | disjoint (see above).")]
BosOpt = Annotated[
    str,
    typer.Option(
        "--bos",
        help="auto | always | never: one BOS token before each "
        "document (auto: when the tokenizer adds one by default).",
    ),
]
ConcatOpt = Annotated[
    bool,
    typer.Option(
        "--concat/--per-document",
        help="Join all documents into one stream (LongLoRA) instead of keeping windows inside each document.",
    ),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Keep the first N tokens of each document (BOS included).")
]
BatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-tokens",
        help="Tokens per forward pass (windows of equal length batched). Default: 65536 on GPU, 8192 on CPU.",
    ),
]
TextFieldOpt = Annotated[str | None, typer.Option("--text-field", help="Text column of a jsonl/parquet file.")]
MaxDocsOpt = Annotated[int | None, typer.Option("--max-docs", help="Score the first N documents.")]
MaxBooksOpt = Annotated[int | None, typer.Option("--max-docs", help="Score the first N books.")]  # pg19
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Discard finished cells in --out and start afresh (default: resume).")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")]
SdpaOpt = Annotated[
    str,
    typer.Option(
        "--sdpa-backend",
        help="Preferred torch SDPA kernel: auto (torch's "
        "choice), cudnn, flash, efficient or math; others remain fallbacks.",
    ),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub dataset revision (branch, tag or commit).")]
PiOpt = Annotated[
    bool,
    typer.Option(
        "--pi/--no-pi",
        help="--pi (default): Position Interpolation to --ctx (or "
        "the longest L). --no-pi: the model at its own RoPE and context; longer "
        "windows are scored anyway (an extrapolation measurement).",
    ),
]
CompileOpt = Annotated[
    str,
    typer.Option(
        "--compile",
        help="torch.compile the decoder layers: auto (default: "
        "mode default on CUDA, off elsewhere), off, default, "
        "max-autotune-no-cudagraphs or reduce-overhead (CUDA graphs). "
        "Costs a one-time compilation per L (tens of seconds on GPU); worth it "
        "for long runs. Same numbers up to kernel rounding.",
    ),
]


def _parse_lengths(lengths: str | None, ctx: int | None) -> list[int]:
    if lengths is None:
        return [ctx or 4096]
    try:
        return [int(x) for x in lengths.replace(" ", "").split(",") if x]
    except ValueError:
        raise LlqaError(
            f"--lengths {lengths} is not a comma-separated list of integers", "e.g. --lengths 2048,4096,8192"
        ) from None


@dataclass(frozen=True)
class PerplexityOptions:
    """The options the three perplexity commands share, declared once, in --help order.

    `shared_options` turns the fields into command-line options; the command receives them as one
    `opts` object. --max-docs is a field only because --help lists it among these options.
    """

    model: ModelOpt = DEFAULT_MODEL
    lengths: LengthsOpt = None
    ctx: CtxOpt = None
    stride: StrideOpt = 256
    scoring: ScoringOpt = "sliding"
    bos: BosOpt = "auto"
    concat: ConcatOpt = False
    max_docs: MaxDocsOpt = None
    max_tokens: MaxTokensOpt = None
    batch_tokens: BatchTokensOpt = None
    sdpa_backend: SdpaOpt = "auto"
    pi: PiOpt = True
    compile_mode: CompileOpt = "auto"
    dtype: DtypeOpt = "auto"
    device: DeviceOpt = "auto"
    out: OutOpt = Path("runs/perplexity")
    overwrite: OverwriteOpt = False
    progress: ProgressOpt = True


def _perplexity(documents_fn, opts: PerplexityOptions) -> None:
    """Shared body of the three perplexity commands: config, model, documents, run, table."""
    from evals.perplexity import COMPILE_MODES, PerplexityConfig, run
    from llqa.models import load_model

    _check_ctx(opts.ctx)
    if opts.batch_tokens is not None and opts.batch_tokens < 1:
        raise LlqaError(f"--batch-tokens must be positive, got {opts.batch_tokens}", "e.g. --batch-tokens 65536")
    if opts.compile_mode not in COMPILE_MODES:
        raise LlqaError(f"--compile {opts.compile_mode} is unknown", f"use one of: {', '.join(COMPILE_MODES)}")
    cfg = PerplexityConfig(
        lengths=_parse_lengths(opts.lengths, opts.ctx),
        stride=opts.stride,
        scoring=opts.scoring,
        bos=opts.bos,
        concat=opts.concat,
        max_tokens=opts.max_tokens,
        ctx=opts.ctx,
        pi=opts.pi,
    )
    documents, data_info = documents_fn(cfg)  # before the weights load: bad data fails at once
    import torch

    torch.manual_seed(0)  # random:<shape> weights are then the same on every rank and every resume
    loaded = load_model(opts.model, ctx=cfg.model_ctx, dtype=opts.dtype, device=opts.device)
    result = run(
        loaded,
        documents,
        cfg,
        opts.out,
        data_info=data_info,
        overwrite=opts.overwrite,
        batch_tokens=opts.batch_tokens,
        sdpa_backend=opts.sdpa_backend,
        show_progress=opts.progress,
        compile_mode=opts.compile_mode,
    )
    if result.result_path is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    at = f"ctx {cfg.model_ctx}" if opts.pi else f"its own RoPE (ctx {loaded.info.target_ctx}, no PI)"
    table = Table(
        title=f"perplexity ({cfg.scoring}, stride {cfg.stride}) — {loaded.info.spec} at {at}, "
        f"{len(documents)} documents"
    )
    for col in ("L", "windows", "scored tokens", "ppl", "window ppl", "bits/byte"):
        table.add_column(col, justify="right")

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    for r in result.rows:
        table.add_row(
            str(r["length"]),
            f"{r['windows']:,}",
            f"{r['scored_tokens']:,}",
            fmt(r["ppl"], ".3f"),
            fmt(r["window_ppl"], ".3f"),
            fmt(r["bits_per_byte"], ".4f"),
        )
    console.print(table)
    console.print(f"result: {result.result_path}")


@eval_app.command(
    "perplexity",
    short_help="Sliding-window perplexity on your own text (file, folder, jsonl, parquet).",
    help="Sliding-window perplexity of a model on your own text (a .txt file, "
    "a folder of text files, or jsonl/parquet with a text field). " + PPL_SEMANTICS_HELP,
)
@shared_options(PerplexityOptions, defaults={"out": Path("runs/perplexity")})
@locks_out
def perplexity_cmd(
    opts: PerplexityOptions,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="A .txt file, a folder (files matching --glob), or a .jsonl/.jsonl.gz/.json/.parquet table.",
        ),
    ],
    text_field: TextFieldOpt = None,
    id_field: Annotated[
        str | None, typer.Option("--id-field", help="Column naming each row (default: file:row).")
    ] = None,
    glob: Annotated[str, typer.Option("--glob", help="Files of a --data folder to read.")] = "*.txt",
) -> None:
    from evals.perplexity import local_documents

    def documents(cfg):
        return local_documents(data, text_field or "text", id_field, glob, opts.max_docs)

    _perplexity(documents, opts)


@eval_app.command(
    "pg19",
    short_help="Sliding-window perplexity on PG19's test books.",
    help="Perplexity on the PG19 test split (100 books; hub emozilla/pg19-test, or a "
    "local copy with --data). " + PPL_SEMANTICS_HELP,
)
@shared_options(PerplexityOptions, defaults={"out": Path("runs/pg19")}, annotations={"max_docs": MaxBooksOpt})
@locks_out
def pg19_cmd(
    opts: PerplexityOptions,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="A local copy: jsonl/parquet rows with 'text', or a folder of .txt books."),
    ] = None,
    revision: RevisionOpt = None,
    text_field: TextFieldOpt = None,
) -> None:
    from evals.perplexity import pg19_documents

    def documents(cfg):
        return pg19_documents(data, revision, opts.max_docs, text_field)

    _perplexity(documents, opts)


@eval_app.command(
    "proof-pile",
    short_help="Sliding-window perplexity on proof-pile (PI protocol: 128 docs >= 32k tokens).",
    help="Perplexity on proof-pile's test split with the Position Interpolation "
    "protocol: a seeded sample of --num-docs documents with >= --min-tokens tokens, each cut to "
    "its first --min-tokens tokens; seed and document ids are recorded. Hub "
    "hoskinson-center/proof-pile, or a local jsonl/parquet copy with --data. " + PPL_SEMANTICS_HELP,
)
# The protocol fixes the documents and their length: per-document windows, cut at --min-tokens.
@shared_options(PerplexityOptions, defaults={"out": Path("runs/proof-pile")}, omit=("concat", "max_docs", "max_tokens"))
@locks_out
def proof_pile_cmd(
    opts: PerplexityOptions,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="A local copy: jsonl/parquet rows with 'text' (and 'meta'), or a folder of them."
        ),
    ] = None,
    revision: RevisionOpt = None,
    text_field: TextFieldOpt = None,
    num_docs: Annotated[int, typer.Option("--num-docs", "--max-docs", help="Documents to sample.")] = 128,
    min_tokens: Annotated[
        int,
        typer.Option(
            "--min-tokens", help="Only documents at least this long are sampled; each is cut to this many tokens."
        ),
    ] = 32768,
    seed: SeedOpt = 0,
) -> None:
    from evals.perplexity import proof_pile_documents

    if num_docs < 1 or min_tokens < 2:
        raise LlqaError("--num-docs must be >= 1 and --min-tokens >= 2", "e.g. --num-docs 128 --min-tokens 32768")

    def documents(cfg):
        from evals.perplexity import uses_bos
        from llqa.models import load_tokenizer, resolve

        tokenizer = load_tokenizer(resolve(opts.model))  # the sample depends on token counts; no weights needed
        return proof_pile_documents(
            tokenizer, uses_bos(tokenizer, cfg.bos), data, revision, num_docs, min_tokens, seed, text_field
        )

    _perplexity(documents, replace(opts, max_tokens=min_tokens))


# ----------------------------------------------------------------------------- eval: retrieval (issue 4)

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


def _int_list(value: str | None, option: str, example: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise LlqaError(
            f"{option} {value} is not a comma-separated list of integers", f"e.g. {option} {example}"
        ) from None


def _float_list(value: str | None, option: str, example: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise LlqaError(
            f"{option} {value} is not a comma-separated list of numbers", f"e.g. {option} {example}"
        ) from None


@eval_app.command(
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

    _check_ctx(ctx)
    cfg = PasskeyConfig(
        lengths=_int_list(lengths, "--lengths", "1024,2048,4096"),
        depths=_float_list(depths, "--depths", "0,0.5,1") or list(DEFAULT_DEPTHS),
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
    from evals.longchat import LongEvalConfig, prepare_testcases, run_longeval
    from llqa.models import load_model, load_tokenizer, resolve

    _check_ctx(ctx)
    cfg = LongEvalConfig(
        task=task,
        sizes=_int_list(sizes, "--sizes", "1,5,10"),
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
    # bad or missing data fails before the weights load
    prepare_testcases(cfg, opts.out, load_tokenizer(resolve(model)))
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


@eval_app.command(
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


@eval_app.command(
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


# ----------------------------------------------------------------------------- build / validate (issue 5)


def _recipe_help() -> str:
    from longqa.recipe import available_recipes

    return (
        "A shipped recipe (" + ", ".join(available_recipes()) + ") or a path to a recipe .toml file "
        "(quotas per doc_type/category, token bounds, max questions per document, split, framing, sources)."
    )


@app.command("build")
def build_cmd(
    out: OutOpt,
    recipe: Annotated[str, typer.Option("--recipe", help=_recipe_help())] = "longqa-3k",
    source_dir: Annotated[
        Path | None,
        typer.Option(
            "--source-dir",
            help="Local copies of the sources, one folder per source: DIR/narrativeqa, DIR/qasper, "
            "DIR/arxiv, DIR/leval, DIR/longalpaca (layouts in the README). Sources without one load from the hub.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the split and of every sampled choice (default: the recipe's)."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer counting n_tokens = tokens(instruction) + tokens(output), no special "
            "tokens (any --model value; default: the recipe's, smollm2-135m).",
        ),
    ] = None,
    allow_short: Annotated[
        bool,
        typer.Option("--allow-short", help="Write the set even when a quota cell cannot be filled (never padded)."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the build in a non-empty --out (everything in that folder goes)."),
    ] = False,
) -> None:
    """Build LongQA: human questions and answers over whole papers and novels, framed as LongQA frames them,
    into --out (train/test jsonl + parquet, manifest.json with checksums, a dataset card). Same inputs and
    seed give byte-identical files; a failed or killed build leaves no half-written directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from longqa.build import build
    from longqa.recipe import load_recipe

    rec = load_recipe(recipe)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:

        def progress(name: str, total: int | None):
            task = bar.add_task(name, total=total)
            return lambda n: bar.advance(task, n)

        result = build(
            rec,
            out,
            source_dir=source_dir,
            seed=seed,
            tokenizer=tokenizer,
            allow_short=allow_short,
            progress=progress,
            overwrite=overwrite,
        )
    table = Table(title=f"LongQA {rec.name} -> {result.out}")
    for col in ("cell", "quota", "built", "candidates"):
        table.add_column(col)
    for cell, v in result.manifest["cells"].items():
        style = "red" if v["built"] < v["quota"] else None
        table.add_row(cell, str(v["quota"]), str(v["built"]), str(v["candidates"]), style=style)
    console.print(table)
    c = result.counts
    console.print(
        f"{c['total']} items ({c['by_split'].get('train', 0)} train, {c['by_split'].get('test', 0)} test) "
        f"over {c['documents']} documents; sources {c['by_source']}"
    )
    for s in result.shortfalls:
        err_console.print(f"[yellow]short:[/] {s}", highlight=False)


@app.command("validate")
def validate_cmd(
    path: Annotated[Path, typer.Argument(help="A directory written by `llqa build`, or one .jsonl file.")],
    ctx: Annotated[
        int | None, typer.Option("--ctx", help="Context you will train at: items whose n_tokens exceed it are errors.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the full JSON report here.")] = None,
    recount: Annotated[
        bool,
        typer.Option(
            "--recount/--no-recount",
            help="Recount n_tokens with the manifest's tokenizer (fast tokenizer only, no torch).",
        ),
    ] = True,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer for the recount when there is no manifest (a lone .jsonl)."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="Recipe whose framing to check when there is no manifest.")
    ] = None,
    show: Annotated[int, typer.Option("--show", help="Problems listed on screen.")] = 20,
) -> None:
    """Check a LongQA build: schema and types, categories, empty fields, token counts (recounted; --ctx
    bound), duplicate and near-duplicate questions and documents, answers given away by the question,
    extractive answers absent from the document, a document in both splits, quotas, framing, control
    characters and mojibake, manifest checksums. Exit 0 when clean, 1 with errors (warnings don't fail)."""
    from rich.markup import escape

    from llqa.io import atomic_write_json, writable_file
    from longqa.validate import validate

    _check_ctx(ctx)
    if report is not None:
        writable_file(report, "--report")  # before the work, not after it
    rep = validate(path, ctx=ctx, recount=recount, tokenizer=tokenizer, recipe=recipe)
    if report is not None:
        atomic_write_json(report, rep.to_dict())
    table = Table(title=f"llqa validate {path}: {rep.items} items")
    for col in ("severity", "check", "count"):
        table.add_column(col)
    for (sev, code), n in sorted(rep.counts.items()):
        table.add_row(sev, code, str(n), style="red" if sev == "error" else "yellow")
    if rep.counts:
        console.print(table)
    for p in rep.problems[:show]:
        where = p.file + (f":{p.line}" if p.line else "") + (f" [{p.field}]" if p.field else "")
        console.print(
            f"[{'red' if p.severity == 'error' else 'yellow'}]{p.severity}[/] {p.code} {escape(where)}: "
            f"{escape(p.message)}",
            highlight=False,
            soft_wrap=True,
        )
    if rep.skipped:
        console.print(f"skipped: {'; '.join(rep.skipped)}", highlight=False)
    verdict = "[green]clean[/]" if rep.ok else "[red]errors[/]"
    console.print(
        f"{verdict}: {rep.errors} errors, {rep.warnings} warnings; checked {', '.join(rep.checked)}", highlight=False
    )
    if not rep.ok:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- train / sft / merge (issue 6)

_TRAIN_PANEL = "Training (defaults: LongLoRA paper)"
SftDataOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        metavar="PATH",
        help="LongAlpaca/LongQA json or jsonl (fields instruction, output; "
        "optional input), or a LongQA build directory (its train.jsonl). Repeatable.",
    ),
]


@dataclass(frozen=True)
class TrainOptions:
    """The options train and sft share, declared once, in --help order; each command adds its own option after
    --split (--text-field, --template) and sft its own --data help.

    `shared_options` turns the fields into command-line options; the command receives them as one `opts`
    object. The fields are TrainConfig's, with compile_mode for its `compile`.
    """

    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run directory: final adapter/model, checkpoints, train_config.json, log.jsonl, tb/."
        ),
    ]
    ctx: Annotated[
        int,
        typer.Option(
            "--ctx",
            help="Training context in tokens (required). Above the model's native context, Position Interpolation "
            "scales RoPE linearly by ctx/native. With S2-Attn it must be a multiple of 8 (ratio 1/4).",
        ),
    ]
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="Text files (one document each), folders (walked for .txt/.md/.tex/.jsonl/.json/.parquet), "
            "jsonl/json/parquet files (one document per record, --text-field). Repeatable.",
            metavar="PATH",
        ),
    ] = None
    dataset: Annotated[str | None, typer.Option("--dataset", help="Hub dataset id instead of --data.")] = None
    dataset_config: Annotated[str | None, typer.Option("--dataset-config", help="Hub dataset configuration.")] = None
    split: Annotated[str, typer.Option("--split", help="Hub dataset split.")] = "train"
    model: ModelOpt = DEFAULT_MODEL
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="longlora: S2-Attn + LoRA+; lora+: LoRA on q,k,v,o + trained embeddings and norms; lora: LoRA "
            "only; full: every weight.",
        ),
    ] = "longlora"
    attn: Annotated[
        str | None,
        typer.Option(
            "--attn",
            help="Training attention: s2 (Shifted Sparse Attention) or full. Default: s2 for longlora, full "
            "otherwise. Eval and generation always use full attention.",
        ),
    ] = None
    group_ratio: Annotated[
        float, typer.Option("--group-ratio", help="S2-Attn group size as a fraction of the sequence length.")
    ] = 0.25
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.", rich_help_panel=_TRAIN_PANEL)] = 8
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha.", rich_help_panel=_TRAIN_PANEL)] = 16
    lora_dropout: Annotated[
        float, typer.Option("--lora-dropout", help="LoRA dropout.", rich_help_panel=_TRAIN_PANEL)
    ] = 0.0
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.", rich_help_panel=_TRAIN_PANEL)] = 2e-5
    beta1: Annotated[float, typer.Option("--beta1", help="AdamW beta1.", rich_help_panel=_TRAIN_PANEL)] = 0.9
    beta2: Annotated[float, typer.Option("--beta2", help="AdamW beta2.", rich_help_panel=_TRAIN_PANEL)] = 0.95
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="AdamW weight decay.", rich_help_panel=_TRAIN_PANEL)
    ] = 0.0
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps", help="Linear warm-up steps, then a constant rate.", rich_help_panel=_TRAIN_PANEL
        ),
    ] = 20
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps.", rich_help_panel=_TRAIN_PANEL)] = 1000
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Global batch in sequences per optimizer step (= micro-batch × gradient accumulation).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 64
    micro_batch_size: Annotated[
        int, typer.Option("--micro-batch-size", help="Sequences per forward pass.", rich_help_panel=_TRAIN_PANEL)
    ] = 1
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", help="Gradient clipping norm (0: off).", rich_help_panel=_TRAIN_PANEL)
    ] = 1.0
    dtype: DtypeOpt = "auto"
    device: DeviceOpt = "auto"
    gradient_checkpointing: Annotated[
        bool,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute layer activations in backward (saves memory).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = True
    loss_chunk: Annotated[
        int,
        typer.Option(
            "--loss-chunk",
            help="Tokens per chunk of the chunked cross-entropy (no full [tokens × vocab] logits are ever built).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 4096
    save_every: Annotated[
        int,
        typer.Option(
            "--save-every",
            help="Checkpoint every N steps, at the end, and when stopped by Ctrl-C or SIGTERM (after "
            "the step in flight).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 100
    keep_checkpoints: Annotated[
        int, typer.Option("--keep-checkpoints", help="Newest checkpoints kept.", rich_help_panel=_TRAIN_PANEL)
    ] = 2
    log_every: Annotated[
        int, typer.Option("--log-every", help="TensorBoard logging period in steps.", rich_help_panel=_TRAIN_PANEL)
    ] = 1
    seed: SeedOpt = 42
    shuffle: Annotated[
        bool,
        typer.Option(
            "--shuffle/--no-shuffle", help="Shuffle sequences (seeded, per epoch).", rich_help_panel=_TRAIN_PANEL
        ),
    ] = True
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its newest checkpoint (same options; ends with the same "
            "weights as an uninterrupted run).",
        ),
    ] = False
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", help="Stop after this many steps, as if interrupted.", hidden=True)
    ] = None
    offload_activations: Annotated[
        bool,
        typer.Option(
            "--offload-activations",
            help="Keep the gradient checkpoints (each layer's input) in pinned CPU memory instead "
            "of GPU memory (copied on a side CUDA stream, prefetched back in backward); same result.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = False
    offload_fraction: Annotated[
        float,
        typer.Option(
            "--offload-fraction",
            help="With --offload-activations: offload the checkpoints of only the first this "
            "fraction of the decoder layers (1 = all; e.g. 0.75 keeps the last quarter on the GPU: less CPU traffic, "
            "more GPU memory); same result.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 1.0
    sdpa_backend: Annotated[
        str,
        typer.Option(
            "--sdpa-backend",
            help="torch SDPA kernel: auto, flash, cudnn, efficient, math; same result up to rounding.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "auto"
    compile_mode: Annotated[
        str,
        typer.Option(
            "--compile",
            help="torch.compile each decoder layer (regional; compiled once, about a minute, then faster "
            "steps): off, auto (default mode on CUDA, off on CPU), default, max-autotune-no-cudagraphs; same result "
            "up to rounding. Works with --offload-activations and S2-Attn. Best at a fixed --ctx (sft's varying "
            "lengths recompile).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "off"
    parallel: Annotated[
        str,
        typer.Option(
            "--parallel",
            help="Engine under torchrun / accelerate launch (ignored in one process): ddp (a whole model per "
            "GPU), fsdp (FSDP2: base and trained weights sharded over the GPUs, for models one GPU cannot hold, e.g. "
            "70B), auto (ddp unless the model's weights — for --method full also gradients and AdamW state — "
            "exceed half a GPU's memory). Same result; checkpoints resume under either engine and any GPU count.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "auto"


def _run_trainer(task: str, opts: TrainOptions, **own) -> None:
    """Shared body of train and sft: the TrainConfig, the run, and one line on how it ended."""
    from trainer.config import TrainConfig
    from trainer.loop import run_training

    _check_ctx(opts.ctx)
    options = {f.name: getattr(opts, f.name) for f in fields(opts)}
    options.update(data=list(opts.data or []), compile=options.pop("compile_mode"))
    cfg = TrainConfig(task=task, **options, **own)
    result = run_training(cfg, console=console)
    from trainer.distributed import launched_world

    if launched_world()[0] != 0:  # under torchrun every rank runs this; rank 0 reports
        return
    if result.finished:
        console.print(
            f"[green]done[/]: {result.steps} steps; run in {cfg.out} "
            f"(use it as --model {cfg.out}, or `llqa merge {cfg.out} --out DIR`)"
        )
    else:
        console.print(f"stopped after step {result.steps}; continue with --resume")


@app.command("train")
@shared_options(TrainOptions, own_after="split")
def train_cmd(
    opts: TrainOptions,
    text_field: Annotated[str, typer.Option("--text-field", help="Record field holding the text.")] = "text",
) -> None:
    """Continued pre-training at --ctx (LongLoRA's fine-tune.py): documents joined with EOS and packed into
    sequences of exactly ctx tokens, every token scored. Loss: mean next-token NLL over the scored tokens of
    each step's global batch (token-weighted across micro-batches), computed in fp32 chunk by chunk."""
    _run_trainer("train", opts, text_field=text_field)


@app.command("sft")
@shared_options(TrainOptions, own_after="split", annotations={"data": SftDataOpt})
def sft_cmd(
    opts: TrainOptions,
    template: Annotated[
        str,
        typer.Option(
            "--template",
            help="auto: the model's chat template when it has one, else inst; chat; "
            "inst: LongLoRA's [INST]{instruction}[/INST].",
        ),
    ] = "auto",
) -> None:
    """Supervised fine-tuning at --ctx on instruction/answer pairs; loss on answer tokens only (prompt labels
    -100): mean next-token NLL over the answer tokens of each step's global batch, in fp32, chunk by chunk.
    Items longer than ctx lose the middle of their instruction; items whose answer alone exceeds ctx are
    skipped (both counted in train_config.json)."""
    _run_trainer("sft", opts, template=template)


@app.command("merge")
def merge_cmd(
    run_dir: Annotated[Path, typer.Argument(help="An llqa train/sft run directory.")],
    out: OutOpt,
    dtype: DtypeOpt = "auto",
    device: Annotated[str, typer.Option("--device", help="Where to merge: cpu (default), cuda or cuda:N.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Merge a run into a standalone Hugging Face model: LoRA merged, trained embeddings and norms in place,
    RoPE scaling and max_position_embeddings of the trained context in config.json, tokenizer saved."""
    from trainer.merge import merge_run

    path = merge_run(run_dir, out, dtype=dtype, device=device, overwrite=overwrite)
    console.print(f"[green]merged[/] into {path} (plain transformers loads it at the trained context)")


# ----------------------------------------------------------------------------- report (issue 8)


@app.command("report")
def report_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Eval --out directories (result.json), training run directories (train_config.json, log.jsonl), "
            "result.json files, or folders holding any of them (searched recursively).",
            show_default=False,
            metavar="PATH",
        ),
    ],
    out: OutOpt = Path("report"),
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            metavar="PATH=LABEL",
            help="Label a run: PATH is a training run directory or --model value "
            "(every eval of that model), or one eval --out directory (just its run). Repeatable. Default labels: "
            "the run directory's name, or the --model value, with (PI ×f) when RoPE was scaled without training.",
        ),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="Heading of the report.")] = "llqa report",
) -> None:
    """Write a markdown report (report.md, report.json, PNG plots) into --out from any mix of eval results and
    training runs. A run is a model at one RoPE scaling: its rows line up across the tables. Tables: perplexity
    per run × eval length (token-weighted ppl, per data setting); passkey effective context window and accuracy
    per length; LongChat topic/line accuracy per N; training cost (steps, tokens, train time = sum of step
    times, tokens/s, peak GPU memory, final loss = mean of the last 10 steps). Plots: perplexity against
    length, passkey depth × length heatmaps, retrieval accuracy, loss curves. Numbers are copied from the
    result files; a cell no result provides shows as —. Files that are not llqa results are listed, not fatal."""
    from llqa.report import write_report

    rep = write_report(paths, out, names=name or [], title=title)
    for s in rep.skipped:
        err_console.print(f"[yellow]not included:[/] {s.path}: {s.reason}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]report[/]: {rep.markdown} ({len(rep.runs)} runs, {len(rep.tables)} tables, {len(rep.plots)} plots)",
        highlight=False,
    )


# ----------------------------------------------------------------------------- entry point


# Typer raises click's exceptions (or, from typer 0.22, those of its vendored copy of click): found by name, so
# either works. Usage errors are ClickExceptions; NoArgsIsHelpError is `llqa eval` with nothing after it.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_line(e: Exception) -> str:
    """A click usage error (unknown option, bad value, missing option) as one line with where to look."""
    ctx = getattr(e, "ctx", None)
    where = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"{e.format_message()}{where}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; user errors (llqa's and click's usage errors) leave as one line and exit
    code 2, Ctrl-C as one line and 130. LLQA_DEBUG=1 shows the traceback of llqa's errors."""
    try:
        code = app(args=argv, prog_name="llqa", standalone_mode=False)
    except LlqaError as e:
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(f"[bold red]{e.label}:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except _CLICK_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `llqa`, `llqa eval`: the help is the answer
            print(e.format_message())
        else:
            err_console.print(f"[bold red]error:[/] {_usage_line(e)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:  # end of input at a prompt
        err_console.print("[bold red]aborted[/]", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's cleanup runs
        code = 130
    if code == 130:  # Ctrl-C: typer turns the KeyboardInterrupt into Exit(130), which arrives here as 130
        if os.environ.get("LLQA_DEBUG"):
            raise KeyboardInterrupt
        err_console.print(
            "[bold red]interrupted[/] (results already written are kept; rerun the same command to resume)",
            highlight=False,
        )
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
