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
