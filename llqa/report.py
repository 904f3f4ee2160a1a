"""`llqa report`: one markdown report (tables + PNG plots) from any mix of eval results and training runs.

Inputs are paths: an eval's `--out` directory (its `result.json`, see `llqa.results`), a training run
directory (`train_config.json` + `log.jsonl`, see `trainer.loop`), a `result.json` file, or any folder
holding such directories (walked recursively; checkpoints, packed data and TensorBoard folders are skipped).

A *run* is one row of every table: a model at one RoPE scaling. Eval results are grouped by the model they
scored (`model.spec` in result.json: a local path is resolved against the current directory, and a merged
model points back at its training run through `merged_from`) and by its RoPE factor, so the base model
with and without Position Interpolation are two rows, and a training run's perplexity, passkey and
retrieval numbers line up with its training cost.

Numbers are copied from the result files, never recomputed: perplexity is the token-weighted `ppl` of
each length (exp of total NLL / scored tokens, as `semantics` in result.json says), passkey accuracy is
correct / evaluated trials and the effective context window is the eval's own. Training cost comes from
`log.jsonl` (one record per optimizer step; a resumed run's re-logged step keeps its last record):
train time = sum of step times (forward, backward, optimizer; data loading and checkpoint writes are
excluded), tokens/s = tokens trained / train time, peak memory = the largest per-step peak of allocated
GPU memory. A cell no result provides is shown as "—".
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llqa import __version__
from llqa.errors import LlqaError
from llqa.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_jsonl_tolerant,
    remove_dead_leftovers,
    writable_dir,
)

MISSING = "—"
BEYOND = "†"  # marks a cell measured past the context the model ran at (extrapolation)
BEYOND_NOTE = (
    f" {BEYOND}: longer than the run's ctx, so the model ran past the context it was set up for "
    "(extrapolation, e.g. the base model without Position Interpolation)."
)
RESULT_FILE = "result.json"
TRAIN_FILE = "train_config.json"  # trainer.config.CONFIG_FILE (not imported: it would pull the trainer in)
RUN_FILE = "llqa_model.json"  # llqa.models.RUN_FILE
RUN_INTERNALS = {"checkpoints", "data", "tb", "base"}  # folders of a training run dir that hold no results
RETRIEVAL_TASKS = ("topics", "lines")
KNOWN_TASKS = ("perplexity", "passkey", *RETRIEVAL_TASKS)
LOSS_TAIL = 10  # "final loss" = mean loss of the last LOSS_TAIL logged steps


# --------------------------------------------------------------------------- inputs


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


@dataclass
class EvalResult:
    """One eval's result.json."""

    path: Path  # the result directory
    doc: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.doc["task"])

    @property
    def model(self) -> dict[str, Any]:
        return _dict(self.doc.get("model"))

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.doc.get("config"))

    @property
    def summary(self) -> Any:
        return _dict(self.doc.get("summary"))


@dataclass
class TrainingRun:
    """One `llqa train` / `llqa sft` run directory."""

    path: Path
    doc: dict[str, Any]  # train_config.json
    log: list[dict[str, Any]]  # log.jsonl, one record per step

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.doc.get("config"))

    @property
    def model(self) -> dict[str, Any]:
        return _dict(self.doc.get("model"))


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class Inputs:
    results: list[EvalResult] = field(default_factory=list)
    trainings: list[TrainingRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError:
        return None, "not a text file"
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at line {e.lineno})"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"


def read_result(path: Path) -> EvalResult | Skipped:
    """An eval result from `path` (a result.json or any JSON file); Skipped with the reason otherwise."""
    doc, err = _read_json(path)
    if err:
        return Skipped(path, err)
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        return Skipped(path, "not an llqa result (JSON without a 'task' field)")
    return EvalResult(path.parent, doc)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """Per-step records of a training run, the last record of each step winning (as trainer.loop.read_log)."""
    by_step = {r["step"]: r for r in read_jsonl_tolerant(run_dir / "log.jsonl") if isinstance(r.get("step"), int)}
    return [by_step[s] for s in sorted(by_step)]


def read_training(run_dir: Path) -> TrainingRun | Skipped:
    doc, err = _read_json(run_dir / TRAIN_FILE)
    if err:
        return Skipped(run_dir / TRAIN_FILE, err)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        return Skipped(run_dir / TRAIN_FILE, "not an llqa training run (no 'config' in it)")
    return TrainingRun(run_dir, doc, read_log(run_dir))


def _walk(root: Path) -> Iterable[Path]:
    """Directories under root (root included) that may hold results, in a stable order; a training run's own
    checkpoints, packed data and TensorBoard folders are not entered."""
    for here, dirs, files in os.walk(root):
        internal = RUN_INTERNALS if TRAIN_FILE in files else set()
        dirs[:] = sorted(d for d in dirs if d not in internal and not d.startswith((".", "__")))
        yield Path(here)


def collect(paths: Sequence[str | Path]) -> Inputs:
    """Every eval result and training run under `paths`; files that are neither are listed as skipped."""
    found = Inputs()
    seen: set[Path] = set()

    def add(item) -> None:
        if isinstance(item, Skipped):
            found.skipped.append(item)
            return
        key = item.path.resolve()
        if key in seen:
            return
        seen.add(key)
        (found.trainings if isinstance(item, TrainingRun) else found.results).append(item)

    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise LlqaError(
                f"{path}: no such file or directory",
                "pass eval --out directories, training run directories or result.json files",
            )
        if path.is_file():
            add(read_training(path.parent) if path.name == TRAIN_FILE else read_result(path))
            continue
        before = len(found.results) + len(found.trainings) + len(found.skipped)
        for d in _walk(path):
            if (d / TRAIN_FILE).is_file():
                add(read_training(d))
            if (d / RESULT_FILE).is_file():
                add(read_result(d / RESULT_FILE))
        if len(found.results) + len(found.trainings) + len(found.skipped) == before:
            found.skipped.append(Skipped(path, f"no {RESULT_FILE} or {TRAIN_FILE} in it"))
    if not found.results and not found.trainings:
        why = "; ".join(f"{s.path}: {s.reason}" for s in found.skipped[:3])
        raise LlqaError(
            f"no llqa results found ({why})",
            "pass eval --out directories (with result.json) or training run directories (with train_config.json)",
        )
    return found


# --------------------------------------------------------------------------- runs


def model_identity(spec: str, near: Path | None = None) -> str:
    """What a `--model` value points at: a local path resolved (a merged model -> its training run), else the
    spec itself (alias, hub id, random:<shape>). A relative path is looked up from the current directory, then
    from each folder above `near` (the result's directory): the report may run elsewhere than the evals did."""
    path = Path(spec).expanduser()
    if spec and not path.is_absolute() and not path.exists() and near is not None:
        path = next((d / path for d in Path(near).resolve().parents if (d / path).exists()), path)
    if not spec or not path.exists():
        return spec
    doc, err = _read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else (None, None)
    if not err and isinstance(doc, dict) and doc.get("merged_from"):
        return str(Path(doc["merged_from"]).expanduser().resolve())
    return str(path.resolve())


def moved_training_run(spec: str, trained: Sequence[Path]) -> Path | None:
    """The training run an eval scored when the eval ran on another machine: its `--model` path does not exist
    here, and exactly one training run given to the report ends in the most path components in common with it
    (e.g. GPU host /tmp/exp/train/lora+ -> ./results/train/lora+; at least the run directory's name)."""
    path = Path(spec).expanduser()
    if not spec or path.exists() or not (path.is_absolute() or len(path.parts) > 1):
        return None

    def common_tail(a: Path, b: Path) -> int:
        n = 0
        for x, y in zip(reversed(a.parts), reversed(b.parts), strict=False):
            if x != y:
                break
            n += 1
        return n

    scored = [(common_tail(path, t), t) for t in trained]
    best = max((n for n, _ in scored), default=0)
    hits = [t for n, t in scored if n == best]
    return hits[0] if best >= 1 and len(hits) == 1 else None


def _factor(x: Any) -> float:
    try:
        return round(float(x), 6)
    except (TypeError, ValueError):
        return 1.0


@dataclass
class Run:
    identity: str  # model_identity of the scored / trained model
    rope_factor: float
    name: str = ""  # the model's name: derived, or given with --name
    variant: str = ""  # what sets this run apart from others of the same model: " (PI ×4)", " @ ctx 65536"
    label: str = ""  # the row label: name + variant, or exactly what --name gave for one result directory
    results: list[EvalResult] = field(default_factory=list)
    training: TrainingRun | None = None
    model: dict[str, Any] = field(default_factory=dict)  # a ModelInfo dict seen for this run

    @property
    def ctx(self) -> int | None:
        return self.model.get("target_ctx")


def _trained_ctx(run: Run) -> int | None:
    if run.training is not None:
        return run.training.config.get("ctx")
    path = Path(run.identity)
    if path.is_dir() and (path / RUN_FILE).is_file():
        doc, err = _read_json(path / RUN_FILE)
        if not err and isinstance(doc, dict):
            return doc.get("ctx")
    return None


def _derive_name(run: Run) -> None:
    """The run directory's (or model directory's) name, else the --model value; the variant says when the
    model ran at another RoPE scaling than its own (untrained PI) or a trained run at another context."""
    run.name = Path(run.identity).name if Path(run.identity).is_absolute() else run.identity
    trained_ctx = _trained_ctx(run)
    ckpt = _factor(run.model.get("checkpoint_rope_factor", 1.0)) or 1.0
    if trained_ctx is not None:
        run.variant = "" if run.ctx in (None, trained_ctx) else f" @ ctx {run.ctx}"
    else:
        run.variant = "" if run.rope_factor == ckpt else f" (PI ×{run.rope_factor / ckpt:g})"
    run.label = run.name + run.variant


def parse_names(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """`--name PATH=label` values as (path or model spec, label)."""
    out = []
    for p in pairs:
        key, sep, label = p.rpartition("=")
        if not sep or not key or not label.strip():
            raise LlqaError(f"--name {p}: expected PATH=LABEL", "e.g. --name runs/longlora=LongLoRA")
        out.append((key, label.strip()))
    return out


def group_runs(inputs: Inputs, names: Sequence[tuple[str, str]] = ()) -> list[Run]:
    """Runs with each eval result and training run attached: references first, then trained runs."""
    runs: dict[tuple[str, float], Run] = {}

    def run_for(identity: str, model: Mapping[str, Any]) -> Run:
        key = (identity, _factor(model.get("rope_factor", 1.0)))
        if key not in runs:
            runs[key] = Run(identity, key[1], model=dict(model))
        return runs[key]

    trained = [t.path.resolve() for t in inputs.trainings]
    for t in inputs.trainings:
        run_for(str(t.path.resolve()), t.model).training = t
    for r in inputs.results:
        problem = malformed(r)
        if problem:
            inputs.skipped.append(Skipped(r.path / RESULT_FILE, f"malformed {r.task} result ({problem})"))
            continue
        spec = str(r.model.get("spec") or r.config.get("model") or "")
        identity = model_identity(spec, r.path) if spec else f"(unknown model: {r.path})"
        moved = moved_training_run(spec, trained) if spec else None
        run_for(str(moved) if moved else identity, r.model).results.append(r)
    # references (models not trained by llqa) first, then trained runs; each in the order found
    ordered = sorted(runs.values(), key=lambda r: _trained_ctx(r) is not None)
    for run in ordered:
        _derive_name(run)
    _apply_names(ordered, names)
    _disambiguate(ordered)
    return ordered


def _apply_names(runs: list[Run], names: Sequence[tuple[str, str]]) -> None:
    for key, label in names:
        path = Path(key).expanduser()
        exact = path.resolve() if path.exists() else None
        hits = [r for r in runs if exact is not None and any(x.path.resolve() == exact for x in r.results)]
        if hits:  # a result directory names exactly the run it belongs to
            for r in hits:
                r.label = label
            continue
        identity = model_identity(key)
        hits = [r for r in runs if r.identity == identity]
        if not hits:
            raise LlqaError(
                f"--name {key}={label}: no run scored or trained the model {key}",
                "name a training run directory, a --model value or an eval --out directory; runs: "
                + ", ".join(r.identity for r in runs),
            )
        for r in hits:  # every variant of the model: keep what tells them apart
            r.name, r.label = label, label + r.variant


def _disambiguate(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"


# --------------------------------------------------------------------------- tables (pure)


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
        if n > ctx and rows[i][first + j] is not None
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
        return _duration(value)
    if spec == "int":
        return f"{int(value):,}"
    if spec:
        return format(value, spec)
    return f"{value:.2f}" if isinstance(value, float) and abs(value) < 1000 else f"{value:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _group(runs: Sequence[Run], tasks: Sequence[str], key) -> dict[Any, list[tuple[Run, EvalResult]]]:
    groups: dict[Any, list[tuple[Run, EvalResult]]] = {}
    for run in runs:
        for r in run.results:
            if r.task in tasks:
                groups.setdefault(key(r), []).append((run, r))
    return groups


def malformed(r: EvalResult) -> str | None:
    """Why a result of a task the report tabulates cannot be read (None when it can): a hand-edited or
    foreign file must not crash the report."""
    try:
        if r.task == "perplexity":
            _ppl_cells(r), _ppl_title(r), hash(_ppl_setting(r))
        elif r.task == "passkey":
            _by_length(r), _heatmap_cells(r), hash(_passkey_setting(r))
        elif r.task in RETRIEVAL_TASKS:
            _retrieval_cells(r), hash(_retrieval_setting(r))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _ppl_setting(r: EvalResult) -> tuple:
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


def _ppl_title(r: EvalResult) -> str:
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


def _ppl_cells(r: EvalResult) -> dict[int, float | None]:
    """ppl per eval length: the summary maps str(length) -> {ppl, window_ppl, bits_per_byte, ...}."""
    return {int(k): _number(v["ppl"]) for k, v in r.summary.items()}


def perplexity_tables(runs: Sequence[Run]) -> list[tuple[Table, list[int]]]:
    """One table per data setting (same documents, scoring, stride, ...): runs × eval lengths, token-weighted
    ppl; with the lengths of its columns. Several results of one run in one setting merge by length, the
    newest winning."""
    tables = []
    for pairs in _group(runs, ("perplexity",), _ppl_setting).values():
        by_run: dict[str, dict[int, float | None]] = {}
        for run, r in sorted(pairs, key=lambda p: str(p[1].doc.get("finished_at", ""))):
            by_run.setdefault(run.label, {}).update(_ppl_cells(r))
        order = [run for run in runs if run.label in by_run]
        lengths = sorted({n for cells in by_run.values() for n in cells})
        rows = [[run.label, run.ctx, *[by_run[run.label].get(n) for n in lengths]] for run in order]
        marks = beyond_ctx(rows, [run.ctx for run in order], lengths, first=2)
        table = Table(
            _ppl_title(pairs[0][1]),
            ["run", "ctx"] + [_length_label(n) for n in lengths],
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


def _passkey_setting(r: EvalResult) -> tuple:
    c = r.config
    return (str(c.get("haystack")), c.get("chat_template_applied"), c.get("threshold"))


def _by_length(r: EvalResult) -> dict[int, float | None]:
    return {int(x["length"]): _number(x.get("accuracy")) for x in r.summary.get("by_length") or []}


def _heatmap_cells(r: EvalResult) -> list[tuple[int, float, float | None]]:
    return [
        (int(x["length"]), float(x["depth"]), _number(x.get("accuracy")))
        for x in r.summary.get("by_length_depth") or []
    ]


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, int | float):
        return x
    raise TypeError(f"{x!r} is not a number")


def _accuracy_one_edit(r: EvalResult) -> float | None:
    """The near-miss diagnostic of a passkey result; for results written before llqa recorded it, recomputed
    from the trials the eval logged (its cells.jsonl) with the eval's own rule."""
    if "accuracy_one_edit" in r.summary:
        return r.summary["accuracy_one_edit"]
    from evals.passkey import summarize  # the scoring rule lives with the eval
    from llqa.ranks import all_cells

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
        by_len = _by_length(r)
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
        ["run"] + [_length_label(n) for n in ordered],
        acc_table,
        kind="passkey_by_length",
        formats={_length_label(n): "pct" for n in ordered},
        beyond_ctx=marks,
        note=BEYOND_NOTE.strip() if marks else "",
    )
    return window, per_length


def _retrieval_cells(r: EvalResult) -> dict[int, dict[str, Any]]:
    """Rows per N (conversations / lines) of a topics or lines result (`summary.by_n` of evals.longchat)."""
    return {int(x["n"]): {**x, "accuracy": _number(x.get("accuracy"))} for x in r.summary.get("by_n") or []}


def _retrieval_setting(r: EvalResult) -> tuple:
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
    groups = _group(runs, RETRIEVAL_TASKS, _retrieval_setting)
    for (task, *_), pairs in sorted(groups.items(), key=lambda kv: RETRIEVAL_TASKS.index(kv[0][0])):
        cells = [(run, r, _retrieval_cells(r)) for run, r in pairs]
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


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no window, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing plotted (every cell missing): no empty legend box
        ax.legend(fontsize=7)


def plot_perplexity(path: Path, table: Table, lengths: Sequence[int]) -> Path:
    """Perplexity (log scale) against eval length (log2 scale), one line per run; missing cells left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in table.rows:
        pts = [(n, v) for n, v in zip(lengths, row[2:], strict=True) if isinstance(v, int | float) and v > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=4, label=row[0])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(lengths), [_length_label(n) for n in lengths])
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())  # label minor ticks in a narrow range
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity (token-weighted)")
    ax.set_title(table.title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return _save_png(fig, path)


def plot_passkey_heatmaps(path: Path, pairs: Sequence[tuple[str, EvalResult]]) -> Path:
    """One depth × length accuracy heatmap per run, stacked, on one colour scale (grey: not run)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 1, figsize=(9, 2.8 * len(pairs) + 0.6), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = None
    for ax, (label, r) in zip(axes[:, 0], pairs, strict=True):
        cells = _heatmap_cells(r)
        lengths = sorted({n for n, _, _ in cells}) or [0]
        depths = sorted({d for _, d, _ in cells}) or [0.0]
        grid = np.full((len(depths), len(lengths)), np.nan)
        for n, d, acc in cells:
            if acc is not None:
                grid[depths.index(d), lengths.index(n)] = acc
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], rotation=90, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ecw = r.summary.get("effective_context_window")
        ax.set_title(f"{label}: effective context window {fmt(ecw, 'int')}", fontsize=9)
        ax.set_ylabel("key depth", fontsize=8)
    axes[-1, 0].set_xlabel("prompt length (tokens)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="accuracy", shrink=0.9)
    return _save_png(fig, path)


def plot_accuracy(path: Path, table: Table, xs: Sequence[int], title: str) -> Path:
    """Accuracy against length, one line per run (retrieval tables)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in table.rows:
        pts = [(x, v) for x, v in zip(xs, row[len(row) - len(xs) :], strict=True) if isinstance(v, int | float)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=4, label=row[0])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("N")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save_png(fig, path)


def plot_losses(path: Path, runs: Sequence[Run]) -> Path:
    """Training loss against optimizer step, one line per run (with a moving mean over 10 steps when long)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        pts = [(r["step"], r["loss"]) for r in run.training.log if isinstance(r.get("loss"), int | float)]
        if not pts:
            continue
        steps, losses = zip(*pts, strict=True)
        line = ax.plot(
            steps,
            losses,
            linewidth=1,
            alpha=0.35 if len(pts) >= 50 else 1.0,
            label=None if len(pts) >= 50 else run.label,
        )[0]
        if len(pts) >= 50:
            k = 10
            mean = [
                sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, mean, color=line.get_color(), linewidth=1.5, label=f"{run.label} (mean of 10 steps)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean NLL per scored token)")
    ax.set_title("Training loss", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save_png(fig, path)


# --------------------------------------------------------------------------- markdown


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


def _section(table: Table, level: int = 2, images: Sequence[str] = ()) -> str:
    parts = [f"{'#' * level} {table.title}", "", render_table(table)]
    if table.note:
        parts += ["", f"_{table.note}_"]
    for img in images:
        parts += ["", f"![{table.title}]({img})"]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    out: Path
    markdown: Path
    tables: list[Table]
    plots: list[Path]
    runs: list[Run]
    skipped: list[Skipped]


def write_report(
    paths: Sequence[str | Path], out: str | Path, names: Sequence[str] = (), title: str = "llqa report"
) -> Report:
    """Collect `paths`, group them into runs, write `report.md`, `report.json` and the PNGs into `out`.

    Everything is rendered into a hidden folder in `out` first and then renamed into place, report.md last: a
    killed run leaves the previous report whole (its leftover folder is removed by the next run), never a
    markdown file that disagrees with its plots."""
    out = Path(out)
    writable_dir(out, "--out", create=False)
    inputs = collect(paths)
    previous = _previous_plots(out)
    runs = group_runs(inputs, parse_names(names))
    writable_dir(out, "--out")
    remove_dead_leftovers(out, ".report-")
    stage = out / f".report-{os.getpid()}"
    stage.mkdir(exist_ok=True)
    try:
        tables, plots = _render(stage, inputs, runs, title)
        for name in [p.name for p in plots] + ["report.json", "report.md"]:  # renames only: the report lands whole
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    plots = [out / p.name for p in plots]
    for name in previous - {p.name for p in plots}:  # plots of an earlier report here that this one lacks
        (out / name).unlink(missing_ok=True)
    return Report(out, out / "report.md", tables, plots, runs, inputs.skipped)


def _render(stage: Path, inputs: Inputs, runs: list[Run], title: str) -> tuple[list[Table], list[Path]]:
    """Write the report's markdown, JSON and plots into `stage`; returns (tables, plots)."""
    sections: list[str] = []
    tables: list[Table] = [runs_table(runs)]
    plots: list[Path] = []
    sections.append(_section(tables[0]))

    for i, (t, lengths) in enumerate(perplexity_tables(runs), 1):
        plots.append(plot_perplexity(stage / f"perplexity_{i}.png", t, lengths))
        tables.append(t)
        sections.append(_section(t, images=[plots[-1].name]))

    for i, pairs in enumerate(_group(runs, ("passkey",), _passkey_setting).values(), 1):
        window, per_length = passkey_tables(pairs)
        plots.append(plot_passkey_heatmaps(stage / f"passkey_heatmaps_{i}.png", [(run.label, r) for run, r in pairs]))
        tables += [window, per_length]
        sections += [_section(window, images=[plots[-1].name]), _section(per_length, level=3)]

    for i, (t, ns, f1) in enumerate(retrieval_tables(runs), 1):
        png = plot_accuracy(stage / f"{t.kind}_accuracy_{i}.png", t, ns, t.title)
        plots.append(png)
        tables.append(t)
        sections.append(_section(t, images=[png.name]))
        if f1 is not None:
            tables.append(f1)
            sections.append(_section(f1, level=3))

    cost = training_table(runs)
    if cost is not None:
        trained = [run for run in runs if run.training is not None]
        png = plot_losses(stage / "loss.png", trained)
        plots.append(png)
        tables.append(cost)
        sections.append(_section(cost, images=[png.name]))

    other = other_table(runs)
    if other is not None:
        tables.append(other)
        sections.append(_section(other))
    if inputs.skipped:
        sections.append("## Not included\n\n" + "\n".join(f"- `{s.path}`: {s.reason}" for s in inputs.skipped))

    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    head = (
        f"# {title}\n\nWritten {stamp} by llqa {__version__} from "
        f"{len(inputs.results)} eval result(s) and {len(inputs.trainings)} training run(s). "
        f"A cell shown as {MISSING} has no result."
    )
    atomic_write_text(stage / "report.md", "\n\n".join([head, *sections]) + "\n")
    atomic_write_json(
        stage / "report.json",
        {
            "title": title,
            "written": stamp,
            "llqa_version": __version__,
            "tables": [t.to_dict() for t in tables],
            "plots": [p.name for p in plots],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in inputs.skipped],
        },
    )
    return tables, plots


def _previous_plots(out: Path) -> set[str]:
    doc, err = _read_json(out / "report.json") if (out / "report.json").is_file() else (None, "none")
    if err or not isinstance(doc, dict):
        return set()
    return {Path(str(p)).name for p in doc.get("plots") or [] if str(p).endswith(".png")}
