"""The charts of a run page, from what the run directory holds.

* throughput and LLM usage over time — ``progress.jsonl``, the cumulative counters the driver
  samples every couple of seconds (``pipelines.progress.ProgressSeries``): rates are the
  differences of consecutive samples of one session (a resumed run's gap is not a rate);
* planning reasons, reasoning verdicts, corpus tokens per kind and CPT stage — the run's
  stats (``synth.catalog.run_stats``, already read for the page);
* CPT loss, learning rate and tokens/s — the trainer's ``<stage>/metrics.jsonl`` under the
  run folder (``RunLayout.cpt_metrics``: ``cpt-smoke/`` from ``make cpt-smoke``, or ``cpt/``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from api.charts import (
    Bar,
    BarChart,
    LineChart,
    Series,
    format_duration,
    render_bar_chart,
    render_line_chart,
)
from pipelines.series import ProgressSample, read_progress_series
from synth.catalog import RunStats
from synth.layout import RunLayout

MAX_METRIC_LINES = 20_000  # per metrics.jsonl; a long CPT run is thinned, not read whole
RATE_WINDOW_S = 10.0  # rates are averaged over this much of the past (a few samples)

Counter = Callable[[ProgressSample], float]  # a cumulative counter of a sample
Level = Callable[[ProgressSample], float | None]  # a level (latency, cost); None = unknown


@dataclass(frozen=True)
class ChartSection:
    title: str
    charts: list[Markup]


# ---------------------------------------------------------------------------
# progress.jsonl
# ---------------------------------------------------------------------------


def _rate_series(samples: list[ProgressSample], value: Counter, name: str) -> Series:
    """Per-second rate of a cumulative counter at each sample, over the last ``RATE_WINDOW_S``
    of its session (counters move a whole unit at a time: a rate between two adjacent
    samples is mostly spikes and zeros). The first sample of a session is a gap."""
    if not samples:
        return Series(name, [])
    t0 = samples[0].t
    points: list[tuple[float, float | None]] = []
    start = 0  # index of the oldest sample in the window
    for i, b in enumerate(samples):
        if i == 0 or samples[i - 1].session != b.session:
            start = i
            points.append(((b.t - t0).total_seconds(), None))
            continue
        while start + 1 < i and (b.t - samples[start + 1].t).total_seconds() >= RATE_WINDOW_S:
            start += 1
        a = samples[start]
        dt = (b.t - a.t).total_seconds()
        rate = max(0.0, (value(b) - value(a)) / dt) if dt > 0 else None
        points.append(((b.t - t0).total_seconds(), rate))
    return Series(name, points)


def _level_series(samples: list[ProgressSample], value: Level, name: str) -> Series:
    if not samples:
        return Series(name, [])
    t0 = samples[0].t
    return Series(name, [((s.t - t0).total_seconds(), value(s)) for s in samples])


def throughput_charts(samples: list[ProgressSample]) -> list[Markup]:
    stages = list(dict.fromkeys(name for s in samples for name in s.stages))

    def stage_value(stage: str, attr: str) -> Counter:
        return lambda s: float(getattr(s.stages[stage], attr)) if stage in s.stages else 0.0

    # A stage that never committed a record (or a failure) would only add a flat line.
    producing = [st for st in stages if any(s.stages.get(st) and s.stages[st].records for s in samples)]
    failing = [st for st in stages if any(s.stages.get(st) and s.stages[st].failed for s in samples)]
    time_axis = "time since the first sample"
    charts = [
        LineChart(
            "records-rate", "Records per second, by stage", time_axis, "records/s",
            [_rate_series(samples, stage_value(st, "records"), st) for st in producing],
            x_format=format_duration, x_from_zero=True,
        ),
        LineChart(
            "failures", "Failed inputs over time, by stage", time_axis, "failed (cumulative)",
            [_level_series(samples, stage_value(st, "failed"), st) for st in failing],
            empty="no failures", x_format=format_duration, x_from_zero=True,
        ),
        LineChart(
            "llm-requests-rate", "LLM requests per second", time_axis, "requests/s",
            [_rate_series(samples, lambda s: float(s.llm.requests), "requests")] if _used_llm(samples) else [],
            empty="no LLM requests", x_format=format_duration, x_from_zero=True,
        ),
        LineChart(
            "llm-tokens-rate", "LLM tokens per second", time_axis, "tokens/s",
            [
                _rate_series(samples, lambda s: float(s.llm.prompt_tokens), "prompt"),
                _rate_series(samples, lambda s: float(s.llm.completion_tokens), "completion"),
            ] if _used_llm(samples) else [],
            empty="no LLM requests", x_format=format_duration, x_from_zero=True,
        ),
        LineChart(
            "llm-latency", "LLM latency", time_axis, "ms",
            [
                _level_series(samples, lambda s: s.llm.latency_p50_ms, "p50"),
                _level_series(samples, lambda s: s.llm.latency_p99_ms, "p99"),
            ],
            empty="no LLM requests", x_format=format_duration, x_from_zero=True,
        ),
        LineChart(
            "llm-cost", "LLM cost (cumulative)", time_axis, "USD",
            [_level_series(samples, lambda s: s.llm.cost_usd, "cost")],
            empty="no cost: the spec's llm.price is not set", x_format=format_duration, x_from_zero=True,
        ),
    ]  # fmt: skip
    return [render_line_chart(c) for c in charts]


def _used_llm(samples: list[ProgressSample]) -> bool:
    return any(s.llm.requests for s in samples)


# ---------------------------------------------------------------------------
# Run stats
# ---------------------------------------------------------------------------


def verdict_charts(stats: RunStats) -> list[Markup]:
    reasons = [Bar(r.key, r.count, 0 if r.key == "accepted" else 1) for r in stats.planning_reasons]
    # Keys are "<decided_by>:<correct|incorrect>" (synth.catalog.run_stats).
    verdicts = []
    for r in sorted(stats.reasoning_decided_by, key=lambda r: (r.key.rsplit(":", 1)[-1], r.key)):
        decided_by, _, verdict = r.key.rpartition(":")
        verdicts.append(Bar(f"{verdict} ({decided_by})", r.count, 0 if verdict == "correct" else 1))
    return [
        render_bar_chart(
            BarChart("planning-reasons", "Planning: judge verdicts by reason", "records", reasons,
                     empty="no planning records")  # fmt: skip
        ),
        render_bar_chart(
            BarChart("reasoning-correctness", "Reasoning: correct vs incorrect, by what decided", "records",
                     verdicts, empty="no reasoning records")  # fmt: skip
        ),
    ]


def corpus_chart(stats: RunStats) -> Markup:
    stages = sorted({int(r["cpt_stage"]) for r in stats.corpus_tokens})
    bars = [
        Bar(f"{r['kind']} · CPT stage {r['cpt_stage']}", float(r["tokens"]), stages.index(int(r["cpt_stage"])))
        for r in sorted(stats.corpus_tokens, key=lambda r: (int(r["cpt_stage"]), str(r["kind"])))
    ]
    return render_bar_chart(
        BarChart("corpus-tokens", "Corpus tokens per kind and CPT stage", "tokens", bars,
                 empty="no corpus records", legend=[f"CPT stage {s}" for s in stages])  # fmt: skip
    )


# ---------------------------------------------------------------------------
# CPT metrics.jsonl
# ---------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of a trainer's metrics.jsonl (bad lines skipped; long files thinned)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    if len(lines) > MAX_METRIC_LINES:
        step = len(lines) / MAX_METRIC_LINES
        lines = [lines[int(i * step)] for i in range(MAX_METRIC_LINES)]
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _metric_series(events: list[dict], event: str, key: str, name: str) -> Series:
    points = [
        (float(e["step"]), float(e[key]))
        for e in events
        if e.get("event") == event and isinstance(e.get("step"), int | float) and isinstance(e.get(key), int | float)
    ]
    return Series(name, points)


def cpt_charts(layout: RunLayout) -> list[Markup]:
    loss, lr, speed = [], [], []
    for path in layout.cpt_metrics():
        name = f"{path.parent.parent.name}/{path.parent.name}"  # cpt-smoke/stage1
        events = read_metrics(path)
        loss.append(_metric_series(events, "train", "loss", f"{name} train"))
        loss.append(_metric_series(events, "eval", "eval_loss", f"{name} held-out"))
        lr.append(_metric_series(events, "train", "lr", name))
        speed.append(_metric_series(events, "train", "tokens_per_s", name))
    empty = "no CPT metrics: train into runs/<id>/cpt-smoke or runs/<id>/cpt"
    charts = [
        LineChart("cpt-loss", "CPT loss", "step", "loss", [s for s in loss if s.points], empty=empty,
                  include_zero=False),
        LineChart("cpt-lr", "CPT learning rate", "step", "lr", lr, empty=empty),
        LineChart("cpt-tokens-rate", "CPT throughput", "step", "tokens/s", speed, empty=empty),
    ]  # fmt: skip
    return [render_line_chart(c) for c in charts]


def run_charts(run_dir: Path, stats: RunStats) -> list[ChartSection]:
    """Every chart of the run page, in sections; each one renders an empty state when it has no data."""
    layout = RunLayout(run_dir)
    samples = read_progress_series(layout.progress_series)
    return [
        ChartSection("Throughput", throughput_charts(samples)),
        ChartSection("Verdicts and corpus", [*verdict_charts(stats), corpus_chart(stats)]),
        ChartSection("Continual pre-training", cpt_charts(layout)),
    ]
