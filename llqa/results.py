"""Result files shared by every eval: a resume log of finished cells, then one JSON + one CSV.

Layout of an eval's `--out` directory:
- `cells.jsonl`  one line per finished cell (e.g. a (document, length) pair), fsynced as it finishes,
                 so an interrupted run resumes without redoing work; a torn last line is ignored.
- `run.json`     the resolved configuration the cells were computed under; resuming with a different
                 configuration is refused (results would silently mix).
- `result.json`  the final result: task, semantics (which tokens are scored, how results are
                 averaged), resolved config, model info, data ids, summary, wall time, device, version.
- `result.csv`   the summary rows as a table.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llqa import __version__
from llqa.errors import LlqaError
from llqa.io import append_jsonl, atomic_write_csv, atomic_write_json, read_jsonl_tolerant


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _what_changed(previous: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Which settings differ between a logged run (run.json) and this one, named for the refusal."""
    old, new = previous.get("config") or {}, json.loads(_canonical(config))
    keys = sorted(k for k in set(old) | set(new) if _canonical(old.get(k)) != _canonical(new.get(k)))
    if keys == ["weights"]:
        return "the model's weight files changed since its cells were computed"
    return f"{', '.join(keys)} differ" if keys else None


def changed_run_error(out_dir: str | Path, task: str | None, why: str | None = None) -> LlqaError:
    """The one refusal for an --out whose finished cells were computed under another configuration or on
    other inputs (documents, test cases): their numbers must not be mixed with this run's."""
    detail = f": {why}" if why else ""
    return LlqaError(
        f"{out_dir} holds a {task} run with a different configuration{detail}",
        "pass another --out, or --overwrite to start this one afresh",
    )


def device_description() -> str:
    """'NVIDIA H100 80GB HBM3 x1' or 'cpu (x86_64)' — recorded in every result."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"cpu ({platform.machine()})"


class ResultStore:
    """Resume log + final result files of one eval run in `out_dir`."""

    def __init__(self, out_dir: str | Path, task: str, config: Mapping[str, Any], overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.task = task
        self.config = dict(config)
        self.cells_path = self.out_dir / "cells.jsonl"
        self.run_path = self.out_dir / "run.json"
        # one line per generation batch (shape, prefill and decoding seconds, out-of-memory retries): where a
        # run's time went, across resumed invocations
        self.batches_path = self.out_dir / "batches.jsonl"
        self._started = time.time()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.cells_path.unlink(missing_ok=True)
            self.batches_path.unlink(missing_ok=True)
        self._check_same_run()
        self._done = {rec["key"]: rec for rec in read_jsonl_tolerant(self.cells_path) if "key" in rec}
        self._previous_wall = float(self._read_run().get("wall_time_s", 0.0))

    def _read_run(self) -> dict:
        if not self.run_path.is_file():
            return {}
        try:
            return json.loads(self.run_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _check_same_run(self) -> None:
        previous = self._read_run()
        if self.cells_path.exists() and previous:
            same = previous.get("task") == self.task and _canonical(previous.get("config")) == _canonical(
                json.loads(_canonical(self.config))
            )
            if not same:
                raise changed_run_error(self.out_dir, previous.get("task"), _what_changed(previous, self.config))
        atomic_write_json(
            self.run_path, {"task": self.task, "config": self.config, "wall_time_s": previous.get("wall_time_s", 0.0)}
        )

    @property
    def done(self) -> dict[str, dict]:
        """Finished cells by key (from this run or an interrupted earlier one)."""
        return self._done

    def add(self, key: str, record: Mapping[str, Any]) -> None:
        rec = {"key": key, **record}
        append_jsonl(self.cells_path, rec)
        self._done[key] = rec

    def add_batch(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.batches_path, record)

    def batch_totals(self) -> dict[str, Any]:
        """The generation batches logged in batches.jsonl (every invocation of this run), summed."""
        recs = read_jsonl_tolerant(self.batches_path)
        return {
            "batches": sum(1 for r in recs if not r.get("out_of_memory")),
            "out_of_memory_retries": sum(1 for r in recs if r.get("out_of_memory")),
            "padded_batches": sum(1 for r in recs if r.get("padded") and not r.get("out_of_memory")),
            "seconds": round(sum(r.get("seconds", 0.0) for r in recs), 2),
            "first_token_s": round(sum(r.get("first_token_s", 0.0) for r in recs), 2),
            "decoding_steps": sum(r.get("new_tokens", 0) for r in recs),
        }

    def finalize(
        self,
        *,
        semantics: str,
        summary: Any,
        rows: Sequence[Mapping[str, Any]],
        model: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write result.json and result.csv atomically; returns the JSON path."""
        wall = self._previous_wall + time.time() - self._started
        atomic_write_json(self.run_path, {"task": self.task, "config": self.config, "wall_time_s": wall})
        result = {
            "task": self.task,
            "semantics": semantics,
            "config": self.config,
            "model": dict(model or {}),
            "data": dict(data or {}),
            "summary": summary,
            "cells": len(self._done),
            "wall_time_s": round(wall, 3),
            "device": device_description(),
            "llqa_version": __version__,
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **dict(extra or {}),
        }
        atomic_write_csv(self.out_dir / "result.csv", rows)
        return atomic_write_json(self.out_dir / "result.json", result)
