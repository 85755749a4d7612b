"""``fas_quality``: the FAS figures of ``agentcpt quality``, on a small run directory made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.layout import RunLayout
from synth.quality.fas import fas_quality
from synth.records import Failure, MemoryRecord, PlanningRecord, QuestionRecord, ReasoningRecord
from synth.shards import ShardStore


def _memory(i: int, verified_by: str | None) -> MemoryRecord:
    return MemoryRecord(
        id=f"m{i}", run_id="r", entity="Riverton", statement=f"Riverton fact {i} holds.", doc_id="d1",
        verified_by=verified_by,
    )


def _question(i: int, style: str) -> QuestionRecord:
    return QuestionRecord(
        id=f"q{i}", run_id="r", style=style, question=f"Question {i} about Riverton?", answer="x", entities=["Riverton"],
        knowledge_ids=["m0"],
    )


def _planning(i: int, reason: str) -> PlanningRecord:
    return PlanningRecord(
        id=f"p{i}", run_id="r", question_id=f"q{i}", analysis="a", answer="x", accepted=reason == "accepted",
        reason=reason,
    )


def _reasoning(i: int, reject: str | None, decided_by: str = "exact") -> ReasoningRecord:
    return ReasoningRecord(
        id=f"r{i}", run_id="r", question_id=f"q{i}", step1="s1", step2="s2", final_answer="x", correct=reject is None,
        decided_by=decided_by, reject_reason=reject,
    )


def _fail(kind: str, input_id: str) -> Failure:
    return Failure(input_ids=[input_id], error_kind=kind, message=kind)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    store = ShardStore(tmp_path)
    store.write_unit(
        "memory",
        "00000",
        [_memory(0, "judge"), _memory(1, "judge"), _memory(2, "judge"), _memory(3, "triple")],
        [
            _fail("unsupported_statement", "d1#c0"),
            _fail("incomplete_statement", "d1#c0"),
            _fail("no_predicate", "d1#c1"),
            _fail("no_predicate", "d2#c0"),
        ],
        run_id="r",
    )
    store.write_unit("memory", "dropped", [], [_fail("near_duplicate_document", "d9")], run_id="r")
    store.write_unit(
        "questions",
        "00000",
        [_question(0, "factual"), _question(1, "factual"), _question(2, "choice"), _question(3, "report")],
        [_fail("too_easy", "cl-1:factual"), _fail("too_easy", "cl-2:factual"), _fail("answer_in_question", "cl-3:factual")],
        run_id="r",
    )
    store.write_unit("questions", "dropped", [], [_fail("no_applicable_style", "m5")], run_id="r")
    store.write_unit(
        "planning",
        "00000",
        [_planning(0, "accepted"), _planning(1, "accepted"), _planning(2, "accepted"), _planning(3, "search_unnecessary")],
        run_id="r",
    )
    store.write_unit(
        "reasoning",
        "00000",
        [_reasoning(0, None), _reasoning(1, None, "judge"), _reasoning(2, "wrong_answer"), _reasoning(3, "too_long")],
        run_id="r",
    )
    return tmp_path


def test_memory_support_rate_counts_the_judges_verdicts_only(run_dir: Path) -> None:
    memory = fas_quality(RunLayout(run_dir)).memory
    assert memory is not None
    # 3 judged supported, 1 unsupported, 1 incomplete; the triple and the model-free rejections
    # are not support verdicts.
    assert (memory.statements, memory.judged, memory.supported, memory.support_rate) == (4, 5, 3, 0.6)
    assert memory.from_triples == 1
    reasons = {r.reason: (r.count, r.share) for r in memory.rejections}
    assert reasons == {
        "no_predicate": (2, 0.25),
        "unsupported_statement": (1, 0.125),
        "incomplete_statement": (1, 0.125),
    }
    assert memory.dropped_documents == {"near_duplicate_document": 1}


def test_question_rejections_include_too_easy_with_counts_and_shares(run_dir: Path) -> None:
    questions = fas_quality(RunLayout(run_dir)).questions
    assert questions is not None
    assert (questions.attempts, questions.kept, questions.too_easy) == (7, 4, 2)
    assert questions.too_easy_share == pytest.approx(2 / 7)
    assert [(r.reason, r.count) for r in questions.rejections] == [("too_easy", 2), ("answer_in_question", 1)]
    assert questions.styles == {"choice": 1, "factual": 2, "report": 1}


def test_planning_reasons_are_percentages_of_all_samples(run_dir: Path) -> None:
    planning = fas_quality(RunLayout(run_dir)).planning
    assert planning is not None
    assert planning.percentages == {"accepted": 75.0, "search_unnecessary": 25.0}


def test_reasoning_accuracy_before_and_after_the_second_filter(run_dir: Path) -> None:
    reasoning = fas_quality(RunLayout(run_dir)).reasoning
    assert reasoning is not None
    assert (reasoning.accuracy_before_filter, reasoning.accuracy_after_filter) == (0.75, 0.5)
    assert {r.reason: r.count for r in reasoning.reject_reasons} == {"wrong_answer": 1, "too_long": 1}
    assert reasoning.decided_by == {"exact": 3, "judge": 1}


def test_a_run_without_fas_stages_has_no_fas_figures(tmp_path: Path) -> None:
    quality = fas_quality(RunLayout(tmp_path))
    assert (quality.memory, quality.questions, quality.planning, quality.reasoning) == (None, None, None, None)
