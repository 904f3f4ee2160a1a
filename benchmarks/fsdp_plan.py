"""Per-GPU memory plan for `llqa train/sft --parallel fsdp`, computed on a CPU: no GPU, nothing measured.

For each SHAPE@CTX/WORLD the script builds the `random:<shape>` model on the meta device, prepares it exactly as
the trainer does (`trainer.model.prepare_model`: S2-Attn, gradient checkpointing, peft LoRA+ for
`--method longlora`; `trainer.loss.CausalLMLoss` as the root unit), and splits every parameter as FSDP2's
`fully_shard` does: along dim 0, every rank's shard padded to ceil(dim0 / world) rows. It then applies the
trainer's own sharding (`trainer.fsdp.shard`) in this one process over a fake process group of WORLD ranks
(torch's `fake` backend, no communication) and checks that each parameter's local shard on rank 0 has the
computed shape (`fsdp2_checked` in the output; where torch's fake backend is missing, the plan stands on the
arithmetic alone and says so).

Bytes per rank (rank 0 holds the largest shards), for one sequence of CTX tokens per micro-batch:
- `base_shard`: the frozen base (bf16 for LoRA methods), this rank's shard;
- `trainable_params`, `grads`, `adamw`: the trainable weights' shards as fp32 master weights, their fp32
  sharded gradients (FSDP2 reduce-scatters in fp32), AdamW's two fp32 moments;
- `gathered_layers`: decoder layers all-gathered in the compute dtype (bf16), all their parameters (frozen and
  trainable, padded): the running one and the next, which FSDP2 prefetches — 2 × the largest layer;
- `gathered_root`: the root unit (embeddings with the LoRA+ copy, final norm, LM head) all-gathered in bf16;
  FSDP2 keeps the root gathered from forward through backward;
- `root_grad_unsharded`: the root's trainable gradients before their reduce-scatter at the end of backward
  (fp32; for LoRA+ the embedding copy);
- `checkpoints`: gradient checkpointing's saved layer inputs, layers × CTX × hidden × 2 B (bf16);
- `transient` (an estimate, the least certain row): the larger of (a) one decoder layer's recomputation saved
  for its backward, per token 22·hidden + 6·kv_dim + 8·intermediate bytes (bf16 tensors: two RMSNorms'
  fp32 input and bf16 output, the q/k/v/o inputs and outputs, RoPE'd q and k, the attention output; the MLP's
  gate, up, SiLU and product; flash/efficient SDPA keeps O(CTX) statistics only), and (b) the chunked loss:
  chunk × vocab × 6 B (bf16 and fp32 logits of one chunk) + CTX × hidden × 4 B (final hidden states and their
  gradient, bf16).
`total` is their sum: a plan of `torch.cuda.max_memory_allocated`, without the allocator's fragmentation or
NCCL's buffers.

One command, seconds on a CPU (13B at 64k and 70B at 32k on 8 ranks; 7B at 32k on 2, measured on 2×H200;
13B at 64k on 2):
    python benchmarks/fsdp_plan.py --out benchmarks/results/fsdp-plan
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from llqa.io import atomic_write_json  # noqa: E402

GIB = 2**30
DEFAULT_RUNS = "13b@65536/8,70b@32768/8,7b@32768/2,13b@65536/2"
COMPONENTS = (
    "base_shard",
    "trainable_params",
    "grads",
    "adamw",
    "gathered_layers",
    "gathered_root",
    "root_grad_unsharded",
    "checkpoints",
    "transient",
)


def shard_rows(dim0: int, world: int) -> int:
    """Rows of every rank's (padded) FSDP2 shard of a parameter with `dim0` rows."""
    return -(-dim0 // world)


def rank_rows(dim0: int, world: int) -> list[int]:
    """Rows of real data on each rank (torch.chunk's split: full shards first, then a partial one, then empty)."""
    rows = shard_rows(dim0, world)
    return [max(0, min(rows, dim0 - r * rows)) for r in range(world)]


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    bytes_per: int  # element size of the stored parameter
    trainable: bool
    unit: str  # "layer.<i>" or "root": the FSDP unit it is gathered with

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def shard_numel(self, world: int) -> int:
        return shard_rows(self.shape[0], world) * math.prod(self.shape[1:])


def build(shape: str, ctx: int, method: str = "longlora"):
    """(step module, config) of `random:<shape>` at `ctx` on the meta device, prepared as the FSDP trainer prepares
    it (`trainer.fsdp._build_sharded`, before sharding): bf16 base, fp32 trainable weights."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from llqa.models import apply_position_interpolation, load_config, resolve
    from trainer.config import TrainConfig
    from trainer.loss import CausalLMLoss
    from trainer.model import prepare_model

    cfg = TrainConfig(
        task="sft",
        out="unused",
        model=f"random:{shape}",
        ctx=ctx,
        data=["unused"],
        method=method,
        device="cpu",
        parallel="fsdp",
    )
    config = apply_position_interpolation(load_config(resolve(cfg.model)), ctx)
    dtype = torch.float32 if method == "full" else torch.bfloat16
    with init_empty_weights(include_buffers=False):
        meta = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    meta.tie_weights()
    model = prepare_model(dataclasses.replace(cfg, compile="off"), meta, torch.bfloat16)
    return CausalLMLoss(model, cfg.loss_chunk), config


def params_of(step_module) -> list[Param]:
    """Every parameter once (a tied one under its first name), with its FSDP unit."""
    from trainer.compile import decoder_layers

    unit = {}
    for i, layer in enumerate(decoder_layers(step_module.model)):
        for p in layer.parameters():
            unit[id(p)] = f"layer.{i}"
    return [
        Param(n, tuple(p.shape), p.element_size(), p.requires_grad, unit.get(id(p), "root"))
        for n, p in step_module.named_parameters()
    ]


def check_with_fsdp2(step_module, params: list[Param], world: int) -> bool | None:
    """Shard `step_module` with the trainer's own `trainer.fsdp.shard` over a fake process group of `world` ranks
    (this process is rank 0) and check every local shard's shape against `shard_rows`. None: torch has no fake
    backend here. The process group is destroyed afterwards."""
    import torch
    import torch.distributed as dist

    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError:
        return None
    from trainer.fsdp import shard

    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        shard(step_module, world, torch.device("cpu"), torch.bfloat16)
        local = {n: tuple(p.to_local().shape) for n, p in step_module.named_parameters()}
    finally:
        dist.destroy_process_group()
    want = {p.name: (shard_rows(p.shape[0], world), *p.shape[1:]) for p in params}
    mismatched = [n for n in want if local.get(n) != want[n]]
    if mismatched:
        raise AssertionError(f"FSDP2 shards differ from the plan's arithmetic: {mismatched[:5]}")
    return True


def layer_working_bytes(config, ctx: int) -> int:
    """One decoder layer's tensors saved for its backward during recomputation (see the module doc)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    kv_dim = config.num_key_value_heads * (hidden // config.num_attention_heads)
    return (22 * hidden + 6 * kv_dim + 8 * inter) * ctx


def loss_working_bytes(config, ctx: int, chunk: int) -> int:
    return min(chunk, ctx) * config.vocab_size * 6 + ctx * config.hidden_size * 4


def plan(params: list[Param], config, ctx: int, world: int, compute_bytes: int = 2, chunk: int = 4096) -> dict:
    """Bytes per rank by component (the module doc defines each), for rank 0 (the largest shards)."""
    frozen = [p for p in params if not p.trainable]
    trainable = [p for p in params if p.trainable]
    trainable_shard = sum(p.shard_numel(world) for p in trainable)
    units: dict[str, int] = {}
    for p in params:  # gathered in the compute dtype, padded shards from every rank
        units[p.unit] = units.get(p.unit, 0) + world * p.shard_numel(world) * compute_bytes
    layers = [v for k, v in units.items() if k != "root"]
    parts = {
        "base_shard": sum(p.shard_numel(world) * p.bytes_per for p in frozen),
        "trainable_params": sum(p.shard_numel(world) * p.bytes_per for p in trainable),
        "grads": trainable_shard * 4,
        "adamw": trainable_shard * 8,
        "gathered_layers": min(2, len(layers)) * max(layers, default=0),
        "gathered_root": units.get("root", 0),
        "root_grad_unsharded": sum(p.numel * 4 for p in trainable if p.unit == "root"),
        "checkpoints": config.num_hidden_layers * ctx * config.hidden_size * compute_bytes,
        "transient": max(layer_working_bytes(config, ctx), loss_working_bytes(config, ctx, chunk)),
    }
    return {**parts, "total": sum(parts.values())}


def plan_run(shape: str, ctx: int, world: int, method: str = "longlora", check: bool = True) -> dict:
    step_module, config = build(shape, ctx, method)
    params = params_of(step_module)
    checked = check_with_fsdp2(step_module, params, world) if check else None
    parts = plan(params, config, ctx, world)
    return {
        "model": f"random:{shape}",
        "ctx": ctx,
        "world": world,
        "method": method,
        "params": sum(p.numel for p in params),
        "trainable": sum(p.numel for p in params if p.trainable),
        "fsdp2_checked": checked,
        "bytes": parts,
        "gib": {k: v / GIB for k, v in parts.items()},
    }


def table(results: list[dict]) -> str:
    heads = [f"{r['model'].removeprefix('random:')}@{r['ctx']}/{r['world']}" for r in results]
    lines = [f"{'GiB per GPU (computed)':<24}" + "".join(f"{h:>18}" for h in heads)]
    for key in (*COMPONENTS, "total"):
        lines.append(f"{key:<24}" + "".join(f"{r['gib'][key]:>18.2f}" for r in results))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for plan.json")
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated SHAPE@CTX/WORLD (random:<SHAPE> models)")
    ap.add_argument("--method", default="longlora", help="llqa --method (longlora: LoRA+ and S2-Attn)")
    ap.add_argument("--no-check", action="store_true", help="skip sharding with FSDP2 over a fake process group")
    args = ap.parse_args(argv)
    results = []
    for spec in args.runs.split(","):
        shape, rest = spec.split("@")
        ctx, world = (int(x) for x in rest.split("/"))
        results.append(plan_run(shape, ctx, world, args.method, check=not args.no_check))
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out / "plan.json",
        {"computed_not_measured": True, "runs": results, "command": " ".join(sys.argv), "semantics": __doc__},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
