"""The bad-source-item rules of longqa/hygiene.py, each on the real file in ../shared/data where the bad item
occurs, with how much each rule drops there."""

import json
import re
from collections import Counter, defaultdict

import pytest

from longqa import hygiene
from longqa.build import usable_pairs
from longqa.recipe import load_recipe
from longqa.schema import QA, clean_text, content_id
from longqa.sources import load_source
from longqa.sources.leval import SCI_FI_TAIL, sci_fi_question

LONGQA_TASKS = ["scientific_qa", "paper_assistant", "quality", "sci_fi"]
MISALIGNED = "leval-scientific_qa-153504cbc00a95a2"


@pytest.fixture(scope="module")
def leval(shared_data):
    return load_source("leval", {"tasks": LONGQA_TASKS}, shared_data)


def test_misaligned_document_is_dropped_whole_and_no_other(leval):
    """The scientific_qa paper whose answers are shifted by one ("Do they report results only on English
    data?" -> "The authors showed few tweets ...") loses all 8 pairs; no other document of the four L-Eval
    tasks LongQA uses (67 documents, 468 pairs) loses any."""
    stats = Counter()
    kept = usable_pairs(leval.qas, stats)
    assert stats["misaligned_document"] == 8
    assert {q.doc_id for q in leval.qas} - {q.doc_id for q in kept} == {MISALIGNED}
    pairs = [q for q in leval.qas if q.doc_id == MISALIGNED]
    assert pairs[1].question == "Do they report results only on English data?"
    assert pairs[1].answer.startswith("The authors showed few tweets")


def test_misalignment_rule_on_all_real_question_lists(shared_data):
    """Measured on every L-Eval task (424 documents) and NarrativeQA's 3,000 test questions (101 documents):
    besides the misaligned paper it flags only three multidoc_qa dialogues, whose answers reply to the next
    user turn by nature (not standalone pairs; no LongQA task uses them)."""
    flagged = []
    for path in sorted((shared_data / "leval").glob("*/*.jsonl")):
        for line in path.open(encoding="utf-8"):
            row = json.loads(line)
            if hygiene.misaligned(row["instructions"], row["outputs"]):
                flagged.append(f"{path.stem}-{content_id(clean_text(row['input']))}")
    assert sorted(flagged) == [
        "multidoc_qa-7352c7b36689964b",
        "multidoc_qa-d843611d3661bbfe",
        "multidoc_qa-f9ec0ed1b1f8765d",
        "scientific_qa-153504cbc00a95a2",
    ]
    by_doc = defaultdict(list)
    for line in (shared_data / "narrativeqa" / "test_qaps_3000.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        by_doc[row["document_id"]].append((row["question"], row["answers"][0]))
    assert len(by_doc) == 101
    assert not [d for d, pairs in by_doc.items() if hygiene.misaligned(*zip(*pairs, strict=True))]


def test_a_question_asked_twice_keeps_its_first_answer_in_source_order(leval):
    """scientific_qa asks "What features are extracted?" twice on one paper with two annotators' answers: the
    first in the file is kept, although the other sorts first."""
    stats = Counter()
    kept = usable_pairs(leval.qas, stats)
    answers = [q.answer for q in kept if q.question == "What features are extracted?"]
    assert answers == ["Sentiment, Morality, Style, Words embeddings"]
    # 8 scientific_qa questions asked twice with another answer (a 9th is inside the misaligned paper) and one
    # paper_assistant instruction on a paper listed twice with two different reviews
    assert stats["repeated_question"] == 9 and stats["duplicate_question"] == 31
    dup = [QA("d", "Who?", "Zed"), QA("d", "who", "Zed"), QA("d", "Who?", "Amy"), QA("e", "Who?", "Cy")]
    stats = Counter()
    assert [q.answer for q in usable_pairs(dup, stats)] == ["Zed", "Cy"]
    assert stats == {"duplicate_question": 1, "repeated_question": 1}


def test_markup_never_becomes_a_title(leval):
    """quality's "TIME and the WOMAN" opens with `<!-- $Id: header.txt 236 ... -->`: removed from the text."""
    doc = next(d for d in leval.documents.values() if d.title == "TIME and the WOMAN")
    assert "<!--" not in doc.text and doc.text.startswith("TIME and the WOMAN")
    assert not any("<!--" in d.title or "<!--" in d.text for d in leval.documents.values())


def test_magazine_articles_are_not_framed_as_books(leval):
    """quality's Slate pieces (no byline) are dropped with their 41 questions; its 12 stories stay."""
    titles = {d.title for d in leval.documents.values() if d.doc_id.startswith("leval-quality-")}
    assert len(titles) == 12 and "The Flytrap Blame Game" not in titles
    assert leval.dropped["not_a_story"] == 41
    assert any("'The Flytrap Blame Game' has no byline" in n for n in leval.notes)


def test_sci_fi_questions_take_one_form(leval, shared_data):
    form = re.compile(r"^(?!Question\s*\d)[^\n]+[^,.], " + re.escape(SCI_FI_TAIL) + "$")
    sci_fi = [q for q in leval.qas if q.doc_id.startswith("leval-sci_fi-")]
    assert len(sci_fi) == 64 and all(form.match(q.question) and q.answer_type == "yes_no" for q in sci_fi)
    assert all(q.question.count("True or False?") == 1 for q in sci_fi)
    questions = {q.question for q in sci_fi}
    assert (
        "There exists a group of hybrid creatures, referred to as sealmen, who are half-human and half-seal "
        f"in Arctic, {SCI_FI_TAIL}" in questions
    )  # a bare statement in the file
    assert f"There is no liquid water on the moon, {SCI_FI_TAIL}" in questions  # was "Question3: ..."
    notes = " ".join(leval.notes)
    assert "2 question(s) repaired (bare statement)" in notes and "2 question(s) repaired (doubled suffix)" in notes
    assert "11 question(s) repaired ('QuestionN:' prefix stripped)" in notes
    assert sci_fi_question(f"X is Y, {SCI_FI_TAIL}") == (f"X is Y, {SCI_FI_TAIL}", None)


def test_section_headings_are_not_paper_titles(leval):
    papers = [d for d in leval.documents.values() if d.doc_type == "paper"]
    assert len(papers) == 40 and all(d.title == "" for d in papers)  # L-Eval's papers lost their titles
    for line in (
        "Introduction",
        "1 INTRODUCTION",
        "2 MODELLING UNCERTAINTIES FROM DATA",
        "1. Introduction",
        "ABSTRACT",
    ):
        assert hygiene.is_heading(line), line
    for line in ("A PRINCESS OF MARS", "Attention Is All You Need", "LongLoRA: Efficient Fine-tuning"):
        assert not hygiene.is_heading(line), line
    assert hygiene.paper_title("Attention Is All You Need\nAbstract\nWe ...") == "Attention Is All You Need"


def test_untitled_papers_are_framed_without_a_title(tmp_path, leval):
    """An untitled paper's item says `(untitled)`, which the paper framing never shows; a recipe whose framing
    names the title drops untitled documents (`no_title`) instead of printing "(untitled)" into instructions."""
    from longqa.build import Candidate, candidates, make_item

    recipe = load_recipe("longqa-3k")
    stats = Counter()
    cands = candidates([leval], recipe, stats)
    paper = next(c for c in cands if c.doc.doc_type == "paper")
    item = make_item(paper, "train")
    assert item["title"] == hygiene.UNTITLED and hygiene.UNTITLED not in item["instruction"]
    assert isinstance(paper, Candidate)
    recipe.framing["paper"] = "Paper {title}:\n{document}\n{question}"
    stats = Counter()
    assert not [c for c in candidates([leval], recipe, stats) if c.doc.doc_type == "paper"]
    assert stats["no_title"] > 0
