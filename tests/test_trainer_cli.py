"""`llqa train / sft / merge` from the command line: a happy path each, user errors as one line + exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import build_tiny_llama, llqa_in_process


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_tokenizer):
    path = tmp_path_factory.mktemp("cli-tiny")
    build_tiny_llama(len(smollm2_tokenizer), seed=2, tie_word_embeddings=True).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def sft_file(tmp_path):
    path = tmp_path / "longalpaca.json"  # LongAlpaca's own format: a JSON list
    path.write_text(
        json.dumps(
            [
                {"instruction": f"Read this. {'Text. ' * 20} What number is it?", "output": f"The number is {i}."}
                for i in range(3)
            ]
        )
    )
    return path


def test_sft_then_merge_from_the_command_line(capsys, tmp_path, tiny_dir, sft_file):
    from transformers import AutoModelForCausalLM

    run, merged = tmp_path / "run", tmp_path / "merged"
    code, out = llqa_in_process(
        capsys,
        "sft",
        "--model",
        str(tiny_dir),
        "--ctx",
        "128",
        "--data",
        str(sft_file),
        "--out",
        str(run),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--template",
        "inst",
    )
    assert code == 0, out
    assert "done" in out and (run / "adapter_model.safetensors").is_file()
    assert json.loads((run / "train_config.json").read_text())["data"]["template"] == "inst"
    code, out = llqa_in_process(capsys, "merge", str(run), "--out", str(merged), "--dtype", "float32")
    assert code == 0, out
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.config.max_position_embeddings == 256  # 128 is below the native 256: no PI
    ids = torch.randint(0, 1000, (1, 16))
    from llqa.models import load_model

    adapter = load_model(str(run), dtype="float32", device="cpu").model
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, adapter(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_train_with_resume_from_the_command_line(capsys, tmp_path, tiny_dir, shared_data):
    essays = shared_data / "paul_graham_essays"
    args = [
        "train",
        "--model",
        str(tiny_dir),
        "--ctx",
        "64",
        "--data",
        str(sorted(essays.rglob("*.txt"))[0]),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--save-every",
        "1",
        "--method",
        "lora",
        "--device",
        "cpu",
    ]
    code, out = llqa_in_process(capsys, *args, "--stop-after", "1")
    assert code == 0 and "--resume" in out, out
    code, out = llqa_in_process(capsys, *args)
    assert code == 2 and "already holds a training run" in out
    code, out = llqa_in_process(capsys, *args, "--resume")
    assert code == 0 and "done: 2 steps" in out, out


@pytest.mark.parametrize("case", ["missing-field", "empty", "ctx-multiple", "no-data", "bad-method"])
def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path, tiny_dir, case):
    data = tmp_path / "items.jsonl"
    args = [
        "sft",
        "--model",
        str(tiny_dir),
        "--ctx",
        "128",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--data",
        str(data),
    ]
    expect = {
        "missing-field": "record 2: missing or empty field(s) output",
        "empty": "no sft item fits",
        "ctx-multiple": "must be a multiple of 8",
        "no-data": "needs data",
        "bad-method": "--method qlora is not a method",
    }[case]
    data.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n" + json.dumps({"instruction": "q"}) + "\n")
    if case == "empty":
        data.write_text("")
    elif case == "ctx-multiple":
        args[4] = "100"
    elif case == "no-data":
        args = args[:-2]
    elif case == "bad-method":
        args += ["--method", "qlora"]
    code, out = llqa_in_process(capsys, *args)
    assert code == 2, out
    assert expect in out and "Traceback" not in out


def test_merge_of_a_non_run_is_a_clear_error(capsys, tmp_path):
    code, out = llqa_in_process(capsys, "merge", str(tmp_path), "--out", str(tmp_path / "m"))
    assert code == 2 and "is not an llqa training run" in out


def test_stop_request_defers_signals_and_restores_the_handlers():
    import signal

    from trainer.stop import StopRequest

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)  # would end the process without the handler
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once (SIGINT: Python's own behaviour)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_stops_after_the_step_with_a_checkpoint_there(capsys, tmp_path, tiny_dir):
    """A real SIGTERM to a real `llqa train`: the step in flight finishes, a checkpoint is written at it although
    --save-every is far away, the exit code is 128 + 15 with one line, and --resume continues from that step."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from trainer.checkpoint import latest_checkpoint
    from trainer.runlog import read_log

    root = Path(__file__).resolve().parents[1]
    text, run = tmp_path / "text.txt", tmp_path / "run"
    text.write_text(" ".join(f"word{i % 97} is number {i}." for i in range(4000)))
    args = [
        "train",
        "--model",
        str(tiny_dir),
        "--ctx",
        "64",
        "--data",
        str(text),
        "--out",
        str(run),
        "--batch-size",
        "1",
        "--save-every",
        "100000",
        "--method",
        "lora",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args, "--max-steps", "100000"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(read_log(run)) < 3 if (run / "log.jsonl").exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    last = read_log(run)[-1]["step"]
    assert latest_checkpoint(run).name == f"step-{last:06d}"
    assert f"stopped: SIGTERM received: training stopped after step {last}" in err and "Traceback" not in err
    code, said = llqa_in_process(capsys, *args, "--max-steps", str(last + 2), "--resume")
    assert code == 0 and f"done: {last + 2} steps" in said, said
    assert [r["step"] for r in read_log(run)] == list(range(1, last + 3))
