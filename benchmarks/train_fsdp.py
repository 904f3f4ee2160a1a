"""FSDP training on several GPUs of one host (`--parallel fsdp`, issues 7 and 9): train, stop, resume.

For each run `SHAPE@CTX` (a `random:<shape>` Llama, LongLoRA's method: LoRA+ and S2-Attn) the script
launches `llqa train` (or `llqa sft`) twice under torchrun (or `accelerate launch`), exactly as a user would:
1. `--max-steps S --save-every S`: builds the model sharded over NPROC GPUs, trains S steps, checkpoints;
2. `--max-steps 2S --resume`: a new launch that reloads the checkpoint (and the random base's copy in the run
   directory) and trains S more steps.
It then reads the run's `log.jsonl` and writes `OUT/summary.json`:
- `tokens_per_s`: tokens of the global batch / slowest rank's step time, over the steps that are not the first
  of a launch (those include warm-up); `step_s` their mean;
- `mfu`: model FLOPs per second / (NPROC × `--peak-tflops`), with `benchmarks/train_7b.py`'s formula: 4·P·N for
  a LoRA step (P = parameters of the matmuls) plus S2 attention 3·2·N²·d·layers / 4 per sequence of N tokens
  (sft: N = the mean sequence length of the step); recomputation by gradient checkpointing is not counted;
- `peak_mem_gib_per_gpu`: `torch.cuda.max_memory_allocated` of each rank, the maximum over the run's steps;
- `resume_ok`: steps 1..2S logged once each by NPROC ranks, checkpoint 2S and the final adapter written, the
  loss finite; `wall_s` per launch (model build, base copy, data, training, checkpoints).

One command, 2×H200 (about 4 minutes): random:7b at 32768, global batch 4 (2 sequences per GPU):
    python benchmarks/train_fsdp.py --out benchmarks/results/train-fsdp-2xh200
The 8-GPU shapes (13B at 64k, 70B at 32k), sft on a LongQA build (each its own command; the 70B run split in
two launches, see train_fsdp.md, which also gives the offline `llqa build` of /tmp/longqa):
    python benchmarks/train_fsdp.py --nproc 8 --runs 13b@65536 --task sft --data /tmp/longqa --out OUT13
    python benchmarks/train_fsdp.py --nproc 8 --runs 70b@32768 --task sft --data /tmp/longqa --steps 1 \
        --batch-size 8 --out OUT70 --phase train        (then the same command with --phase resume)
CPU proof (gloo):
    python benchmarks/train_fsdp.py --nproc 2 --runs tiny@256 --device cpu --out /tmp/fsdp-bench
`--task sft` trains on `--data` (a LongQA build directory or a LongAlpaca-style json/jsonl); without `--data`
it generates instruction/answer pairs of about CTX tokens (their content is irrelevant to speed and memory).
`--task train` packs generated text into sequences of exactly CTX tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from llqa.io import atomic_write_json  # noqa: E402


def write_text(path: Path, words_per_doc: int, docs: int) -> None:
    """Generated documents (packed by `llqa train`)."""
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    path.write_text("\n\n".join(" ".join(rng.choice(vocab) for _ in range(words_per_doc)) + "." for _ in range(docs)))


def write_sft(path: Path, words: int, items: int) -> None:
    """Generated instruction/answer pairs (LongAlpaca's fields), instructions of about `words` words."""
    rng = random.Random(1)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    with path.open("w") as f:
        for i in range(items):
            text = " ".join(rng.choice(vocab) for _ in range(words))
            f.write(
                json.dumps(
                    {
                        "instruction": f"{text}\n\nWhat is item {i} about?",
                        "output": " ".join(rng.choice(vocab) for _ in range(40)),
                    }
                )
                + "\n"
            )


def launcher(kind: str, nproc: int) -> list[str]:
    if kind == "accelerate":  # --multi_gpu is accelerate's torchrun launch (on a CPU-only host it runs gloo)
        return [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(nproc),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "cli",
        ]
    return ["torchrun", "--standalone", "--nproc-per-node", str(nproc), "-m", "cli"]


def model_flops(shape: str, ctx: int, tokens: float, sequences: int, attn: str) -> float:
    """FLOPs of one LoRA step over `sequences` sequences holding `tokens` tokens (train_7b.py's formula)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llqa.models import apply_position_interpolation, load_config, resolve

    spec = importlib.util.spec_from_file_location("bench_train_7b", ROOT / "benchmarks" / "train_7b.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = apply_position_interpolation(load_config(resolve(f"random:{shape}")), ctx)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = tokens / sequences  # packed training: exactly ctx
    return bench.flops(model, round(n), attn)["model_flops"] * sequences


def summarise(
    run: Path,
    shape: str,
    ctx: int,
    nproc: int,
    steps: int,
    batch: int,
    walls: list[float],
    peak_tflops: float,
    task: str,
    attn: str,
) -> dict:
    from trainer.runlog import read_log

    log = read_log(run)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    final = (run / "adapter_model.safetensors").is_file()
    resumed = (
        [r["step"] for r in log] == list(range(1, 2 * steps + 1))
        and all(r["world_size"] == nproc for r in log)
        and f"step-{2 * steps:06d}" in ckpts
        and final
        and all(math.isfinite(r["loss"]) for r in log)
    )
    timed = [r for r in log if r["step"] not in (1, steps + 1)] or log  # the first step of a launch warms up
    step_s = sum(r["step_s"] for r in timed) / len(timed)
    tokens = sum(r["tokens"] for r in timed) / len(timed)
    flops = model_flops(shape, ctx, tokens, batch, attn)
    per_rank = [r.get("peak_mem_gib_per_rank") or [] for r in log]
    return {
        "model": f"random:{shape}",
        "ctx": ctx,
        "task": task,
        "nproc": nproc,
        "global_batch": batch,
        "steps": len(log),
        "resume_ok": resumed,
        "checkpoints": ckpts,
        "wall_s_per_launch": walls,
        "step_s": step_s,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "model_flops_per_step": flops,
        "mfu": flops / step_s / (nproc * peak_tflops * 1e12),
        "peak_mem_gib_per_gpu": [max(v) for v in zip(*per_rank, strict=True)] if all(per_rank) else None,
        "losses": [r["loss"] for r in log],
    }


def run_one(args, shape: str, ctx: int, out: Path) -> dict | None:
    """Launch 1 and/or 2 (`--phase`); the summary once launch 2 has run (None after launch 1 alone)."""
    run = out / f"{shape}-{ctx}"
    walls_file = out / f"{shape}-{ctx}.walls.json"  # launch times, kept across `--phase` commands
    if args.phase in ("all", "train"):
        shutil.rmtree(run, ignore_errors=True)
        walls_file.unlink(missing_ok=True)
    data = args.data
    if data is None:
        data = out / f"{args.task}-{ctx}.{'jsonl' if args.task == 'sft' else 'txt'}"
        if args.task == "sft":
            # ~2 tokens per word; every item is used once (2S steps of the global batch), plus a spare
            write_sft(data, words=ctx // 2, items=2 * args.batch_size * args.steps + 2)
        else:
            write_text(data, words_per_doc=2000, docs=max(8, ctx * args.batch_size * args.steps // 1000))
    common = [
        args.task,
        "--model",
        f"random:{shape}",
        "--ctx",
        str(ctx),
        "--data",
        str(data),
        "--out",
        str(run),
        "--batch-size",
        str(args.batch_size),
        "--save-every",
        str(args.steps),
        "--warmup-steps",
        "2",
        "--method",
        args.method,
        "--parallel",
        "fsdp",
        "--device",
        args.device,
        *args.extra,
    ]
    launches = {"train": (args.steps, []), "resume": (2 * args.steps, ["--resume"])}
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    for phase, (max_steps, resume) in launches.items():
        if args.phase not in ("all", phase):
            continue
        cmd = [*launcher(args.launcher, args.nproc), *common, "--max-steps", str(max_steps), *resume]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        walls[phase] = round(time.perf_counter() - t0, 1)
        atomic_write_json(walls_file, walls)
    if "resume" not in walls:
        return None
    attn = "s2" if args.method == "longlora" or "s2" in args.extra else "full"
    return summarise(
        run,
        shape,
        ctx,
        args.nproc,
        args.steps,
        args.batch_size,
        [walls.get("train"), walls["resume"]],
        args.peak_tflops,
        args.task,
        attn,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nproc", type=int, default=2, help="processes (GPUs) on this host")
    ap.add_argument("--runs", default="7b@32768", help="comma-separated SHAPE@CTX (random:<SHAPE> models)")
    ap.add_argument("--task", choices=("train", "sft"), default="train")
    ap.add_argument("--data", type=Path, help="sft: LongQA build dir or json/jsonl; train: text (default: generated)")
    ap.add_argument("--method", default="longlora", help="llqa --method (longlora: LoRA+ and S2-Attn)")
    ap.add_argument("--steps", type=int, default=2, help="steps per launch (S): S, then --resume to 2S")
    ap.add_argument("--batch-size", type=int, default=0, help="global batch (default: 2 sequences per process)")
    ap.add_argument("--launcher", choices=("torchrun", "accelerate"), default="torchrun")
    ap.add_argument(
        "--phase",
        choices=("all", "train", "resume"),
        default="all",
        help="both launches, or only the first (train) or the second (resume, then the summary): to split "
        "a long run (70B) into two commands",
    )
    ap.add_argument("--device", default="auto", help="llqa --device (cpu: gloo proof at tiny sizes)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100/H200 SXM: 989)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further llqa options, last")
    args = ap.parse_args(argv)
    args.batch_size = args.batch_size or 2 * args.nproc
    args.out.mkdir(parents=True, exist_ok=True)
    summary_file = args.out / "summary.json"
    results = json.loads(summary_file.read_text())["runs"] if summary_file.is_file() else []
    for spec in args.runs.split(","):
        shape, ctx = spec.split("@")
        r = run_one(args, shape, int(ctx), args.out)
        if r is None:
            print(f"launch 1 of {spec} done; run --phase resume for launch 2 and the summary")
            continue
        results = [x for x in results if (x["model"], x["ctx"]) != (r["model"], r["ctx"])] + [r]
        print(
            f"{r['model']} ctx {r['ctx']} on {r['nproc']}: {r['tokens_per_s']:,.0f} tok/s, "
            f"{r['step_s']:.2f} s/step, MFU {r['mfu']:.1%}, peak per GPU {r['peak_mem_gib_per_gpu']} GiB, "
            f"launches {r['wall_s_per_launch']} s, resume {'ok' if r['resume_ok'] else 'FAILED'}"
        )
        summary = {
            "runs": results,
            "host": os.uname().nodename,
            "peak_tflops": args.peak_tflops,
            "command": " ".join(sys.argv),
        }
        atomic_write_json(summary_file, summary)
    if args.phase == "train":
        return 0
    ok = all(r["resume_ok"] for r in results)
    print("resume worked" if ok else "RESUME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
