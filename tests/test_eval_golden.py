"""Golden result files of the generation evals (passkey, topics, lines) on a fixed seed and a tiny random
model: every run must write the same cells.jsonl, run.json, result.csv and result.json (time, device,
version and machine-local paths aside) as the files committed under tests/golden/. A change to what an eval
computes or writes shows up here as a diff; an intended change regenerates the files with
`LLQA_REGEN_GOLDEN=1 python -m pytest tests/test_eval_golden.py` and commits them with the reason."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import llqa_call

GOLDEN = Path(__file__).resolve().parent / "golden"
VOLATILE = ("wall_time_s", "finished_at", "device", "llqa_version", "generation_time")  # clocks and machine
FILES = ("cells.jsonl", "run.json", "result.csv", "result.json")


def _runs(model: str, longeval: Path, judge: Path) -> dict[str, list[str]]:
    common = ["--model", model, "--seed", "3", "--no-progress", "--device", "cpu", "--dtype", "float32"]
    return {
        # 300 > the tiny model's context (256): those trials are skipped; chat template applied
        "passkey": [
            "eval",
            "passkey",
            *common,
            "--lengths",
            "120,180,300",
            "--depths",
            "0,0.5,1",
            "--trials",
            "2",
            "--chat-template",
            "auto",
        ],
        "passkey_plain": [
            "eval",
            "passkey",
            *common,
            "--lengths",
            "200,300",
            "--depths",
            "0.25",
            "--trials",
            "3",
            "--chat-template",
            "none",
            "--overlong",
            "middle",
            "--max-new-tokens",
            "5",
        ],
        # the real model finds keys: correct answers are part of the golden files
        "passkey_smollm2": [
            "eval",
            "passkey",
            *common[2:],
            "--lengths",
            "256,640",
            "--depths",
            "0,1",
            "--trials",
            "2",
            "--chat-template",
            "none",
        ],
        "topics": [
            "eval",
            "topics",
            *common,
            "--testcases",
            str(longeval),
            "--sizes",
            "1,5",
            "--limit",
            "2",
            "--overlong",
            "middle",
            "--max-new-tokens",
            "8",
            "--judge-cmd",
            f"{sys.executable} {judge}",
        ],
        "lines": [
            "eval",
            "lines",
            *common,
            "--generate",
            "--sizes",
            "3,6",
            "--cases",
            "2",
            "--max-new-tokens",
            "6",
            "--chat-template",
            "none",
        ],
    }


def _normalise(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _comparable(name: str, text: str) -> str:
    """The file's content: JSON objects compare by value (key order carries no meaning), CSV by text."""
    if name == "cells.jsonl":
        return "".join(
            json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False) + "\n" for line in text.splitlines()
        )
    if name != "result.json" and name != "run.json":
        return text
    obj = json.loads(text)
    for key in VOLATILE:
        obj.pop(key, None)
    for key in ("path", "source"):  # the model's folder on this machine
        obj.get("model", {}).pop(key, None)
    # the weights' fingerprint hashes the tiny model's file bytes, which follow the serialiser's layout, not
    # what the eval computes (tests/test_models.py checks the fingerprint itself)
    for part in (obj, obj.get("model", {}), obj.get("config", {})):
        part.pop("weights", None)
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize(
    "run", ["passkey", "passkey_plain", pytest.param("passkey_smollm2", marks=pytest.mark.slow), "topics", "lines"]
)
def test_result_files_equal_the_golden_ones(run, tiny_llama_dir, shared_data, tmp_path, capsys):
    longeval = shared_data / "longchat_longeval" / "evaluation"
    judge = tmp_path / "judge.py"  # says yes when the answer has an even number of characters
    judge.write_text("import json, sys\nprint('yes' if len(json.load(sys.stdin)['answer']) % 2 == 0 else 'no')\n")
    out = tmp_path / run
    code, stdout, stderr = llqa_call(capsys, *_runs(str(tiny_llama_dir), longeval, judge)[run], "--out", str(out))
    assert code == 0, stdout + stderr
    replacements = {
        str(out): "<OUT>",
        str(tiny_llama_dir): "<MODEL>",
        str(longeval): "<LONGEVAL>",
        f"{sys.executable} {judge}": "<JUDGE>",
    }
    golden = GOLDEN / run
    for name in FILES:
        got = _comparable(name, _normalise((out / name).read_text(encoding="utf-8"), replacements))
        if os.environ.get("LLQA_REGEN_GOLDEN") == "1":
            golden.mkdir(parents=True, exist_ok=True)
            (golden / name).write_text(got, encoding="utf-8")
        want = _comparable(name, (golden / name).read_text(encoding="utf-8"))
        assert got == want, f"{run}/{name} differs from tests/golden"
