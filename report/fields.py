"""What a report reads from each kind of result: per-task accessors, and the check that a result has them all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.tasks import TASKS
from llqa.ranks import all_cells
from report.inputs import NOT_REACHED, EvalResult


def ppl_setting(r: EvalResult) -> tuple:
    """Results that scored the same documents the same way. The data is known by its folder's and documents'
    names, not its absolute path, so results scored on another machine (or in another copy) share a table."""
    c, data = r.config, r.doc.get("data") or {}
    docs = tuple(str(d) for d in data.get("documents") or ())
    return (
        r.task,
        Path(str(c.get("data"))).name,
        docs,
        c.get("scoring"),
        c.get("stride"),
        c.get("bos"),
        bool(c.get("concat")),
        c.get("max_tokens"),
        c.get("documents"),
    )


def ppl_title(r: EvalResult) -> str:
    c, data = r.config, r.doc.get("data") or {}
    name = data.get("dataset") or Path(str(c.get("data"))).name or str(c.get("data"))
    n = c.get("documents", "?")
    bits = [f"{n} document{'' if n == 1 else 's'}"]
    if c.get("max_tokens"):
        bits.append(f"first {c['max_tokens']:,} tokens each")
    if c.get("concat"):
        bits.append("joined")
    if c.get("bos") in ("always", "never"):
        bits.append(f"BOS {c['bos']}")
    scoring = c.get("scoring", "?")
    bits.append(f"{scoring}, S={c.get('stride')}" if scoring != "disjoint" else scoring)
    return f"Perplexity on {name} ({'; '.join(bits)})"


def ppl_cells(r: EvalResult) -> dict[int, float | str | None]:
    """ppl per eval length (the summary maps str(length) -> {ppl, reached, ...}), or NOT_REACHED where no
    document filled one window of that length. Results written before llqa recorded `reached` are checked
    against their cells.jsonl: a length is reached when some scored document had at least that many tokens."""
    cells: dict[int, float | str | None] = {}
    logged: list[dict] | None = None
    for k, v in r.summary.items():
        length, reached = int(k), v.get("reached")
        if reached is None and _number(v["ppl"]) is not None:
            logged = list(all_cells(r.path).values()) if logged is None else logged
            doc_tokens = [c.get("doc_tokens") for c in logged if c.get("length") == length]
            reached = not doc_tokens or any(isinstance(n, int) and n >= length for n in doc_tokens)
        cells[length] = _number(v["ppl"]) if reached is not False else NOT_REACHED
    return cells


def passkey_setting(r: EvalResult) -> tuple:
    c = r.config
    return (str(c.get("haystack")), c.get("chat_template_applied"), c.get("threshold"))


def by_length(r: EvalResult) -> dict[int, float | None]:
    return {int(x["length"]): _number(x.get("accuracy")) for x in r.summary.get("by_length") or []}


def heatmap_cells(r: EvalResult) -> list[tuple[int, float, float | None]]:
    return [
        (int(x["length"]), float(x["depth"]), _number(x.get("accuracy")))
        for x in r.summary.get("by_length_depth") or []
    ]


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, int | float):
        return x
    raise TypeError(f"{x!r} is not a number")


def series_setting(r: EvalResult) -> tuple:
    """Results of a registered task that share a table: its ReportSpec's setting, else the task with its
    config less what differs between runs of one setting (model, ctx, fingerprint of the inputs as run)."""
    spec = TASKS[r.task].report
    if spec.setting is not None:
        return spec.setting(r.doc)
    volatile = {"model", "ctx", "inputs_fingerprint", "chat_template"}
    return (r.task, json.dumps({k: v for k, v in r.config.items() if k not in volatile}, sort_keys=True, default=str))


def malformed(r: EvalResult) -> str | None:
    """Why a result of a task the report tabulates cannot be read (None when it can): a hand-edited or
    foreign file must not crash the report."""
    try:
        if r.task == "perplexity":
            ppl_cells(r), ppl_title(r), hash(ppl_setting(r))
        elif r.task == "passkey":
            by_length(r), heatmap_cells(r), hash(passkey_setting(r))
        elif r.task in TASKS:
            TASKS[r.task].report.series(r.doc), hash(series_setting(r))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None
