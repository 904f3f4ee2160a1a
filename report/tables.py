"""Tables as data (pure): the Table type, cell formatting, and the tables every report has (runs, training
cost, other results)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from report.inputs import MISSING, EvalResult
from report.runs import Run


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]  # raw values (None = missing); rendered by `fmt`
    note: str = ""
    kind: str = ""
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec
    beyond_ctx: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells past the run's ctx

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "kind": self.kind,
            "columns": self.columns,
            "rows": self.rows,
            "note": self.note,
            "beyond_ctx": sorted([r, c] for r, c in self.beyond_ctx),
        }


def beyond_ctx(
    rows: Sequence[Sequence[Any]], ctxs: Sequence[int | None], lengths: Sequence[int], first: int
) -> set[tuple[int, int]]:
    """The cells of columns `first`, `first + 1`, ... (one per length) whose length exceeds their row's ctx."""
    return {
        (i, first + j)
        for i, ctx in enumerate(ctxs)
        if ctx
        for j, n in enumerate(lengths)
        if n > ctx and isinstance(rows[i][first + j], int | float)
    }


def fmt(value: Any, spec: str = "") -> str:
    """One table cell: None (or NaN) is missing; numbers per `spec` (default: 2 decimals below 1000, else
    thousands); anything else (text, or a value of an unexpected type in a hand-edited file) as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if spec == "pct":
        return f"{100 * value:.0f}%"
    if spec == "gib":
        return f"{value:.2f}"
    if spec == "time":
        return duration(value)
    if spec == "int":
        return f"{int(value):,}"
    if spec:
        return format(value, spec)
    return f"{value:.2f}" if isinstance(value, float) and abs(value) < 1000 else f"{value:,.0f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def group(runs: Sequence[Run], tasks: Sequence[str], key) -> dict[Any, list[tuple[Run, EvalResult]]]:
    groups: dict[Any, list[tuple[Run, EvalResult]]] = {}
    for run in runs:
        for r in run.results:
            if r.task in tasks:
                groups.setdefault(key(r), []).append((run, r))
    return groups
