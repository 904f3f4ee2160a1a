"""The registry of generation eval tasks: the one list the CLI and `llqa report` read.

Adding a task: write `evals/<name>.py` with a class satisfying `evals.harness.Task`, then add one
`TaskEntry` here (its name, what it measures, and how the report tabulates its result.json). The
report then tables every result of the task with no further code; the CLI command's own options live
in `cli/` (`cli/retrieval.py` for these three).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals import longqa, ruler
from evals.harness import ReportSpec


@dataclass(frozen=True)
class Column:
    """One column of the table the CLI prints after a run: header, field of a summary row, format
    ("int", "acc" two decimals, "tokens" no decimals, "count")."""

    header: str
    field: str
    format: str = "acc"


@dataclass(frozen=True)
class TaskEntry:
    """One registered task. `measures`: one line, for `--help`, the README table and the report.
    `rows`: the summary key holding the per-length / per-N rows the CLI prints with `columns`;
    `notes(summary)`: lines printed after that table (the headline number, warnings)."""

    name: str
    title: str
    measures: str
    report: ReportSpec
    rows: str
    columns: tuple[Column, ...]
    notes: Callable[[Mapping[str, Any]], list[str]] | None = None


def _format(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "acc":
        return f"{value:.2f}"
    if kind == "tokens":
        return f"{value:.0f}"
    return str(value)  # int, count, text (a name such as a task or a category)


def console_table(entry: TaskEntry, summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of strings) of the table the CLI prints for a finished run of `entry`'s task."""
    rows = summary.get(entry.rows) or []
    return [c.header for c in entry.columns], [[_format(r.get(c.field), c.format) for c in entry.columns] for r in rows]


def _passkey_notes(summary: Mapping[str, Any]) -> list[str]:
    window = summary.get("effective_context_window")
    if window is None:
        return ["no length was evaluated: every prompt was longer than the context (see --overlong and --ctx)"]
    return [f"effective context window (accuracy >= {summary['threshold']:g}): {window} tokens"]


def _judge_notes(summary: Mapping[str, Any]) -> list[str]:
    failed = sum(r.get("judge_errors") or 0 for r in summary.get("by_n") or [])
    if not failed:
        return []
    return [
        f"warning: --judge-cmd failed on {failed} case(s); each failure is recorded in cells.jsonl "
        "(judge_error) and judge accuracy counts only the judged cases"
    ]


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, int | float):
        return x
    raise TypeError(f"{x!r} is not a number")


def _per(summary_key: str, x: str, metrics: Mapping[str, str]):
    """A `ReportSpec.series` reading rows `summary[summary_key]`, x from field `x`, one series per
    {series key: row field} of `metrics`. A value that is not a number raises TypeError (the report
    lists such a result as unreadable)."""

    def series(result: Mapping[str, Any]) -> dict[str, dict[int, float | None]]:
        rows = (result.get("summary") or {}).get(summary_key) or []
        return {key: {int(r[x]): _number(r.get(f)) for r in rows if f in r} for key, f in metrics.items()}

    return series


def _ruler_length(result: Mapping[str, Any]) -> tuple[str, Any]:
    return ("effective length", (result.get("summary") or {}).get("effective_length"))


def _ruler_notes(summary: Mapping[str, Any]) -> list[str]:
    averages = ", ".join(
        f"{r['length']}: {'—' if r['average'] is None else format(r['average'], '.2f')}" for r in summary["by_length"]
    )
    return [
        f"average over tasks per length: {averages}",
        f"effective length (average > {summary['threshold']:g}): {summary['effective_length']} tokens; "
        f"{summary['skipped']} samples skipped (prompt above the context)",
    ]


def _longqa_notes(summary: Mapping[str, Any]) -> list[str]:
    failed = summary["overall"].get("judge_errors") or 0
    return [f"warning: --judge-cmd failed on {failed} item(s) (judge_error in cells.jsonl)"] if failed else []


def _config(result: Mapping[str, Any]) -> Mapping[str, Any]:
    c = result.get("config")
    return c if isinstance(c, dict) else {}


def longchat_setting(result: Mapping[str, Any]) -> tuple:
    """LongChat results scored on the same test cases: the same files per N (by folder and file name, not
    absolute path, so results from another machine compare) or the same seeded generation, limit, template."""
    c = _config(result)
    generated = (c.get("seed"), c.get("cases")) if c.get("generate") else None
    files = c.get("files") if isinstance(c.get("files"), dict) else {}
    names = tuple(sorted((str(n), Path(str(f)).name) for n, f in files.items()))
    testcases = Path(str(c.get("testcases"))).name
    return (result.get("task"), testcases, names, generated, c.get("limit"), c.get("chat_template_applied"))


def longchat_caption(result: Mapping[str, Any]) -> str:
    c = _config(result)
    if c.get("generate"):
        cases = f"generated, seed {c.get('seed')}"
    else:
        cases = Path(str(c["testcases"])).name if c.get("testcases") else "LongChat's published"
    limit = f", first {c['limit']} per N" if c.get("limit") else ""
    return f"LongChat, {cases}{limit} test cases"


def longchat_column(result: Mapping[str, Any], n: int) -> str:
    """'5 (2,960 tok)': N with its mean prompt length."""
    rows = {int(r["n"]): r for r in (result.get("summary") or {}).get("by_n") or []}
    tokens = rows.get(n, {}).get("mean_prompt_tokens")
    return f"{n} ({tokens:,.0f} tok)" if isinstance(tokens, int | float) else str(n)


F1_NOTE = (
    "SQuAD token F1 between the normalised answer and the gold topic, averaged over the evaluated cases of "
    "each N: partial credit where the exact-match accuracy gives none."
)


def _passkey_window(result: Mapping[str, Any]) -> tuple[str, Any]:
    return ("effective context window", (result.get("summary") or {}).get("effective_context_window"))


_LONGCHAT_COLUMNS = (
    Column("N", "n", "int"),
    Column("cases", "cases", "int"),
    Column("skipped", "skipped", "int"),
    Column("mean prompt tokens", "mean_prompt_tokens", "tokens"),
    Column("accuracy", "accuracy"),
)

TASKS: dict[str, TaskEntry] = {
    e.name: e
    for e in (
        TaskEntry(
            "passkey",
            "Passkey retrieval",
            "find a 5-digit key hidden at a depth of filler text: accuracy per length and depth, the effective "
            "context window (PI / LongLoRA)",
            ReportSpec(
                "Passkey retrieval",
                "prompt length (tokens)",
                _per("by_length", "length", {"accuracy": "accuracy", "accuracy_one_edit": "accuracy_one_edit"}),
                headline=_passkey_window,
            ),
            "by_length",
            (
                Column("length", "length", "int"),
                Column("trials", "trials", "int"),
                Column("accuracy", "accuracy"),
                Column("skipped", "skipped", "int"),
            ),  # fmt: skip
            _passkey_notes,
        ),
        TaskEntry(
            "topics",
            "Topic retrieval",
            "name the first of N concatenated conversations' topics (LongChat): match accuracy and token F1 per N",
            ReportSpec(
                "Topic retrieval",
                "number of topics",
                _per("by_n", "n", {"accuracy": "accuracy", "f1": "mean_f1"}),
                setting=longchat_setting,
                metric_names={"f1": "mean token F1"},
                caption=longchat_caption,
                column_label=longchat_column,
                notes={"f1": F1_NOTE},
            ),
            "by_n",
            (*_LONGCHAT_COLUMNS, Column("mean F1", "mean_f1"), Column("judge", "judge_accuracy")),
            _judge_notes,
        ),
        TaskEntry(
            "lines",
            "Line retrieval",
            "the number on one of N lines (LongChat): accuracy per N",
            ReportSpec(
                "Line retrieval",
                "number of lines",
                _per("by_n", "n", {"accuracy": "accuracy"}),
                setting=longchat_setting,
                caption=longchat_caption,
                column_label=longchat_column,
            ),
            "by_n",
            _LONGCHAT_COLUMNS,
        ),
        TaskEntry(
            "ruler",
            "RULER",
            "RULER's synthetic tasks (needles with multiple keys/values/queries, variable tracking, common and "
            "frequent words): score per task and sequence length, the average, the effective length",
            ReportSpec("RULER", "sequence length (tokens)", ruler.report_series, headline=_ruler_length),
            "by_task_length",
            (
                Column("task", "task", "text"),
                Column("length", "length", "int"),
                Column("samples", "samples", "int"),
                Column("skipped", "skipped", "int"),
                Column("score", "score"),
            ),
            _ruler_notes,
        ),
        TaskEntry(
            "longqa",
            "LongQA held-out",
            "answers to LongQA's held-out questions on whole papers and novels, prompted as sft trains: SQuAD "
            "token F1 and ROUGE-L overall, per category and per doc_type",
            ReportSpec("LongQA held-out questions", "context (tokens)", longqa.report_series),
            "table",
            (
                Column("group", "name", "text"),
                Column("items", "items", "int"),
                Column("middle cut", "middle_cut", "int"),
                Column("F1", "f1"),
                Column("ROUGE-L", "rouge_l"),
                Column("judge", "judge_accuracy"),
            ),
            _longqa_notes,
        ),
    )
}
