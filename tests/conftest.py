"""Shared fixtures: tiny random Llama models (GQA, fp32, CPU, seconds) and the real SmolLM2.

The tiny models use the default model's real tokenizer (vocab 49,152), so every pipeline that
tokenizes text can run on them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def build_tiny_llama(vocab_size: int = 49152, seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size, **overrides), attn_implementation="sdpa")
    return model.float().eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from llqa.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved tiny random Llama (2 layers, 4 heads / 2 KV heads, native ctx 256) with the real
    SmolLM2 tokenizer: loadable by `--model <dir>` like any local model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(smollm2_tokenizer)).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, fp32 on CPU, loaded once per session."""
    from llqa.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_llqa(*args: str, env: dict | None = None, timeout: float = 600):
    """Run the installed CLI in a subprocess (exactly what a user runs): returns CompletedProcess."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def llqa_call(capsys, *args: str) -> tuple[int, str, str]:
    """Run `cli.main(args)` in this process, as `main` does for a user: (exit code, stdout, stderr)."""
    import cli

    try:
        cli.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_train_args(tmp_path, model_dir, topic: str) -> list[str]:
    """`llqa train` arguments (all but --out) for one CPU step of a tiny model at ctx 64 on a one-document text
    about `topic`, with activation offload (the path --compile and --offload-fraction act on)."""
    text = tmp_path / "doc.txt"
    text.write_text(f"A long enough document about {topic}. " * 40)
    return [
        "train",
        "--model",
        str(model_dir),
        "--ctx",
        "64",
        "--data",
        str(text),
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--offload-activations",
    ]


def llqa_in_process(capsys, *args: str) -> tuple[int, str]:
    """Run `cli.main(args)` in this process: (exit code, stdout + stderr)."""
    code, out, err = llqa_call(capsys, *args)
    return code, out + err


def train_step_grads(tmp_path, compile_backend: str | None = None, **config):
    """One training step of a tiny Llama (vocab 512) on a fixed batch of 2 x 64 tokens, micro-batch 1:
    (loss, the gradients the optimizer received by parameter name, the model). Gradients rather than
    updated weights: AdamW's first step divides each gradient by its own magnitude, which turns rounding
    noise in near-zero gradients into full-size updates. `config`: TrainConfig fields (method, attn,
    offload_activations, compile, ...); `compile_backend`: compile the layers with this torch.compile
    backend before the step."""
    import torch

    from trainer.compile import compile_layers
    from trainer.config import TrainConfig
    from trainer.loop import train_step
    from trainer.model import make_optimizer, prepare_model

    cfg = TrainConfig(
        task="train",
        out=str(tmp_path),
        data=["x"],
        ctx=64,
        lr=0.1,
        warmup_steps=0,
        batch_size=2,
        device="cpu",
        dtype="float32",
        **config,
    )
    torch.manual_seed(0)
    model = prepare_model(cfg, build_tiny_llama(512, seed=1), torch.float32)
    if compile_backend is not None:
        assert compile_layers(model, "default", backend=compile_backend) == 2  # the tiny Llama's layers
    params, opt, sched = make_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    real_step = opt.step

    def step(*a, **k):
        grads.update({names[id(p)]: p.grad.clone() for p in params})
        return real_step(*a, **k)

    opt.step = step
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(2))
    batches = [(ids[:1], ids[:1].clone(), None), (ids[1:], ids[1:].clone(), None)]
    loss, _ = train_step(model, params, opt, sched, batches, cfg, torch.device("cpu"), torch.float32, 0)
    return loss, grads, model


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on localhost (one per process-group launch of a multi-process test)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def tied_tiny_and_essay(tmp_path_factory, smollm2_tokenizer, shared_data):
    """(model dir, text file) for the multi-process trainer tests: a tiny Llama with tied embeddings (as
    SmolLM2's) and the SmolLM2 tokenizer, and 4,000 characters of a real essay."""
    root = tmp_path_factory.mktemp("gloo-tiny")
    build_tiny_llama(
        len(smollm2_tokenizer), seed=3, tie_word_embeddings=True, max_position_embeddings=32
    ).save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    src = sorted((shared_data / "paul_graham_essays").rglob("*.txt"))[0]
    (root / "essay.txt").write_text(src.read_text()[:4000])
    return root / "model", root / "essay.txt"


def spawn_gloo_ranks(worker, args: tuple, out_dir, nprocs: int = 2, timeout_s: float = 300) -> list:
    """Run `worker(rank, *args)` in `nprocs` processes and return what each saved to `out_dir/rank{r}.pt`; a
    rendezvous that never completes fails the test after `timeout_s` instead of hanging it."""
    import time

    import torch
    import torch.multiprocessing as mp

    procs = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail(f"the {nprocs} gloo ranks did not finish within {timeout_s:g} s")
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(nprocs)]


def assert_tensor_dicts_close(got: dict, want: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    import torch

    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (benchmarks/ is not a package), registered in sys.modules so
    that its dataclasses can look their module up."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_train_config(out, model, data, **overrides):
    """The TrainConfig of the tests' short CPU runs on the tiny tied Llama (`tied_tiny_and_essay`): `lora+` at
    ctx 64, 2 steps of 1 sequence, a checkpoint every step, fp32; `overrides` change any field."""
    from trainer.config import TrainConfig

    base = dict(
        task="train",
        out=str(out),
        model=str(model),
        ctx=64,
        data=[str(data)],
        method="lora+",
        max_steps=2,
        batch_size=1,
        warmup_steps=1,
        save_every=1,
        device="cpu",
        dtype="float32",
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_run(tied_tiny_and_essay, tmp_path_factory) -> Path:
    """A finished two-step `lora+` training run of a tiny tied Llama at ctx 64 (checkpoints at steps 1 and 2):
    for merge, `--model RUN` and `--resume` tests. Treat it as read-only; copy it to change it."""
    from trainer.loop import run_training

    model, essay = tied_tiny_and_essay
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    assert run_training(tiny_train_config(run, model, essay)).finished
    return run
