"""Data-parallel training under `torchrun` / `accelerate launch`: two engines, chosen by `--parallel`.

- `ddp` — torch's DistributedDataParallel: every rank holds the whole model. Every llqa method except
  `full` trains a small set (LoRA matrices, plus for LoRA+ the input embedding and the norms: 0.2 B
  parameters for a 7B model, 3.2 GB with fp32 master weights and AdamW moments), and the frozen bf16
  base of a 7B model (13.5 GB) fits on every GPU that can hold a long-context activation footprint
  anyway. PEFT's wrappers work as they are, and no weight is all-gathered in the step.
- `fsdp` — torch's FSDP2 (`trainer.fsdp`): every weight, frozen base and trained set alike, is sharded
  over the ranks (1/world per GPU), each decoder layer gathered only while it runs. For bases whose
  weights do not fit next to the activations on one GPU (70B in bf16: 130 GB, 17 GB per GPU on 8) and for
  `--method full` (16 bytes per parameter). The model is built on the meta device and filled shard by
  shard, so no GPU ever holds the whole model.
- `auto` (`choose_engine`) — ddp, unless the model's per-GPU state under DDP would exceed half of a GPU's
  memory: then fsdp.

Checkpoints are the same under both (`trainer.checkpoint`): the plain single-process checkpoint, the
trainable state gathered into full tensors and written by rank 0, so a checkpoint resumes under either
engine on any number of ranks (1, 2, 8 ...) or in one process; the final adapter/model is the
single-process format too.

Batch semantics: the global batch (`--batch-size`) is the same sequences as in one process; rank r
takes the r-th contiguous slice of it, so each rank runs batch_size / (micro × world) micro-batches
(the gradient accumulation). The loss stays the token-weighted mean over the whole global batch: the
number of scored tokens is summed over ranks before the step, each micro-batch's loss is weighted by
its tokens × world / global tokens, and DDP's (or FSDP's reduce-scatter's) gradient average (a sum / world)
then yields exactly the gradient of the single-process loss. DDP reduces once per step (`no_sync` during
accumulation); FSDP reduce-scatters every micro-batch's gradients into the sharded fp32 gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from llqa.errors import LlqaError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # this run created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (torchrun, accelerate); (0, 1, 0) alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group the launcher describes (nccl on CUDA, gloo on CPU); a no-op in one process."""
    import torch
    import torch.distributed as dist

    rank, world, local = launched_world()
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    # 30 minutes instead of 10: under FSDP the other ranks wait in a collective while rank 0 loads a 70B base
    # on its CPU or writes the random base's 130 GB copy
    timeout = timedelta(minutes=30)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return DistInfo(rank, world, local, initialized_here=True)


def shutdown(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce(info: DistInfo, values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) of `values` over ranks, as Python floats (fp64 on the wire: token counts stay exact)."""
    if not info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # nccl: GPU tensors
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def micro_batches_per_rank(batch_size: int, micro_batch_size: int, world: int) -> int:
    """Gradient-accumulation steps per rank: global batch = micro × accumulation × world."""
    per_step = micro_batch_size * world
    if batch_size % per_step:
        raise LlqaError(
            f"--batch-size {batch_size} is not a multiple of --micro-batch-size {micro_batch_size} × {world} processes",
            f"use a --batch-size divisible by {per_step} (global batch = "
            "micro-batch × gradient accumulation × processes)",
        )
    return batch_size // per_step


def rank_slice(items: list, rank: int, world: int) -> list:
    """The contiguous share of a global batch that `rank` trains on (the batch size divides by `world`)."""
    per = len(items) // world
    return items[rank * per : (rank + 1) * per]


def choose_engine(cfg, info: DistInfo, device: torch.device) -> str:
    """'single' in one process; else `cfg.parallel`, where `auto` is ddp unless the model's per-GPU state under
    DDP — its weights (2 bytes per parameter in bf16, 4 in fp32), or for `--method full` fp32 weights, gradients
    and AdamW moments (16 bytes per parameter) — would exceed half of the GPU's memory: then fsdp. DDP is
    preferred when it fits: no per-layer all-gathers, and peft's modules stay whole on every rank."""
    if not info.enabled:
        return "single"
    if cfg.parallel != "auto":
        return cfg.parallel
    if device.type != "cuda":
        return "ddp"
    import torch

    from llqa.models import describe, resolve_dtype

    params = describe(cfg.model, cfg.ctx, cfg.dtype, str(device), cfg.rope_options).params
    per_param = 16 if cfg.method == "full" else resolve_dtype(cfg.dtype, device).itemsize
    return "fsdp" if params * per_param > torch.cuda.get_device_properties(device).total_memory / 2 else "ddp"


def wrap_for_training(module: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """`module` as DDP when several processes train (gradients averaged over ranks in backward)."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
