"""What a report reads from each kind of result: per-task accessors, and the check that a result has them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llqa.ranks import all_cells
from report.inputs import NOT_REACHED, RETRIEVAL_TASKS, EvalResult


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


def retrieval_cells(r: EvalResult) -> dict[int, dict[str, Any]]:
    """Rows per N (conversations / lines) of a topics or lines result (`summary.by_n` of evals.longchat)."""
    return {int(x["n"]): {**x, "accuracy": _number(x.get("accuracy"))} for x in r.summary.get("by_n") or []}


def retrieval_setting(r: EvalResult) -> tuple:
    """Results scored on the same test cases: the same files per N (by folder and file name, not absolute path,
    as for perplexity) or the same seeded generation, limit, template."""
    c = r.config
    generated = (c.get("seed"), c.get("cases")) if c.get("generate") else None
    files = c.get("files") if isinstance(c.get("files"), dict) else {}
    names = tuple(sorted((str(n), Path(str(f)).name) for n, f in files.items()))
    return (
        r.task,
        Path(str(c.get("testcases"))).name,
        names,
        generated,
        c.get("limit"),
        c.get("chat_template_applied"),
    )


def malformed(r: EvalResult) -> str | None:
    """Why a result of a task the report tabulates cannot be read (None when it can): a hand-edited or
    foreign file must not crash the report."""
    try:
        if r.task == "perplexity":
            ppl_cells(r), ppl_title(r), hash(ppl_setting(r))
        elif r.task == "passkey":
            by_length(r), heatmap_cells(r), hash(passkey_setting(r))
        elif r.task in RETRIEVAL_TASKS:
            retrieval_cells(r), hash(retrieval_setting(r))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None
