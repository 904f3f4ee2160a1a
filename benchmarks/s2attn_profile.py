"""Where a training step's time goes, S2-Attn against full attention: torch.profiler over one step.

The step is `benchmarks/s2attn.py`'s (SmolLM2-135M shape, bf16, batch 1, gradient checkpointing, chunked
loss, backward; no optimizer). For each variant: `--warmup` untimed steps, then one profiled step. Printed and
written to OUT/profile_<variant>_<N>.txt: the step's wall time, the ops ranked by self CUDA time and by self
CPU time, and the count of host synchronisations (`cudaStreamSynchronize`, `aten::item` /
`aten::_local_scalar_dense`, `aten::nonzero`), which stall the GPU queue until the host catches up.

One command (one GPU, about a minute; `--compile default` profiles the compiled layers instead, as
`benchmarks/s2attn.py --compile` runs them, compiled during the warm-up steps):
    python benchmarks/s2attn_profile.py --lengths 16384 --out /tmp/s2prof
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.s2attn import loss_fn, prepare_for_steps, sync, use_variant  # noqa: E402
from llqa.engine import resolve_compile_mode  # noqa: E402
from llqa.models import load_model  # noqa: E402
from trainer.compile import compile_layers  # noqa: E402

SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense", "aten::nonzero")


def profile_step(model, n_tokens: int, warmup: int, device, loss) -> tuple[float, str]:
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), device=device)
    for _ in range(warmup):
        loss(model, ids).backward()
        model.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    loss(model, ids).backward()
    sync(device)
    wall = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        loss(model, ids).backward()
        sync(device)
    model.zero_grad(set_to_none=True)
    averages = prof.key_averages()
    sort_cuda = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    syncs = {e.key: e.count for e in averages if e.key in SYNC_OPS}
    text = "\n".join(
        [
            f"step wall time (unprofiled): {wall:.4f} s",
            f"host synchronisations: {syncs}",
            "ranked by self device time:",
            averages.table(sort_by=sort_cuda, row_limit=25, max_name_column_width=60),
            "ranked by self CPU time:",
            averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60),
        ]
    )
    return wall, text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:smollm2-135m")
    p.add_argument("--lengths", default="16384")
    p.add_argument("--variants", default="full,s2")
    p.add_argument("--group-ratio", type=float, default=0.25)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--compile", default="off", help="compile every decoder layer first, as benchmarks/s2attn.py --compile"
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    loaded = load_model(
        args.model, ctx=max(lengths), dtype="bfloat16" if device.type == "cuda" else "float32", device=str(device)
    )
    model = loaded.model
    prepare_for_steps(model)
    mode = resolve_compile_mode(args.compile, device)
    if mode != "off":
        compile_layers(model, mode, dynamic=False)
    loss = loss_fn()
    args.out.mkdir(parents=True, exist_ok=True)
    for n in lengths:
        for variant in args.variants.split(","):
            use_variant(model, variant, args.group_ratio)
            wall, text = profile_step(model, n, args.warmup, device, loss)
            (args.out / f"profile_{variant}_{n}.txt").write_text(text + "\n")
            print(f"=== {variant} at {n}: {wall:.4f} s\n{text}\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
