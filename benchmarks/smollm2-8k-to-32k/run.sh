#!/usr/bin/env bash
# The experiment: SmolLM2-135M-Instruct extended from 8k to 32k (PI ×4) by four methods, every step an
# llqa command. Usage:
#
#   bash benchmarks/smollm2-8k-to-32k/run.sh STAGE...
#
# Stages, in the order a full run takes them (each skips work that is already finished, so the script can be
# re-run after an interruption, e.g. across 10-minute GPU calls):
#   heldout           the four held-out documents as one text file each (the math book's chapters joined)
#   testcases         LongChat line/topic test cases: the published ones plus seeded longer ones up to ~29k tokens
#   train:METHOD      METHOD in full, lora, lora+, longlora: 100 steps × 4 sequences of 32,768 tokens
#   eval:RUN[:TASKS]  RUN in base (no PI), pi (PI ×4, no training), full, lora, lora+, longlora:
#                     perplexity, passkey, line and topic retrieval (TASKS, comma-separated, picks some of them)
#   report            llqa report over everything in $R (REF, LABEL, TITLE: see stage_report)
#
# Environment: D = the data folder (default ../shared/data), R = output root (default runs/smollm2-8k-to-32k),
# ROPE (the context extension method of the training runs, default pi; yarn for the comparison in
# ../rope-methods), STEPS (default 100), SAVE_EVERY (checkpoint interval, default 10), DEADLINE = epoch seconds after which a running stage is stopped (training resumes from
# its newest checkpoint on the next invocation; evals resume from their cells.jsonl).
set -euo pipefail
D=${D:-../shared/data}
R=${R:-runs/smollm2-8k-to-32k}
STEPS=${STEPS:-100}
ROPE=${ROPE:-pi}
SAVE_EVERY=${SAVE_EVERY:-10}
# The experiment's settings; the overrides exist for a CPU smoke test of this script (see README.md here).
MODEL=${MODEL:-smollm2-135m}
CTX=${CTX:-32768}
LENGTHS=${LENGTHS:-2048,4096,8192,16384,32768}
PK_LENGTHS=${PK_LENGTHS:-2048,4096,8192,12288,16384,20480,24576,28672,32768}
LINE_SIZES=${LINE_SIZES:-200,300,400,600,800,1000,1200,1400}
TOPIC_SIZES=${TOPIC_SIZES:-1,5,10,15,20,25}
LIMIT=${LIMIT:-20}
BATCH=${BATCH:-4}
LC_TEMPLATE=${LC_TEMPLATE:-none}
. "$(cd "$(dirname "$0")" && pwd)/../llqa_deadline.sh"

# --- data -------------------------------------------------------------------------------------------------
# Held out (never trained on): three novels and one math book. Pride and Prejudice was the pilot's held-out
# novel; the other two were drawn with random.Random(8).sample from the remaining 16 novels before any run.
HELDOUT_NOVELS=(pg1342 pg174 pg161)
# Training: every other novel, the five NarrativeQA books, the Paul Graham essays, two math books, two papers
# and 17 of L-Eval's 18 task files (topic_retrieval_longchat is left out: it holds LongChat's topic
# conversations, which the topic retrieval eval uses).
train_data() {
  local args=() f
  for f in "$D"/gutenberg_novels/pg*.txt; do
    [[ " ${HELDOUT_NOVELS[*]} " == *" $(basename "$f" .txt) "* ]] || args+=(--data "$f")
  done
  for f in "$D"/narrativeqa/stories/pg*.txt; do args+=(--data "$f"); done
  args+=(--data "$D/paul_graham_essays/PaulGrahamEssays" --data "$D/math_napkin/tex" --data "$D/math_open_logic/content"
         --data "$D/paper_equational_theories/paper" --data "$D/paper_ethereum_yellowpaper/Paper.tex")
  for f in "$D"/leval/*/*.jsonl; do
    [[ $f == *topic_retrieval_longchat* ]] || args+=(--data "$f")
  done
  printf '%s\n' "${args[@]}" --text-field input
}

stage_heldout() {
  local dir=$R/heldout n
  [[ -f $dir/SPLIT.md ]] && return 0
  mkdir -p "$dir"
  for n in "${HELDOUT_NOVELS[@]}"; do cp "$D/gutenberg_novels/$n.txt" "$dir/"; done
  cat "$D"/math_hott_book/tex/*.tex > "$dir/hott-book.txt"
  { echo "# Split"; echo; echo "Held out (perplexity, first 32,768 tokens of each): ${HELDOUT_NOVELS[*]} and the HoTT book"
    echo "(math_hott_book/tex/*.tex joined in file-name order)."; echo; echo "Trained on (llqa train --data ...):"
    train_data | grep -v -- '^--' | sed "s|^$D/|- |"; } > "$dir/SPLIT.md.tmp"
  mv "$dir/SPLIT.md.tmp" "$dir/SPLIT.md"
}

stage_testcases() {
  local lc=$D/longchat_longeval/evaluation
  [[ -f $R/testcases/.done ]] && return 0
  mkdir -p "$R/testcases/lines" "$R/testcases/topics"
  cp "$lc"/lines/testcases/*_lines.jsonl "$R/testcases/lines/"
  cp "$lc"/topics/testcases/*_topics.jsonl "$R/testcases/topics/"
  # the longer sizes are generated (seeded) into testcases/<task>/testcases/, which the evals search too
  llqa eval lines --testcases "$R/testcases/lines" --sizes "$LINE_SIZES" --generate-only \
    --out "$R/testcases/lines"
  llqa eval topics --testcases "$R/testcases/topics" --conversations "$lc/topics/conversations.jsonl" \
    --sizes "$TOPIC_SIZES" --generate-only --out "$R/testcases/topics"
  touch "$R/testcases/.done"
}

# --- training -----------------------------------------------------------------------------------------------
stage_train() {
  local method=$1 out=$R/train/$1 resume=()
  [[ -f $out/llqa_model.json ]] && return 0
  [[ -f $out/train_config.json ]] && resume=(--resume)
  mapfile -t data < <(train_data)
  llqa train --model "$MODEL" --ctx $CTX --rope "$ROPE" --method "$method" "${data[@]}" --out "$out" \
    --max-steps "$STEPS" --batch-size "$BATCH" --lr 2e-4 --warmup-steps 10 --seed 42 --save-every "$SAVE_EVERY" \
    --no-gradient-checkpointing "${resume[@]}"
}

# --- evals --------------------------------------------------------------------------------------------------
model_args() {
  case $1 in
    base) echo "--model $MODEL" ;;             # its own RoPE and 8k context: beyond 8k is extrapolation
    pi) echo "--model $MODEL --ctx $CTX" ;;   # PI ×4, no training
    *) echo "--model $R/train/$1" ;;                 # the run directory: PI ×4 from its llqa_model.json
  esac
}

stage_eval() {
  local run=$1 tasks=${2:-perplexity,passkey,lines,topics} out=$R/eval/$1 pi=()
  read -r -a m <<< "$(model_args "$run")"
  [[ $run == base ]] && pi=(--no-pi)
  [[ ,$tasks, == *,perplexity,* ]] && llqa eval perplexity "${m[@]}" "${pi[@]}" --data "$R/heldout" \
    --lengths "$LENGTHS" --max-tokens $CTX --stride 256 --out "$out/perplexity" --no-progress
  [[ ,$tasks, == *,passkey,* ]] && llqa eval passkey "${m[@]}" --lengths "$PK_LENGTHS" \
    --depths 0,0.25,0.5,0.75,1 --trials 4 --chat-template none --overlong keep --out "$out/passkey" --no-progress
  [[ ,$tasks, == *,lines,* ]] && llqa eval lines "${m[@]}" --testcases "$R/testcases/lines" --sizes "$LINE_SIZES" \
    --limit "$LIMIT" --max-new-tokens 32 --chat-template "$LC_TEMPLATE" --overlong keep --out "$out/lines" --no-progress
  [[ ,$tasks, == *,topics,* ]] && llqa eval topics "${m[@]}" --testcases "$R/testcases/topics" --sizes "$TOPIC_SIZES" \
    --limit "$LIMIT" --max-new-tokens 32 --chat-template "$LC_TEMPLATE" --overlong keep --out "$out/topics" --no-progress
  return 0
}

stage_report() {
  # REF: where the two references' evals are (default $R; the 400-step runs reuse the 100-step ones).
  # LABEL: appended to each trained run's label, e.g. ", 400 steps".
  local ref=${REF:-$R} names=() inputs=("$R/train" "$R/eval") run task
  for run in base pi; do
    [[ $ref != "$R" && -d $ref/eval/$run ]] && inputs+=("$ref/eval/$run")
    for task in perplexity passkey lines topics; do
      [[ -d $ref/eval/$run/$task ]] || continue
      if [[ $run == base ]]; then names+=(--name "$ref/eval/$run/$task=base, no PI")
      else names+=(--name "$ref/eval/$run/$task=PI ×4, no training"); fi
    done
  done
  for run in full lora lora+ longlora; do [[ -d $R/train/$run ]] && names+=(--name "$R/train/$run=$run${LABEL:-}"); done
  llqa report "${inputs[@]}" --out "$R/report" --title "SmolLM2-135M-Instruct, 8k → 32k (PI ×4)${TITLE:-}" "${names[@]}"
}

case_stage() {
  case $1 in
    heldout) stage_heldout ;;
    testcases) stage_testcases ;;
    train:*) stage_train "${1#train:}" ;;
    eval:*:*) local spec=${1#eval:}; stage_eval "${spec%%:*}" "${spec#*:}" ;;
    eval:*) stage_eval "${1#eval:}" ;;
    report) stage_report ;;
    *) echo "unknown stage '$1'" >&2; exit 2 ;;
  esac
}

for s in "$@"; do case_stage "$s"; done
