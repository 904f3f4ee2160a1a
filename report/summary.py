"""The tables every report has: the runs, training cost from each run's log, and results of other tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from report.inputs import KNOWN_TASKS, LOSS_TAIL, TrainingRun
from report.runs import Run
from report.tables import Table


def training_cost(t: TrainingRun) -> dict[str, Any]:
    """Cost of one training run from its per-step log (see the module doc for each quantity)."""
    log = t.log
    steps = [r for r in log if isinstance(r.get("step_s"), int | float)]
    train_s = sum(r["step_s"] for r in steps) if steps else None
    tokens = sum(int(r.get("tokens") or 0) for r in log) if log else None
    peaks = [r["peak_mem_gib"] for r in log if isinstance(r.get("peak_mem_gib"), int | float)]
    losses = [r["loss"] for r in log if isinstance(r.get("loss"), int | float)]
    times = [r["time"] for r in log if isinstance(r.get("time"), int | float)]
    wall = (max(times) - min(times) + steps[0]["step_s"]) if times and steps else None
    return {
        "steps": len(log) or None,
        "max_steps": t.config.get("max_steps"),
        "tokens": tokens,
        "train_s": train_s,
        "wall_s": wall,
        "tokens_per_s": tokens / train_s if tokens and train_s else None,
        "peak_mem_gib": max(peaks) if peaks else None,
        "final_loss": sum(losses[-LOSS_TAIL:]) / len(losses[-LOSS_TAIL:]) if losses else None,
        "trainable": (t.doc.get("trainable") or {}).get("parameters"),
    }


def training_table(runs: Sequence[Run]) -> Table | None:
    rows = []
    for run in runs:
        if run.training is None:
            continue
        c, cost = run.training.config, training_cost(run.training)
        steps = None if cost["steps"] is None else f"{cost['steps']}/{cost['max_steps']}"
        rows.append(
            [
                run.label,
                c.get("task"),
                c.get("method"),
                c.get("attn"),
                c.get("ctx"),
                steps,
                cost["tokens"],
                cost["train_s"],
                cost["wall_s"],
                cost["tokens_per_s"],
                cost["peak_mem_gib"],
                cost["trainable"],
                cost["final_loss"],
                run.training.model.get("device"),
            ]
        )
    if not rows:
        return None
    return Table(
        "Training cost",
        [
            "run",
            "task",
            "method",
            "attention",
            "ctx",
            "steps",
            "tokens",
            "train time",
            "wall time",
            "tokens/s",
            "peak memory (GiB)",
            "trainable params",
            "final loss",
            "device",
        ],
        rows,
        kind="training",
        formats={
            "ctx": "int",
            "tokens": "int",
            "train time": "time",
            "wall time": "time",
            "tokens/s": ",.0f",
            "peak memory (GiB)": "gib",
            "trainable params": "int",
            "final loss": ".4f",
        },
        note="From log.jsonl: train time = sum of optimizer-step times (forward, backward, update; data "
        "loading and checkpoints excluded); wall time = first step's start to last step's end (a resumed "
        "run includes the pause); tokens/s = tokens trained / train time; peak memory = largest per-step "
        "peak of allocated GPU memory (— on CPU); final loss = mean loss of the last "
        f"{LOSS_TAIL} steps (mean next-token NLL over the step's scored tokens).",
    )


def other_table(runs: Sequence[Run]) -> Table | None:
    rows = [
        [run.label, r.task, str(r.path), ", ".join(sorted(r.summary)) or None]
        for run in runs
        for r in run.results
        if r.task not in KNOWN_TASKS
    ]
    if not rows:
        return None
    return Table(
        "Other results (tasks this report does not tabulate)",
        ["run", "task", "result", "summary fields"],
        rows,
        kind="other",
    )


def runs_table(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        m = run.model
        model = m.get("spec") or run.identity
        if run.training is not None:
            model = f"{run.training.path} (from {run.training.config.get('model', model)})"
        sources = [str(r.path) for r in run.results] + ([str(run.training.path)] if run.training else [])
        rows.append(
            [
                run.label,
                model,
                run.ctx,
                m.get("native_ctx"),
                run.rope_factor,
                "yes" if run.training else "no",
                len(run.results),
                "<br>".join(sources),
            ]
        )
    return Table(
        "Runs",
        ["run", "model", "ctx", "native ctx", "RoPE factor", "trained here", "evals", "from"],
        rows,
        kind="runs",
        formats={"ctx": "int", "native ctx": "int", "RoPE factor": "g"},
    )
