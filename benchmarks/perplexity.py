"""Speed of llqa's perplexity engine (benchmarks/perplexity.md says what is measured and how).

(a) engine vs the naive per-window loop, in the same run: SmolLM2-135M bf16, sliding windows (S=256) at
    L=4096 and 8192 over real text; windows/s of `evals.perplexity.run` (end to end: tokenization, batching,
    result files) against batch-1 `model(input_ids, labels=...)` per window (LongLoRA's eval.py / the HF
    perplexity recipe), and the two perplexities side by side (they score the same tokens).
(b) a Llama-2-7B-shaped model with random weights at L=8192 and 32768: tokens/s and model FLOP
    utilisation of the engine end to end.
Every engine setting is measured uncompiled and with `--compile` (torch.compile of the decoder layers);
the one-time compilation seconds are reported apart (`compile_s`), steady-state rates exclude them and
`speedup_incl_compile` / `mfu_incl_compile` include them.

One command on an H100 (about 4 minutes; see the .md):
    python benchmarks/perplexity.py --data .data/novels --out benchmarks/results/perplexity-h100-compile
CPU smoke test at tiny sizes:
    python benchmarks/perplexity.py --device cpu --dtype float32 --stride 64 --small-model random:tiny \\
        --small-lengths 256 --small-windows 12 --small-batch-tokens 0,1024 --big-model random:tiny \\
        --big-lengths 512 --big-windows 6 --big-batch-tokens 1024 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evals.perplexity import PerplexityConfig, default_batch_tokens, run  # noqa: E402
from evals.texts import Document, load_texts  # noqa: E402
from evals.windows import sliding_windows  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import load_model  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12}  # dense bf16 FLOP/s


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def default_data() -> Path:
    for p in (ROOT / ".data" / "gutenberg_novels", ROOT.parent / "shared" / "data" / "gutenberg_novels"):
        if p.is_dir():
            return p
    raise SystemExit("no --data given and no .data/gutenberg_novels or ../shared/data/gutenberg_novels found")


def real_text(data: Path, tokenizer, n_tokens: int) -> tuple[str, list[int]]:
    """Novels in file order, joined, cut just after their first `n_tokens` tokens: (text, token ids)."""
    docs = load_texts(data, pattern="pg*.txt") if data.is_dir() else load_texts(data)
    parts, n = [], 0
    for d in docs:
        parts.append(d.text)
        n += len(d.text)
        if n >= 8 * n_tokens:
            break
    text = "\n\n".join(parts)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if len(enc["input_ids"]) < n_tokens + 1:
        raise SystemExit(f"--data holds only {len(enc['input_ids'])} tokens, {n_tokens + 1} needed")
    # the engine tokenizes the text itself (end to end), so hand it only what it needs, plus a margin
    return text[: enc["offset_mapping"][n_tokens][1] + 200], enc["input_ids"][:n_tokens]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_time(
    loaded,
    text: str,
    length: int,
    stride: int,
    n_tokens: int,
    batch_tokens: int | None,
    sdpa_backend: str,
    repeat: int = 1,
    compile_mode: str = "off",
) -> dict:
    """A short warm-up run (two full batches and one more window: every batch shape the timed runs use, so
    a compiled engine compiles here), then `repeat` timed runs of the whole engine (fresh output dirs).

    compile_s: the warm-up's time beyond what its windows cost at the steady rate — the one-time cost of
    compilation (and of cuDNN/cuBLAS plan creation, which an uncompiled warm-up pays too)."""
    per_batch = max(1, (batch_tokens or default_batch_tokens(loaded.model, length)) // length)
    warm_tokens = min(n_tokens, length + 2 * per_batch * stride)
    doc = [Document("bench", text)]
    times, out, warm = [], None, None
    for i, max_tokens in enumerate([warm_tokens] + [n_tokens] * repeat):
        cfg = PerplexityConfig(lengths=[length], stride=stride, bos="never", max_tokens=max_tokens)
        with tempfile.TemporaryDirectory() as tmp:
            sync(loaded.model.device)
            t0 = time.perf_counter()
            out = run(
                loaded,
                doc,
                cfg,
                tmp,
                batch_tokens=batch_tokens,
                sdpa_backend=sdpa_backend,
                show_progress=False,
                compile_mode=compile_mode,
            )
            sync(loaded.model.device)
            seconds = time.perf_counter() - t0
            if i == 0:
                warm = (seconds, out.rows[0]["windows"])
            else:
                times.append(seconds)
                this = json.loads((Path(tmp) / "result.json").read_text())["this_session"]
    row = out.rows[0]
    steady = min(times) / row["windows"]  # seconds per window
    return {
        "seconds": min(times),
        "ppl": row["ppl"],
        "windows": row["windows"],
        "scored_tokens": row["scored_tokens"],
        "warmup_s": warm[0],
        "compile_s": max(0.0, warm[0] - warm[1] * steady),
        "compiled_batches": this["compiled_batches"],
        "eager_batches": this["eager_batches"],
    }


def naive_time(loaded, ids, length: int, stride: int, warmup: int = 2) -> dict:
    """The per-window loop of LongLoRA's eval.py / the HF perplexity recipe: batch 1, full logits, HF loss
    over the window's scored tokens (labels of unscored positions are -100)."""
    import torch

    model, dev = loaded.model, loaded.model.device
    ws = list(sliding_windows(len(ids), length, stride))
    nll, count = 0.0, 0
    with torch.inference_mode():
        for w in ws[:warmup]:
            x = torch.tensor(ids[w.start : w.end], device=dev)[None]
            model(input_ids=x, labels=x)
        sync(dev)
        t0 = time.perf_counter()
        losses = []
        for w in ws:
            x = torch.tensor(ids[w.start : w.end], device=dev)[None]
            y = x.clone()
            y[:, : w.first_scored - w.start] = -100  # HF shifts labels: position t is predicted from < t
            losses.append(model(input_ids=x, labels=y).loss * w.n_scored)
            count += w.n_scored
        nll = float(torch.stack(losses).sum())
        sync(dev)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "ppl": math.exp(nll / count), "windows": len(ws), "scored_tokens": count}


def part_small(args, device: str) -> list[dict]:
    loaded = load_model(args.small_model, ctx=max(args.small_lengths), dtype=args.dtype, device=device)
    tok = loaded.tokenizer
    rows = []
    for length in args.small_lengths:
        n_tokens = length + (args.small_windows - 1) * args.stride
        text, ids = real_text(args.data, tok, n_tokens)
        naive = naive_time(loaded, ids, length, args.stride)
        settings = [(bt, b, c) for c in args.compile for b in args.sdpa for bt in args.small_batch_tokens]
        for bt, backend, mode in settings:
            try:
                eng = engine_time(loaded, text, length, args.stride, n_tokens, bt or None, backend, args.repeat, mode)
            except Exception as e:  # a kernel preference this GPU/torch cannot run is reported, not fatal
                rows.append({"part": "a", "length": length, "sdpa": backend, "compile": mode, "error": repr(e)[:500]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            assert eng["windows"] == naive["windows"] and eng["scored_tokens"] == naive["scored_tokens"]
            row = {
                "part": "a",
                "model": args.small_model,
                "length": length,
                "stride": args.stride,
                "windows": naive["windows"],
                "batch_tokens": bt or "default",
                "sdpa": backend,
                "compile": mode,
                "naive_windows_per_s": naive["windows"] / naive["seconds"],
                "engine_windows_per_s": eng["windows"] / eng["seconds"],
                "naive_s": naive["seconds"],
                "engine_s": eng["seconds"],
                "naive_ppl": naive["ppl"],
                "engine_ppl": eng["ppl"],
                "compile_s": eng["compile_s"],
                "warmup_s": eng["warmup_s"],
                "compiled_batches": eng["compiled_batches"],
                "eager_batches": eng["eager_batches"],
            }
            row["speedup"] = row["engine_windows_per_s"] / row["naive_windows_per_s"]
            # end to end for these windows with the one-time cost paid in this run
            row["speedup_incl_compile"] = (
                naive["seconds"] / (eng["seconds"] + eng["compile_s"]) if mode != "off" else row["speedup"]
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    del loaded
    return rows


def flops_per_window(params: int, head_params: int, layers: int, hidden: int, length: int, scored: int) -> tuple:
    """(stated, executed) forward FLOPs of one window. Stated: 2·params·L + causal attention 2·layers·L²·d
    (the issue's formula). Executed: what the engine computes: no embedding matmul, LM head on scored rows."""
    attn = 2 * layers * length * length * hidden
    stated = 2 * params * length + attn
    executed = 2 * (params - 2 * head_params) * length + 2 * head_params * scored + attn
    return stated, executed


def part_big(args, device: str) -> list[dict]:
    import torch

    loaded = load_model(args.big_model, ctx=max(args.big_lengths), dtype=args.dtype, device=device)
    info = loaded.info
    head_params = loaded.model.get_output_embeddings().weight.numel()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    rows = []
    for length in args.big_lengths:
        n_tokens = length + (args.big_windows - 1) * args.stride
        text, _ = real_text(args.data, loaded.tokenizer, n_tokens)
        for backend, mode in [(b, c) for c in args.compile for b in args.sdpa]:
            try:
                eng = engine_time(
                    loaded,
                    text,
                    length,
                    args.stride,
                    n_tokens,
                    args.big_batch_tokens or None,
                    backend,
                    args.repeat,
                    mode,
                )
            except Exception as e:  # a kernel preference this GPU/torch cannot run is reported, not fatal
                rows.append({"part": "b", "length": length, "sdpa": backend, "compile": mode, "error": repr(e)[:500]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            ws = list(sliding_windows(n_tokens, length, args.stride))
            stated = executed = 0
            for w in ws:
                s, e = flops_per_window(info.params, head_params, info.layers, info.hidden, w.length, w.n_scored)
                stated, executed = stated + s, executed + e
            forward_tokens = sum(w.length for w in ws)
            row = {
                "part": "b",
                "model": args.big_model,
                "params": info.params,
                "length": length,
                "stride": args.stride,
                "windows": len(ws),
                "sdpa": backend,
                "compile": mode,
                "seconds": eng["seconds"],
                "compile_s": eng["compile_s"],
                "warmup_s": eng["warmup_s"],
                "compiled_batches": eng["compiled_batches"],
                "eager_batches": eng["eager_batches"],
                "tokens_per_s": forward_tokens / eng["seconds"],
                "windows_per_s": len(ws) / eng["seconds"],
                "tflops_stated": stated / eng["seconds"] / 1e12,
                "mfu": stated / eng["seconds"] / peak if peak else None,
                "mfu_executed": executed / eng["seconds"] / peak if peak else None,
                "peak_tflops": peak / 1e12 if peak else None,
                "ppl": eng["ppl"],
                "mfu_incl_compile": stated / (eng["seconds"] + eng["compile_s"]) / peak if peak else None,
                "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder of novels (pg*.txt) or a text file")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json")
    p.add_argument("--parts", default="a,b", help="a (engine vs naive), b (7B MFU), or both")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1, help="timed engine runs per setting (best is kept)")
    p.add_argument("--small-model", default="smollm2-135m")
    p.add_argument("--small-lengths", type=parse_ints, default=[4096, 8192])
    p.add_argument("--small-windows", type=int, default=96, help="windows measured per length")
    p.add_argument(
        "--small-batch-tokens",
        type=parse_ints,
        default=[0, 131072],
        help="engine tokens per forward to try; 0 = the engine's default",
    )
    p.add_argument("--big-model", default="random:7b")
    p.add_argument("--big-lengths", type=parse_ints, default=[8192, 32768])
    p.add_argument("--big-windows", type=int, default=8, help="windows measured per length")
    p.add_argument("--big-batch-tokens", type=int, default=0)
    p.add_argument(
        "--sdpa",
        type=lambda s: s.split(","),
        default=["auto"],
        help="engine SDPA kernel preferences to measure (auto = cuDNN first on Hopper), e.g. auto,flash",
    )
    p.add_argument(
        "--compile",
        type=lambda s: s.split(","),
        default=["off", "default"],
        help="engine --compile modes to measure: off, default, max-autotune-no-cudagraphs, reduce-overhead",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not known")
    args = p.parse_args(argv)
    args.data = args.data or default_data()
    import torch

    from llqa.models import resolve_device

    device = str(resolve_device(args.device))
    # every (model, length, batch size) measured compiles its own shapes in this one process: room for all
    for name in ("recompile_limit", "cache_size_limit"):
        if isinstance(getattr(torch._dynamo.config, name, None), int):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    started = time.time()
    env = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": " ".join(sys.argv),
        "data": str(args.data),
    }
    print(json.dumps(env), flush=True)
    rows = []
    parts = args.parts.split(",")
    if "a" in parts:
        rows += part_small(args, device)
    if "b" in parts:
        rows += part_big(args, device)
    env["wall_s"] = time.time() - started
    atomic_write_json(args.out / "results.json", {"env": env, "rows": rows})
    print(f"wrote {args.out / 'results.json'} in {env['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
