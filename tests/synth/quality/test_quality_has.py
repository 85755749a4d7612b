"""The chosen-option probe and the HAS/rollout/corpus quality sections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from synth.layout import RunLayout
from synth.llm.client import LLMClient
from synth.llm.config import LLMConfig
from synth.quality.has import (
    chosen_option_probe,
    corpus_quality,
    rollout_outcomes,
    summarize_decisions,
)
from synth.records import CorpusRecord, DecisionRecord, DecisionStep, Failure, RolloutRecord
from synth.shards import ShardStore
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.corpus import CorpusConfig
from synth.stages.decisions import STAGE as DECISIONS
from synth.stages.rollouts import STAGE as ROLLOUTS
from testing.fake_llm_server import FakeOpenAIServer
from testing.scripted_llm import ScriptedLLM

WEBDANCER = (
    Path(__file__).resolve().parents[3].parent
    / "shared"
    / "data"
    / "trajectories"
    / "webdancer_sample_traj.jsonl"
)
needs_webdancer = pytest.mark.skipif(not WEBDANCER.exists(), reason=f"shared data absent: {WEBDANCER}")


def webdancer_rollouts(tmp_path: Path) -> list[RolloutRecord]:
    # A glob relative to the data's folder: record ids (and so the fake's seeds and the
    # probe's split) do not depend on where the checkout lives.
    spec = parse_spec(
        {"name": "t", "inputs": {"trajectories": [WEBDANCER.name]}, "stages": {"rollouts": {"judge": False}}}
    )
    ctx = StageContext(
        run_id="t", spec=spec, llm=ScriptedLLM(lambda m, s: "unused"), judge_llm=ScriptedLLM(lambda m, s: "unused"),
        run_dir=tmp_path, base_dir=WEBDANCER.parent,
    )  # fmt: skip
    out = asyncio.run(ROLLOUTS.process(ROLLOUTS.prepare(ctx).items, ctx))
    return out.records  # type: ignore[return-value]


def decisions_ctx(
    tmp_path: Path, llm: Any, base_url: str = "http://127.0.0.1:1/v1", **decisions: Any
) -> StageContext:
    spec = parse_spec(
        {
            "name": "t",
            "llm": {"base_url": base_url, "model": "fake-model", "max_tokens": 4096},
            "stages": {"decisions": decisions},
        }
    )
    return StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=tmp_path)


def short_alternatives(messages: list[dict[str, Any]], schema: Any) -> Any:
    """The old HAS: whatever the original, alternatives are one short line each."""
    n = 3
    if "answer" in str(schema.model_json_schema()):
        return {"candidates": [{"thought": f"Maybe answer {i}.", "answer": f"guess {i}"} for i in range(n)]}
    tag = str(abs(hash(messages[-1]["content"])) % 10**6)
    return {
        "candidates": [
            {"thought": f"Try angle {i}.", "tool": "search", "arguments": {"query": [f"q{i} {tag}"]}}
            for i in range(n)
        ]
    }


@needs_webdancer
def test_the_probe_finds_the_original_in_a_leaky_set_far_above_chance(tmp_path: Path) -> None:
    rollouts = webdancer_rollouts(tmp_path)
    ctx = decisions_ctx(tmp_path, ScriptedLLM(short_alternatives), alternatives=3, condense=False)
    records = asyncio.run(DECISIONS.process(rollouts, ctx)).records
    quality = summarize_decisions(records)  # type: ignore[arg-type]
    probe = quality.probe
    assert probe.chance == pytest.approx(0.25) and probe.test_steps > 150 and probe.train_steps > 150
    assert probe.accuracy is not None and probe.accuracy > 0.9 and probe.leaks
    assert quality.length_ratio_median is not None and quality.length_ratio_median > 10


@needs_webdancer
def test_the_probe_on_the_pipelines_own_output_with_the_fake_endpoint_is_within_10_points_of_chance(
    tmp_path: Path,
) -> None:
    rollouts = webdancer_rollouts(tmp_path)
    # The default responder follows the length instruction and grounds its thoughts in the question
    # and the key terms of the earlier responses the prompt lists. Without those terms it could only
    # draw on responses cut to 1,500 characters, which the originals were not: they drew more on
    # the responses and less on the question, and the probe found them (issue 15: 35.9 %).
    with FakeOpenAIServer() as server:

        async def run() -> list[DecisionRecord]:
            async with LLMClient(
                LLMConfig(base_url=server.base_url, model="fake-model", max_tokens=4096)
            ) as llm:
                ctx = decisions_ctx(tmp_path, llm, base_url=server.base_url, alternatives=3)
                return (await DECISIONS.process(rollouts, ctx)).records  # type: ignore[return-value]

        records = asyncio.run(run())
    quality = summarize_decisions(records)
    probe = quality.probe
    assert len(records) == 200 and quality.flagged == 0 and quality.filled_share < 0.01
    assert probe.accuracy is not None and probe.chance is not None
    assert abs(probe.accuracy - probe.chance) <= 0.10 and probe.leaks is False
    assert quality.length_ratio_median is not None and 0.8 <= quality.length_ratio_median <= 1.25
    assert quality.length_ratio_in_band is not None and quality.length_ratio_in_band > 0.9


def step(chosen_words: int, other_words: int, chosen: int, n: int = 4, source: str = "llm") -> DecisionStep:
    options = [
        f"<think>\n{' '.join(['word'] * (chosen_words if i == chosen else other_words))}\n</think>\n<answer>a{i}</answer>"
        for i in range(n)
    ]
    sources = ["original" if i == chosen else source for i in range(n)]
    return DecisionStep(options=options, chosen=chosen, sources=sources)  # type: ignore[arg-type]


def test_decision_section_counts_fills_flags_condensing_and_the_length_ratio() -> None:
    records = [
        DecisionRecord(
            id=f"d{i}",
            run_id="r",
            trajectory_id=f"t{i}",
            outcome="correct",
            text="Question: q?\n\nx",
            question="q?",
            steps=[step(20, 10, i % 4), step(30, 30, (i + 1) % 4, source="template")],
            filled_options=3,
            filled_share=0.5,
            flag="filled_share 0.50 > 0.33" if i % 2 else None,
        )  # fmt: skip
        for i in range(8)
    ]
    records[0].steps[0].condensed = "llm"
    quality = summarize_decisions(records)
    assert (quality.records, quality.flagged, quality.steps, quality.options_per_step) == (8, 4, 16, 4.0)
    assert (quality.alternatives, quality.filled, quality.filled_share) == (48, 24, 0.5)
    assert quality.options_by_source == {"llm": 24, "original": 16, "template": 24}
    assert quality.condensed_steps == {"llm": 1}
    # Step 1: 20 words against 10 (ratio 2, outside 0.5-1.5); step 2: 30 against 30.
    assert (quality.length_ratio_median, quality.length_ratio_mean, quality.length_ratio_in_band) == (
        1.5,
        1.5,
        0.5,
    )
    # The probe sees only the 4 unflagged records, split 2 / 2: a chosen option twice as long is found.
    assert quality.probe.train_steps == quality.probe.test_steps == 4
    # (Its other two test steps are identical options: found or not by a tie.)
    assert (
        quality.probe.accuracy is not None and quality.probe.accuracy >= 0.5 and quality.probe.chance == 0.25
    )
    assert chosen_option_probe(records[:1]).note.startswith("fewer than two")


def test_rollout_and_corpus_sections_read_the_runs_shards(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)

    def rollout(i: int, outcome: str, source: str, judged_by: str | None) -> RolloutRecord:
        return RolloutRecord(
            id=f"r{i}",
            run_id="r",
            question="q?",
            steps=[],
            outcome=outcome,
            source=source,
            judged_by=judged_by,  # type: ignore[arg-type]
        )

    store.write_unit(
        "rollouts", "00000",
        [rollout(1, "correct", "rollout", "exact"), rollout(2, "incorrect", "rollout", "judge"),
         rollout(3, "correct", "import:react_chatml", "evidence")],
        [Failure(input_ids=["t.jsonl:4"], error_kind="unjudged", message="m")], run_id="r",
    )  # fmt: skip
    store.write_unit(
        "decisions",
        "00000",
        [DecisionRecord(id="d1", run_id="r", trajectory_id="r3", outcome="correct", text="t", steps=[])],
        run_id="r",
    )

    def text(i: int, kind: str, source: str, stage: int, tokens: int) -> CorpusRecord:
        return CorpusRecord(
            id=f"c{i}",
            run_id="r",
            kind=kind,
            text="t",
            n_tokens=tokens,
            cpt_stage=stage,
            source_ids=[source],  # type: ignore[arg-type]
        )

    store.write_unit(
        "corpus", "00000",
        [text(1, "rollout", "r1", 1, 100), text(2, "decision", "d1", 2, 50), text(3, "planning", "p1", 1, 100),
         text(4, "reasoning", "q1", 1, 50)],
        run_id="r",
    )  # fmt: skip
    layout = RunLayout(tmp_path)
    outcomes = rollout_outcomes(layout)
    assert outcomes is not None and outcomes.records == 3
    assert outcomes.by_source == {
        "import:react_chatml": {"correct": 1},
        "rollout": {"correct": 1, "incorrect": 1},
    }
    assert outcomes.judged_by == {"evidence": 1, "exact": 1, "judge": 1} and outcomes.dropped == {
        "unjudged": 1
    }
    corpus = corpus_quality(layout, CorpusConfig())
    assert corpus is not None and corpus.texts == 4
    assert corpus.correct_outcome_texts == 3 and corpus.correct_outcome_share == 0.75  # all but planning
    assert corpus.mixture is not None and [s.tokens for s in corpus.mixture.stages] == [250, 50]
    assert corpus.mixture.warnings and corpus.mixture.warnings[0].startswith("CPT stage 2 holds 16.7%")
