"""The fair validators, as one table: what they must accept, and the opposites they must still reject.

Each row names the expected outcome (``accepted``/``kept`` or the rejection reason). Rows come
from issue 16's list — either/or and comparison questions, numbers across formats and scale
words, derived numbers the python check reproduces, computed numerical gold answers,
paraphrased long answers, reasoning limits that grow with the hop count, memory statements
without a claim or anchored on a common word — and each acceptance has a rejected twin.
Calculations run in the real sandbox (``synth.calculation.evaluate``), once per expression.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from synth.calculation import Calculation, evaluate
from synth.entities import Rejection
from synth.stages.memory import ChunkContext, MemoryChunk, StatementDraft, validate_statement
from synth.stages.questions import (
    _EXAMPLE_REPLIES,
    ClusterStatement,
    QuestionDraft,
    ValidQuestion,
    validate_question,
)
from synth.stages.reasoning import ReasoningConfig, second_filter

URL = {k: f"https://facts.example/{k}" for k in ("pop24", "pop23", "bridge", "jobs", "fest", "river")}
STATEMENTS = [
    ClusterStatement(
        id="s1", entity="Riverton", statement="Riverton had 38.2 million residents in 2024.", time="2024",
        doc_id="d1", source_url=URL["pop24"],
    ),
    ClusterStatement(
        id="s2", entity="Riverton", statement="Riverton had 38.01 million residents in 2023.", time="2023",
        doc_id="d2", source_url=URL["pop23"],
    ),
    ClusterStatement(
        id="s3", entity="Kestrel Bay Bridge",
        statement="The Kestrel Bay Bridge opened in 1998 and is 3,412 metres long.", doc_id="d3",
        source_url=URL["bridge"],
    ),
    ClusterStatement(
        id="s4", entity="Harbor City", statement="Harbor City's unemployment rate was 4.5% in 2024.",
        doc_id="d4", source_url=URL["jobs"],
    ),
    ClusterStatement(
        id="s5", entity="Lanternfall Festival",
        statement="The Lanternfall Festival counted 387,000 visits in 2024, up from 331,000 in 2023.",
        doc_id="d5", source_url=URL["fest"],
    ),
    ClusterStatement(
        id="s6", entity="Silvermere River", statement="The Silvermere River is 410 km long.", doc_id="d6",
        source_url=URL["river"],
    ),
]
S = {f"S{i}": s.id for i, s in enumerate(STATEMENTS, 1)}
REPORT = (
    "Riverton had 38.01 million residents in 2023 and 38.2 million in 2024. The Kestrel Bay Bridge, "
    "opened in 1998, is 3,412 metres long. The Lanternfall Festival counted 387,000 visits in 2024."
)


@dataclass(frozen=True)
class Q:
    """One question row: the draft, its style, its calculation, the expected outcome."""

    name: str
    style: str
    question: str
    answer: str
    cited: list[str]
    expected: str
    calculation: str | None = None
    max_chars: int = 400


QUESTION_CASES = [
    # -- numbers by value, across formats and scale words --------------------------------
    Q("scale word vs digits", "factual", "How many residents did the lakeside city have in 2024?",
      "38,200,000", ["S1"], "accepted"),
    Q("digits vs scale word", "factual", "How many residents did the lakeside city have in 2024?",
      "38.2 million", ["S1"], "accepted"),
    Q("bare digits", "factual", "How many residents did the lakeside city have in 2024?",
      "38200000", ["S1"], "accepted"),
    Q("another number", "factual", "How many residents did the lakeside city have in 2024?",
      "38.3 million", ["S1"], "ungrounded_answer"),
    Q("percent word vs sign", "factual", "What was the harbour town's unemployment rate in 2024?",
      "4.5 percent", ["S4"], "accepted"),
    Q("percentage as a fraction", "factual", "What was the harbour town's unemployment rate in 2024?",
      "0.045", ["S4"], "accepted"),
    Q("another percentage", "factual", "What was the harbour town's unemployment rate in 2024?",
      "45%", ["S4"], "ungrounded_answer"),
    Q("thousands separator dropped", "factual", "How long is the bridge that opened in 1998?",
      "3412 metres", ["S3"], "accepted"),
    # -- derived numbers: allowed when the python check reproduces them ------------------
    Q("derived without a check", "synthesis", "How did the lakeside city's population change from 2023 to 2024?",
      "It rose by 190,000.", ["S1", "S2"], "ungrounded_answer"),
    Q("derived and reproduced", "synthesis", "How did the lakeside city's population change from 2023 to 2024?",
      "It rose by 190,000.", ["S1", "S2"], "accepted", calculation="38200000 - 38010000"),
    Q("derived from an invented number", "synthesis",
      "How did the lakeside city's population change from 2023 to 2024?",
      "It rose by 200,000.", ["S1", "S2"], "ungrounded_answer", calculation="38200000 - 38000000"),
    Q("derived but not what the check gives", "synthesis",
      "How did the lakeside city's population change from 2023 to 2024?",
      "It rose by 200,000.", ["S1", "S2"], "ungrounded_answer", calculation="38200000 - 38010000"),
    # -- numerical gold answers are recomputed in the sandbox ----------------------------
    Q("recomputed difference", "numerical", "By how many did the lakeside city's population grow from 2023 to 2024?",
      "190,000", ["S1", "S2"], "accepted", calculation="38.2e6 - 38.01e6"),
    Q("recomputed percentage to written precision", "numerical",
      "By what percentage did the lakeside city's population grow from 2023 to 2024?",
      "0.5%", ["S1", "S2"], "accepted", calculation="(38.2 - 38.01) / 38.01 * 100"),
    Q("no calculation", "numerical", "By how many did the lakeside city's population grow from 2023 to 2024?",
      "190,000", ["S1", "S2"], "missing_calculation"),
    Q("wrong arithmetic", "numerical", "By how many did the lakeside city's population grow from 2023 to 2024?",
      "200,000", ["S1", "S2"], "calculation_mismatch", calculation="38200000 - 38010000"),
    Q("calculation from a number no fact states", "numerical",
      "By how many did the lakeside city's population grow since 2020?",
      "1,200,000", ["S1", "S2"], "calculation_ungrounded", calculation="38200000 - 37000000"),
    Q("calculation is code, not arithmetic", "numerical",
      "By how many did the lakeside city's population grow from 2023 to 2024?",
      "190,000", ["S1", "S2"], "invalid_calculation", calculation="__import__('os').getcwd()"),
    Q("calculation fails", "numerical", "How many festival visits per bridge metre were counted in 2024?",
      "113", ["S3", "S5"], "invalid_calculation", calculation="387000 / (3412 - 3412)"),
    Q("festival growth", "numerical", "By how many visits did the lantern festival grow from 2023 to 2024?",
      "56,000", ["S5"], "accepted", calculation="387000 - 331000"),
    # -- answer_in_question exempts choice questions -------------------------------------
    Q("either/or choice", "choice", "Did the lakeside city have more residents in 2023 or in 2024?",
      "2024", ["S1", "S2"], "accepted"),
    Q("comparison choice", "choice", "Which is longer, the Kestrel Bay Bridge or the Silvermere River?",
      "the Silvermere River", ["S3", "S6"], "accepted"),
    Q("choice answer not an option", "choice", "Did the lakeside city have more residents in 2023 or in 2024?",
      "2022", ["S1", "S2"], "choice_answer_not_an_option"),
    Q("choice on one fact", "choice", "Did the lakeside city have more residents in 2023 or in 2024?",
      "2024", ["S1"], "too_few_statements"),
    Q("either/or in a factual question", "factual", "Did the bridge open in 1997 or in 1998?",
      "1998", ["S3"], "accepted"),
    Q("answer given away", "factual", "The bridge opened in 1998; in which year did it open?",
      "1998", ["S3"], "answer_in_question"),
    Q("yes/no comparison", "factual", "Is the Silvermere River longer than the Kestrel Bay Bridge?",
      "yes", ["S3", "S6"], "accepted"),
    # -- navigation: a path from a starting page to the page that states the fact -------
    Q("path between two pages", "navigation",
      f"Start at {URL['pop24']}. Which page do you reach from there that gives the city's population in 2023?",
      URL["pop23"], ["S1", "S2"], "accepted"),
    Q("URL recall without a start", "navigation", "Which web page gives the lakeside city's population in 2023?",
      URL["pop23"], ["S1", "S2"], "navigation_without_start"),
    Q("answer is not a cited page", "navigation",
      f"Start at {URL['pop24']}. Which page do you reach from there that gives the bridge's length?",
      URL["bridge"], ["S1", "S2"], "navigation_answer_not_a_page"),
    Q("navigation on one page", "navigation", "Which page gives the lakeside city's population in 2023?",
      URL["pop23"], ["S2"], "too_few_statements"),
    # -- report: long-form over several facts --------------------------------------------
    Q("report over three facts", "report", "Write a short report on the lakeside city, its bridge and its festival.",
      REPORT, ["S1", "S2", "S3", "S5"], "accepted", max_chars=2500),
    Q("report over two facts", "report", "Write a short report on the lakeside city's population.",
      REPORT, ["S1", "S2"], "too_few_statements", max_chars=2500),
    Q("report too long", "report", "Write a short report on the lakeside city, its bridge and its festival.",
      REPORT * 20, ["S1", "S2", "S3", "S5"], "invalid_answer", max_chars=2500),
    Q("long answer in a short style", "factual", "What does the record say about the lakeside city?",
      REPORT * 3, ["S1", "S2", "S3", "S5"], "invalid_answer"),
    Q("synthesis paraphrase", "synthesis", "How did the lakeside city's population change from 2023 to 2024?",
      "It grew from 38.01 million to 38.2 million residents.", ["S1", "S2"], "accepted"),
    # -- the rest of the contract ---------------------------------------------------------
    Q("copied example", "factual", _EXAMPLE_REPLIES["factual"]["question"], "38.2 million", ["S1"],
      "copied_example"),
    Q("too short", "factual", "Population?", "38.2 million", ["S1"], "invalid_question"),
    Q("cites nothing", "factual", "How many residents did the lakeside city have in 2024?", "38.2 million",
      ["S9"], "no_statement_reference"),
    Q("a name the facts do not state", "factual", "Which city had 38.2 million residents in 2024?",
      "Castelmar", ["S1"], "ungrounded_answer"),
    Q("multi-hop on one fact", "multi_hop", "How long is the bridge of the city with 38.2 million residents?",
      "3,412 metres", ["S3"], "too_few_statements"),
    Q("multi-hop over two facts", "multi_hop",
      "How many visits did the festival count in the year the city had 38.2 million residents?",
      "387,000", ["S1", "S5"], "accepted"),
]


@pytest.fixture(scope="module")
def computations() -> dict[str, Calculation]:
    """Every calculation of the table, run once in the real sandbox."""
    expressions = sorted({c.calculation for c in QUESTION_CASES if c.calculation})

    async def run_all() -> list[Calculation]:
        return list(await asyncio.gather(*(evaluate(e) for e in expressions)))

    return dict(zip(expressions, asyncio.run(run_all()), strict=True))


@pytest.mark.parametrize("case", QUESTION_CASES, ids=[c.name for c in QUESTION_CASES])
def test_question_validator(case: Q, computations: dict[str, Calculation]) -> None:
    draft = QuestionDraft(question=case.question, answer=case.answer, statements=case.cited)
    computation = computations[case.calculation] if case.calculation else None
    result = validate_question(draft, case.style, STATEMENTS, computation, case.max_chars)  # type: ignore[arg-type]
    outcome = result.error_kind if isinstance(result, Rejection) else "accepted"
    assert outcome == case.expected, getattr(result, "message", result)
    if isinstance(result, ValidQuestion):
        assert result.knowledge_ids == [S[h] for h in case.cited if h in S]


# ---------------------------------------------------------------------------
# Reasoning's second filter: consistency by containment/paraphrase, limits by hop count
# ---------------------------------------------------------------------------

CFG = ReasoningConfig(max_reasoning_chars=6000, reasoning_chars_per_hop=3000)
STEP1 = "Sub-questions: which city, and how many residents? I recall roughly 38 million."
LONG = "The facts give the population for both years and I check each of them in turn. " * 90


@dataclass(frozen=True)
class R:
    name: str
    step2: str
    final: str
    expected: str
    hops: int = 1
    step1: str = field(default=STEP1)


REASONING_CASES = [
    R("same answer", "The facts say 1998. So the answer is 1998.", "1998", "kept"),
    R("same number, another format", "The facts say 38.2 million. So the answer is 38.2 million.", "38,200,000",
      "kept"),
    R("paraphrased long answer",
      "The ferry carried 151,000 in 2022 and 182,000 in 2023. So the answer is passenger numbers grew from "
      "151,000 in 2022 to 182,000 in 2023 according to Varn Shipping.",
      "They rose from 151,000 to 182,000, as reported by Varn Shipping.", "kept"),
    R("answer named without a closing formula", "Checking the facts, Riverton is the city with 38.2 million "
      "residents in 2024, and the bridge belongs to it.", "Riverton", "kept"),
    R("a URL as the answer", "The second page states it. So the answer is https://facts.example/pop23.",
      "https://facts.example/pop23", "kept"),
    R("states another number", "Bell was born in Edinburgh. So the answer is 1850.", "1847", "answer_inconsistent"),
    R("states another date", "The facts say so. So the answer is 3 March 2024.", "4 March 2024",
      "answer_inconsistent"),
    R("never reaches it", "Bell invented the telephone and lived in Canada.", "1847", "inconclusive"),
    R("a different paraphrase", "So the answer is that the festival was cancelled.",
      "They rose from 151,000 to 182,000.", "inconclusive"),
    R("too short", "So 1998.", "1998", "too_short"),
    R("long one-hop reasoning", LONG + "So the answer is 1998.", "1998", "too_long", hops=1),
    R("the same reasoning for a two-hop question", LONG + "So the answer is 1998.", "1998", "kept", hops=2),
    R("too long even for three hops", LONG * 3 + "So the answer is 1998.", "1998", "too_long", hops=3),
]


@pytest.mark.parametrize("case", REASONING_CASES, ids=[c.name for c in REASONING_CASES])
def test_reasoning_second_filter(case: R) -> None:
    outcome = second_filter(case.step1, case.step2, case.final, CFG, case.hops)
    assert (outcome or "kept") == case.expected


# ---------------------------------------------------------------------------
# Memory statements: a claim, about a name, with the source's numbers
# ---------------------------------------------------------------------------

SOURCE = (
    "By Amara Okafor, 2024-09-15. Riverton had 38.2 million residents in 2024, the city's statistics office "
    "said. Overnight stays rose 4 percent. Hotels reported 71.4 percent occupancy, and several hotels opened "
    "new wings. The Kestrel Bay Bridge links Riverton with Kestrel Bay."
)
CHUNK = ChunkContext(
    MemoryChunk(doc_id="d", url="https://news.example/r", title="Riverton in 2024", index=0, n_chunks=1, text=SOURCE),
    {},
)

MEMORY_CASES = [
    ("byline", "Amara Okafor", "Amara Okafor (2024-09-15)", "no_predicate"),
    ("title", "Kestrel Bay Bridge", "The Kestrel Bay Bridge", "no_predicate"),
    ("a claim", "Riverton", "Riverton had 38.2 million residents in 2024.", "accepted"),
    ("number by value", "Riverton", "Riverton had 38,200,000 residents in 2024.", "accepted"),
    ("a number the source lacks", "Riverton", "Riverton had 39 million residents in 2024.", "ungrounded_number"),
    ("subject-less, generic opening word", "", "Overnight stays rose 4 percent.", "generic_subject"),
    ("a common noun as entity", "Hotels", "Hotels reported 71.4 percent occupancy.", "generic_subject"),
    ("a name mid-sentence", "Kestrel Bay", "The Kestrel Bay Bridge links Riverton with Kestrel Bay.", "accepted"),
]


@pytest.mark.parametrize(("name", "entity", "statement", "expected"), MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_memory_statement_validator(name: str, entity: str, statement: str, expected: str) -> None:
    result = validate_statement(StatementDraft(entity=entity, statement=statement), CHUNK)
    assert (result.error_kind if isinstance(result, Rejection) else "accepted") == expected


def test_the_table_holds_at_least_forty_cases_with_both_outcomes() -> None:
    outcomes = [c.expected for c in QUESTION_CASES] + [c.expected for c in REASONING_CASES] + [
        c[3] for c in MEMORY_CASES
    ]
    assert len(outcomes) >= 40
    assert {"accepted", "kept"} & set(outcomes) and len(set(outcomes)) > 15
