"""Regional torch.compile shared by the perplexity engine and the trainer: compile each module of a list
(the decoder layers) in place, and undo it.

The layers share one traced code object, so compilation costs about one layer, not all of them. A layer's
graph may still be specialised per layer (its index is a constant in it), per grad mode and per input
shape, so the dynamo cache limits are raised to `entries_per_module` per layer: at torch's default limit of
8, dynamo would silently fall back to eager for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

_graphs_before: list[int] = [0]  # dynamo's compiled-graph count when `compile_modules` last ran


def compile_modules(
    modules: Sequence,
    mode: str = "default",
    backend: str = "inductor",
    dynamic: bool | None = False,
    entries_per_module: int = 1,
) -> None:
    """`module.compile(...)` on each module in place. `mode`: inductor's (`default` = its default mode)."""
    import torch

    need = len(modules) * max(1, entries_per_module) + 8
    dyn = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if isinstance(getattr(dyn, name, None), int) and getattr(dyn, name) < need:
            setattr(dyn, name, need)
    # transformers >= 5.2x routes attention through the `kernels` package, whose forward hook sets a context
    # variable; inside a gradient-checkpointed layer dynamo treats that as a side effect it must replay in
    # the backward, gives up on the whole layer and runs it eagerly (no error, no speed-up). The variable
    # only selects kernels for the call it wraps, so not replaying it in the recomputation changes nothing.
    if hasattr(dyn, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        dyn.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    kwargs = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
    _graphs_before[0] = graph_count()
    for module in modules:
        module.compile(backend=backend, dynamic=dynamic, **kwargs)


def graph_count() -> int:
    """How many distinct graphs dynamo has compiled in this process (a caller compares it before and after)."""
    import torch

    return int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))


def fallback_reason() -> str | None:
    """After the compiled modules have run: None when dynamo compiled a graph since `compile_modules`, else
    why it did not (its first graph break, when it counted one). Dynamo falls back to eager silently: a
    library update that adds a side effect to a layer (as transformers 5.2x's `kernels` hook did under
    gradient checkpointing) would otherwise leave `--compile` on and the run uncompiled."""
    import torch

    if graph_count() > _graphs_before[0]:
        return None
    breaks = list(torch._dynamo.utils.counters["graph_break"])
    return breaks[0].strip().splitlines()[0] if breaks else "no graph was compiled"


def uncompile_modules(modules: Sequence) -> None:
    """Undo `compile_modules`: the modules run eagerly again (`nn.Module.compile` keeps the compiled call
    in `_compiled_call_impl`; clearing it restores the plain forward)."""
    for module in modules:
        module._compiled_call_impl = None
