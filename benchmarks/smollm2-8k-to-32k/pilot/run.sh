#!/usr/bin/env bash
# Pilot of the smollm2-8k-to-32k pipeline on a GPU: train (longlora, PI x4) -> perplexity + passkey on the run dir -> report.
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}; CTX=${CTX:-32768}; LENGTHS=${LENGTHS:-2048,8192,32768}; PK=${PK:-8192,32768}
STEPS=${STEPS:-12}; R=${R:-/tmp/pilot}; DEST=${DEST:-$OUT}
rm -rf "$R"; mkdir -p "$R"
llqa() { python cli.py "$@"; }
start=$(date +%s)
llqa train --model "$MODEL" --ctx "$CTX" --data .data/pilot/train --out "$R/longlora" --method longlora \
  --max-steps "$STEPS" --batch-size 4 --lr 2e-4 --warmup-steps 2 --save-every 6
echo "train done in $(( $(date +%s) - start )) s"
llqa eval perplexity --model "$R/longlora" --data .data/pilot/heldout --lengths "$LENGTHS" --max-tokens "$CTX" --out "$R/ppl-longlora" --no-progress
llqa eval perplexity --model "$MODEL" --no-pi --data .data/pilot/heldout --lengths "$LENGTHS" --max-tokens "$CTX" --out "$R/ppl-base" --no-progress
llqa eval perplexity --model "$MODEL" --ctx "$CTX" --data .data/pilot/heldout --lengths "$LENGTHS" --max-tokens "$CTX" --out "$R/ppl-pi" --no-progress
llqa eval passkey --model "$R/longlora" --lengths "$PK" --depths 0,0.5,1 --trials 2 --chat-template none --out "$R/pk-longlora" --no-progress
llqa report "$R" --out "$R/report" --name "$R/longlora=longlora (pilot)"
echo "pilot done in $(( $(date +%s) - start )) s"
tar czf "$DEST/pilot.tgz" -C "$R" --exclude='*.safetensors' --exclude=checkpoints --exclude=data --exclude=base .
cat "$R/report/report.md" | head -60
