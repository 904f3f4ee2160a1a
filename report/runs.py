"""Runs, the rows of every table: eval results grouped by the model they scored and its RoPE scaling, labelled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from llqa.models import RUN_FILE
from report.fields import malformed
from report.inputs import RESULT_FILE, EvalResult, Inputs, Skipped, TrainingRun, read_json


def model_identity(spec: str, near: Path | None = None) -> str:
    """What a `--model` value points at: a local path resolved (a merged model -> its training run), else the
    spec itself (alias, hub id, random:<shape>). A relative path is looked up from the current directory, then
    from each folder above `near` (the result's directory): the report may run elsewhere than the evals did."""
    path = Path(spec).expanduser()
    if spec and not path.is_absolute() and not path.exists() and near is not None:
        path = next((d / path for d in Path(near).resolve().parents if (d / path).exists()), path)
    if not spec or not path.exists():
        return spec
    doc, err = read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else (None, None)
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
        doc, err = read_json(path / RUN_FILE)
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
