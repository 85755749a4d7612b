"""`stages.memory.max_documents` bounds the LLM work, and the documents it skips are in the ledger."""

from __future__ import annotations

from pathlib import Path

from synth.records import DocumentRecord
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.memory import STAGE as MEMORY
from testing.scripted_llm import ScriptedLLM


def docs() -> list[DocumentRecord]:
    topics = ["harbour cranes and tonnage", "alpine marmots in winter", "a river's dam upgrade"]
    return [
        DocumentRecord(
            id=f"d{i}", run_id="t", url=f"https://example.org/{i}", date=f"2024-0{i + 1}-01",
            text=f"Article {i} about {topic}. " * 40, n_chars=1000,
        )
        for i, topic in enumerate(topics)
    ]


def test_documents_over_the_cap_are_failed_not_lost(tmp_path: Path) -> None:
    spec = parse_spec({"name": "t", "stages": {"documents": {}, "memory": {"max_documents": 2}}})
    llm = ScriptedLLM(lambda m, s: "{}")
    ctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path,
                       read_stage=lambda s: docs() if s == "documents" else [])
    prepared = MEMORY.prepare(ctx)
    assert {item.doc_id for item in prepared.items} == {"d0", "d1"}
    assert [(f.input_ids, f.error_kind) for f in prepared.dropped] == [(["d2"], "over_max_documents")]


def test_knowledge_graph_documents_need_no_model_and_do_not_count_against_the_cap(tmp_path: Path) -> None:
    kg = [
        DocumentRecord(
            id=f"kg{i}", run_id="t", url=f"kg:source-{i}", source_type="knowledge_graph",
            text=f"Entity {i} | founded in | 19{i}0 | ", n_chars=30,
        )
        for i in range(3)
    ]
    spec = parse_spec({"name": "t", "stages": {"documents": {}, "memory": {"max_documents": 2}}})
    llm = ScriptedLLM(lambda m, s: "{}")
    ctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path,
                       read_stage=lambda s: kg[:2] + docs() + kg[2:] if s == "documents" else [])
    prepared = MEMORY.prepare(ctx)
    assert {item.doc_id for item in prepared.items} == {"kg0", "kg1", "kg2", "d0", "d1"}
    assert [(f.input_ids, f.error_kind) for f in prepared.dropped] == [(["d2"], "over_max_documents")]
