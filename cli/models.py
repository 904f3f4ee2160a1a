"""`llqa models` and `llqa info`: the model aliases and a model's resolved configuration."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.options import CtxOpt, DeviceOpt, DtypeOpt, ModelOpt, check_ctx, console
from llqa.models import DEFAULT_MODEL

app = typer.Typer(rich_markup_mode=None)


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

    check_ctx(ctx)
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
