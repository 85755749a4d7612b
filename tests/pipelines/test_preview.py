"""``agentcpt run --preview N`` (issue 17): every stage on N items, then an estimate of the
full run scaled by each stage's item counts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipelines.preview import estimate_full_run, print_estimate, print_samples
from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from pipelines.units import StagePlan, preview_cut, read_plan, write_plan
from synth.runstate import LLMUsage, RunDir, RunProgress, StageProgress
from synth.spec import parse_spec
from synth.stage import ItemSource
from synth.stages import get_stage
from synth.stages.memory import MemoryChunk
from synth.stages.rollouts import QuestionItem
from synth.trajectories import TrajectoryRef
from testing.toy_stages import toy_pipeline


def test_preview_runs_n_items_per_barrier_stage_and_scales_the_estimate(
    tmp_path: Path, ray_cluster: Any, fake_llm: Any
) -> None:
    spec = parse_spec(
        {
            "name": "preview",
            "llm": {"base_url": fake_llm.base_url, "model": "fake-model", "max_concurrency": 4},
            "stages": {"questions": {}, "planning": {}},
            "execution": {"unit_size": 2},
            "output_dir": "runs",
        }
    )
    buf = io.StringIO()
    result = run_session(
        spec,
        base_dir=tmp_path,
        stages=toy_pipeline(24, corpus=False, use_llm=True),
        display=LogDisplay(buf),
        out=buf,
        print_summary=False,
        preview_items=6,
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    plan = read_plan(result.run_dir, "questions")
    assert plan is not None and (plan.items, plan.items_available) == (6, 24)
    # Counted on the worker over all 24 items: the toy questions read input files.
    assert plan.sources == [ItemSource(source="inputs", follows=None, items=24, inputs=24, sampled=6)]
    assert fake_llm.stats().requests <= 6 + 1  # the previewed questions (and one preflight request)

    estimate = {s.stage: s for s in estimate_full_run(result.run_dir, ["questions", "planning"]).stages}
    assert estimate["questions"].factor == estimate["planning"].factor == 4.0
    assert estimate["planning"].preview_records == 6
    assert estimate["planning"].requests == 24  # 6 measured × 4
    assert estimate["planning"].prompt_tokens > 0

    out = io.StringIO()
    print_samples(result.run_dir, ["questions", "planning"], out)
    print_estimate(estimate_full_run(result.run_dir, ["questions", "planning"]), out)
    text = out.getvalue()
    assert "== questions: 6 records" in text and "== planning: 6 records" in text
    assert "estimate for the full run" in text and "planning" in text.split("estimate for the full run")[1]


def test_cli_preview_refuses_a_run_id() -> None:
    from agentcpt.cli import main

    assert main(["run", "configs/quickstart.yaml", "--preview", "3", "--run-id", "x"]) == 2


# -- the estimate's model (issue 17 item 5), on plans and usage as a preview leaves them --------


def _preview_dir(tmp_path: Path, plans: list[StagePlan], requests: dict[str, int]) -> Path:
    """A preview's run directory with the given plans and, per stage, LLM requests (10 tokens each)."""
    run_dir = tmp_path / "runs" / "toy-preview"
    for plan in plans:
        write_plan(run_dir, plan)
    usage = {
        name: StageProgress(llm=LLMUsage(requests=n, prompt_tokens=10 * n, completion_tokens=n))
        for name, n in requests.items()
    }
    RunDir(run_dir).write_progress(RunProgress(stages=usage))
    return run_dir


def _barrier(stage: str, items: int, *sources: ItemSource) -> StagePlan:
    available = sum(s.items for s in sources)
    return StagePlan(stage=stage, units=[], items=items, items_available=available, sources=list(sources))


def test_a_cap_that_binds_only_in_the_full_run_limits_the_estimate(tmp_path: Path) -> None:
    # 30 input files, 5 previewed; memory read 4 web documents (2 chunks each) and one
    # knowledge-graph document (2 chunks) of them, with max_documents 12: the full run's
    # 24 web documents are capped to 12, its 6 knowledge-graph documents are not.
    run_dir = _preview_dir(
        tmp_path,
        [
            _barrier("documents", 5, ItemSource(source="inputs", follows=None, items=30, inputs=30)),
            _barrier(
                "memory",
                5,
                ItemSource(source="documents", follows="documents", items=8, inputs=4, cap=12),
                ItemSource(source="documents (knowledge_graph)", follows="documents", items=2, inputs=1, calls_llm=False),
            ),
        ],
        {"memory": 10},
    )
    estimate = {s.stage: s for s in estimate_full_run(run_dir, ["documents", "memory"]).stages}
    assert estimate["documents"].factor == 6.0
    memory = estimate["memory"]
    assert memory.items == 12 * 2 + 6 * 2  # not (8 + 2) × 6
    assert memory.factor == 7.2
    assert (memory.requests, memory.prompt_tokens, memory.completion_tokens) == (72, 720, 72)
    assert not memory.lower_bound


def test_imported_items_do_not_scale_with_the_preview(tmp_path: Path) -> None:
    # questions: 5 of 20 clusters previewed (×4); rollouts: its 3 questions grow ×4 in the
    # full run, its 4 imported trajectories (all of the input files) do not.
    run_dir = _preview_dir(
        tmp_path,
        [
            _barrier("questions", 5, ItemSource(source="memory", follows="memory", items=20, inputs=20)),
            _barrier(
                "rollouts",
                5,
                ItemSource(source="questions", follows="questions", items=3, inputs=3),
                ItemSource(source="inputs.trajectories", follows=None, items=4, inputs=4),
            ),
        ],
        {"questions": 5, "rollouts": 10},
    )
    estimate = {s.stage: s for s in estimate_full_run(run_dir, ["questions", "rollouts"]).stages}
    assert estimate["questions"].factor == 4.0
    assert estimate["rollouts"].items == 3 * 4 + 4
    assert estimate["rollouts"].requests == 32  # 10 for 5 items, × 16 / 5


def test_a_stage_the_preview_gave_no_item_is_unknown_and_the_total_a_lower_bound(tmp_path: Path) -> None:
    # The preview's documents gave memory no statement, so questions had no cluster: its
    # full-run cost is unknown (not 0), as is planning's after it; rollouts had only its
    # imported trajectories, so its estimate leaves out the questions it will also answer.
    run_dir = _preview_dir(
        tmp_path,
        [
            _barrier("documents", 5, ItemSource(source="inputs", follows=None, items=27, inputs=27)),
            _barrier("memory", 5, ItemSource(source="documents", follows="documents", items=5, inputs=5)),
            _barrier("questions", 0),
            _barrier(
                "rollouts", 4, ItemSource(source="inputs.trajectories", follows=None, items=4, inputs=4)
            ),
        ],
        {"memory": 5, "rollouts": 4},
    )
    names = ["documents", "memory", "questions", "planning", "rollouts"]
    run = estimate_full_run(run_dir, names)
    estimate = {s.stage: s for s in run.stages}
    for name in ("questions", "planning"):
        assert not estimate[name].known
        assert estimate[name].requests is None and estimate[name].factor is None
    rollouts = estimate["rollouts"]
    assert (rollouts.factor, rollouts.requests) == (1.0, 4)
    assert rollouts.lower_bound and rollouts.unsampled == ["questions"]
    assert not estimate["memory"].lower_bound
    assert run.lower_bound and run.totals["requests"] == 27 + 4

    out = io.StringIO()
    print_estimate(run, out)
    text = out.getvalue()
    assert "questions" in text and "no sample" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "≥31" in total
    assert "lower bound" in text and "rollouts (no sample of questions)" in text


def test_plans_written_before_sources_were_counted_scale_by_the_first_upstream(tmp_path: Path) -> None:
    legacy = StagePlan(stage="questions", units=[], items=5, items_available=20)
    run_dir = _preview_dir(tmp_path, [legacy], {"questions": 5})
    (questions,) = estimate_full_run(run_dir, ["questions"]).stages
    assert (questions.factor, questions.requests) == (4.0, 20)


def test_stages_count_their_items_per_source_with_their_cap() -> None:
    spec = parse_spec(
        {
            "name": "sources",
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
            "stages": {"memory": {"max_documents": 12}, "rollouts": {"max_questions": 2}},
        }
    )
    chunks = [
        MemoryChunk(doc_id=f"d{d}", url=f"https://x/{d}", index=i, n_chunks=2, text="t")
        for d in range(4)
        for i in range(2)
    ]
    chunks.append(
        MemoryChunk(doc_id="kg", url="kg:x", index=0, n_chunks=1, text="t", source_type="knowledge_graph")
    )
    assert get_stage("memory").item_sources(chunks, spec) == [
        ItemSource(source="documents", follows="documents", items=8, inputs=4, cap=12),
        ItemSource(source="documents (knowledge_graph)", follows="documents", items=1, inputs=1, cap=None, calls_llm=False),
    ]
    questions = [QuestionItem(question_id=f"q{i}", question="?", gold_answer="a") for i in range(2)]
    trajectories = [
        TrajectoryRef(path="/t.jsonl", display="t.jsonl", line_no=i + 1, offset=i, length=1, sha256="0")
        for i in range(3)
    ]
    assert get_stage("rollouts").item_sources([*questions, *trajectories], spec) == [
        ItemSource(source="questions", follows="questions", items=2, inputs=2, cap=2),
        ItemSource(source="inputs.trajectories", follows=None, items=3, inputs=3, cap=None),
    ]


def test_sources_that_make_no_llm_call_count_for_items_but_not_for_requests(tmp_path: Path) -> None:
    # The preview ran 4 web chunks (2 documents) and 4 knowledge-graph items; the full run has
    # 10 web documents (20 chunks) and 40 triple items. The 10 requests came from the web
    # chunks alone, so the full run's requests scale by 20 / 4, not by 60 / 8.
    run_dir = _preview_dir(
        tmp_path,
        [
            _barrier("documents", 50, ItemSource(source="inputs", follows=None, items=50, inputs=50)),
            _barrier(
                "memory",
                8,
                ItemSource(source="documents", follows="documents", items=20, inputs=10, sampled=4),
                ItemSource(
                    source="documents (knowledge_graph)", follows="documents", items=40, inputs=40,
                    calls_llm=False, sampled=4,
                ),  # fmt: skip
            ),
        ],
        {"memory": 10},
    )
    memory = next(s for s in estimate_full_run(run_dir, ["documents", "memory"]).stages if s.stage == "memory")
    assert memory.items == 60 and memory.factor == 7.5
    assert memory.requests == 50  # 10 × 20 / 4


def test_a_preview_takes_the_first_items_of_each_source() -> None:
    items = [("web", i) for i in range(8)] + [("triples", i) for i in range(3)] + [("web", 8)]
    assert preview_cut(items, 2, lambda item: item[0]) == [("web", 0), ("web", 1), ("triples", 0), ("triples", 1)]


def test_a_unit_never_spans_two_sources() -> None:
    from pipelines.units import cut_units

    items = [("import", i) for i in range(5)] + [("rollout", i) for i in range(3)]
    units = cut_units(items, 4, lambda item: item[0])
    assert [(name, [i for _, i in chunk]) for name, chunk in units] == [
        ("00000", [0, 1, 2, 3]),
        ("00001", [4]),  # the last import: its own unit, not the first rollouts'
        ("00002", [0, 1, 2]),
    ]
    assert [len(chunk) for _, chunk in cut_units(items, 4)] == [4, 4]  # without sources: as before
