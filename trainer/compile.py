"""`--compile`: regional torch.compile of the decoder layers for training.

Each decoder layer is compiled in place (`nn.Module.compile`: the layer object, its LoRA matrices and its
gradient-checkpointing wrapper stay as they are, only its forward runs through inductor). The layers share one
traced code object, so compilation costs about one layer, not all of them. Embeddings, RoPE tables, the mask
and the chunked loss stay eager. Gradient checkpointing wraps the compiled layer (transformers'
`GradientCheckpointingLayer` calls the module's compiled `__call__` inside the checkpoint), so it composes
with both checkpoint forms: non-reentrant (default) and reentrant + `trainer.offload`'s hooks
(`--offload-activations`, whose forward runs under no_grad and whose recomputation under grad: two graphs per
shape). S2-Attn's shift-and-group is traced into the layer's graph.

The result is the eager step's up to floating-point reassociation (inductor fuses and reorders
reductions); `tests/test_trainer_compile.py` checks loss and gradients against eager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llqa.compile import compile_modules, uncompile_modules
from llqa.engine import check_compile_mode
from llqa.errors import LlqaError
from llqa.models import unwrapped

if TYPE_CHECKING:
    import torch


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder's list of layers under a peft wrapper and/or a causal-LM head (`model.model.layers`)."""
    import torch

    inner = unwrapped(model)
    body = getattr(inner, "model", inner)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise LlqaError(
            f"--compile: {type(inner).__name__} has no list of decoder layers to compile", "run with --compile off"
        )
    return layers


def compile_layers(model, mode: str = "default", backend: str = "inductor", dynamic: bool | None = None) -> int:
    """torch.compile every decoder layer of `model` in place; returns how many. Call it after LoRA is applied
    (the compiled forward must see the adapted Linear layers). `mode`: inductor's `default` or
    `max-autotune-no-cudagraphs`; `backend`: `inductor`, or `eager` / `aot_eager` to test the plumbing.
    `dynamic`: torch.compile's; None (training) compiles the first shape statically and turns dynamic when a
    second length arrives (sft), False keeps one static graph per length (the benchmark's fixed lengths)."""

    check_compile_mode(mode, training=True)
    if mode in ("off", "auto"):
        raise LlqaError(f"compile_layers needs a resolved mode, got {mode!r}", "call resolve_compile_mode first")
    layers = decoder_layers(model)
    # per layer: grad mode (the reentrant checkpoint's no-grad forward and its recomputation) x lengths
    compile_modules(layers, mode, backend, dynamic, entries_per_module=8)
    return len(layers)


def uncompile_layers(model) -> None:
    """Undo `compile_layers`: the layers run eagerly again."""
    uncompile_modules(decoder_layers(model))
