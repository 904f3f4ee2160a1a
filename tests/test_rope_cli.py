"""`--rope` through the CLI, and a run loaded by every command at the RoPE it was trained with unless `--ctx`
asks for more (perplexity used to load a run at max(--lengths), losing its PI when the lengths were short)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import llqa_call as call


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory):
    """A run trained at 512 tokens (PI ×2 over the tiny model's 256), as llqa wrote runs before RoPE records:
    its llqa_model.json names only the context."""
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(tiny_llama_dir, run)
    (run / "llqa_model.json").write_text(json.dumps({"base_model": str(tiny_llama_dir), "ctx": 512}))
    return run


@pytest.fixture(scope="module")
def text(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("text") / "alice.txt"
    path.write_text((shared_data / "gutenberg_novels" / "pg11.txt").read_text()[5000:8000])
    return path


CPU = ("--device", "cpu", "--dtype", "float32")


def model_of(out) -> dict:
    return json.loads((out / "result.json").read_text())["model"]


def test_every_command_loads_a_run_at_its_trained_rope(capsys, run_dir, text, tmp_path):
    code, out, err = call(capsys, "info", "--model", str(run_dir), "--json", *CPU)
    assert code == 0, err
    info = json.loads(out)
    assert (info["rope_method"], info["rope_factor"], info["target_ctx"]) == ("pi", 2.0, 512)

    ppl = tmp_path / "ppl"  # lengths far below the trained context: still PI ×2
    code, _, err = call(
        capsys, "eval", "perplexity", "--model", str(run_dir), "--data", str(text), "--lengths", "128,256",
        "--stride", "64", "--max-tokens", "300", "--out", str(ppl), "--no-progress", *CPU,
    )  # fmt: skip
    assert code == 0, err
    assert model_of(ppl)["rope_factor"] == 2.0 and model_of(ppl)["target_ctx"] == 512
    assert json.loads((ppl / "result.json").read_text())["config"]["model_ctx"] == 512

    pk = tmp_path / "pk"
    code, _, err = call(
        capsys, "eval", "passkey", "--model", str(run_dir), "--lengths", "200", "--depths", "0.5", "--trials", "1",
        "--chat-template", "none", "--out", str(pk), "--no-progress", *CPU,
    )  # fmt: skip
    assert code == 0, err
    assert model_of(pk)["rope_factor"] == 2.0

    lines = tmp_path / "lines"
    code, _, err = call(
        capsys, "eval", "lines", "--model", str(run_dir), "--generate", "--sizes", "3", "--cases", "1",
        "--max-new-tokens", "4", "--chat-template", "none", "--out", str(lines), "--no-progress", *CPU,
    )  # fmt: skip
    assert code == 0, err
    assert model_of(lines)["rope_factor"] == 2.0

    longer = tmp_path / "ppl-1024"  # --ctx above the trained context extends it further, from the original
    code, _, err = call(
        capsys, "eval", "perplexity", "--model", str(run_dir), "--data", str(text), "--lengths", "128",
        "--ctx", "1024", "--stride", "64", "--max-tokens", "300", "--out", str(longer), "--no-progress", *CPU,
    )  # fmt: skip
    assert code == 0, err
    assert model_of(longer)["rope_factor"] == 4.0 and model_of(longer)["native_ctx"] == 256


def test_info_shows_what_changed(capsys, tiny_llama_dir):
    code, out, err = call(capsys, "info", "--model", str(tiny_llama_dir), "--ctx", "1024", "--rope", "yarn", *CPU)
    assert code == 0, err
    for words in ("yarn (checkpoint none)", "4 (checkpoint 1)", "1024 (checkpoint 256)", "original_max_position"):
        assert words in out, out
    code, out, _ = call(capsys, "info", "--model", str(tiny_llama_dir), "--ctx", "1024", "--rope", "theta", "--json")
    info = json.loads(out)
    assert info["rope_label"].startswith("theta θ=") and info["rope_theta"] > info["checkpoint_rope_theta"]
    assert info["wavelengths"][1] > info["checkpoint_wavelengths"][1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("info", "--ctx", "1024", "--rope", "ntk"), "--rope ntk is not a method"),
        (("info", "--ctx", "1024", "--rope", "pi", "--rope-theta", "1e6"), "--rope-theta sets θ for --rope theta"),
        (("info", "--ctx", "1024", "--rope-original-ctx", "9999"), "--rope-original-ctx 9999 is longer"),
    ],
)
def test_bad_rope_options_are_one_line(capsys, tiny_llama_dir, args, words):
    code, out, err = call(capsys, *args, "--model", str(tiny_llama_dir))
    assert code == 2 and words in err and "Traceback" not in err + out
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def test_dynamic_training_is_refused(capsys, tiny_llama_dir, text, tmp_path):
    code, _, err = call(
        capsys, "train", "--model", str(tiny_llama_dir), "--ctx", "512", "--rope", "dynamic", "--data", str(text),
        "--out", str(tmp_path / "run"), *CPU,
    )  # fmt: skip
    assert code == 2 and "--rope dynamic cannot be trained" in err
    assert not (tmp_path / "run").exists()
