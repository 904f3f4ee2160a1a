"""Per-task tables (pure): perplexity per run x length, passkey window and accuracy, LongChat retrieval per N."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evals.passkey import summarize  # the scoring rule lives with the eval
from evals.tasks import TASKS
from llqa.ranks import all_cells
from report.fields import by_length, ppl_cells, ppl_setting, ppl_title, series_setting
from report.inputs import BEYOND_NOTE, EvalResult
from report.runs import Run
from report.tables import Table, beyond_ctx, group, length_label


def perplexity_tables(runs: Sequence[Run]) -> list[tuple[Table, list[int]]]:
    """One table per data setting (same documents, scoring, stride, ...): runs × eval lengths, token-weighted
    ppl; with the lengths of its columns. Several results of one run in one setting merge by length, the
    newest winning."""
    tables = []
    for pairs in group(runs, ("perplexity",), ppl_setting).values():
        by_run: dict[str, dict[int, float | None]] = {}
        for run, r in sorted(pairs, key=lambda p: str(p[1].doc.get("finished_at", ""))):
            by_run.setdefault(run.label, {}).update(ppl_cells(r))
        order = [run for run in runs if run.label in by_run]
        lengths = sorted({n for cells in by_run.values() for n in cells})
        rows = [[run.label, run.ctx, *[by_run[run.label].get(n) for n in lengths]] for run in order]
        marks = beyond_ctx(rows, [run.ctx for run in order], lengths, first=2)
        table = Table(
            ppl_title(pairs[0][1]),
            ["run", "ctx"] + [length_label(n) for n in lengths],
            rows,
            kind="perplexity",
            formats={"ctx": "int"},
            beyond_ctx=marks,
            note="Token-weighted perplexity exp(total NLL / scored tokens) per evaluation length (the "
            "`ppl` of each result; see its `semantics`). ctx: the context the model ran at (Position "
            "Interpolation above its native context)." + (BEYOND_NOTE if marks else ""),
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


OWN_TABLES = ("passkey",)  # registered tasks whose tables are written above, not from their ReportSpec


def series_tasks() -> list[str]:
    """The registered generation tasks (evals.tasks.TASKS) tabulated from their ReportSpec, in registry order."""
    return [name for name in TASKS if name not in OWN_TABLES]


def series_tables(runs: Sequence[Run]) -> list[tuple[Table, list[int], list[Table]]]:
    """Every registered task's results from its ReportSpec: per group of results with one setting, the main
    table (the first series, a row per run, a column per x) with its x values, and a table for each further
    series that has a value."""
    tasks = series_tasks()
    out = []
    groups = group(runs, tasks, series_setting)
    for _, pairs in sorted(groups.items(), key=lambda kv: tasks.index(kv[1][0][1].task)):
        task = pairs[0][1].task
        spec = TASKS[task].report
        series = [(run, r, spec.series(r.doc)) for run, r in pairs]
        keys = list(series[0][2])
        xs = sorted({x for *_, s in series for values in s.values() for x in values})
        label = spec.column_label or (lambda doc, x: str(x))
        cols = [label(pairs[0][1].doc, x) for x in xs]
        caption = f" ({spec.caption(pairs[0][1].doc)})" if spec.caption else ""
        tables = []
        heads = [spec.headline(r.doc) if spec.headline else None for _, r, _ in series]
        head_col = next((h[0] for h in heads if h), None)  # e.g. ("effective length", 8192): a column after ctx
        for i, key in enumerate(keys):
            extra = [head_col] if head_col and i == 0 else []
            rows = [
                [run.label, r.config.get("ctx", run.ctx), *([h[1] if h else None] if extra else [])]
                + [s.get(key, {}).get(x) for x in xs]
                for (run, r, s), h in zip(series, heads, strict=True)
            ]
            if i and not any(v is not None for row in rows for v in row[2:]):
                continue
            name = spec.metric_names.get(key, key)
            note = spec.notes.get(key) or (str(pairs[0][1].doc.get("semantics", "")) if i == 0 else "")
            tables.append(
                Table(
                    f"{spec.heading}{caption if i == 0 else ''}: {name} per {spec.x_label}",
                    ["run", "ctx", *extra, *cols],
                    rows,
                    kind=task if i == 0 else f"{task}_{key}",
                    formats={"ctx": "int", **({col: "pct" for col in cols} if i == 0 else {})},
                    note=note,
                )
            )
        out.append((tables[0], xs, tables[1:]))
    return out
