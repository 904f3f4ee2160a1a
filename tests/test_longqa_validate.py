"""`llqa validate`: a clean build passes; every corruption of a copy is reported (hypothesis), never a
traceback; token counts decompose exactly; near-duplicate documents are found."""

import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli import main
from longqa import dedup, framing
from longqa.build import build
from longqa.recipe import load_recipe
from longqa.tokens import load_counter
from longqa.validate import validate

# the shipped framing strings, as TOML (JSON string escapes are valid TOML)
FRAMING = "[framing]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in load_recipe("longqa-3k").framing.items())

RECIPE = (
    """
name = "tiny-real"
description = "L-Eval papers and stories (tests)."
min_tokens = 2048
max_tokens = 32768
max_per_doc = 4
test_fraction = 0.3
[quotas.paper]
detail = 12
[quotas.novel]
detail = 12
[sources.leval]
tasks = ["scientific_qa", "quality"]
"""
    + FRAMING
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.toml").write_text(RECIPE)
    build(load_recipe(d / "tiny.toml"), d / "set", source_dir=shared_data, seed=0)
    return d / "set"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit_item(path: Path, k: int, fn) -> None:
    lines = _lines(path)
    item = json.loads(lines[k])
    fn(item)
    lines[k] = (json.dumps(item, ensure_ascii=False) + "\n").encode()
    path.write_bytes(b"".join(lines))


STRING_FIELDS = [
    "id",
    "instruction",
    "output",
    "category",
    "doc_type",
    "source",
    "doc_id",
    "title",
    "question",
    "answer_type",
    "split",
]


def corrupt(d: Path, kind: str, k: int, rnd: random.Random) -> str:
    """Apply one corruption to the build in `d`; return the error code validate must report."""
    train = d / "train.jsonl"
    n = len(_lines(train))
    k = k % n
    if kind == "utf8":
        lines = _lines(train)
        # invalid UTF-8 and nothing else: no line end inside (a CR is reported as a json problem first)
        noise = bytes(rnd.randrange(256) for _ in range(20)).replace(b"\n", b"").replace(b"\r", b"")
        lines[k] = b'{"id": "\xff\xfe' + noise + b"\n"
        train.write_bytes(b"".join(lines))
        return "utf8"
    if kind == "truncated":
        lines = _lines(train)
        cut = lines[k][: rnd.randrange(1, len(lines[k]) - 2)]
        lines[k] = cut + b"\n"
        train.write_bytes(b"".join(lines))
        try:  # a cut inside a multi-byte character leaves a line that is not even UTF-8
            cut.decode("utf-8")
        except UnicodeDecodeError:
            return "utf8"
        return "json"
    if kind == "not-object":
        train.write_bytes(train.read_bytes() + rnd.choice([b"[1, 2]\n", b"null\n", b'"text"\n', b"3\n"]))
        return "json"
    if kind == "huge-line":
        train.write_bytes(train.read_bytes() + b'{"id": "' + b"x" * 3_000_000 + b"\n")
        return "json"
    if kind == "wrong-type":
        key = rnd.choice(STRING_FIELDS + ["n_tokens"])
        _edit_item(train, k, lambda it: it.__setitem__(key, rnd.choice([None, [1], {"a": 1}, True, 1.5])))
        return "type"
    if kind == "missing-field":
        key = rnd.choice(STRING_FIELDS + ["n_tokens"])
        _edit_item(train, k, lambda it: it.pop(key))
        return "missing-field"
    if kind == "unknown-category":
        _edit_item(train, k, lambda it: it.__setitem__("category", rnd.choice(["plot", "Summary", "", "x" * 99])))
        return "category"
    if kind == "empty":
        key = rnd.choice(["output", "question", "title", "doc_id", "id", "source"])
        _edit_item(train, k, lambda it: it.__setitem__(key, rnd.choice(["", " ", "\n\t "])))
        return "empty"
    if kind == "control-char":
        key = rnd.choice(["output", "title", "source"])
        _edit_item(train, k, lambda it: it.__setitem__(key, it[key] + rnd.choice(["\x00", "\x07", "\x1b", "\x7f"])))
        return "control-char"
    if kind == "duplicate-line":
        lines = _lines(train)
        train.write_bytes(b"".join(lines + [lines[k]]))
        return "duplicate-id"
    if kind == "leak":  # an item moved to the other split: its document is now in both
        lines = _lines(train)
        doc_ids = [json.loads(x)["doc_id"] for x in lines]
        k = next((k + i) % n for i in range(n) if doc_ids.count(doc_ids[(k + i) % n]) > 1)
        item = json.loads(lines.pop(k))
        item["split"] = "test"
        train.write_bytes(b"".join(lines))
        test = d / "test.jsonl"
        test.write_bytes(test.read_bytes() + (json.dumps(item, ensure_ascii=False) + "\n").encode())
        return "split-leak"
    if kind == "parquet-byte":
        p = d / rnd.choice(["train.parquet", "test.parquet", "README.md"])
        data = bytearray(p.read_bytes())
        i = rnd.randrange(len(data))
        data[i] = (data[i] + 1 + rnd.randrange(255)) % 256
        p.write_bytes(bytes(data))
        return "checksum"
    if kind == "framing":

        def edit(it):
            head = it["instruction"].index("Memorize")
            it["instruction"] = (
                it["instruction"][:head]
                + rnd.choice(["Remember", "", "memorize"])
                + it["instruction"][head + len("Memorize") :]
            )

        _edit_item(train, k, edit)
        return "framing"
    if kind == "answer-in-question":  # on a question that does not offer its answer as a choice
        from longqa.schema import answer_in_question

        qs = [json.loads(x)["question"] for x in _lines(train)]
        k = next((k + i) % n for i in range(n) if answer_in_question(qs[(k + i) % n], qs[(k + i) % n]))
        _edit_item(train, k, lambda it: it.__setitem__("output", it["question"]))
        return "answer-in-question"
    if kind == "extractive":

        def edit(it):
            it["answer_type"] = "extractive"
            it["output"] = "zqx " + " ".join(rnd.choice(["purple", "llama", "quartz"]) for _ in range(4))

        _edit_item(train, k, edit)
        return "extractive-not-found"
    if kind == "over-quota":  # an extra distinct item in a full cell

        def edit(it):
            it["id"] = it["id"] + "-extra"
            it["question"] = it["question"] + " Explain."
            it["instruction"] = it["instruction"] + " Explain."

        lines = _lines(train)
        item = json.loads(lines[k])
        edit(item)
        train.write_bytes(b"".join(lines) + (json.dumps(item, ensure_ascii=False) + "\n").encode())
        return "quota"
    if kind == "manifest":
        (d / "manifest.json").write_bytes(rnd.choice([b"", b"{", b"\xff", b"[]"]))
        return "manifest"
    if kind == "manifest-fields":
        m = json.loads((d / "manifest.json").read_text())
        key, value = rnd.choice(
            [
                ("recipe", "x"),
                ("tokenizer", 5),
                ("files", []),
                ("recipe", {"framing": None}),
                ("recipe", {"framing": {"paper": "{bad}", "novel": "{document}{question}"}}),
            ]
        )
        m[key] = value
        (d / "manifest.json").write_text(json.dumps(m))
        return "manifest"
    raise AssertionError(kind)


KINDS = [
    "utf8",
    "truncated",
    "not-object",
    "huge-line",
    "wrong-type",
    "missing-field",
    "unknown-category",
    "empty",
    "control-char",
    "duplicate-line",
    "leak",
    "parquet-byte",
    "framing",
    "answer-in-question",
    "extractive",
    "over-quota",
    "manifest",
    "manifest-fields",
]


def test_clean_build_passes(clean):
    rep = validate(clean)
    assert rep.ok and rep.items == 24 and rep.errors == 0, rep.to_dict()["problems"][:3]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), k=st.integers(0, 1000), seed=st.integers(0, 2**16))
@example(kind="truncated", k=14, seed=878)  # found by CI: the cut falls inside a multi-byte character
def test_every_corruption_is_reported(clean, kind, k, seed):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "copy"
        shutil.copytree(clean, d)
        code = corrupt(d, kind, k, random.Random(seed))
        rep = validate(d, recount=False)
        codes = {c for (sev, c) in rep.counts if sev == "error"}
        assert not rep.ok and code in codes, (kind, rep.to_dict()["by_code"])


@pytest.mark.parametrize("kind", KINDS)
def test_each_corruption_kind_once(clean, kind, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(clean, d)
    code = corrupt(d, kind, 1, random.Random(0))
    rep = validate(d, recount=False)
    assert code in {c for (sev, c) in rep.counts if sev == "error"}


def test_token_counts_are_recounted(clean, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(clean, d)
    _edit_item(d / "test.jsonl", 0, lambda it: it.__setitem__("n_tokens", it["n_tokens"] + 1))
    rep = validate(d)
    assert {(p.code, p.file, p.line, p.field) for p in rep.problems if p.code == "n_tokens"} == {
        ("n_tokens", "test.jsonl", 1, "n_tokens")
    }
    assert "checksum" in {c for _, c in rep.counts}  # the edit also broke the manifest's sha256


def test_ctx_bound_and_cli_exit_codes(clean, tmp_path, capsys):
    longest = max(json.loads(x)["n_tokens"] for s in ("train", "test") for x in (clean / f"{s}.jsonl").open())
    with pytest.raises(SystemExit) as e:
        main(["validate", str(clean), "--ctx", str(longest - 1), "--no-recount", "--report", str(tmp_path / "r.json")])
    assert e.value.code == 1
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["by_code"] == {"error:too-long": 1}
    with pytest.raises(SystemExit) as e:
        main(["validate", str(tmp_path / "nope")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_bad_lines_via_cli_never_traceback(clean, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(clean, d)
    with open(d / "train.jsonl", "ab") as f:
        f.write(b"\xc3\x28 not utf8\n{broken json\n" + b"[" * 100_000 + b"\n")
    with pytest.raises(SystemExit) as e:
        main(["validate", str(d), "--no-recount"])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "utf8" in out and "json" in out and "Traceback" not in out


def test_single_file_with_recipe(clean):
    rep = validate(clean / "train.jsonl", recipe=str(clean.parent / "tiny.toml"), tokenizer="smollm2-135m")
    assert rep.ok and "framing" in rep.checked and "n_tokens recount" in rep.checked


def test_mojibake_is_a_warning(clean, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(clean, d)
    _edit_item(d / "train.jsonl", 0, lambda it: it.__setitem__("output", it["output"] + " wrestlerâ\x80\x94but"))
    rep = validate(d, recount=False)
    assert ("warning", "mojibake") in rep.counts and ("error", "mojibake") not in rep.counts


def test_validate_does_not_import_torch(clean):
    import subprocess
    import sys

    code = (
        "import sys; from longqa.validate import validate; r = validate(sys.argv[1]); "
        "assert r.ok; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(clean)], check=True)


# --------------------------------------------------------------------------- pure pieces


@pytest.fixture(scope="module")
def counter():
    return load_counter("smollm2-135m")


@settings(max_examples=25, deadline=None)
@given(
    start=st.integers(0, 200_000),
    length=st.integers(1, 3000),
    question=st.text(max_size=40),
    doc_type=st.sampled_from(["paper", "novel"]),
    title=st.text(max_size=10),
)
def test_head_and_rest_counts_add_up_to_the_whole(counter, shared_data, start, length, question, doc_type, title):
    from longqa.schema import clean_text
    from longqa.tokens import safe_split

    text = (shared_data / "narrativeqa" / "stories" / "pg215.txt").read_text()
    doc = clean_text(text[start % len(text) : start % len(text) + length]) or "x"
    f = framing.render(load_recipe("longqa-3k").framing[doc_type], title, doc, question)
    if counter.splittable and safe_split(f.head_doc, f.rest):
        assert sum(counter.count([f.head_doc, f.rest])) == counter.count([f.instruction])[0]


def test_framing_parse_inverts_render():
    t = load_recipe("longqa-3k").framing["novel"]
    f = framing.render(t, "Uncle {Silas}", "Maud lived at Knowl.", "Who is Maud?")
    assert framing.parse(t, "Uncle {Silas}", "Who is Maud?", f.instruction) == (f.head_doc, "Maud lived at Knowl.")
    assert framing.parse(t, "Other", "Who is Maud?", f.instruction) is None
    assert framing.parse(t, "Uncle {Silas}", "Who?", f.instruction) is None


def test_near_duplicate_documents(shared_data):
    text = (shared_data / "narrativeqa" / "stories" / "pg215.txt").read_text()[:60_000]
    other = (shared_data / "narrativeqa" / "stories" / "pg42243.txt").read_text()[:60_000]
    reformatted = " ".join(text.split()).replace(" the ", " The ", 50)
    prints = {"a": dedup.fingerprint(text), "b": dedup.fingerprint(reformatted), "c": dedup.fingerprint(other)}
    pairs = dedup.near_duplicate_pairs(prints)
    assert [(a, b) for a, b, _ in pairs] == [("a", "b")]
    assert dedup.clusters(["a", "b", "c"], pairs) == {"a": "a", "b": "a", "c": "c"}
