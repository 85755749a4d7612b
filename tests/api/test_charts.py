"""Server-rendered SVG charts: axes that fit the data, escaped run text, rates from the progress
series (never across a resumed run's gap), CPT curves from metrics.jsonl, and empty states."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.charts import Bar, BarChart, LineChart, Series, nice_ticks, render_bar_chart, render_line_chart
from api.services.run_charts import cpt_charts, throughput_charts
from pipelines.series import ProgressSample
from synth.layout import RunLayout


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    assert nice_ticks(0, 97) == [0, 25, 50, 75, 100]
    assert nice_ticks(0.0002, 0.00101)[0] <= 0.0002 and nice_ticks(0.0002, 0.00101)[-1] >= 0.00101
    flat = nice_ticks(5, 5)  # a flat series still gets an axis around it
    assert flat[0] < 5 < flat[-1]


def test_a_line_chart_plots_each_series_and_breaks_at_gaps() -> None:
    chart = LineChart("c", "T", "x", "y", [Series("a", [(0, 1.0), (1, None), (2, 3.0), (3, 4.0)]), Series("b", [(0, 2.0)])])
    html = str(render_line_chart(chart))
    assert 'data-chart="c" data-points="4"' in html
    path_a = re.search(r'data-series="a" d="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert path_a.count("M") == 2 and path_a.count("L") == 1  # a new segment after the gap
    assert html.count('class="dot s0"') == 3 and html.count('class="dot s1"') == 1
    assert "style=" not in html and "<script" not in html


def test_run_text_is_escaped_in_charts() -> None:
    evil = '<script>alert("x")</script>'
    html = str(render_bar_chart(BarChart("b", evil, "n", [Bar(evil, 2), Bar("ok", 1)])))
    html += str(render_line_chart(LineChart("l", "t", "x", "y", [Series(evil, [(0, 1.0), (1, 2.0)]), Series("o", [])])))
    assert "<script" not in html and "&lt;script&gt;" in html


def test_empty_charts_say_why_instead_of_drawing_axes() -> None:
    html = str(render_line_chart(LineChart("c", "T", "x", "y", [Series("a", [])], empty="nothing yet")))
    assert 'data-points="0"' in html and "nothing yet" in html and "<svg" not in html


def _sample(seconds: float, session: str, records: int, requests: int) -> ProgressSample:
    t = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    return ProgressSample.model_validate(
        {"t": t, "session": session, "stages": {"planning": {"records": records}}, "llm": {"requests": requests}}
    )


def test_rates_come_from_differences_within_a_session_and_never_span_a_resume() -> None:
    samples = [
        _sample(0, "a", 0, 0),
        _sample(2, "a", 20, 4),
        _sample(4, "a", 40, 8),
        _sample(100, "b", 40, 8),  # resumed much later
        _sample(102, "b", 50, 10),
    ]
    html = "".join(str(c) for c in throughput_charts(samples))
    records = re.search(r'id="chart-records-rate".*?</figure>', html).group(0)  # type: ignore[union-attr]
    tips = re.findall(r"<title>planning: ([\d.]+) at (\d+)s</title>", records)
    assert tips == [("10", "2"), ("10", "4"), ("5", "102")]  # no point at 100 s: a gap, not a rate
    assert 'id="chart-llm-cost" data-chart="llm-cost" data-points="0"' in html  # no price set


def test_cpt_curves_come_from_the_trainers_metrics_jsonl(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    stage = layout.cpt_smoke / "stage1"
    stage.mkdir(parents=True)
    events = [
        {"event": "eval", "step": 0, "eval_loss": 6.0},
        {"event": "train", "step": 4, "loss": 5.0, "lr": 1e-3, "tokens_per_s": 900.0},
        {"event": "train", "step": 8, "loss": 4.0, "lr": 5e-4, "tokens_per_s": 1000.0},
        {"event": "eval", "step": 8, "eval_loss": 4.5},
        {"event": "save", "step": 8},
    ]
    (stage / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n{cut", encoding="utf-8")
    html = "".join(str(c) for c in cpt_charts(layout))
    assert 'data-chart="cpt-loss" data-points="4"' in html
    assert 'data-chart="cpt-lr" data-points="2"' in html and 'data-chart="cpt-tokens-rate" data-points="2"' in html
    assert 'data-series="cpt-smoke/stage1 held-out"' in html
