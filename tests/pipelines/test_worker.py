"""The worker without Ray: exactly-once commits, dropped inputs, map units, the stage reader."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.units import DROPPED_UNIT, UnitTask
from pipelines.worker import StageReader, UnitWorker, WorkerJob
from synth.layout import RunLayout
from synth.records import QuestionRecord
from synth.shards import ShardStore
from synth.spec import RunSpec, parse_spec
from synth.stage import Stage, StageContext, StageOutput
from testing.toy_stages import CountingQuestions, EchoPlanning


def spec() -> RunSpec:
    return parse_spec(
        {"name": "t", "stages": {"questions": {}, "planning": {}}, "execution": {"unit_size": 4}}
    )


def worker(tmp_path: Path, stages: dict[str, Stage]) -> UnitWorker:
    job = WorkerJob(
        run_id="run-1",
        run_dir=str(tmp_path),
        base_dir=str(tmp_path),
        spec=spec(),
        stages=stages,
        needs_llm=False,
    )
    return UnitWorker(job, worker_name="node-a")


def questions(n: int) -> list[QuestionRecord]:
    return [
        QuestionRecord(
            id=f"q{i}",
            run_id="run-1",
            style="factual",
            question=f"q {i}?",
            answer="a",
            entities=[f"n{i}"],
            knowledge_ids=[],
        )
        for i in range(n)
    ]


def test_a_unit_is_committed_once_and_a_repeat_reports_it_committed(tmp_path: Path) -> None:
    w = worker(tmp_path, {"questions": CountingQuestions(8)})
    first = asyncio.run(w.run_unit(UnitTask("questions", "00000"), [0, 1, 2, 3]))
    again = asyncio.run(w.run_unit(UnitTask("questions", "00000"), [0, 1, 2, 3]))
    assert (first.records, first.already_committed, first.worker) == (4, False, "node-a")
    assert (again.records, again.already_committed) == (4, True)
    assert len(ShardStore(tmp_path).read_records("questions")) == 4


class CommitsBehindItsBack(Stage):
    """Mimics a retried unit whose earlier attempt committed just before its worker died."""

    name = "questions"
    barrier = True

    def __init__(self, store: ShardStore) -> None:
        self.store = store

    async def process(self, items: Sequence[Any], ctx: StageContext) -> StageOutput:
        records = questions(len(items))
        self.store.write_unit("questions", "00000", records[:1], worker="dead-attempt", run_id=ctx.run_id)
        return StageOutput(records=records)


def test_a_retry_whose_dead_attempt_committed_reports_that_commit_and_writes_nothing(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    w = worker(tmp_path, {"questions": CommitsBehindItsBack(store)})
    result = asyncio.run(w.run_unit(UnitTask("questions", "00000"), [0, 1, 2]))
    assert result.already_committed
    assert (result.records, result.worker) == (1, "dead-attempt")
    assert [r.id for r in store.read_records("questions")] == ["q0"]


def test_prepare_commits_dropped_inputs_once_however_often_it_runs(tmp_path: Path) -> None:
    w = worker(tmp_path, {"questions": CountingQuestions(10, drop_every=3)})
    first = asyncio.run(w.prepare("questions", unit_size=4))
    second = asyncio.run(w.prepare("questions", unit_size=4))
    assert first.units == second.units == ["00000", "00001"]
    assert first.items == second.items == 7
    assert first.dropped == second.dropped == 3
    failed = ShardStore(tmp_path).read_table("questions", kind="failed")
    assert failed.num_rows == 3
    assert set(failed.column("unit").to_pylist()) == {DROPPED_UNIT}


def test_a_map_unit_reads_the_upstream_unit_of_the_same_name(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    qs = questions(6)
    store.write_unit("questions", "00000", qs[:3], run_id="run-1")
    store.write_unit("questions", "00001", qs[3:], run_id="run-1")
    w = worker(tmp_path, {"planning": EchoPlanning()})
    result = asyncio.run(w.run_unit(UnitTask("planning", "00001", upstream="questions"), None))
    assert result.records == 3
    parents = [r.parent_ids for r in store.read_records("planning")]
    assert parents == [["q3"], ["q4"], ["q5"]]


def test_an_empty_upstream_unit_commits_an_empty_unit_without_asking_the_stage(tmp_path: Path) -> None:
    class Refuses(EchoPlanning):
        async def process(self, items: Sequence[Any], ctx: StageContext) -> StageOutput:
            raise AssertionError("the stage must not be called with no items")

    store = ShardStore(tmp_path)
    store.write_unit("questions", "00000", [], run_id="run-1")
    w = worker(tmp_path, {"planning": Refuses()})
    result = asyncio.run(w.run_unit(UnitTask("planning", "00000", upstream="questions"), None))
    assert (result.records, result.failed) == (0, 0)
    assert store.committed_units("planning") == {"00000"}


def test_stage_reader_rereads_a_stage_only_after_more_of_it_commits(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    qs = questions(4)
    store.write_unit("questions", "00000", qs[:2], run_id="run-1")
    read = StageReader(store)
    first = read("questions")
    assert read("questions") is first  # cached
    store.write_unit("questions", "00001", qs[2:], run_id="run-1")
    assert [r.id for r in read("questions")] == ["q0", "q1", "q2", "q3"]


def test_a_barrier_stages_items_travel_through_the_run_directory_not_the_driver(tmp_path: Path) -> None:
    # The driver gets unit names and counts only; each unit's worker reads its items from
    # the file prepare wrote, which goes once the unit commits (issue 19: the driver's
    # memory must not grow with a stage's items).
    w = worker(tmp_path, {"questions": CountingQuestions(10, drop_every=3)})
    prepared = asyncio.run(w.prepare("questions", unit_size=4, limit=6))
    assert (prepared.units, prepared.items, prepared.items_available) == (["00000", "00001"], 6, 7)
    layout = RunLayout(tmp_path)
    assert all(layout.unit_items("questions", u).exists() for u in prepared.units)
    result = asyncio.run(w.run_unit(UnitTask("questions", "00001"), None))
    assert result.records == 2  # items 6 and 7 of the first 6 kept items [0, 1, 3, 4 | 6, 7]
    questions_written = [r.question for r in ShardStore(tmp_path).read_unit_records("questions", "00001")]
    assert sorted(questions_written) == ["What is 6 squared?", "What is 7 squared?"]
    assert not layout.unit_items("questions", "00001").exists()
    assert layout.unit_items("questions", "00000").exists()
