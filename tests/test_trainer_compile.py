"""`--compile`: a training step with the decoder layers compiled equals the eager step (loss and the
gradients the optimizer receives), with and without offloaded checkpoints and with S2-Attn; options checked."""

from __future__ import annotations

import pytest
import torch

from llqa.engine import resolve_compile_mode
from llqa.errors import LlqaError
from tests.conftest import llqa_in_process, tiny_train_args, train_step_grads
from trainer.compile import compile_layers, decoder_layers, uncompile_layers
from trainer.config import TrainConfig


def _graphs() -> int:
    """Graphs dynamo compiled since the last reset: proof that the layers ran compiled, not eagerly."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _assert_same(a, b, rtol, atol):
    (loss_a, grads_a, _), (loss_b, grads_b, _) = a, b
    assert loss_b == pytest.approx(loss_a, rel=rtol)
    lora_b = [n for n in grads_a if "lora_B" in n]
    assert lora_b and all(grads_a[n].abs().sum() > 0 for n in lora_b)  # gradients reached every layer's LoRA
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol)


@pytest.mark.parametrize("offload", [False, True])
def test_compiled_layers_give_the_eager_step(tmp_path, offload):
    """Plumbing through aot_eager (autograd traced and partitioned as inductor gets it, no codegen): the
    checkpoint wrapper calls the compiled layer, under both checkpoint forms."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = train_step_grads(tmp_path / "a", offload_activations=offload)
    assert _graphs() == 0
    compiled = train_step_grads(tmp_path / "b", compile_backend="aot_eager", offload_activations=offload)
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(compiled[2]))
    assert _graphs() >= 1
    _assert_same(eager, compiled, rtol=1e-5, atol=1e-7)


def test_compile_option_runs_inductor_with_offload(tmp_path):
    """`compile="default"` through the trainer's own path: inductor's generated CPU kernels, offloaded checkpoints."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = train_step_grads(tmp_path / "a", offload_activations=True)
    assert _graphs() == 0
    compiled = train_step_grads(tmp_path / "b", offload_activations=True, compile="default")
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(compiled[2]))
    assert _graphs() >= 1
    _assert_same(eager, compiled, rtol=1e-4, atol=1e-6)  # inductor reorders reductions
    uncompile_layers(compiled[2])
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(compiled[2]))


def test_compile_modes_are_checked_and_resolved():
    with pytest.raises(LlqaError, match="--compile fast is not a compile mode"):
        TrainConfig(task="train", out="o", data=["x"], ctx=8192, compile="fast")
    with pytest.raises(LlqaError, match="--compile reduce-overhead is not a compile mode"):
        TrainConfig(task="train", out="o", data=["x"], ctx=8192, compile="reduce-overhead")
    assert TrainConfig(task="train", out="o", data=["x"], ctx=8192).compile == "off"
    assert resolve_compile_mode("auto", torch.device("cpu")) == "off"
    assert resolve_compile_mode("auto", torch.device("cuda")) == "default"
    assert resolve_compile_mode("max-autotune-no-cudagraphs", torch.device("cpu")) == "max-autotune-no-cudagraphs"
    # compiling changes speed, not the result: a run may resume with another --compile
    a = TrainConfig(task="train", out="o", data=["x"], ctx=8192)
    assert a.differences(TrainConfig(task="train", out="o", data=["x"], ctx=8192, compile="default")) == []


def test_compile_needs_decoder_layers():
    with pytest.raises(LlqaError, match="no list of decoder layers"):
        compile_layers(torch.nn.Linear(2, 2), "default")


def test_train_cli_compile_option(capsys, tmp_path, tiny_llama_dir):
    """`llqa train --compile default --offload-activations` trains with S2-Attn and records the mode; a bad mode
    is one line and exit 2."""
    args = tiny_train_args(tmp_path, tiny_llama_dir, "compiling the decoder layers")
    code, out = llqa_in_process(capsys, *args, "--out", str(tmp_path / "bad"), "--compile", "fastest")
    assert code == 2 and "--compile fastest is not a compile mode" in out and "Traceback" not in out, out
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    code, out = llqa_in_process(capsys, *args, "--out", str(tmp_path / "run"), "--compile", "default")
    assert code == 0 and "done: 1 steps" in out, out
    assert _graphs() >= 1
    saved = TrainConfig.read(tmp_path / "run")
    assert saved.compile == "default" and saved.attn == "s2" and saved.offload_activations


def test_a_silent_fallback_to_eager_is_reported():
    """Dynamo runs a module it cannot compile eagerly, without an error. `fallback_reason` tells: None after a
    module that compiled, a reason after one that ran uncompiled."""
    from llqa.compile import compile_modules, fallback_reason

    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    class Uncompilable(torch.nn.Module):
        @torch.compiler.disable
        def forward(self, x):
            return torch.relu(x) * 2

    torch._dynamo.reset()
    for module, compiled in ((Plain(), True), (Uncompilable(), False)):
        compile_modules([module], backend="eager")
        module(torch.randn(4))
        assert (fallback_reason() is None) == compiled


def test_the_training_loop_prints_the_fallback_once(tmp_path, monkeypatch, tied_tiny_and_essay):
    """One line on the console after the first step when --compile ran eagerly (not once per step)."""
    import dataclasses
    import io

    from rich.console import Console

    import trainer.loop as loop
    from tests.conftest import tiny_train_config
    from trainer.model import compile_fallback_note

    model, essay = tied_tiny_and_essay
    monkeypatch.setattr("llqa.compile.fallback_reason", lambda: "a graph break")
    cfg = tiny_train_config(tmp_path / "run", model, essay)
    note = compile_fallback_note(dataclasses.replace(cfg, compile="default"), torch.device("cpu"))
    assert note and "ran eagerly" in note and "a graph break" in note
    assert compile_fallback_note(dataclasses.replace(cfg, compile="off"), torch.device("cpu")) is None

    monkeypatch.setattr(loop, "compile_fallback_note", lambda cfg, device: "LAYERS RAN EAGERLY")
    buf = io.StringIO()
    assert loop.run_training(tiny_train_config(tmp_path / "run", model, essay), console=Console(file=buf, width=200))
    assert buf.getvalue().count("LAYERS RAN EAGERLY") == 1
