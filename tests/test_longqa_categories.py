"""The category rules against a hand-labelled sample of real questions (NarrativeQA, QASPER, L-Eval).

Labels were assigned by reading each question for what it asks, before running the rules: `character`
asks who someone is or what they are like; `relation` asks how two people/things stand to each other;
`summary` asks for an overview of the whole document; everything else is `detail`.
"""

import pytest

from longqa.categories import categorize, stem

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
    ("Why did Jacob's brother leave the forest?", "relation"),
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
    ("Which baselines did they compare against?", "relation"),
    ("How does their model differ from BERT?", "relation"),
    ("Is there a correlation between length and accuracy?", "relation"),
    ("What is the relationship between the two proposed losses?", "relation"),
    ("Please generate the Abstract section for this paper.", "summary"),
    ("Summarize the paper.", "summary"),
    ("What are the main contributions of this paper?", "detail"),
    ("Please write a review for this paper.", "detail"),
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
