"""Benchmark: prefill speed of the generation-eval engine against a plain `model.generate` loop, and the
7B passkey at 32k / 64k without running out of memory.

Generation evals (passkey, LongChat, RULER) spend their time in prefill. For each `MODEL:LENGTH:PROMPTS`
configuration this script times, in one run on one device:
- `harness`: `evals.generation.generate_greedy` (the engine `evals.harness.run_task` uses: batches sized
  from memory, whole-prompt or chunked prefill by memory) on PROMPTS random prompts of exactly LENGTH
  tokens, one new token each;
- `generate_b1`: a plain `model.generate(max_new_tokens=1)` loop at batch 1 over the first
  `--baseline-prompts` of the same prompts;
and reports prompt tokens/s and prefill MFU = FLOPs / (wall x peak), with FLOPs per prompt =
2 x non-embedding parameters x LENGTH + 2 x layers x LENGTH^2 x heads x head_dim (causal attention: QK^T
and AV over half the square each), peak = `--peak-tflops` (H200 dense bf16: 989). Then it runs the
passkey eval itself (`evals.passkey.run_passkey`, depths 0/0.5/1, `--passkey-trials` trials) at each
`--passkey` `MODEL:LENGTH` with --ctx LENGTH, and records wall time, peak memory and the batches' sizes.

The command for one H200 (about 2 minutes; results and notes in generation_prefill.md):

    python benchmarks/generation_prefill.py --out benchmarks/results/generation-prefill-h200

A CPU smoke test of the same code at tiny sizes (seconds):

    python benchmarks/generation_prefill.py --smoke --out /tmp/prefill-smoke

Writes `benchmark.json` into --out and prints one table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CONFIGS = "smollm2-135m:8192:32,smollm2-135m:32768:8,random:7b:32768:8"
DEFAULT_PASSKEY = "random:7b:32768,random:7b:65536"
SMOKE_CONFIGS = "random:tiny:256:6,random:tiny:512:3"
SMOKE_PASSKEY = "random:tiny:512"


def parse(text: str, fields: int) -> list[tuple]:
    """'random:7b:32768:8,...' -> [('random:7b', 32768, 8), ...]: the model spec may itself hold a colon."""
    out = []
    for part in text.split(","):
        bits = part.rsplit(":", fields - 1)
        out.append((bits[0], *map(int, bits[1:])))
    return out


def prefill_flops(model, length: int) -> float:
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * cfg.num_hidden_layers * length**2 * cfg.num_attention_heads * head_dim
    return 2 * params * length + attention


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prefill(model_spec: str, length: int, prompts: int, args) -> dict:
    import torch

    from evals.generation import default_batch_tokens, generate_greedy
    from llqa.models import load_model

    loaded = load_model(model_spec, ctx=max(length, 1), dtype=args.dtype, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(100, len(tok) - 1, (length,), generator=g).tolist() for _ in range(prompts)]
    flops = prefill_flops(model, length)
    peak = args.peak_tflops * 1e12
    model.generation_config.eos_token_id = None  # exactly one new token per prompt

    # warm-up: kernels, allocator
    budget, chunk = default_batch_tokens(device), args.prefill_chunk
    list(generate_greedy(model, tok, ids[:1], 1, budget, progress=False, prefill_chunk=chunk))
    _sync(device)
    t0 = time.perf_counter()
    sizes = [len(b) for b in generate_greedy(model, tok, ids, 1, budget, progress=False, prefill_chunk=chunk)]
    _sync(device)
    harness_s = time.perf_counter() - t0

    base = ids[: args.baseline_prompts]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in base:
            x = torch.tensor([p], device=device)
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False)
    _sync(device)
    base_s = time.perf_counter() - t0
    row = {
        "model": model_spec,
        "length": length,
        "prompts": prompts,
        "harness_batches": sizes,
        "harness_s": round(harness_s, 3),
        "harness_tokens_per_s": round(prompts * length / harness_s, 1),
        "harness_mfu": round(prompts * flops / harness_s / peak, 4),
        "generate_b1_prompts": len(base),
        "generate_b1_s": round(base_s, 3),
        "generate_b1_tokens_per_s": round(len(base) * length / base_s, 1),
        "generate_b1_mfu": round(len(base) * flops / base_s / peak, 4),
    }
    del loaded, model
    _free(device)
    return row


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_passkey_at(model_spec: str, length: int, out: Path, args) -> dict:
    import torch

    from evals.passkey import PasskeyConfig, run_passkey
    from llqa.models import load_model

    loaded = load_model(model_spec, ctx=length, dtype=args.dtype, device=args.device)
    device = next(loaded.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = PasskeyConfig(lengths=[length], depths=[0.0, 0.5, 1.0], trials=args.passkey_trials, chat_template="none")
    t0 = time.perf_counter()
    summary = run_passkey(loaded, cfg, out / f"passkey-{model_spec.replace(':', '_')}-{length}", overwrite=True,
                          progress=args.progress, ctx=length)  # fmt: skip
    _sync(device)
    row = {
        "model": model_spec,
        "length": length,
        "trials": summary["evaluated"],
        "accuracy": summary["accuracy"],
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    del loaded
    _free(device)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=None, help=f"MODEL:LENGTH:PROMPTS,... (default {DEFAULT_CONFIGS})")
    ap.add_argument("--passkey", default=None, help=f"MODEL:LENGTH,... (default {DEFAULT_PASSKEY}); '' for none")
    ap.add_argument("--passkey-trials", type=int, default=2)
    ap.add_argument("--baseline-prompts", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak (H200: 989)")
    ap.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="default: the engine's choice (the whole prompt when it fits, else 4096; --smoke: 128)",
    )
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help=f"tiny CPU sizes: {SMOKE_CONFIGS}; passkey {SMOKE_PASSKEY}")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    configs = args.configs or (SMOKE_CONFIGS if args.smoke else DEFAULT_CONFIGS)
    passkey = args.passkey if args.passkey is not None else (SMOKE_PASSKEY if args.smoke else DEFAULT_PASSKEY)
    if args.prefill_chunk is None and args.smoke:
        args.prefill_chunk = 128
    args.out.mkdir(parents=True, exist_ok=True)

    from llqa.results import device_description

    result = {
        "device": device_description(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/generation_prefill.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "peak_tflops": args.peak_tflops,
        "prefill_chunk": args.prefill_chunk or "auto: the whole prompt when it fits, else 4096",
        "prefill": [],
        "passkey": [],
    }
    prefill, keys = result["prefill"], result["passkey"]

    def save() -> None:  # after every row, so a run stopped at its time limit keeps what it measured
        (args.out / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")

    for m, n, k in parse(configs, 3):
        prefill.append(time_prefill(m, n, k, args))
        print(json.dumps(prefill[-1]), flush=True)
        save()
    for m, n in parse(passkey, 2) if passkey else []:
        keys.append(run_passkey_at(m, n, args.out, args))
        print(json.dumps(keys[-1]), flush=True)
        save()
    head = ("model", "length", "prompts", "harness tok/s", "MFU", "generate b1 tok/s", "MFU")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (14, 7, 7, 14, 6, 18, 6), strict=True)))
    for r in prefill:
        print(
            f"{r['model']:>14} {r['length']:>7} {r['prompts']:>7} {r['harness_tokens_per_s']:>14,.0f} "
            f"{r['harness_mfu']:>6.3f} {r['generate_b1_tokens_per_s']:>18,.0f} {r['generate_b1_mfu']:>6.3f}"
        )
    for r in keys:
        print(
            f"passkey {r['model']} @ {r['length']}: {r['trials']} trials, {r['wall_s']} s, peak {r['peak_mem_gib']} GiB"
        )
    return result


if __name__ == "__main__":
    main()
