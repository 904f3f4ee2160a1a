# Sourced by the benchmarks' run.sh scripts: `llqa ARGS...` runs `python -m cli ARGS...`; with DEADLINE set
# (epoch seconds) it starts nothing within 5 s of it and stops a running command at it with SIGINT, which
# llqa answers by keeping its finished work (training: a checkpoint; evals: cells.jsonl), so the next
# invocation resumes. Used to fit long experiments into time-limited GPU calls.
DEADLINE=${DEADLINE:-0}
llqa() {
  if [[ $DEADLINE -gt 0 ]]; then
    local left=$(( DEADLINE - $(date +%s) ))
    if [[ $left -le 5 ]]; then echo "deadline reached: not starting llqa $1 ${2:-}" >&2; return 124; fi
    timeout --signal=INT --kill-after=20 "$left" python -m cli "$@"
  else
    python -m cli "$@"
  fi
}
