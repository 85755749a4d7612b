"""The data flywheel: tool responses of trajectories and rollouts become documents.

The end-to-end test runs the stages in process over a real run directory: run A ingests three
bundled pages, builds memory and questions, and lets the ReAct agent answer them with the
offline tools (search, visit); its rollouts are committed as shards. Run B, a later run with
``stages.documents.tool_responses.runs: [A]``, ingests those tool responses as
``source_type: tool_response`` documents, and its memory stage builds statements from them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from synth.ingest.tool_responses import SEARCH_URL_PREFIX, from_trajectory_files, response_document
from synth.knowledge import knowledge_cache
from synth.records import DocumentRecord, MemoryRecord, RolloutRecord, ToolAction, TrajectoryStep
from synth.shards import ShardStore
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages import get_stage
from testing.fas_responder import scripted_fas
from testing.scripted_llm import ScriptedLLM

REPO = Path(__file__).resolve().parents[3]
WEBDANCER = REPO / ".." / "shared" / "data" / "trajectories" / "webdancer_sample_traj.jsonl"
PAGES = [
    "configs/quickstart/pages/07-kestrel-bay-bridge.html",
    "configs/quickstart/pages/11-riverton-transit-ridership-2024.html",
    "configs/quickstart/pages/17-brightwater-airport-2024.html",
]


def test_visit_and_search_responses_become_documents_with_their_locators() -> None:
    page = "The Kestrel Bay Bridge opened in 1998. " * 20
    visit = TrajectoryStep(
        thought="read it",
        action=ToolAction(tool="visit", arguments={"url": ["https://bridge.example/a"], "goal": "opening year"}),
        observation="evidence only",
        raw=page,
    )
    doc = response_document(visit, "traj#0/t1", ["search", "visit"])
    assert doc is not None and not isinstance(doc, type(None))
    assert (doc.url, doc.title, doc.text, doc.source_type) == (
        "https://bridge.example/a", "opening year", page.strip(), "tool_response",
    )  # the raw page, not the goal-conditioned evidence
    search = TrajectoryStep(
        action=ToolAction(tool="search", arguments={"query": ["kestrel bay bridge"]}), observation="1. [Bridge](u)"
    )
    doc = response_document(search, "traj#0/t0", ["search", "visit"])
    assert doc.url == f"{SEARCH_URL_PREFIX}kestrel%20bay%20bridge" and doc.title == "Search results for kestrel bay bridge"


def test_errors_python_output_and_answers_are_not_documents() -> None:
    error = TrajectoryStep(action=ToolAction(tool="visit", arguments={"url": "u"}), observation="Error: no such page")
    assert response_document(error, "r", ["visit"]).error_kind == "dropped_empty_tool_response"
    python = TrajectoryStep(action=ToolAction(tool="python", arguments={"code": "1"}), observation="1")
    assert response_document(python, "r", ["search", "visit"]) is None
    assert response_document(TrajectoryStep(thought="done"), "r", ["search", "visit"]) is None


@pytest.mark.skipif(not WEBDANCER.is_file(), reason="../shared/data (real trajectories) is not present")
def test_the_real_webdancer_trajectories_yield_tool_response_documents() -> None:
    docs, dropped = from_trajectory_files([WEBDANCER], REPO, ["search", "visit"])
    assert len(docs) > 150
    assert {d.source_type for d in docs} == {"tool_response"}
    visits = [d for d in docs if not d.url.startswith(SEARCH_URL_PREFIX)]
    assert visits and all(d.url.startswith("http") for d in visits)
    assert all(d.ref.startswith("../shared/data/") or "webdancer" in d.ref for d in docs)
    assert len({d.ref for d in docs}) == len(docs)
    assert all(f.error_kind == "dropped_empty_tool_response" for f in dropped)


def _context(run_dir: Path, spec: dict[str, Any], store: dict[str, list[Any]]) -> StageContext:
    llm = ScriptedLLM(scripted_fas)
    return StageContext(
        run_id=run_dir.name,
        spec=parse_spec(spec),
        llm=llm,
        judge_llm=llm,
        run_dir=run_dir,
        read_stage=lambda stage: store[stage],
        base_dir=REPO,
    )


def _run_stage(name: str, ctx: StageContext, store: dict[str, list[Any]]) -> list[Any]:
    stage = get_stage(name)
    items = stage.prepare(ctx).items if stage.barrier else store[stage.upstream[0]]
    out = asyncio.run(stage.process(items, ctx))
    store[name] = out.records
    return out.records


def test_rollout_tool_responses_come_back_as_documents_that_yield_statements(tmp_path: Path) -> None:
    knowledge_cache().clear()
    # -- run A: pages -> memory -> questions -> rollouts (search and visit over run A's pages) --
    run_a = tmp_path / "runs" / "run-a"
    store_a: dict[str, list[Any]] = {}
    spec_a = {
        "name": "a",
        "inputs": {"web": PAGES},
        "stages": {
            "documents": {},
            "memory": {},
            "questions": {"styles": ["factual"], "per_cluster": 1, "max_clusters": 6, "difficulty_filter": False},
            "rollouts": {"max_steps": 3, "tools": ["search", "visit"], "judge": False},
        },
        "output_dir": str(tmp_path / "runs"),
    }
    ctx_a = _context(run_a, spec_a, store_a)
    for name in ("documents", "memory", "questions"):
        assert _run_stage(name, ctx_a, store_a), f"run A: no {name}"
    rollouts = _run_stage("rollouts", ctx_a, store_a)
    assert rollouts and all(isinstance(r, RolloutRecord) for r in rollouts)
    tools_used = {s.action.tool for r in rollouts for s in r.steps if s.action}
    assert tools_used == {"search", "visit"}
    ShardStore(run_a).write_unit("rollouts", "00000", rollouts, run_id="run-a")

    # -- run B, later: the tool responses of run A's rollouts as documents, then memory --
    run_b = tmp_path / "runs" / "run-b"
    store_b: dict[str, list[Any]] = {}
    spec_b = {
        "name": "b",
        "stages": {"documents": {"tool_responses": {"runs": ["run-a"]}}, "memory": {}},
        "output_dir": str(tmp_path / "runs"),
    }
    ctx_b = _context(run_b, spec_b, store_b)
    documents = _run_stage("documents", ctx_b, store_b)
    assert documents and {d.source_type for d in documents} == {"tool_response"}
    urls = {d.url for d in documents}
    assert any(u.startswith(SEARCH_URL_PREFIX) for u in urls)  # search results pages
    assert urls & {d.url for d in store_a["documents"]}  # visited pages, under their own URLs
    assert all(isinstance(d, DocumentRecord) and d.text for d in documents)
    statements = _run_stage("memory", ctx_b, store_b)
    assert statements and all(isinstance(m, MemoryRecord) for m in statements)
    by_id = {d.id: d for d in documents}
    assert {m.doc_id for m in statements} <= set(by_id)
    assert all(m.source_url == by_id[m.doc_id].url and m.verified_by == "judge" for m in statements)


def test_a_run_named_in_tool_responses_without_rollouts_is_a_ledger_row(tmp_path: Path) -> None:
    spec = {
        "name": "b",
        "inputs": {"web": PAGES[:1]},
        "stages": {"documents": {"tool_responses": {"runs": ["missing-run"]}}},
        "output_dir": str(tmp_path),
    }
    prepared = get_stage("documents").prepare(_context(tmp_path / "b", spec, {}))
    assert [f.error_kind for f in prepared.dropped] == ["no_rollouts"]
    assert len(prepared.items) == 1  # the web page still runs
