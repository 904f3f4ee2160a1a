"""The loop every generation eval shares, and the small interface a task implements to use it.

A generation eval (passkey, LongChat topics/lines, RULER, LongQA held-out, ...) is a `Task`: it builds
its test cases, scores one answer, summarises the scored cells and says what to plot. `run_task` owns
everything else, identically for every task:

1. the prompt frame: the model's chat template around each case's text (`--chat-template auto`) or only
   the tokenizer's own specials such as BOS (`none`); a task that builds token ids itself (to exact
   lengths, as passkey does) gets the frame in its `TaskContext` and builds inside it;
2. the configuration record (`run.json`): the task's `config()` + the generation options + model, ctx,
   whether a template was applied, and a content fingerprint of every case (so a rerun whose inputs
   changed is refused exactly as a changed configuration is);
3. cells and resume: one cell per case, keyed by `Case.key`, logged to `cells.jsonl` as its batch
   finishes (a killed run resumes without redoing work; under torchrun each rank takes its share);
4. prompt length against the context: `--overlong skip` (counted, never scored), `middle` (the middle
   of the prompt is cut, the cell says `truncated`), `keep`;
5. batched greedy decoding with a KV cache (`evals.generation.generate_greedy`: batches sized from
   what a prompt costs in memory, prompts prefilled whole or in chunks by memory, a smaller batch on
   out-of-memory);
6. scoring per cell (`Task.score`), the summary (`Task.summarise`), `result.json` (task, semantics,
   config, model, data, summary, fingerprint), `result.csv` (`Task.rows`) and the task's plots.

A cell record is `{key, **case.meta, fingerprint, truncated, output, skipped: false, **score}`; a
skipped cell is `{key, **case.meta, fingerprint, skipped: true}`. `fingerprint` (per cell) and
`inputs_fingerprint` (run.json, result.json) hash what each case feeds the model (`case_fingerprint`):
a rerun into the same folder whose test cases, haystack or prompts changed is refused with the same
line as a changed configuration, so old cells never mix with new inputs. A case given as text gets
`prompt_tokens` (the framed prompt's length before truncation) added to its meta; a case given as ids
records its length in meta itself.

Writing a task (see `evals/passkey.py` and `evals/longchat.py` for complete ones, `evals/tasks.py` for
the registry that the CLI and `llqa report` read):

    @dataclass
    class MyTask:                       # any object with these attributes satisfies `Task`
        name = "mytask"                 # result.json "task"; the registry key
        default_max_new_tokens = 32
        stop_when = None                # or a function (new text) -> bool that ends a row early
        cfg: MyConfig                   # the task's own options (a dataclass checked in __post_init__)

        def semantics(self, ctx) -> str: ...     # which tokens/answers are scored, how results average
        def config(self) -> dict: ...            # the task's options, recorded in run.json / result.json
        def build_cases(self, ctx) -> list[Case]: ...
        def score(self, case, answer) -> dict: ...  # per-cell fields, e.g. {"correct": True, "f1": 0.5}
        def summarise(self, records) -> dict: ...   # the result.json "summary"
        def rows(self, summary) -> list[dict]: ...  # result.csv rows (one column type per column)
        def data(self) -> dict: ...              # result.json "data": what was evaluated (files, templates)
        def plots(self, out_dir, summary, ctx) -> list[str]: ...  # PNG names written into out_dir

`score` must be a pure function of the case and the answer (it runs once per cell, before the cell is
logged); a scorer that can fail for reasons outside the answer (an external judge) records the failure
in the cell rather than raising, so no generation is lost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from evals.generation import (
    CHAT_TEMPLATE_MODES,
    DECODING,
    OVERLONG_POLICIES,
    PromptFrame,
    check_choice,
    fit_to_context,
    generate_greedy,
    prompt_frame,
    use_chat_template,
)
from llqa.errors import LlqaError
from llqa.ranks import RankedStore

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llqa.models import LoadedModel, ModelInfo


# --------------------------------------------------------------------------- the interface


@dataclass(frozen=True)
class Case:
    """One test case = one cell of the run.

    Exactly one of `text` (the user message; the harness puts it inside the prompt frame) and `ids`
    (token ids already inside `TaskContext.frame`, e.g. built to an exact length) is given.
    `reference`: what `Task.score` compares the answer with (a key, a gold answer, a list of references);
    it is part of the case's fingerprint but not of the cell record unless `meta` repeats it.
    `meta`: JSON values recorded in the cell (length, depth, n, test_id, ...) and used by `summarise`.
    `max_new_tokens`: this case's generation budget; None: the run's."""

    key: str
    text: str | None = None
    ids: Sequence[int] | None = None
    reference: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None

    def __post_init__(self):
        if (self.text is None) == (self.ids is None):
            raise ValueError(f"case {self.key}: give exactly one of text and ids")


@runtime_checkable
class Task(Protocol):
    """A generation eval (see the module docstring for each member's contract)."""

    name: str
    default_max_new_tokens: int
    stop_when: Callable[[str], bool] | None

    def semantics(self, ctx: TaskContext) -> str: ...

    def config(self) -> dict[str, Any]: ...

    def build_cases(self, ctx: TaskContext) -> list[Case]: ...

    def score(self, case: Case, answer: str) -> dict[str, Any]: ...

    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...

    def rows(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def data(self) -> dict[str, Any]: ...

    def plots(self, out_dir: Path, summary: Mapping[str, Any], ctx: TaskContext) -> list[str]: ...


@dataclass(frozen=True)
class ReportSpec:
    """What `llqa report` shows for a task, read from result.json files alone (no model, no task object):
    per group of results with equal settings, one table per series (a row per run, a column per x value)
    and a line plot of the first series.

    `series(result)`: {series key: {x: value or None}} from one parsed result.json (e.g. {"accuracy":
    {1024: 0.9, 2048: 0.4}}); the first series is the main table, a later one gets a table of its own
    only where some value is present (its table kind: "<task>_<key>"). `metric_names`: how titles name
    a series (default: its key). `setting(result)`: results with equal settings share a table (default:
    the task and its config less model, ctx and fingerprint). `caption(result)`: what the results were
    scored on, shown in the main title. `column_label(result, x)`: a column's header (default: x).
    `notes`: a series' explanation under its table (default for the first: the result's semantics).
    `headline(result)`: an optional one-number summary per run (e.g. ("effective length", 8192))."""

    heading: str
    x_label: str
    series: Callable[[Mapping[str, Any]], dict[str, dict[int, float | None]]]
    setting: Callable[[Mapping[str, Any]], tuple] | None = None
    headline: Callable[[Mapping[str, Any]], tuple[str, Any] | None] | None = None
    metric_names: Mapping[str, str] = field(default_factory=dict)
    caption: Callable[[Mapping[str, Any]], str] | None = None
    column_label: Callable[[Mapping[str, Any], int], str] | None = None
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass
class GenerationOptions:
    """The options every generation task shares (`--chat-template`, `--overlong`, `--max-new-tokens`,
    `--batch-tokens`). `max_new_tokens` None: the task's default; `batch_tokens` None: sized from memory."""

    chat_template: str = "auto"
    overlong: str = "skip"
    max_new_tokens: int | None = None
    batch_tokens: int | None = None

    def __post_init__(self):
        check_choice("--chat-template", self.chat_template, CHAT_TEMPLATE_MODES)
        check_choice("--overlong", self.overlong, OVERLONG_POLICIES)
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise LlqaError(
                f"--max-new-tokens must be positive, got {self.max_new_tokens}",
                "pass a positive number, or leave it out for the task's default",
            )
        if self.batch_tokens is not None and self.batch_tokens <= 0:
            raise LlqaError(f"--batch-tokens must be positive, got {self.batch_tokens}", "e.g. --batch-tokens 65536")

    def record(self, task: Task) -> dict[str, Any]:
        """The options as run.json records them (batch size changes no result, so it is left out)."""
        return {
            "chat_template": self.chat_template,
            "overlong": self.overlong,
            "max_new_tokens": self.max_new_tokens or task.default_max_new_tokens,
            "decoding": DECODING,
        }


@dataclass(frozen=True)
class TaskContext:
    """What a task may use to build its cases and describe its run: the tokenizer, the prompt frame
    (chat template head/tail, or BOS), whether a template is applied, the eval's context length, the
    generation options, the model's resolved configuration and the output folder (for generated
    test-case files)."""

    tokenizer: PreTrainedTokenizerBase
    frame: PromptFrame
    template: bool
    ctx: int
    options: GenerationOptions
    model_info: ModelInfo
    out_dir: Path

    def encode(self, text: str) -> list[int]:
        """`text` as a framed prompt: template head + text + template tail (or BOS + text)."""
        return self.frame.encode(self.tokenizer, text)


@dataclass
class TaskResult:
    """What `run_task` returns on the main rank: the summary and where the results are."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out_dir: Path
    ctx: int
    fingerprint: str


# --------------------------------------------------------------------------- fingerprints


def case_fingerprint(ids: Sequence[int], reference: Any, max_new_tokens: int) -> str:
    """sha256 (16 hex digits) of what decides a cell's outcome: the prompt's token ids as run (frame
    included, before any truncation), the reference and the generation budget."""
    payload = json.dumps([list(ids), reference, max_new_tokens], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_fingerprint(cell_fingerprints: Mapping[str, str]) -> str:
    """sha256 of every (cell key, case fingerprint) pair: one value naming the run's whole input."""
    payload = json.dumps(sorted(cell_fingerprints.items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the loop


def run_task(
    loaded: LoadedModel,
    task: Task,
    options: GenerationOptions,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    ctx: int | None = None,
    poll_s: float = 2.0,
) -> TaskResult | None:
    """Run (or resume) `task` on `loaded`; writes cells.jsonl, run.json, result.json, result.csv and the
    task's plots into `out_dir` and returns the summary (None on torchrun ranks other than 0, which only
    log their share of the cells; rank 0 waits for every cell, see `llqa.ranks`).

    `ctx`: the eval's context (prompts above it are over-long, see `options.overlong`); None: the
    model's (its Position Interpolation target, else its native context)."""
    from evals.generation import default_batch_tokens

    tok, model, info = loaded.tokenizer, loaded.model, loaded.info
    ctx = ctx or info.target_ctx
    out_dir = Path(out_dir)
    template = use_chat_template(tok, options.chat_template)
    tctx = TaskContext(tok, prompt_frame(tok, template), template, ctx, options, info, out_dir)
    cases = task.build_cases(tctx)
    keys = [c.key for c in cases]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{task.name}: duplicate case keys")
    max_new = options.max_new_tokens or task.default_max_new_tokens
    prompts = {c.key: list(c.ids) if c.ids is not None else tctx.encode(c.text) for c in cases}
    fingerprints = {c.key: case_fingerprint(prompts[c.key], c.reference, c.max_new_tokens or max_new) for c in cases}
    fingerprint = run_fingerprint(fingerprints)
    run_config = {
        **task.config(),
        **options.record(task),
        "model": info.spec,
        "ctx": ctx,
        "chat_template_applied": template,
        "inputs_fingerprint": fingerprint,
        **info.resume_key(),  # cells of yarn ×4 and PI ×4, or of other weights, never mix
    }
    store = RankedStore(out_dir, task.name, run_config, overwrite=overwrite)
    stale = [k for k, rec in store.done.items() if k in fingerprints and rec.get("fingerprint") != fingerprints[k]]
    if stale:  # the run's fingerprint matched, yet a logged cell was computed from other inputs
        raise LlqaError(
            f"{out_dir} holds a {task.name} run with a different configuration",
            "pass another --out, or --overwrite to start this one afresh",
        )

    pending: list[tuple[Case, dict[str, Any], list[int]]] = []
    for case in store.share(cases):
        if case.key in store.done:
            continue
        full = prompts[case.key]
        meta = {**case.meta, "fingerprint": fingerprints[case.key]}
        if case.ids is None:
            meta.setdefault("prompt_tokens", len(full))
        ids, truncated = fit_to_context(full, ctx, options.overlong)
        if ids is None:
            store.add(case.key, {**meta, "skipped": True})
            continue
        pending.append((case, {**meta, "truncated": truncated}, ids))

    batch_tokens = options.batch_tokens or default_batch_tokens(next(model.parameters()).device)
    by_budget: dict[int, list[int]] = {}
    for i, (case, _, _) in enumerate(pending):
        by_budget.setdefault(case.max_new_tokens or max_new, []).append(i)
    for budget, members in sorted(by_budget.items()):
        for batch in generate_greedy(
            model,
            tok,
            [pending[i][2] for i in members],
            budget,
            batch_tokens,
            stop_when=task.stop_when,
            progress=progress,
            desc=task.name,
            on_batch=store.add_batch,
        ):
            for g in batch:
                case, meta, _ = pending[members[g.index]]
                store.add(case.key, {**meta, "output": g.text, "skipped": False, **task.score(case, g.text)})

    if not store.is_main:
        return None
    merged = store.merge(keys, poll_s)
    records = [merged[k] for k in keys]
    summary = task.summarise(records)
    rows = task.rows(summary)
    pngs = task.plots(out_dir, summary, tctx)
    store.main.finalize(
        semantics=task.semantics(tctx),
        summary=summary,
        rows=rows,
        model=info.to_dict(),
        data=task.data(),
        extra={
            "plots": pngs,
            "batch_tokens": batch_tokens,
            "inputs_fingerprint": fingerprint,
            # where the time went: summed over batches.jsonl (this rank's batches, every invocation);
            # first_token_s is prefill plus the first new token, the rest of `seconds` is decoding
            "generation_time": store.main.batch_totals(),
        },
    )
    return TaskResult(summary=summary, rows=rows, out_dir=out_dir, ctx=ctx, fingerprint=fingerprint)


def as_dict(obj: Any) -> dict[str, Any]:
    """A task config dataclass as a JSON-ready dict (helper for `Task.config`)."""
    return asdict(obj)
