"""Passkey retrieval, the protocol of Position Interpolation (arXiv 2306.15595) and LongLoRA.

A prompt is, joined by newlines: the task line, filler, the key line at a chosen depth, more filler,
and the question (all strings below, verbatim). Keys are random 5-digit numbers. Prompts are built
from token ids — template head, task, filler, key line, filler, question, template tail — so a prompt
has EXACTLY the requested number of tokens, chat template included (tolerance: 0 tokens). The depth
is the share of the filler tokens placed before the key line (0: right after the task line, 1: right
before the question), rounded to the nearest token.

Greedy decoding; a trial is correct when the first integer in the generated text equals the key.
Accuracy is the share of correct trials, per length and per (length, depth); skipped trials (prompt
longer than the context under `--overlong skip`) are counted apart and never scored. The effective
context window (PI's definition) is the largest tested length k such that every tested length <= k
reaches accuracy >= the threshold (default 0.2); 0 when the shortest length already fails.

A diagnostic, never used for the window: a wrong answer whose first integer is one digit edit (one digit
dropped, added or changed) from the key is a near miss. A model that finds the key line but copies it
badly, as position-interpolated models do before they have recovered, shows near misses where a model
that never found the key shows none. `accuracy_one_edit` = (correct + near misses) / evaluated trials.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.generation import (
    CHAT_TEMPLATE_MODES,
    OVERLONG_POLICIES,
    PromptFrame,
    check_choice,
    encode_text,
    first_integer,
    integer_complete,
)
from evals.harness import Case, GenerationOptions, TaskContext, run_task
from llqa.errors import LlqaError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llqa.models import LoadedModel

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
# LongLoRA's passkey_retrivial.py says "memorize them" (Landmark Attention's wording) where PI says "it"
TASK_LONGLORA = TASK.replace("Find it and memorize it.", "Find it and memorize them.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

LENGTH_TOLERANCE = 0  # tokens between a prompt's length and the requested length (built exactly)
NUM_DEFAULT_LENGTHS = 32
DEFAULT_DEPTHS = tuple(i / 10 for i in range(11))  # 0%, 10%, ..., 100%
DEFAULT_TRIALS = 10
DEFAULT_THRESHOLD = 0.2
DEFAULT_MAX_NEW_TOKENS = 12  # "The pass key is 12345." is ~10 tokens; rows stop once an integer is complete
KEY_RANGE = (10_000, 99_999)
KEY_RANGE_LONGLORA = (1, 49_999)  # numpy's random.randint(1, 50000) excludes 50,000


@dataclass(frozen=True)
class Protocol:
    """The wording and keys of one published passkey protocol (prompts stay exact-length token grids)."""

    task: str
    key_range: tuple[int, int]


PROTOCOLS = {
    # Position Interpolation's wording, 5-digit keys (every key has the same number of tokens)
    "llqa": Protocol(TASK, KEY_RANGE),
    # LongLoRA's passkey_retrivial.py: "memorize them", keys 1-49,999
    "longlora": Protocol(TASK_LONGLORA, KEY_RANGE_LONGLORA),
}

SEMANTICS = (
    "Passkey retrieval (PI / LongLoRA protocol). Each trial is one prompt of exactly `length` tokens "
    "(chat template included when applied) with a random 5-digit key at `depth` (share of the filler "
    "tokens before the key line). Greedy decoding; a trial is correct when the first integer in the "
    "generated text equals the key. accuracy = correct / evaluated trials, per length and per "
    "(length, depth); skipped trials (prompt longer than the context) are counted, not scored. "
    "effective_context_window = the largest tested length k such that every tested length <= k has "
    "accuracy >= threshold (0 if the shortest fails). Diagnostic only: near_misses = wrong trials whose "
    "first integer is one digit edit (drop, insert or change) from the key; accuracy_one_edit = (correct + "
    "near_misses) / evaluated trials."
)

SEMANTICS_LONGLORA_KEY = (
    "a random key in 1-49,999 (LongLoRA's passkey_retrivial.py: its task line says 'memorize them'; llqa keeps "
    "exact token lengths and fixed depths where LongLoRA cuts the filler in characters at a random depth)"
)
SEMANTICS_TRUNCATED = " Under --overlong middle, prompts above the context lost their middle (the key may be lost)."


def default_lengths(ctx: int, n: int = NUM_DEFAULT_LENGTHS) -> list[int]:
    """`n` lengths spread uniformly up to `ctx`: ctx/n, 2 ctx/n, ..., ctx (rounded to tokens)."""
    return sorted({round(ctx * i / n) for i in range(1, n + 1)})


def effective_context_window(accuracy_by_length: dict[int, float], threshold: float) -> int:
    """Largest tested length k with every tested length <= k at accuracy >= threshold; 0 if none."""
    k = 0
    for length in sorted(accuracy_by_length):
        if accuracy_by_length[length] < threshold:
            break
        k = length
    return k


def trial_key(seed: int, length: int, depth: float, trial: int, key_range: tuple[int, int] = KEY_RANGE) -> int:
    """The key of one trial, derived from the cell itself (not from its position in the grid), so a
    resumed or extended grid reproduces every key. str seeds hash with sha512: stable across runs."""
    return random.Random(f"passkey:{seed}:{length}:{depth!r}:{trial}").randint(*key_range)


@dataclass
class PasskeyConfig:
    """One passkey run. `lengths` None: 32 lengths uniformly up to the model's context."""

    lengths: list[int] | None = None
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    trials: int = DEFAULT_TRIALS
    seed: int = 0
    haystack: str = "filler"  # "filler" (the repeated PI sentences), or a folder of .txt files / a text file
    # a completion prompt ("... The pass key is"): under a chat template SmolLM2 answers in prose instead
    chat_template: str = "none"
    overlong: str = "skip"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_tokens: int | None = None  # None: by device (see generation.default_batch_tokens)
    threshold: float = DEFAULT_THRESHOLD
    protocol: str = "llqa"  # "llqa" (PI's wording, keys 10,000-99,999) or "longlora" (see PROTOCOLS)

    def __post_init__(self):
        check_choice("--protocol", self.protocol, tuple(PROTOCOLS))
        if self.lengths is not None:
            if not self.lengths or any(n <= 0 for n in self.lengths):
                raise LlqaError(
                    f"--lengths must be positive token counts, got {self.lengths}", "e.g. --lengths 1024,2048,4096"
                )
            self.lengths = sorted(set(int(n) for n in self.lengths))
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise LlqaError(f"--depths must lie in [0, 1], got {self.depths}", "e.g. --depths 0,0.25,0.5,0.75,1")
        self.depths = sorted(set(float(d) for d in self.depths))
        if self.trials <= 0:
            raise LlqaError(f"--trials must be positive, got {self.trials}", "e.g. --trials 10")
        if not 0.0 <= self.threshold <= 1.0:
            raise LlqaError(f"--threshold must lie in [0, 1], got {self.threshold}", "e.g. --threshold 0.2")
        check_choice("--chat-template", self.chat_template, CHAT_TEMPLATE_MODES)
        check_choice("--overlong", self.overlong, OVERLONG_POLICIES)
        if self.max_new_tokens <= 0:
            raise LlqaError(f"--max-new-tokens must be positive, got {self.max_new_tokens}", "e.g. 12")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- haystack


def read_haystack(source: str | Path, max_chars: int | None = None) -> str:
    """Haystack text from a folder of .txt files (sorted by path, recursively; empty files skipped), a
    text file or a jsonl/parquet table (`text` field), joined by blank lines; reading stops once
    `max_chars` characters are in hand. Loading is `evals.texts.load_texts`, shared with perplexity."""
    from evals.texts import load_texts

    path = Path(source).expanduser()
    if not path.exists():
        raise LlqaError(
            f"--haystack {source}: no such file or folder", "pass `filler` or a folder of .txt files (e.g. essays)"
        )
    parts, total = [], 0
    for doc in load_texts(path):
        parts.append(doc.text.strip())
        total += len(parts[-1])
        if max_chars is not None and total >= max_chars:
            break
    return "\n\n".join(parts)


def haystack_stream(tokenizer: PreTrainedTokenizerBase, haystack: str, min_tokens: int) -> list[int]:
    """At least `min_tokens` filler token ids: the PI sentences repeated, or the folder's text
    (repeated when shorter than needed)."""
    if haystack == "filler":
        first, unit = encode_text(tokenizer, FILLER), encode_text(tokenizer, " " + FILLER)
        reps = max(0, math.ceil((min_tokens - len(first)) / len(unit)))
        return first + unit * reps
    # ~4 characters per token in English; read 8 per token so one pass nearly always suffices
    text = read_haystack(haystack, max_chars=8 * min_tokens + 10_000)
    ids = encode_text(tokenizer, text)
    if len(ids) >= min_tokens:
        return ids
    sep = encode_text(tokenizer, "\n\n")
    unit = ids + sep
    return unit * math.ceil(min_tokens / len(unit))


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: int
    key_start: int  # index of the key line's first token in ids
    key_len: int  # tokens of the key line (with its surrounding newlines)
    filler_before: int
    filler_total: int


class PasskeyBuilder:
    """Builds prompts of an exact token length from token pieces (see the module doc)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        frame: PromptFrame,
        filler_ids: Sequence[int],
        protocol: Protocol = PROTOCOLS["llqa"],
    ):
        self.tokenizer = tokenizer
        self.protocol = protocol
        self.head = [*frame.head, *encode_text(tokenizer, protocol.task + "\n")]
        self.tail = [*encode_text(tokenizer, "\n" + QUESTION), *frame.tail]
        self.filler = list(filler_ids)

    def key_ids(self, key: int) -> list[int]:
        return encode_text(self.tokenizer, "\n" + KEY_LINE.format(key=key) + "\n")

    def min_length(self) -> int:
        """The shortest prompt that fits every key of the protocol (its longest key has the most digits)."""
        return len(self.head) + max(len(self.key_ids(k)) for k in self.protocol.key_range) + len(self.tail)

    def build(self, length: int, depth: float, key: int) -> PasskeyPrompt:
        key_ids = self.key_ids(key)
        n = length - len(self.head) - len(key_ids) - len(self.tail)
        if n < 0:
            raise LlqaError(
                f"passkey length {length} is shorter than the prompt without filler ({length - n} tokens)",
                f"use lengths of at least {length - n} tokens",
            )
        if n > len(self.filler):
            raise ValueError(f"filler stream too short: {len(self.filler)} < {n}")
        before = round(depth * n)
        ids = [*self.head, *self.filler[:before], *key_ids, *self.filler[before:n], *self.tail]
        return PasskeyPrompt(ids, key, len(self.head) + before, len(key_ids), before, n)


# --------------------------------------------------------------------------- summary


def cell_key(length: int, depth: float, trial: int) -> str:
    return f"len={length}|depth={depth!r}|trial={trial}"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions from a to b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[-1]


def near_miss(record: dict) -> bool:
    """A wrong answer one digit edit from the key (see the module docstring); False for old or skipped records."""
    predicted, key = record.get("predicted"), record.get("key_value")
    if record.get("correct") or predicted is None or key is None:
        return False
    return edit_distance(str(predicted), str(key)) == 1


def summarize(records: Iterable[dict], threshold: float) -> dict[str, Any]:
    """Accuracy per length and per (length, depth), skipped counts, effective context window; near misses."""
    by_len: dict[int, list[bool]] = defaultdict(list)
    near: dict[int, int] = defaultdict(int)
    by_cell: dict[tuple[int, float], list[bool]] = defaultdict(list)
    skipped: dict[int, int] = defaultdict(int)
    truncated = 0
    for r in records:
        if r.get("skipped"):
            skipped[r["length"]] += 1
            continue
        by_len[r["length"]].append(bool(r["correct"]))
        by_cell[(r["length"], r["depth"])].append(bool(r["correct"]))
        near[r["length"]] += near_miss(r)
        truncated += bool(r.get("truncated"))
    acc = {n: sum(v) / len(v) for n, v in sorted(by_len.items())}
    evaluated = sum(len(v) for v in by_len.values())
    correct, near_total = sum(sum(v) for v in by_len.values()), sum(near.values())
    return {
        "accuracy": (correct / evaluated) if evaluated else None,
        "near_misses": near_total,
        "accuracy_one_edit": ((correct + near_total) / evaluated) if evaluated else None,
        "evaluated": evaluated,
        "skipped": sum(skipped.values()),
        "truncated": truncated,
        "threshold": threshold,
        "effective_context_window": effective_context_window(acc, threshold) if acc else None,
        "by_length": [
            {
                "length": n,
                "trials": len(by_len[n]),
                "correct": sum(by_len[n]),
                "accuracy": acc[n],
                "near_misses": near[n],
                "accuracy_one_edit": (sum(by_len[n]) + near[n]) / len(by_len[n]),
                "skipped": skipped.get(n, 0),
            }
            for n in acc
        ]
        + [
            {
                "length": n,
                "trials": 0,
                "correct": 0,
                "accuracy": None,
                "near_misses": 0,
                "accuracy_one_edit": None,
                "skipped": k,
            }
            for n, k in sorted(skipped.items())
            if n not in acc
        ],
        "by_length_depth": [
            {"length": n, "depth": d, "trials": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)}
            for (n, d), v in sorted(by_cell.items())
        ],
    }


def csv_rows(summary: dict) -> list[dict[str, Any]]:
    """result.csv: one row per length (over all depths: `depth` empty, so the column stays numeric when
    loaded), then one per (length, depth)."""
    per_length = ("trials", "correct", "accuracy", "near_misses", "accuracy_one_edit", "skipped")
    return [{"length": r["length"], "depth": "", **{k: r[k] for k in per_length}} for r in summary["by_length"]] + [
        {
            "length": r["length"],
            "depth": r["depth"],
            "trials": r["trials"],
            "correct": r["correct"],
            "accuracy": r["accuracy"],
            "near_misses": "",
            "accuracy_one_edit": "",
            "skipped": "",
        }
        for r in summary["by_length_depth"]
    ]


# --------------------------------------------------------------------------- the task


@dataclass
class PasskeyTask:
    """Passkey retrieval as a harness task (`evals.harness.Task`)."""

    cfg: PasskeyConfig
    name: str = "passkey"
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    lengths: list[int] = field(default_factory=list)  # resolved by build_cases

    stop_when = staticmethod(integer_complete)  # the first integer is final once a non-digit follows

    def options(self) -> GenerationOptions:
        c = self.cfg
        return GenerationOptions(c.chat_template, c.overlong, c.max_new_tokens, c.batch_tokens)

    def semantics(self, ctx: TaskContext) -> str:
        text = SEMANTICS
        if self.cfg.protocol == "longlora":
            text = text.replace("a random 5-digit key", SEMANTICS_LONGLORA_KEY)
        return text + (SEMANTICS_TRUNCATED if ctx.options.overlong == "middle" else "")

    def config(self) -> dict[str, Any]:
        resolved = {k: v for k, v in self.cfg.to_dict().items() if k != "batch_tokens"}
        return {**resolved, "lengths": self.lengths, "length_tolerance_tokens": LENGTH_TOLERANCE}

    def build_cases(self, ctx: TaskContext) -> list[Case]:
        tok, cfg = ctx.tokenizer, self.cfg
        lengths = cfg.lengths or default_lengths(ctx.ctx)
        protocol = PROTOCOLS[cfg.protocol]
        probe = PasskeyBuilder(tok, ctx.frame, [], protocol)
        if cfg.lengths is None:  # the uniform grid may start below the fixed part of the prompt at tiny ctx
            lengths = [n for n in lengths if n >= probe.min_length()]
        too_short = [n for n in lengths if n < probe.min_length()]
        if too_short or not lengths:
            raise LlqaError(
                f"passkey lengths {too_short or lengths} are shorter than the prompt without filler "
                f"({probe.min_length()} tokens)",
                f"use lengths of at least {probe.min_length()} tokens",
            )
        self.lengths = lengths
        builder = PasskeyBuilder(tok, ctx.frame, haystack_stream(tok, cfg.haystack, max(lengths)), protocol)
        cases = []
        for length in lengths:
            for depth in cfg.depths:
                for trial in range(cfg.trials):
                    key = trial_key(cfg.seed, length, depth, trial, protocol.key_range)
                    p = builder.build(length, depth, key)
                    meta = {
                        "length": length,
                        "depth": depth,
                        "trial": trial,
                        "key_value": p.key,
                        "tokens": len(p.ids),
                        "key_start": p.key_start,
                    }
                    cases.append(Case(cell_key(length, depth, trial), ids=p.ids, reference=p.key, meta=meta))
        return cases

    def score(self, case: Case, answer: str) -> dict[str, Any]:
        predicted = first_integer(answer)
        return {"predicted": predicted, "correct": predicted == case.reference}

    def summarise(self, records: Sequence[dict]) -> dict[str, Any]:
        return summarize(records, self.cfg.threshold)

    def rows(self, summary: dict) -> list[dict[str, Any]]:
        return csv_rows(summary)

    def data(self) -> dict[str, Any]:
        return {
            "haystack": self.cfg.haystack,
            "task": PROTOCOLS[self.cfg.protocol].task,
            "filler": FILLER,
            "key_line": KEY_LINE,
            "question": QUESTION,
        }

    def plots(self, out_dir: Path, summary: dict, ctx: TaskContext) -> list[str]:
        info = ctx.model_info
        title = (
            f"passkey: {info.spec} @ ctx {ctx.ctx} (rope x{info.rope_factor:g}), "
            f"{'chat template' if ctx.template else 'no template'}, {self.cfg.trials} trials/cell"
        )
        return _plots(out_dir, summary, self.lengths, self.cfg.depths, title)


def _plots(out: Path, summary: dict, lengths: list[int], depths: list[float], title: str) -> list[str]:
    from evals.plots import accuracy_heatmap, accuracy_vs_length

    cell = {(r["length"], r["depth"]): r["accuracy"] for r in summary["by_length_depth"]}
    grid = [[cell.get((n, d)) for n in lengths] for d in depths]
    accuracy_heatmap(out / "passkey_heatmap.png", lengths, depths, grid, title)
    rows = [r for r in summary["by_length"] if r["accuracy"] is not None]
    ecw = summary["effective_context_window"]
    accuracy_vs_length(
        out / "passkey_accuracy.png",
        {"passkey accuracy": ([r["length"] for r in rows], [r["accuracy"] for r in rows])},
        title,
        threshold=summary["threshold"],
        marker=ecw,
        marker_label=f"effective context window {ecw}",
    )
    return ["passkey_heatmap.png", "passkey_accuracy.png"]


# --------------------------------------------------------------------------- run


def run_passkey(
    loaded: LoadedModel,
    cfg: PasskeyConfig,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    ctx: int | None = None,
    poll_s: float = 2.0,
) -> dict[str, Any] | None:
    """Run (or resume) the passkey grid through `evals.harness.run_task`; writes cells.jsonl,
    result.json/csv and the two PNGs in out_dir and returns the summary (None on torchrun ranks other
    than 0). `ctx`: the context of the eval (--ctx; default lengths reach it, longer prompts are
    over-long); None: the model's (its PI target context, else its native one)."""
    task = PasskeyTask(cfg)
    result = run_task(
        loaded, task, task.options(), out_dir, overwrite=overwrite, progress=progress, ctx=ctx, poll_s=poll_s
    )
    return None if result is None else result.summary
