"""The rules that give each question its category. First matching rule wins, in this order:

1. `summary` — the source says so (NarrativeQA plot summaries, arXiv abstracts), or the question asks for
   one: "summar(y|ize|ise)...", "synopsis", "what is the story/paper about", "main idea/point/theme of",
   or asks to write/generate the abstract.
2. `relation` — the question is about how two things stand to each other. Novels: kinship, marriage,
   friendship, love and enmity words (father, wife, friend, rival, in love, ...; not as a title before a
   name: "Uncle Silas"), "relationship", "related to", "between ... and", "feel about", "each other".
   Papers: "relationship", "relation(s) between/with", "correlat...", "compare"/"comparison",
   "differ..."/"difference", "versus"/"vs.", "between ... and" (not "related to": there it names a topic).
3. `character` — novels only: who-questions ("who", "whom", "whose"), a person's name ("what is her
   name", "the name of the captain"; not of a place or thing), age, job or nature ("how old",
   "personality", "what kind of person").
4. `detail` — everything else (what / why / how / where / when about one fact of the document).

Multiple-choice questions are judged by their stem (the text before the first listed option).
`tests/test_longqa_categories.py` checks these rules against a hand-labelled sample of real questions.
"""

from __future__ import annotations

import re

from longqa.schema import CATEGORIES, DOC_TYPES

_I = re.I

SUMMARY = [
    re.compile(p, _I)
    for p in (
        r"\bsummar(y|ies|i[sz]e[sd]?|i[sz]ing)\b",
        r"\bsynopsis\b",
        r"\bwhat (is|was) (the|this) (story|book|novel|paper|article|play|film|movie) (mainly |mostly )?about\b",
        r"\bmain (idea|ideas|point|points|theme|themes|plot) of\b",
        r"\b(write|generate|give|provide)\b.*\babstract\b",
        r"\btl;?dr\b",
    )
]

_KIN = (
    r"father|mother|parents?|sons?|daughters?|brothers?|sisters?|siblings?|wife|wives|husbands?|"
    r"spouses?|married|marry|marries|marrying|uncles?|aunts?|cousins?|nephews?|nieces?|grandfather|"
    r"grandmother|grandson|granddaughter|fianc[eé]e?|lovers?|girlfriend|boyfriend|friends?|"
    r"friendship|enem(y|ies)|rivals?|rivalry|mentor|guardian|"
    r"step(father|mother|son|daughter|brother|sister|parent)s?|"
    r"in love|fall(s|en)? in love|fell in love|engaged to|betrothed|widow(er)?"
)
RELATION_NOVEL = [
    re.compile(p, _I)
    for p in (
        rf"\b({_KIN})\b",
        r"\brelationships?\b",
        r"\brelat(ed|ion|ions|es) (to|between|with)\b",
        r"\bbetween \w[\w' .-]* and\b",
        r"\bfeel(s|ings?)? (about|for|towards?)\b",
        r"\beach other\b",
        r"\bone another\b",
    )
]
RELATION_PAPER = [
    re.compile(p, _I)
    for p in (  # not "related to": in papers it names a topic
        r"\brelationships?\b",
        r"\brelations? (between|with)\b",
        r"\bcorrelat\w*",
        r"\bcompar(e|es|ed|ing|ison|isons|able)\b",
        r"\bdiffer(s|ent|ence|ences)?\b",
        r"\bversus\b",
        r"\bvs\.?\b",
        r"\bbetween \w[\w' .-]* and\b",
    )
]
_PERSON = (
    r"man|woman|men|women|boy|girl|person|people|character|narrator|hero|heroine|villain|king|queen|"
    r"prince|princess|captain|doctor|lady|lord|servant|child|baby|pimp|thief|killer|murderer|leader|"
    r"detective|officer|soldier|priest|teacher|student|owner|stranger|young \w+|old \w+"
)
CHARACTER = [
    re.compile(p, _I)
    for p in (
        r"^\W*who\b",
        r"\bwho('s| is| was| are| were| does| did| has| had| will| would| could)\b",
        r"\bwhom\b",
        r"\bwhose\b",
        r"\bwhat (is|was|are|were) (his|her|their) names?\b",
        rf"\bnames? of (the|a|an|this|that|his|her|their) (\w+'s )?({_PERSON})\b",
        r"\bwhich (character|person)\b",
        r"\bhow old\b",
        r"\bpersonality\b",
        r"\bwhat kind of (person|man|woman|people|girl|boy)\b",
        r"\bcharacter\b",
        r"\boccupation\b",
        r"\bprofession\b",
        r"\b(his|her|their) (job|age|name)\b",
    )
]

# "Uncle Silas", "Father Brown": a kinship word used as a title before a name is part of the name.
_KIN_TITLE = re.compile(r"\b(Uncle|Aunt|Father|Mother|Brother|Sister|Cousin)\s+(?=[A-Z])")
_OPTION = re.compile(r"(\n\s*\(?A[).]|\s\(A\))")


def stem(question: str) -> str:
    """The question without its listed options (multiple choice) — the part the rules read."""
    m = _OPTION.search(question)
    return question[: m.start()] if m else question


def _any(patterns: list[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def categorize(question: str, doc_type: str, hint: str | None = None) -> str:
    """The category of one question over a document of `doc_type`; `hint` is a category the source
    fixes (e.g. "summary" for plot summaries) and wins over the rules."""
    if doc_type not in DOC_TYPES:
        raise ValueError(f"doc_type must be one of {DOC_TYPES}, got {doc_type!r}")
    if hint is not None:
        if hint not in CATEGORIES:
            raise ValueError(f"category hint must be one of {CATEGORIES}, got {hint!r}")
        return hint
    q = stem(question).strip()
    if _any(SUMMARY, q):
        return "summary"
    if _any(RELATION_NOVEL, _KIN_TITLE.sub("", q)) if doc_type == "novel" else _any(RELATION_PAPER, q):
        return "relation"
    if doc_type == "novel" and _any(CHARACTER, q):
        return "character"
    return "detail"
