"""`agentcpt quality RUN`: every quality figure of a run, printed and written to ``quality.json``.

The sections come from the modules of their synthesis (``has.py``: HAS decisions with the
chosen-option probe, rollout outcomes, corpus mixture; ``fas.py``: memory, questions,
planning, reasoning). ``build_quality`` composes them into one ``QualityReport``;
``quality_command`` prints it and writes it to ``RunLayout.quality``, where the dashboard
reads it back (``load_quality``).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TextIO

from pydantic import BaseModel, ConfigDict, Field

from synth.catalog import run_dir_for
from synth.layout import RunLayout
from synth.quality.fas import FasQuality, fas_quality
from synth.quality.has import (
    LEAK_MARGIN,
    CorpusQuality,
    DecisionQuality,
    RolloutOutcomes,
    corpus_quality,
    decision_quality,
    rollout_outcomes,
)
from synth.stages.corpus import CorpusConfig


class QualityReport(BaseModel):
    """``runs/<id>/quality.json``: a section is null when its stages did not run."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    created_at: datetime
    decisions: DecisionQuality | None = Field(description="HAS: probe, options, fills, length ratio")
    rollouts: RolloutOutcomes | None
    corpus: CorpusQuality | None = Field(
        description="judged-correct share; tokens per kind and CPT stage vs targets"
    )
    fas: FasQuality = Field(description="memory, questions, planning, reasoning")


def _corpus_config(layout: RunLayout) -> CorpusConfig | None:
    from synth.spec import load_spec

    return load_spec(layout.spec).stages.corpus if layout.spec.is_file() else None


def build_quality(layout: RunLayout) -> QualityReport:
    """Every section of the run at ``layout`` (committed shards only)."""
    return QualityReport(
        run_id=layout.run_id,
        created_at=datetime.now(UTC),
        decisions=decision_quality(layout),
        rollouts=rollout_outcomes(layout),
        corpus=corpus_quality(layout, _corpus_config(layout)),
        fas=fas_quality(layout),
    )


def write_quality(layout: RunLayout, report: QualityReport) -> None:
    """Write ``quality.json`` atomically (a reader never sees half a file)."""
    tmp = layout.quality.with_name(f".{layout.quality.name}.tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, layout.quality)


def load_quality(layout: RunLayout) -> QualityReport | None:
    """The run's last written ``quality.json`` (for the dashboard), or None when there is none."""
    if not layout.quality.is_file():
        return None
    return QualityReport.model_validate_json(layout.quality.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _decisions_lines(d: DecisionQuality) -> list[str]:
    p = d.probe
    if p.accuracy is None:
        probe = f"no figure ({p.note})"
    else:
        verdict = "LEAKS" if p.leaks else "no leak"
        probe = (
            f"accuracy {_pct(p.accuracy)} vs chance {_pct(p.chance)} ({100 * (p.margin or 0):+.1f} points, "
            f"±{100 * (p.stderr or 0):.1f}; {p.train_steps} train / {p.test_steps} held-out steps): "
            f"{verdict} (gate: {100 * LEAK_MARGIN:.0f} points above chance)"
        )
    ratio = (
        f"median {d.length_ratio_median}, mean {d.length_ratio_mean}, {_pct(d.length_ratio_in_band)} of steps within 0.5-1.5"
        if d.length_ratio_median is not None
        else "-"
    )
    return [
        f"HAS decisions: {d.records} records ({d.flagged} flagged, kept out of the corpus), {d.steps} steps, "
        f"{d.options_per_step:.2f} options per step",
        f"  chosen-option probe: {probe}",
        f"  filled share: {_pct(d.filled_share)} ({d.filled} of {d.alternatives} alternatives); options by source: "
        f"{_counts(d.options_by_source)}",
        f"  thought length chosen/alternatives: {ratio}",
        f"  condensed originals: {_counts(d.condensed_steps)}",
    ]


def _rollout_lines(r: RolloutOutcomes) -> list[str]:
    lines = [f"rollouts: {r.records} records"]
    lines += [f"  {source}: {_counts(outcomes)}" for source, outcomes in r.by_source.items()]
    lines.append(f"  judged by: {_counts(r.judged_by)}; dropped: {_counts(r.dropped)}")
    return lines


def _corpus_lines(c: CorpusQuality) -> list[str]:
    lines = [
        f"corpus: {c.texts} texts ({_counts(c.texts_by_kind)}); with a judged-correct outcome: "
        f"{_pct(c.correct_outcome_share)} ({c.correct_outcome_texts})"
    ]
    if c.mixture is not None:
        for s in c.mixture.stages:
            kinds = _counts(s.kinds)
            replay = f", replay {_pct(s.replay_share)}" if s.replay_share else ""
            lines.append(
                f"  CPT stage {s.cpt_stage}: {s.tokens:,} tokens in {s.records} texts = {_pct(s.share)} of the "
                f"corpus (target {_pct(s.target_share)}{replay}); tokens per kind: {kinds}"
            )
        lines += [f"  warning: {w}" for w in c.mixture.warnings]
    return lines


def _fas_lines(f: FasQuality) -> list[str]:
    lines: list[str] = []
    if f.memory is not None:
        m = f.memory
        lines.append(
            f"memory: {m.statements} statements, support rate {_pct(m.support_rate)} of {m.judged} judged"
        )
    if f.questions is not None:
        q = f.questions
        reasons = ", ".join(f"{r.reason} {_pct(r.share)}" for r in q.rejections) or "-"
        lines.append(f"questions: {q.kept} kept of {q.attempts} attempts; rejected: {reasons}")
    if f.planning is not None:
        p = f.planning
        lines.append(
            f"planning: {p.samples} samples; " + ", ".join(f"{k} {v:.1f}%" for k, v in p.percentages.items())
        )
    if f.reasoning is not None:
        r = f.reasoning
        lines.append(
            f"reasoning: {r.samples} samples; accuracy before the filter {_pct(r.accuracy_before_filter)}, "
            f"after {_pct(r.accuracy_after_filter)}"
        )
    return lines


def report_lines(report: QualityReport) -> list[str]:
    """The report as the lines ``agentcpt quality`` prints."""
    lines = [f"quality of run {report.run_id}"]
    for section, render in (
        (report.decisions, _decisions_lines),
        (report.rollouts, _rollout_lines),
        (report.corpus, _corpus_lines),
    ):
        if section is not None:
            lines += render(section)  # type: ignore[operator]
    lines += _fas_lines(report.fas)
    return lines


def quality_command(run_id: str, output_dir: str = "runs", file: TextIO | None = None) -> int:
    """``agentcpt quality RUN``: print the figures and write ``runs/<id>/quality.json``."""
    layout = RunLayout(run_dir_for(run_id, output_dir))
    report = build_quality(layout)
    write_quality(layout, report)
    out = file or sys.stdout
    for line in report_lines(report):
        print(line, file=out)
    print(f"wrote {layout.quality}", file=out)
    return 0
