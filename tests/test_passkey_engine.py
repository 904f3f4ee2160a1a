"""The shared retrieval engine (evals/generation.py): batching plan, over-long prompts, integer
parsing, chat-template framing, and batched KV-cache greedy decoding against a plain reference."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.generation import (
    first_integer,
    fit_to_context,
    generate_greedy,
    integer_complete,
    last_integer,
    middle_truncate,
    plan_batches,
    prompt_frame,
    use_chat_template,
)
from llqa.errors import LlqaError
from llqa.models import unwrapped

# --------------------------------------------------------------------------- pure functions


@given(st.lists(st.integers(1, 500), max_size=60), st.integers(1, 2000), st.one_of(st.none(), st.integers(1, 8)))
def test_plan_batches_covers_every_prompt_once_within_budget(lengths, budget, max_batch):
    batches = plan_batches(lengths, budget, max_batch)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= budget  # an over-budget prompt runs alone
        assert max_batch is None or len(b) <= max_batch


def test_plan_batches_groups_equal_lengths_without_padding():
    batches = plan_batches([100, 300, 100, 300, 100], 600)
    assert batches == [[1, 3], [0, 2, 4]]


def test_plan_batches_does_not_pad_a_long_prompt_batch_with_short_prompts():
    """RULER's shape: one task's 32k and 16k prompts (prompt = length - its answer budget) in one queue,
    under a memory cap of 3 rows. The 32k batch's last row is not filled up with 16k prompts (half its
    positions padding, and a padding mask that rules out the flash kernels)."""
    lengths = [32718] * 4 + [16334] * 4
    batches = plan_batches(lengths, 10**9, max_rows=lambda n, padded: 3)
    assert batches == [[0, 1, 2], [3], [4, 5, 6], [7]]
    within = plan_batches([1000, 990, 900], 10**9)  # inside the band (7/8 of the longest): one padded batch
    assert within == [[0, 1, 2]]


def test_plan_batches_asks_the_memory_rule_whether_the_batch_is_padded():
    """An equal-length batch needs no mask, so the memory rule allows it more rows; the first shorter
    prompt makes the batch padded, and it must then fit the padded rule's rows."""
    asked = []

    def max_rows(longest, padded):
        asked.append(padded)
        return 2 if padded else 3

    batches = plan_batches([100, 100, 100, 95, 95], 10**9, max_rows=max_rows)
    assert batches == [[0, 1, 2], [3, 4]]  # 95 would make [100 x 3] padded, over its 2 rows
    assert asked[:3] == [False, False, False] and True in asked


def test_an_unpadded_whole_prompt_row_has_no_mask():
    """transformers passes no mask for equal-length rows prefilled in one forward (SDPA's causal
    kernel); a padded or chunked row carries a boolean mask and SDPA's additive copy of it (1 + dtype
    bytes per query-key pair)."""
    from evals.generation import prompt_cost

    cost = prompt_cost(_llama2_7b_config(), dtype_bytes=2)
    n = 8192
    assert cost.mask_bytes_per_pair == 3
    assert cost.row_bytes(n, n, padded=True) - cost.row_bytes(n, n, padded=False) == 3 * n * n
    chunked = (
        cost.kv_bytes_per_token * n
        + cost.activation_bytes_per_token * 4096
        + 3 * 4096 * n  # a chunk after the first attends to the cache through a mask, padded or not
        + cost.per_cached_token_transient * n
        + cost.logits_bytes
    )
    assert cost.row_bytes(n, 4096, padded=False) == cost.row_bytes(n, 4096, padded=True) == chunked


@given(st.lists(st.integers(0, 9), max_size=50), st.integers(1, 40))
def test_middle_truncate_keeps_both_ends(ids, keep):
    out = middle_truncate(ids, keep)
    assert len(out) == min(len(ids), keep)
    if len(ids) > keep:
        front = -(-keep // 2)
        assert out[:front] == ids[:front]
        assert out[front:] == ids[len(ids) - (keep - front) :]


def test_fit_to_context_policies():
    ids = list(range(10))
    assert fit_to_context(ids, 10, "skip") == (ids, False)  # exactly ctx fits
    assert fit_to_context(ids, 8, "skip") == (None, False)
    assert fit_to_context(ids, 8, "middle") == ([0, 1, 2, 3, 6, 7, 8, 9], True)
    assert fit_to_context(ids, 8, "keep") == (ids, False)
    with pytest.raises(LlqaError):
        fit_to_context(ids, 8, "truncate")


@pytest.mark.parametrize(
    "text, first, last",
    [
        (" 12345.", 12345, 12345),
        ("The pass key is 12345. Remember 678", 12345, 678),
        ("no digits here", None, None),
        ("line x: <2416>", 2416, 2416),
        ("2,416", 2, 416),  # digits runs, as LongChat parses: a thousands separator splits the number
        ("-7 and 8", 7, 8),
        ("", None, None),
    ],
)
def test_integer_rules(text, first, last):
    assert first_integer(text) == first and last_integer(text) == last


def test_integer_complete_needs_a_following_non_digit():
    assert not integer_complete(" 123")
    assert integer_complete(" 123.")
    assert not integer_complete("The pass key is")


# --------------------------------------------------------------------------- chat template framing


def test_frame_matches_the_tokenizers_own_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    msg = "Line one.\nWhat is the pass key? The pass key is"
    assert use_chat_template(tok, "auto") and not use_chat_template(tok, "none")
    framed = prompt_frame(tok, True).encode(tok, msg)
    ref = tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=True, add_generation_prompt=True)
    ref = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert framed == list(ref)
    assert prompt_frame(tok, False).encode(tok, msg) == tok(msg)["input_ids"]
    with pytest.raises(LlqaError):
        use_chat_template(tok, "always")


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny():
    from conftest import build_tiny_llama
    from llqa.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m"))
    return build_tiny_llama(len(tok), seed=3), tok


def _reference_greedy(model, prompt, steps):
    """Greedy decoding the slow way: a full forward over the whole sequence per token, no cache, no padding."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def test_batched_cached_greedy_equals_reference(tiny):
    import torch

    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (5, 17, 17, 40, 9)]
    steps = 6
    model.generation_config.eos_token_id = None  # no row stops early: the reference has no notion of EOS
    batched = {}
    for batch in generate_greedy(model, _IdTokenizer(tok), prompts, steps, batch_tokens=10_000, progress=False):
        for r in batch:
            batched[r.index] = r.text
    single = {}
    for batch in generate_greedy(model, _IdTokenizer(tok), prompts, steps, batch_tokens=1, progress=False):
        for r in batch:
            single[r.index] = r.text
    for i, p in enumerate(prompts):
        ref = _reference_greedy(model, p, steps)
        assert batched[i] == single[i] == " ".join(map(str, ref)), f"prompt {i}"


class _IdTokenizer:
    """Wraps a tokenizer so that decode shows raw ids: the comparison is on tokens, not on text."""

    def __init__(self, tok=None):
        self.pad_token_id = 0
        self.eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_stop_when_ends_rows_early(tiny):
    model, tok = tiny
    prompts = [[100, 200, 300], [400, 500, 600, 700]]
    out = [
        r
        for b in generate_greedy(
            model, _IdTokenizer(tok), prompts, 8, 10_000, stop_when=lambda s: bool(s), progress=False
        )
        for r in b
    ]
    assert [r.new_tokens for r in sorted(out, key=lambda r: r.index)] == [1, 1]


def test_max_new_tokens_must_be_positive(tiny):
    model, tok = tiny
    with pytest.raises(LlqaError):
        next(generate_greedy(model, tok, [[1, 2]], 0, 100, progress=False))


# --------------------------------------------------------------------------- memory: sizing, chunks, OOM


def _llama2_7b_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    )


def test_kv_cache_of_a_32k_llama2_7b_prompt_is_16_gib_in_bf16():
    from evals.generation import GIB, prompt_cost

    cost = prompt_cost(_llama2_7b_config(), dtype_bytes=2)
    assert cost.kv_bytes_per_token == 32 * 2 * 32 * 128 * 2 == 512 * 1024
    assert cost.kv_bytes_per_token * 32768 == 16 * GIB
    assert cost.per_cached_token_transient == 2 * 32 * 128 * 2  # one layer's K and V; no GQA repeat


def test_rows_that_fit_the_7b_on_an_h200():
    """Llama-2-7B in bf16 on a 141 GiB H200 (13 GiB of weights): the old 262,144-token budget put 8 prompts
    of 32k in a batch, 128 GiB of KV cache alone; the memory rule plans fewer rows, and fewer again at 64k."""
    from evals.generation import GIB, plan_batches, prompt_cost, rows_that_fit

    cost = prompt_cost(_llama2_7b_config(), dtype_bytes=2)
    free = 141 * GIB - 13 * GIB
    at_32k, at_64k = rows_that_fit(cost, 32768 + 12, free), rows_that_fit(cost, 65536 + 12, free)
    assert 8 * 32768 <= 262_144 and 8 * cost.kv_bytes_per_token * 32768 >= 128 * GIB
    assert 4 <= at_32k <= 7 and 2 <= at_64k <= 3 and at_64k < at_32k
    assert at_32k * cost.row_bytes(32780, 4096) <= 0.9 * free  # what is planned fits
    batches = plan_batches([32768] * 8, 262_144, max_rows=lambda n, padded: rows_that_fit(cost, n + 12, free))
    assert [len(b) for b in batches] == [at_32k, 8 - at_32k]
    assert rows_that_fit(cost, 10**7, free) == 1  # never zero: a prompt too long is tried alone, then reported


def test_whole_prompt_prefill_when_it_fits():
    """A prompt whose one-forward prefill fits is not chunked (chunks after the first attend to the cache
    through a mask, which rules out the flash kernels); one that does not fit falls back to 4096-token
    chunks. The 7B on an H200 prefills 32k and 64k prompts whole, two rows at 64k."""
    from evals.generation import DEFAULT_PREFILL_CHUNK, GIB, prefill_chunk_for, prompt_cost, rows_that_fit

    cost = prompt_cost(_llama2_7b_config(), dtype_bytes=2)
    free = 141 * GIB - 13 * GIB
    for n in (32768 + 12, 65536 + 12):
        assert prefill_chunk_for(cost, n, free) == n
    assert rows_that_fit(cost, 65548, free, chunk=65548) >= 2
    assert prefill_chunk_for(cost, 65548, 40 * GIB) == DEFAULT_PREFILL_CHUNK  # 32 GiB of cache + 8 GiB + mask
    assert prefill_chunk_for(cost, 10**7, free) == DEFAULT_PREFILL_CHUNK


def test_prefill_is_chunked_only_when_memory_says_so(tiny, monkeypatch):
    import torch

    import evals.generation as generation

    model, tok = tiny
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (70, 70)]
    model.generation_config.eos_token_id = None
    chunked, real = [], generation._prefill
    monkeypatch.setattr(generation, "_prefill", lambda *a: chunked.append(a[-1]) or real(*a))
    whole = _collect(model, tok, prompts, 4, free_bytes=10**12)
    assert chunked and min(chunked) >= 69  # the prompt but its last position in one forward
    chunked.clear()
    cost = generation.prompt_cost(model.config, 4)
    tight = cost.row_bytes(74, 74, padded=False) - 1  # one whole-prompt row does not fit; chunked rows do
    monkeypatch.setattr(generation, "DEFAULT_PREFILL_CHUNK", 16)
    assert _collect(model, tok, prompts, 4, free_bytes=int(tight / generation.HEADROOM)) == whole
    assert chunked and set(chunked) == {16}


def test_gqa_costs_less_cache_but_counts_the_repeated_kv():
    from transformers import LlamaConfig

    from evals.generation import prompt_cost

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    cost = prompt_cost(cfg, dtype_bytes=2)
    assert cost.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2
    assert cost.per_cached_token_transient == 2 * 8 * 128 * 2 + 2 * 32 * 128 * 2


def _collect(model, tok, prompts, steps, **kw):
    out = {}
    for batch in generate_greedy(model, _IdTokenizer(tok), prompts, steps, batch_tokens=10_000, progress=False, **kw):
        for r in batch:
            out[r.index] = r.text
    return out


def test_chunked_prefill_equals_one_pass(tiny):
    import torch

    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (70, 33, 70, 9)]
    model.generation_config.eos_token_id = None
    whole = _collect(model, tok, prompts, 5)
    assert _collect(model, tok, prompts, 5, prefill_chunk=16) == whole  # 5 chunks for the 70-token rows
    for i, p in enumerate(prompts):
        assert whole[i] == " ".join(map(str, _reference_greedy(model, p, 5)))


def test_reserved_cache_layer_equals_concatenation_and_writes_in_place():
    """The decoding cache's layer returns exactly what transformers' concatenating layer returns, writes
    the reserved positions in place (no copy of the cache per step), and stays right when a write
    overflows the reserve or the cache is cropped, batch-selected or reset."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from evals.generation import _reserved_layer

    g = torch.Generator().manual_seed(0)

    def states(batch, n):
        return torch.randn(batch, 3, n, 8, generator=g), torch.randn(batch, 3, n, 8, generator=g)

    mine, ref = _reserved_layer()(reserve=4), DynamicLayer()

    def step(k, v):
        got, want = mine.update(k, v), ref.update(k, v)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        assert mine.get_seq_length() == ref.get_seq_length()
        assert mine.get_mask_sizes(1) == ref.get_mask_sizes(1)

    step(*states(2, 5))  # the prefill: 5 positions, room for 4 more
    buffer = mine.keys.data_ptr()
    for _ in range(4):
        step(*states(2, 1))
    assert mine.keys.data_ptr() == buffer  # the decoding steps were written in place
    step(*states(2, 1))  # past the reserve: one reallocation, same values
    assert mine.keys.data_ptr() != buffer
    for layer in (mine, ref):
        layer.crop(-3)
    step(*states(2, 2))
    for layer in (mine, ref):
        layer.batch_select_indices(torch.tensor([1]))
    step(*states(1, 1))
    for layer in (mine, ref):
        layer.reset()
    step(*states(1, 3))


def test_decode_cache_is_allocated_once_per_batch(tiny, monkeypatch):
    """Whole-prompt or chunked prefill, the cache's first buffer holds every position the batch reaches
    (prompt + new tokens): no reallocation per chunk or per decoding step."""
    import torch

    import evals.generation as generation

    model, tok = tiny
    model.generation_config.eos_token_id = None
    layer_class = generation._reserved_layer()
    update, buffers = layer_class.update, []

    def recording(self, *a, **k):
        out = update(self, *a, **k)
        buffers.append((id(self), self.buffers[0].data_ptr(), self.buffers[0].shape[-2]))
        return out

    monkeypatch.setattr(layer_class, "update", recording)
    prompt = torch.randint(10, 40000, (70,), generator=torch.Generator().manual_seed(4)).tolist()
    for chunk in (None, 16):  # one forward for the prompt, or five chunks
        buffers.clear()
        _collect(model, tok, [prompt, prompt], 5, prefill_chunk=chunk)
        per_layer = {}
        for layer, ptr, capacity in buffers:
            per_layer.setdefault(layer, set()).add((ptr, capacity))
        assert len(per_layer) == model.config.num_hidden_layers
        assert all(seen == {(next(iter(seen))[0], 70 + 5)} for seen in per_layer.values()), chunk


def test_decode_cache_replaces_only_full_attention_layers():
    from transformers import MistralConfig

    from evals.generation import _reserved_layer, decode_cache

    class Stub:  # decode_cache reads only the config
        config = MistralConfig(
            num_hidden_layers=4,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"] * 2,
        )

    kinds = [type(layer).__name__ for layer in decode_cache(Stub, 8).layers]
    assert kinds[1] == kinds[3] == _reserved_layer().__name__
    assert kinds[0] == kinds[2] != kinds[1]  # transformers' sliding-window layers kept


@pytest.mark.parametrize("peft", [False, True])
def test_greedy_whatever_the_models_generation_config_says(tiny, peft):
    """A checkpoint's generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05; others beams, n-gram
    blocking or a cache implementation) must not change the evals' greedy decoding, and is left as it was."""
    import copy

    import torch

    model, tok = tiny
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    base = unwrapped(model)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (12, 12, 9)]
    saved = base.generation_config
    saved.eos_token_id = None
    want = [" ".join(map(str, _reference_greedy(model, p, 6))) for p in prompts]
    changes = {"repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "num_beams": 3, "cache_implementation": "static"}
    before = {field: getattr(saved, field) for field in changes}
    try:
        for field, value in changes.items():
            setattr(saved, field, value)
            got = _collect(model, tok, prompts, 6)
            assert [got[i] for i in range(len(prompts))] == want, field
            assert base.generation_config is saved and getattr(saved, field) == value
    finally:
        for field, value in before.items():
            setattr(saved, field, value)


def test_out_of_memory_splits_the_batch_and_keeps_every_result(tiny, monkeypatch):
    import torch

    model, tok = tiny
    model.generation_config.eos_token_id = None
    prompts = [[100 + i, 200, 300] for i in range(5)]
    want = _collect(model, tok, prompts, 3)
    real, sizes = model.generate, []

    def oom_above_one_row(*a, **k):
        sizes.append(k["input_ids"].shape[0])
        if k["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(model, "generate", oom_above_one_row)
    log = []
    assert _collect(model, tok, prompts, 3, on_batch=log.append) == want
    assert sizes[0] == 5 and sizes.count(1) == 5  # 5 -> 2 + 3 -> ... -> single rows
    lost = [r for r in log if r.get("out_of_memory")]  # every batch tried is logged, the lost ones too
    assert [r["rows"] for r in lost] == [s for s in sizes if s > 1] and all(r["seconds"] >= 0 for r in lost)
    assert [r["rows"] for r in log if not r.get("out_of_memory")] == [1] * 5

    def always_oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(model, "generate", always_oom)
    with pytest.raises(LlqaError, match="out of memory generating from one 3-token prompt"):
        _collect(model, tok, prompts[:1], 3)


@pytest.mark.slow
def test_generation_prefill_benchmark_smoke(tmp_path):
    """benchmarks/generation_prefill.py at tiny CPU sizes (chunked prefill at 128 tokens): the code the GPU
    run uses, end to end."""
    from conftest import load_benchmark

    result = load_benchmark("generation_prefill").main(["--smoke", "--out", str(tmp_path)])
    assert [r["length"] for r in result["prefill"]] == [256, 512] and result["prefill_chunk"] == 128
    assert all(r["harness_tokens_per_s"] > 0 and r["generate_b1_tokens_per_s"] > 0 for r in result["prefill"])
    assert sum(result["prefill"][0]["harness_batches"]) == 6
    assert result["passkey"][0]["trials"] == 6
    assert json.loads((tmp_path / "benchmark.json").read_text())["prefill"] == result["prefill"]


def test_the_kv_cache_goes_under_the_name_this_transformers_takes(tiny):
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes away); a 5.x
    from before takes only the old one. The chunked prefill and generate() use what the model's forward
    names, and a PEFT wrapper is looked through."""
    import inspect
    import warnings

    from evals.generation import _cache_kwarg

    model, tok = tiny

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class Wrapped:
        def get_base_model(self):
            return model

        def forward(self, *args, **kwargs): ...

    want = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert _cache_kwarg(model) == _cache_kwarg(Wrapped()) == want
    assert _cache_kwarg(Old()) == "past_key_values"
    model.generation_config.eos_token_id = None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*deprecated", category=FutureWarning)
        _collect(model, tok, [[5, 6, 7] * 10], 2, prefill_chunk=8)  # chunked prefill, then generate()


def test_kv_cache_decode_benchmark_smoke(tmp_path):
    """benchmarks/kv_cache_decode.py at a tiny CPU size: both cache kinds timed, the result file written."""
    import json

    from conftest import load_benchmark

    result = load_benchmark("kv_cache_decode").main(
        ["--rows", "2", "--prompt", "64", "--layers", "2", "--steps", "4", "--repeats", "1", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "kv_cache_decode.json").read_text())
    assert set(saved["results"]) == {"concatenating", "reserved"} and saved["speedup"] == result["speedup"] > 0


def test_decoding_steps_run_without_cudnn_attention_on_cuda():
    """On CUDA the decoding steps may use every SDPA kernel but cuDNN's (its per-shape plans are rebuilt at
    every step, each step's key length being new); torch's own settings come back afterwards. Elsewhere,
    or when asked to keep torch's choice, nothing changes."""
    import torch

    from evals.generation import _decoding_kernels

    class Cuda:
        type = "cuda"

    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled())
    with _decoding_kernels(Cuda(), True):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()) == before
    for device, avoid in ((torch.device("cpu"), True), (Cuda(), False)):
        with _decoding_kernels(device, avoid):
            assert torch.backends.cuda.cudnn_sdp_enabled() == before[0]


def test_only_decoding_steps_run_under_the_decoding_kernels(tiny, monkeypatch):
    """The prompt (all but its last position) is prefilled before the decoding kernels are chosen, and
    generate() runs inside them; `avoid_cudnn_decode=False` is passed through."""
    import contextlib

    import evals.generation as generation

    model, tok = tiny
    model.generation_config.eos_token_id = None
    events = []
    real_prefill = generation._prefill
    monkeypatch.setattr(generation, "_prefill", lambda *a: events.append("prefill") or real_prefill(*a))

    @contextlib.contextmanager
    def recording(device, avoid):
        events.append(("decode", avoid))
        yield

    monkeypatch.setattr(generation, "_decoding_kernels", recording)
    prompt = list(range(10, 40))
    _collect(model, tok, [prompt], 3)
    _collect(model, tok, [prompt], 3, avoid_cudnn_decode=False)
    assert events == ["prefill", ("decode", True), "prefill", ("decode", False)]


def test_decode_kernels_benchmark_smoke(tmp_path):
    """benchmarks/decode_kernels.py at a tiny CPU size: both policies, a new and a repeated batch shape each,
    through the harness (on CPU the policies are the same code path; the GPU run is what they measure)."""
    import json

    from conftest import load_benchmark

    load_benchmark("decode_kernels").main(
        ["--shape", "tiny", "--cases", "2x64", "--new-tokens", "4", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "decode_kernels.json").read_text())
    got = [(r["policy"], r["rows"], r["width"], r["shape"], r["new_tokens"]) for r in saved["results"]]
    assert got == [
        ("torch", 2, 64, "new", 4),
        ("torch", 2, 64, "repeated", 4),
        ("no-cudnn", 2, 48, "new", 4),
        ("no-cudnn", 2, 48, "repeated", 4),
    ]
    assert all(r["decode_ms_per_step"] > 0 for r in saved["results"])


def test_one_and_two_token_prompts_decode_like_the_reference(tiny):
    """The harness prefills all but a prompt's last position before generate(): a one-token prompt has
    nothing to prefill (generate's first step is its whole prompt), a two-token one a single position."""
    import torch

    model, tok = tiny
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(7)
    for n in (1, 2):
        prompt = torch.randint(10, 40000, (n,), generator=g).tolist()
        assert _collect(model, tok, [prompt], 4)[0] == " ".join(map(str, _reference_greedy(model, prompt, 4)))
