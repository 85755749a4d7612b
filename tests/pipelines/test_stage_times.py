"""The per-stage wall-time table printed at the end of ``agentcpt run`` (issue 17, item 9)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from pipelines.progress import print_stage_times
from synth.runstate import LLMUsage, RunProgress, StageProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_stage_times_show_start_wall_tokens_and_rate_per_stage_and_the_command_wall() -> None:
    progress = RunProgress(
        stages={
            "documents": StageProgress(started_at=T0, finished_at=T0 + timedelta(seconds=4)),
            "memory": StageProgress(
                started_at=T0 + timedelta(seconds=5),
                finished_at=T0 + timedelta(seconds=105),
                llm=LLMUsage(requests=20, completion_tokens=2500),
            ),
            "corpus": StageProgress(started_at=T0 + timedelta(seconds=110)),  # still running
            "decisions": StageProgress(),  # never started: no row
        }
    )
    out = io.StringIO()
    print_stage_times(progress, out, session_wall_s=131.4)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["stage", "start", "wall", "requests", "completion", "tok", "tok/s"]
    assert lines[1].split() == ["documents", "+0s", "4s", "0", "0"]
    assert lines[2].split() == ["memory", "+5s", "100s", "20", "2500", "25.0"]
    assert lines[3].split() == ["corpus", "+110s", "unfinished", "0", "0"]
    assert lines[4] == "wall time of this command: 131s"
    assert len(lines) == 5


def test_a_run_that_never_started_a_stage_prints_nothing() -> None:
    out = io.StringIO()
    print_stage_times(RunProgress(stages={"memory": StageProgress()}), out, session_wall_s=3.0)
    assert out.getvalue() == ""
