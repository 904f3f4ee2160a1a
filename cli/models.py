"""`llqa models` and `llqa info`: the model aliases and a model's resolved configuration."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    RopeCliOptions,
    check_ctx,
    console,
    rope_options,
    shared_options,
)
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
@shared_options(RopeCliOptions)
def info_cmd(
    opts: RopeCliOptions,
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
    info = describe(model, ctx=ctx, dtype=dtype, device=device, rope=rope_options(opts))
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
        ("original context", _original(info)),
        ("context", f"{info.target_ctx} (checkpoint {info.checkpoint_ctx})"),
        ("RoPE method", f"{info.rope_method} (checkpoint {info.checkpoint_rope_method})"),
        ("RoPE factor", f"{info.rope_factor:g} (checkpoint {info.checkpoint_rope_factor:g})"),
        ("RoPE θ", f"{info.rope_theta:g} (checkpoint {info.checkpoint_rope_theta:g})"),
        ("RoPE wavelengths", f"{_waves(info.wavelengths)} (checkpoint {_waves(info.checkpoint_wavelengths)})"),
        ("RoPE parameters", _params(info.rope_parameters)),
        ("dtype", info.dtype),
        ("device", info.device),
        ("parameters", f"{info.params:,}"),
    ]
    if info.adapter:
        rows.append(("adapter", info.adapter))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _original(info) -> str:
    if not info.original_ctx_candidates:
        return str(info.native_ctx)
    a, b = info.original_ctx_candidates[0], info.original_ctx_candidates[-1]
    return f"{a} or {b}: the config does not say (--rope-original-ctx decides)"


def _waves(pair: list[float]) -> str:
    return f"{pair[0]:.3g}–{pair[1]:,.0f} tokens" if pair else "—"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
