"""Progress numbers: counts from the manifest, merged worker usage, ETA, plain log lines."""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.progress import LogDisplay, ProgressBoard, RichDisplay, add_usage, default_display
from pipelines.units import UnitResult
from synth.llm.accounting import UsageTracker
from synth.records import QuestionRecord
from synth.runstate import LLMUsage, RunDir, RunProgress, StageProgress
from synth.shards import ShardStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def question(i: int) -> QuestionRecord:
    return QuestionRecord(
        id=f"q{i}", run_id="r", style="factual", question="?", answer="a", entities=[], knowledge_ids=[]
    )


def snapshot(stage: str, requests: int, latency_s: float) -> object:
    tracker = UsageTracker()
    for _ in range(requests):
        tracker.record_attempt(stage, ok=True, latency_s=latency_s, prompt_tokens=10, completion_tokens=5)
    return tracker.snapshot()


def test_add_usage_sums_counts_and_keeps_the_larger_percentile() -> None:
    a = LLMUsage(requests=2, prompt_tokens=10, failures={"timeout": 1}, latency_p99_ms=100.0)
    b = LLMUsage(requests=3, prompt_tokens=5, failures={"timeout": 2, "http_error": 1}, latency_p99_ms=80.0)
    total = add_usage(a, b)
    assert (total.requests, total.prompt_tokens) == (5, 15)
    assert total.failures == {"timeout": 3, "http_error": 1}
    assert total.latency_p99_ms == 100.0


def test_board_starts_from_the_manifest_and_earlier_sessions_usage(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("questions", "00000", [question(0), question(1)], run_id="r")
    rd = RunDir(tmp_path)
    rd.write_progress(RunProgress(stages={"questions": StageProgress(llm=LLMUsage(requests=7))}))
    board = ProgressBoard(rd, ["questions"], LogDisplay(io.StringIO()))
    p = board.stage("questions")
    assert (p.units_done, p.records, p.llm.requests) == (1, 2, 7)


def test_worker_snapshots_replace_their_previous_one_and_add_across_workers(tmp_path: Path) -> None:
    board = ProgressBoard(RunDir(tmp_path), ["planning"], LogDisplay(io.StringIO()))
    board.usage("w1", snapshot("planning", 2, 0.1))  # type: ignore[arg-type]
    board.usage("w1", snapshot("planning", 5, 0.1))  # type: ignore[arg-type]  # cumulative: replaces
    board.usage("w2", snapshot("planning", 3, 0.3))  # type: ignore[arg-type]
    llm = board.stage("planning").llm
    assert llm.requests == 8
    assert (llm.prompt_tokens, llm.completion_tokens) == (80, 40)
    assert llm.latency_p99_ms is not None and 250 < llm.latency_p99_ms < 350


def test_eta_follows_this_sessions_unit_rate(tmp_path: Path) -> None:
    clock = Clock()
    out = io.StringIO()
    board = ProgressBoard(RunDir(tmp_path), ["planning"], LogDisplay(out), clock=clock)
    board.stage_started("planning")
    board.set_total("planning", 10)
    for i in range(2):
        clock.now += 3.0
        board.unit_done(UnitResult(stage="planning", unit=f"0000{i}", records=4, failed=1, worker="n"))
    p = board.stage("planning")
    assert (p.units_done, p.records, p.failed) == (2, 8, 2)
    assert p.eta_s == 24.0  # 8 units left at 3 s per unit
    assert "[planning] unit 00001: 4 records, 1 failed | units 2/10" in out.getvalue()
    board.close()
    assert RunDir(tmp_path).read_progress().stages["planning"].records == 8


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_progress_bars_and_a_pipe_gets_plain_lines() -> None:
    assert isinstance(default_display(["planning"], io.StringIO()), LogDisplay)
    tty = FakeTTY()
    display = default_display(["planning"], tty)
    assert isinstance(display, RichDisplay)
    progress = RunProgress(
        stages={"planning": StageProgress(units_done=3, units_total=4, records=30, eta_s=5.0)}
    )
    display.refresh(progress)
    display.close()
    assert "planning" in tty.getvalue() and "3/4" in tty.getvalue()
