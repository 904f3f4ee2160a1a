"""Peak training memory and step time per context length: llqa's chunked loss vs the plain HF loss.

One training step exactly as `llqa train` sets it up: the model loaded at ctx = the longest length
(Position Interpolation), bf16 base weights on a GPU, gradient checkpointing (non-reentrant), no KV
cache, LoRA+ (LoRA r 8 on q,k,v,o + embeddings + norms trainable, fp32 master weights), forward and
backward under bf16 autocast, AdamW step (at lr 0, so every measurement sees the same weights and the
two loss variants report the same loss; the optimizer state is allocated as in training). One
sequence of N random tokens (batch 1), every next-token prediction scored (N−1 tokens, mean NLL).
Loss variants:
- `chunked`: `trainer.loss.causal_lm_loss` — hidden states → LM head → fp32 cross-entropy, 4096 tokens at
             a time, each chunk's gradients computed at once and its logits dropped (never [N × vocab]);
- `hf`:      `model(input_ids, labels=input_ids).loss` — transformers' own head and loss, which builds
             the [N × vocab] logits and upcasts them to fp32.
Reported per (length, loss): peak allocated CUDA memory over the timed steps
(`torch.cuda.max_memory_allocated`, GiB, reset before them), median step time over `--steps` timed
steps after `--warmup` untimed ones, tokens/s, and the loss value (both variants give the same loss).

One command (H100, about 2 minutes):
    python benchmarks/train_memory.py --out benchmarks/results/train-memory-h100
CPU proof at tiny sizes:
    python benchmarks/train_memory.py --model random:tiny --lengths 256,512 --steps 1 --warmup 0 --out /tmp/tm
Results: OUT/train_memory.json, rewritten atomically after every measurement; a rerun with the same
settings measures only what is missing. An out-of-memory measurement is recorded as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llqa.io import atomic_write_json  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loss import causal_lm_loss  # noqa: E402
from trainer.model import load_base, make_optimizer, prepare_model  # noqa: E402

LOSSES = ("chunked", "hf")
TARGET_GIB_64K = 8.0  # the target: SmolLM2-135M at 64k must peak at or below this with the chunked loss


def step_loss(model, ids: torch.Tensor, kind: str, chunk: int) -> torch.Tensor:
    if kind == "chunked":
        return causal_lm_loss(model, ids, ids, chunk_size=chunk)[0]
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, optimizer, n: int, kind: str, args, device, autocast_dtype) -> dict:
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
    times, value = [], None
    for i in range(args.warmup + args.steps):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        amp = (
            torch.autocast(device.type, dtype=autocast_dtype)
            if autocast_dtype != torch.float32
            else contextlib.nullcontext()
        )
        with amp:
            value = step_loss(model, ids, kind, args.loss_chunk)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(value):
            raise RuntimeError(f"non-finite loss {value.item()}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    median = statistics.median(times)
    return {
        "peak_gib": peak,
        "step_s": median,
        "step_s_all": times,
        "tokens_per_s": n / median,
        "loss": float(value.detach()),
    }


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--model",
        default="random:smollm2-135m",
        help="any llqa --model (weights do not change memory; default: SmolLM2-135M shape, random)",
    )
    p.add_argument("--lengths", default="16384,32768,65536", help="comma-separated sequence lengths")
    p.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated, of {', '.join(LOSSES)}")
    p.add_argument("--method", default="lora+", help="trainable set: lora+ (default), lora or full")
    p.add_argument("--attn", default="full", help="training attention: full (default) or s2")
    p.add_argument("--loss-chunk", type=int, default=4096, help="tokens per chunk of the chunked loss")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=Path, help="folder for train_memory.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    losses = [x for x in args.losses.split(",") if x]
    if not set(losses) <= set(LOSSES) or args.steps < 1 or args.warmup < 0:
        sys.exit(f"bad --losses/--steps/--warmup; losses are {', '.join(LOSSES)}")
    ctx = max(lengths)
    with tempfile.TemporaryDirectory() as tmp:  # the config only describes the setup; nothing is written
        cfg = TrainConfig(
            task="train",
            out=tmp,
            data=["-"],
            model=args.model,
            ctx=ctx,
            method=args.method,
            attn=args.attn,
            dtype=args.dtype,
            device=args.device,
            loss_chunk=args.loss_chunk,
            lr=0.0,
        )  # AdamW runs (its state counts) but weights stay fixed: losses compare
    loaded, device, compute = load_base(cfg)
    model = prepare_model(cfg, loaded.model, compute)
    params, optimizer, _ = make_optimizer(cfg, model)
    settings = {
        "model": args.model,
        "ctx": ctx,
        "method": args.method,
        "attn": args.attn,
        "loss_chunk": args.loss_chunk,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": 1,
        "gradient_checkpointing": True,
        "dtype": str(compute).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in params),
        "scored_tokens": "all N-1 next-token predictions of one sequence; loss = their mean NLL",
        "step": "forward + loss + backward + AdamW step (lr 0), bf16 autocast, fp32 trainable weights",
        "peak_memory": "torch.cuda.max_memory_allocated over the timed steps, GiB (CUDA only)",
    }
    env = {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "model_info": loaded.info.to_dict(),
    }
    out_file = args.out / "train_memory.json"
    results = []
    if out_file.is_file():
        old = json.loads(out_file.read_text())
        if old.get("settings") == settings:
            results = [r for r in old.get("results", []) if "step_s" in r]
    done = {(r["tokens"], r["loss_kind"]) for r in results}
    for n in lengths:
        for kind in losses:
            if (n, kind) in done:
                continue
            row = {"tokens": n, "loss_kind": kind}
            try:
                row.update(measure(model, optimizer, n, kind, args, device, compute))
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            results.append(row)
            print(format_row(row), flush=True)
            atomic_write_json(
                out_file,
                {
                    "settings": settings,
                    "env": env,
                    "results": results,
                    "target": f"chunked loss at 65536 tokens: peak <= {TARGET_GIB_64K} GiB",
                },
            )
    print(f"wrote {out_file}")
    return 0


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['tokens']:>7} {row['loss_kind']:>8}  {row['error']}"
    peak = f"{row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else "n/a (CPU)"
    return (
        f"{row['tokens']:>7} {row['loss_kind']:>8}  peak {peak:>11}  step {row['step_s']:.3f} s  "
        f"{row['tokens_per_s']:,.0f} tok/s  loss {row['loss']:.4f}"
    )


if __name__ == "__main__":
    sys.exit(main())
