#!/usr/bin/env bash
# The generation evals shown end to end on SmolLM2-135M-Instruct: RULER on the base model (4k-8k) and on the
# `longlora` run of ../smollm2-8k-to-32k (4k-32k), LongQA's held-out questions before and after a short
# `llqa sft` on a small local build (longqa_small.toml here), and one `llqa report` over all of it.
#
#   bash benchmarks/e2e/run.sh build ruler-base ruler-longlora sft longqa report
#
# Stages: build (the LongQA build: CPU, needs `datasets` and ../shared/data), ruler-base, ruler-longlora,
# sft, longqa (base and sft run), report. Each skips finished work and every eval resumes from its cells.jsonl.
# Environment: D = the data folder (default ../shared/data), R = output root (default runs/e2e),
# RUN = the longlora run directory (default runs/smollm2-8k-to-32k/train/longlora; make it with
# `bash benchmarks/smollm2-8k-to-32k/run.sh train:longlora`), LQ = the LongQA build (default $R/longqa-build),
# DEADLINE = epoch seconds after which no new llqa command starts and a running one is stopped (resumable).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${D:-../shared/data}
R=${R:-runs/e2e}
RUN=${RUN:-runs/smollm2-8k-to-32k/train/longlora}
LQ=${LQ:-$R/longqa-build}
MODEL=${MODEL:-smollm2-135m}
PG=$D/paul_graham_essays/PaulGrahamEssays
. "$here/../llqa_deadline.sh"

stage_build() {
  [[ -f $LQ/manifest.json ]] && return 0
  llqa build --recipe "$here/longqa_small.toml" --source-dir "$D" --allow-short --out "$LQ"
}
stage_ruler_base() {  # the base model at its own 8k context
  llqa eval ruler --model "$MODEL" --lengths 4096,8192 --samples 100 --haystack "$PG" --out "$R/ruler-base" --no-progress
}
stage_ruler_longlora() {  # the run loads at its trained context (32k, PI x4)
  local t=$(date +%s) rc=0
  llqa eval ruler --model "$RUN" --lengths 4096,8192,16384,32768 --samples 100 --haystack "$PG" \
    --out "$R/ruler-longlora" --no-progress || rc=$?
  # logged when stopped at a deadline too: the suite's wall time is the sum over invocations
  echo "ruler-longlora: $(( $(date +%s) - t )) s wall in this invocation (exit $rc)" | tee -a "$R/wall.txt"
  return $rc
}
stage_sft() {  # LoRA+ at 16k (PI x2): 40 steps x 4 items of the build's train split
  [[ -f $R/sft-lora+/llqa_model.json ]] && return 0
  local resume=(); [[ -f $R/sft-lora+/train_config.json ]] && resume=(--resume)
  llqa sft --model "$MODEL" --ctx 16384 --data "$LQ" --method lora+ --max-steps 40 --batch-size 4 --lr 2e-4 \
    --warmup-steps 4 --seed 42 --save-every 20 --out "$R/sft-lora+" "${resume[@]}"
}
stage_longqa() {  # the test split: documents never trained on; the base at its native 8k (long items lose their middle)
  llqa eval longqa "$LQ" --model "$R/sft-lora+" --out "$R/longqa-sft" --no-progress
  llqa eval longqa "$LQ" --model "$MODEL" --template auto --out "$R/longqa-base" --no-progress
}
stage_report() {
  local inputs=() names=()
  for d in ruler-base ruler-longlora longqa-base sft-lora+ longqa-sft; do [[ -d $R/$d ]] && inputs+=("$R/$d"); done
  [[ -d $RUN ]] && inputs+=("$RUN") && names+=(--name "$RUN=longlora PI ×4, 100 steps")
  [[ -d $R/longqa-base ]] && names+=(--name "$R/longqa-base=base (native 8k, no PI, no fine-tuning)")
  [[ -d $R/sft-lora+ ]] && names+=(--name "$R/sft-lora+=lora+ SFT on LongQA (40 steps)")
  llqa report "${inputs[@]}" --out "$R/report" --title "SmolLM2-135M-Instruct: RULER and LongQA-test" "${names[@]}"
}

for s in "$@"; do
  case $s in
    build) stage_build ;;
    ruler-base) stage_ruler_base ;;
    ruler-longlora) stage_ruler_longlora ;;
    sft) stage_sft ;;
    longqa) stage_longqa ;;
    report) stage_report ;;
    *) echo "unknown stage '$s'" >&2; exit 2 ;;
  esac
done
