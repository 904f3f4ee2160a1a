"""RULER's synthetic tasks: prompts against RULER's own template text, exact lengths, metrics on worked
examples, seeded determinism, the QA tasks on files in SQuAD's and HotpotQA's real schemas."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from evals.generation import prompt_frame
from evals.ruler import (
    SYNTHETIC_TASKS,
    TASKS,
    RulerBuilder,
    effective_length,
    essay_sentences,
    match_all,
    postprocess_pred,
    read_essays,
    read_qa,
    score_sample,
    string_match_all,
    string_match_part,
)
from llqa.errors import LlqaError

# ---- RULER's text, quoted verbatim (NVIDIA/RULER @ c3f5e3b) -------------------------------------------
# scripts/data/synthetic/constants.py, TASKS['niah']
RULER_NIAH_TEMPLATE = """Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?"""  # noqa: E501
RULER_NIAH_PREFIX = """ The special magic {type_needle_v} for {query} mentioned in the provided text are"""
# scripts/data/synthetic/constants.py, TASKS['variable_tracking']
RULER_VT_TEMPLATE = """Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."""  # noqa: E501
RULER_VT_PREFIX = """ Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: """  # noqa: E501
# scripts/data/synthetic/constants.py, TASKS['common_words_extraction']
RULER_CWE_TEMPLATE = """Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"""  # noqa: E501
RULER_CWE_PREFIX = """ Answer: The top 10 words that appear most often in the list are:"""
# scripts/data/synthetic/constants.py, TASKS['freq_words_extraction']
RULER_FWE_TEMPLATE = """Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?"""  # noqa: E501
RULER_FWE_PREFIX = """ Answer: According to the coded text above, the three most frequently appeared words are:"""
# scripts/data/synthetic/constants.py, TASKS['qa']
RULER_QA_TEMPLATE = """Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"""  # noqa: E501
RULER_QA_PREFIX = """ Answer:"""
# scripts/data/synthetic/niah.py
RULER_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
RULER_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# scripts/data/synthetic/qa.py
RULER_DOCUMENT_PROMPT = "Document {i}:\n{document}"
# niah.py, generate_input_output(), with one answer (num_needle_q * num_needle_v == 1):
#     template = template.replace('Some', 'A'); template.replace('are all', 'is'); .replace('are', 'is')
#     template.replace('answers', 'answer'); type_needle_v = type_needle_v[:-1]
# worked by hand for numbers:
SINGULAR_NIAH_HEAD = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n"
)
SINGULAR_NIAH_TAIL = (
    "\nWhat is the special magic number for {query} mentioned in the provided text?"
    " The special magic number for {query} mentioned in the provided text is"
)


def ruler_parts(template: str, prefix: str, **fields) -> tuple[str, str]:
    """RULER's prompt (template + answer prefix, prepare.py with the `base` model template) split at
    {context}: (text before the context, text after it)."""
    before, after = (template + prefix).split("{context}")
    return before.format(**fields), after.format(**fields)


@pytest.fixture(scope="module")
def essays(shared_data):
    text, _ = read_essays(shared_data / "paul_graham_essays" / "PaulGrahamEssays", max_chars=400_000)
    return text


@pytest.fixture(scope="module")
def builder(smollm2_tokenizer, essays):
    return RulerBuilder(smollm2_tokenizer, prompt_frame(smollm2_tokenizer, False), essays=essays)


@pytest.fixture(scope="module")
def chat_builder(smollm2_tokenizer, essays):
    return RulerBuilder(smollm2_tokenizer, prompt_frame(smollm2_tokenizer, True), essays=essays)


def text_of(builder, case) -> str:
    return builder.pieces.tokenizer.decode(case.ids)


# ---- templates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_multikey_2"])
def test_single_answer_niah_prompt_is_rulers_singular_text(builder, task):
    case = builder.build(task, 2048, 0)
    text = text_of(builder, case)
    key = case.info["keys"][0]
    assert text.startswith(SINGULAR_NIAH_HEAD)
    assert text.endswith(SINGULAR_NIAH_TAIL.format(query=key))
    # the needle keeps the plural, as niah.py formats it with args.type_needle_v
    assert RULER_NEEDLE.format(type_needle_v="numbers", key=key, value=case.outputs[0]) in text


def test_uuid_niah_prompt(builder):
    case = builder.build("niah_single_3", 2048, 1)
    text = text_of(builder, case)
    key = case.info["keys"][0]
    assert text.startswith(SINGULAR_NIAH_HEAD.replace("number", "uuid"))
    assert text.endswith(SINGULAR_NIAH_TAIL.replace("number", "uuid").format(query=key))
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", case.outputs[0])
    assert RULER_NEEDLE.format(type_needle_v="uuids", key=key, value=case.outputs[0]) in text
    # niah_multikey_3: every line of the haystack is a needle with a UUID key and value, one of them asked
    case = builder.build("niah_multikey_3", 2048, 1)
    text = text_of(builder, case)
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    lines = text.split("\n")[1:-1]
    assert all(re.fullmatch(f"One of the special magic uuids for {uuid_re} is: {uuid_re}\\.", x) for x in lines[:-1])
    assert text.endswith(SINGULAR_NIAH_TAIL.replace("number", "uuid").format(query=case.info["keys"][0]))
    assert RULER_NEEDLE.format(type_needle_v="uuids", key=case.info["keys"][0], value=case.outputs[0]) in text


@pytest.mark.parametrize("task", ["niah_multivalue", "niah_multiquery"])
def test_plural_niah_prompt_is_rulers_text(builder, task):
    case = builder.build(task, 2048, 2)
    text = text_of(builder, case)
    keys = case.info["keys"]
    query = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    head, tail = ruler_parts(RULER_NIAH_TEMPLATE, RULER_NIAH_PREFIX, type_needle_v="numbers", query=query)
    assert text.startswith(head) and text.endswith(tail)
    assert len(case.outputs) == 4
    for value in case.outputs:
        assert text.count(value) == 1
        assert any(RULER_NEEDLE.format(type_needle_v="numbers", key=k, value=value) in text for k in keys)


def test_multikey_1_has_four_keys_one_asked(builder):
    case = builder.build("niah_multikey_1", 2048, 0)
    text = text_of(builder, case)
    needles = re.findall(r"One of the special magic numbers for (\S+) is: (\d{7})\.", text)
    assert len(needles) == 4 and len({k for k, _ in needles}) == 4
    assert (case.info["keys"][0], case.outputs[0]) in needles


def test_noise_and_needle_haystacks_are_rulers_lines(builder):
    lines = text_of(builder, builder.build("niah_single_1", 2048, 0)).split("\n")
    body = lines[1:-1]  # between the task line and the question
    assert sum(line == RULER_NOISE for line in body) >= len(body) - 3  # needle, the cut last line
    assert sum(line.startswith("One of the special magic numbers for ") for line in body) == 1
    assert RULER_NOISE.startswith(body[-1])  # the last noise line is cut at a token
    lines = text_of(builder, builder.build("niah_multikey_2", 2048, 0)).split("\n")[1:-1]
    assert all(re.fullmatch(r"One of the special magic numbers for \S+ is: \d{7}\.", x) for x in lines[:-1])


def test_essay_haystack_holds_the_essays_with_needles_at_sentence_starts(builder, essays):
    case = builder.build("niah_multiquery", 4096, 3)
    text = text_of(builder, case)
    context = text[len("Some special magic numbers are hidden within the following text. ") :]
    for needle in re.findall(r"One of the special magic numbers for \S+ is: \d{7}\.", context):
        before = context[: context.index(needle)].rstrip()
        assert before.endswith((".", "!", "?", '"', ")", "afterwards.")), before[-40:]
    stripped = re.sub(r" ?One of the special magic numbers for \S+ is: \d{7}\. ?", " ", context)
    assert re.sub(r"\s+", " ", essays)[:2000].split(" ")[3:40] == stripped.split("\n", 1)[1].split(" ")[3:40]


def test_vt_prompt_is_rulers_text_with_its_one_shot_example(builder):
    case = builder.build("vt", 2048, 0)
    text = text_of(builder, case)
    names = case.outputs
    value = re.search(rf"VAR {names[0]} = (\d+)\n", text).group(1)
    head, tail = ruler_parts(RULER_VT_TEMPLATE, RULER_VT_PREFIX, query=value, num_v=5)
    assert text.endswith(tail)
    shot, task = text.split("\n\n" + head, 1)
    # variable_tracking.py: example (3-letter names, its own answer after "they are: ") + "\n" + "\n" + task
    assert shot.startswith(RULER_VT_TEMPLATE.split("{context}")[0])
    shot_names = re.search(r"they are:  ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3})$", shot).groups()
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]
    positions = [task.index("\n" + line + "\n") for line in chain]
    assert positions == sorted(positions)  # the chain in order
    assert f"VAR {shot_names[1]} = VAR {shot_names[0]} \n" in shot
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)


@pytest.mark.parametrize("length", [2048, 8192])
def test_cwe_prompt_and_frequencies(builder, length):
    case = builder.build("cwe", length, 0)
    text = text_of(builder, case)
    head, tail = ruler_parts(RULER_CWE_TEMPLATE, RULER_CWE_PREFIX)
    assert text.startswith(head) and text.endswith(tail)
    shot, task = text.split("\n" + head, 1)
    assert re.search(r"are: 1\. \S+ 2\. \S+ .* 10\. \S+$", shot)  # the example's answer, numbered
    entries = re.findall(r"(\d+)\. (.+?)(?= \d+\.|\nQuestion)", task)
    assert [int(n) for n, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(w for _, w in entries[:-1])  # the last entry may be cut
    common, uncommon = (6, 1) if length < 4096 else (30, 3)  # common_words_extraction.py
    assert sorted(case.outputs) == sorted(w for w, _ in counts.most_common(10))
    assert all(counts[w] >= common - 1 for w in case.outputs)
    assert all(c <= uncommon for w, c in counts.items() if w not in case.outputs)


def test_fwe_prompt_and_frequencies(builder):
    case = builder.build("fwe", 4096, 0)
    text = text_of(builder, case)
    head, tail = ruler_parts(RULER_FWE_TEMPLATE, RULER_FWE_PREFIX)
    assert text.startswith(head) and text.endswith(tail)
    words = text[len(head) : -len(tail)].split(" ")
    ranked = [w for w, _ in Counter(words).most_common(4)]
    assert ranked[0] == "..." and ranked[1:] == case.outputs
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in case.outputs)


def test_chat_template_wraps_the_task_and_the_answer_prefix_starts_the_reply(chat_builder, smollm2_tokenizer):
    case = chat_builder.build("niah_single_1", 2048, 0)
    text = smollm2_tokenizer.decode(case.ids)
    head, tail = text.split(SINGULAR_NIAH_HEAD)
    assert head.endswith("<|im_start|>user\n")
    key = case.info["keys"][0]
    question = f"What is the special magic number for {key} mentioned in the provided text?"
    assert tail.endswith(
        question + "<|im_end|>\n<|im_start|>assistant\n"
        f" The special magic number for {key} mentioned in the provided text is"
    )


# ---- lengths and determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("template", [False, True])
def test_every_prompt_has_exactly_length_minus_tokens_to_generate(builder, chat_builder, template):
    b = chat_builder if template else builder
    tok = b.pieces.tokenizer
    for task in SYNTHETIC_TASKS:
        for length in (1024, 4096):
            case = b.build(task, length, 5)
            assert len(case.ids) == length - TASKS[task].tokens_to_generate, (task, length)
            assert case.max_new_tokens == TASKS[task].tokens_to_generate
            # the pieces join at whitespace: tokenizing the whole text gives the same ids
            assert tok(tok.decode(case.ids), add_special_tokens=False)["input_ids"] == case.ids, (task, length)


def test_tokens_to_generate_are_rulers():
    # scripts/data/synthetic/constants.py: 'tokens_to_generate' of niah, variable_tracking,
    # common_words_extraction, freq_words_extraction, qa
    expected = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
    assert {t.kind: t.tokens_to_generate for t in TASKS.values()} == expected
    assert list(TASKS) == [
        "niah_single_1",
        "niah_single_2",
        "niah_single_3",
        "niah_multikey_1",
        "niah_multikey_2",
        "niah_multikey_3",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
        "cwe",
        "fwe",
        "qa_1",
        "qa_2",
    ]  # scripts/config_tasks.sh


def test_samples_are_seeded_and_independent_of_order(smollm2_tokenizer, essays):
    def fresh():
        return RulerBuilder(smollm2_tokenizer, prompt_frame(smollm2_tokenizer, False), essays=essays[:40_000])

    a, b = fresh(), fresh()
    for task in SYNTHETIC_TASKS:
        first = [a.build(task, 1024, i, seed=7) for i in range(3)]
        alone = b.build(task, 1024, 2, seed=7)  # built without samples 0 and 1 before it
        assert alone.ids == first[2].ids and alone.outputs == first[2].outputs, task
        assert a.build(task, 1024, 2, seed=8).ids != first[2].ids, task
        assert first[0].ids != first[1].ids, task


def test_too_short_length_is_a_user_error(builder):
    with pytest.raises(LlqaError, match="use lengths above"):
        builder.build("vt", 600, 0)
    with pytest.raises(LlqaError, match="use lengths above"):
        builder.build("niah_multikey_1", 200, 0)


def test_essay_tasks_without_essays_are_a_user_error(smollm2_tokenizer, monkeypatch):
    import evals.ruler as ruler

    monkeypatch.setattr(ruler, "find_essays", lambda: None)
    with pytest.raises(LlqaError, match="--haystack"):
        read_essays(None, 1000)
    bare = RulerBuilder(smollm2_tokenizer, prompt_frame(smollm2_tokenizer, False))
    with pytest.raises(LlqaError, match="--haystack"):
        bare.build("niah_single_2", 2048, 0)
    assert len(bare.build("niah_single_1", 2048, 0).ids) == 2048 - 128  # the noise tasks need no essays


def test_essay_sentences():
    text = 'He said "stop." Then\n\nhe left! Why? [1] Done (really.) End'
    assert essay_sentences(text) == ['He said "stop."', "Then he left!", "Why?", "[1] Done (really.)", "End"]


# ---- metrics ----------------------------------------------------------------------------------------


def test_string_match_all_worked_examples():
    # one sample, 2 of 3 references found (case-insensitive): 66.67; a second sample with all: mean 83.33
    assert string_match_all(["The numbers are 123 and 456."], [["123", "456", "789"]]) == 66.67
    assert string_match_all(["The numbers are 123 and 456.", "ABC-def"], [["123", "456", "789"], ["abc-DEF"]]) == 83.33
    assert string_match_all(["nothing"], [["x"]]) == 0.0
    assert match_all("Answer: apple, BANANA", ["apple", "banana", "cherry", "date"]) == 0.5


def test_string_match_part_worked_examples():
    # any reference counts: sample 1 finds "Paris", sample 2 none, sample 3 "the Seine"
    preds = ["It is Paris.", "London", "THE SEINE river"]
    refs = [["Paris", "City of Light"], ["Rome"], ["the Seine", "Seine"]]
    assert string_match_part(preds, refs) == 66.67


def test_postprocessing_and_score_sample():
    assert postprocess_pred("  7 \x00 8\t9 \n") == "7 \n 8\n9"
    assert score_sample("niah_multivalue", " 1234567, 7654321\x1f", ["1234567", "7654321", "1", "0000000"]) == 0.75
    assert score_sample("qa_1", "Denver Broncos", ["Carolina Panthers", "denver broncos"]) == 1.0


@pytest.mark.parametrize(
    "avg, threshold, expected",
    [
        ({4096: 90.0, 8192: 86.0, 16384: 80.0, 32768: 88.0}, 85.6, 8192),  # stops at the first failure
        ({4096: 85.6, 8192: 90.0}, 85.6, 0),  # must exceed, as RULER's "exceeds"
        ({4096: 99.0, 8192: 99.0}, 85.6, 8192),
        ({4096: 50.0}, 40.0, 4096),
    ],
)
def test_effective_length(avg, threshold, expected):
    assert effective_length(avg, threshold) == expected


# ---- QA tasks (local copies in the release schemas) ------------------------------------------------


def squad_file(path):
    """A SQuAD 2.0 dev file in the release's schema: data / paragraphs / qas with is_impossible."""

    def para(i, q):
        return {
            "context": f"Paragraph {i} of the article about the city number {i}. " * 6,
            "qas": [
                {"question": q, "id": f"q{i}", "answers": [{"text": f"city number {i}", "answer_start": 30}],
                 "is_impossible": False},
                {"question": "unanswerable?", "id": f"u{i}", "answers": [], "plausible_answers": [],
                 "is_impossible": True},
            ],
        }  # fmt: skip

    data = {
        "version": "v2.0",
        "data": [
            {"title": "A", "paragraphs": [para(i, f"Which city is paragraph {i} about?") for i in range(5)]},
            {"title": "B", "paragraphs": [para(i, f"Which city is paragraph {i} about?") for i in range(5, 40)]},
        ],
    }
    path.write_text(json.dumps(data))


def hotpot_file(path):
    """A HotpotQA dev (distractor) file: a list of {question, answer, context: [[title, [sentences]]]}."""
    items = [
        {
            "_id": f"h{i}",
            "question": f"Where was person {i} born?",
            "answer": f"Town {i}",
            "type": "bridge",
            "level": "hard",
            "supporting_facts": [[f"Person {i}", 0]],
            "context": [[f"Person {i}", [f"Person {i} was born in Town {i}.", " They moved."]]]
            + [[f"Filler {i}-{j}", [f"Filler text {j} " * 20]] for j in range(3)],
        }
        for i in range(30)
    ]
    path.write_text(json.dumps(items))


def test_qa_tasks_from_local_copies(smollm2_tokenizer, tmp_path):
    squad_file(tmp_path / "dev-v2.0.json")
    hotpot_file(tmp_path / "hotpotqa.json")
    squad, _ = read_qa(tmp_path, "squad")
    hotpot, _ = read_qa(tmp_path, "hotpotqa")
    assert len(squad.qas) == 40 and len(hotpot.qas) == 30  # impossible questions dropped
    b = RulerBuilder(smollm2_tokenizer, prompt_frame(smollm2_tokenizer, False), qa={"squad": squad, "hotpotqa": hotpot})
    tok = smollm2_tokenizer
    for task, data in (("qa_1", squad), ("qa_2", hotpot)):
        for index in (0, 3):
            case = b.build(task, 2048, index)
            assert len(case.ids) == 2048 - 32
            item = data.qas[index]  # qa.py: sample i asks question i
            text = tok.decode(case.ids)
            head, tail = ruler_parts(RULER_QA_TEMPLATE, RULER_QA_PREFIX, query=item["query"])
            assert text.startswith(head + "Document 1:\n") and text.endswith(tail)
            for gold in item["context"]:  # every gold document whole, in RULER's document format
                assert re.search(RULER_DOCUMENT_PROMPT.format(i=r"\d+", document=re.escape(data.docs[gold])), text)
            assert case.outputs == item["outputs"]
    assert score_sample("qa_2", "Town 3", hotpot.qas[3]["outputs"]) == 1.0


def test_qa_without_data_is_a_user_error(tmp_path):
    with pytest.raises(LlqaError, match="--qa-data"):
        read_qa(None, "squad")
    with pytest.raises(LlqaError, match="neither"):
        read_qa(tmp_path, "hotpotqa")


# ---- the run (evals.harness) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def test_run_writes_scores_per_task_and_length_and_resumes(tiny_loaded, tmp_path, monkeypatch):
    import evals.ruler as ruler
    from evals.harness import GenerationOptions, run_task
    from evals.ruler import RulerConfig, RulerTask

    # fewer tokens to generate keep the random model's babble short (prompts grow to keep L exact)
    monkeypatch.setitem(ruler.TOKENS_TO_GENERATE, "niah", 8)
    monkeypatch.setitem(ruler.TOKENS_TO_GENERATE, "fwe", 6)

    cfg = RulerConfig(tasks=["fwe", "niah_single_1"], lengths=[400, 500], samples=2, seed=1)
    options = GenerationOptions(chat_template="none")
    result = run_task(tiny_loaded, RulerTask(cfg), options, tmp_path, progress=False, ctx=493)
    summary = result.summary
    # fwe at 500 (a 494-token prompt) exceeds ctx: skipped and counted; niah's 492 tokens fit. The average
    # and the effective length use 400 only, where every task was scored
    assert summary["skipped"] == 2 and summary["evaluated"] == 6
    assert [r["average"] is None for r in summary["by_length"]] == [False, True]
    cells = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert {c["key"] for c in cells} == {
        f"{t}|len={n}|sample={i}" for t in cfg.tasks for n in (400, 500) for i in (0, 1)
    }
    for c in cells:
        assert c["prompt_tokens"] == c["length"] - TASKS[c["ruler_task"]].tokens_to_generate
        if not c["skipped"]:
            assert c["score"] == score_sample(c["ruler_task"], c["output"], c["references"])
    by_cell = {(r["task"], r["length"]): r for r in summary["by_task_length"]}
    for task in cfg.tasks:
        mine = [c for c in cells if c["ruler_task"] == task and c["length"] == 400]
        expected = string_match_all([c["output"] for c in mine], [c["references"] for c in mine])
        assert round(by_cell[(task, 400)]["score"], 2) == expected  # RULER's own aggregate
    avg = sum(by_cell[(t, 400)]["score"] for t in cfg.tasks) / 2
    assert summary["by_length"][0]["average"] == pytest.approx(avg)
    assert summary["effective_length"] == (400 if avg > 85.6 else 0)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["task"] == "ruler" and "string_match_all" in saved["semantics"]
    assert saved["config"]["lengths"] == [400, 500] and saved["config"]["tasks"] == ["niah_single_1", "fwe"]
    assert (tmp_path / "ruler_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (tmp_path / "result.csv").read_text().splitlines()
    assert csv[0] == "task,length,samples,skipped,score" and any(line.startswith("average,400,") for line in csv)
    # resume: nothing left to generate, the same summary
    again = run_task(tiny_loaded, RulerTask(cfg), options, tmp_path, progress=False, ctx=493)
    assert again.summary == summary

    # llqa report: the average and effective length per run, and every task x length
    from report import write_report

    rep = write_report([tmp_path], tmp_path / "report")
    tables = {t.kind: t for t in rep.tables}
    assert tables["ruler"].columns == ["run", "ctx", "effective length", "400", "500"]
    assert tables["ruler"].rows[0][1:] == [493, summary["effective_length"], pytest.approx(avg), None]
    per_task = {row[1]: row[2:] for row in tables["ruler_tasks"].rows}
    assert per_task["fwe"] == [pytest.approx(by_cell[("fwe", 400)]["score"]), None]  # fwe at 500 was skipped
    assert per_task["niah_single_1"][1] == pytest.approx(by_cell[("niah_single_1", 500)]["score"])
    assert "Other results" not in rep.markdown.read_text()


def test_config_errors():
    from evals.ruler import RulerConfig

    with pytest.raises(LlqaError, match="unknown RULER task"):
        RulerConfig(tasks=["niah_single_9"])
    with pytest.raises(LlqaError, match="--samples"):
        RulerConfig(samples=0)
    with pytest.raises(LlqaError, match="--threshold"):
        RulerConfig(threshold=101)
    assert RulerConfig().resolved_lengths(32768) == [4096, 8192, 16384, 32768]
    assert RulerConfig().resolved_lengths(2048) == [2048]


# ---- CLI --------------------------------------------------------------------------------------------


def test_cli_ruler_happy_path_and_errors(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    import evals.ruler as ruler
    from conftest import llqa_call

    monkeypatch.setitem(ruler.TOKENS_TO_GENERATE, "niah", 4)
    monkeypatch.setitem(ruler.TOKENS_TO_GENERATE, "fwe", 4)
    common = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--no-progress"]
    out = tmp_path / "r"
    code, stdout, err = llqa_call(
        capsys, "eval", "ruler", *common, "--ctx", "512", "--lengths", "400", "--samples", "1",
        "--tasks", "fwe,niah_single_1", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "effective length (average > 85.6)" in stdout and "niah_single_1" in stdout and "average" in stdout
    assert json.loads((out / "result.json").read_text())["summary"]["tasks"] == ["niah_single_1", "fwe"]

    code, _, err = llqa_call(capsys, "eval", "ruler", *common, "--tasks", "niah_single_9", "--out", str(out))
    assert code == 2 and "unknown RULER task" in err
    monkeypatch.setattr(ruler, "find_essays", lambda: None)
    code, _, err = llqa_call(capsys, "eval", "ruler", *common, "--tasks", "niah_single_2", "--out", str(tmp_path / "e"))
    assert code == 2 and "--haystack" in err and "Traceback" not in err
    code, _, err = llqa_call(capsys, "eval", "ruler", *common, "--tasks", "qa_1", "--out", str(tmp_path / "q"))
    assert code == 2 and "--qa-data" in err
    code, stdout, _ = llqa_call(capsys, "eval", "ruler", "--help")
    assert code == 0 and "string_match_all" in stdout and "--haystack" in stdout


def test_prefix_sharing_counts():
    """benchmarks/ruler_prefix_sharing.py's counts on a worked example: the prefix common to all prompts
    is reused by all but the first; a radix cache reuses each prompt's longest prefix with an earlier one."""
    from conftest import load_benchmark

    measure = load_benchmark("ruler_prefix_sharing").measure
    assert measure([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 9]]) == {"tokens": 11, "batch_common": 4, "radix": 2 + 3}
    assert measure([[7, 8]]) == {"tokens": 2, "batch_common": 0, "radix": 0}
