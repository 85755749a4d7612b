"""Dedup signatures made in the map units (issue 19): side files beside committed units, used by the barrier."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipelines.llm_setup import UnavailableLLM
from pipelines.units import UnitTask
from pipelines.worker import UnitWorker, WorkerJob
from synth.dedup import find_duplicate_matches, stage_signatures
from synth.layout import RunLayout
from synth.shards import ShardStore
from synth.spec import RunSpec, parse_spec
from synth.stage import StageContext
from synth.stages.documents import STAGE as DOCUMENTS
from synth.stages.memory import STAGE as MEMORY

REPO = Path(__file__).resolve().parents[2]
NO_LLM = UnavailableLLM()
PAGES = [
    "configs/quickstart/pages/01-*.html",
    "configs/quickstart/pages/27-*.html",
    "configs/quickstart/pages/0[2-6]-*.html",
]


def _spec(stages: dict) -> RunSpec:
    return parse_spec({"name": "t", "inputs": {"web": PAGES}, "stages": stages})


def _run_documents(run_dir: Path, spec: RunSpec) -> None:
    job = WorkerJob(
        run_id="t",
        run_dir=str(run_dir),
        base_dir=str(REPO),
        spec=spec,
        stages={"documents": DOCUMENTS},
        needs_llm=False,
    )
    w = UnitWorker(job, worker_name="node-a")
    ctx = StageContext(run_id="t", spec=spec, llm=NO_LLM, judge_llm=NO_LLM, run_dir=run_dir, base_dir=REPO)
    items = DOCUMENTS.prepare(ctx).items
    half = len(items) // 2

    async def units() -> None:
        await w.run_unit(UnitTask("documents", "00000"), items[:half])
        await w.run_unit(UnitTask("documents", "00001"), items[half:])

    asyncio.run(units())


def test_documents_units_leave_signatures_and_memory_dedup_gives_the_same_drops(tmp_path: Path) -> None:
    spec = _spec({"documents": {}, "memory": {}})
    _run_documents(tmp_path, spec)
    layout = RunLayout(tmp_path)
    assert all(layout.signatures("documents", u).exists() for u in ("00000", "00001"))
    docs = ShardStore(tmp_path).read_records("documents")
    signatures = stage_signatures(tmp_path, ["documents"])
    assert set(signatures) == {d.id for d in docs}

    ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=NO_LLM,
        judge_llm=NO_LLM,
        run_dir=tmp_path,
        base_dir=REPO,
        read_stage=lambda stage: ShardStore(tmp_path).read_records(stage),
    )
    with_side_files = MEMORY.prepare(ctx)
    # The repost (page 27) is dropped with the side files in place ...
    assert [f.error_kind for f in with_side_files.dropped] == ["near_duplicate_document"]
    # ... and exactly the same way when the barrier has to sign every text itself.
    for unit in ("00000", "00001"):
        layout.signatures("documents", unit).unlink()
    without = MEMORY.prepare(ctx)
    assert [(f.error_kind, f.input_ids) for f in without.dropped] == [
        (f.error_kind, f.input_ids) for f in with_side_files.dropped
    ]
    assert [c.doc_id for c in without.items] == [c.doc_id for c in with_side_files.items]
    pairs = [(d.id, d.text) for d in docs]
    assert find_duplicate_matches(pairs, signatures=signatures) == find_duplicate_matches(pairs)


def test_no_signatures_are_made_when_no_stage_of_the_run_dedups_them(tmp_path: Path) -> None:
    _run_documents(tmp_path, _spec({"documents": {}}))
    assert ShardStore(tmp_path).committed_units("documents") == {"00000", "00001"}
    assert not (tmp_path / "signatures").exists()
