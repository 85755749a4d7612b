"""DuckDB views over a run agree with pyarrow, and `agentcpt stats` / `catalog` work on a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from synth.catalog import connect_run, run_stats, write_catalog
from synth.records import Failure, PlanningRecord, ReasoningRecord, ToolAction
from synth.shards import ShardStore

REPO = Path(__file__).resolve().parents[2]


def make_run(root: Path) -> Path:
    run = root / "runs" / "demo-1"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("name: demo\n")
    store = ShardStore(run)
    reasons = ["accepted", "accepted", "content_inconsistency", "invalid_tool", "accepted"]
    for unit in range(2):
        recs = [
            PlanningRecord(
                id=f"p{unit}-{i}", run_id="demo-1", question_id=f"q{i}", analysis="a",
                action=ToolAction(tool="search", arguments={"query": ["q"]}),
                accepted=reasons[i] == "accepted", reason=reasons[i],
            )
            for i in range(5)
        ]
        store.write_unit("planning", f"0000{unit}", recs,
                         [Failure(input_ids=["qx"], error_kind="invalid_output", message="m")], run_id="demo-1")
    store.write_unit("reasoning", "00000", [
        ReasoningRecord(id=f"r{i}", run_id="demo-1", question_id="q", step1="s", step2="s", final_answer="1",
                        correct=i % 2 == 0, decided_by="numeric") for i in range(4)
    ])
    return run


def test_duckdb_views_and_pyarrow_agree_on_counts(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    store = ShardStore(run)
    con = connect_run(run)
    for stage in ("planning", "reasoning", "corpus"):
        assert con.execute(f"select count(*) from {stage}").fetchone()[0] == store.read_table(stage).num_rows
    assert con.execute("select count(*) from planning_failed").fetchone()[0] == 2
    by_reason = dict(con.execute("select reason, count(*) from planning group by 1").fetchall())
    assert by_reason == {"accepted": 6, "content_inconsistency": 2, "invalid_tool": 2}


def test_orphan_files_are_not_counted(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    orphan = ShardStore(run).shard_path("planning", "00009")
    orphan.write_bytes(ShardStore(run).shard_path("planning", "00000").read_bytes())
    assert connect_run(run).execute("select count(*) from planning").fetchone()[0] == 10


def test_run_stats_reports_verdicts_reasons_and_failures(tmp_path: Path) -> None:
    stats = run_stats(make_run(tmp_path))
    planning = next(s for s in stats.stages if s.stage == "planning")
    assert (planning.rows, planning.failed, planning.accepted, planning.rejected) == (10, 2, 6, 4)
    assert planning.acceptance_rate == 0.6
    assert stats.planning_reasons[0].key == "accepted" and stats.planning_reasons[0].count == 6
    assert stats.failures_by_kind == {"planning": {"invalid_output": 2}}
    reasoning = next(s for s in stats.stages if s.stage == "reasoning")
    assert reasoning.accepted == 2


def test_catalog_file_browses_the_run_from_the_output_dirs_parent(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = write_catalog(run)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        con = duckdb.connect(str(path.relative_to(tmp_path)), read_only=True)
        assert con.execute("select count(*) from planning").fetchone()[0] == 10
        assert con.execute("select count(*) from manifest").fetchone()[0] == 5
        con.close()
    finally:
        os.chdir(cwd)


def test_stats_cli_prints_tables_and_runs_sql(tmp_path: Path) -> None:
    make_run(tmp_path)
    base = [sys.executable, "-m", "agentcpt.cli", "stats", "demo-1", "--output-dir", str(tmp_path / "runs")]
    out = subprocess.run(base, capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "planning" in out and "content_inconsistency" in out
    q = subprocess.run(base + ["--sql", "select reason, count(*) n from planning group by 1 order by 2 desc"],
                       capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "accepted" in q and "6" in q
    bad = subprocess.run(base + ["--sql", "select nope from planning"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_stats_of_unknown_run_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agentcpt.cli", "stats", "nope", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr
