"""`--no-pi`: perplexity past the model's native context without Position Interpolation (the
"base model without PI" rows of benchmarks/smollm2-8k-to-32k), against the default, which interpolates to the
longest length; and how `llqa report` groups the two."""

from __future__ import annotations

import json
import math

import pytest
from test_perplexity_cli import one_line_error

from conftest import llqa_call as call
from llqa.errors import LlqaError

NATIVE = 256  # the tiny model's max_position_embeddings (conftest.build_tiny_llama)


@pytest.fixture(scope="module")
def book(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("nopi") / "alice.txt"
    path.write_text((shared_data / "gutenberg_novels" / "pg11.txt").read_text()[5000:9000])
    return path


def score(capsys, tiny_llama_dir, book, out, *extra: str) -> dict:
    code, _, err = call(
        capsys,
        "eval",
        "perplexity",
        "--data",
        str(book),
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "128,384",
        "--stride",
        "64",
        "--max-tokens",
        "640",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *extra,
    )
    assert code == 0, err
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def results(tiny_llama_dir, book, tmp_path_factory):
    """Where the no-PI and default runs land: the first test makes them, the report test reuses them."""
    return tiny_llama_dir, book, tmp_path_factory.mktemp("runs")


def test_no_pi_keeps_native_rope_and_scores_longer_windows(capsys, results):
    tiny_llama_dir, book, root = results
    nopi = score(capsys, tiny_llama_dir, book, root / "nopi", "--no-pi")
    assert nopi["config"]["pi"] is False
    assert nopi["model"]["rope_factor"] == 1.0 and nopi["model"]["target_ctx"] == NATIVE
    assert nopi["config"]["model_ctx"] == NATIVE and "pi=false" in nopi["semantics"]
    row = nopi["summary"]["384"]  # windows 1.5x the native context were scored, not refused
    assert row["windows"] > 0 and row["scored_tokens"] == 639 and math.isfinite(row["ppl"])

    pi = score(capsys, tiny_llama_dir, book, root / "pi")  # the default interpolates to the longest L
    assert "pi" not in pi["config"]  # absent = PI on: run.json as before --no-pi existed, so old runs resume
    assert pi["model"]["rope_factor"] == pytest.approx(384 / NATIVE) and pi["model"]["target_ctx"] == 384
    # another RoPE: other numbers even where both are inside the native context
    assert pi["summary"]["128"]["ppl"] != pytest.approx(nopi["summary"]["128"]["ppl"], rel=1e-6)


def test_no_pi_with_ctx_is_a_user_error(capsys, tiny_llama_dir, book, tmp_path):
    line = one_line_error(
        capsys,
        "eval",
        "perplexity",
        "--data",
        str(book),
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "384",
        "--ctx",
        "512",
        "--no-pi",
        "--out",
        str(tmp_path / "x"),
        "--device",
        "cpu",
    )
    assert "--no-pi and --ctx" in line


def test_config_model_ctx():
    from evals.perplexity import PerplexityConfig

    assert PerplexityConfig(lengths=[512, 1024]).model_ctx == 1024
    assert PerplexityConfig(lengths=[512, 1024], ctx=4096).model_ctx == 4096
    assert PerplexityConfig(lengths=[512, 1024], pi=False).model_ctx is None  # the model as it is
    with pytest.raises(LlqaError, match="contradict"):
        PerplexityConfig(lengths=[512], ctx=1024, pi=False)


def test_report_puts_no_pi_with_the_native_model_and_pi_apart(capsys, results, tmp_path):
    """`llqa report` groups by model and RoPE factor: the no-PI result shares the base model's row (factor
    1, as a run inside the native context would), the PI result gets its own '(PI ×1.5)' row."""
    from report.inputs import collect
    from report.runs import group_runs
    from report.tasks import perplexity_tables

    tiny_llama_dir, book, root = results
    for name, extra in (("nopi", ("--no-pi",)), ("pi", ())):
        if not (root / name / "result.json").exists():
            score(capsys, tiny_llama_dir, book, root / name, *extra)
    runs = group_runs(collect([root / "nopi", root / "pi"]))
    assert sorted(r.rope_factor for r in runs) == [1.0, 1.5]
    labels = {r.rope_factor: r.label for r in runs}
    assert "PI" not in labels[1.0] and labels[1.5].endswith("(PI ×1.5)")
    [(table, lengths)] = perplexity_tables(runs)
    assert lengths == [128, 384]
    rows = {row[0]: row for row in table.rows}
    assert rows[labels[1.0]][1] == NATIVE and rows[labels[1.5]][1] == 384  # ctx column: what each ran at
    assert all(v is not None for row in table.rows for v in row[2:])


def test_cli_compile_flag_reaches_the_engine_and_bad_modes_fail_early(capsys, tiny_llama_dir, book, tmp_path):
    """The default CPU batch budget holds no full batch here, so nothing is compiled: this checks the
    plumbing (tests/test_perplexity_speed.py checks the compiled numbers)."""
    out = tmp_path / "c"
    score(capsys, tiny_llama_dir, book, out, "--compile", "default")
    this = json.loads((out / "result.json").read_text())["this_session"]
    assert this["compile"] == "default" and this["compiled_batches"] == 0
    line = one_line_error(
        capsys,
        "eval",
        "perplexity",
        "--data",
        str(book),
        "--model",
        "no/such-model",
        "--compile",
        "fast",
        "--out",
        str(tmp_path / "x"),
        "--device",
        "cpu",
    )
    assert "--compile fast is not a compile mode" in line  # before the model is looked up
