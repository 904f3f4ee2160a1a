"""S2-Attn vs full attention: one training step (forward + backward) at long context.

For each length and attention variant, one step = forward of a SmolLM2-135M-shaped model on one
sequence of N random tokens (batch 1, gradient checkpointing on, no KV cache), the causal-LM loss
over all N−1 next-token predictions computed from the hidden states in chunks (never N × vocab
logits), and backward into every parameter (the trainable set does not change attention cost).
No optimizer step. Reported per (length, variant): the median step time over `--steps` timed steps
after `--warmup` untimed ones, and the peak allocated memory over those steps (CUDA only).

Variants:
- `full`:  transformers' SDPA attention (causal flash kernel on a GPU) — the baseline.
- `naive`: S2-Attn as a naive roll prototype (LongLoRA's formulation, for comparison only): K/V
           repeated to all query heads, the second half of the heads rolled by −G/2 (with the leak
           at the wrap), groups reshaped into the batch, one causal SDPA call, rolled back.
- `s2`:    llqa's S2-Attn (`trainer.s2attn`, backend `auto`): no K/V repeat, no roll, no leak. On a
           GPU without flash-attn: the SDPA backend, three dense causal SDPA calls per layer.
- `s2-sdpa`: the same S2-Attn on its SDPA backend, named (`s2` resolves `auto`, which may pick another).
- `s2-varlen`: the same S2-Attn on its varlen backend (flash-attn's varlen kernel, else torch's own
           flash kernel through its aten op, else `varlen_attn`): the heads folded into the token
           dimension, one kernel call per layer for all heads — the fewest host-side calls.
- `s2-padded`: the same S2-Attn on its `sdpa-padded` backend: one SDPA call per layer (every group of
           both head halves one batch entry, the shifted heads' end half groups padded to whole groups).
- `floor`:  no attention at all (each position's output is its own query: no kernel, no mixing across
           tokens). Not a model — the step time of everything but attention, the lower bound any attention
           variant can reach on this machine; where `full` is close to it, no S2 can be much faster.

`--sdpa-kernel` pins torch's SDPA kernel for every variant (`llqa train --sdpa-backend`); `--compile`
compiles every decoder layer as `llqa train --compile` does (one static graph per length and variant,
compiled during the warm-up steps; a row whose graph was not compiled is marked as an error, not timed
as compiled).

One command (H100, ~3 minutes):
    python benchmarks/s2attn.py --out benchmarks/results/s2attn-h100
CPU proof at tiny sizes:
    python benchmarks/s2attn.py --model random:tiny --lengths 256,512 --steps 2 --out /tmp/s2bench
Results go to OUT/s2attn.json (rewritten atomically after every measurement; a rerun with the same
settings keeps what is there and measures only what is missing).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llqa.compile import fallback_reason, graph_count  # noqa: E402
from llqa.engine import check_compile_mode, check_sdpa_backend, resolve_compile_mode  # noqa: E402
from llqa.errors import LlqaError  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import load_model  # noqa: E402
from trainer import s2attn  # noqa: E402
from trainer.compile import compile_layers  # noqa: E402
from trainer.loop import sdpa_context  # noqa: E402
from trainer.s2attn import enable_s2_attention, s2_group_size  # noqa: E402

NAIVE_NAME = "bench_naive_roll_s2"
FLOOR_NAME = "bench_no_attention"
VARIANTS = ("full", "naive", "s2", "s2-sdpa", "s2-varlen", "s2-padded", "floor")
# variant -> S2-Attn backend
S2_BACKEND = {"s2": "auto", "s2-sdpa": "sdpa", "s2-varlen": "varlen", "s2-padded": "sdpa-padded"}


# --------------------------------------------------------------------------- the naive baseline


def naive_roll_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """LongLoRA-style roll S2 (baseline only; it leaks across the wrap). Returns (B, N, H, D)."""
    B, H, N, D = query.shape
    group = s2_group_size(N, module.config.s2_group_ratio)
    rep = H // key.shape[1]
    key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    half = H // 2

    def shift_and_group(x, sign):
        x = torch.cat([x[:, :half], x[:, half:].roll(sign * group // 2, dims=2)], dim=1)
        return x.reshape(B, H, N // group, group, D).transpose(1, 2).reshape(B * N // group, H, group, D)

    out = F.scaled_dot_product_attention(
        shift_and_group(query, -1), shift_and_group(key, -1), shift_and_group(value, -1), is_causal=True, scale=scaling
    )
    out = out.reshape(B, N // group, H, group, D).transpose(1, 2).reshape(B, H, N, D)
    out = torch.cat([out[:, :half], out[:, half:].roll(group // 2, dims=2)], dim=1)
    return out.transpose(1, 2), None


def no_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The `floor` variant: every position's output is its query, (B, N, H, D) — attention's cost removed."""
    return query.transpose(1, 2), None


def use_variant(model, variant: str, ratio: float) -> None:
    from transformers import AttentionInterface

    if variant == "full":
        model.set_attn_implementation("sdpa")
    elif variant == "floor":
        AttentionInterface.register(FLOOR_NAME, no_attention)
        model.set_attn_implementation(FLOOR_NAME)
    elif variant in S2_BACKEND:
        enable_s2_attention(model, group_ratio=ratio, backend=S2_BACKEND[variant])
    else:
        AttentionInterface.register(NAIVE_NAME, naive_roll_attention)
        model.config.s2_group_ratio = ratio
        model.set_attn_implementation(NAIVE_NAME)


# --------------------------------------------------------------------------- one step


def prepare_for_steps(model) -> None:
    """The measured step's setting: no KV cache, non-reentrant gradient checkpointing, training mode, every
    parameter trainable (the trainable set does not change attention cost)."""
    model.config.use_cache = False
    enable = getattr(model, "activation_checkpointing_enable", None)  # the newer name (transformers >= 5.2x)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)


def loss_fn():
    """The trainer's chunked loss when present, else an equivalent local one."""
    try:
        from trainer.loss import causal_lm_loss

        return lambda model, ids: causal_lm_loss(model, ids, ids)[0]
    except ImportError:
        from torch.utils.checkpoint import checkpoint

        def local(model, ids, chunk=4096):
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            target, weight = ids[0, 1:], model.get_output_embeddings().weight
            total = hidden.new_zeros((), dtype=torch.float32)
            for s in range(0, target.numel(), chunk):
                total = total + checkpoint(
                    lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t, reduction="sum"),
                    hidden[s : s + chunk],
                    weight,
                    target[s : s + chunk],
                    use_reentrant=False,
                )
            return total / target.numel()

        return local


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, n_tokens: int, steps: int, warmup: int, device, loss) -> dict:
    ids = torch.randint(
        0,
        model.config.vocab_size,
        (1, n_tokens),
        device=device,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    times = []
    for i in range(warmup + steps):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        value = loss(model, ids)
        value.backward()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        if not torch.isfinite(value):
            raise RuntimeError(f"non-finite loss {value.item()}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "step_s": statistics.median(times),
        "step_s_all": times,
        "peak_gib": peak,
        "tokens_per_s": n_tokens / statistics.median(times),
        "loss": float(value.detach()),
    }


# --------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--model",
        default="random:smollm2-135m",
        help="any llqa --model (weights do not change timing; default: SmolLM2-135M shape, random)",
    )
    p.add_argument("--lengths", default="16384,32768,65536", help="comma-separated sequence lengths")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--group-ratio", type=float, default=0.25, help="S2 group size as a fraction of the length")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--compile",
        default="off",
        help="torch.compile every decoder layer as `llqa train --compile` does (off, auto, default, "
        "max-autotune-no-cudagraphs); static shapes, one graph per length and variant, compiled in the warm-up",
    )
    p.add_argument(
        "--sdpa-kernel",
        default="auto",
        help="torch SDPA kernel for every variant, as `llqa train --sdpa-backend` (auto = torch's choice, flash, "
        "cudnn, efficient, math)",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for s2attn.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(VARIANTS) or args.steps < 1 or args.warmup < 0:
        sys.exit(f"bad --variants/--steps/--warmup; variants are {', '.join(VARIANTS)}")
    for n in lengths:
        s2_group_size(n, args.group_ratio)  # a clear error before any work
    check_compile_mode(args.compile, training=True)
    check_sdpa_backend(args.sdpa_kernel)
    loaded = load_model(args.model, ctx=max(lengths), dtype=args.dtype, device=args.device)
    model, device = loaded.model, torch.device(loaded.info.device)
    prepare_for_steps(model)
    compile_mode = resolve_compile_mode(args.compile, device)
    compiled = compile_mode != "off"
    if compiled:
        compile_layers(model, compile_mode, dynamic=False)
    settings = {
        "model": args.model,
        "model_info": loaded.info.to_dict(),
        "group_ratio": args.group_ratio,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": 1,
        "gradient_checkpointing": True,
        "loss": "chunked causal-LM cross-entropy over all N-1 next-token predictions, mean",
        "trainable": "all parameters (backward into every weight; no optimizer step)",
        "step_time": "median wall time of forward + loss + backward over the timed steps",
        "peak_memory": "torch.cuda.max_memory_allocated over the timed steps, GiB (CUDA only)",
        "compile": compile_mode,
        "sdpa_kernel": args.sdpa_kernel,
    }
    env = {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
    }
    out_file = args.out / "s2attn.json"
    results = []
    if out_file.is_file():
        import json

        old = json.loads(out_file.read_text())
        if old.get("settings") == settings:
            results = [r for r in old.get("results", []) if "step_s" in r]
    done = {(r["tokens"], r["variant"]) for r in results}
    loss = loss_fn()

    def record(row):
        results.append(row)
        print(format_row(row, results), flush=True)
        atomic_write_json(
            out_file, {"settings": settings, "env": env, "results": results, "speedups": speedups(results)}
        )

    for n in lengths:
        for variant in variants:
            if (n, variant) in done:
                continue
            use_variant(model, variant, args.group_ratio)
            row = {
                "tokens": n,
                "variant": variant,
                "group_size": s2_group_size(n, args.group_ratio) if variant not in ("full", "floor") else None,
                "kernel": attention_kernel(model, variant, n, args.group_ratio),
            }
            if row["kernel"].startswith("unavailable"):
                row["error"] = row["kernel"]
                record(row)
                continue
            graphs = graph_count()
            try:
                with sdpa_context(args.sdpa_kernel):
                    row.update(measure(model, n, args.steps, args.warmup, device, loss))
                # every (length, variant) is a new static graph: none compiled means dynamo ran it eagerly
                if compiled and graph_count() == graphs:
                    row["error"] = f"--compile fell back to eager: {fallback_reason() or 'no new graph compiled'}"
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            record(row)
    print(f"wrote {out_file}")
    return 0


def query_like(model, n_tokens: int) -> torch.Tensor:
    """A tensor with the shape, device and dtype of one layer's queries for one row of `n_tokens`, (1, Hq, N, D),
    without their memory: what S2-Attn's backend choice reads."""
    cfg = model.config
    heads = cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    weight = next(model.parameters())
    return torch.empty((), device=weight.device, dtype=weight.dtype).expand(1, heads, n_tokens, dim)


def attention_kernel(model, variant: str, n_tokens: int, ratio: float) -> str:
    """What the variant's attention runs on at `n_tokens`, as S2-Attn's backend choice resolves it here."""
    if variant in ("full", "naive"):
        return "torch SDPA"
    if variant == "floor":
        return "none (attention removed)"
    try:
        return s2attn.kernel_name(S2_BACKEND[variant], query_like(model, n_tokens), s2_group_size(n_tokens, ratio))
    except LlqaError as e:
        return f"unavailable: {e.what}"


def format_row(row, results) -> str:
    if "error" in row:
        return f"{row['tokens']:>7} {row['variant']:>6}  {row['error']}"
    full = next((r for r in results if r["tokens"] == row["tokens"] and r["variant"] == "full" and "step_s" in r), None)
    speed = f"  {full['step_s'] / row['step_s']:.2f}x vs full" if full and row["variant"] != "full" else ""
    mem = f"  peak {row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else ""
    return f"{row['tokens']:>7} {row['variant']:>7}  step {row['step_s']:.3f} s{mem}{speed}  [{row['kernel']}]"


def speedups(results) -> dict:
    """Full-attention step time / variant step time, per length."""
    by = {(r["tokens"], r["variant"]): r["step_s"] for r in results if "step_s" in r}
    return {f"{v}@{n}": round(by[(n, "full")] / by[(n, v)], 3) for (n, v) in by if v != "full" and (n, "full") in by}


if __name__ == "__main__":
    raise SystemExit(main())
