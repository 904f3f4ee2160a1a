"""What one decoding step's KV-cache update costs: transformers' concatenating layer against llqa's reserved one.

Generation evals decode up to 128 tokens after long prompts. transformers' `DynamicLayer` appends each new
position with `torch.cat`, copying the layer's whole K and V every step; `evals.generation.decode_cache`
gives each full-attention layer a buffer with the new tokens' positions reserved and writes them in place.
This times only that update (no model): for every layer of the model's shape, a batch's prefilled cache of
`--prompt` positions, then `--steps` one-token updates, per cache kind; reported as ms per decoding step
summed over the layers (median of `--repeats`), and the bytes the concatenation copies per step.

The H200 command (seconds; the RULER batch shapes: 64 rows at 32k, 260 at 8k, SmolLM2-135M's 30 layers,
3 KV heads of 64, bf16):
    python benchmarks/kv_cache_decode.py --rows 64 --prompt 32640 --out benchmarks/results/kv-cache-decode-h200
CPU proof at a small size:
    python benchmarks/kv_cache_decode.py --rows 4 --prompt 4096 --layers 4 --steps 16 --out /tmp/kvdec
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from evals.generation import _reserved_layer  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import resolve_device, resolve_dtype  # noqa: E402

KINDS = ("concatenating", "reserved")


def new_layer(kind: str, reserve: int):
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer() if kind == "concatenating" else _reserved_layer()(reserve)


def time_steps(kind: str, args, device, dtype) -> float:
    """Seconds for `args.steps` one-token updates of every layer, after each layer holds the prompt."""
    shape = (args.rows, args.kv_heads, args.prompt, args.head_dim)
    layers = [new_layer(kind, args.steps) for _ in range(args.layers)]
    for layer in layers:
        layer.update(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
    one = torch.ones(args.rows, args.kv_heads, 1, args.head_dim, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        for layer in layers:
            layer.update(one, one)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=64, help="batch rows")
    p.add_argument("--prompt", type=int, default=32640, help="prefilled positions per row")
    p.add_argument("--steps", type=int, default=128, help="decoding steps (= the reserve)")
    p.add_argument("--layers", type=int, default=30, help="default: SmolLM2-135M's")
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that has it, else fp32), bfloat16, float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    per_layer_kv = 2 * args.rows * args.kv_heads * args.head_dim * dtype.itemsize
    rows = {}
    for kind in KINDS:
        times = [time_steps(kind, args, device, dtype) for _ in range(args.repeats)]
        rows[kind] = {"ms_per_step": 1e3 * statistics.median(times) / args.steps, "runs_s": times}
        print(f"{kind:>14}: {rows[kind]['ms_per_step']:.3f} ms per decoding step ({args.layers} layers)", flush=True)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"dtype": str(dtype).removeprefix("torch.")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "measure": "wall time of --steps one-token updates of every layer's cache after a --prompt-position "
        "prefill, per step (median over --repeats); no attention, no model",
        "concatenation_copies_gib_per_step": round(
            args.layers * per_layer_kv * (args.prompt + args.steps / 2) / 2**30, 2
        ),  # the mean cache length over the steps, read and written once each
        "results": rows,
        "speedup": rows["concatenating"]["ms_per_step"] / rows["reserved"]["ms_per_step"],
    }
    atomic_write_json(args.out / "kv_cache_decode.json", result)
    print(f"speed-up {result['speedup']:.1f}x; wrote {args.out / 'kv_cache_decode.json'}")
    return result


if __name__ == "__main__":
    main()
