"""`llqa eval perplexity / pg19 / proof-pile` end to end: real SmolLM2 on a real novel, result files,
user errors as one line."""

from __future__ import annotations

import json
import math

import pytest

from conftest import llqa_call, run_llqa


def one_line_error(capsys, *args: str) -> str:
    code, _, err = llqa_call(capsys, *args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_smollm2_on_a_real_novel_improves_with_longer_windows(smollm2, shared_data, tmp_path):
    """Alice in Wonderland, its first 2,048 tokens, stride 448 (kept cheap on CPU): at L=512 every token
    outside the first window has 64..511 tokens of context; at L=2048 the single window holds the whole
    excerpt, so each token sees everything before it. Longer context must not make perplexity worse. (At
    L=4096 the excerpt fills no window: not a measurement at 4096, see the next test.)"""
    from evals.perplexity import PerplexityConfig, local_documents, run

    docs, info = local_documents(shared_data / "gutenberg_novels" / "pg11.txt")
    cfg = PerplexityConfig(lengths=[512, 2048], stride=448, max_tokens=2048)
    out = run(smollm2, docs, cfg, tmp_path, data_info=info, show_progress=False)
    by_length = {r["length"]: r for r in out.rows}
    short, long = by_length[512], by_length[2048]
    assert short["scored_tokens"] == long["scored_tokens"] == 2047  # the same tokens, each once
    for r in (short, long):
        assert math.isfinite(r["ppl"]) and 3 < r["ppl"] < 100  # a sane English-text perplexity
        assert 0.3 < r["bits_per_byte"] < 2.0
    assert long["ppl"] <= short["ppl"]
    result = json.loads(out.result_path.read_text())
    assert result["semantics"].startswith("Each document is tokenized") and result["model"]["params"] > 1e8
    assert result["data"]["documents"] == ["pg11.txt"] and result["data"]["bos"] is False


def test_cli_happy_path_folder_and_table(tiny_llama_dir, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "one.txt").write_text("It was the best of times, it was the worst of times. " * 20)
    (folder / "two.txt").write_text("Call me Ishmael. Some years ago, never mind how long precisely. " * 20)
    (folder / "empty.txt").write_text("")
    (folder / "notes.md").write_text("not read: only --glob '*.txt' files are")
    out = tmp_path / "out"
    r = run_llqa(
        "eval",
        "perplexity",
        "--data",
        str(folder),
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "64,128",
        "--stride",
        "32",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    assert "window ppl" in r.stdout and "bits/byte" in r.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["documents"] == ["one.txt", "two.txt"]
    assert set(result["summary"]) == {"64", "128"} and result["config"]["stride"] == 32
    # the context the model ran at: its native 256, since the longest length (128) needs no interpolation
    assert result["config"]["model_ctx"] == 256 and result["device"].startswith("cpu")
    csv = (out / "result.csv").read_text().splitlines()
    assert csv[0].startswith("length,scoring,stride") and len(csv) == 3
    cells = (out / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 4 and json.loads(cells[0])["key"].endswith("|64")


def test_cli_proof_pile_local_copy(tiny_llama_dir, tmp_path, capsys, shared_data):
    book = (shared_data / "gutenberg_novels" / "pg16.txt").read_text()
    path = tmp_path / "proofpile_test.jsonl"
    rows = [
        {"text": book[i * 3000 : i * 3000 + n], "meta": {"set_name": "fixture"}}
        for i, n in enumerate([3000, 200, 2500, 4000, 100])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pp"
    code, stdout, err = llqa_call(
        capsys,
        "eval",
        "proof-pile",
        "--data",
        str(path),
        "--model",
        str(tiny_llama_dir),
        "--num-docs",
        "2",
        "--min-tokens",
        "300",
        "--seed",
        "3",
        "--lengths",
        "128",
        "--stride",
        "64",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    sample = result["data"]["sample"]
    assert sample["seed"] == 3 and sample["selected"] == 2 and len(sample["document_ids"]) == 2
    assert result["data"]["documents"] == sample["document_ids"]
    assert result["config"]["max_tokens"] == 300
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert all(c["doc_tokens"] == 300 and c["scored_tokens"] == 299 for c in cells)


@pytest.mark.parametrize("command", ["perplexity", "pg19", "proof-pile"])
def test_help_states_the_semantics(capsys, command):
    code, out, _ = llqa_call(capsys, "eval", command, "--help")
    flat = " ".join(out.split())
    assert code == 0 and "exactly once" in flat and "all-tokens" in flat and "bits per byte" in flat


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, tiny_llama_dir):
    model = ["--model", str(tiny_llama_dir), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "is empty" in one_line_error(capsys, "eval", "perplexity", "--data", str(empty), *model)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Café crème, naïve façade.".encode("latin-1"))
    assert "is not UTF-8" in one_line_error(capsys, "eval", "perplexity", "--data", str(latin), *model)
    table = tmp_path / "rows.jsonl"
    table.write_text(json.dumps({"body": "some text", "id": 1}) + "\n")
    line = one_line_error(capsys, "eval", "perplexity", "--data", str(table), *model)
    assert "no field 'text'" in line and "body" in line and "--text-field" in line
    line = one_line_error(
        capsys,
        "eval",
        "perplexity",
        "--data",
        str(table),
        "--text-field",
        "body",
        "--lengths",
        "128",
        "--stride",
        "256",
        *model,
    )
    assert "not longer than the stride 256" in line
    assert "no such file" in one_line_error(capsys, "eval", "perplexity", "--data", str(tmp_path / "nope"), *model)
    assert "comma-separated" in one_line_error(
        capsys, "eval", "perplexity", "--data", str(table), "--lengths", "4k", *model
    )
    for command in ("perplexity", "pg19"):
        line = one_line_error(capsys, "eval", command, "--data", str(table), "--max-docs", "0", *model)
        assert "--max-docs must be at least 1, got 0" in line
    line = one_line_error(capsys, "eval", "perplexity", "--data", str(table), "--lengths", "100000000", *model)
    assert "window length 100,000,000 is longer than the 16,777,216 tokens" in line
    assert "--ctx must be between 1 and 16,777,216" in one_line_error(capsys, "info", "--ctx", "1" + "0" * 23)
    assert "--ctx must be between 1" in one_line_error(capsys, "info", "--ctx", "0")


def test_a_changed_book_is_refused_and_overwrite_scores_it_afresh(tiny_llama_dir, tmp_path, capsys, shared_data):
    """Score a book, delete 50 of its lines, rerun into the same --out: refused (not the old number for the
    new text); --overwrite gives the number a fresh run gives. The same for `eval pg19 --data FOLDER`."""
    lines = (shared_data / "gutenberg_novels" / "pg1342.txt").read_bytes().split(b"\r\n")[200:330]  # CRLF
    book = tmp_path / "books" / "pg1342.txt"
    book.parent.mkdir()
    book.write_bytes(b"\r\n".join(lines))
    args = ["--model", str(tiny_llama_dir), "--device", "cpu", "--no-progress", "--lengths", "128", "--stride", "64"]

    def score(command: str, out: str, *more: str) -> float:
        code, _, err = llqa_call(capsys, "eval", command, "--data", str(book.parent), *args, "--out", out, *more)
        assert code == 0, err
        return json.loads((tmp_path / out / "result.json").read_text())["summary"]["128"]["ppl"]

    for command in ("perplexity", "pg19"):
        book.write_bytes(b"\r\n".join(lines))
        out = str(tmp_path / command)
        before = score(command, out)
        book.write_bytes(b"\r\n".join(lines[:40] + lines[90:]))  # 50 lines fewer
        line = one_line_error(capsys, "eval", command, "--data", str(book.parent), *args, "--out", out)
        assert "holds a perplexity run with a different configuration: the text of pg1342.txt" in line
        assert "--overwrite" in line
        after = score(command, out, "--overwrite")
        assert after == pytest.approx(score(command, str(tmp_path / f"{command}-fresh")), rel=1e-9) != before


def test_a_length_no_document_fills_is_a_warning_and_no_number(tiny_llama_dir, tmp_path, capsys, shared_data):
    """A ~1,500-token text at --lengths 256,65536: 256 is measured; 65536 is a warning, a 'not reached' row
    and reached false in result.json and result.csv, never a perplexity."""
    text = (shared_data / "gutenberg_novels" / "pg11.txt").read_text()[3000:9000]
    path = tmp_path / "excerpt.txt"
    path.write_text(text)
    out = tmp_path / "out"
    code, stdout, err = llqa_call(
        capsys,
        "eval",
        "perplexity",
        "--data",
        str(path),
        "--model",
        str(tiny_llama_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--lengths",
        "256,65536",
        "--stride",
        "128",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "warning: L=65536: not measured — no document has a full window of 65,536 tokens" in " ".join(err.split())
    (row,) = [ln for ln in stdout.splitlines() if "65536" in ln and "│" in ln]
    assert "not reached" in row and "0/1" in row
    result = json.loads((out / "result.json").read_text())
    assert result["summary"]["65536"]["reached"] is False and result["summary"]["65536"]["ppl"] is None
    assert result["summary"]["256"]["reached"] is True and result["summary"]["256"]["ppl"] > 1
    assert 1000 < result["data"]["longest_document_tokens"] < 3000
    header, *rows = (out / "result.csv").read_text().splitlines()
    cols = header.split(",")
    last = dict(zip(cols, rows[1].split(","), strict=True))
    assert last["reached"] == "False" and last["ppl"] == "" and last["full_documents"] == "0"


def test_hub_datasets_offline_name_the_dataset_and_the_fix(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    for command, repo in [("pg19", "emozilla/pg19-test"), ("proof-pile", "hoskinson-center/proof-pile")]:
        r = run_llqa("eval", command, "--lengths", "512", "--out", str(tmp_path / command), env=env)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert repo in lines[0] and "--data PATH" in lines[0]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, shared_data):
    """Real data parallelism: `torchrun --nproc_per_node 2` on CPU gives the single-process numbers."""
    import subprocess
    import sys

    books = tmp_path / "books"
    books.mkdir()
    for name in ("pg11", "pg16", "pg5200"):
        (books / f"{name}.txt").write_text((shared_data / "gutenberg_novels" / f"{name}.txt").read_text()[:6000])
    common = [
        "eval",
        "perplexity",
        "--data",
        str(books),
        "--model",
        "random:tiny",
        "--lengths",
        "128,256",
        "--stride",
        "64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    one = run_llqa(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29561",
            "-m",
            "cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one" / "result.json").read_text())["summary"]
    b = json.loads((tmp_path / "two" / "result.json").read_text())["summary"]
    assert a.keys() == b.keys()
    for k in a:
        assert b[k]["ppl"] == pytest.approx(a[k]["ppl"], rel=1e-6)
    assert len((tmp_path / "two" / "rank1" / "cells.jsonl").read_text().splitlines()) == 3
