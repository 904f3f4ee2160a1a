"""Data-parallel evals under torchrun/accelerate, without a process group.

Every rank computes its share of the cells (cell j belongs to rank j % world) and appends them to its
own resume log `out/rank{r}/cells.jsonl`; rank 0 also logs into `out/cells.jsonl`, then polls the
files until every cell of the run is in some log, copies the others' cells into its own and writes
the result. Finished cells are read from the main log and from every `rank*/` log, so a run resumes
under any number of ranks. Each rank's device is cuda:LOCAL_RANK (`llqa.models.resolve_device`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llqa.io import read_jsonl_tolerant
from llqa.results import ResultStore

T = TypeVar("T")


def dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun/accelerate's environment; (0, 1) when launched plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's items: every world-th one, from position `rank` (the same split on every rank)."""
    return [x for j, x in enumerate(items) if j % world == rank]


def _same_run(log_dir: Path, task: str | None, config: Mapping[str, Any] | None) -> bool:
    """Whether the log in `log_dir` was written by a run of this task and configuration (a leftover
    rank directory of another configuration must not leak cells into this run)."""
    if task is None:
        return True
    try:
        run = json.loads((log_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return run.get("task") == task and _canonical(run.get("config")) == _canonical(config)


def _canonical(obj: Any) -> str:
    return json.dumps(json.loads(json.dumps(obj, default=str)), sort_keys=True, default=str)


def all_cells(out_dir: str | Path, task: str | None = None, config: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Finished cells from the main log and every rank's log (a resume may use another world size);
    given `task` and `config`, only from logs whose run.json records that same run."""
    out_dir = Path(out_dir)
    found: dict[str, dict] = {}
    for log in [out_dir / "cells.jsonl", *sorted(out_dir.glob("rank*/cells.jsonl"))]:
        if not _same_run(log.parent, task, config):
            continue
        for rec in read_jsonl_tolerant(log):
            if "key" in rec:
                found.setdefault(rec["key"], rec)
    return found


class RankedStore:
    """The result store of one rank: `main` (rank 0 only, `out/`) plus this rank's own log."""

    def __init__(self, out_dir: str | Path, task: str, config: Mapping[str, Any], overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.task, self.config = task, dict(config)
        self.rank, self.world = dist_env()
        self.main = ResultStore(self.out_dir, task, config, overwrite=overwrite) if self.rank == 0 else None
        self.mine = (
            self.main
            if self.world == 1
            else ResultStore(self.out_dir / f"rank{self.rank}", task, config, overwrite=overwrite)
        )
        self._done = dict(self.mine.done)
        if not overwrite:
            self._done.update(all_cells(self.out_dir, task, config))

    def add_batch(self, record: Mapping[str, Any]) -> None:
        """Log one generation batch's shape and timing in this rank's batches.jsonl."""
        self.mine.add_batch(record)

    @property
    def is_main(self) -> bool:
        return self.main is not None

    @property
    def done(self) -> dict[str, dict]:
        """Cells finished by any rank so far (at start-up) or by this one since."""
        return self._done

    def add(self, key: str, record: Mapping[str, Any]) -> None:
        self.mine.add(key, record)
        if self.main is not None and self.mine is not self.main:
            self.main.add(key, record)
        self._done[key] = self.mine.done[key]

    def share(self, items: Sequence[T]) -> list[T]:
        return share(items, self.rank, self.world)

    def merge(self, keys: Sequence[str], poll_s: float = 2.0) -> dict[str, dict]:
        """Rank 0: wait until every cell in `keys` is logged by some rank, copy them into the main log and
        return all finished cells by key."""
        assert self.main is not None, "only rank 0 merges"
        missing_since = time.time()
        while True:
            found = {**all_cells(self.out_dir, self.task, self.config), **self.main.done}
            missing = [k for k in keys if k not in found]
            if not missing:
                for k in keys:
                    if k not in self.main.done:
                        self.main.add(k, {kk: v for kk, v in found[k].items() if kk != "key"})
                return found
            if self.world == 1:  # nothing else will write them: a bug, not a wait
                raise RuntimeError(f"{len(missing)} cells were never computed, e.g. {missing[0]}")
            if time.time() - missing_since > 30:
                print(f"rank 0: waiting for {len(missing)} cells from other ranks", flush=True)
                missing_since = time.time()
            time.sleep(poll_s)
