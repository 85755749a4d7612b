"""Knowledge-graph triples (JSONL subject, relation, object, time, source) as an input kind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from synth.ingest.triples import Triple, parse_triple_line, triple_documents, triple_line, verbalize
from synth.spec import parse_spec
from synth.stage import StageContext
from testing.scripted_llm import ScriptedLLM

TRIPLES = [
    {"subject": "Kestrel Bay Bridge", "relation": "opened", "object": "1998", "source": "https://kg.example/bridge"},
    {"subject": "Kestrel Bay Bridge", "relation": "length", "object": "3,412 metres", "time": "2024",
     "source": "https://kg.example/bridge"},
    {"subject": "Riverton", "relation": "hosts", "object": "the Lanternfall Festival", "time": "2024"},
    {"subject": "Northwind Robotics", "relation": "founded_by", "object": "Lena Vasquez", "time": "2011",
     "source": "https://kg.example/northwind", "score": 0.93},
]


def _write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "kg.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_a_triple_reads_as_a_self_contained_sentence_about_its_subject() -> None:
    assert verbalize(Triple(subject="Northwind Robotics", relation="founded_by", object="Lena Vasquez", time="2011")) == (
        "Northwind Robotics was founded by Lena Vasquez (2011)."
    )
    assert verbalize(Triple(subject="Kestrel Bay Bridge", relation="length", object="3,412 metres")) == (
        "The length of Kestrel Bay Bridge is 3,412 metres."
    )
    assert verbalize(Triple(subject="Riverton", relation="hosts", object="Lanternfall")) == "Riverton hosts Lanternfall."


def test_a_document_line_turns_back_into_its_triple() -> None:
    t = Triple(subject="A | B", relation="part of", object="C", time="2020")
    line = triple_line(t)
    assert line == "A / B | part of | C | 2020"
    assert parse_triple_line(line) == Triple(subject="A / B", relation="part of", object="C", time="2020")
    assert parse_triple_line("just prose") is None


def test_triples_group_by_source_and_bad_lines_are_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, [*TRIPLES, {"subject": "x", "relation": "y"}, "[1, 2]", "not json"])
    docs, failures = triple_documents([(path, "kg.jsonl")])
    assert [d.url for d in docs] == ["https://kg.example/bridge", "kg:Riverton", "https://kg.example/northwind"]
    assert docs[0].text.splitlines() == ["Kestrel Bay Bridge | opened | 1998 | ", "Kestrel Bay Bridge | length | 3,412 metres | 2024"]
    assert all(d.source_type == "knowledge_graph" for d in docs)
    assert [f.input_ids[0] for f in failures] == ["kg.jsonl#4", "kg.jsonl#5", "kg.jsonl#6"]
    assert {f.error_kind for f in failures} == {"invalid_input"}
    assert "object" in failures[0].message


def test_triples_become_documents_and_memory_statements_without_an_llm(tmp_path: Path) -> None:
    from synth.stages.documents import STAGE as DOCUMENTS
    from synth.stages.memory import STAGE as MEMORY

    _write(tmp_path, TRIPLES)
    spec = parse_spec({"name": "t", "inputs": {"triples": ["kg.jsonl"]}, "stages": {"documents": {}, "memory": {}}})

    def no_llm(messages: object, schema: object) -> object:
        raise AssertionError("triples need no model")

    llm = ScriptedLLM(no_llm)
    store: dict[str, list] = {}
    ctx = StageContext(
        run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=tmp_path,
        read_stage=lambda stage: store[stage],
    )
    documents = asyncio.run(DOCUMENTS.process(DOCUMENTS.prepare(ctx).items, ctx))
    assert documents.failures == [] and {d.source_type for d in documents.records} == {"knowledge_graph"}
    store["documents"] = documents.records
    memory = asyncio.run(MEMORY.process(MEMORY.prepare(ctx).items, ctx))
    by_statement = {m.statement: m for m in memory.records}
    assert set(by_statement) == {
        "Kestrel Bay Bridge opened 1998.",
        "The length of Kestrel Bay Bridge is 3,412 metres (2024).",
        "Riverton hosts the Lanternfall Festival (2024).",
        "Northwind Robotics was founded by Lena Vasquez (2011).",
    }
    founded = by_statement["Northwind Robotics was founded by Lena Vasquez (2011)."]
    assert (founded.entity, founded.time, founded.source_url, founded.verified_by) == (
        "Northwind Robotics", "2011", "https://kg.example/northwind", "triple",
    )
    assert llm.calls == []


def test_a_spec_with_only_triples_is_a_valid_documents_input(tmp_path: Path) -> None:
    from synth.inputs import check_inputs

    _write(tmp_path, TRIPLES)
    spec = parse_spec({"name": "t", "inputs": {"triples": ["kg.jsonl"]}, "stages": {"documents": {}}})
    check_inputs(spec, tmp_path)  # no error: triples are an input of the documents stage
