#!/usr/bin/env bash
# Data-parallel training on several GPUs of one host: `torchrun` starts one llqa process per GPU,
# trainer.distributed wraps the step in DDP. Two launches: train 2 steps (checkpoint + final weights written by
# rank 0), then `--resume` to step 4 (every rank loads that checkpoint). Prints tokens/s, peak memory per GPU and
# whether the resume continued the run.
#
#   bash benchmarks/train_multi_gpu.sh [OUT]      (2×H200: about 4 minutes; env NPROC, MODEL, CTX, BATCH, PARALLEL, CP override)
#
# Context parallelism (CP ranks per sequence, S2-Attn): the 7B at 256k on 2 GPUs is
#   CP=2 CTX=262144 BATCH=2 bash benchmarks/train_multi_gpu.sh benchmarks/results/train-cp2-256k
#
# Defaults: random:7b (Llama-2-7B shape, LoRA+ and S2-Attn: `--method longlora`), ctx 32768, global batch 4 =
# 1 sequence per micro-batch × 2 accumulation × 2 GPUs. The data is generated text (its content is irrelevant
# to speed and memory). Results: OUT/run/log.jsonl (one record per step) and OUT/summary.json.
set -euo pipefail
OUT=${1:-benchmarks/results/train-multi-gpu}
NPROC=${NPROC:-2}
MODEL=${MODEL:-random:7b}
CTX=${CTX:-32768}
BATCH=${BATCH:-4}
PARALLEL=${PARALLEL:-ddp}  # fsdp: the same under FSDP2 (benchmarks/train_fsdp.py measures it with MFU)
CP=${CP:-1}  # --context-parallel: ranks per sequence (the others are data-parallel replicas)
rm -rf "$OUT/run"
mkdir -p "$OUT"
python - "$OUT/text.txt" <<'PY'
import random, sys
rng = random.Random(0)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(5000)]
with open(sys.argv[1], 'w') as f:
    for _ in range(300):
        f.write(' '.join(rng.choice(words) for _ in range(2000)) + '.\n\n')
PY
common=(train --model "$MODEL" --ctx "$CTX" --data "$OUT/text.txt" --out "$OUT/run" --batch-size "$BATCH"
        --save-every 2 --warmup-steps 2 --parallel "$PARALLEL" --context-parallel "$CP")
start=$(date +%s)
torchrun --standalone --nproc-per-node "$NPROC" -m cli "${common[@]}" --max-steps 2
torchrun --standalone --nproc-per-node "$NPROC" -m cli "${common[@]}" --max-steps 4 --resume
python - "$OUT" "$NPROC" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path
from trainer.runlog import read_log
out, nproc, wall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = read_log(out / "run")
ckpts = sorted(p.name for p in (out / "run" / "checkpoints").glob("step-*"))
resumed = [r["step"] for r in log] == [1, 2, 3, 4] and all(r["world_size"] == nproc for r in log) \
    and "step-000004" in ckpts and (out / "run" / "adapter_model.safetensors").is_file()
for r in log:
    print(f"step {r['step']}: loss {r['loss']:.4f}  {r['tokens_per_s']:,.0f} tok/s (all GPUs)  "
          f"{r['step_s']:.2f} s  peak per GPU {r.get('peak_mem_gib_per_rank')} GiB")
timed = log[1:2] + log[3:]  # the first step of each launch includes warm-up
summary = {"nproc": nproc, "steps": len(log), "resume_ok": resumed, "checkpoints": ckpts, "wall_s": wall,
           "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_s"] for r in timed),
           "peak_mem_gib_per_gpu": [max(v) for v in zip(*(r["peak_mem_gib_per_rank"] or [] for r in log))],
           "losses": [r["loss"] for r in log]}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
print("resume worked" if resumed else "RESUME FAILED")
sys.exit(0 if resumed else 1)
PY
