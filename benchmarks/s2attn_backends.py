"""Which S2-Attn backend is faster where: training steps of several model shapes and lengths, full attention
against S2-Attn on its SDPA and varlen backends, in one process.

The measurement behind `auto`'s choice between them (`trainer.s2attn`). Per case (a `random:<shape>` and a
length N): a model of that shape with random weights (bfloat16, no tokenizer file needed), one sequence of N
random tokens, gradient checkpointing, the chunked causal-LM loss over all N−1 next-token predictions and the
backward into every parameter — the step of `benchmarks/s2attn.py`. The variants take turns: after `--warmup`
untimed steps each (the compilation, under `--compile`), `--rounds` rounds of `--steps` timed steps per variant,
so that a drift of the host's speed during the run falls on all of them alike. Reported per (case, variant): the
median of all its timed steps, and the median of each round.

Also per case: `work`, the attention work of one S2 call per layer (batch 1 × query heads × head dim × N × group
size, the group N × `--group-ratio`), `trainer.s2attn.attention_work`, the quantity `auto`'s threshold is set in,
and the backend `auto` resolves to there.

One command (H200, ~6 minutes; the nine cases of benchmarks/s2attn.md, which ran as two processes):
    python benchmarks/s2attn_backends.py --compile default --out benchmarks/results/s2attn-backends-h200
CPU proof of the plumbing (SDPA backend only; the varlen kernel needs CUDA):
    python benchmarks/s2attn_backends.py --cases tiny@256 --variants full,s2-sdpa --device cpu --out /tmp/s2b
Results go to OUT/s2attn_backends.json, rewritten atomically after every case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.decode_kernels import VOCAB, random_model, word_tokenizer  # noqa: E402
from benchmarks.s2attn import S2_BACKEND, loss_fn, prepare_for_steps, query_like, use_variant  # noqa: E402
from llqa.compile import graph_count  # noqa: E402
from llqa.engine import check_compile_mode, resolve_compile_mode  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import RANDOM_SHAPES, resolve_device  # noqa: E402
from trainer import s2attn  # noqa: E402
from trainer.compile import compile_layers, uncompile_layers  # noqa: E402

# the nine cases `VARLEN_MAX_WORK` was placed between (benchmarks/s2attn.md)
CASES = (
    "smollm2-135m@16384,smollm2-135m@24576,smollm2-135m@28672,smollm2-135m@32768,smollm2-360m@16384,"
    "smollm2-360m@20480,smollm2-360m@24576,llama-3.2-1b@16384,llama-3.2-3b@16384"
)
VARIANTS = ("full", "s2-sdpa", "s2-varlen", "s2")  # s2: the default backend, `auto`


def parse_cases(text: str) -> list[tuple[str, int]]:
    cases = []
    for item in text.split(","):
        shape, _, n = item.strip().partition("@")
        if shape not in RANDOM_SHAPES or not n.isdigit():
            raise SystemExit(f"--cases: '{item}' is not SHAPE@TOKENS with SHAPE one of {', '.join(RANDOM_SHAPES)}")
        cases.append((shape, int(n)))
    return cases


def step(model, ids, loss, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    value = loss(model, ids)
    value.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    if not torch.isfinite(value):
        raise RuntimeError(f"non-finite loss {value.item()}")
    return elapsed


def run_case(shape, n_tokens, variants, args, device, dtype, compile_mode, loss) -> list[dict]:
    model = random_model(shape, n_tokens, word_tokenizer(VOCAB), device, dtype)
    prepare_for_steps(model)
    if compile_mode != "off":
        compile_layers(model, compile_mode, dynamic=False)
    ids = torch.randint(0, VOCAB, (1, n_tokens), device=device, generator=torch.Generator(device).manual_seed(0))
    times: dict[str, list[list[float]]] = {v: [] for v in variants}
    graphs = {}
    for variant in variants:
        use_variant(model, variant, args.group_ratio)
        before = graph_count()
        for _ in range(args.warmup):
            step(model, ids, loss, device)
        graphs[variant] = graph_count() - before
    for _ in range(args.rounds):
        for variant in variants:
            use_variant(model, variant, args.group_ratio)
            times[variant].append([step(model, ids, loss, device) for _ in range(args.steps)])
    q, group = query_like(model, n_tokens), s2attn.s2_group_size(n_tokens, args.group_ratio)
    work = s2attn.attention_work(q, group)
    auto = "varlen" if "varlen" in s2attn.kernel_name("auto", q, group) else "sdpa"
    if compile_mode != "off":
        uncompile_layers(model)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    full = statistics.median(sum(times["full"], [])) if "full" in times else None
    rows = []
    for variant in variants:
        flat = sum(times[variant], [])
        row = {
            "shape": shape,
            "tokens": n_tokens,
            "variant": variant,
            "backend": S2_BACKEND.get(variant),
            "work": work,
            "auto_resolves": auto,
            "step_s": statistics.median(flat),
            "round_medians_s": [round(statistics.median(r), 4) for r in times[variant]],
            "steps_s": [round(t, 4) for t in flat],
            "graphs_compiled": graphs[variant],
        }
        if full is not None and variant != "full":
            row["speedup_vs_full"] = round(full / row["step_s"], 3)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--cases", default=CASES, help="comma-separated SHAPE@TOKENS (random shapes of llqa.models)")
    p.add_argument("--variants", default="full,s2-sdpa,s2-varlen", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--group-ratio", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation)")
    p.add_argument("--compile", default="off", help="off, default, max-autotune-no-cudagraphs (as llqa train)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    cases = parse_cases(args.cases)
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(VARIANTS) or min(args.steps, args.rounds) < 1 or args.warmup < 0:
        raise SystemExit(f"bad --variants/--steps/--rounds/--warmup; variants are {', '.join(VARIANTS)}")
    for _, n in cases:
        s2attn.s2_group_size(n, args.group_ratio)
    check_compile_mode(args.compile, training=True)
    device = torch.device(resolve_device(args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile_mode = resolve_compile_mode(args.compile, device)
    loss = loss_fn()
    settings = {
        "group_ratio": args.group_ratio,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "compile": compile_mode,
        "dtype": str(dtype).removeprefix("torch."),
        "step": "forward + chunked causal-LM loss + backward into every parameter, batch 1, gradient checkpointing",
        "step_s": "median of all timed steps of the variant (rounds interleaved with the other variants)",
        "work": "query heads x head dim x tokens x group size (one S2 attention call per layer, up to a constant)",
    }
    env = {
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "varlen_max_work": s2attn.VARLEN_MAX_WORK,
    }
    results: list[dict] = []
    for shape, n in cases:
        try:
            rows = run_case(shape, n, variants, args, device, dtype, compile_mode, loss)
        except torch.OutOfMemoryError:
            rows = [{"shape": shape, "tokens": n, "error": "out of memory"}]
            torch.cuda.empty_cache()
        for row in rows:
            speed = f"  {row['speedup_vs_full']:.2f}x vs full" if "speedup_vs_full" in row else ""
            line = row.get("error") or f"step {row['step_s']:.3f} s{speed}  rounds {row['round_medians_s']}"
            print(f"{shape:>13} {n:>6} {row.get('variant', ''):>9}  {line}", flush=True)
        results += rows
        atomic_write_json(args.out / "s2attn_backends.json", {"settings": settings, "env": env, "results": results})
    print(f"wrote {args.out / 's2attn_backends.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
