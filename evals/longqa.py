"""LongQA's held-out questions (`llqa eval longqa BUILD`): a model answers a build's test split, scored as
LongBench and L-Eval score open-ended QA.

Prompt: each item's instruction (document + question; a non-empty `input` is appended after a blank line)
framed EXACTLY as `llqa sft` frames it for training (`llqa.prompts.PromptTemplate`: the model's chat
template, or `[INST]...[/INST]`; `--template` as sft's, by default the one the model's llqa run recorded,
else `auto`). Items longer than the context lose the middle of the instruction (first and last halves of
its tokens kept, LongBench's rule, the same cut sft makes) so that prompt + the tokens to generate fit in
`--ctx`; they are counted (`middle_cut`). Greedy decoding up to `--max-new-tokens` (default 512 for
summaries, 128 for the other categories, as LongBench budgets summaries and QA) or EOS.

Metrics per answer against the item's `output`:
- `f1`: SQuAD token F1 — both texts lower-cased, punctuation removed, articles (a, an, the) removed,
  whitespace-split (SQuAD v1.1's `normalize_answer`; LongBench's `qa_f1_score`);
- `rouge_l`: ROUGE-L F-measure from Google's `rouge-score` package (its tokenizer: lower-case, runs of
  letters and digits; Porter stemming), as LongBench and L-Eval report for summaries;
- `judge` (only with `--judge-cmd`): an external judge's verdict, as `llqa eval topics` asks it.
Means are over the evaluated items (every item counts once), overall, per category and per doc_type.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evals.longchat import run_judge
from llqa.errors import LlqaError
from llqa.models import RUN_FILE
from llqa.prompts import TEMPLATES, PromptTemplate, sft_instruction

SUMMARY_MAX_NEW_TOKENS = 512  # LongBench's budget for summaries (gov_report, qmsum, multi_news)
QA_MAX_NEW_TOKENS = 128  # LongBench's budget for open QA (narrativeqa, qasper)

SEMANTICS = (
    "LongQA held-out items: the instruction framed exactly as llqa sft frames it (template {template}); "
    "instructions longer than the context lose their middle (first and last halves of the instruction's "
    "tokens kept) so that prompt + max_new_tokens <= ctx (counted: middle_cut). Greedy decoding to EOS or "
    "max_new_tokens (summary items {summary_budget}, others {qa_budget}). f1: SQuAD token F1 (lower case, "
    "punctuation and articles removed, whitespace tokens) of the answer against the item's output; rouge_l: "
    "ROUGE-L F-measure (rouge-score, Porter stemmer); judge_accuracy: share of judged items the --judge-cmd "
    "called correct. Every mean is over evaluated items, each item once: overall, per category, per doc_type."
)


# --------------------------------------------------------------------------- metrics


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 `normalize_answer`: lower case, punctuation removed, articles removed, whitespace fixed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, gold: str) -> float:
    """SQuAD v1.1 `f1_score`: token F1 of the normalised texts (0 when they share no token)."""
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure of `prediction` against `gold` (rouge-score, Porter stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE.score(gold, prediction)["rougeL"].fmeasure


# --------------------------------------------------------------------------- data


def read_split(build: str | Path, split: str) -> tuple[list[dict[str, Any]], Path]:
    """The items of a LongQA build's `split` (BUILD/{split}.jsonl, else .parquet), or of a jsonl file."""
    path = Path(build).expanduser()
    if path.is_dir():
        found = [path / f"{split}.jsonl", path / f"{split}.parquet"]
        path = next((f for f in found if f.is_file()), None)
        if path is None:
            raise LlqaError(
                f"{build} holds no {split}.jsonl or {split}.parquet", "point at a LongQA build (`llqa build --out DIR`)"
            )
    elif not path.is_file():
        raise LlqaError(f"{build}: no such LongQA build or file", "check the path")
    if path.suffix == ".parquet":
        import pandas as pd

        items = pd.read_parquet(path).to_dict("records")
    else:
        items = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise LlqaError(f"{path}:{n} is not valid JSON ({e})", "fix or remove that line") from None
    if not items:
        raise LlqaError(f"{path} holds no items", "check the build")
    return items, path


def run_template(spec: str) -> str | None:
    """The `--template` an llqa sft run recorded in its model directory, if `spec` is one."""
    f = Path(spec).expanduser() / RUN_FILE
    try:
        return json.loads(f.read_text()).get("template") if f.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- the task (evals.harness)


@dataclass
class LongQAEvalConfig:
    """One LongQA eval. `template` None: the model's llqa sft run's, else auto; `max_new_tokens` None: by
    category (see the module doc); `limit`: the first N items of the split (in file order)."""

    build: str
    split: str = "test"
    template: str | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    judge_cmd: str | None = None

    def __post_init__(self):
        if self.template is not None and self.template not in TEMPLATES:
            raise LlqaError(f"--template {self.template} is not a template", "use auto, chat or inst")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise LlqaError(f"--max-new-tokens must be positive, got {self.max_new_tokens}", "e.g. 128")
        if self.limit is not None and self.limit <= 0:
            raise LlqaError(f"--limit must be positive, got {self.limit}", "e.g. --limit 50")
        if self.split not in ("train", "test"):
            raise LlqaError(f"--split {self.split} is not a LongQA split", "use test (or train)")


def item_budget(item: Mapping[str, Any], override: int | None) -> int:
    return override or (SUMMARY_MAX_NEW_TOKENS if item.get("category") == "summary" else QA_MAX_NEW_TOKENS)


class LongQATask:
    """LongQA's held-out questions on the generation harness (`evals.harness.run_task`)."""

    name = "longqa"
    default_max_new_tokens = QA_MAX_NEW_TOKENS  # each case carries its own budget

    def __init__(self, cfg: LongQAEvalConfig):
        self.cfg = cfg
        self._template = cfg.template
        self._kind: str | None = None
        self._path: str | None = None

    def config(self) -> dict[str, Any]:
        return {
            **asdict(self.cfg),
            "build": str(Path(self.cfg.build).expanduser().resolve()),
            "template": self._template,
        }

    def semantics(self, ctx) -> str:
        return SEMANTICS.format(
            template=self._kind or self._template,
            summary_budget=self.cfg.max_new_tokens or SUMMARY_MAX_NEW_TOKENS,
            qa_budget=self.cfg.max_new_tokens or QA_MAX_NEW_TOKENS,
        )

    stop_when = None  # answers run to EOS or the budget; a no-op callback would still decode every row each step

    def build_cases(self, ctx) -> list:
        from evals.harness import Case

        items, path = read_split(self.cfg.build, self.cfg.split)
        self._path = str(path)
        if self.cfg.limit:
            items = items[: self.cfg.limit]
        self._template = self._template or run_template(ctx.model_info.spec) or "auto"
        tpl = PromptTemplate(ctx.tokenizer, self._template)
        self._kind = tpl.kind
        cases, seen = [], set()
        for n, item in enumerate(items, 1):
            instruction, gold = sft_instruction(item, f"{path} item {n}")
            key = str(item.get("id") or f"item{n}")
            if key in seen:
                raise LlqaError(f"{path} item {n}: duplicate id {key}", "ids of a LongQA split are unique")
            seen.add(key)
            budget = item_budget(item, self.cfg.max_new_tokens)
            framed = tpl.prompt(instruction, ctx.ctx, budget)
            if framed is None:
                raise LlqaError(
                    f"--ctx {ctx.ctx} leaves no room for an instruction beside the template and {budget} new tokens",
                    "raise --ctx or lower --max-new-tokens",
                )
            ids, cut = framed
            meta = {
                "id": key,
                "category": str(item.get("category", "")),
                "doc_type": str(item.get("doc_type", "")),
                "question": str(item.get("question", "")),
                "gold": gold,
                "prompt_tokens": len(ids),
                "middle_cut": cut,
            }
            cases.append(Case(key, ids=ids, reference=gold, meta=meta, max_new_tokens=budget))
        return cases

    def score(self, case, answer: str) -> dict[str, Any]:
        gold = case.reference
        rec: dict[str, Any] = {"f1": round(squad_f1(answer, gold), 6), "rouge_l": round(rouge_l(answer, gold), 6)}
        if self.cfg.judge_cmd:
            payload = {
                "task": "longqa",
                "test_id": case.meta["id"],
                "question": case.meta["question"],
                "gold": gold,
                "answer": answer,
            }
            try:  # a judge that fails is recorded, never a lost generation
                rec["judge"] = run_judge(self.cfg.judge_cmd, payload)
            except LlqaError as e:
                rec["judge"], rec["judge_error"] = None, str(e)
        return rec

    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return summarize(records)

    def rows(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        cols = ("items", "evaluated", "middle_cut", "f1", "rouge_l", "judge_accuracy")
        rows = [{"group": "all", "name": "all", **{k: summary["overall"][k] for k in cols}}]
        for group in ("category", "doc_type"):
            rows += [{"group": group, "name": r["name"], **{k: r[k] for k in cols}} for r in summary[f"by_{group}"]]
        return rows

    def data(self) -> dict[str, Any]:
        return {"file": self._path, "split": self.cfg.split, "template": self._kind}

    def plots(self, out_dir: Path, summary, ctx) -> list[str]:
        return []


def _group(records: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    done = [r for r in records if not r.get("skipped")]
    judged = [r for r in done if r.get("judge") is not None]

    def mean(key: str) -> float | None:
        return sum(r[key] for r in done) / len(done) if done else None

    return {
        "name": name,
        "items": len(records),
        "evaluated": len(done),
        "middle_cut": sum(bool(r.get("middle_cut")) for r in records),
        "f1": mean("f1"),
        "rouge_l": mean("rouge_l"),
        "judge_accuracy": sum(r["judge"] for r in judged) / len(judged) if judged else None,
        "judge_errors": sum(1 for r in done if r.get("judge_error")),
    }


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean F1, ROUGE-L and judge accuracy over evaluated items: overall, per category, per doc_type."""
    out: dict[str, Any] = {"overall": _group(records, "all")}
    for key in ("category", "doc_type"):
        groups: dict[str, list] = defaultdict(list)
        for r in records:
            groups[str(r.get(key, ""))].append(r)
        out[f"by_{key}"] = [_group(v, k) for k, v in sorted(groups.items())]
    # one list for printing: overall, then each category, then each doc_type
    out["table"] = [out["overall"], *out["by_category"], *out["by_doc_type"]]
    return out


def report_series(result: Mapping[str, Any]) -> dict[str, dict[int, float | None]]:
    """{metric: {ctx: value}} from a LongQA result.json (for `llqa report`): overall F1, ROUGE-L and judge
    accuracy, and F1 per category and per doc_type, at the context the eval ran at."""
    summary = result.get("summary") or {}
    ctx = int((result.get("config") or {}).get("ctx") or 0)
    overall = summary.get("overall") or {}
    out = {m: {ctx: overall.get(m)} for m in ("f1", "rouge_l", "judge_accuracy") if overall.get(m) is not None}
    for group in ("category", "doc_type"):
        for r in summary.get(f"by_{group}") or []:
            out[f"f1 {group}={r['name']}"] = {ctx: r.get("f1")}
    return out
