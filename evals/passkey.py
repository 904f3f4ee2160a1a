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
    fit_to_context,
    generate_greedy,
    integer_complete,
    prompt_frame,
    use_chat_template,
)
from llqa.errors import LlqaError
from llqa.ranks import RankedStore

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llqa.models import LoadedModel

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
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


def trial_key(seed: int, length: int, depth: float, trial: int) -> int:
    """The key of one trial, derived from the cell itself (not from its position in the grid), so a
    resumed or extended grid reproduces every key. str seeds hash with sha512: stable across runs."""
    return random.Random(f"passkey:{seed}:{length}:{depth!r}:{trial}").randint(*KEY_RANGE)


@dataclass
class PasskeyConfig:
    """One passkey run. `lengths` None: 32 lengths uniformly up to the model's context."""

    lengths: list[int] | None = None
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    trials: int = DEFAULT_TRIALS
    seed: int = 0
    haystack: str = "filler"  # "filler" (the repeated PI sentences), or a folder of .txt files / a text file
    chat_template: str = "auto"
    overlong: str = "skip"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_tokens: int | None = None  # None: by device (see generation.default_batch_tokens)
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self):
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

    def __init__(self, tokenizer: PreTrainedTokenizerBase, frame: PromptFrame, filler_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.head = [*frame.head, *encode_text(tokenizer, TASK + "\n")]
        self.tail = [*encode_text(tokenizer, "\n" + QUESTION), *frame.tail]
        self.filler = list(filler_ids)

    def key_ids(self, key: int) -> list[int]:
        return encode_text(self.tokenizer, "\n" + KEY_LINE.format(key=key) + "\n")

    def min_length(self, key: int = KEY_RANGE[1]) -> int:
        return len(self.head) + len(self.key_ids(key)) + len(self.tail)

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
    """Run (or resume) the passkey grid; writes cells.jsonl, result.json/csv and the two PNGs in out_dir.

    `ctx`: the context of the eval (--ctx; default lengths reach it, longer prompts are over-long);
    None: the model's (its PI target context, else its native one).

    Under torchrun (RANK/WORLD_SIZE set) each rank runs every world-size-th trial of the grid into
    out_dir/rank{r}/cells.jsonl and returns None, except rank 0, which waits for all trials (polling the
    logs every `poll_s` seconds), then writes the results and returns the summary (`llqa.ranks`)."""
    from evals.generation import default_batch_tokens

    tok, model, info = loaded.tokenizer, loaded.model, loaded.info
    ctx = ctx or info.target_ctx
    template = use_chat_template(tok, cfg.chat_template)
    frame = prompt_frame(tok, template)
    lengths = cfg.lengths or default_lengths(ctx)
    probe = PasskeyBuilder(tok, frame, [])
    if cfg.lengths is None:  # the uniform grid may start below the fixed part of the prompt at tiny ctx
        lengths = [n for n in lengths if n >= probe.min_length()]
    too_short = [n for n in lengths if n < probe.min_length()]
    if too_short or not lengths:
        raise LlqaError(
            f"passkey lengths {too_short or lengths} are shorter than the prompt without filler "
            f"({probe.min_length()} tokens)",
            f"use lengths of at least {probe.min_length()} tokens",
        )
    batch_tokens = cfg.batch_tokens or default_batch_tokens(next(model.parameters()).device)
    builder = PasskeyBuilder(tok, frame, haystack_stream(tok, cfg.haystack, max(lengths)))
    resolved = {**cfg.to_dict(), "lengths": lengths, "batch_tokens": batch_tokens}
    run_config = {
        **{k: v for k, v in resolved.items() if k != "batch_tokens"},
        "model": info.spec,
        "ctx": ctx,
        "chat_template_applied": template,
        "length_tolerance_tokens": LENGTH_TOLERANCE,
        **info.rope_key(),
    }
    store = RankedStore(out_dir, "passkey", run_config, overwrite=overwrite)

    grid = [(length, depth, trial) for length in lengths for depth in cfg.depths for trial in range(cfg.trials)]
    pending: list[tuple[str, dict, list[int]]] = []
    for length, depth, trial in store.share(grid):
        key = cell_key(length, depth, trial)
        if key in store.done:
            continue
        p = builder.build(length, depth, trial_key(cfg.seed, length, depth, trial))
        meta = {
            "length": length,
            "depth": depth,
            "trial": trial,
            "key_value": p.key,
            "tokens": len(p.ids),
            "key_start": p.key_start,
        }
        ids, truncated = fit_to_context(p.ids, ctx, cfg.overlong)
        if ids is None:
            store.add(key, {**meta, "skipped": True})
            continue
        pending.append((key, {**meta, "truncated": truncated}, ids))

    for batch in generate_greedy(
        model,
        tok,
        [ids for _, _, ids in pending],
        cfg.max_new_tokens,
        batch_tokens,
        stop_when=integer_complete,
        progress=progress,
        desc="passkey",
    ):
        for g in batch:
            key, meta, _ = pending[g.index]
            predicted = first_integer(g.text)
            store.add(
                key,
                {
                    **meta,
                    "output": g.text,
                    "predicted": predicted,
                    "correct": predicted == meta["key_value"],
                    "skipped": False,
                },
            )

    if not store.is_main:
        return None
    keys = [cell_key(*c) for c in grid]
    merged = store.merge(keys, poll_s)
    records = [merged[k] for k in keys]
    summary = summarize(records, cfg.threshold)
    out = Path(out_dir)
    title = (
        f"passkey: {info.spec} @ ctx {ctx} ({info.rope_label or 'own RoPE'}), "
        f"{'chat template' if template else 'no template'}, {cfg.trials} trials/cell"
    )
    pngs = _plots(out, summary, lengths, cfg.depths, title)
    per_length = ("trials", "correct", "accuracy", "near_misses", "accuracy_one_edit", "skipped")
    rows = [{"length": r["length"], "depth": "all", **{k: r[k] for k in per_length}} for r in summary["by_length"]] + [
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
    semantics = SEMANTICS + (SEMANTICS_TRUNCATED if cfg.overlong == "middle" else "")
    store.main.finalize(
        semantics=semantics,
        summary=summary,
        rows=rows,
        model=info.to_dict(),
        data={"haystack": cfg.haystack, "task": TASK, "filler": FILLER, "key_line": KEY_LINE, "question": QUESTION},
        extra={"plots": pngs, "batch_tokens": batch_tokens},
    )
    return summary
