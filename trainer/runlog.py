"""A training run's records, read without the trainer's heavy dependencies (no torch): the per-step log and
the resolved configuration. `llqa report` and the benchmarks read runs through these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llqa.io import read_jsonl_tolerant
from trainer.config import CONFIG_FILE

LOG_FILE = "log.jsonl"


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run, the last record of each step winning (resumed runs re-log steps)."""
    by_step = {r["step"]: r for r in read_jsonl_tolerant(Path(run_dir) / LOG_FILE) if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / CONFIG_FILE).read_text())
