"""``agentcpt status`` and ``agentcpt cancel`` read and signal a run through its directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agentcpt.cli import main
from pipelines.status import cancel_command, status_command
from synth.errors import UsageError
from synth.runstate import LLMUsage, RunDir, RunProgress, StageProgress


def make_run(tmp_path: Path, state: str = "running") -> RunDir:
    rd = RunDir(tmp_path / "runs" / "demo-1")
    rd.path.mkdir(parents=True)
    (rd.path / "spec.yaml").write_text("name: demo\n")
    status = rd.mark(state)  # type: ignore[arg-type]
    rd.write_status(status)
    rd.write_progress(
        RunProgress(
            stages={
                "questions": StageProgress(units_done=4, units_total=4, records=40, failed=2),
                "planning": StageProgress(
                    units_done=1,
                    units_total=4,
                    records=9,
                    failed=1,
                    eta_s=12.0,
                    llm=LLMUsage(
                        requests=20, prompt_tokens=300, completion_tokens=100, failures={"timeout": 1}
                    ),
                ),
            }
        )
    )
    return rd


def test_status_json_has_state_stage_progress_and_summed_llm_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path)
    assert status_command("demo-1", str(tmp_path / "runs"), json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"]["state"] == "running"
    assert report["driver_alive"] is False  # this test's own pid is not a separate driver
    assert report["progress"]["stages"]["planning"]["units_done"] == 1
    assert report["llm"]["requests"] == 20 and report["llm"]["failures"] == {"timeout": 1}


def test_status_table_lists_each_stage_and_llm_totals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, state="succeeded")
    assert main(["status", "demo-1", "--output-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "demo-1: succeeded" in out
    assert "questions" in out and "1/4" in out
    assert "20 requests" in out and "300 prompt + 100 completion tokens" in out


def test_status_of_an_unknown_run_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no run"):
        status_command("nope", str(tmp_path))
    assert main(["status", "nope", "--output-dir", str(tmp_path)]) == 2


def test_cancel_of_a_run_with_a_live_driver_writes_the_marker_only(tmp_path: Path) -> None:
    rd = make_run(tmp_path)
    status = rd.read_status()
    assert status is not None
    status.pid = os.getppid()  # a live process that is not us stands in for the driver
    rd.write_status(status)
    assert cancel_command("demo-1", str(tmp_path / "runs")) == 0
    assert rd.cancel_requested()
    assert rd.read_status().state == "running"  # type: ignore[union-attr]  # the driver marks it


def test_cancel_of_a_run_whose_driver_is_gone_marks_it_cancelled(tmp_path: Path) -> None:
    rd = make_run(tmp_path)
    status = rd.read_status()
    assert status is not None
    status.pid = 2**22 + 12345  # no such process
    rd.write_status(status)
    assert cancel_command("demo-1", str(tmp_path / "runs")) == 0
    assert rd.read_status().state == "cancelled"  # type: ignore[union-attr]


def test_cancel_of_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    rd = make_run(tmp_path, state="succeeded")
    assert cancel_command("demo-1", str(tmp_path / "runs")) == 0
    assert not rd.cancel_requested()
    assert rd.read_status().state == "succeeded"  # type: ignore[union-attr]


def test_a_resumed_runs_new_driver_is_alive_though_the_run_started_before_it(tmp_path: Path) -> None:
    """``agentcpt run --run-id ID`` keeps the run's started_at; its driver process is younger than that."""
    import subprocess
    import sys
    from datetime import timedelta

    from pipelines.rundirs import driver_alive
    from synth.runstate import utc_now

    rd = make_run(tmp_path)
    status = rd.read_status()
    assert status is not None
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as driver:  # noqa: S603
        try:
            time.sleep(0.2)
            status.pid = driver.pid  # the resumed session's driver
            status.started_at = utc_now() - timedelta(hours=1)  # the first session's start
            status.driver_since = utc_now()
            rd.write_status(status)
            assert driver_alive(rd) == driver.pid
            # A pid that was reused by a process younger than the driver's stamp is not the driver.
            status.driver_since = utc_now() - timedelta(minutes=5)
            rd.write_status(status)
            assert driver_alive(rd) is None
        finally:
            driver.kill()
