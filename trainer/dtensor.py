"""Helpers for tensors that may be FSDP shards (DTensors): one code path for sharded and whole models.

Checkpointing and the training step call them on every engine; on a whole (unsharded) tensor each is the
identity or the plain operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (an all-gather: every rank must call it, in the same order)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like_param(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor read from a checkpoint, laid out like `param`: this rank's shard if `param` is sharded
    (every rank holds the full value, so each cuts its own shard: no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and tuple(value.shape) == tuple(param.shape):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return value


def trainable_state(model: torch.nn.Module, aliases: bool = False) -> dict[str, torch.Tensor]:
    """Every trainable parameter as a full CPU tensor, by name (gathered from the shards: every rank calls
    this; the others may drop the result). `aliases`: a parameter shared by two modules (a tied embedding)
    under each of its names, as `state_dict()` lists it; else once, as `named_parameters()` does."""
    gathered: dict[int, torch.Tensor] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=not aliases):
        if p.requires_grad:
            if id(p) not in gathered:
                gathered[id(p)] = full_tensor(p.detach()).contiguous().cpu()
            out[name] = gathered[id(p)]
    return out


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm; with sharded (DTensor) gradients the norm is all-reduced first."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    total = full_tensor(total)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
