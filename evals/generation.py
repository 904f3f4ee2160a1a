"""Batched greedy generation shared by the retrieval evals (passkey, topics, lines).

What every retrieval eval needs, in one place:
- prompts as token ids, wrapped in the model's chat template when `--chat-template auto` finds one
  (the template's tokens count towards the prompt's length);
- prompts longer than the context handled explicitly: `skip` (not run, counted), `middle` (the
  middle is cut so the task line at the start and the question at the end survive) or `keep`
  (run beyond the context, e.g. to study extrapolation) — never cut silently;
- greedy decoding with a KV cache (`model.generate(do_sample=False)`), full attention, left padding,
  prompts grouped by length into batches under a token budget (equal lengths need no padding mask,
  so SDPA runs its plain causal kernel), and an optional per-row early stop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llqa.errors import LlqaError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CHAT_TEMPLATE_MODES = ("auto", "none")
OVERLONG_POLICIES = ("skip", "middle", "keep")
_SENTINEL = "\u2063LLQA_PROMPT\u2063"  # a string no template produces by itself
_INT = re.compile(r"\d+")


# --------------------------------------------------------------------------- scoring helpers


def first_integer(text: str) -> int | None:
    """The first run of digits in `text` (the passkey rule), or None."""
    m = _INT.search(text)
    return int(m.group()) if m else None


def last_integer(text: str) -> int | None:
    """The last run of digits in `text` (LongChat's line-retrieval rule), or None."""
    found = _INT.findall(text)
    return int(found[-1]) if found else None


def integer_complete(text: str) -> bool:
    """True once `text` holds a run of digits followed by a non-digit: the first integer is final."""
    return re.search(r"\d\D", text) is not None


# --------------------------------------------------------------------------- prompt encoding


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise LlqaError(f"{name} {value!r} is not a choice", f"use one of: {', '.join(choices)}")
    return value


def use_chat_template(tokenizer: PreTrainedTokenizerBase, mode: str) -> bool:
    """`auto`: apply the tokenizer's chat template when it has one; `none`: never."""
    check_choice("--chat-template", mode, CHAT_TEMPLATE_MODES)
    return mode == "auto" and bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptFrame:
    """Token ids that surround a user message: the chat template's head and tail (with the generation
    prompt), or only the tokenizer's own special tokens (e.g. BOS) without a template."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    template: bool

    def encode(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        """The message's ids inside the frame. Pieces are tokenized separately: a template's text
        boundaries are whitespace or special tokens, so this equals tokenizing the whole string
        except in rare merges, and it lets callers count tokens piece by piece exactly."""
        return [*self.head, *encode_text(tokenizer, text), *self.tail]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_frame(tokenizer: PreTrainedTokenizerBase, template: bool) -> PromptFrame:
    if template:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise LlqaError(
                "the model's chat template does not reproduce the user message verbatim",
                "run with --chat-template none",
            )
        head, tail = rendered.split(_SENTINEL)
        # the rendered text carries its own special tokens (BOS etc.): do not add them again
        return PromptFrame(tuple(encode_text(tokenizer, head)), tuple(encode_text(tokenizer, tail)), True)
    specials = list(tokenizer("", add_special_tokens=True)["input_ids"])
    bos = [specials[0]] if specials and specials[0] == tokenizer.bos_token_id else []
    return PromptFrame(tuple(bos), (), False)


# --------------------------------------------------------------------------- over-long prompts


def middle_truncate(ids: Sequence[int], keep: int) -> list[int]:
    """Keep the first ceil(keep/2) and last floor(keep/2) ids: the instructions at the start and the
    question at the end survive; the middle of the record is what is lost."""
    if keep <= 0:
        raise ValueError("keep must be positive")
    if len(ids) <= keep:
        return list(ids)
    front = math.ceil(keep / 2)
    back = keep - front
    return [*ids[:front], *(ids[len(ids) - back :] if back else [])]


def fit_to_context(ids: Sequence[int], ctx: int, policy: str) -> tuple[list[int] | None, bool]:
    """(ids to run or None when skipped, whether they were truncated) for a prompt against `ctx`.

    A prompt of exactly `ctx` tokens fits; the few answer tokens then sit at positions >= ctx."""
    check_choice("--overlong", policy, OVERLONG_POLICIES)
    if len(ids) <= ctx or policy == "keep":
        return list(ids), False
    if policy == "skip":
        return None, False
    return middle_truncate(ids, ctx), True


# --------------------------------------------------------------------------- batching


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, longest first, so that (batch size x longest prompt in
    the batch) <= batch_tokens; a prompt longer than the budget gets a batch of its own.

    Every index appears exactly once; sorting by length keeps padding small."""
    if batch_tokens <= 0:
        raise LlqaError(f"--batch-tokens must be positive, got {batch_tokens}", "e.g. --batch-tokens 65536")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        full = max_batch is not None and len(current) >= max_batch
        if current and (full or (len(current) + 1) * longest > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def default_batch_tokens(device) -> int:
    """Tokens per batch (batch size x longest prompt): large on a GPU, small on CPU where batching
    gains little and memory is shared with everything else."""
    return 262_144 if getattr(device, "type", str(device)) == "cuda" else 16_384


# --------------------------------------------------------------------------- generation


@dataclass
class Generation:
    index: int  # position in the caller's prompt list
    text: str  # decoded new tokens, special tokens removed
    new_tokens: int


def _stop_criteria(tokenizer, prompt_len: int, stop_when: Callable[[str], bool]):
    import torch
    from transformers import StoppingCriteria

    class _RowStop(StoppingCriteria):
        """Per-row stop: generate() marks a row finished once `stop_when` holds for its new text."""

        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_len:].tolist()
            done = [stop_when(tokenizer.decode(row, skip_special_tokens=True)) for row in new]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _RowStop()


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def _row_tokens(row: list[int], eos: Sequence[int], pad: int) -> list[int]:
    """A row's generated tokens: up to its first EOS (excluded); generate() pads finished rows after that."""
    for n, t in enumerate(row):
        if t in eos:
            return row[:n]
    while row and row[-1] == pad:  # a row stopped by `stop_when` is padded to the batch's length
        row = row[:-1]
    return row


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_tokens: int,
    stop_when: Callable[[str], bool] | None = None,
    max_batch: int | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> Iterator[list[Generation]]:
    """Greedy continuations of `prompts` (token id lists), yielded batch by batch so callers can save
    each finished batch (resume). Rows are left-padded; a row stops at EOS, at `max_new_tokens`, or
    once `stop_when(new_text)` is true."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, StoppingCriteriaList

    if max_new_tokens <= 0:
        raise LlqaError(f"--max-new-tokens must be positive, got {max_new_tokens}", "e.g. --max-new-tokens 16")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None, use_cache=True
    )
    batches = plan_batches([len(p) for p in prompts], batch_tokens, max_batch)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
    try:
        for batch in batches:
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                p = prompts[i]
                ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p) :] = 1
            criteria = StoppingCriteriaList([_stop_criteria(tokenizer, width, stop_when)] if stop_when else [])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    stopping_criteria=criteria,
                )
            results = [
                Generation(i, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))
                for i, tokens in zip(batch, (_row_tokens(r, eos, pad) for r in out[:, width:].tolist()), strict=True)
            ]
            bar.update(len(batch))
            yield results
    finally:
        bar.close()
