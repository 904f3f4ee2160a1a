"""Sliding-window perplexity: the engine (batched windows, LM head on scored positions only) and the task.

What is scored (also written into every result file as `semantics`):
- Each document is tokenized without special tokens; with BOS on (`--bos always`, or `auto` when the
  tokenizer adds one by default) one BOS token is put before the document. That stream, cut to its first
  `max_tokens` tokens, is what windows slide over; `--concat` joins the documents' streams into one.
  Windows after the first start mid-stream and get no extra BOS: the model sees exactly the stream's tokens.
- Windows come from `evals.windows` (`sliding`, `all-tokens` or `disjoint`); token t of a window is
  scored as -log p(x_t | x_start..x_{t-1}), with log-softmax in fp32 over the full vocabulary.
- Per length: token-weighted perplexity exp(sum NLL / scored tokens) is the headline; the
  window-weighted perplexity exp(mean over windows of each window's mean NLL) is what YaRN's script and,
  with `all-tokens`, LongLoRA's eval.py report; bits per byte = sum NLL / ln 2 / UTF-8 bytes of the
  scored tokens' text (from the tokenizer's character offsets; a scored occurrence counts its bytes each time).
- A length is measured (`reached`) only when at least one document has a window of exactly L tokens
  (`evals.windows.fills`); otherwise it gets no cells and its row says `reached: false` with no numbers, and
  a warning. In a reached length, documents too short for a full window still count (sliding, disjoint: one
  shorter window; all-tokens: none, as LongLoRA); `full_documents` says how many filled one.
- Every document's text is fingerprinted (sha256 of the text as tokenized, in each cell and in result.json):
  resuming into an --out whose cells were scored on other text is refused like a changed configuration.
- One model is loaded at context `ctx` (default: the longest length, or an llqa run's trained context
  when that is longer), its RoPE extended by `--rope` (Position Interpolation unless the model carries
  another method), and every length is scored with that same RoPE. With `pi=False` (`--no-pi`) the model
  keeps its own RoPE (its native context, or the context an llqa run was trained at) and windows may be longer than that
  context: an extrapolation measurement (result.json: `config.pi` false — absent means PI on —,
  `model.rope_factor` unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.texts import Document
from evals.windows import SCORING, Window, fills, windows
from llqa.compile import compile_modules, fallback_reason, uncompile_modules
from llqa.engine import EngineOptions, check_compile_mode, check_sdpa_backend
from llqa.errors import LlqaError
from llqa.io import TEXT_READING
from llqa.models import MAX_CTX, unwrapped
from llqa.ranks import RankedStore, all_cells
from llqa.results import changed_run_error

if TYPE_CHECKING:
    import torch

TASK = "perplexity"
BOS_POLICIES = ("auto", "always", "never")
LN2 = math.log(2.0)

SEMANTICS = (
    "Each document is tokenized without special tokens; with BOS on, one BOS token precedes it (never "
    "inserted mid-document; windows after the first start mid-stream without BOS). --max-tokens keeps the "
    "first N tokens of that stream; --concat joins all streams into one. Token t of a window [s, e) is "
    "scored as -log p(x_t | x_s..x_{t-1}) (fp32 log-softmax). scoring=sliding (Press et al./PI): windows "
    "start every `stride` tokens and score only tokens no earlier window scored, so every token after the "
    "stream's first is scored exactly once, with >= length-stride tokens of context outside the first "
    "window. scoring=all-tokens: exactly LongLoRA eval.py's windows (starts range(0, n-L, stride) less the "
    "last; each window scores all its tokens after the first; a stream of at most L+stride tokens gets none). "
    "scoring=disjoint: exactly lm-evaluation-harness loglikelihood_rolling at max_length L-1 (every token "
    "scored once, context restarting every L-1 tokens, the last window filled back to L tokens), the stream's "
    "first token standing for the harness's prefix token: equal to the harness with a BOS (the harness "
    "tokenizing without special tokens); without a BOS the harness also scores the first token. "
    "ppl = exp(sum NLL / scored tokens) (token-weighted, the headline); window_ppl = exp(mean over windows of "
    "the window's mean NLL) (YaRN; with all-tokens LongLoRA eval.py's val_perplexity at --batch_size 1, "
    "which it prints as 2.71828**loss); bpb = sum NLL / ln2 / UTF-8 bytes of the scored tokens' text. A length "
    "no document fills with one window of exactly L tokens is not measured (reached=false, no numbers). All "
    "lengths share one model with Position Interpolation at ctx; with pi=false (--no-pi) the model keeps its "
    "own RoPE scaling and lengths beyond its context measure extrapolation. Text files are read as UTF-8 with "
    "universal newlines (CRLF and CR as LF); each document's text sha256 is recorded per cell."
)


@dataclass
class PerplexityConfig:
    """Everything that determines the numbers; written to run.json and result.json."""

    lengths: list[int]  # window lengths L, in tokens
    stride: int = 256  # S: distance between window starts (sliding, all-tokens); ignored by disjoint
    scoring: str = "sliding"  # sliding | all-tokens | disjoint (see evals.windows)
    bos: str = "auto"  # auto (what the tokenizer does by default) | always | never
    concat: bool = False  # join all documents into one stream (LongLoRA) instead of windows per document
    max_tokens: int | None = None  # keep the first N tokens of each document's stream
    ctx: int | None = None  # Position Interpolation target; None: max(lengths)
    pi: bool = True  # False: no RoPE rescaling for the eval lengths (windows may exceed the model's context)

    def __post_init__(self):
        if not self.lengths:
            raise LlqaError("no window length given", "pass --lengths 2048,4096 or --ctx 4096")
        if self.scoring not in SCORING:
            raise LlqaError(f"--scoring {self.scoring} is unknown", f"use one of: {', '.join(SCORING)}")
        if self.bos not in BOS_POLICIES:
            raise LlqaError(f"--bos {self.bos} is unknown", f"use one of: {', '.join(BOS_POLICIES)}")
        if self.stride < 1:
            raise LlqaError(f"--stride must be at least 1, got {self.stride}", "e.g. --stride 256")
        for length in self.lengths:
            if length < 2:
                raise LlqaError(f"window length {length} is too short", "use at least 2 tokens per window")
            if length > MAX_CTX:
                raise LlqaError(
                    f"window length {length:,} is longer than the {MAX_CTX:,} tokens any context can hold",
                    "use --lengths of at most 16777216 (longer positions are not exact in the fp32 RoPE tables)",
                )
            if self.scoring == "sliding" and length <= self.stride:
                raise LlqaError(
                    f"window length {length} is not longer than the stride {self.stride}: tokens "
                    "would be skipped or scored without context",
                    f"use --stride {length - 1} or less",
                )
            if self.scoring == "all-tokens" and length < self.stride:
                raise LlqaError(
                    f"window length {length} is smaller than the stride {self.stride}: tokens "
                    "between windows would never be scored",
                    f"use --stride {length} or less",
                )
        if self.max_tokens is not None and self.max_tokens < 2:
            raise LlqaError(f"--max-tokens must be at least 2, got {self.max_tokens}", "e.g. --max-tokens 32768")
        if not self.pi and self.ctx is not None:
            raise LlqaError(
                "--no-pi and --ctx contradict each other: --ctx sets Position Interpolation",
                "drop --ctx to score at the model's own RoPE, or drop --no-pi",
            )
        if self.ctx is not None and self.ctx < max(self.lengths):
            raise LlqaError(
                f"--ctx {self.ctx} is shorter than the longest window {max(self.lengths)}",
                f"use --ctx {max(self.lengths)} or more",
            )
        self.lengths = sorted(set(self.lengths))

    @property
    def model_ctx(self) -> int | None:
        """The `ctx` to load the model at: None (the model as it is) without PI."""
        return (self.ctx or max(self.lengths)) if self.pi else None

    def windows(self, n_tokens: int, length: int) -> list[Window]:
        return windows(n_tokens, length, self.stride, self.scoring)


# --------------------------------------------------------------------------- tokenization


@dataclass
class Stream:
    """A document as the model reads it: token ids and, per token, where its text starts in UTF-8 bytes."""

    id: str
    ids: np.ndarray  # (n,) int64 token ids
    byte_start: np.ndarray  # (n + 1,) int64: UTF-8 offset of token t's text; the extra last entry: total bytes
    meta: dict[str, Any] = field(default_factory=dict)

    def scored_bytes(self, first: int, end: int) -> int:
        return int(self.byte_start[end] - self.byte_start[first])


def uses_bos(tokenizer, policy: str) -> bool:
    """Whether a BOS token goes before each document under `policy`."""
    if policy == "never":
        return False
    if tokenizer.bos_token_id is None:
        if policy == "always":
            raise LlqaError("--bos always: this tokenizer has no BOS token", "use --bos never or --bos auto")
        return False
    if policy == "always":
        return True
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def tokenize(tokenizer, doc: Document, bos: bool, max_tokens: int | None = None) -> Stream:
    """The document's stream: [BOS] + its tokens, cut to `max_tokens`, with each token's UTF-8 byte offset."""
    if not getattr(tokenizer, "is_fast", False):
        raise LlqaError(
            "this model's tokenizer has no fast (Rust) version, needed for byte offsets",
            "use a model with a tokenizer.json",
        )
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    char_start = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64).reshape(-1)
    # byte offset of every char offset (tokens inside one multi-byte character share its offset, so
    # byte ranges are exact at every token that starts a character)
    char_bytes = np.frombuffer(doc.text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    utf8_len = 1 + (char_bytes >= 0x80) + (char_bytes >= 0x800) + (char_bytes >= 0x10000)
    prefix = np.concatenate([[0], np.cumsum(utf8_len, dtype=np.int64)])
    byte_start = prefix[np.minimum(char_start, len(char_bytes))]
    if bos:
        ids = np.concatenate([[tokenizer.bos_token_id], ids]).astype(np.int64)
        byte_start = np.concatenate([[0], byte_start])
    byte_start = np.concatenate([byte_start, [prefix[-1]]]).astype(np.int64)
    if max_tokens is not None and len(ids) > max_tokens:
        ids, byte_start = ids[:max_tokens], byte_start[: max_tokens + 1]
    return Stream(doc.id, ids, byte_start, dict(doc.meta))


def concat_streams(streams: Sequence[Stream]) -> Stream:
    """One stream of all documents in order (LongLoRA's evaluation over the concatenated test set)."""
    offsets = np.cumsum([0] + [int(s.byte_start[-1]) for s in streams])
    ids = np.concatenate([s.ids for s in streams])
    byte_start = np.concatenate(
        [s.byte_start[:-1] + o for s, o in zip(streams, offsets, strict=False)] + [offsets[-1:]]
    )
    return Stream("concat", ids, byte_start.astype(np.int64), {"documents": [s.id for s in streams]})


# --------------------------------------------------------------------------- batching (pure)


@dataclass(frozen=True)
class Job:
    cell: int  # index of the (document, length) cell this window belongs to
    window: Window


def plan_batches(jobs: Iterable[Job], batch_tokens: int) -> list[list[Job]]:
    """Group windows of equal length (no padding, so SDPA runs its causal kernel without a mask), longest
    first, as many per batch as fit in `batch_tokens` (at least one)."""
    by_length: dict[int, list[Job]] = {}
    for job in jobs:
        by_length.setdefault(job.window.length, []).append(job)
    batches = []
    for length in sorted(by_length, reverse=True):
        group = by_length[length]
        per = max(1, batch_tokens // length)
        batches += [group[i : i + per] for i in range(0, len(group), per)]
    return batches


# --------------------------------------------------------------------------- the scorer


class WindowScorer:
    """NLL sums of windows: the decoder body on the whole batch, the LM head only on scored positions.

    Never materialises [L x vocab] logits: hidden states at scored positions go through the LM head
    in fp32, in row chunks, and the NLL is logsumexp(logits) - logit(target).
    """

    def __init__(self, model, logits_budget_bytes: int = 1 << 29, sdpa_backend: str = "auto"):
        import torch

        self.compile_mode: str = "off"  # see `compile`
        self._layers = None

        base = unwrapped(model)  # PEFT wrapper
        self.body = base.get_decoder()
        self.head = base.get_output_embeddings()
        if self.head is None:
            raise LlqaError("this model has no language-model head", "pass a causal language model")
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self.device = next(base.parameters()).device
        self._w32 = self._b32 = self._w16 = None
        if isinstance(self.head, torch.nn.Linear):
            self._w32 = self.head.weight.detach().float()
            self._b32 = None if self.head.bias is None else self.head.bias.detach().float()
            if self.head.weight.dtype in (torch.bfloat16, torch.float16) and self.head.weight.device.type == "cuda":
                self._w16 = self.head.weight.detach()
        vocab = self._w32.shape[0] if self._w32 is not None else base.config.get_text_config().vocab_size
        self.chunk_rows = max(1, logits_budget_bytes // (4 * vocab))
        self.sdpa_backend = effective_sdpa_backend(sdpa_backend, self.device)
        self._auto_cudnn = sdpa_backend == "auto" and self.sdpa_backend == "cudnn"
        self.config = base.config
        text = base.config.get_text_config()
        gqa = (getattr(text, "num_key_value_heads", None) or text.num_attention_heads) < text.num_attention_heads
        # cuDNN attention needs dense K/V heads; swap this model instance's attention while scoring
        self.attn_impl = None
        if self.sdpa_backend == "cudnn" and gqa and getattr(base.config, "_attn_implementation", None) == "sdpa":
            register_dense_kv_attention()
            self.attn_impl = DENSE_KV_ATTENTION

    def compile(self, mode: str = "default", backend: str = "inductor", shapes: int = 1) -> None:
        """torch.compile each decoder layer in place (regional compilation: the layers share one compiled
        graph per input shape), with static shapes. The mask, RoPE tables and LM head stay eager: under
        compile, transformers (before torch 2.14) would build a dense [B, 1, T, T] mask instead of letting
        SDPA run its causal kernel. `shapes`: the distinct batch shapes that will be compiled (the caller
        runs every other shape eagerly, see `score`); the recompile limits are raised to fit them.
        `mode` is inductor's (default, max-autotune-no-cudagraphs, reduce-overhead = CUDA graphs)."""
        import torch

        check_compile_mode(mode)
        if mode in ("off", "auto"):
            raise LlqaError(
                f"WindowScorer.compile needs a resolved mode, got {mode!r}", "call resolve_compile_mode first"
            )
        layers = getattr(self.body, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            raise LlqaError("--compile: this model's decoder has no list of layers to compile", "run without --compile")
        compile_modules(layers, mode, backend, dynamic=False, entries_per_module=shapes)
        self._layers, self.compile_mode = layers, mode

    def uncompile(self) -> None:
        """Undo `compile`: the model's layers run eagerly again (the caller's model is left as it came)."""
        uncompile_modules(self._layers or ())
        self._layers, self.compile_mode = None, "off"

    @contextlib.contextmanager
    def _attention(self):
        """This model's attention implementation swapped to `self.attn_impl` for one forward, then restored."""
        if self.attn_impl is None:
            yield
            return
        saved = self.config._attn_implementation
        self.config._attn_implementation = self.attn_impl
        try:
            yield
        finally:
            self.config._attn_implementation = saved

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits of hidden states h (m, H). A 16-bit head on CUDA multiplies in 16 bits with fp32
        output: bf16/fp16 products are exact in fp32 and cuBLAS accumulates in fp32, so this equals the
        fp32 GEMM of the upcast operands (up to summation order) on tensor cores, not fp32 SIMT units."""
        import torch
        import torch.nn.functional as F

        if self._w16 is not None and h.dtype == self._w16.dtype:
            try:
                logits = torch.mm(h, self._w16.t(), out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # a torch without mm(out_dtype=) for this device: fp32 GEMM
                self._w16 = None
                return self._logits(h)
            if self._b32 is not None:
                logits += self._b32
        elif self._w32 is not None:
            logits = F.linear(h.float(), self._w32, self._b32)
        else:
            logits = self.head(h).float()
        if self.softcap:
            logits = (logits / self.softcap).tanh() * self.softcap
        return logits

    def score(self, input_ids: torch.Tensor, first: Sequence[int], compiled: bool = True) -> torch.Tensor:
        """See `_score`; `compiled=False` runs this batch eagerly even when the layers are compiled (a batch
        shape seen once should not cost a compilation). A cuDNN attention failure under `auto` falls back
        to torch's kernel order, once; a compilation failure falls back to eager layers, once."""
        import warnings

        import torch

        try:
            return self._score(input_ids, first, compiled)
        except torch._dynamo.exc.TorchDynamoException as e:  # raised while compiling, not by kernels
            if self._layers is None:
                raise
            warnings.warn(
                f"torch.compile failed ({str(e).splitlines()[0][:200]}); scoring with eager layers", stacklevel=2
            )
            self.uncompile()
            return self.score(input_ids, first, compiled)
        except RuntimeError as e:
            if not self._auto_cudnn:
                raise
            warnings.warn(
                f"cuDNN attention failed ({str(e).splitlines()[0][:200]}); using torch's SDPA order", stacklevel=2
            )
            self._auto_cudnn, self.sdpa_backend, self.attn_impl = False, "auto", None
            return self.score(input_ids, first, compiled)

    def _score(self, input_ids: torch.Tensor, first: Sequence[int], compiled: bool = True) -> torch.Tensor:
        """input_ids (B, T) on the model's device; row b scores tokens first[b]..T-1 (first[b] >= 1).
        Returns the NLL sum per row, (B,) float64 on the device (not synchronised: the caller reads it
        when convenient, so the host keeps queueing work)."""
        import torch

        stance = contextlib.nullcontext()
        if self._layers is not None and not compiled:
            stance = torch.compiler.set_stance("force_eager")
        elif self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous batch's graph outputs are no longer read
        with torch.inference_mode(), sdpa_preference(self.sdpa_backend), self._attention(), stance:
            hidden = self.body(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
            b_len = hidden.shape[1]
            rows = torch.cat([torch.full((b_len - f,), b, dtype=torch.long) for b, f in enumerate(first)])
            pos = torch.cat([torch.arange(f - 1, b_len - 1) for f in first])  # hidden at t-1 predicts token t
            rows, pos = to_device(rows, self.device), to_device(pos, self.device)
            targets = input_ids[rows, pos + 1]
            picked = hidden[rows, pos]  # (M, H)
            del hidden
            nll = torch.empty(len(targets), dtype=torch.float32, device=self.device)
            for i in range(0, len(targets), self.chunk_rows):
                logits = self._logits(picked[i : i + self.chunk_rows])  # (m, V) fp32
                tgt = targets[i : i + self.chunk_rows, None]
                nll[i : i + self.chunk_rows] = (logits.logsumexp(-1, keepdim=True) - logits.gather(-1, tgt))[:, 0]
            sums = torch.zeros(len(first), dtype=torch.float64, device=self.device)
            sums.index_add_(0, rows, nll.double())
            return sums


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without a host sync: a blocking copy to CUDA would wait for every queued
    kernel (torch synchronises the stream after a pageable copy), starving the GPU between batches; a
    pinned, non-blocking one is queued like a kernel (the pinned buffer is kept until the copy is done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


DENSE_KV_ATTENTION = "llqa_sdpa_dense_kv"


def _dense_kv_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA with key/value heads repeated up to the query heads: torch's cuDNN attention takes no
    `enable_gqa`, so GQA models would otherwise never reach it. query (B, H, T, D), key/value (B, Hkv, T, D)."""
    import torch.nn.functional as F

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # head h reads KV head h // groups, as transformers' repeat_kv
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    causal = (
        attention_mask is None
        and query.shape[2] > 1
        and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal
    )  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


def register_dense_kv_attention() -> None:
    """Register `_dense_kv_sdpa` (and SDPA's mask format) through transformers' documented interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(DENSE_KV_ATTENTION, _dense_kv_sdpa)
    AttentionMaskInterface.register(DENSE_KV_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def effective_sdpa_backend(backend: str, device) -> str:
    """`auto` prefers cuDNN attention on Hopper GPUs (compute capability 9.x), where its causal kernels are
    markedly faster than the FlashAttention-2 kernels torch picks first; elsewhere torch's own order."""
    if backend != "auto" or device.type != "cuda":
        return backend
    import torch

    return "cudnn" if torch.cuda.get_device_capability(device)[0] == 9 else "auto"


def sdpa_preference(backend: str):
    """A context preferring one torch SDPA kernel (others stay allowed as fallbacks); `auto` keeps torch's order."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if backend not in names:
        check_sdpa_backend(backend)
    order = [names[backend]] + [b for k, b in names.items() if k != backend]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6 has no priorities: allow every kernel, in torch's order
        return sdpa_kernel(order)


# --------------------------------------------------------------------------- one run


@dataclass
class Cell:
    """A (document, length) pair: the unit of resume and of data-parallel sharding."""

    doc: int  # index into the run's documents (or 0 for the concatenated stream)
    length: int

    def key(self, doc_id: str) -> str:
        return f"{doc_id}|{self.length}"


@dataclass
class RunOutput:
    result_path: Path | None  # None on ranks other than 0
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # lengths not measured, or measured on few documents


def text_fingerprint(text: str) -> str:
    """sha256 of a document's text exactly as it is tokenized (after universal newlines)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def combined_fingerprint(ids: Sequence[str], fingerprints: Sequence[str]) -> str:
    """One fingerprint of documents in order (the --concat stream, the whole data set)."""
    h = hashlib.sha256()
    for doc_id, fp in zip(ids, fingerprints, strict=True):
        h.update(f"{doc_id}\0{fp}\n".encode("utf-8", "surrogatepass"))
    return "sha256:" + h.hexdigest()


def check_fingerprints(out_dir: Path, done: Iterable[dict], expected: dict[str, str]) -> None:
    """Refuse to reuse finished cells (their records) scored on another text than now (stream id -> text
    fingerprint): resuming would mix numbers of two data sets. Cells logged before llqa fingerprinted texts
    cannot be checked, so they are refused too."""
    mine = [rec for rec in done if rec.get("doc") in expected]
    if any("text_sha256" not in rec for rec in mine):
        why = "its cells were scored by an older llqa that did not record the documents' text"
        raise changed_run_error(out_dir, TASK, why)
    stale = sorted({rec["doc"] for rec in mine if rec["text_sha256"] != expected[rec["doc"]]})
    if stale:
        names = ", ".join("the joined documents" if d == "concat" else d for d in stale[:3])
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise changed_run_error(out_dir, TASK, f"the text of {names}{more} is not the text its cells were scored on")


def stream_fingerprints(documents: Sequence[Document], concat: bool) -> dict[str, str]:
    """Stream id -> fingerprint of its text: each document's, or the one joined stream's (`--concat`)."""
    text_sha = [text_fingerprint(d.text) for d in documents]
    if concat:
        return {"concat": combined_fingerprint([d.id for d in documents], text_sha)}
    return {d.id: fp for d, fp in zip(documents, text_sha, strict=True)}


def check_unchanged(out_dir: str | Path, documents: Sequence[Document], cfg: PerplexityConfig) -> None:
    """`run`'s refusal of changed text, before any weights load: against every log in `out_dir`."""
    check_fingerprints(Path(out_dir), all_cells(out_dir).values(), stream_fingerprints(documents, cfg.concat))


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class Speed(TextColumn):
        def render(self, task):
            from rich.text import Text

            elapsed = task.elapsed  # average since the (re)start: batches are large and few
            speed = task.completed / elapsed if elapsed and task.completed else None
            return Text(f"{speed / 1e3:,.1f}k tok/s" if speed else "… tok/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Speed(""),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def run(
    loaded,
    documents: Sequence[Document],
    cfg: PerplexityConfig,
    out_dir: str | Path,
    *,
    data_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    batch_tokens: int | None = None,
    sdpa_backend: str = "auto",
    show_progress: bool = True,
    poll_s: float = 2.0,
    on_batch: Callable[[int], None] | None = None,
    compile_mode: str = "auto",
    compile_backend: str = "inductor",
) -> RunOutput:
    """Score `documents` at every length of `cfg` and write result files into `out_dir`.

    `batch_tokens`, `sdpa_backend`, `compile_mode`: the engine options (`llqa.engine.EngineOptions`, checked
    before anything is loaded or written). A compile mode other than "off" compiles the decoder layers
    (`WindowScorer.compile`) for the full batches of each length (`batch_tokens // L` windows of L tokens);
    other batches (the last of a chunk, windows of documents shorter than L) run eagerly, so at most
    len(lengths) shapes are ever compiled. The model's layers are left uncompiled on return.

    Under torchrun/accelerate (RANK/WORLD_SIZE set) every rank scores its share of the cells and appends
    them to its own log `out_dir/rank{r}/cells.jsonl`; rank 0 then waits until every expected cell is in
    some rank's log (polling the files: no process group is needed; `llqa.ranks`) and writes the final result.
    """
    engine = EngineOptions(batch_tokens, sdpa_backend, compile_mode)
    if not documents:
        raise LlqaError("no documents to score", "pass --data with text in it")
    ids = [d.id for d in documents]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dupes:
        raise LlqaError(f"document ids are not unique ({', '.join(dupes[:3])})", "pass --id-field with unique values")
    out_dir = Path(out_dir)
    info = loaded.info
    config = {
        **asdict(cfg),
        "model_ctx": info.target_ctx,  # the context the model was loaded at (a run's trained one at least)
        "model": info.spec,
        "dtype": info.dtype,
        "rope_factor": info.rope_factor,
        "data": (data_info or {}).get("source"),
        "documents": len(documents),
    }
    if cfg.pi:  # recorded only when off, so that runs started before --no-pi existed still resume
        del config["pi"]
    config.update(info.resume_key())
    store = RankedStore(out_dir, TASK, config, overwrite=overwrite)
    rank, world = store.rank, store.world

    tokenizer = loaded.tokenizer
    bos = uses_bos(tokenizer, cfg.bos)
    fingerprints = stream_fingerprints(documents, cfg.concat)
    check_fingerprints(out_dir, store.done.values(), fingerprints)
    doc_ids = list(fingerprints)
    doc_sha = list(fingerprints.values())
    cells_of_run = [Cell(d, length) for length in cfg.lengths for d in range(len(doc_ids))]
    batch_tokens = engine.batch_tokens or default_batch_tokens(loaded.model, max(cfg.lengths))

    streams: dict[int, Stream] = {}

    def stream(d: int) -> Stream:
        if d not in streams:
            if cfg.concat:
                streams[d] = concat_streams([tokenize(tokenizer, doc, bos, cfg.max_tokens) for doc in documents])
            else:
                streams[d] = tokenize(tokenizer, documents[d], bos, cfg.max_tokens)
        return streams[d]

    sdpa_backend = engine.sdpa_backend
    compile_mode = engine.compile_for(next(loaded.model.parameters()).device)
    scorer = WindowScorer(loaded.model, sdpa_backend=sdpa_backend)
    counts = {"compiled_batches": 0, "eager_batches": 0}
    started = time.time()
    with contextlib.ExitStack() as stack:
        stack.callback(scorer.uncompile)
        if compile_mode != "off":
            scorer.compile(compile_mode, compile_backend, shapes=len(cfg.lengths))
        progress = stack.enter_context(_progress(show_progress))
        # the lengths some document fills (one window of exactly L tokens): every rank counts every
        # document (token counts of finished cells come from the logs), so all ranks skip the same lengths
        logged = {rec["doc"]: rec["doc_tokens"] for rec in store.done.values() if "doc_tokens" in rec}
        task = progress.add_task("tokenizing", total=len(doc_ids))
        n_tokens = []
        for d in range(len(doc_ids)):
            n_tokens.append(logged.get(doc_ids[d]) or len(stream(d).ids))
            progress.advance(task)
        coverage = {L: sum(fills(n, L, cfg.stride, cfg.scoring) for n in n_tokens) for L in cfg.lengths}
        cells = [c for c in cells_of_run if coverage[c.length]]  # a length no document fills is not scored
        planned = [
            (c, cfg.windows(len(stream(c.doc).ids), c.length))
            for c in store.share(cells)
            if c.key(doc_ids[c.doc]) not in store.done
        ]
        progress.reset(
            task,
            total=sum(w.length for _, ws in planned for w in ws),
            description=f"perplexity{f' rank {rank}' if world > 1 else ''}",
        )
        for chunk in _chunks(planned, 8 * batch_tokens):
            stats = _score_chunk(scorer, chunk, stream, batch_tokens, progress, task, on_batch, counts)
            for (cell, ws), st in zip(chunk, stats, strict=True):
                s = stream(cell.doc)
                rec = {
                    "doc": s.id,
                    "length": cell.length,
                    "doc_tokens": len(s.ids),
                    "text_sha256": doc_sha[cell.doc],
                    "windows": len(ws),
                    **st,
                }
                store.add(cell.key(s.id), rec)
    elapsed = time.time() - started
    if not store.is_main:
        return RunOutput(None, [], {})
    keys = [c.key(doc_ids[c.doc]) for c in cells]
    merged = store.merge(keys, poll_s)
    rows, summary = summarize(cfg, [merged[k] for k in keys], coverage, len(doc_ids))
    warnings = coverage_warnings(cfg, rows, max(n_tokens))
    fallback = fallback_reason() if compile_mode != "off" and counts["compiled_batches"] else None
    if fallback:  # dynamo ran the "compiled" layers eagerly: the numbers hold, the speed is not compile's
        warnings.append(f"--compile {compile_mode}: the layers ran eagerly, torch.compile fell back ({fallback})")
    text_sha = stream_fingerprints(documents, concat=False)
    data = {
        **(data_info or {}),
        "bos": bos,
        "bos_token": tokenizer.bos_token if bos else None,
        "documents": doc_ids if not cfg.concat else ids,
        "text_sha256": text_sha,
        "fingerprint": combined_fingerprint(ids, list(text_sha.values())),
        "longest_document_tokens": max(n_tokens),
        "world_size": world,
    }
    forward = sum(w.length for _, ws in planned for w in ws)
    speed = {
        "forward_tokens": forward,
        "seconds": round(elapsed, 3),
        "batch_tokens": batch_tokens,
        "sdpa_backend": sdpa_backend,
        "sdpa_effective": scorer.sdpa_backend,
        "compile": compile_mode,
        **counts,
        "tokens_per_s": round(forward / elapsed, 1) if elapsed > 0 else None,
    }
    result = store.main.finalize(
        semantics=SEMANTICS,
        summary=summary,
        rows=rows,
        model=info.to_dict(),
        data=data,
        extra={"warnings": warnings, "this_session": speed},
    )
    return RunOutput(result, rows, summary, warnings)


def default_batch_tokens(model, longest: int) -> int:
    """Tokens per forward: enough windows to fill a GPU, about one window's worth on CPU."""
    device = next(model.parameters()).device
    return max(longest, 65536 if device.type == "cuda" else 8192)


def _chunks(planned, budget: int):
    """Consecutive cells whose windows add up to about `budget` tokens: batched together, then logged."""
    chunk, tokens = [], 0
    for item in planned:
        chunk.append(item)
        tokens += sum(w.length for w in item[1])
        if tokens >= budget:
            yield chunk
            chunk, tokens = [], 0
    if chunk:
        yield chunk


def _score_chunk(
    scorer: WindowScorer, chunk, stream, batch_tokens, progress, task, on_batch, counts: dict[str, int]
) -> list[dict]:
    import torch

    jobs = [Job(i, w) for i, (_, ws) in enumerate(chunk) for w in ws]
    batches = plan_batches(jobs, batch_tokens)
    lengths = {cell.length for cell, _ in chunk}
    sums = []
    for batch in batches:
        length = batch[0].window.length
        rows = torch.from_numpy(
            np.stack([stream(chunk[j.cell][0].doc).ids[j.window.start : j.window.end] for j in batch])
        )
        input_ids = to_device(rows, scorer.device)  # queued behind the previous batch, no host sync
        full = length in lengths and len(batch) == max(1, batch_tokens // length)  # the one static shape per L
        sums.append(scorer.score(input_ids, [j.window.first_scored - j.window.start for j in batch], compiled=full))
        # counted after scoring: a compilation that failed and fell back makes this batch an eager one
        counts["compiled_batches" if full and scorer.compile_mode != "off" else "eager_batches"] += 1
        progress.advance(task, sum(j.window.length for j in batch))
        if on_batch is not None:
            on_batch(len(batch))
    nlls = torch.cat(sums).tolist() if sums else []  # one device sync per chunk
    acc = [{"scored_tokens": 0, "nll_sum": 0.0, "window_mean_nll_sum": 0.0, "scored_bytes": 0} for _ in chunk]
    for j, nll in zip((j for b in batches for j in b), nlls, strict=True):
        a, w = acc[j.cell], j.window
        a["scored_tokens"] += w.n_scored
        a["nll_sum"] += nll
        a["window_mean_nll_sum"] += nll / w.n_scored
        a["scored_bytes"] += stream(chunk[j.cell][0].doc).scored_bytes(w.first_scored, w.end)
    return acc


# --------------------------------------------------------------------------- aggregation (pure)


def summarize(
    cfg: PerplexityConfig, cells: Sequence[dict], coverage: dict[int, int] | None = None, documents: int | None = None
) -> tuple[list[dict], dict]:
    """Per-length rows: token-weighted ppl (headline), window-weighted ppl, bits per byte, counts.

    `coverage` maps each length to the number of documents that fill it (`evals.windows.fills`: one window
    of exactly L tokens); a length no document fills is `reached: false` with no numbers (nothing was
    measured at that length). Documents that do not fill a reached length are still scored there (sliding,
    disjoint: one shorter window) and counted in `documents` but not in `full_documents`."""
    rows = []
    for length in cfg.lengths:
        mine = [c for c in cells if c["length"] == length]
        full = coverage[length] if coverage is not None else len(mine)
        tokens = sum(c["scored_tokens"] for c in mine)
        n_windows = sum(c["windows"] for c in mine)
        nll = sum(c["nll_sum"] for c in mine)
        nbytes = sum(c["scored_bytes"] for c in mine)
        reached = full > 0 and tokens > 0
        rows.append(
            {
                "length": length,
                "scoring": cfg.scoring,
                "stride": cfg.stride if cfg.scoring != "disjoint" else length - 1,
                "reached": reached,
                "documents": documents if documents is not None else len(mine),
                "full_documents": full,
                "windows": n_windows,
                "scored_tokens": tokens,
                "scored_bytes": nbytes,
                "nll_per_token": nll / tokens if reached else None,
                "ppl": math.exp(nll / tokens) if reached else None,
                "window_ppl": math.exp(sum(c["window_mean_nll_sum"] for c in mine) / n_windows) if reached else None,
                "bits_per_byte": nll / LN2 / nbytes if reached and nbytes else None,
            }
        )
    keep = ("ppl", "window_ppl", "bits_per_byte", "scored_tokens", "windows", "documents", "full_documents", "reached")
    summary = {str(r["length"]): {k: r[k] for k in keep} for r in rows}
    return rows, summary


def coverage_warnings(cfg: PerplexityConfig, rows: Sequence[dict], longest: int) -> list[str]:
    """One line per length that no document fills (not measured) or that only some documents fill."""
    need = "more than L + stride tokens" if cfg.scoring == "all-tokens" else "at least L tokens"
    out = []
    for r in rows:
        length, full, docs = r["length"], r["full_documents"], r["documents"]
        if not r["reached"]:
            out.append(
                f"L={length}: not measured — no document has a full window of {length:,} tokens "
                f"({cfg.scoring} needs {need}; the longest has {longest:,})"
            )
        elif full < docs:
            fate = "get no window" if cfg.scoring == "all-tokens" else "are scored with their whole text as context"
            out.append(f"L={length}: {docs - full} of {docs} documents are shorter than one full window; they {fate}")
    return out


# --------------------------------------------------------------------------- data sources


def local_documents(
    path: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    pattern: str = "*.txt",
    max_docs: int | None = None,
    spec=None,
) -> tuple[list[Document], dict]:
    """`--data PATH`: the first `max_docs` documents of a text file, folder or jsonl/parquet table. With
    `spec`, a folder holding that hub dataset's download gives its split's files only."""
    from evals.texts import layout_files, load_texts

    check_max_docs(max_docs)
    files = layout_files(spec, Path(path).expanduser()) if spec is not None and Path(path).is_dir() else None
    if files is not None:
        folder = Path(path).expanduser()
        docs = []
        for f in files:
            for d in load_texts(f, text_field=text_field, id_field=id_field):
                d.id = d.id if id_field else f"{f.relative_to(folder).as_posix()}:{d.id.rsplit(':', 1)[1]}"
                docs.append(d)
    else:
        docs = load_texts(path, text_field=text_field, id_field=id_field, pattern=pattern)
    total = len(docs)
    docs = docs[:max_docs] if max_docs else docs
    info = {"source": str(Path(path).expanduser().resolve()), "documents_available": total}
    return docs, {**info, "text_files": TEXT_READING}


def check_max_docs(max_docs: int | None) -> None:
    if max_docs is not None and max_docs < 1:
        raise LlqaError(f"--max-docs must be at least 1, got {max_docs}", "leave it out to score every document")


def pg19_documents(
    data: str | Path | None = None,
    revision: str | None = None,
    max_docs: int | None = None,
    text_field: str | None = None,
) -> tuple[list[Document], dict]:
    """PG19's test split (100 books) from the hub, or a local copy in its schema (`--data`)."""
    from evals.texts import PG19, hub_documents, load_hub_dataset

    check_max_docs(max_docs)
    if data is not None:
        docs, info = local_documents(
            data,
            text_field or PG19.text_field,
            pattern="*.txt,*.jsonl,*.jsonl.gz,*.parquet",
            max_docs=max_docs,
            spec=PG19,
        )
        return docs, {**info, "dataset": "pg19 (local copy)"}
    ds, info = load_hub_dataset(PG19, revision)
    n = min(len(ds), max_docs) if max_docs else len(ds)
    docs = list(hub_documents(ds, PG19, range(n), text_field))
    return docs, {"source": f"hf://{PG19.repo}", "dataset": PG19.about, **info}


def sample_long_documents(
    n_rows: int,
    get: Callable[[int], Document],
    n_tokens: Callable[[Document], int],
    count: int,
    min_tokens: int,
    seed: int,
) -> tuple[list[Document], dict]:
    """Position Interpolation's proof-pile protocol: a uniform sample (seeded) of `count` documents among
    those with at least `min_tokens` tokens — rows are visited in a seeded random order and kept while
    long enough, so only as many documents are tokenized as the sample needs."""
    import random

    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    picked, checked = [], 0
    for i in order:
        if len(picked) == count:
            break
        doc = get(i)
        checked += 1
        # each token covers at least one byte of text (+1 for a BOS): a cheap filter before tokenizing
        if len(doc.text.encode("utf-8", "surrogatepass")) + 1 >= min_tokens and n_tokens(doc) >= min_tokens:
            picked.append(doc)
    info = {
        "protocol": f"uniform sample (seed {seed}) of {count} documents with >= {min_tokens} tokens, "
        f"each cut to its first {min_tokens} tokens (Position Interpolation, Chen et al. 2023)",
        "seed": seed,
        "requested": count,
        "selected": len(picked),
        "rows_checked": checked,
        "rows": n_rows,
        "min_tokens": min_tokens,
        "document_ids": [d.id for d in picked],
    }
    return picked, info


def proof_pile_documents(
    tokenizer,
    bos: bool,
    data: str | Path | None = None,
    revision: str | None = None,
    count: int = 128,
    min_tokens: int = 32768,
    seed: int = 0,
    text_field: str | None = None,
) -> tuple[list[Document], dict]:
    """proof-pile's test split (hub, or a local jsonl/parquet copy with `text` and `meta`), sampled as
    `sample_long_documents` says."""
    from evals.texts import PROOF_PILE, hub_documents, load_hub_dataset

    def n_tokens(doc: Document) -> int:
        return len(tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]) + int(bos)

    if data is not None:
        rows, info = local_documents(
            data, text_field or PROOF_PILE.text_field, pattern="*.jsonl,*.jsonl.gz,*.json,*.parquet", spec=PROOF_PILE
        )
        info["dataset"] = "proof-pile (local copy)"
        picked, sample = sample_long_documents(len(rows), rows.__getitem__, n_tokens, count, min_tokens, seed)
    else:
        ds, info = load_hub_dataset(PROOF_PILE, revision)
        info = {"source": f"hf://{PROOF_PILE.repo}", "dataset": PROOF_PILE.about, **info}

        def get(i: int) -> Document:
            return next(hub_documents(ds, PROOF_PILE, [i], text_field))

        picked, sample = sample_long_documents(len(ds), get, n_tokens, count, min_tokens, seed)
    if not picked:
        raise LlqaError(
            f"no document in {info['source']} has {min_tokens} tokens or more", "pass --min-tokens lower or other data"
        )
    return picked, {**info, "sample": sample}
