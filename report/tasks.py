"""Per-task tables (pure): perplexity per run x length, passkey window and accuracy, LongChat retrieval per N."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.passkey import summarize  # the scoring rule lives with the eval
from llqa.ranks import all_cells
from report.fields import by_length, ppl_cells, ppl_setting, ppl_title, retrieval_cells, retrieval_setting
from report.inputs import BEYOND_NOTE, NOT_REACHED, NOT_REACHED_NOTE, RETRIEVAL_TASKS, EvalResult
from report.runs import Run
from report.tables import Table, beyond_ctx, group, length_label


def perplexity_tables(runs: Sequence[Run]) -> list[tuple[Table, list[int]]]:
    """One table per data setting (same documents, scoring, stride, ...): runs × eval lengths, token-weighted
    ppl; with the lengths of its columns. Several results of one run in one setting merge by length, the
    newest winning."""
    tables = []
    for pairs in group(runs, ("perplexity",), ppl_setting).values():
        by_run: dict[str, dict[int, float | str | None]] = {}
        for run, r in sorted(pairs, key=lambda p: str(p[1].doc.get("finished_at", ""))):
            by_run.setdefault(run.label, {}).update(ppl_cells(r))
        order = [run for run in runs if run.label in by_run]
        lengths = sorted({n for cells in by_run.values() for n in cells})
        rows = [[run.label, run.ctx, *[by_run[run.label].get(n) for n in lengths]] for run in order]
        marks = beyond_ctx(rows, [run.ctx for run in order], lengths, first=2)
        unreached = any(v == NOT_REACHED for row in rows for v in row[2:])
        table = Table(
            ppl_title(pairs[0][1]),
            ["run", "ctx"] + [length_label(n) for n in lengths],
            rows,
            kind="perplexity",
            formats={"ctx": "int"},
            beyond_ctx=marks,
            note="Token-weighted perplexity exp(total NLL / scored tokens) per evaluation length (the "
            "`ppl` of each result; see its `semantics`). ctx: the context the model ran at (Position "
            "Interpolation above its native context)."
            + (BEYOND_NOTE if marks else "")
            + (NOT_REACHED_NOTE if unreached else ""),
        )
        tables.append((table, lengths))
    return tables


def _accuracy_one_edit(r: EvalResult) -> float | None:
    """The near-miss diagnostic of a passkey result; for results written before llqa recorded it, recomputed
    from the trials the eval logged (its cells.jsonl) with the eval's own rule."""
    if "accuracy_one_edit" in r.summary:
        return r.summary["accuracy_one_edit"]

    cells = all_cells(r.path)
    return summarize(cells.values(), 0.0)["accuracy_one_edit"] if cells else None


def passkey_tables(pairs: Sequence[tuple[Run, EvalResult]]) -> tuple[Table, Table]:
    """For passkey results of one setting: the effective context window table, and accuracy per length."""
    c = pairs[0][1].config
    where = "filler" if c.get("haystack") in (None, "filler") else f"haystack {Path(str(c['haystack'])).name}"
    tmpl = "chat template" if c.get("chat_template_applied") else "no chat template"
    head = f"Passkey retrieval ({where}, {tmpl})"
    rows, acc_rows, lengths = [], [], set()
    for run, r in pairs:
        s = r.summary
        by_len = by_length(r)
        lengths |= set(by_len)
        tested = sorted(by_len)
        rows.append(
            [
                run.label,
                r.config.get("ctx", run.ctx),
                s.get("effective_context_window"),
                s.get("accuracy"),
                _accuracy_one_edit(r),
                f"{tested[0]}–{tested[-1]} ({len(tested)})" if tested else None,
                r.config.get("trials"),
                len(r.config.get("depths") or []) or None,
            ]
        )
        acc_rows.append((run.label, by_len, r.config.get("ctx", run.ctx)))
    ordered = sorted(lengths)
    window = Table(
        f"{head}: effective context window",
        ["run", "ctx", "effective window", "accuracy", "within 1 edit", "lengths tested", "trials/cell", "depths"],
        rows,
        kind="passkey",
        formats={"ctx": "int", "effective window": "int", "accuracy": "pct", "within 1 edit": "pct"},
        note="Effective context window (Position Interpolation's definition): the largest tested length "
        f"k such that every tested length <= k reaches accuracy >= {c.get('threshold', 0.2)}; accuracy = "
        "correct / evaluated trials (greedy decoding; correct when the first integer generated equals "
        "the key). Within 1 edit (a diagnostic, not used for the window): correct, or the first integer is "
        "one digit dropped, added or changed from the key.",
    )
    acc_table = [[label] + [acc.get(n) for n in ordered] for label, acc, _ in acc_rows]
    marks = beyond_ctx(acc_table, [ctx for *_, ctx in acc_rows], ordered, first=1)
    per_length = Table(
        f"{head}: accuracy per prompt length",
        ["run"] + [length_label(n) for n in ordered],
        acc_table,
        kind="passkey_by_length",
        formats={length_label(n): "pct" for n in ordered},
        beyond_ctx=marks,
        note=BEYOND_NOTE.strip() if marks else "",
    )
    return window, per_length


def _per_n_rows(
    cells: Sequence[tuple[Run, EvalResult, dict[int, dict[str, Any]]]], ns: Sequence[int], key: str
) -> list[list[Any]]:
    """One row per result: label, ctx, then `key` of each N (None where the result has no such N)."""
    return [
        [run.label, r.config.get("ctx", run.ctx), *[c[n].get(key) if n in c else None for n in ns]]
        for run, r, c in cells
    ]


def retrieval_tables(runs: Sequence[Run]) -> list[tuple[Table, list[int], Table | None]]:
    """Topic and line retrieval (LongChat): accuracy per N, one table per task and set of test cases; with the
    Ns of its columns and, for topics, the mean token F1 per N (None when no result has it)."""
    tables = []
    groups = group(runs, RETRIEVAL_TASKS, retrieval_setting)
    for (task, *_), pairs in sorted(groups.items(), key=lambda kv: RETRIEVAL_TASKS.index(kv[0][0])):
        cells = [(run, r, retrieval_cells(r)) for run, r in pairs]
        ns = sorted({n for *_, c in cells for n in c})
        tokens = {n: next((c[n].get("mean_prompt_tokens") for *_, c in cells if n in c), None) for n in ns}
        cols = [f"{n} ({tokens[n]:,.0f} tok)" if isinstance(tokens[n], int | float) else str(n) for n in ns]
        rows = _per_n_rows(cells, ns, "accuracy")
        semantics = str(pairs[0][1].doc.get("semantics", ""))
        conf = pairs[0][1].config
        cases = (
            f"generated, seed {conf.get('seed')}"
            if conf.get("generate")
            else Path(str(conf["testcases"])).name
            if conf.get("testcases")
            else "LongChat's published"
        )
        cases += f", first {conf['limit']} per N" if conf.get("limit") else ""
        what = "Topic" if task == "topics" else "Line"
        per = "number of topics" if task == "topics" else "number of lines"
        table = Table(
            f"{what} retrieval (LongChat, {cases} test cases): accuracy per {per}",
            ["run", "ctx", *cols],
            rows,
            kind=task,
            formats={"ctx": "int", **{col: "pct" for col in cols}},
            note=semantics,
        )
        f1_rows = _per_n_rows(cells, ns, "mean_f1")
        f1 = None
        if any(v is not None for row in f1_rows for v in row[2:]):
            f1 = Table(
                f"{what} retrieval: mean token F1 per {per}",
                ["run", "ctx", *cols],
                f1_rows,
                kind=f"{task}_f1",
                formats={"ctx": "int"},
                note="SQuAD token F1 between the normalised answer and the gold topic, averaged over the "
                "evaluated cases of each N: partial credit where the exact-match accuracy gives none.",
            )
        tables.append((table, ns, f1))
    return tables
