"""The runner on a two-node Ray cluster, with the toy stages of ``testing.toy_stages``."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.progress import LogDisplay
from pipelines.rundirs import prepare_run_dir
from pipelines.runner import SessionResult, run_session
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import SpecError, parse_spec
from synth.stage import Stage
from testing.toy_stages import Behaviour, read_trace, toy_pipeline


def toy_spec(unit_size: int = 5, corpus: bool = True, **execution: Any) -> Any:
    stages = ["questions", "planning"] + (["corpus"] if corpus else [])
    return parse_spec(
        {
            "name": "toy",
            "stages": {s: {} for s in stages},
            "execution": {"unit_size": unit_size, **execution},
            "output_dir": "runs",
        }
    )


def run(
    tmp_path: Path, stages: dict[str, Stage], spec: Any = None, run_id: str | None = None
) -> SessionResult:
    buf = io.StringIO()
    return run_session(
        spec or toy_spec(),
        run_id=run_id,
        base_dir=tmp_path,
        stages=stages,
        display=LogDisplay(buf),
        out=buf,
        print_summary=False,
    )


def ids(run_dir: Path, stage: str) -> list[str]:
    return ShardStore(run_dir).read_table(stage).column("id").to_pylist()


def test_a_run_commits_every_unit_once_and_both_nodes_do_work(tmp_path: Path, ray_cluster: Any) -> None:
    result = run(tmp_path, toy_pipeline(60, drop_every=7, fail_every=4), toy_spec(unit_size=4))
    assert result.outcome.state == "succeeded", result.outcome.error
    store = ShardStore(result.run_dir)
    for stage in ("questions", "planning", "corpus"):
        stage_ids = ids(result.run_dir, stage)
        assert len(stage_ids) == len(set(stage_ids)), f"duplicate ids in {stage}"
    assert len(ids(result.run_dir, "questions")) == 60 - 8  # 8 of 60 dropped
    failed = store.read_table("planning", kind="failed").num_rows
    assert len(ids(result.run_dir, "planning")) + failed == 52
    # Acceptance: the manifest's worker column names both Ray nodes.
    manifest = pq.read_table(result.run_dir / "manifest.parquet")
    nodes = {n["NodeID"] for n in __import__("ray").nodes() if n["Alive"]}
    assert set(manifest.column("worker").to_pylist()) == nodes
    assert RunDir(result.run_dir).read_status().state == "succeeded"  # type: ignore[union-attr]
    # progress.json: units, records and failures per stage, as `agentcpt status` shows them.
    progress = json.loads((result.run_dir / "progress.json").read_text())["stages"]
    assert progress["questions"]["units_done"] == progress["questions"]["units_total"] == 13
    assert (progress["questions"]["records"], progress["questions"]["failed"]) == (52, 8)
    assert progress["planning"]["records"] + progress["planning"]["failed"] == 52
    assert progress["planning"]["failed"] == failed
    assert progress["corpus"]["records"] == progress["planning"]["records"]
    assert all(p["finished_at"] and p["eta_s"] == 0.0 for p in progress.values())


def test_a_map_stage_streams_behind_its_upstream_within_the_in_flight_bound(
    tmp_path: Path, ray_cluster: Any
) -> None:
    trace = tmp_path / "trace.log"
    stages = toy_pipeline(
        30,
        corpus=False,
        questions=Behaviour(delay_s=0.2, trace=str(trace)),
        planning=Behaviour(delay_s=0.2, trace=str(trace)),
    )
    result = run(tmp_path, stages, toy_spec(unit_size=5, corpus=False, max_units_in_flight=1))
    assert result.outcome.state == "succeeded", result.outcome.error
    events = read_trace(trace)
    # Streaming: planning started on early questions before the last questions were written.
    first_planning = min(e.time for e in events if e.stage == "planning" and e.event == "start")
    last_question = max(e.time for e in events if e.stage == "questions" and e.event == "end")
    assert first_planning < last_question
    # Backpressure: never more units running than max_units_in_flight.
    running, peak = 0, 0
    for e in sorted(events, key=lambda e: (e.time, e.event == "start")):
        running += 1 if e.event == "start" else -1
        peak = max(peak, running)
    assert peak == 1


@pytest.mark.slow
def test_a_failing_unit_fails_the_run_and_resume_redoes_only_what_is_missing(
    tmp_path: Path, ray_cluster: Any
) -> None:
    trace = tmp_path / "trace.log"
    spec = toy_spec(unit_size=5, max_units_in_flight=2)
    kept = [i for i in range(40) if i % 6 != 5]
    fifth_unit = str(kept[20])  # the key of planning's fifth unit (first question in it)
    broken = toy_pipeline(
        40,
        drop_every=6,
        questions=Behaviour(trace=str(trace)),
        planning=Behaviour(trace=str(trace), fail_unit=fifth_unit),
    )
    first = run(tmp_path, broken, spec)
    assert first.outcome.state == "failed"
    assert "injected failure" in (first.outcome.error or "")
    assert RunDir(first.run_dir).read_status().state == "failed"  # type: ignore[union-attr]
    questions_before = ShardStore(first.run_dir).committed_units("questions")
    planning_before = ShardStore(first.run_dir).committed_units("planning")
    trace.write_text("")

    fixed = toy_pipeline(
        40, drop_every=6, questions=Behaviour(trace=str(trace)), planning=Behaviour(trace=str(trace))
    )
    second = run(tmp_path, fixed, spec, run_id=first.run_id)
    assert second.outcome.state == "succeeded", second.outcome.error
    events = read_trace(trace)
    store = ShardStore(second.run_dir)
    for stage, before in (("questions", questions_before), ("planning", planning_before)):
        redone = [e for e in events if e.stage == stage and e.event == "start"]
        assert len(redone) == len(store.committed_units(stage) - before), (
            f"{stage}: committed units were redone"
        )
    # Dropped inputs are in the failed ledger exactly once although prepare ran twice.
    failed = store.read_table("questions", kind="failed")
    assert failed.num_rows == 6
    assert len(set(ids(second.run_dir, "corpus"))) == len(ids(second.run_dir, "corpus"))


def test_a_corrupt_shard_never_turns_the_closing_dataset_card_into_a_crash(
    tmp_path: Path, ray_cluster: Any
) -> None:
    first = run(tmp_path, toy_pipeline(12), toy_spec(unit_size=4))
    assert first.outcome.state == "succeeded", first.outcome.error
    victim = ShardStore(first.run_dir).files("corpus")[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    buf = io.StringIO()
    # Resume: nothing is left to do, and the card reads the corrupt shard at the end.
    second = run_session(
        toy_spec(unit_size=4),
        run_id=first.run_id,
        base_dir=tmp_path,
        stages=toy_pipeline(12),
        display=LogDisplay(buf),
        out=buf,
        print_summary=False,
    )
    assert second.outcome.state == "succeeded"
    assert "dataset card not written: " in buf.getvalue()
    assert victim.name in buf.getvalue()


def test_resuming_with_an_output_changing_spec_is_refused_before_anything_runs(tmp_path: Path) -> None:
    prepare_run_dir(tmp_path / "runs" / "r1", toy_spec(unit_size=5, corpus=False))
    with pytest.raises(SpecError) as err:
        run(tmp_path, toy_pipeline(10, corpus=False), toy_spec(unit_size=3, corpus=False), run_id="r1")
    assert err.value.field == "execution.unit_size"
    assert RunDir(tmp_path / "runs" / "r1").read_status() is None  # never marked running


@pytest.mark.slow
def test_cancel_marker_stops_the_run_as_cancelled_and_leaves_no_partial_files(
    tmp_path: Path, ray_cluster: Any
) -> None:
    spec = toy_spec(unit_size=2, corpus=False, max_units_in_flight=2)
    stages = toy_pipeline(40, corpus=False, questions=Behaviour(delay_s=0.3))
    run_dir: list[Path] = []

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dirs = list((tmp_path / "runs").glob("*/manifest.d/questions/*.json"))
            if dirs:
                rd = RunDir(dirs[0].parents[2])
                run_dir.append(rd.path)
                rd.request_cancel()
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    result = run(tmp_path, stages, spec)
    canceller.join()
    assert result.outcome.state == "cancelled"
    assert RunDir(result.run_dir).read_status().state == "cancelled"  # type: ignore[union-attr]
    store = ShardStore(result.run_dir)
    assert 0 < len(store.committed_units("questions")) < 20
    assert store.verify() == []
    committed = {result.run_dir / r.path for r in store.manifest_rows()}
    on_disk = {p for p in (result.run_dir / "shards").rglob("*") if p.is_file()}
    assert on_disk - committed == set(), "a shard is on disk without a manifest entry"
    # The run can be resumed to completion.
    again = run(tmp_path, toy_pipeline(40, corpus=False), spec, run_id=result.run_id)
    assert again.outcome.state == "succeeded"
    assert len(set(ids(again.run_dir, "planning"))) == 40
