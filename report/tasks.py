"""Per-task tables (pure): perplexity per run x length, passkey window and accuracy, LongChat retrieval per N."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evals.passkey import summarize  # the scoring rule lives with the eval
from evals.tasks import TASKS
from llqa.ranks import all_cells
from report.fields import by_length, ppl_cells, ppl_setting, ppl_title, series_setting
from report.inputs import BEYOND_NOTE, NOT_REACHED, NOT_REACHED_NOTE, EvalResult
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


OWN_TABLES = ("passkey", "ruler", "longqa")  # registered tasks with tables of their own, not from their ReportSpec


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


# --------------------------------------------------------------------------- RULER, LongQA held-out


def ruler_setting(r: EvalResult) -> tuple:
    """RULER results that asked the same samples: tasks, samples, seed, template, essays, threshold."""
    c = r.config
    haystack = Path(str(c["haystack"])).name if c.get("haystack") else None
    return (tuple(c.get("tasks") or ()), c.get("samples"), c.get("seed"), c.get("chat_template_applied"), haystack,
            c.get("threshold"))  # fmt: skip


def ruler_tables(pairs: Sequence[tuple[Run, EvalResult]]) -> tuple[Table, Table]:
    """For RULER results of one setting: the average and effective length per run, and the score of every
    task at every length (a block of rows per run)."""
    c = pairs[0][1].config
    lengths = sorted({int(x["length"]) for _, r in pairs for x in r.summary.get("by_length") or []})
    cols = [length_label(n) for n in lengths]
    avg_rows, task_rows = [], []
    for run, r in pairs:
        avg = {int(x["length"]): x.get("average") for x in r.summary.get("by_length") or []}
        ctx = r.config.get("ctx", run.ctx)
        avg_rows.append([run.label, ctx, r.summary.get("effective_length"), *[avg.get(n) for n in lengths]])
        score = {(x["task"], int(x["length"])): x.get("score") for x in r.summary.get("by_task_length") or []}
        for task in r.summary.get("tasks") or []:
            task_rows.append([run.label, task, *[score.get((task, n)) for n in lengths]])
        task_rows.append([run.label, "average", *[avg.get(n) for n in lengths]])
    threshold = c.get("threshold", 85.6)
    what = f"{len(c.get('tasks') or [])} tasks, {c.get('samples')} samples per task and length, seed {c.get('seed')}"
    summary = Table(
        f"RULER ({what}): average score and effective length",
        ["run", "ctx", "effective length", *cols],
        avg_rows,
        kind="ruler",
        formats={"ctx": "int", "effective length": "int"},
        beyond_ctx=beyond_ctx(avg_rows, [row[1] for row in avg_rows], lengths, first=3),
        note=f"Average over the tasks of RULER's score (string_match_all, x 100) per sequence length (prompt + "
        f"tokens to generate); effective length: the longest tested length such that the average at every "
        f"tested length up to it exceeds {threshold:g} (RULER's threshold: Llama-2-7B's average at 4k). "
        "— where some task has no evaluated sample at that length.",
    )
    per_task = Table(
        "RULER: score per task and sequence length",
        ["run", "task", *cols],
        task_rows,
        kind="ruler_tasks",
        note=str(pairs[0][1].doc.get("semantics", "")),
    )
    return summary, per_task


def longqa_setting(r: EvalResult) -> tuple:
    """LongQA results that answered the same items: the split file's name, split, limit, token budget."""
    c = r.config
    data = r.doc.get("data") if isinstance(r.doc.get("data"), dict) else {}
    return (Path(str(data.get("file") or c.get("build"))).name, c.get("split"), c.get("limit"), c.get("max_new_tokens"))


def longqa_table(pairs: Sequence[tuple[Run, EvalResult]]) -> Table:
    """For LongQA results on one split: a row per run with F1, ROUGE-L, judge accuracy and F1 per category and
    per doc_type."""
    cats = sorted({x["name"] for _, r in pairs for x in r.summary.get("by_category") or []})
    types = sorted({x["name"] for _, r in pairs for x in r.summary.get("by_doc_type") or []})
    rows = []
    for run, r in pairs:
        s = r.summary
        o = s.get("overall") or {}
        f1 = {("category", x["name"]): x.get("f1") for x in s.get("by_category") or []}
        f1 |= {("doc_type", x["name"]): x.get("f1") for x in s.get("by_doc_type") or []}
        rows.append(
            [run.label, r.config.get("ctx", run.ctx), r.config.get("template"), o.get("evaluated"), o.get("middle_cut"),
             o.get("f1"), o.get("rouge_l"), o.get("judge_accuracy"),
             *[f1.get(("category", k)) for k in cats], *[f1.get(("doc_type", k)) for k in types]]
        )  # fmt: skip
    c = pairs[0][1].config
    split = f"{c.get('split', 'test')} split" + (f", first {c['limit']} items" if c.get("limit") else "")
    return Table(
        f"LongQA held-out questions ({longqa_setting(pairs[0][1])[0]}, {split})",
        [
            "run",
            "ctx",
            "template",
            "items",
            "middle cut",
            "F1",
            "ROUGE-L",
            "judge",
            *[f"F1 {k}" for k in cats],
            *[f"F1 {k}" for k in types],
        ],  # fmt: skip
        rows,
        kind="longqa",
        formats={"ctx": "int", "items": "int", "middle cut": "int"},
        note=str(pairs[0][1].doc.get("semantics", "")),
    )
