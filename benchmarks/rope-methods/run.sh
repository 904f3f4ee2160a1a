#!/usr/bin/env bash
# SmolLM2-135M-Instruct (native 8k) extended to 32k WITHOUT training by each context extension method of
# `llqa --rope`, scored as benchmarks/smollm2-8k-to-32k scores its models: perplexity (stride 256) at
# 2k–32k on the same four held-out documents, passkey to 32k. Every step is an llqa command.
#
#   bash benchmarks/rope-methods/run.sh heldout eval:yarn eval:dynamic eval:theta eval:pi report
#
# Stages: heldout (the held-out documents, made by smollm2-8k-to-32k/run.sh), eval:METHOD[:TASKS]
# (TASKS: perplexity,passkey), report. D = data folder (default ../shared/data), R = output root (default
# runs/rope-methods), DEADLINE = epoch seconds after which no new llqa command starts and a running one
# is stopped (evals resume from their cells.jsonl on the next invocation).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${D:-../shared/data}
R=${R:-runs/rope-methods}
MODEL=${MODEL:-smollm2-135m}
CTX=${CTX:-32768}
LENGTHS=${LENGTHS:-2048,4096,8192,16384,32768}
PK_LENGTHS=${PK_LENGTHS:-2048,4096,8192,12288,16384,20480,24576,28672,32768}
. "$here/../llqa_deadline.sh"

stage_eval() {
  local method=$1 tasks=${2:-perplexity,passkey} out=$R/eval/$1
  [[ ,$tasks, == *,perplexity,* ]] && llqa eval perplexity --model "$MODEL" --ctx "$CTX" --rope "$method" \
    --data "$R/heldout" --lengths "$LENGTHS" --max-tokens "$CTX" --stride 256 --out "$out/perplexity" --no-progress
  [[ ,$tasks, == *,passkey,* ]] && llqa eval passkey --model "$MODEL" --ctx "$CTX" --rope "$method" \
    --lengths "$PK_LENGTHS" --depths 0,0.25,0.5,0.75,1 --trials 4 --chat-template none --overlong keep \
    --out "$out/passkey" --no-progress
  return 0
}

stage_report() {
  local names=() m
  for m in pi yarn dynamic theta; do
    [[ -d $R/eval/$m ]] && names+=(--name "$R/eval/$m/perplexity=$m, no training" --name "$R/eval/$m/passkey=$m, no training")
  done
  llqa report "$R/eval" --out "$R/report" --title "SmolLM2-135M-Instruct, 8k → 32k without training, by RoPE method" "${names[@]}"
}

for s in "$@"; do
  case $s in
    heldout) D=$D R=$R bash "$here/../smollm2-8k-to-32k/run.sh" heldout ;;
    eval:*:*) spec=${s#eval:}; stage_eval "${spec%%:*}" "${spec#*:}" ;;
    eval:*) stage_eval "${s#eval:}" ;;
    report) stage_report ;;
    *) echo "unknown stage '$s'" >&2; exit 2 ;;
  esac
done
