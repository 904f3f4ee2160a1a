"""Benchmark: wall time and trials/s of `llqa eval passkey` over its default grid.

Each configuration `CTX:TRIALS` runs the default passkey grid at context CTX — 32 lengths uniformly up
to CTX x 11 depths (0, 0.1, ..., 1) — with TRIALS trials per cell, through the same code as the CLI
(`evals.passkey.run_passkey`). The full default grid has 10 trials per cell; a run with fewer trials
is extrapolated to 10 linearly: every trial is one independent prompt per (length, depth), so the
work (prompts, tokens, batches) is exactly proportional to the trials.

    python benchmarks/passkey.py --out results/bench-passkey                     # 8192:10 and 32768:2
    python benchmarks/passkey.py --model random:tiny --configs 512:1 --out /tmp/b  # CPU smoke test

Prints a table and writes `benchmark.json` (plus each run's result files) into --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_TRIALS = 10


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        ctx, _, trials = part.partition(":")
        out.append((int(ctx), int(trials or FULL_TRIALS)))
    return out


def run_one(model: str, ctx: int, trials: int, args, out: Path) -> dict:
    import torch

    from evals.passkey import DEFAULT_DEPTHS, PasskeyConfig, default_lengths, run_passkey
    from llqa.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(model, ctx=ctx, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - t0
    cuda = torch.cuda.is_available() and loaded.info.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = PasskeyConfig(trials=trials, chat_template=args.chat_template, batch_tokens=args.batch_tokens, seed=args.seed)
    t0 = time.perf_counter()
    summary = run_passkey(
        loaded, cfg, out / f"ctx{ctx}-trials{trials}", overwrite=True, progress=args.progress, ctx=ctx
    )
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    lengths = default_lengths(ctx)
    prompts = summary["evaluated"] + summary["skipped"]
    tokens = sum(r["length"] * r["trials"] for r in summary["by_length"])
    scale = FULL_TRIALS / trials
    result = {
        "model": loaded.info.spec,
        "ctx": ctx,
        "rope_factor": loaded.info.rope_factor,
        "dtype": loaded.info.dtype,
        "device": loaded.info.device,
        "chat_template": args.chat_template,
        "lengths": len(lengths),
        "max_length": max(lengths),
        "depths": len(DEFAULT_DEPTHS),
        "trials": trials,
        "prompts": prompts,
        "prompt_tokens": tokens,
        "load_s": round(load_s, 2),
        "wall_s": round(wall, 2),
        "trials_per_s": round(prompts / wall, 2),
        "prompt_tokens_per_s": round(tokens / wall),
        "accuracy": summary["accuracy"],
        "effective_context_window": summary["effective_context_window"],
        "full_grid_trials": FULL_TRIALS,
        "full_grid_prompts": round(prompts * scale),
        "full_grid_s": round(wall * scale, 1),
        "full_grid_extrapolated": trials != FULL_TRIALS,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    del loaded
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--configs",
        default="8192:10,32768:2",
        help="CTX:TRIALS,... (default: the full grid at 8k, 2 of 10 trials at 32k, extrapolated)",
    )
    p.add_argument(
        "--chat-template",
        default="none",
        choices=["auto", "none"],
        help="none (default): SmolLM2-Instruct answers with the number only without its template",
    )
    p.add_argument("--batch-tokens", type=int, default=None, help="default: the CLI's (262144 on GPU)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from llqa.io import atomic_write_json
    from llqa.results import device_description

    results = []
    for ctx, trials in parse_configs(args.configs):
        r = run_one(args.model, ctx, trials, args, args.out)
        results.append(r)
        print(
            f"ctx {r['ctx']:>6}  trials {r['trials']:>2}  prompts {r['prompts']:>5}  wall {r['wall_s']:>8.1f}s  "
            f"{r['trials_per_s']:>7.2f} trials/s  {r['prompt_tokens_per_s']:>9,} tok/s  acc {r['accuracy']:.3f}  "
            f"ECW {r['effective_context_window']}  full grid ({r['full_grid_prompts']} prompts) "
            f"{'~' if r['full_grid_extrapolated'] else ''}{r['full_grid_s']:.0f}s",
            flush=True,
        )
    atomic_write_json(
        args.out / "benchmark.json", {"device": device_description(), "command": " ".join(sys.argv), "results": results}
    )
    print(f"wrote {args.out / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
