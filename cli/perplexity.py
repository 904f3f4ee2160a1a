"""`llqa eval perplexity | pg19 | proof-pile`: sliding-window perplexity on your text, PG19 and proof-pile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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
    err_console,
    int_list,
    locks_out,
    rope_options,
    shared_options,
)
from llqa.engine import EngineOptions
from llqa.errors import LlqaError
from llqa.models import DEFAULT_MODEL

app = typer.Typer(rich_markup_mode=None)


PPL_SEMANTICS_HELP = (
    "Scored tokens: windows of L tokens slide over each document (--concat: over all documents joined); "
    "sliding (default, Press et al./PI) starts a window every --stride tokens and scores only tokens no "
    "earlier window scored, so each token after the first is scored exactly once with >= L-S tokens of "
    "context; all-tokens is exactly LongLoRA eval.py's window list (starts range(0, n-L, S) less the last, "
    "each window scoring all its tokens after the first); disjoint is exactly lm-evaluation-harness "
    "loglikelihood_rolling at max_length L-1 (each token once, context restarting every L-1 tokens, the last "
    "window filled back to L tokens; with a BOS the first token is scored as the harness scores it after its "
    "prefix token). Reported per L: ppl = exp(total NLL / scored tokens) (headline), window_ppl = exp(mean "
    "of window mean NLLs) (YaRN; LongLoRA eval.py's val_perplexity with all-tokens at its --batch_size 1), "
    "bits per byte over the UTF-8 bytes of the scored tokens. An L that no document fills with one window of "
    "exactly L tokens is not measured: a warning, and its row says reached false with no numbers. "
    "--bos auto puts the tokenizer's BOS before each document when the tokenizer adds one by default; "
    "never mid-document. One model at PI context --ctx (default: the longest L) scores every L; --no-pi "
    "keeps the model's own RoPE, so L beyond its context measures extrapolation (result.json: pi false). "
    "Text files are read as UTF-8 with universal newlines (CRLF and CR as LF); each document's sha256 is "
    "recorded, and resuming into --out after the text changed is refused."
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
ScoringOpt = Annotated[
    str,
    typer.Option(
        "--scoring",
        help="sliding | all-tokens (LongLoRA eval.py's windows) | disjoint (lm-evaluation-harness "
        "loglikelihood_rolling's windows); see above.",
    ),
]
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
MaxDocsOpt = Annotated[int | None, typer.Option("--max-docs", help="Score the first N (>= 1) documents.")]
MaxBooksOpt = Annotated[int | None, typer.Option("--max-docs", help="Score the first N (>= 1) books.")]  # pg19
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
    rope: RopeOpt = None
    rope_theta: RopeThetaOpt = None
    rope_original_ctx: RopeOriginalCtxOpt = None
    compile_mode: CompileOpt = "auto"
    dtype: DtypeOpt = "auto"
    device: DeviceOpt = "auto"
    out: OutOpt = Path("runs/perplexity")
    overwrite: OverwriteOpt = False
    progress: ProgressOpt = True


def _perplexity(documents_fn, opts: PerplexityOptions) -> None:
    """Shared body of the three perplexity commands: config, model, documents, run, table."""
    from evals.perplexity import PerplexityConfig, check_unchanged, run
    from llqa.models import load_model

    check_ctx(opts.ctx)
    engine = EngineOptions(opts.batch_tokens, opts.sdpa_backend, opts.compile_mode)  # checked before any loading
    cfg = PerplexityConfig(
        lengths=[opts.ctx or 4096] if opts.lengths is None else int_list(opts.lengths, "--lengths", "2048,4096,8192"),
        stride=opts.stride,
        scoring=opts.scoring,
        bos=opts.bos,
        concat=opts.concat,
        max_tokens=opts.max_tokens,
        ctx=opts.ctx,
        pi=opts.pi,
    )
    documents, data_info = documents_fn(cfg)  # before the weights load: bad data fails at once
    if not opts.overwrite:
        check_unchanged(opts.out, documents, cfg)  # and so does a resume on changed text
    import torch

    torch.manual_seed(0)  # random:<shape> weights are then the same on every rank and every resume
    rope = rope_options(opts)
    if not opts.pi and (rope.method or rope.theta):
        raise LlqaError("--no-pi and --rope contradict each other", "drop --no-pi to extend the context by --rope")
    loaded = load_model(opts.model, ctx=cfg.model_ctx, dtype=opts.dtype, device=opts.device, rope=rope)
    result = run(
        loaded,
        documents,
        cfg,
        opts.out,
        data_info=data_info,
        overwrite=opts.overwrite,
        batch_tokens=engine.batch_tokens,
        sdpa_backend=engine.sdpa_backend,
        compile_mode=engine.compile_mode,
        show_progress=opts.progress,
    )
    if result.result_path is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    info = loaded.info
    own = f"its own RoPE (ctx {info.target_ctx}, no extension)"
    at = f"ctx {info.target_ctx} ({info.rope_label or 'its own RoPE'})" if opts.pi else own
    table = Table(
        title=f"perplexity ({cfg.scoring}, stride {cfg.stride}) — {loaded.info.spec} at {at}, "
        f"{len(documents)} documents"
    )
    for col in ("L", "full docs", "windows", "scored tokens", "ppl", "window ppl", "bits/byte"):
        table.add_column(col, justify="right")

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    for r in result.rows:
        numbers = (
            [fmt(r["ppl"], ".3f"), fmt(r["window_ppl"], ".3f"), fmt(r["bits_per_byte"], ".4f")]
            if r["reached"]
            else ["not reached", "—", "—"]
        )
        table.add_row(
            str(r["length"]),
            f"{r['full_documents']}/{r['documents']}",
            f"{r['windows']:,}",
            f"{r['scored_tokens']:,}",
            *numbers,
        )
    # 100 columns at least: squeezed into 80, a cell like "not reached" wraps and reads as two values
    Console(width=max(console.width, 100)).print(table)
    for line in result.warnings:
        err_console.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"result: {result.result_path}")


@app.command(
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


@app.command(
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


@app.command(
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
