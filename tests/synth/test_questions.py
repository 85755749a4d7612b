"""The questions stage: seeded entity clusters, multi-style questions tied to real statement ids."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from synth.records import MemoryRecord, QuestionRecord
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.questions import (
    STAGE,
    ClosedBookAnswer,
    ClusterStatement,
    QuestionCluster,
    QuestionDraft,
    assign_styles,
    question_messages,
    resolve_handles,
)
from testing.scripted_llm import ScriptedLLM

REPO = Path(__file__).resolve().parents[2]


def _mem(i: int, entity: str, statement: str, doc: str) -> MemoryRecord:
    return MemoryRecord(
        id=f"m{i:02d}",
        run_id="t",
        entity=entity,
        statement=statement,
        doc_id=doc,
        source_url=f"https://news.example/{doc}",
        time="2024",
        parent_ids=[doc],
    )


MEMORY = [
    _mem(
        1,
        "Riverton Transit Authority",
        "The Riverton Transit Authority carried 96.3 million passengers in 2024.",
        "d1",
    ),
    _mem(
        2,
        "Riverton Transit Authority",
        "The Riverton Transit Authority opened the Line 5 tram on 3 March 2024.",
        "d1",
    ),
    _mem(
        3,
        "Riverton Transit Authority",
        "The Riverton Transit Authority reported 214,000 journeys during the Lanternfall Festival.",
        "d2",
    ),
    _mem(
        4,
        "Lanternfall Festival",
        "The Lanternfall Festival counted 387,000 visits in 2024, up from 331,000 in 2023.",
        "d2",
    ),
    _mem(5, "Lanternfall Festival", "The Lanternfall Festival began in 1987 as a single evening.", "d3"),
    _mem(6, "Riverton", "Riverton welcomed 2.41 million overnight visitors in 2024.", "d3"),
    _mem(7, "Riverton", "Riverton has 74 hotels with an average occupancy of 71.4 percent.", "d4"),
    _mem(8, "Mount Calder", "Mount Calder rises 3,412 metres above sea level.", "d5"),
    _mem(9, "Mount Calder", "Mount Calder was first climbed on 9 August 1868.", "d5"),
]


def _ctx(
    tmp_path: Path, responder: Any, memory: list[MemoryRecord] = MEMORY, seed: int = 0, **questions: Any
) -> StageContext:
    spec = parse_spec({"name": "t", "stages": {"memory": {}, "questions": questions}})

    def closed_book_unknown(messages: list[dict[str, Any]], schema: Any) -> Any:
        # The difficulty filter's closed-book call: this model knows none of the answers.
        return {"answer": "unknown"} if schema is ClosedBookAnswer else responder(messages, schema)

    llm = ScriptedLLM(closed_book_unknown)
    return StageContext(
        run_id="t",
        spec=spec,
        llm=llm,
        judge_llm=llm,
        run_dir=tmp_path,
        seed=seed,
        read_stage=lambda stage: {"memory": memory}[stage],
        base_dir=tmp_path,
    )


def _style_of(messages: list[dict[str, Any]]) -> str:
    return re.search(r"Write one ([a-z-]+) question", messages[-1]["content"]).group(1).replace("-", "_")


def _facts_of(messages: list[dict[str, Any]]) -> list[str]:
    return re.findall(r"^S\d+: (.*)$", messages[-1]["content"], re.M)


def good_responder(messages: list[dict[str, Any]], schema: Any) -> Any:
    """A well-behaved model: one question per style, citing the first two facts."""
    style, facts = _style_of(messages), _facts_of(messages)
    cited = ["S1", "S2"] if len(facts) >= 2 else ["S1"]
    subject = facts[0].split(" ")[1]
    answer = re.findall(r"\d[\d,.]*\d|\d", facts[0])[0]  # a number the first fact states
    reply = {
        "question": f"Which {style.replace('_', ' ')} detail about the {subject} place is reported?",
        "answer": answer,
        "statements": cited,
    }
    if style == "numerical":  # recomputed in the sandbox: the number times one
        reply["calculation"] = f"{answer.replace(',', '')} * 1"
    elif style == "report" and len(facts) >= 3:
        reply["statements"] = ["S1", "S2", "S3"]
    elif style == "choice" and len(facts) >= 2:
        other = re.findall(r"\d[\d,.]*\d|\d", facts[1])[0]
        reply["question"] = f"Which figure does the {subject} place report first, {answer} or {other}?"
    elif style == "navigation":
        pages = re.findall(r"^(S\d+): .*\[(\S+)\]$", messages[-1]["content"], re.M)
        (h1, start), (h2, target) = pages[0], next(p for p in pages if p[1] != pages[0][1])
        reply.update(
            question=f"Start at {start}. Which page do you reach from there with the {subject} place's figure?",
            answer=target,
            statements=[h1, h2],
        )
    return reply


def _run(ctx: StageContext) -> tuple[list[QuestionCluster], list[QuestionRecord], list]:
    prepared = STAGE.prepare(ctx)
    out = asyncio.run(STAGE.process(prepared.items, ctx))
    return prepared.items, out.records, out.failures + prepared.dropped


# ---------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------


def test_clusters_are_single_entities_and_co_occurring_groups_in_a_seeded_order(tmp_path: Path) -> None:
    clusters = STAGE.prepare(_ctx(tmp_path, good_responder)).items
    again = STAGE.prepare(_ctx(tmp_path, good_responder)).items
    other_seed = STAGE.prepare(_ctx(tmp_path, good_responder, seed=7)).items
    assert [c.model_dump() for c in clusters] == [c.model_dump() for c in again]
    assert [c.entities for c in clusters] != [c.entities for c in other_seed]

    singles = {c.entities[0] for c in clusters if len(c.entities) == 1}
    assert singles == {m.entity for m in MEMORY}
    groups = [set(c.entities) for c in clusters if len(c.entities) > 1]
    assert groups, "entities that share documents or name each other must form groups"
    assert all("Mount Calder" not in g for g in groups)  # it co-occurs with nothing
    for cluster in clusters:
        assert {s.entity for s in cluster.statements} <= set(cluster.entities)
        assert len(cluster.statements) <= 8


def test_max_clusters_caps_the_draw_and_keeps_multi_entity_groups(tmp_path: Path) -> None:
    clusters = STAGE.prepare(_ctx(tmp_path, good_responder, max_clusters=3)).items
    assert len(clusters) == 3
    assert any(len(c.entities) > 1 for c in clusters)


def test_max_entities_of_one_draws_only_single_entity_clusters(tmp_path: Path) -> None:
    clusters = STAGE.prepare(_ctx(tmp_path, good_responder, max_entities_per_cluster=1)).items
    assert all(len(c.entities) == 1 for c in clusters) and len(clusters) == 4


# ---------------------------------------------------------------------------
# Styles
# ---------------------------------------------------------------------------


def test_style_mix_follows_the_spec(tmp_path: Path) -> None:
    styles = ["factual", "numerical", "multi_hop"]
    clusters, records, failures = _run(_ctx(tmp_path, good_responder, styles=styles, per_cluster=2))
    assert failures == []
    for cluster in clusters:
        assert (
            len(cluster.styles) == 2 and len(set(cluster.styles)) == 2 and set(cluster.styles) <= set(styles)
        )
    assigned = Counter(s for c in clusters for s in c.styles)
    assert set(assigned) == set(styles) and max(assigned.values()) - min(assigned.values()) <= 1
    # Records come out cluster by cluster, so this also says: one question per style per
    # cluster, the styles of a cluster all different (question-level diversity).
    assert [r.style for r in records] == [s for c in clusters for s in c.styles]


def test_styles_a_cluster_cannot_support_are_skipped() -> None:
    one = [ClusterStatement(id="a", entity="X", statement="X is a town on a river.", doc_id="d")]
    assert assign_styles(0, ["multi_hop", "numerical", "factual"], 2, one) == ["factual"]
    two = one + [
        ClusterStatement(
            id="b", entity="X", statement="X had 4,000 people in 2020.", doc_id="d", source_url="u"
        )
    ]
    assert assign_styles(0, ["multi_hop", "numerical", "factual"], 2, two) == ["multi_hop", "numerical"]
    assert assign_styles(1, ["multi_hop", "numerical", "factual"], 2, two) == ["factual", "multi_hop"]


# ---------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------


def test_every_question_references_statement_ids_that_exist_in_memory(tmp_path: Path) -> None:
    _, records, failures = _run(_ctx(tmp_path, good_responder))
    assert records and failures == []
    by_id = {m.id: m for m in MEMORY}
    for r in records:
        assert r.knowledge_ids and set(r.knowledge_ids) <= set(by_id)
        assert r.parent_ids == r.knowledge_ids
        assert r.entities == list(dict.fromkeys(by_id[k].entity for k in r.knowledge_ids))
        assert (r.answer in r.question) == (r.style == "choice")  # only a choice names its answer
        assert r.model == "scripted-llm"
    assert len({r.id for r in records}) == len(records)


def test_bad_questions_are_dropped_with_a_counted_reason(tmp_path: Path) -> None:
    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        style = _style_of(messages)
        if style == "factual":
            return {
                "question": "Did Riverton welcome 2.41 million overnight visitors in 2024?",
                "answer": "2.41 million",
                "statements": ["S1"],
            }
        if style == "numerical":
            return {
                "question": "How many more visits did the festival count than a year before?",
                "answer": "56,000",
                "statements": ["S9"],
            }
        if style == "multi_hop":
            return {
                "question": "When did the festival served by extra trams begin as one evening?",
                "answer": "1987",
                "statements": ["S1"],
            }
        if style == "synthesis":
            return "Sure! Here is a question about the festival."
        return json.loads(
            question_messages(
                QuestionCluster(cluster_id="c", entities=[], statements=[], styles=[]), "navigation"
            )[2]["content"]
        )

    memory = [m for m in MEMORY if m.entity in ("Riverton", "Lanternfall Festival")]
    _, records, failures = _run(
        _ctx(tmp_path, responder, memory=memory, per_cluster=5, max_entities_per_cluster=1)
    )
    assert records == []
    counts = Counter(f.error_kind for f in failures)
    assert counts == Counter(
        {
            "answer_in_question": 2,
            "no_statement_reference": 2,
            "too_few_statements": 2,
            "invalid_output": 2,
            "copied_example": 2,
        }
    )
    assert all(f.raw_output for f in failures)
    assert all(re.fullmatch(r"cl-[0-9a-f]{16}:[a-z_]+", f.input_ids[0]) for f in failures)


def test_answers_the_cited_statements_do_not_support_are_dropped(tmp_path: Path) -> None:
    # SmolLM2 copied the one-shot example's answer ("182,000") into a question about another fact.
    answers = {
        "factual": ("How many overnight visitors did the lakeside city welcome in 2024?", "182,000"),
        "navigation": (
            "Start at https://news.example/d3 about the lakeside city. Which page do you reach from there that "
            "reports the city's hotel count?",
            "https://news.example/d4",
        ),
        "multi_hop": ("Which city with 74 hotels welcomed 2.41 million visitors in 2024?", "Castelmar"),
    }

    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        question, answer = answers[_style_of(messages)]
        return {"question": question, "answer": answer, "statements": ["S1", "S2"]}

    memory = [m for m in MEMORY if m.entity == "Riverton"]
    _, records, failures = _run(
        _ctx(tmp_path, responder, memory=memory, styles=["factual", "navigation", "multi_hop"], per_cluster=3)
    )
    assert [r.style for r in records] == ["navigation"]  # both URLs are cited statements' pages
    assert sorted(f.error_kind for f in failures) == ["ungrounded_answer", "ungrounded_answer"]


def test_a_question_repeated_across_styles_is_kept_once(tmp_path: Path) -> None:
    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        return {
            "question": "How high above sea level does the peak first climbed in 1868 rise?",
            "answer": "3,412 metres",
            "statements": ["S1", "S2"],
        }

    memory = [m for m in MEMORY if m.entity == "Mount Calder"]
    _, records, failures = _run(
        _ctx(tmp_path, responder, memory=memory, styles=["factual", "multi_hop"], per_cluster=2)
    )
    assert len(records) == 1 and [f.error_kind for f in failures] == ["duplicate_question"]


def test_handles_map_back_to_statement_ids() -> None:
    statements = [
        ClusterStatement(id=f"id{i}", entity="X", statement=f"X fact {i} here.", doc_id="d")
        for i in (1, 2, 3)
    ]
    assert resolve_handles(["S2", "s1", "3", "S2", "S99", "[S3]", "none"], statements) == [
        "id2",
        "id1",
        "id3",
    ]
    assert QuestionDraft.model_validate(
        {"question": "q", "answer": 42, "statements": "S1, S3"}
    ).statements == ["S1", "S3"]
    assert QuestionDraft.model_validate(
        {"question": "q", "answer": "a", "statements": [1, 2]}
    ).statements == ["1", "2"]


@pytest.mark.parametrize(
    "style", ["factual", "numerical", "multi_hop", "synthesis", "navigation", "report", "choice"]
)
def test_prompt_is_a_one_shot_in_the_requested_style(style: str) -> None:
    cluster = QuestionCluster(
        cluster_id="c",
        entities=["Riverton"],
        styles=[style],
        statements=[
            ClusterStatement(
                id="m06",
                entity="Riverton",
                statement=MEMORY[5].statement,
                doc_id="d3",
                source_url="https://x.example/r",
            ),
        ],
    )
    messages = question_messages(cluster, style)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    example = json.loads(messages[2]["content"])
    extra = {"calculation"} if style == "numerical" else set()
    assert set(example) == {"question", "answer", "statements"} | extra
    assert f"Write one {style.replace('_', '-')} question" in messages[-1]["content"]
    assert "S1: Riverton welcomed" in messages[-1]["content"]
    assert ("https://x.example/r" in messages[-1]["content"]) == (style == "navigation")


# ---------------------------------------------------------------------------
# The real embedded model (SmolLM2-135M on CPU): quality is the model's, validity is ours
# ---------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_real_embedded_model_turns_three_pages_into_valid_statements_and_questions(
    tmp_path: Path,
) -> None:
    from synth.llm.client import LLMClient
    from synth.stages.documents import STAGE as DOCUMENTS
    from synth.stages.memory import STAGE as MEMORY

    pages = [
        "01-riverton-tourism-2024.html",
        "11-riverton-transit-ridership-2024.html",
        "08-lanternfall-festival-2024.html",
    ]
    spec = parse_spec(
        {
            "name": "slow",
            "inputs": {"web": [f"configs/quickstart/pages/{p}" for p in pages]},
            # A private port: a server another test session started (and may stop) is not ours to share.
            # Greedy decoding: sampled at 0.8, SmolLM2-135M wrote prose instead of JSON in every probe.
            "llm": {
                "base_url": "embedded",
                "embedded_port": _free_port(),
                "temperature": 0,
                "max_tokens": 120,
                "timeout_s": 300,
                "max_retries": 1,
                "max_invalid_retries": 1,
                "max_concurrency": 8,
            },
            # Small completions (SmolLM2 on CPU: ~23 tokens/s alone): a statement object is ~50 tokens,
            # a question ~35, and the model tends to repeat itself until the cap anyway.
            # The support check and the difficulty filter would ask the same 135M model as judge
            # (noise, and twice the calls on 2 cores); what they do is tested with scripted
            # judges, and the quickstart run reports their figures.
            "stages": {
                "documents": {},
                "memory": {"max_statements_per_doc": 6, "max_tokens": 120, "support_check": False},
                "questions": {"per_cluster": 2, "max_clusters": 3, "max_tokens": 80, "difficulty_filter": False},
            },
        }
    )

    async def pipeline() -> tuple[list, list, list]:
        store: dict[str, list] = {}
        async with LLMClient(spec.llm) as llm:
            ctx = StageContext(
                run_id="slow",
                spec=spec,
                llm=llm,
                judge_llm=llm,
                run_dir=tmp_path,
                seed=0,
                read_stage=lambda stage: store[stage],
                base_dir=REPO,
            )
            for stage in (DOCUMENTS, MEMORY, STAGE):
                prepared = stage.prepare(ctx)
                store[stage.name] = (await stage.process(prepared.items, ctx)).records
        return store["documents"], store["memory"], store["questions"]

    docs, memory, questions = asyncio.run(pipeline())
    assert len(docs) == 3
    assert memory, "no statement from SmolLM2 passed validation over three pages"
    urls = {d.id: d.url for d in docs}
    for m in memory:
        assert m.entity and m.statement and urls[m.doc_id] == m.source_url
    assert questions, "no question from SmolLM2 passed validation"
    memory_ids = {m.id for m in memory}
    for q in questions:
        assert q.knowledge_ids and set(q.knowledge_ids) <= memory_ids and q.answer and q.question


# ---------------------------------------------------------------------------
# Difficulty filter and recomputed numerical answers
# ---------------------------------------------------------------------------

RIVERTON = [m for m in MEMORY if m.entity == "Riverton"]
FESTIVAL = [m for m in MEMORY if m.entity == "Lanternfall Festival"]


def _closed_book_ctx(tmp_path: Path, question_reply: dict[str, Any], closed: str, verdict: Any = None, **cfg: Any):
    spec = parse_spec({"name": "t", "stages": {"memory": {}, "questions": {"per_cluster": 1, **cfg}}})

    def llm_fn(messages: list[dict[str, Any]], schema: Any) -> Any:
        return {"answer": closed} if schema is ClosedBookAnswer else question_reply

    def judge_fn(messages: list[dict[str, Any]], schema: Any) -> Any:
        if verdict is None:
            raise AssertionError("the judge must not be called here")
        return verdict

    return StageContext(
        run_id="t", spec=spec, llm=ScriptedLLM(llm_fn), judge_llm=ScriptedLLM(judge_fn, model_name="judge"),
        run_dir=tmp_path, read_stage=lambda stage: {"memory": RIVERTON}[stage],
    )


FACTUAL = {
    "question": "How many overnight visitors did the lakeside city welcome in 2024?",
    "answer": "2.41 million",
    "statements": ["S1"],
}


@pytest.mark.parametrize(
    ("closed", "verdict", "kept"),
    [
        ("2,410,000", None, False),  # the model knows it: no search needed
        ("unknown", None, True),
        ("1.9 million", None, True),  # a wrong guess: the question stays
        ("roughly 2.4 million", {"correct": True, "rationale": "same"}, False),  # a rounding: the judge decides
        ("roughly 2.4 million", {"correct": False, "rationale": "no"}, True),
    ],
)
def test_questions_the_model_answers_closed_book_are_too_easy(
    tmp_path: Path, closed: str, verdict: Any, kept: bool
) -> None:
    ctx = _closed_book_ctx(tmp_path, FACTUAL, closed, verdict, styles=["factual"])
    _, records, failures = _run(ctx)
    assert (len(records) == 1) == kept
    if not kept:
        (failure,) = failures
        assert failure.error_kind == "too_easy" and closed in failure.message
    closed_calls = [c for c in ctx.llm.calls if c["schema"] is ClosedBookAnswer]
    (call,) = closed_calls
    prompt = "\n".join(m["content"] for m in call["messages"])
    assert FACTUAL["question"] in prompt and "Riverton welcomed" not in prompt  # closed-book: no facts


def test_the_difficulty_filter_skips_choice_questions_and_can_be_off(tmp_path: Path) -> None:
    choice = {
        "question": "Does the lakeside city have 74 hotels or 2.41 million hotels?",
        "answer": "74",
        "statements": ["S1", "S2"],
    }
    ctx = _closed_book_ctx(tmp_path, choice, "74", styles=["choice"])
    _, records, _ = _run(ctx)
    assert len(records) == 1 and all(c["schema"] is not ClosedBookAnswer for c in ctx.llm.calls)
    ctx = _closed_book_ctx(tmp_path, FACTUAL, "2.41 million", styles=["factual"], difficulty_filter=False)
    assert len(_run(ctx)[1]) == 1


@pytest.mark.parametrize(
    ("answer", "calculation", "outcome"),
    [
        ("56,000", "387000 - 331000", "kept"),
        ("66,000", "387000 - 331000", "calculation_mismatch"),
        ("56,000", None, "missing_calculation"),
    ],
)
def test_numerical_answers_are_recomputed_in_the_sandbox(
    tmp_path: Path, answer: str, calculation: str | None, outcome: str
) -> None:
    reply = {
        "question": "By how many visits did the festival grow from 2023 to 2024?",
        "answer": answer,
        "statements": ["S1"],
        "calculation": calculation,
    }
    ctx = _closed_book_ctx(tmp_path, reply, "unknown", styles=["numerical"])
    ctx.read_stage = lambda stage: {"memory": FESTIVAL}[stage]
    _, records, failures = _run(ctx)
    if outcome == "kept":
        (record,) = records
        assert record.calculation == calculation and record.style == "numerical"
    else:
        assert [f.error_kind for f in failures] == [outcome]


def test_with_grounded_schema_each_request_narrows_citations_and_stated_answers_to_its_cluster(
    tmp_path: Path,
) -> None:
    seen: list[dict[str, Any]] = []

    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        seen.append({"style": _style_of(messages), "facts": _facts_of(messages), "schema": schema.model_json_schema()})
        return good_responder(messages, schema)

    ctx = _ctx(tmp_path, responder, styles=["factual", "numerical"], grounded_schema=True, difficulty_filter=False)
    _, records, _ = _run(ctx)
    assert records and seen
    for call in seen:
        props = call["schema"]["properties"]
        handles = [f"S{i}" for i in range(1, len(call["facts"]) + 1)]
        assert props["statements"]["items"]["enum"] == handles
        if call["style"] == "factual":
            spans = props["answer"]["enum"]
            assert spans and all(any(span in fact for fact in call["facts"]) or span == "2024" for span in spans)
            assert "calculation" not in props
        else:  # a computed answer is not a span; its calculation stays
            assert "enum" not in props["answer"] and "calculation" in props
    # Off (the default), the schema is the plain draft's.
    seen.clear()
    _run(_ctx(tmp_path / "plain", responder, styles=["factual"], difficulty_filter=False))
    assert seen and all("enum" not in call["schema"]["properties"]["answer"] for call in seen)
