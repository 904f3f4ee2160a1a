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

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llqa.errors import LlqaError
from llqa.models import unwrapped

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# What every generation eval's run.json records as its decoding (see `_plain_generation_config`)
DECODING = "greedy, one beam, no penalties; the checkpoint's generation_config.json is ignored except its EOS ids"
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


# A prompt shorter than this share of its batch's longest starts a new batch. Padding costs the padded
# positions' compute and, worse, a padding mask: SDPA then leaves its flash kernel for one that reads a
# (query x key) mask per row. RULER runs 4k, 8k, 16k and 32k prompts of one task together; without the
# band a batch's last rows of 32k were filled up with 16k prompts.
PADDING_BAND = 7 / 8


def plan_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    max_batch: int | None = None,
    max_rows: Callable[[int, bool], int] | None = None,
) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, longest first, so that (batch size x longest prompt in
    the batch) <= batch_tokens, batch size <= max_batch and <= max_rows(longest prompt, padded) (the
    memory rule; `padded`: the batch holds prompts of unequal lengths, so it needs a padding mask), and
    no prompt is shorter than PADDING_BAND x the batch's longest; a prompt longer than the budget gets a
    batch of its own.

    Every index appears exactly once; sorting by length keeps padding small."""
    if batch_tokens <= 0:
        raise LlqaError(f"--batch-tokens must be positive, got {batch_tokens}", "e.g. --batch-tokens 65536")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        padded = lengths[i] != longest  # sorted: the newest prompt is the batch's shortest
        cap = min(max_batch or len(lengths), max_rows(longest, padded) if max_rows else len(lengths))
        full = len(current) >= cap
        out_of_band = lengths[i] < PADDING_BAND * longest
        if current and (full or out_of_band or (len(current) + 1) * longest > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# Tokens per batch (batch size x longest prompt) by device. On a GPU the memory rule (`rows_that_fit`) is
# what binds: every decoding step of a batch costs about the same wall time whatever its rows (a step is a
# few hundred small kernels), so fewer, larger batches finish sooner (RULER on SmolLM2 at 4k-32k decodes
# 30-128 tokens per prompt; at 262,144 tokens per batch, 8 rows of 32k, its decoding steps dominated).
# On CPU, batching gains little and memory is shared with everything else.
GPU_BATCH_TOKENS = 2_097_152
CPU_BATCH_TOKENS = 16_384


def default_batch_tokens(device) -> int:
    """Tokens per batch (batch size x longest prompt) by device: GPU_BATCH_TOKENS or CPU_BATCH_TOKENS."""
    return GPU_BATCH_TOKENS if getattr(device, "type", str(device)) == "cuda" else CPU_BATCH_TOKENS


# --------------------------------------------------------------------------- memory


GIB = 1024**3
HEADROOM = 0.9  # share of the free memory a batch may plan to use (allocator fragmentation, kernels' workspaces)
# Prompt tokens per row per prefill forward when a whole prompt's prefill does not fit in memory. A prompt
# that fits is prefilled in one forward: chunks after the first attend to a KV cache through an explicit
# mask, which rules out the flash kernels (on an H200 the 4096-token chunks halved prefill throughput).
DEFAULT_PREFILL_CHUNK = 4096
MIN_PREFILL_CHUNK = 256


@dataclass(frozen=True)
class PromptCost:
    """What one row of a generation batch costs in memory, from the model's config (no measurement).

    - `kv_bytes_per_token`: the KV cache, layers x 2 (K and V) x kv_heads x head_dim x dtype bytes
      (Llama-2-7B in bf16: 32 x 2 x 32 x 128 x 2 = 512 KiB, so a 32k prompt holds 16 GiB);
    - `activation_bytes_per_token`: the largest transient of one decoder layer per prefill token (one
      layer runs at a time): residual, norm, attention output and o_proj (4 x hidden), q/k/v
      ((heads + 2 kv_heads) x head_dim) and the MLP's gate, up and their product (3 x intermediate);
    - `per_cached_token_transient`: bytes per cached token that a layer copies while it runs: its own K
      and V written into the reserved cache (`decode_cache`; the prefill's states and the buffer are both
      alive for that copy), and with grouped-query attention the K and V repeated to every query head
      (SDPA without native GQA support, or with a padding mask);
    - `logits_bytes`: the fp32 logits of the last position (all generate() keeps), per row;
    - `mask_bytes_per_pair`: per row and (query, key) pair of a prefill forward, the boolean mask
      transformers builds when rows are padded or a chunk attends to a cache, and the additive mask of
      the model's dtype that SDPA makes of it (1 + dtype bytes). A batch of equal-length prompts
      prefilled in one forward has no mask: SDPA runs its causal kernel."""

    kv_bytes_per_token: int
    activation_bytes_per_token: int
    per_cached_token_transient: int
    logits_bytes: int
    mask_bytes_per_pair: int

    def row_bytes(self, tokens: int, chunk: int, padded: bool = True) -> int:
        """Peak bytes of one row: its KV cache for `tokens`, one prefill chunk's activations and (when
        the batch is `padded` or the prompt is chunked) its mask, one layer's cache copies and the logits."""
        step = min(chunk, tokens)
        masked = padded or step < tokens
        return (
            self.kv_bytes_per_token * tokens
            + self.activation_bytes_per_token * step
            + (self.mask_bytes_per_pair * step * tokens if masked else 0)
            + self.per_cached_token_transient * tokens
            + self.logits_bytes
        )


def prompt_cost(config, dtype_bytes: int) -> PromptCost:
    """The `PromptCost` of a transformers model config (Llama-style field names) at `dtype_bytes`."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    kv_per_layer = 2 * kv_heads * head_dim * dtype_bytes
    repeated = 2 * heads * head_dim * dtype_bytes if kv_heads < heads else 0
    return PromptCost(
        kv_bytes_per_token=layers * kv_per_layer,
        activation_bytes_per_token=(4 * hidden + (heads + 2 * kv_heads) * head_dim + 3 * intermediate) * dtype_bytes,
        per_cached_token_transient=kv_per_layer + repeated,
        logits_bytes=4 * config.vocab_size,
        mask_bytes_per_pair=1 + dtype_bytes,
    )


def prefill_chunk_for(cost: PromptCost, tokens: int, free_bytes: int, padded: bool = True) -> int:
    """The prefill chunk for rows of `tokens` tokens (prompt + new tokens): the whole prompt when one such
    row, prefilled in one forward, fits in HEADROOM x `free_bytes`; else DEFAULT_PREFILL_CHUNK."""
    whole = cost.row_bytes(tokens, tokens, padded)
    return tokens if whole <= HEADROOM * free_bytes else DEFAULT_PREFILL_CHUNK


def rows_that_fit(
    cost: PromptCost, tokens: int, free_bytes: int, chunk: int = DEFAULT_PREFILL_CHUNK, padded: bool = True
) -> int:
    """How many rows of `tokens` tokens (prompt + new tokens) fit in HEADROOM x `free_bytes`; at least 1
    (a row that does not fit is tried alone, and an out-of-memory error is then reported, not planned away)."""
    return max(1, int(HEADROOM * free_bytes) // cost.row_bytes(tokens, chunk, padded))


def free_memory(device) -> int:
    """Bytes a new batch may use on `device`: CUDA's free memory plus what torch holds cached but unused;
    on CPU the system's available memory."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _release(device) -> None:
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()


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


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _first_step_clock(device):
    """A stopping criterion that never stops and notes when generate() first calls it: after the prefill
    and the first new token, which splits a batch's wall time into prefill and decoding."""
    import time

    import torch
    from transformers import StoppingCriteria

    class _FirstStep(StoppingCriteria):
        at: float | None = None

        def __call__(self, input_ids, scores, **kwargs):
            if self.at is None:
                _sync(device)
                self.at = time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _FirstStep()


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


def _cache_kwarg(model) -> str:
    """The name under which this transformers takes a KV cache: `cache` (5.2x; `past_key_values` is then
    deprecated, to be removed) or `past_key_values` (earlier 5.x)."""
    import inspect

    base = unwrapped(model)  # a PEFT wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@functools.cache
def _reserved_layer():
    """transformers' `DynamicLayer` with room reserved for the tokens still to come.

    A `DynamicLayer` concatenates every new position onto its K and V, so each decoding step copies the
    whole cache of every layer: at 128 new tokens after 32k-token prompts that copy, not attention, is most
    of a step. This layer keeps K and V as views of one buffer with `reserve` free positions after what it
    was first given, writes each step in place and returns the views; it reallocates only when a write
    does not fit or something outside replaced its tensors (crop keeps the buffer, batch selection or
    offloading does not). What attention sees, and so every mask size and output, is exactly what the
    concatenating layer gives."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve = reserve
            self.buffers = None  # (K, V) of shape (B, H, capacity, D)

        def _holds(self, states, length: int) -> bool:
            if self.buffers is None:
                return False
            k = self.buffers[0]
            same = k.shape[:-2] == states.shape[:-2] and k.shape[-1] == states.shape[-1] and k.dtype == states.dtype
            mine = self.keys.numel() == 0 or self.keys.data_ptr() == k.data_ptr()
            return same and mine and k.device == states.device and length <= k.shape[-2]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self.get_seq_length(), key_states.shape[-2]
            if not self._holds(key_states, n + m):
                old = (self.keys, self.values)
                self.buffers = tuple(
                    s.new_empty(*s.shape[:-2], n + m + self.reserve, s.shape[-1]) for s in (key_states, value_states)
                )
                for buf, kept in zip(self.buffers, old, strict=True):
                    if n:
                        buf[..., :n, :].copy_(kept)
            for buf, new in zip(self.buffers, (key_states, value_states), strict=True):
                buf[..., n : n + m, :].copy_(new)
            self.keys, self.values = (buf[..., : n + m, :] for buf in self.buffers)
            return self.keys, self.values

    return ReservedLayer


def decode_cache(model, reserve: int):
    """An empty KV cache for one batch of `model.generate`: transformers' `DynamicCache` for the model's
    config, its full-attention layers replaced by `_reserved_layer` with `reserve` free positions after
    their first write (the caller sizes it so the batch never reallocates). Sliding-window and other
    special layers stay as transformers made them."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = _reserved_layer()(reserve)
    return cache


def _prefill(model, cache, ids, mask, chunk: int):
    """Fill `cache` with every position but the last, `chunk` positions at a time (positions from the
    attention mask, as generate() computes them): the activations of a long prompt stay those of one chunk.
    generate() then runs the last position from this cache."""
    import torch

    positions = mask.long().cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    width = ids.shape[1]
    cache_arg = {_cache_kwarg(model): cache}
    for start in range(0, width - 1, chunk):
        end = min(start + chunk, width - 1)
        model(
            input_ids=ids[:, start:end],
            attention_mask=mask[:, :end],
            position_ids=positions[:, start:end],
            cache_position=torch.arange(start, end, device=ids.device),
            use_cache=True,
            logits_to_keep=1,
            **cache_arg,
        )


@contextlib.contextmanager
def _plain_generation_config(model):
    """The model's `generation_config` replaced by transformers' defaults while the harness decodes.

    generate() fills every field that the config it is given leaves unset from the model's own
    generation_config.json: a Qwen2.5-Instruct checkpoint ships `repetition_penalty` 1.05, others
    `no_repeat_ngram_size`, `num_beams` or a `cache_implementation`, any of which would quietly turn the
    evals' greedy decoding into something else (or refuse the harness's KV cache). EOS ids are read from
    the model's config before this (`_eos_ids`). For a PEFT model the config lives on the wrapped model."""
    from transformers import GenerationConfig

    target = unwrapped(model)
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def _decoding_kernels(device, avoid_cudnn: bool):
    """The SDPA kernels decoding steps may use: on CUDA, every kernel but cuDNN's (flash first).

    cuDNN's attention, torch's first choice on Hopper and Blackwell GPUs, builds an execution plan per
    input shape and caches it. A decoding step's key length is one more than the last step's, so every
    step of a batch whose shape was not decoded before builds a plan: on an H200 that made such batches
    decode at 68-97 ms per step against ~30 ms for a repeated shape (benchmarks/generation_prefill.md).
    The prefill, one shape per batch, keeps torch's choice."""
    if not avoid_cudnn or getattr(device, "type", str(device)) != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True)


def _generate_batch(
    model, tokenizer, prompts, batch, config, stop_when, eos, pad, chunk, avoid_cudnn_decode=True
) -> tuple[list[Generation], dict[str, float]]:
    """The batch's generations and its timing: `seconds` (prompt tensors to decoded text),
    `first_token_s` (prefill and the first new token) and `new_tokens` (decoding steps run)."""
    import time

    import torch
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    start = time.perf_counter()
    width = max(len(prompts[i]) for i in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        p = prompts[i]
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    clock = _first_step_clock(device)
    criteria = StoppingCriteriaList([clock, *([_stop_criteria(tokenizer, width, stop_when)] if stop_when else [])])
    with torch.inference_mode(), _plain_generation_config(model):
        # room for every position the batch will hold: the first write is the prefill's first chunk (or,
        # for a one-token prompt, generate's first step), so nothing reallocates per chunk or step
        first = min(chunk, width - 1) if width > 1 else 1
        cache = decode_cache(model, width + config.max_new_tokens - first)
        # the prompt but its last position under torch's kernel choice; generate() then runs one-position
        # steps only, each a new key length
        _prefill(model, cache, ids, mask, chunk)
        with _decoding_kernels(device, avoid_cudnn_decode):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                stopping_criteria=criteria,
                **{_cache_kwarg(model): cache},
            )
    rows = (_row_tokens(r, eos, pad) for r in out[:, width:].tolist())
    results = [
        Generation(i, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))
        for i, tokens in zip(batch, rows, strict=True)
    ]
    end = time.perf_counter()
    timing = {
        "seconds": round(end - start, 4),
        "first_token_s": round((clock.at or end) - start, 4),
        "new_tokens": int(out.shape[1] - width),
    }
    return results, timing


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
    prefill_chunk: int | None = None,
    free_bytes: int | None = None,
    on_batch: Callable[[dict], None] | None = None,
    avoid_cudnn_decode: bool = True,
) -> Iterator[list[Generation]]:
    """Greedy continuations of `prompts` (token id lists), yielded batch by batch so callers can save
    each finished batch (resume). Rows are left-padded; a row stops at EOS, at `max_new_tokens`, or
    once `stop_when(new_text)` is true.

    Batches hold at most `batch_tokens` (rows x longest prompt) and at most the rows that fit in memory
    (`rows_that_fit`: the model's KV cache per token, prefill activations, `free_bytes`, by default the
    device's free memory now). A batch's prompts are prefilled in one forward when one row so prefilled
    fits (`prefill_chunk_for`), else in chunks of DEFAULT_PREFILL_CHUNK tokens; an int `prefill_chunk`
    fixes the chunk instead. An out-of-memory error splits the batch in two and retries; a single prompt
    that does not fit is retried with half the prefill chunk, down to MIN_PREFILL_CHUNK, then reported as
    one LlqaError (the batches already yielded are kept by the caller).

    `on_batch` receives one record per batch tried: rows, width (longest prompt), padded, prefill_chunk,
    and either the timing of `_generate_batch` or `"out_of_memory": True` with the seconds lost.

    The prompt's positions but the last are prefilled under torch's SDPA kernel choice, the decoding steps
    under every kernel but cuDNN's (`_decoding_kernels`; `avoid_cudnn_decode=False` keeps torch's choice
    there too, for the benchmark that measures the difference)."""
    import time

    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if max_new_tokens <= 0:
        raise LlqaError(f"--max-new-tokens must be positive, got {max_new_tokens}", "e.g. --max-new-tokens 16")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None, use_cache=True
    )
    cost = prompt_cost(model.config, next(model.parameters()).element_size())
    free = free_memory(device) if free_bytes is None else free_bytes
    fixed_chunk = prefill_chunk  # None: per batch, by memory; set below once out of memory shrinks it

    def chunk_for(longest: int, padded: bool) -> int:
        if fixed_chunk is not None:
            return fixed_chunk
        return prefill_chunk_for(cost, longest + max_new_tokens, free, padded)

    def max_rows(longest: int, padded: bool) -> int:
        return rows_that_fit(cost, longest + max_new_tokens, free, chunk_for(longest, padded), padded)

    queue = plan_batches([len(p) for p in prompts], batch_tokens, max_batch, max_rows)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
    try:
        while queue:
            batch = queue.pop(0)
            widths = [len(prompts[i]) for i in batch]
            padded = min(widths) != max(widths)
            chunk = chunk_for(max(widths), padded)
            shape = {"rows": len(batch), "width": max(widths), "padded": padded}
            started = time.perf_counter()
            try:
                results, timing = _generate_batch(
                    model, tokenizer, prompts, batch, config, stop_when, eos, pad, chunk, avoid_cudnn_decode
                )
            except Exception as e:
                if not _is_oom(e):
                    raise
                del e  # its traceback holds the batch's tensors
                _release(device)
                if on_batch:
                    lost = round(time.perf_counter() - started, 4)
                    on_batch({**shape, "prefill_chunk": chunk, "out_of_memory": True, "seconds": lost})
                if len(batch) > 1:
                    half = len(batch) // 2
                    queue[:0] = [batch[:half], batch[half:]]
                elif chunk > MIN_PREFILL_CHUNK and len(prompts[batch[0]]) > MIN_PREFILL_CHUNK:
                    fixed_chunk = max(MIN_PREFILL_CHUNK, min(chunk, len(prompts[batch[0]])) // 2)
                    queue.insert(0, batch)
                else:
                    raise LlqaError(
                        f"out of memory generating from one {len(prompts[batch[0]])}-token prompt, even alone "
                        f"and prefilled {MIN_PREFILL_CHUNK} tokens at a time",
                        "use shorter --lengths / a smaller --ctx, a smaller --dtype or a larger GPU; finished "
                        "cells are kept and a rerun resumes",
                    ) from None
                continue
            bar.update(len(batch))
            if on_batch:
                on_batch({**shape, "prefill_chunk": chunk, **timing})
            yield results
    finally:
        bar.close()
