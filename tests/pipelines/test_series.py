"""``progress.jsonl``: the board appends cumulative counters every few seconds; readers survive a
cut last line, an old format and a file too large to read whole."""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.progress import LogDisplay, ProgressBoard
from pipelines.series import MAX_SERIES_BYTES, ProgressSample, read_progress_series
from pipelines.units import UnitResult
from synth.layout import RunLayout
from synth.runstate import RunDir


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _result(unit: str, records: int, failed: int = 0) -> UnitResult:
    return UnitResult(stage="planning", unit=unit, records=records, failed=failed, worker="w")


def test_the_board_samples_cumulative_counts_at_most_every_interval_and_when_forced(tmp_path: Path) -> None:
    clock = Clock()
    board = ProgressBoard(
        RunDir(tmp_path), ["planning"], LogDisplay(io.StringIO()), write_interval_s=0, series_interval_s=2.0, clock=clock
    )
    board.unit_done(_result("00000", 5, 1))  # first sample
    clock.now += 1
    board.unit_done(_result("00001", 5))  # within the interval: no sample
    clock.now += 1.5
    board.unit_done(_result("00002", 5))
    board.stage_finished("planning")  # forced
    samples = read_progress_series(RunLayout(tmp_path).progress_series)
    assert [s.stages["planning"].records for s in samples] == [5, 15, 15]
    assert [s.stages["planning"].failed for s in samples] == [1, 1, 1]
    assert len({s.session for s in samples}) == 1
    assert samples[0].t <= samples[1].t <= samples[2].t

    again = ProgressBoard(RunDir(tmp_path), ["planning"], LogDisplay(io.StringIO()), clock=clock)
    again.close()  # a resumed session appends under its own session id
    resumed = read_progress_series(RunLayout(tmp_path).progress_series)
    assert len(resumed) == 4 and resumed[-1].session != resumed[0].session


def test_a_cut_or_foreign_line_is_skipped_and_a_missing_file_is_an_empty_series(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    assert read_progress_series(path) == []
    good = ProgressSample.model_validate({"t": "2026-01-01T00:00:00Z", "session": "a"}).model_dump_json()
    path.write_text(f'{good}\n{{"not": "a sample"}}\n{good[:20]}', encoding="utf-8")
    assert len(read_progress_series(path)) == 1


def test_a_long_series_is_read_from_its_tail_and_thinned_keeping_the_last_sample(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    lines = [
        ProgressSample.model_validate(
            {"t": f"2026-01-01T00:00:{i % 60:02d}Z", "session": "a", "stages": {"x": {"records": i}}}
        ).model_dump_json()
        for i in range(40_000)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > MAX_SERIES_BYTES
    samples = read_progress_series(path, max_points=300)
    assert len(samples) == 300
    assert samples[-1].stages["x"].records == 39_999
    assert samples[0].stages["x"].records > 0  # the head beyond the byte budget was not read
