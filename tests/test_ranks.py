"""Data-parallel evals (llqa.ranks): ranks share the cells of passkey and LongChat lines, rank 0 merges.

Ranks are started as torchrun would start them (RANK / WORLD_SIZE in the environment), one after the other
in this process: a rank other than 0 logs its share and returns, rank 0 logs its share, waits for the rest
and writes the result, which must equal a single-process run's."""

from __future__ import annotations

import json
import threading
import time

import pytest

from evals.longchat import LongEvalConfig, run_longeval
from evals.passkey import PasskeyConfig, run_passkey
from llqa.ranks import RankedStore, all_cells, share


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def _keys(path):
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_share_partitions_in_order():
    items = list(range(7))
    parts = [share(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert share(items, 0, 1) == items


def test_rank0_waits_for_the_other_ranks_cells(tmp_path, monkeypatch):
    _as_rank(monkeypatch, 1, 2)
    r1 = RankedStore(tmp_path, "t", {"a": 1})
    _as_rank(monkeypatch, 0, 2)
    r0 = RankedStore(tmp_path, "t", {"a": 1})
    r0.add("k0", {"v": 0})

    def late():
        time.sleep(0.3)
        r1.add("k1", {"v": 1})

    writer = threading.Thread(target=late)
    writer.start()
    merged = r0.merge(["k0", "k1"], poll_s=0.01)
    writer.join()
    assert merged["k1"]["v"] == 1 and set(r0.main.done) == {"k0", "k1"}
    assert _keys(tmp_path / "cells.jsonl") == ["k0", "k1"]


def test_leftover_rank_logs_of_another_configuration_are_ignored(tmp_path, monkeypatch):
    _as_rank(monkeypatch, 1, 2)
    RankedStore(tmp_path, "t", {"a": 1}).add("k", {"v": "old"})
    assert all_cells(tmp_path, "t", {"a": 2}) == {}
    assert all_cells(tmp_path, "t", {"a": 1})["k"]["v"] == "old"
    _as_rank(monkeypatch, 0, 1)
    assert "k" not in RankedStore(tmp_path, "t", {"a": 2}).done


def test_passkey_two_ranks_merge_to_the_single_process_result(tiny_loaded, tmp_path, monkeypatch):
    cfg = PasskeyConfig(lengths=[120, 200, 300], depths=[0.0, 1.0], trials=2, chat_template="none", max_new_tokens=4)
    single = run_passkey(tiny_loaded, cfg, tmp_path / "single", progress=False)
    _as_rank(monkeypatch, 1, 2)
    assert run_passkey(tiny_loaded, cfg, tmp_path / "dp", progress=False) is None
    assert not (tmp_path / "dp" / "result.json").exists()
    assert len(_keys(tmp_path / "dp" / "rank1" / "cells.jsonl")) == 6  # 12 trials, every other one
    _as_rank(monkeypatch, 0, 2)
    merged = run_passkey(tiny_loaded, cfg, tmp_path / "dp", progress=False, poll_s=0.01)
    assert merged == single
    result = json.loads((tmp_path / "dp" / "result.json").read_text())
    assert result["cells"] == 12 and result["summary"] == single
    assert (tmp_path / "dp" / "result.csv").read_text() == (tmp_path / "single" / "result.csv").read_text()
    for png in ("passkey_heatmap.png", "passkey_accuracy.png"):
        assert (tmp_path / "dp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_passkey_resumes_under_another_rank_count(tiny_loaded, tmp_path, monkeypatch):
    """Rank 1 of 3 finishes its share, then the run is resumed in one process: only the rest is generated."""
    import evals.harness as harness

    cfg = PasskeyConfig(lengths=[120, 200], depths=[0.0, 0.5, 1.0], trials=1, chat_template="none", max_new_tokens=4)
    single = run_passkey(tiny_loaded, cfg, tmp_path / "single", progress=False)
    _as_rank(monkeypatch, 1, 3)
    assert run_passkey(tiny_loaded, cfg, tmp_path / "dp", progress=False) is None
    _as_rank(monkeypatch, 0, 1)
    generated = []
    real = harness.generate_greedy

    def counting(model, tok, prompts, *a, **k):
        generated.extend(prompts)
        return real(model, tok, prompts, *a, **k)

    monkeypatch.setattr(harness, "generate_greedy", counting)
    assert run_passkey(tiny_loaded, cfg, tmp_path / "dp", progress=False) == single
    assert len(generated) == 6 - 2  # rank 1 of 3 had trials 1 and 4 of the 6


def test_lines_two_ranks_merge_to_the_single_process_result(tiny_loaded, tmp_path, monkeypatch):
    def cfg():
        return LongEvalConfig(
            task="lines", sizes=[3, 6], generate=True, cases=3, chat_template="none", max_new_tokens=4
        )

    single = run_longeval(tiny_loaded, cfg(), tmp_path / "single", progress=False)
    _as_rank(monkeypatch, 1, 2)
    assert run_longeval(tiny_loaded, cfg(), tmp_path / "dp", progress=False) is None
    assert not (tmp_path / "dp" / "result.json").exists()
    assert len(_keys(tmp_path / "dp" / "rank1" / "cells.jsonl")) == 3  # 6 cases, every other one
    _as_rank(monkeypatch, 0, 2)
    rows = run_longeval(tiny_loaded, cfg(), tmp_path / "dp", progress=False, poll_s=0.01)
    assert rows == single
    result = json.loads((tmp_path / "dp" / "result.json").read_text())
    assert result["cells"] == 6 and result["summary"]["by_n"] == single
    assert (tmp_path / "dp" / "lines_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outputs = {c["key"]: c["output"] for c in map(json.loads, (tmp_path / "single" / "cells.jsonl").open())}
    assert {c["key"]: c["output"] for c in map(json.loads, (tmp_path / "dp" / "cells.jsonl").open())} == outputs
