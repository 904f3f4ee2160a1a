"""The category rules against hand-labelled real questions.

The main check is `test_rules_agree_with_the_reader_labels`: 503 real questions from every question source
in ../shared/data, labelled by a reader before the rules were measured (benchmarks/longqa_categories/), held
to 90% agreement overall and 80% recall and precision in every category. The examples below are single
questions whose category a rule change must not move (the known misfires among them), with the conventions
of the labels: `character` asks who someone is or what they are like; `relation` asks how two people/things
stand to each other (not why, not an event befalling a relative); `summary` asks for an overview of the
whole document; `generation` asks to write a new text that is not a summary; everything else is `detail`.
"""

from collections import Counter
from dataclasses import replace

import pytest

from longqa.build import candidates
from longqa.categories import categorize, stem
from longqa.recipe import load_recipe
from longqa.schema import CATEGORIES
from longqa.sources import load_source
from tests.conftest import load_benchmark

NOVEL = [
    ("Who is Mark Hunter?", "character"),
    ("Who commits suicide?", "character"),
    ("Who is Buck's first master?", "character"),
    ("What kind of person is Uncle Silas?", "character"),
    ("How old is Maud when the story begins?", "character"),
    ("Whose house does Buck live in at the start?", "character"),
    ("What is the name of the ship's captain?", "character"),
    ("What is the relationship between Edward and Humphrey?", "relation"),
    ("Who is Maud's father?", "relation"),
    ("How is Silas related to Maud?", "relation"),
    ("Who does Alice marry at the end?", "relation"),
    ("What does Mark feel about his parents?", "relation"),
    ("How do Buck and Spitz feel about each other?", "relation"),
    ("Why did Jacob's brother leave the forest?", "detail"),  # a reason, though it names a brother
    ("What did Kirk think happened to his father after the message from the Officer?", "detail"),
    ('What is one of Jessie Jackson\'s "minuses" in relation to this issue?', "detail"),
    ("What best describes why Madison's initial feelings towards the Actuarvac were suspicious?", "detail"),
    ("How does Chapman feel about being relieved from his duty?", "detail"),  # an event
    ("How does Dennis feel about Randall?", "relation"),
    ("What would best describe Harriet's attitude towards Dorr?", "relation"),
    (
        "There is a Space Control Commission that regulates space travel and enforces laws related to it, True or "
        "False? Answer this question based on the world described in the document.",
        "detail",
    ),
    ("How is Silas related to Maud?", "relation"),
    ("How does Bobby's father die?", "detail"),
    ("Who kills Chimene's Father?", "character"),  # the kinship identifies the person asked for
    ("With whom does Pegeen fall in love?", "relation"),
    ("What is Sylvia's father's name?", "relation"),
    ("What does Otto do for a living?", "character"),
    ("Of the following options, what best summarizes this story?", "summary"),
    ("Who is Conan's rival for the throne?", "relation"),
    ("Where does this radio station take place?", "detail"),
    ("Why do more students tune into Mark's show?", "detail"),
    ("What does Paige jam into her microwave?", "detail"),
    ("What does Mark do with his radio station?", "detail"),
    ("How does the story end?", "detail"),
    ("In what year does the story begin?", "detail"),
    ("What was hidden in the chest?", "detail"),
    ("What is the name of the hotel Archie criticizes?", "detail"),
    ("What is the name of the pimp that is center of the sting operation?", "character"),
    ("What steps does Holmes take to find the thief?", "detail"),
    ("What is Paul Barnell's occupation?", "character"),
    ("Summarize the story.", "summary"),
    ("Give a brief summary of the novel.", "summary"),
    ("What is the story mainly about?", "summary"),
    (
        "Why did the Tr'en leave Korvin's door unlocked and a weapon nearby?\n\n (A) They were careless. "
        "\n (B) Their subconscious knew he was insoluble.",
        "detail",
    ),
    ("Who is the narrator of the story?\n\n (A) Korvin \n (B) The Ruler", "character"),
]
PAPER = [
    ("How did they obtain the dataset?", "detail"),
    ("What activation function do they use in their model?", "detail"),
    ("Who annotated the data?", "detail"),
    ("What is the size of the new dataset?", "detail"),
    ("Do they report results only on English data?", "detail"),
    ("Which baselines did they compare against?", "detail"),  # a list, no comparison asked
    ("What baselines is the model compared against?", "detail"),
    ("What different models for multimodal detection were proposed?", "detail"),
    ("Which is more useful, visual or textual features?", "relation"),
    ("How does their model differ from BERT?", "relation"),
    ("Is there a correlation between length and accuracy?", "relation"),
    ("What is the relationship between the two proposed losses?", "relation"),
    ("Please generate the Abstract section for this paper.", "summary"),
    ("Summarize the paper.", "summary"),
    ("What are the main contributions of this paper?", "detail"),
    ("Please write a review for this paper.", "generation"),
    ("Please generate the Related Work section for this paper, and you have to cite these papers:", "generation"),
    ("What did the authors write about the dataset?", "detail"),
]


@pytest.mark.parametrize(("question", "label"), NOVEL)
def test_novel_questions_match_hand_labels(question, label):
    assert categorize(question, "novel") == label


@pytest.mark.parametrize(("question", "label"), PAPER)
def test_paper_questions_match_hand_labels(question, label):
    assert categorize(question, "paper") == label


def test_source_hint_wins_and_is_checked():
    assert categorize("Who is Buck?", "novel", hint="summary") == "summary"
    with pytest.raises(ValueError):
        categorize("Who?", "novel", hint="plot")
    with pytest.raises(ValueError):
        categorize("Who?", "poem")


def test_rules_read_the_stem_of_multiple_choice_questions():
    q = "What happens next?\n\n (A) Who is he? \n (B) his father dies"
    assert stem(q) == "What happens next?"
    assert categorize(q, "novel") == "detail"


def test_rules_agree_with_the_reader_labels():
    """Agreement with 503 reader labels: at least 90% overall, and in every category at least 80% of the
    reader's items found (recall) and 80% of the rules' items right (precision)."""
    bench = load_benchmark("longqa_categories")
    rows = bench.load_labels()
    assert len(rows) >= 300 and {r["label"] for r in rows} == set(CATEGORIES)
    a = bench.agreement(rows, bench.predict(rows))
    assert a["overall"] >= 0.90, a
    for category, p in a["per_category"].items():
        assert p["labelled"] >= 25, (category, p)
        assert p["recall"] >= 0.80 and p["precision"] >= 0.80, (category, p)


def test_benchmark_report_lists_every_category(tmp_path):
    bench = load_benchmark("longqa_categories")
    out = tmp_path / "report.md"
    assert bench.main(["--write", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert all(f"| {c} |" in text for c in CATEGORIES) and "| heldout | 167 |" in text


def test_generation_tasks_in_real_leval_are_their_own_category_and_dropped(shared_data):
    """L-Eval paper_assistant: 23 abstracts (summary), 23 Related Work sections and 23 reviews (generation),
    none left as a detail question; a recipe without a generation quota drops them as `generation_task`."""
    data = load_source("leval", {"tasks": ["paper_assistant"]}, shared_data)
    got = [
        (qa.question.split(" section")[0].split(" for this")[0], categorize(qa.question, "paper")) for qa in data.qas
    ]
    assert sorted(set(got)) == [
        ("Please generate the Abstract", "summary"),
        ("Please generate the Related Work", "generation"),
        ("Please write a review", "generation"),
    ]
    assert sum(c == "generation" for _, c in got) == 46
    stats = Counter()
    cands = candidates([data], load_recipe("longqa-3k"), stats)
    # 46 less 6 repeats: three papers occur twice in the file (20 distinct documents), each repeat's
    # instructions are dropped as duplicate questions before they are categorised
    assert {c.category for c in cands} == {"summary"} and stats["generation_task"] == 40
    # a recipe that wants writing tasks gets them
    recipe = load_recipe("longqa-3k")
    wanting = replace(recipe, quotas={**recipe.quotas, "paper": {**recipe.quotas["paper"], "generation": 40}})
    stats = Counter()
    cands = candidates([data], wanting, stats)
    assert Counter(c.category for c in cands)["generation"] == 40 and stats["generation_task"] == 0


def test_validate_accepts_generation_and_still_refuses_unknown_categories():
    from longqa.validate import Report, Row, check_schema

    item = {
        "id": "x",
        "instruction": "Below is a paper. ... Please write a review for this paper.",
        "output": "The paper proposes ...",
        "category": "generation",
        "doc_type": "paper",
        "source": "leval",
        "doc_id": "leval-paper_assistant-0",
        "title": "A paper",
        "question": "Please write a review for this paper.",
        "answer_type": "abstractive",
        "n_tokens": 5000,
        "split": "train",
    }
    report = Report("x")
    assert check_schema(Row("train.jsonl", 1, item), report, "train") and not report.problems
    report = Report("x")
    assert not check_schema(Row("train.jsonl", 1, {**item, "category": "writing"}), report, "train")
    assert [p.code for p in report.problems] == ["category"]
