"""The perplexity engine's compiled path (`--compile`): same numbers as eager, a bounded number of compiled
shapes, the model left uncompiled afterwards."""

from __future__ import annotations

import json

import pytest
import torch

from evals.perplexity import PerplexityConfig, WindowScorer, run
from evals.texts import Document
from llqa.errors import LlqaError

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to "
    "do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
    "conversations in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?' "
    "So she was considering in her own mind (as well as she could, for the hot day made her feel very "
    "sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the trouble."
)
# a long document, one shorter than the longest window (its windows have a length of their own)
DOCS = [Document("long", TEXT), Document("short", TEXT[:90])]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def _frames(counter) -> int:
    return sum(counter["stats"].values()) if "stats" in counter else 0


def scored(tiny, tmp_path, name, **kwargs):
    cfg = PerplexityConfig(lengths=[24, 40], stride=7, bos="never")
    return run(tiny, DOCS, cfg, tmp_path / name, batch_tokens=120, show_progress=False, **kwargs)


def test_compiled_plumbing_equals_eager_and_compiles_only_full_batches(tiny, tmp_path):
    """dynamo's `aot_eager` backend (no C compiler, seconds): the layers really go through torch.compile,
    only the full batch shape of each length is compiled, and the numbers equal eager ones."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    eager = scored(tiny, tmp_path, "eager")
    compiled = scored(tiny, tmp_path, "compiled", compile_mode="default", compile_backend=counter)
    # the layers were compiled once per length (2), at most once per length and layer, never per batch
    layers = len(tiny.model.get_decoder().layers)
    assert 2 <= counter.frame_count <= 2 * layers
    speed = compiled.result_path.parent.joinpath("result.json").read_text()
    assert '"compiled_batches"' in speed
    this = json.loads(speed)["this_session"]
    assert this["compile"] == "default" and this["compiled_batches"] > counter.frame_count
    assert this["eager_batches"] > 0  # the last batch of a length and the short document's windows
    assert not any("ran eagerly" in w for w in compiled.warnings)
    for a, b in zip(eager.rows, compiled.rows, strict=True):
        assert a["scored_tokens"] == b["scored_tokens"]
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-6)
    # uncompiled afterwards: a plain forward compiles nothing more
    before = counter.frame_count
    with torch.no_grad():
        tiny.model(torch.tensor([[1, 2, 3]]))
    assert counter.frame_count == before
    assert all(layer._compiled_call_impl is None for layer in tiny.model.get_decoder().layers)


def test_inductor_compiled_equals_eager(tiny, tmp_path):
    """The real thing on CPU (inductor + gcc, about 20 s): fp32 numbers equal eager to fp32 tolerance."""
    torch._dynamo.reset()
    eager = scored(tiny, tmp_path, "eager")
    compiled = scored(tiny, tmp_path, "inductor", compile_mode="default")
    for a, b in zip(eager.rows, compiled.rows, strict=True):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)
        assert b["window_ppl"] == pytest.approx(a["window_ppl"], rel=1e-5)


def test_compile_mode_errors(tiny, tmp_path):
    with pytest.raises(LlqaError, match="--compile fast is not a compile mode"):
        scored(tiny, tmp_path, "bad", compile_mode="fast")

    class NoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(4, 8)
            self.config = tiny.model.config

        def get_decoder(self):
            return torch.nn.Identity()

        def get_output_embeddings(self):
            return self.lm_head

    with pytest.raises(LlqaError, match="no list of layers"):
        WindowScorer(NoLayers()).compile("default", "eager")


def _bf16_scorer(tiny):
    from conftest import build_tiny_llama

    model = build_tiny_llama(len(tiny.tokenizer)).to(torch.bfloat16)
    return model, WindowScorer(model)


def test_16bit_head_falls_back_to_the_fp32_gemm_where_torch_cannot_mm_with_fp32_output(tiny):
    """On CPU torch has no mm(out_dtype=): forcing the 16-bit path there must give the fp32 GEMM's logits
    and switch the path off for the rest of the run."""
    model, scorer = _bf16_scorer(tiny)
    assert scorer._w16 is None  # only a CUDA head takes the 16-bit path
    scorer._w16 = model.lm_head.weight.detach()
    h = torch.randn(5, model.config.hidden_size, dtype=torch.bfloat16)
    logits = scorer._logits(h)
    assert scorer._w16 is None and logits.dtype == torch.float32
    torch.testing.assert_close(logits, h.float() @ model.lm_head.weight.float().t(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_16bit_head_on_cuda_equals_the_fp32_gemm(tiny):
    """bf16 x bf16 products are exact in fp32 and accumulate in fp32: the tensor-core GEMM with fp32 output
    equals the fp32 GEMM of the upcast operands up to summation order."""
    model, _ = _bf16_scorer(tiny)
    model = model.cuda()
    scorer = WindowScorer(model)
    assert scorer._w16 is not None
    h = torch.randn(300, model.config.hidden_size, dtype=torch.bfloat16, device="cuda")
    logits = scorer._logits(h)
    assert scorer._w16 is not None  # the 16-bit path really ran
    torch.testing.assert_close(logits, h.float() @ model.lm_head.weight.float().t(), rtol=1e-5, atol=1e-5)


def test_a_failing_compilation_falls_back_to_eager_layers(tiny, tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    eager = scored(tiny, tmp_path, "eager")
    with pytest.warns(UserWarning, match="torch.compile failed"):
        fell_back = scored(tiny, tmp_path, "broken", compile_mode="default", compile_backend=broken_backend)
    this = json.loads((tmp_path / "broken" / "result.json").read_text())["this_session"]
    assert this["compiled_batches"] == 0 and this["eager_batches"] > 0
    assert [r["ppl"] for r in fell_back.rows] == [r["ppl"] for r in eager.rows]
    assert all(layer._compiled_call_impl is None for layer in tiny.model.get_decoder().layers)


def test_a_compile_that_ran_eagerly_is_a_warning(tiny, tmp_path, monkeypatch):
    """dynamo may run "compiled" layers eagerly without an error; the result then says so."""
    from torch._dynamo.testing import CompileCounter

    import evals.perplexity as perplexity

    monkeypatch.setattr(perplexity, "fallback_reason", lambda: "a graph break in the layer")
    torch._dynamo.reset()
    out = scored(tiny, tmp_path, "fell-back", compile_mode="default", compile_backend=CompileCounter())
    line = "--compile default: the layers ran eagerly, torch.compile fell back (a graph break in the layer)"
    assert line in out.warnings
    assert line in json.loads(out.result_path.parent.joinpath("result.json").read_text())["warnings"]
