"""`llqa`: the command line. Option parsing and calls into the library packages, nothing else.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `llqa --help` is instant.
User mistakes arrive as `LlqaError` and leave as one red line with exit code 2; set LLQA_DEBUG=1 to
see the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

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
)
eval_app = typer.Typer(help="Score a model: perplexity and retrieval evals.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

# ----------------------------------------------------------------------------- shared options

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m",
    help="Alias (smollm2-135m, 7b, 13b, 70b; see `llqa models`), random:<shape>, a hub id, "
    "or a local model / adapter / llqa run directory.")]
CtxOpt = Annotated[int | None, typer.Option(
    "--ctx", help="Target context in tokens. Above the model's native context, Position Interpolation "
    "applies linear RoPE scaling by ctx/native, multiplied with any scaling the checkpoint carries.")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (every sampled choice derives from it).")]


def _check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx <= 0:
        raise LlqaError(f"--ctx must be a positive number of tokens, got {ctx}", "e.g. --ctx 32768")


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
    console.print(f"Random-weight shapes for speed/memory work: "
                  f"{', '.join('random:' + s for s in RANDOM_SHAPES)}. "
                  "Any hub id or local directory is accepted too.")


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
        ("source", info.source), ("architecture", info.architecture), ("layers", str(info.layers)),
        ("heads / KV heads", f"{info.heads} / {info.kv_heads}"), ("hidden", str(info.hidden)),
        ("vocab", str(info.vocab)), ("native context", str(info.native_ctx)),
        ("target context", str(info.target_ctx)),
        ("RoPE scaling factor", f"{info.rope_factor:g} (checkpoint {info.checkpoint_rope_factor:g})"),
        ("dtype", info.dtype), ("device", info.device), ("parameters", f"{info.params:,}"),
    ]
    if info.adapter:
        rows.append(("adapter", info.adapter))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


# ----------------------------------------------------------------------------- eval: perplexity (issue 3)

# ----------------------------------------------------------------------------- eval: retrieval (issue 4)

# ----------------------------------------------------------------------------- build / validate (issue 5)

# ----------------------------------------------------------------------------- train / sft / merge (issue 6)

# ----------------------------------------------------------------------------- report (issue 8)


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning user errors into one line and exit code 2.

    Typer/click handle usage errors themselves (standalone mode: message + exit 2)."""
    try:
        app(args=argv)
    except LlqaError as e:
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
