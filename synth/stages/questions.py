"""The `questions` stage: multi-style questions from clusters of entities and their statements.

Paper §2.2.1: questions are synthesized from *clusters* of one or more entities of the
open-world memory, in several styles (factual retrieval, numerical computation,
multi-hop reasoning, synthesis, web navigation — here a path from a starting page to the
page that states a fact —, long-form reports graded by a rubric, either/or choices),
often obfuscated so that no single keyword search answers them. Diversity is at the
question level: one cluster yields ``per_cluster`` questions in different styles.

* ``prepare`` (barrier, upstream ``memory``) draws clusters with a seeded sampler: every
  entity alone, plus groups of entities that co-occur (one statement names another
  entity, or they share a document). It assigns each cluster its styles by rotating over
  the spec's list, so over a run the styles come out in equal shares.
* ``process`` asks once per (cluster, style), showing statements under short handles
  (S1..Sn) and mapping the handles the model cites back to statement ids. A question is
  dropped, with a counted reason, when it doesn't parse, gives its answer away, cites no
  existing statement, or states an answer the cited facts don't (numbers compared by
  value across formats; ``validate_question``). A numerical answer is recomputed from the
  cited numbers in the python sandbox (``synth.calculation``); a mismatch rejects it.
* **Difficulty filter**: a question that passes is put to the model closed-book (no
  facts); when it answers correctly, the question needs no search and is dropped as
  ``too_easy`` (counted, like every other reason).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from synth.answers import match_answers, ungrounded_numbers
from synth.calculation import Calculation, evaluate, matches_answer, unfounded_literals
from synth.dedup import normalize_text
from synth.entities import Rejection, entity_key
from synth.grounded_schema import answer_spans, narrowed_schema
from synth.ids import content_hash, record_id
from synth.judges import AnswerVerdict, build_judge_messages
from synth.llm.base import LLMError, Message
from synth.llm.config import completion_cap
from synth.records import Failure, MemoryRecord, QuestionRecord, QuestionStyle
from synth.stage import Prepared, Stage, StageContext, StageOutput

ALL_STYLES: list[QuestionStyle] = [
    "factual",
    "numerical",
    "multi_hop",
    "synthesis",
    "navigation",
    "report",
    "choice",
]
MIN_QUESTION_WORDS = 4
MAX_ANSWER_CHARS = 400
# Statements a style must cite at least.
MIN_STATEMENTS: dict[str, int] = {"multi_hop": 2, "synthesis": 2, "choice": 2, "navigation": 2, "report": 3}
# A closed-book guess at an either/or question is right half the time, and a report or a
# navigation path is not a closed-book answer: the difficulty filter asks the others.
DIFFICULTY_STYLES: list[QuestionStyle] = ["factual", "numerical", "multi_hop", "synthesis"]


class QuestionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    styles: list[QuestionStyle] = Field(
        default_factory=lambda: list(ALL_STYLES), min_length=1, description="question styles to draw from"
    )
    per_cluster: PositiveInt = Field(
        4, description="questions per knowledge cluster, each in a different style"
    )
    max_entities_per_cluster: PositiveInt = Field(3, description="largest cluster drawn")
    max_clusters: PositiveInt | None = Field(None, description="cap on clusters drawn; null = all")
    max_statements_per_cluster: PositiveInt = Field(
        8, description="statements shown to the model per cluster (short prompts)"
    )
    max_tokens: PositiveInt | None = Field(
        None, description="completion cap per question; null = the llm block's max_tokens"
    )
    max_answer_chars: PositiveInt = Field(MAX_ANSWER_CHARS, description="longest gold answer (all styles but report)")
    max_report_chars: PositiveInt = Field(2500, description="longest report answer (the report style's long form)")
    difficulty_filter: bool = Field(
        True,
        description="ask the model each question closed-book (no facts); drop the ones it answers correctly "
        "as too_easy",
    )
    difficulty_styles: list[QuestionStyle] = Field(
        default_factory=lambda: list(DIFFICULTY_STYLES), description="styles the difficulty filter applies to"
    )
    grounded_schema: bool = Field(
        False,
        description="narrow each reply's JSON schema to its cluster: citations to its handles S1..Sn, a "
        "stated answer (factual, multi_hop, choice) to a span of its facts, the question to one sentence "
        "(synth.grounded_schema). For small models under constrained decoding (the embedded endpoint); "
        "servers without it ignore the narrowing",
    )
    closed_book_max_tokens: PositiveInt | None = Field(
        64, description="completion cap of the closed-book call, at most llm.max_tokens; null = llm.max_tokens"
    )
    judge_max_tokens: PositiveInt | None = Field(
        128,
        description="completion cap of the judge call grading a closed-book answer that exact/numeric matching "
        "leaves open, at most judge_llm.max_tokens; null = judge_llm.max_tokens",
    )


# ---------------------------------------------------------------------------
# Work items
# ---------------------------------------------------------------------------


class ClusterStatement(BaseModel):
    """A memory statement as the questions stage needs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    entity: str
    statement: str
    time: str | None = None
    doc_id: str
    source_url: str | None = None


class QuestionCluster(BaseModel):
    """A work item: entities, their statements (at most max_statements_per_cluster), the styles to ask."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cluster_id: str
    entities: list[str]
    statements: list[ClusterStatement]
    styles: list[QuestionStyle]


# ---------------------------------------------------------------------------
# Cluster sampling
# ---------------------------------------------------------------------------


MAX_MENTION_WORDS = 6  # longest entity name looked for inside statements


def co_occurrence(by_entity: dict[str, list[MemoryRecord]]) -> dict[str, dict[str, int]]:
    """Entity graph: weight 2 for each statement of A that names B, 1 for each document they share.

    Mentions are found by looking each word n-gram (n <= MAX_MENTION_WORDS) of a statement up
    in a dict of entity keys, so the cost grows with the statements, not entities x statements.
    """
    docs: dict[str, set[str]] = defaultdict(set)
    for entity, statements in by_entity.items():
        for s in statements:
            docs[s.doc_id].add(entity)
    graph: dict[str, dict[str, int]] = {e: defaultdict(int) for e in by_entity}
    for members in docs.values():
        for a in members:
            for b in members:
                if a != b:
                    graph[a][b] += 1
    # Only names of 4+ characters count as mentions: "Co" or "Us" would match everywhere.
    by_key = {
        k: e
        for e in sorted(by_entity)
        if len(k := entity_key(e)) >= 4 and len(k.split()) <= MAX_MENTION_WORDS
    }
    for entity, statements in by_entity.items():
        for s in statements:
            words = entity_key(s.statement).split()
            named = {
                by_key[gram]
                for n in range(1, MAX_MENTION_WORDS + 1)
                for i in range(len(words) - n + 1)
                if (gram := " ".join(words[i : i + n])) in by_key
            }
            for other in sorted(named - {entity}):
                graph[entity][other] += 2
                graph[other][entity] += 2
    return {e: dict(n) for e, n in graph.items()}


def draw_clusters(
    entities: list[str], graph: dict[str, dict[str, int]], rng: random.Random, max_size: int
) -> list[tuple[str, ...]]:
    """Every entity alone, and for each entity with neighbours one group of 2..max_size entities
    drawn by edge weight; groups are interleaved with singles so a cap keeps both kinds."""
    singles = [(e,) for e in entities]
    groups: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    if max_size >= 2:
        for entity in entities:
            neighbours = sorted(graph.get(entity, {}).items())
            if not neighbours:
                continue
            size = rng.randint(2, min(max_size, len(neighbours) + 1))
            chosen: list[str] = []
            pool = list(neighbours)
            while pool and len(chosen) < size - 1:
                pick = rng.choices(range(len(pool)), weights=[w for _, w in pool])[0]
                chosen.append(pool.pop(pick)[0])
            group = tuple(sorted({entity, *chosen}))
            if group not in seen:
                seen.add(group)
                groups.append(group)
    rng.shuffle(singles)
    rng.shuffle(groups)
    out: list[tuple[str, ...]] = []
    for i in range(max(len(singles), len(groups))):
        out.extend(x[i] for x in (groups, singles) if i < len(x))
    return out


def _cluster_statements(
    cluster: tuple[str, ...], by_entity: dict[str, list[MemoryRecord]], rng: random.Random, limit: int
) -> list[MemoryRecord]:
    """Up to ``limit`` statements, shared fairly between the entities; for groups, statements
    that name another member come first (they are the bridges multi-hop questions need)."""
    quota = max(1, limit // len(cluster))
    keys = [entity_key(e) for e in cluster]
    picked: list[MemoryRecord] = []
    for entity in cluster:
        statements = list(by_entity[entity])
        rng.shuffle(statements)
        if len(cluster) > 1:
            text_keys = {s.id: f" {entity_key(s.statement)} " for s in statements}
            statements.sort(
                key=lambda s: not any(f" {k} " in text_keys[s.id] for k in keys if k != entity_key(entity))
            )
        picked.extend(statements[:quota])
    return picked[:limit]


def _has_number(statements: Sequence[ClusterStatement]) -> bool:
    return any(ch.isdigit() for s in statements for ch in s.statement)


def style_applies(style: QuestionStyle, statements: Sequence[ClusterStatement]) -> bool:
    """Whether a cluster can support a style at all (so the model isn't asked the impossible)."""
    if style == "numerical":
        return _has_number(statements)
    if style == "navigation":
        # A path needs two pages: where the reader starts and where the fact is.
        return len({s.source_url for s in statements if s.source_url}) >= 2
    return len(statements) >= MIN_STATEMENTS.get(style, 1)


def assign_styles(
    index: int, styles: list[QuestionStyle], per_cluster: int, statements: Sequence[ClusterStatement]
) -> list[QuestionStyle]:
    """Styles for the index-th cluster: a window rotating over ``styles`` (so every style gets an
    equal share over a run), skipping styles the cluster can't support."""
    k = min(per_cluster, len(styles))
    start = (index * k) % len(styles)
    rotated = styles[start:] + styles[:start]
    return [s for s in rotated if style_applies(s, statements)][:k]


# ---------------------------------------------------------------------------
# Prompt (its text is hashed into the stage's prompt fingerprint, checked on resume)
# ---------------------------------------------------------------------------


_SYSTEM = "You write quiz questions from facts. Reply with JSON only."
STYLE_INSTRUCTIONS: dict[str, str] = {
    "factual": "ask for one fact from the facts. Describe the subject by a clue instead of its name if you can.",
    "numerical": "the answer must be computed from numbers in the facts (a difference, a sum, a ratio or a "
    "percentage). Give the computation as a Python expression over those numbers in \"calculation\".",
    "multi_hop": "chain two or more facts: describe one entity by a clue from another fact instead of naming it.",
    "synthesis": "ask for a short summary or comparison that combines several facts.",
    "navigation": "give the web page (URL) where a reader starts, and ask which page, reached from there, "
    "states a fact about something the first page mentions. The answer is that page's URL.",
    "report": "ask for a short report that covers three or more of the facts; the answer is that report, a "
    "paragraph that states each fact it uses.",
    "choice": "ask an either/or or comparison question between two things the facts describe; the answer is "
    "the right one of the two options named in the question.",
}
_EXAMPLE_FACTS = [
    (
        "The Lake Varn ferry carried 182,000 passengers in 2023, according to Varn Shipping.",
        "https://varn.example/ferry-2023",
    ),
    ("The Lake Varn ferry carried 151,000 passengers in 2022.", "https://varn.example/ferry-2022"),
    ("Varn Shipping was founded in 1961 in the town of Osk.", "https://varn.example/about"),
]
_EXAMPLE_REPLIES: dict[str, dict[str, Any]] = {
    "factual": {
        "question": "How many passengers did the lake ferry run by Varn Shipping carry in 2023?",
        "answer": "182,000",
        "statements": ["S1"],
    },
    "numerical": {
        "question": "By how many passengers did Lake Varn ferry traffic grow from 2022 to 2023?",
        "answer": "31,000",
        "statements": ["S1", "S2"],
        "calculation": "182000 - 151000",
    },
    "multi_hop": {
        "question": "In which year was the operator of a lake ferry that carried 182,000 passengers in 2023 founded?",
        "answer": "1961",
        "statements": ["S1", "S3"],
    },
    "synthesis": {
        "question": "How did passenger numbers on the Lake Varn ferry change from 2022 to 2023, and who reported them?",
        "answer": "They rose from 151,000 to 182,000, as reported by Varn Shipping.",
        "statements": ["S1", "S2"],
    },
    "navigation": {
        "question": "The page https://varn.example/about describes the company that runs the Lake Varn ferry. "
        "Which page do you reach from there that gives the ferry's passenger count for 2022?",
        "answer": "https://varn.example/ferry-2022",
        "statements": ["S3", "S2"],
    },
    "report": {
        "question": "Write a short report on the Lake Varn ferry: who runs it, since when, and how its traffic "
        "changed between 2022 and 2023.",
        "answer": "The Lake Varn ferry is run by Varn Shipping, a company founded in 1961 in the town of Osk. "
        "It carried 151,000 passengers in 2022 and 182,000 in 2023, according to Varn Shipping.",
        "statements": ["S1", "S2", "S3"],
    },
    "choice": {
        "question": "Did the Lake Varn ferry carry more passengers in 2022 or in 2023?",
        "answer": "2023",
        "statements": ["S1", "S2"],
    },
}
_REPLY_SHAPE = (
    'Reply as {"question": "...", "answer": "...", "statements": ["S1", ...]} listing the facts you used.'
)
_REPLY_SHAPE_CALCULATION = (
    'Reply as {"question": "...", "answer": "...", "statements": ["S1", ...], "calculation": "..."} listing '
    "the facts you used."
)
# Styles whose facts are shown with their page URLs.
_URL_STYLES = frozenset({"navigation"})


def _facts_block(facts: Sequence[tuple[str, str | None]], with_urls: bool) -> str:
    lines = []
    for i, (text, url) in enumerate(facts, 1):
        lines.append(f"S{i}: {text}" + (f" [{url}]" if with_urls and url else ""))
    return "Facts:\n" + "\n".join(lines)


def _ask(style: str) -> str:
    shape = _REPLY_SHAPE_CALCULATION if style == "numerical" else _REPLY_SHAPE
    avoid = "" if style == "choice" else "Do not put the answer in the question. "
    return f"Write one {style.replace('_', '-')} question: {STYLE_INSTRUCTIONS[style]} {avoid}{shape}"


def question_messages(cluster: QuestionCluster, style: QuestionStyle) -> list[Message]:
    """Chat messages for one (cluster, style): a one-shot example turn in that style, then the cluster."""
    with_urls = style in _URL_STYLES
    facts = [
        (s.statement + (f" (time: {s.time})" if s.time and s.time not in s.statement else ""), s.source_url)
        for s in cluster.statements
    ]
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": _facts_block(_EXAMPLE_FACTS, with_urls) + "\n\n" + _ask(style)},
        {"role": "assistant", "content": json.dumps(_EXAMPLE_REPLIES[style])},
        {"role": "user", "content": _facts_block(facts, with_urls) + "\n\n" + _ask(style)},
    ]


CLOSED_BOOK_SYSTEM = """Answer the question from your own knowledge, without looking anything up. Give only the short answer; if you do not know it, answer "unknown".
Reply with one JSON object: {"answer": "..."}"""


def closed_book_messages(question: str) -> list[Message]:
    """The difficulty probe: the question alone, no facts (a model that answers it needs no search)."""
    return [
        {"role": "system", "content": CLOSED_BOOK_SYSTEM},
        {"role": "user", "content": f"Question: {question}"},
    ]


class ClosedBookAnswer(BaseModel):
    """The closed-book reply."""

    model_config = ConfigDict(extra="ignore")
    answer: str = Field(description="the short answer, or 'unknown'")

    @field_validator("answer", mode="before")
    @classmethod
    def _scalar_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


_HANDLE_RE = re.compile(r"[Ss]?\s*(\d+)")


class QuestionDraft(BaseModel):
    """The reply for one question. Loose on input (handles as "S1", "s1", 1 or "S1, S2"), strict
    on what counts: see ``validate_question``."""

    # Extra keys are ignored: weak models add "style", "explanation", ...; a missing "statements"
    # is an empty citation list, rejected later with its own reason.
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"required": ["question", "answer", "statements"]}
    )
    question: str = Field(description="the question")
    answer: str = Field(description="its gold answer")
    statements: list[str] = Field(
        default_factory=list, description="handles of the facts used, e.g. ['S1', 'S3']"
    )
    calculation: str | None = Field(
        None, description="numerical questions: a Python expression over numbers of the facts giving the answer"
    )

    @field_validator("question", "answer", "calculation", mode="before")
    @classmethod
    def _scalar_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("statements", mode="before")
    @classmethod
    def _handles(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str | int):
            v = re.split(r"[,;\s]+", str(v)) if isinstance(v, str) else [v]
        if isinstance(v, list):
            return [str(x) for x in v if isinstance(x, str | int) and not isinstance(x, bool)]
        return v


def resolve_handles(handles: Sequence[str], statements: Sequence[ClusterStatement]) -> list[str]:
    """Statement ids for the handles a model cited, in citation order, unknown handles left out."""
    ids: list[str] = []
    for handle in handles:
        match = _HANDLE_RE.match(handle.strip().strip("[]()"))
        if match:
            n = int(match.group(1))
            if 1 <= n <= len(statements) and statements[n - 1].id not in ids:
                ids.append(statements[n - 1].id)
    return ids


def grounded_draft_schema(cluster: QuestionCluster, style: QuestionStyle) -> type[QuestionDraft]:
    """``QuestionDraft`` narrowed to this cluster's facts (``questions.grounded_schema``)."""
    answers = None
    if style in _STATED_ANSWER_STYLES:
        facts = [f"{s.statement} {s.time or ''}" for s in cluster.statements]
        answers = answer_spans(facts, exclude=cluster.entities) or None
    return cast(
        type[QuestionDraft],
        narrowed_schema(
            QuestionDraft,
            handles=[f"S{i}" for i in range(1, len(cluster.statements) + 1)],
            answers=answers,
            drop=() if style == "numerical" else ("calculation",),
        ),
    )


# ---------------------------------------------------------------------------
# Validation (the fair validators: every rejection names its reason)
# ---------------------------------------------------------------------------


_EXAMPLE_QUESTIONS = frozenset(normalize_text(r["question"]) for r in _EXAMPLE_REPLIES.values())
_URL_RE = re.compile(r"https?://[^\s\])>\"']+|(?:file|search|kg):[^\s\])>\"']+")
# Styles whose answer is stated in the cited facts; the others combine (synthesis, report)
# or compute (numerical) theirs, so only their numbers are checked.
_STATED_ANSWER_STYLES = frozenset({"factual", "multi_hop", "choice"})
_MIN_ANSWER_WORD_SHARE = 0.5
# A yes/no answer to a comparison ("Is the river longer than the bridge?") is judged by the
# facts' numbers, not by words the facts would have to contain.
_YES_NO = frozenset({"yes", "no"})
_NUMBER_WORDS = frozenset(
    {"percent", "per", "cent", "pct", "thousand", "million", "billion", "trillion", "bn", "mn"}
)


@dataclass(frozen=True)
class ValidQuestion:
    question: str
    answer: str
    knowledge_ids: list[str]
    calculation: str | None = None


def _in(needle: str, haystack: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def is_choice_question(question: str, answer: str) -> bool:
    """Whether ``question`` offers ``answer`` as one of two or more named options ("A or B",
    "A vs B", "A compared with B"): an either/or question must name its answer."""
    na, nq = normalize_text(answer), normalize_text(question)
    if not _in(na, nq):
        return False
    options = re.split(r"\b(?:or|vs|versus|than|compared with|compared to)\b", nq)
    return len(options) >= 2 and any(_in(na, part) for part in options)


def _trim_url(url: str) -> str:
    return url.rstrip(".,;:!?")


def _navigation_problem(question: str, answer: str, cited: Sequence[ClusterStatement]) -> Rejection | None:
    """A navigation question names a starting page and asks for the page, reached from it,
    that states a fact: both pages must be among the cited statements' pages."""
    pages = {s.source_url for s in cited if s.source_url}
    target = _trim_url(answer.strip())
    if target not in pages:
        return Rejection(
            "navigation_answer_not_a_page", f"the answer {answer!r} is not the URL of a cited statement's page"
        )
    starts = {_trim_url(u) for u in _URL_RE.findall(question)} & (pages - {target})
    if not starts:
        return Rejection(
            "navigation_without_start", "the question names no starting page (a cited page other than the answer)"
        )
    return None


def _derived_ok(numbers: Sequence[str], computation: Calculation | None, source: str) -> bool:
    """Whether numbers the facts do not state are the python check's reproduced result."""
    if computation is None or computation.value is None:
        return False
    if unfounded_literals(computation.expression, source):
        return False
    return all(matches_answer(computation.value, n) for n in numbers)


def _calculation_problem(answer: str, computation: Calculation | None, source: str) -> Rejection | None:
    """A numerical answer must be recomputed in the sandbox from numbers the facts state."""
    if computation is None:
        return Rejection("missing_calculation", "a numerical question needs its calculation (a Python expression)")
    if computation.value is None:
        return Rejection("invalid_calculation", computation.error or "the calculation did not run")
    unfounded = unfounded_literals(computation.expression, source)
    if unfounded:
        return Rejection(
            "calculation_ungrounded", f"the calculation uses {unfounded}, which the cited facts do not state"
        )
    if not matches_answer(computation.value, answer):
        return Rejection(
            "calculation_mismatch",
            f"{computation.expression} = {computation.value:g}, which the answer {answer!r} does not state",
        )
    return None


def validate_question(
    draft: QuestionDraft,
    style: QuestionStyle,
    statements: Sequence[ClusterStatement],
    computation: Calculation | None = None,
    max_answer_chars: int = MAX_ANSWER_CHARS,
) -> ValidQuestion | Rejection:
    """A usable question with the statement ids it rests on, or why it was rejected.

    ``computation`` is the python check of ``draft.calculation`` (``synth.calculation.evaluate``),
    None when the draft gives none. ``max_answer_chars`` applies to every style but
    ``report``, whose answers are long by design (the stage passes its own limit for those).
    """
    question = " ".join(draft.question.split())
    answer = " ".join(draft.answer.split())
    nq = normalize_text(question)
    if len(nq.split()) < MIN_QUESTION_WORDS:
        return Rejection("invalid_question", f"question has fewer than {MIN_QUESTION_WORDS} words")
    if nq in _EXAMPLE_QUESTIONS:
        return Rejection("copied_example", "the question is the prompt's example")
    na = normalize_text(answer)
    if not na or len(answer) > max_answer_chars:
        return Rejection("invalid_answer", f"answer is empty or longer than {max_answer_chars} chars")
    choice = is_choice_question(question, answer)
    if style == "choice" and not choice:
        return Rejection(
            "choice_answer_not_an_option", f"a choice question must offer its answer {answer!r} as an option"
        )
    if _in(na, nq) and not choice:
        return Rejection("answer_in_question", f"the answer {answer!r} appears verbatim in the question")
    ids = resolve_handles(draft.statements, statements)
    if not ids:
        return Rejection(
            "no_statement_reference", f"cites {draft.statements!r}; the facts are S1..S{len(statements)}"
        )
    if len(ids) < MIN_STATEMENTS.get(style, 1):
        return Rejection(
            "too_few_statements", f"a {style} question must rest on {MIN_STATEMENTS[style]} or more statements"
        )
    cited = [s for s in statements if s.id in ids]
    source = " ".join(f"{s.statement} {s.time or ''}" for s in cited)
    if style == "navigation":
        problem = _navigation_problem(question, answer, cited)
        return problem or ValidQuestion(question, _trim_url(answer), ids)
    if style == "numerical":
        problem = _calculation_problem(answer, computation, source)
        if problem is not None:
            return problem
        return ValidQuestion(question, answer, ids, computation.expression if computation else None)
    missing = ungrounded_numbers(answer, source)
    if missing and not _derived_ok(missing, computation, source):
        checked = " (and the python check does not reproduce them)" if computation is not None else ""
        return Rejection("ungrounded_answer", f"the answer's numbers {missing} are not in the cited statements{checked}")
    if style in _STATED_ANSWER_STYLES and na not in _YES_NO:
        # Numbers were compared by value above; their unit and scale words are not wording.
        words = [
            w
            for w in normalize_text(answer).split()
            if len(w) > 2 and not w[:1].isdigit() and w not in _NUMBER_WORDS
        ]
        source_words = set(normalize_text(source).split())
        if words and sum(w in source_words for w in words) < _MIN_ANSWER_WORD_SHARE * len(words):
            return Rejection("ungrounded_answer", f"the answer {answer!r} is not stated in the cited statements")
    return ValidQuestion(question, answer, ids, computation.expression if computation and missing else None)


# ---------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------


class QuestionsStage(Stage[QuestionsConfig, QuestionCluster]):
    """Memory statements to multi-style QuestionRecords, via seeded entity clusters."""

    config_type = QuestionsConfig
    record_type = QuestionRecord
    summary_fields = ("style", "question", "answer")
    shared_prompt_modules = ("synth.judges",)
    name = "questions"
    upstream = ("memory",)
    barrier = True
    input_cap_field = "max_clusters"  # --preview's estimate: a cluster is an item, from memory

    def prepare(self, ctx: StageContext) -> Prepared[QuestionCluster]:
        """Clusters in a seeded, deterministic order, each with its statements and styles."""
        cfg = self.config(ctx.spec)
        memory = cast(list[MemoryRecord], list(ctx.read_stage("memory")))
        memory.sort(key=lambda m: m.id)
        by_entity: dict[str, list[MemoryRecord]] = defaultdict(list)
        for m in memory:
            by_entity[m.entity].append(m)
        entities = sorted(by_entity)
        # A string seed: random.Random hashes it with SHA-512, the same in every process.
        rng = random.Random(f"questions:{ctx.seed}")
        clusters = draw_clusters(entities, co_occurrence(by_entity), rng, cfg.max_entities_per_cluster)
        if cfg.max_clusters is not None:
            clusters = clusters[: cfg.max_clusters]

        items: list[QuestionCluster] = []
        dropped: list[Failure] = []
        for members in clusters:
            cluster_id = "cl-" + content_hash(list(members), n_hex=16)
            chosen = _cluster_statements(members, by_entity, rng, cfg.max_statements_per_cluster)
            statements = [
                ClusterStatement(
                    id=m.id,
                    entity=m.entity,
                    statement=m.statement,
                    time=m.time,
                    doc_id=m.doc_id,
                    source_url=m.source_url,
                )
                for m in chosen
            ]
            styles = assign_styles(len(items), cfg.styles, cfg.per_cluster, statements)
            if not styles:
                dropped.append(
                    Failure(
                        input_ids=[s.id for s in statements],
                        error_kind="no_applicable_style",
                        message=f"cluster {list(members)} supports none of {cfg.styles}",
                    )
                )
                continue
            items.append(
                QuestionCluster(
                    cluster_id=cluster_id, entities=list(members), statements=statements, styles=styles
                )
            )
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[QuestionCluster], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        cfg = cfg.model_copy(
            update={
                "max_tokens": completion_cap(cfg.max_tokens, ctx.spec.llm.max_tokens),
                "closed_book_max_tokens": completion_cap(cfg.closed_book_max_tokens, ctx.spec.llm.max_tokens),
                "judge_max_tokens": completion_cap(cfg.judge_max_tokens, ctx.spec.effective_judge_llm.max_tokens),
            }
        )
        # A runner may ship items between processes as plain dicts.
        clusters = [QuestionCluster.model_validate(c) if isinstance(c, dict) else c for c in items]
        # Sandbox processes for calculations: a few at a time, not one per question at once.
        sandbox = asyncio.Semaphore(SANDBOX_CONCURRENCY)
        jobs = [(cluster, style) for cluster in clusters for style in cluster.styles]
        results = await asyncio.gather(
            *(self._question(cluster, style, cfg, ctx, sandbox) for cluster, style in jobs)
        )
        out = StageOutput()
        seen: dict[str, set[str]] = defaultdict(set)  # cluster -> normalized questions kept
        for (cluster, style), result in zip(jobs, results, strict=True):
            if isinstance(result, Failure):
                out.failures.append(result)
                continue
            key = normalize_text(result.question)
            if key in seen[cluster.cluster_id]:
                out.failures.append(
                    self._failure(cluster, style, "duplicate_question", "same question as another style")
                )
                continue
            seen[cluster.cluster_id].add(key)
            out.records.append(result)
        return out

    @staticmethod
    def _failure(
        cluster: QuestionCluster, style: str, kind: str, message: str, raw: str | None = None
    ) -> Failure:
        return Failure(
            input_ids=[f"{cluster.cluster_id}:{style}"],
            error_kind=kind,
            message=f"{style} question for {cluster.entities}: {message}",
            raw_output=raw,
        )

    async def _question(
        self,
        cluster: QuestionCluster,
        style: QuestionStyle,
        cfg: QuestionsConfig,
        ctx: StageContext,
        sandbox: asyncio.Semaphore,
    ) -> QuestionRecord | Failure:
        try:
            draft = await ctx.llm.complete(
                question_messages(cluster, style),
                schema=grounded_draft_schema(cluster, style) if cfg.grounded_schema else QuestionDraft,
                stage="questions",
                max_tokens=cfg.max_tokens,
            )
        except LLMError as err:
            return self._failure(cluster, style, err.kind, str(err), err.raw_output)
        computation = None
        if draft.calculation and draft.calculation.strip():
            async with sandbox:
                computation = await evaluate(draft.calculation)
        max_chars = cfg.max_report_chars if style == "report" else cfg.max_answer_chars
        result = validate_question(draft, style, cluster.statements, computation, max_chars)
        if isinstance(result, Rejection):
            return self._failure(cluster, style, result.error_kind, result.message, draft.model_dump_json())
        if cfg.difficulty_filter and style in cfg.difficulty_styles:
            easy = await closed_book_answers(result, cfg, ctx)
            if isinstance(easy, LLMError):
                return self._failure(cluster, style, easy.kind, f"closed-book check: {easy}", easy.raw_output)
            if easy is not None:
                return self._failure(
                    cluster,
                    style,
                    "too_easy",
                    f"answered correctly without the facts ({easy!r}; gold {result.answer!r})",
                    draft.model_dump_json(),
                )
        question, answer, knowledge_ids = result.question, result.answer, result.knowledge_ids
        by_id = {s.id: s for s in cluster.statements}
        entities = list(dict.fromkeys(by_id[i].entity for i in knowledge_ids))
        return QuestionRecord(
            id=record_id(
                "questions",
                knowledge_ids,
                {"prompt": STAGE.prompt_fingerprint, "cluster": cluster.cluster_id, "style": style},
                {"question": question, "answer": answer},
            ),
            run_id=ctx.run_id,
            parent_ids=knowledge_ids,
            model=ctx.llm.model_name,
            style=style,
            question=question,
            answer=answer,
            entities=entities,
            knowledge_ids=knowledge_ids,
            calculation=result.calculation,
        )


SANDBOX_CONCURRENCY = 2


async def closed_book_answers(
    question: ValidQuestion, cfg: QuestionsConfig, ctx: StageContext
) -> str | LLMError | None:
    """The model's closed-book answer when it is correct (the question is too easy), None when
    it is not, an LLMError when a call failed.

    Exact and numeric matching decide first; a pair they leave open goes to the answer judge.
    """
    try:
        reply = await ctx.llm.complete(
            closed_book_messages(question.question),
            schema=ClosedBookAnswer,
            stage="questions",
            max_tokens=cfg.closed_book_max_tokens,
        )
    except LLMError as err:
        return err
    guess = reply.answer.strip()
    if not guess or normalize_text(guess) in _UNKNOWN_ANSWERS:
        return None
    match = match_answers(guess, question.answer)
    if match.verdict != "inconclusive":
        return guess if match.verdict == "match" else None
    try:
        verdict = await ctx.judge_llm.complete(
            build_judge_messages(question.question, question.answer, guess),
            AnswerVerdict,
            stage="questions",
            max_tokens=cfg.judge_max_tokens,
        )
    except LLMError as err:
        return err
    return guess if verdict.correct else None


_UNKNOWN_ANSWERS = frozenset({"unknown", "i do not know", "i dont know", "not sure", "none", "n a"})


STAGE = QuestionsStage()
