"""The rules that give each question its category. First matching rule wins, in this order:

1. `summary` — the source says so (NarrativeQA plot summaries, arXiv abstracts), or the question asks for
   the whole document in brief: "summar(y|ize|ise)...", "summate", "synopsis", "what is the story/paper
   about", "main idea/point/theme of", or asks to write/generate the abstract.
2. `generation` — the question asks to write a new text that is not a summary: a review of the paper,
   its Related Work (or another) section, an essay, a letter, a continuation. These are writing tasks
   whose reference answer is one person's text (a review's opinions; a Related Work section discussing
   cited papers the document does not contain), not an answer the document supports; a recipe without a
   `generation` quota (longqa-3k) drops them, counted in the manifest as `generation_task`.
3. `relation` — the question asks how two people, or two things, stand to each other. Novels:
   - the word "relationship", "relation(s) to/between/with/towards", "related to", "each other",
     "one another";
   - kinship, love or friendship asked for: "Who is Johanna's father?", "What is Sylvia's father's
     name?", "Who is the mother of Cathoris?", "Who did Philip marry?", "With whom does Pegeen fall in
     love?", "Who raised Lothair?" — the kin phrase is the one asked about, so not "Who kills Chimene's
     father?" (`character`) nor "What is Kitty's husband doing ...?";
   - one person's feelings, attitude or opinion towards another person ("feel about Kirk", "attitude
     towards Dorr", "opinion of Mrs. Jacobsen"), not towards an event or a thing ("feel about being
     relieved", "feelings towards the Actuarvac");
   - an explicit comparison: "compare", "contrast", "differ", "different from/than".
   Papers: "relationship", "relation(s) between/with", "correlat...", "differ"/"difference",
   "different from/than", "versus"/"vs.", "similar to", "each other", "trade-off", or "which is
   better/more ..., X or Y". Not: "compare(d) to/against" when the question asks for a list (baselines),
   "different" as an adjective ("what different models"), "related to"/"in relation to" (a topic).
   Never a why-question: "Why did Cytherea marry Manston?" asks for a reason (`detail`), and never an
   event that befalls a relative ("What happened to his father?", "How does Bobby's father die?").
4. `character` — novels only: who-questions ("who", "whom", "whose", "which detective"), a person's
   name or nickname ("what is her name", "the name of the captain"; not of a place or thing), age, job
   or nature ("how old", "occupation", "what does Otto do for a living", "where does Walter work",
   "personality", "what kind of person").
5. `detail` — everything else (what / why / how / where / when about one fact of the document).

Multiple-choice questions are judged by their stem (the text before the first listed option).
`benchmarks/longqa_categories.py` measures these rules against 503 hand-labelled real questions, and
`tests/test_longqa_categories.py` holds them to 90% agreement overall and 80% recall and precision in every category.
"""

from __future__ import annotations

import re

from longqa.schema import CATEGORIES, DOC_TYPES

_I = re.I


def _compile(*patterns: str) -> list[re.Pattern]:
    return [re.compile(p, _I) for p in patterns]


SUMMARY = _compile(
    r"\bsummar(y|ies|i[sz]e[sd]?|i[sz]ing)\b",
    r"\bsummat(e|es|ed|ion)\b",
    r"\bsynopsis\b",
    r"\bwhat (is|was) (the|this) (story|book|novel|paper|article|play|film|movie) (mainly |mostly )?about\b",
    r"\bmain (idea|ideas|point|points|theme|themes|plot) of\b",
    r"\b(write|generate|give|provide)\b.*\babstract\b",
    r"\btl;?dr\b",
)
# An instruction to write: the verb leads the request ("Please write a review ...", "Generate the
# Related Work section ..."), so "What did the author write about X?" stays a question.
GENERATION = _compile(
    r"^\W*(please\s+|now\s+|can you\s+|could you\s+)?(write|generate|compose|draft|create|produce|continue)\b",
)

_KIN = (
    r"father|mother|parents?|sons?|daughters?|brothers?|sisters?|siblings?|wife|wives|husbands?|"
    r"spouses?|uncles?|aunts?|cousins?|nephews?|nieces?|grand(father|mother|son|daughter|parents?|children|child)|"
    r"fianc[eé]e?|lovers?|girlfriend|boyfriend|(best |old |close )?friends?|enem(y|ies)|rivals?|mentor|"
    r"guardian|step(father|mother|son|daughter|brother|sister|parent)s?|widow(er)?|love|sweetheart"
)
# The kin noun phrase a question asks about: possessed ("Johanna's father", "Goodwin's old friends",
# "her brother") or "the father of X" — not "the friend that Parnell talks about" (a who-question), and
# not a kin noun that only starts the subject of another question ("Kitty's husband doing", "the mob boss
# whose cousin is ...").
_POSS = r"((?-i:[A-Z])[\w.-]* )*(?-i:[A-Z])[\w-]*('s|')|his|her|their"
_KIN_END = (
    r"('s)?( (first |full |last )?names?)?\s*([?.,]|$|\b(at|in|of|for|on|to|from|before|after|when|that|during|with)\b)"
)
_KIN_NP = rf"(({_POSS}) ([\w-]+ ){{0,2}}?({_KIN}){_KIN_END}|the ([\w-]+ )?({_KIN}) of\b)"
# Love and marriage as the thing asked: "Who did Philip marry?", "What girl does Dmitri fall in love with?"
_LOVE = (
    r"marr(y|ies|ied|ying)|fall(s|en)? in love|fell in love|in love with|engaged to|betrothed|attracted to|"
    r"propose[sd]? to|raised|adopt(s|ed)?|brought up"
)
_PERSON = (
    r"man|woman|men|women|boy|girl|person|people|character|narrator|hero|heroine|villain|king|queen|"
    r"prince|princess|captain|doctor|lady|lord|servant|child|baby|pimp|thief|killer|murderer|leader|"
    r"detective|officer|soldier|priest|teacher|student|owner|stranger|skipper|commander|ruler|guard|"
    r"clerk|crew|husband|wife"
)
# A person as the object of a feeling: a capitalised name, a pronoun, or a kin/person noun; not an event
# ("about being relieved") nor "the <Thing>" ("towards the Actuarvac").
_SOMEONE = (
    # (?-i:...): the patterns are case-insensitive, but a name is told by its capital letter
    rf"((Mr|Mrs|Ms|Miss|Dr|Lady|Lord|Sir|Captain)\.? )?(?-i:[A-Z])[\w'-]*(?<!ing)\b"
    rf"|(him|her|them|each other|one another)\b"
    rf"|((his|her|their|the|a|an|(?-i:[A-Z])\w*'s?) ({_KIN}|{_PERSON}))\b"
)
# Novels: words that name a relation; they decide alone.
RELATION_NOVEL = _compile(
    r"\brelationships?\b",
    r"(?<!\bin )\brelations?\b(?! to (this|the|that|these|those) (issue|topic|matter|question|subject)s?\b)",
    rf"\brelated (to|by) ({_SOMEONE})",  # "related to Maud"; not "laws related to it"
    r"\beach other\b",
    r"\bone another\b",
)
# Novels: a relation asked for (kinship, love, feelings towards someone, a comparison), unless the
# question is about an event ("What happened to his father?", "How does Bobby's father die?").
RELATION_ASKED = _compile(
    # kinship or friendship asked for: "Who is Johanna's father?", "What is Lisbeth's brother's name?"
    rf"^\W*(who|what|which \w+) (is|was|are|were) (the (first |full |last )?name of )?{_KIN_NP}",
    # love asked for: "Who did Philip marry?", "What girl ..."; not "What does Emilie find out after being married?"
    rf"^\W*(who|whom|(what|which) ({_PERSON}))\b[^?]*\b({_LOVE})\b",
    rf"\bwith whom\b[^?]*\b({_LOVE})\b",
    rf"\bfeel(s|ing|ings)? (about|for|towards?) ({_SOMEONE})",
    rf"\b(attitude|opinion|view|views|impression|sentiment)s? (of|about|on|to|towards?) ({_SOMEONE})",
    rf"\bthink (of|about) ({_SOMEONE})\s*[?.]?\s*$",
    r"\b(compar(e|es|ed|ing|ison)|contrast(s|ed|ing)?|differ(s|ed)?|differences? between|different (from|than|to))\b",
)
RELATION_PAPER = _compile(
    r"\brelationships?\b",
    r"\brelations? (between|with)\b",
    r"\bcorrelat\w*",
    r"\bdiffer(s|ed|ence|ences)?\b",
    r"\bdifferent (from|than)\b",
    r"\bversus\b",
    r"\bvs\.?(?=\s)",
    r"\bsimilar(ity|ities)? (to|between|with)\b",
    r"\b(are|is) similar\b",
    r"\beach other\b",
    r"\btrade-?offs?\b",
    r"\bcompar(e|es|ed|ing|ison|isons)\b(?! (to|against|with)\s*[?]?$)(?!.*\bbaselines?\b)",
    r"^\W*which\b[^?]*\b(more|less|better|worse|best|worst)\b[^?]*,[^?]*\bor\b",
)
CHARACTER = _compile(
    r"^\W*who\b",
    r"\bwho('s| is| was| are| were| does| did| has| had| will| would| could)\b",
    r"\bwhom\b",
    r"\bwhose\b",
    r"\bwhat (is|was|are|were) (his|her|their) (nick)?names?\b",
    rf"\b(nick)?names? of (the|a|an|this|that|his|her|their) (\w+'s )?({_PERSON})\b",
    r"^\W*what\b[^?]*\bnicknames?\b",
    rf"^\W*which ({_PERSON}|character|person|detective|officer|member)\b",
    r"\bhow old\b",
    r"\bpersonality\b",
    r"\bwhat kind of (person|man|woman|people|girl|boy)\b",
    r"\bcharacter\b",
    r"\b(occupation|profession|professiion)\b",
    r"\bjob\b",
    r"\b(do|does|did) (\w+ )?for a living\b",
    r"^\W*where (does|did|do) \w+( \w+)? work\b",
    r"\b(his|her|their) (job|age|name)\b",
)

# "Uncle Silas", "Father Brown": a kinship word used as a title before a name is part of the name.
_KIN_TITLE = re.compile(r"\b(Uncle|Aunt|Father|Mother|Brother|Sister|Cousin)\s+(?=[A-Z])")
_OPTION = re.compile(r"(\n\s*\(?A[).]|\s\(A\))")
# A why-question asks for a reason, even when it names a relation ("Why did Cytherea marry Manston?").
_WHY = re.compile(r"^\W*(why|for what reason|what (is|was) the (main |most likely )?reason)\b", _I)
# An event befalling someone ("What happened to his father?", "How does Bobby's father die?").
_EVENT = re.compile(
    r"^\W*(what|how)\b[^?]*\b(happen(s|ed)?|die[sd]?|killed|passes away|passed away)\b",
    _I,
)


def stem(question: str) -> str:
    """The question without its listed options (multiple choice) — the part the rules read."""
    m = _OPTION.search(question)
    return question[: m.start()] if m else question


def _any(patterns: list[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def is_relation(question: str, doc_type: str) -> bool:
    """Does the (stem of the) question ask how two people or things stand to each other?"""
    if _WHY.search(question):
        return False
    if doc_type == "paper":
        return _any(RELATION_PAPER, question)
    q = _KIN_TITLE.sub("", question)
    return _any(RELATION_NOVEL, q) or (not _EVENT.search(q) and _any(RELATION_ASKED, q))


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
    if _any(GENERATION, q):
        return "generation"
    if is_relation(q, doc_type):
        return "relation"
    if doc_type == "novel" and _any(CHARACTER, q):
        return "character"
    return "detail"
