"""The memory stage: dedup before chunking, validated (entity, statement, time) records."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from synth.entities import canonical_entity, entity_key
from synth.llm.base import LLMTimeout
from synth.records import DocumentRecord, MemoryRecord
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.memory import (
    STAGE,
    MemoryChunk,
    StatementBatch,
    chunk_text,
)
from testing.fas_responder import scripted_fas
from testing.scripted_llm import ScriptedLLM

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "configs" / "quickstart" / "pages"


def _doc(
    doc_id: str, url: str, text: str, date: str | None = "2024-05-01", title: str | None = None
) -> DocumentRecord:
    return DocumentRecord(
        id=doc_id, run_id="t", url=url, title=title, date=date, text=text, n_chars=len(text)
    )


def _ctx(
    tmp_path: Path, docs: list[DocumentRecord], responder: Any, judge: Any = scripted_fas, **memory: Any
) -> StageContext:
    """A memory context: ``responder`` writes the statements, ``judge`` checks their support (by
    default the fake judge of ``testing.fas_responder``: supported when the source has the
    statement's numbers, names and most of its words)."""
    spec = parse_spec({"name": "t", "stages": {"documents": {}, "memory": memory}})
    llm = ScriptedLLM(responder)
    return StageContext(
        run_id="t",
        spec=spec,
        llm=llm,
        judge_llm=ScriptedLLM(judge, model_name="scripted-judge"),
        run_dir=tmp_path,
        seed=0,
        read_stage=lambda stage: {"documents": docs}[stage],
        base_dir=tmp_path,
    )


def _run(ctx: StageContext) -> tuple[list, list[MemoryRecord], list]:
    prepared = STAGE.prepare(ctx)
    out = asyncio.run(STAGE.process(prepared.items, ctx))
    return prepared.dropped, out.records, out.failures


def _chunk_of(messages: list[dict[str, Any]]) -> str:
    """The chunk text the stage sent (after the header line of the last user turn)."""
    return messages[-1]["content"].split(":\n", 1)[1]


TRANSIT_1 = (
    "The Riverton Transit Authority (RTA) carried 96.3 million passengers in 2024, an increase of 7.1 percent "
    "on 2023. The new Line 5 tram opened on 3 March 2024 and carried 8.2 million passengers."
)
TRANSIT_2 = (
    "During the Lanternfall Festival the Riverton Transit Authority ran extra trams every night and reported "
    "214,000 festival journeys. Organisers counted 387,000 visits in September 2024."
)


# ---------------------------------------------------------------------------
# Dedup and chunking (prepare)
# ---------------------------------------------------------------------------


def test_a_reposted_page_is_removed_as_a_duplicate_naming_the_kept_page(tmp_path: Path) -> None:
    from synth.stages.documents import STAGE as DOCUMENTS

    spec = parse_spec(
        {
            "name": "t",
            "inputs": {
                "web": [
                    "configs/quickstart/pages/01-*.html",
                    "configs/quickstart/pages/27-*.html",
                    "configs/quickstart/pages/02-*.html",
                ]
            },
            "stages": {"documents": {}, "memory": {}},
        }
    )
    llm = ScriptedLLM(lambda m, s: {"statements": []})
    dctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=REPO)
    docs = asyncio.run(DOCUMENTS.process(DOCUMENTS.prepare(dctx).items, dctx)).records
    assert len(docs) == 3
    ctx = _ctx(tmp_path, docs, lambda m, s: {"statements": []})
    prepared = STAGE.prepare(ctx)
    (dup,) = prepared.dropped
    repost = next(d for d in docs if "travelwire" in d.url)
    original = next(d for d in docs if "visitriverton" in d.url)
    assert dup.error_kind == "near_duplicate_document" and dup.input_ids == [repost.id]
    assert original.url in dup.message and original.id in dup.message
    assert {c.doc_id for c in prepared.items} == {d.id for d in docs} - {repost.id}


def test_exact_duplicate_text_under_another_url_is_dropped_and_the_earliest_is_kept(tmp_path: Path) -> None:
    docs = [
        _doc("late", "https://mirror.example/a", TRANSIT_1, date="2024-06-01"),
        _doc("early", "https://origin.example/a", TRANSIT_1.replace("  ", " ").upper(), date="2024-05-01"),
        _doc("other", "https://origin.example/b", TRANSIT_2),
    ]
    dropped, _, _ = _run(_ctx(tmp_path, docs, lambda m, s: {"statements": []}))
    assert [(f.error_kind, f.input_ids) for f in dropped] == [("duplicate_document", ["late"])]
    assert "https://origin.example/a" in dropped[0].message


def test_chunks_stay_under_the_limit_at_paragraph_boundaries() -> None:
    paragraphs = [f"Paragraph {i} says that the value was {i * 100} in {2000 + i}." * 3 for i in range(12)]
    text = "\n".join(paragraphs)
    chunks = chunk_text(text, 500)
    assert all(len(c) <= 500 for c in chunks) and len(chunks) > 1
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")
    assert chunk_text("x" * 1200, 500) == ["x" * 500, "x" * 500, "x" * 200]


# ---------------------------------------------------------------------------
# Entity names
# ---------------------------------------------------------------------------


def test_entity_names_are_normalized_for_case_whitespace_punctuation_and_simple_aliases() -> None:
    same = [
        "Northwind Robotics",
        "northwind  robotics",
        "The Northwind Robotics, Inc.",
        "NORTHWIND ROBOTICS'S",
        "Northwind Robotics (NWR)",
        " Northwind\tRobotics Ltd. ",
    ]
    assert {entity_key(n) for n in same} == {"northwind robotics"}
    assert {canonical_entity(n) for n in same} == {"Northwind Robotics"}
    assert canonical_entity("Larkspur 4.0") == "Larkspur 4.0"
    assert canonical_entity("St. Louis") == "St Louis"
    assert canonical_entity("Calder Range National Park Service") == "Calder Range National Park Service"
    assert canonical_entity("NWR", {"nwr": "northwind robotics"}) == "Northwind Robotics"


# ---------------------------------------------------------------------------
# Statements (process)
# ---------------------------------------------------------------------------


def test_entities_merge_across_documents_and_statements_carry_doc_id_url_and_time(tmp_path: Path) -> None:
    docs = [
        _doc("d1", "https://news.example/ridership", TRANSIT_1, date="2025-01-29"),
        _doc("d2", "https://news.example/festival", TRANSIT_2, date="2024-10-08"),
    ]

    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        assert schema is StatementBatch
        chunk = _chunk_of(messages)
        if "96.3 million" in chunk:
            return {
                "statements": [
                    {
                        "entity": "Riverton Transit Authority (RTA)",
                        "statement": "The Riverton Transit Authority carried 96.3 million passengers in 2024.",
                        "time": "2024",
                    },
                    {
                        "entity": "RTA",
                        "statement": "The RTA opened the Line 5 tram on 3 March 2024.",
                        "time": None,
                    },
                ]
            }
        return {
            "statements": [
                {
                    "entity": "the riverton transit authority",
                    "statement": "The Riverton Transit Authority reported 214,000 festival journeys during Lanternfall.",
                    "time": "null",
                },
                {
                    "entity": "Lanternfall Festival",
                    "statement": "The Lanternfall Festival counted 387,000 visits in September 2024.",
                    "time": 2024,
                },
            ]
        }

    dropped, records, failures = _run(_ctx(tmp_path, docs, responder))
    assert dropped == [] and failures == []
    rta = [r for r in records if r.entity == "Riverton Transit Authority"]
    assert len(rta) == 3 and {r.doc_id for r in rta} == {"d1", "d2"}  # one entity, two documents
    by_statement = {r.statement: r for r in records}
    first = by_statement["The Riverton Transit Authority carried 96.3 million passengers in 2024."]
    assert (first.doc_id, first.source_url, first.time, first.parent_ids) == (
        "d1",
        "https://news.example/ridership",
        "2024",
        ["d1"],
    )
    # No time from the model: the first date in the statement, else the document's date.
    assert by_statement["The RTA opened the Line 5 tram on 3 March 2024."].time == "3 March 2024"
    assert (
        by_statement[
            "The Riverton Transit Authority reported 214,000 festival journeys during Lanternfall."
        ].time
        == "2024-10-08"
    )
    assert by_statement["The Lanternfall Festival counted 387,000 visits in September 2024."].time == "2024"
    assert all(r.model == "scripted-llm" and r.run_id == "t" for r in records)
    assert len({r.id for r in records}) == len(records)


def test_invalid_statements_are_dropped_with_a_counted_reason_and_valid_ones_kept(tmp_path: Path) -> None:
    docs = [_doc("d1", "https://news.example/ridership", TRANSIT_1)]
    good = {
        "entity": "Line 5 tram",
        "statement": "The Line 5 tram carried 8.2 million passengers in 2024.",
        "time": "2024",
    }
    replies = {
        "statements": [
            good,
            dict(good),  # repeated
            {
                "entity": "Riverton Transit Authority",
                "statement": "The Riverton Transit Authority carried 99 million riders.",
                "time": None,
            },
            {
                "entity": "Castelmar Metro",
                "statement": "The Castelmar Metro carried 8.2 million passengers.",
                "time": None,
            },
            {"entity": "It", "statement": "It carried 96.3 million passengers in 2024.", "time": None},
            {
                "entity": "Riverton Transit Authority",
                "statement": "Ridership rose 7.1 percent on 2023.",
                "time": None,
            },
            {"entity": "Line 5 tram", "statement": "Opened.", "time": None},
            {"entity": "", "statement": "Ridership grew by 7.1 percent.", "time": None},
        ]
    }
    _, records, failures = _run(_ctx(tmp_path, docs, lambda m, s: replies))
    assert [r.statement for r in records] == [good["statement"]]
    assert sorted(f.error_kind for f in failures) == sorted(
        [
            "duplicate_statement",
            "ungrounded_number",
            "ungrounded_entity",
            "invalid_entity",
            "statement_not_self_contained",
            "invalid_statement",
            "invalid_entity",
        ]
    )


def test_a_statement_labelled_with_the_wrong_entity_is_anchored_on_its_own_subject(tmp_path: Path) -> None:
    # What SmolLM2-135M actually replied for the ridership page (greedy decoding): the headline
    # as entity, a correct sentence about another, grounded entity as statement.
    text = "Riverton trams and buses carry 96 million passengers in 2024\n" + TRANSIT_1
    docs = [_doc("d1", "https://news.example/ridership", text)]
    reply = {
        "statements": [
            {
                "entity": "Riverton trams and buses",
                "statement": "The Riverton Transit Authority carried 96.3 million passengers in 2024.",
                "time": "2024",
            },
            {"entity": "", "statement": "The Line 5 tram opened on 3 March 2024.", "time": None},
            {
                "entity": "Riverton trams and buses",
                "statement": "The Castelmar Metro carried 96.3 million passengers in 2024.",
                "time": "2024",
            },
        ]
    }
    _, records, failures = _run(_ctx(tmp_path, docs, lambda m, s: reply))
    assert [(r.entity, r.time) for r in records] == [
        ("Riverton Transit Authority", "2024"),
        ("Line 5", "3 March 2024"),
    ]
    assert [f.error_kind for f in failures] == ["statement_not_self_contained"]
    assert all(f.input_ids == ["d1#c0"] and f.raw_output for f in failures)


def test_statement_cap_per_document_is_enforced_with_a_reason(tmp_path: Path) -> None:
    docs = [_doc("d1", "https://news.example/ridership", TRANSIT_1)]
    many = {
        "statements": [
            {
                "entity": "Riverton Transit Authority",
                "statement": f"The Riverton Transit Authority carried {n} million passengers.",
                "time": None,
            }
            for n in ("96.3", "58.9", "37.4", "8.2")
        ]
    }
    text = TRANSIT_1 + " Trams carried 58.9 million trips and buses 37.4 million."
    docs = [_doc("d1", "https://news.example/ridership", text)]
    _, records, failures = _run(_ctx(tmp_path, docs, lambda m, s: many, max_statements_per_doc=2))
    assert len(records) == 2
    assert [f.error_kind for f in failures] == ["over_statement_cap", "over_statement_cap"]


def test_an_llm_error_on_one_chunk_is_a_failure_and_the_other_chunks_still_run(tmp_path: Path) -> None:
    docs = [
        _doc("d1", "https://news.example/ridership", TRANSIT_1),
        _doc("d2", "https://news.example/festival", TRANSIT_2),
    ]

    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        if "96.3 million" in _chunk_of(messages):
            return LLMTimeout("no reply within 120 s", raw_output="partial {")
        return (
            '{"entity": "Lanternfall Festival", "statement": "The Lanternfall Festival counted 387,000 visits.", "time": null}'
            '{"entity": "x", "statement": "y", "time": null}'
        )

    _, records, failures = _run(_ctx(tmp_path, docs, responder))
    assert [r.doc_id for r in records] == ["d2"]  # a bare statement object is accepted as a one-item reply
    (failure,) = failures
    assert (failure.error_kind, failure.input_ids, failure.raw_output) == ("timeout", ["d1#c0"], "partial {")


def test_an_unparseable_reply_and_an_empty_reply_are_counted(tmp_path: Path) -> None:
    docs = [
        _doc("d1", "https://news.example/ridership", TRANSIT_1),
        _doc("d2", "https://news.example/festival", TRANSIT_2),
    ]

    def responder(messages: list[dict[str, Any]], schema: Any) -> Any:
        return "I cannot do that." if "96.3 million" in _chunk_of(messages) else {"statements": []}

    _, records, failures = _run(_ctx(tmp_path, docs, responder))
    assert records == []
    assert sorted(f.error_kind for f in failures) == ["invalid_output", "no_statements"]


def test_prompt_is_short_one_shot_and_carries_title_date_and_cap(tmp_path: Path) -> None:
    docs = [
        _doc("d1", "https://news.example/ridership", TRANSIT_1, title="Ridership 2024", date="2025-01-29")
    ]
    ctx = _ctx(tmp_path, docs, lambda m, s: {"statements": []}, max_statements_per_doc=5)
    asyncio.run(STAGE.process(STAGE.prepare(ctx).items, ctx))
    (call,) = ctx.llm.calls
    roles = [m["role"] for m in call["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    json.loads(call["messages"][2]["content"])  # the one-shot reply is valid JSON
    last = call["messages"][-1]["content"]
    assert "up to 5 facts" in last and '"Ridership 2024" (2025-01-29)' in last and TRANSIT_1 in last
    assert call["stage"] == "memory" and call["schema"] is StatementBatch


def test_chunk_items_survive_serialization(tmp_path: Path) -> None:
    docs = [_doc("d1", "https://news.example/ridership", TRANSIT_1)]
    ctx = _ctx(
        tmp_path,
        docs,
        lambda m, s: {
            "statements": [
                {
                    "entity": "Line 5 tram",
                    "statement": "The Line 5 tram carried 8.2 million passengers.",
                    "time": None,
                }
            ]
        },
    )
    items = [json.loads(c.model_dump_json()) for c in STAGE.prepare(ctx).items]
    out = asyncio.run(STAGE.process(items, ctx))
    assert len(out.records) == 1 and MemoryChunk.model_validate(items[0]).chunk_id == "d1#c0"
