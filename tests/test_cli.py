"""The CLI surface: every command's --help, the foundation commands, one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

import cli
from conftest import run_llqa

runner = CliRunner()


def _command_paths(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _command_paths(cmd, (*prefix, name))


ALL_COMMANDS = sorted(_command_paths(typer.main.get_command(cli.app)))


def test_expected_commands_exist():
    assert {("models",), ("info",), ("eval",)} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "llqa")
def test_help_of_every_command(path):
    result = runner.invoke(cli.app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys, cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_models_lists_aliases():
    result = runner.invoke(cli.app, ["models"])
    assert result.exit_code == 0
    for alias in ("smollm2-135m", "7b", "13b", "70b"):
        assert alias in result.output


def test_info_reports_pi_factor_4_for_smollm2_at_32k():
    result = run_llqa("info", "--model", "smollm2-135m", "--ctx", "32768", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["rope_factor"] == 4.0 and info["native_ctx"] == 8192 and info["target_ctx"] == 32768
    assert (info["layers"], info["heads"], info["kv_heads"]) == (30, 9, 3)


def test_info_table(tiny_llama_dir):
    result = run_llqa("info", "--model", str(tiny_llama_dir), "--ctx", "1024", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "RoPE scaling factor" in result.stdout and "4 (checkpoint 1)" in result.stdout


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_offline_uncached_hub_model_is_one_line(tmp_path):
    result = run_llqa("info", "--model", "7b", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    _assert_one_line_error(result, "meta-llama/Llama-2-7b-hf", "HF_HOME")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["--model", "./no/such/dir"], "no such file or directory"),
        (["--ctx", "0"], "--ctx must be between 1 and 16,777,216 tokens, got 0"),
        (["--ctx", "-4096"], "--ctx must be between 1 and 16,777,216 tokens, got -4,096"),
        (["--ctx", "1" + "0" * 23], "--ctx must be between 1 and 16,777,216 tokens"),
        (["--model", "random:huge"], "unknown random shape"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle):
    _assert_one_line_error(run_llqa("info", *args), needle)


def test_debug_variable_shows_traceback():
    result = run_llqa("info", "--model", "gpt-17", env={"LLQA_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "LlqaError" in result.stderr


def test_bad_option_value_is_usage_error():
    result = run_llqa("info", "--ctx", "lots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
