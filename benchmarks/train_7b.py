"""A Llama-2-7B-shaped model trained with LoRA+ and S2-Attn on one GPU: tokens/s, MFU and peak memory.

One optimizer step per measurement exactly as `llqa train --method longlora` runs it (`trainer.loop.train_step`):
`random:7b` (Llama-2-7B shape, 49,152-token vocabulary, random weights initialised on the GPU) loaded at
ctx = the longest length (Position Interpolation), bf16 frozen base, LoRA r 8 on q,k,v,o + embeddings
and norms trainable (fp32 master weights, fused AdamW; the 49,152 × 4096 embedding alone is 0.2 B
trainable parameters = 3.2 GB of weight + gradient + two moments), S2-Attn (group = N/4), gradient
checkpointing, chunked loss, batch 1 of N random tokens, every next-token prediction scored.

Levers (`--levers`, each measured on top of the trainer defaults, `base`; levers joined by `+` are measured
together, e.g. `compile+offload`):
- base          trainer defaults: chunked loss, non-reentrant checkpointing, S2 on torch SDPA (torch's kernel)
- hf-loss       transformers' own head + loss (full [N × vocab] fp32 logits): what the chunked loss saves
- offload       `--offload-activations`: checkpoints (layer inputs) in pinned CPU memory, copied on a side
                stream with prefetch (`trainer.offload`)
- offload-half  the same for the first half of the layers only (`offload_fraction` 0.5)
- offload-sync  the previous implementation, torch's `save_on_cpu` around the forward (for comparison)
- sdpa-flash / sdpa-cudnn / sdpa-efficient   `--sdpa-backend`: one SDPA kernel forced
- s2-flash-attn S2 through flash-attn's varlen kernel (fused shift-and-group), when flash-attn is installed
- full-attn     full causal attention instead of S2 (the comparison LongLoRA makes)
- no-checkpointing  gradient checkpointing off (the other end of the checkpointing policy)
- compile       `--compile`: regional torch.compile of every decoder layer (`trainer.compile.compile_layers`,
                the trainer's own code; static shapes, one graph per length; `--compile-mode`)
`base` runs at every `--lengths`; the other levers at `--lever-lengths` (default 65536) to fit the budget;
`lever@N` in `--levers` measures a lever at N tokens only (default: offload also at 131072, no-checkpointing
at 32768 only). A combination may hold at most one SDPA kernel and one attention (full-attn / s2-flash-attn),
and no-checkpointing cannot combine with offload (offloading moves the checkpoints). Rows are keyed
`lever@N`, e.g. `compile+offload@65536`; combinations with compile run last (compiling is slow, not final:
the other levers run the layers eagerly again).

FLOPs (reported per step, and MFU = FLOPs / step time / `--peak-tflops`, H100 SXM bf16 dense = 989):
- P = parameters of the matmuls (every Linear incl. the LM head; the embedding lookup is no matmul).
- full-parameter step: 6·P·N (forward 2PN, backward 4PN: input and weight gradients);
- LoRA step (`linear_flops`): 4·P·N — the frozen weights' weight-gradient GEMMs are skipped, the
  trainable LoRA/norm/embedding work is < 0.1 % and ignored; gradient checkpointing's recomputation
  (+2·P·N) is NOT counted (model FLOPs, not hardware FLOPs: recomputation lowers MFU, as it should);
- attention (`attn_flops`): causal full attention costs 2·N²·d per layer forward (QKᵀ and PV, half the
  square), ×3 for forward + backward; S2-Attn with 4 groups costs a quarter of that (each head attends
  within groups of N/4). Both are reported; `mfu` uses linear + S2 attention FLOPs (full for full-attn).
Memory: `torch.cuda.max_memory_allocated` over the timed step (weights, optimizer state, activations).

One command (H100 80 GB, about 6 minutes):
    python benchmarks/train_7b.py --out benchmarks/results/train-7b-h100
Compile and offload together at 64k and 128k (H100, about 4 minutes):
    python benchmarks/train_7b.py --levers compile+offload@65536,compile+offload@131072 --out OUT
CPU proof at tiny sizes:
    python benchmarks/train_7b.py --model random:tiny --lengths 256,512 --lever-lengths 256 --out /tmp/t7
Results: OUT/train_7b.json, rewritten atomically after every measurement (a rerun measures only what is
missing); an out-of-memory or failing measurement is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import unwrapped  # noqa: E402
from trainer.compile import compile_layers, uncompile_layers  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import train_step  # noqa: E402
from trainer.loss import CausalLMLoss  # noqa: E402
from trainer.model import load_base, make_optimizer, prepare_model  # noqa: E402

LEVERS = (
    "base",
    "hf-loss",
    "offload",
    "offload-half",
    "offload-sync",
    "sdpa-flash",
    "sdpa-cudnn",
    "sdpa-efficient",
    "sdpa-math",
    "s2-flash-attn",
    "full-attn",
    "no-checkpointing",
    "compile",
)
TARGET = {"tokens_per_s_64k": 8500, "peak_gib_64k": 36.0}
BASELINE = {"32768": {"step_s": 4.62, "peak_gib": 33.9}, "65536": {"step_s": 10.3, "peak_gib": 54.4}}


class HfLoss(torch.nn.Module):
    """transformers' own loss (the plain stack), in the step's (loss, count) form."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, labels, mask=None):
        out = self.model(input_ids=ids, labels=labels, attention_mask=mask, use_cache=False)
        return out.loss, (labels[:, 1:] != -100).sum()


def flops(model, n: int, attn: str) -> dict[str, float]:
    base = unwrapped(model)
    c = base.config
    p = sum(
        m.weight.numel() for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    d, layers = c.num_attention_heads * (c.hidden_size // c.num_attention_heads), c.num_hidden_layers
    full_attn = 3 * 2 * n * n * d * layers  # causal: half of QKᵀ + PV (2·2·N²·d), forward + backward = 3×
    s2_attn = full_attn / 4  # 4 groups of N/4 tokens (group ratio 1/4)
    linear = 4 * p * n
    return {
        "matmul_params": p,
        "linear_flops": linear,
        "full_param_step_flops": 6 * p * n,
        "attn_flops_full": full_attn,
        "attn_flops_s2": s2_attn,
        "model_flops": linear + (s2_attn if attn == "s2" else full_attn),
    }


def lever_parts(lever: str) -> list[str]:
    """The levers of `lever` (`a+b+...`), checked: known, no repeats, no two that contradict each other."""
    parts = lever.split("+")
    unknown = [p for p in parts if p not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever {unknown[0]!r} in {lever!r}; use {', '.join(LEVERS)}, joined by +")
    if len(set(parts)) < len(parts):
        raise ValueError(f"lever {lever!r} repeats a lever")
    if "base" in parts and len(parts) > 1:
        raise ValueError(f"{lever!r}: base is the defaults, it combines with nothing (drop base+)")
    for group in (
        tuple(x for x in LEVERS if x.startswith("sdpa-")),
        ("full-attn", "s2-flash-attn"),
        ("offload", "offload-half", "offload-sync", "no-checkpointing"),
    ):
        clash = [p for p in parts if p in group]
        if len(clash) > 1:
            raise ValueError(f"{lever!r}: {' and '.join(clash)} exclude each other")
    return parts


def configure(model, lever: str, cfg: TrainConfig, compile_mode: str = "default"):
    """(step module, cfg) for `lever` (one lever or several joined by +), switching the prepared model."""
    from trainer.s2attn import disable_s2_attention, enable_s2_attention

    parts = lever_parts(lever)
    cfg_kw = {}
    if "full-attn" in parts:
        disable_s2_attention(model)
    else:
        enable_s2_attention(model, group_ratio=0.25, backend="flash" if "s2-flash-attn" in parts else "sdpa")
    offload = any(p.startswith("offload") for p in parts)  # every form needs reentrant checkpointing
    if "offload" in parts or "offload-half" in parts:  # the trainer's offload (trainer.offload)
        cfg_kw["offload_activations"] = True
        cfg_kw["offload_fraction"] = 0.5 if "offload-half" in parts else 1.0
    for p in parts:
        if p.startswith("sdpa-"):
            cfg_kw["sdpa_backend"] = p.removeprefix("sdpa-")
    base = model.get_base_model()
    kwargs = {"use_reentrant": offload}  # as the trainer's prepare_model: reentrant only to offload
    enable = getattr(base, "activation_checkpointing_enable", None)
    if "no-checkpointing" in parts:
        disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
        disable()
    elif enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if offload and getattr(base, "_require_grads_hook", None) is None:  # as the trainer: reentrant checkpoints
        base.enable_input_require_grads()  # only backpropagate into inputs that require grad
    if "compile" in parts:
        compile_layers(model, compile_mode, dynamic=False)  # fixed lengths: one static graph each
        cfg_kw["compile"] = compile_mode
    else:
        uncompile_layers(model)
    new = TrainConfig(**{**cfg.to_dict(), **cfg_kw})
    step = HfLoss(model) if "hf-loss" in parts else CausalLMLoss(model, cfg.loss_chunk)
    return (SaveOnCpu(step) if "offload-sync" in parts else step), new


class SaveOnCpu(torch.nn.Module):
    """The previous `--offload-activations`: torch's save_on_cpu around the forward (every saved tensor, copied
    on the compute stream, copied back when backward asks for it), kept for comparison."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.model = inner.model  # the trainer reads the config through it

    def forward(self, *args):
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return self.inner(*args)


def measure(step_model, model, params, opt, sched, cfg, device, dtype, n: int, warmup: int, steps: int = 1) -> dict:
    """`warmup` untimed steps, then `steps` timed ones: mean step time, the peak memory over the timed steps."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))
    batches = [(ids, ids.clone(), None)]
    for _ in range(warmup):
        train_step(step_model, params, opt, sched, batches, cfg, device, dtype, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = train_step(step_model, params, opt, sched, batches, cfg, device, dtype, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": dt, "tokens_per_s": n / dt, "peak_gib": peak, "loss": loss, "timed_steps": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:7b")
    ap.add_argument("--lengths", default="32768,65536,131072", help="token counts for the `base` lever")
    ap.add_argument("--lever-lengths", default="65536", help="token counts for every other lever")
    ap.add_argument(
        "--levers",
        default="base,hf-loss,offload,offload@131072,sdpa-cudnn,sdpa-flash,full-attn,no-checkpointing@32768,compile",
        help=f"comma list of {', '.join(LEVERS)}, each optionally "
        "@N; levers joined by + are measured together (e.g. compile+offload@65536)",
    )
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "max-autotune-no-cudagraphs"),
        help="inductor mode of the compile lever (as `llqa train --compile`)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before each measurement")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per measurement (step_s: their mean)")
    ap.add_argument("--loss-chunk", type=int, default=4096)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H100 SXM: 989)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    lever_lengths = [int(x) for x in args.lever_lengths.split(",")]
    plan: dict[str, list[int]] = {}  # lever -> token counts, in the order given
    for item in filter(None, args.levers.split(",")):
        lever, _, n = item.partition("@")
        try:
            lever_parts(lever)
        except ValueError as e:
            ap.error(str(e))
        ns = [int(n)] if n else (lengths if lever == "base" else lever_lengths)
        plan[lever] = plan.get(lever, []) + [x for x in ns if x not in plan.get(lever, [])]
    levers = sorted(plan, key=lambda x: "compile" in lever_parts(x))  # slow to compile: last
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_7b.json"
    results = {}
    if path.is_file():
        import json

        results = json.loads(path.read_text()).get("results", {})

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "d.txt").write_text("x")
        ctx = max(n for ns in plan.values() for n in ns)
        cfg = TrainConfig(
            task="train",
            out=tmp,
            model=args.model,
            ctx=ctx,
            data=[str(Path(tmp) / "d.txt")],
            method="longlora",
            lr=0.0,
            warmup_steps=0,
            loss_chunk=args.loss_chunk,
            device=args.device,
        )
        t0 = time.perf_counter()
        loaded, device, dtype = load_base(cfg)
        model = prepare_model(cfg, loaded.model, dtype)
        params, opt, sched = make_optimizer(cfg, model)
        load_s = time.perf_counter() - t0
        meta = {
            "model": args.model,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "dtype": str(dtype),
            "trainable_params": sum(p.numel() for p in params),
            "load_s": load_s,
            "ctx": ctx,
            "peak_tflops": args.peak_tflops,
            "target": TARGET,
            "baseline_plain_stack_h100": BASELINE,
        }
        for lever in levers:
            todo = [n for n in plan[lever] if f"{lever}@{n}" not in results]
            if not todo:
                continue
            try:
                step_model, lcfg = configure(model, lever, cfg, args.compile_mode)
            except Exception as e:  # e.g. flash-attn missing: recorded, the others still run
                for n in todo:
                    results[f"{lever}@{n}"] = {"lever": lever, "tokens": n, "error": f"{type(e).__name__}: {e}"}
                atomic_write_json(path, {"meta": meta, "results": results})
                continue
            for n in todo:
                row = {"lever": lever, "tokens": n}
                try:
                    row.update(
                        measure(step_model, model, params, opt, sched, lcfg, device, dtype, n, args.warmup, args.steps)
                    )
                    f = flops(model, n, "full" if "full-attn" in lever_parts(lever) else "s2")
                    row.update(f, mfu=f["model_flops"] / row["step_s"] / (args.peak_tflops * 1e12))
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                finally:
                    opt.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                results[f"{lever}@{n}"] = row
                print(_line(row), flush=True)
                atomic_write_json(path, {"meta": meta, "results": results})
    print(f"wrote {path}")
    return 0


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['lever']:>16} {r['tokens']:>7}: {r['error']}"
    peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
    return (
        f"{r['lever']:>16} {r['tokens']:>7}: {r['step_s']:.2f} s  {r['tokens_per_s']:,.0f} tok/s  "
        f"MFU {r['mfu']:.1%}  peak {peak}  loss {r['loss']:.3f}"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
