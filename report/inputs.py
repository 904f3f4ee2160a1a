"""The inputs of a report: eval results (result.json) and training runs, read as they are, never recomputed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.tasks import TASKS
from llqa.errors import LlqaError
from trainer.config import CONFIG_FILE as TRAIN_FILE
from trainer.runlog import read_log

MISSING = "—"
BEYOND = "†"  # marks a cell measured past the context the model ran at (extrapolation)
BEYOND_NOTE = (
    f" {BEYOND}: longer than the run's ctx, so the model ran past the context it was set up for "
    "(extrapolation, e.g. the base model without Position Interpolation)."
)
NOT_REACHED = "not reached"  # a perplexity length no document filled with one window: nothing was measured
NOT_REACHED_NOTE = (
    f" {NOT_REACHED}: no document had a full window of that length, so nothing was measured there (results "
    "written before llqa marked it: recounted from their cells.jsonl)."
)
RESULT_FILE = "result.json"
RUN_INTERNALS = {"checkpoints", "data", "tb", "base"}  # folders of a training run dir that hold no results
KNOWN_TASKS = ("perplexity", *TASKS)  # every generation task in the registry (evals.tasks) is tabulated
LOSS_TAIL = 10  # "final loss" = mean loss of the last LOSS_TAIL logged steps


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


@dataclass
class EvalResult:
    """One eval's result.json."""

    path: Path  # the result directory
    doc: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.doc["task"])

    @property
    def model(self) -> dict[str, Any]:
        return _dict(self.doc.get("model"))

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.doc.get("config"))

    @property
    def summary(self) -> Any:
        return _dict(self.doc.get("summary"))


@dataclass
class TrainingRun:
    """One `llqa train` / `llqa sft` run directory."""

    path: Path
    doc: dict[str, Any]  # train_config.json
    log: list[dict[str, Any]]  # log.jsonl, one record per step

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.doc.get("config"))

    @property
    def model(self) -> dict[str, Any]:
        return _dict(self.doc.get("model"))


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class Inputs:
    results: list[EvalResult] = field(default_factory=list)
    trainings: list[TrainingRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError:
        return None, "not a text file"
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at line {e.lineno})"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"


def read_result(path: Path) -> EvalResult | Skipped:
    """An eval result from `path` (a result.json or any JSON file); Skipped with the reason otherwise."""
    doc, err = read_json(path)
    if err:
        return Skipped(path, err)
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        return Skipped(path, "not an llqa result (JSON without a 'task' field)")
    return EvalResult(path.parent, doc)


def read_training(run_dir: Path) -> TrainingRun | Skipped:
    doc, err = read_json(run_dir / TRAIN_FILE)
    if err:
        return Skipped(run_dir / TRAIN_FILE, err)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        return Skipped(run_dir / TRAIN_FILE, "not an llqa training run (no 'config' in it)")
    return TrainingRun(run_dir, doc, read_log(run_dir))


def _walk(root: Path) -> Iterable[Path]:
    """Directories under root (root included) that may hold results, in a stable order; a training run's own
    checkpoints, packed data and TensorBoard folders are not entered."""
    for here, dirs, files in os.walk(root):
        internal = RUN_INTERNALS if TRAIN_FILE in files else set()
        dirs[:] = sorted(d for d in dirs if d not in internal and not d.startswith((".", "__")))
        yield Path(here)


def collect(paths: Sequence[str | Path]) -> Inputs:
    """Every eval result and training run under `paths`; files that are neither are listed as skipped."""
    found = Inputs()
    seen: set[Path] = set()

    def add(item) -> None:
        if isinstance(item, Skipped):
            found.skipped.append(item)
            return
        key = item.path.resolve()
        if key in seen:
            return
        seen.add(key)
        (found.trainings if isinstance(item, TrainingRun) else found.results).append(item)

    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise LlqaError(
                f"{path}: no such file or directory",
                "pass eval --out directories, training run directories or result.json files",
            )
        if path.is_file():
            add(read_training(path.parent) if path.name == TRAIN_FILE else read_result(path))
            continue
        before = len(found.results) + len(found.trainings) + len(found.skipped)
        for d in _walk(path):
            if (d / TRAIN_FILE).is_file():
                add(read_training(d))
            if (d / RESULT_FILE).is_file():
                add(read_result(d / RESULT_FILE))
        if len(found.results) + len(found.trainings) + len(found.skipped) == before:
            found.skipped.append(Skipped(path, f"no {RESULT_FILE} or {TRAIN_FILE} in it"))
    if not found.results and not found.trainings:
        why = "; ".join(f"{s.path}: {s.reason}" for s in found.skipped[:3])
        raise LlqaError(
            f"no llqa results found ({why})",
            "pass eval --out directories (with result.json) or training run directories (with train_config.json)",
        )
    return found
