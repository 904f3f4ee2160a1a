"""Markdown rendering of tables and report sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from report.inputs import BEYOND, MISSING
from report.tables import Table, fmt


def _cell(table: Table, col: str, value: Any) -> str:
    text = fmt(value, table.formats.get(col, ""))
    return text.replace("|", "\\|") if text != MISSING else text


def render_table(table: Table) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    numeric = [
        i > 0 and all(v is None or isinstance(v, int | float) for v in (row[i] for row in table.rows))
        for i in range(len(table.columns))
    ]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = [
        "| "
        + " | ".join(
            _cell(table, c, v) + (BEYOND if (i, j) in table.beyond_ctx else "")
            for j, (c, v) in enumerate(zip(table.columns, row, strict=True))
        )
        + " |"
        for i, row in enumerate(table.rows)
    ]
    return "\n".join([head, rule, *body])


def section(table: Table, level: int = 2, images: Sequence[str] = ()) -> str:
    parts = [f"{'#' * level} {table.title}", "", render_table(table)]
    if table.note:
        parts += ["", f"_{table.note}_"]
    for img in images:
        parts += ["", f"![{table.title}]({img})"]
    return "\n".join(parts)
