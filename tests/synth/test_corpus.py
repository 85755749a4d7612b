"""The corpus stage: gathering, cross-kind dedup, decontamination, token counts and CPT stage routing."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from synth.records import (
    CorpusRecord,
    DecisionRecord,
    DecisionStep,
    Failure,
    MemoryRecord,
    PlanningRecord,
    ReasoningRecord,
    Record,
    RolloutRecord,
    TrajectoryStep,
)
from synth.shards import ShardStore
from synth.spec import SpecError, parse_spec
from synth.stage import StageContext
from synth.stages.corpus import STAGE, CorpusCandidate, CorpusConfig, summarize_corpus
from synth.tokens import load_tokenizer
from testing.scripted_llm import ScriptedLLM

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BROWSECOMP = SHARED_DATA / "benchmarks" / "browsecomp_200.jsonl"

WORDS = (
    "river bridge tourism robotics festival marmot election harbor mariner release quarterly revenue "
    "population museum archive survey station valley council budget rainfall orchard ferry lighthouse"
).split()


def prose(seed: int, n_words: int = 120) -> str:
    """Distinct pseudo-text: different seeds share few 5-word shingles."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(n_words))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([prose(i) for i in range(50)], trainer)
    directory = tmp_path_factory.mktemp("tok")
    tok.save(str(directory / "tokenizer.json"))
    return directory


def planning(i: int, text: str | None, accepted: bool = True) -> PlanningRecord:
    return PlanningRecord(
        id=f"plan{i}", run_id="r", question_id=f"q{i}", analysis="a", answer="x", accepted=accepted,
        reason="accepted" if accepted else "other", text=text,
    )  # fmt: skip


def reasoning(i: int, text: str, correct: bool = True) -> ReasoningRecord:
    return ReasoningRecord(
        id=f"reas{i}", run_id="r", question_id=f"q{i}", step1="s1", step2="s2", final_answer="x",
        correct=correct, text=text,
    )  # fmt: skip


def rollout(i: int, text: str | None, outcome: str = "correct") -> RolloutRecord:
    return RolloutRecord(
        id=f"roll{i}",
        run_id="r",
        question="q?",
        steps=[],
        outcome=outcome,
        source="rollout",
        text=text,  # type: ignore[arg-type]
    )


def decision(i: int, text: str, outcome: str = "correct", flag: str | None = None) -> DecisionRecord:
    return DecisionRecord(
        id=f"dec{i}", run_id="r", trajectory_id=f"roll{i}", outcome=outcome,  # type: ignore[arg-type]
        steps=[DecisionStep(options=["a", "b"], chosen=0)], text=text, flag=flag,
    )  # fmt: skip


def memory(i: int, entity: str, statement: str, time: str | None = None) -> MemoryRecord:
    return MemoryRecord(
        id=f"mem{i:02d}", run_id="r", entity=entity, statement=statement, doc_id="d", time=time
    )


def make_ctx(
    tmp_path: Path,
    upstream: dict[str, list[Record]],
    corpus: dict[str, Any],
    enabled: tuple[str, ...] = ("planning", "reasoning", "rollouts", "decisions", "memory"),
    base_dir: Path | None = None,
) -> StageContext:
    spec = parse_spec({"name": "t", "stages": {**{s: {} for s in enabled}, "corpus": corpus}})
    llm = ScriptedLLM(lambda messages, schema: "unused")

    def read_stage(stage: str) -> list[Record]:
        assert stage in enabled, f"read a stage the spec does not enable: {stage}"
        return list(upstream.get(stage, []))

    return StageContext(
        run_id="r",
        spec=spec,
        llm=llm,
        judge_llm=llm,
        run_dir=tmp_path,
        read_stage=read_stage,
        base_dir=base_dir,
    )


def run_stage(ctx: StageContext) -> tuple[list[CorpusRecord], list[Failure]]:
    prepared = STAGE.prepare(ctx)
    out = asyncio.run(STAGE.process(prepared.items, ctx))
    assert all(isinstance(r, CorpusRecord) for r in out.records)
    return out.records, prepared.dropped + out.failures  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Gathering
# ---------------------------------------------------------------------------


def test_gathers_accepted_planning_correct_reasoning_rollouts_and_decisions(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    upstream: dict[str, list[Record]] = {
        "planning": [planning(1, prose(1)), planning(2, prose(2), accepted=False)],
        "reasoning": [reasoning(1, prose(3)), reasoning(2, prose(4), correct=False)],
        "rollouts": [rollout(1, prose(5))],
        "decisions": [decision(1, prose(6))],
    }
    records, failures = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert [(r.kind, r.source_ids) for r in records] == [
        ("planning", ["plan1"]),
        ("reasoning", ["reas1"]),
        ("rollout", ["roll1"]),
        ("decision", ["dec1"]),
    ]
    assert failures == []
    assert all(r.parent_ids == r.source_ids and r.run_id == "r" and r.stage == "corpus" for r in records)
    assert records[0].text == prose(1)


def test_accepted_record_without_text_is_a_missing_text_failure(tmp_path: Path, tokenizer_dir: Path) -> None:
    upstream: dict[str, list[Record]] = {"planning": [planning(1, None)], "rollouts": [rollout(1, "  ")]}
    records, failures = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert records == []
    assert sorted((f.error_kind, f.input_ids[0]) for f in failures) == [
        ("missing_text", "plan1"),
        ("missing_text", "roll1"),
    ]


def test_stages_the_spec_does_not_enable_are_not_read(tmp_path: Path, tokenizer_dir: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        {"rollouts": [rollout(1, prose(1))]},
        {"tokenizer": str(tokenizer_dir)},
        enabled=("rollouts",),
    )
    records, _ = run_stage(ctx)  # read_stage asserts on any other stage
    assert [r.kind for r in records] == ["rollout"]


def test_knowledge_texts_group_memory_statements_per_entity_only_when_asked(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    mem: list[Record] = [
        memory(1, "Silvermere River", "The Silvermere River is 212 km long.", time="2024"),
        memory(2, "Kestrel Bay Bridge", "The Kestrel Bay Bridge opened in 1931."),
        memory(3, "silvermere  river", "The Silvermere River flows into Kestrel Bay."),
        memory(4, "Mount Calder", "   "),
    ]
    records, _ = run_stage(make_ctx(tmp_path, {"memory": mem}, {"tokenizer": str(tokenizer_dir)}))
    assert records == []  # include_knowledge defaults to false
    records, failures = run_stage(
        make_ctx(tmp_path, {"memory": mem}, {"tokenizer": str(tokenizer_dir), "include_knowledge": True})
    )
    assert [(f.error_kind, f.input_ids) for f in failures] == [("missing_text", ["mem04"])]
    by_source = {tuple(r.source_ids): r for r in records}
    assert set(by_source) == {("mem01", "mem03"), ("mem02",)}
    assert by_source[("mem01", "mem03")].text == (
        "# Silvermere River\n- The Silvermere River is 212 km long. (2024)\n"
        "- The Silvermere River flows into Kestrel Bay."
    )
    assert all(r.kind == "knowledge" for r in records)


def test_prepare_is_deterministic_whatever_order_upstream_records_arrive_in(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    rollouts: list[Record] = [rollout(i, prose(i)) for i in range(12)]
    rollouts.append(rollout(99, prose(3)))  # a copy: which one is kept must not depend on order
    first = STAGE.prepare(make_ctx(tmp_path, {"rollouts": rollouts}, {"tokenizer": str(tokenizer_dir)}))
    random.Random(7).shuffle(rollouts)
    second = STAGE.prepare(make_ctx(tmp_path, {"rollouts": rollouts}, {"tokenizer": str(tokenizer_dir)}))
    assert first.items == second.items and first.dropped == second.dropped
    assert all(isinstance(i, CorpusCandidate) for i in first.items)


# ---------------------------------------------------------------------------
# Dedup
# ---------------------------------------------------------------------------


def test_exact_duplicate_across_kinds_is_dropped_naming_the_kept_source(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    text = prose(1)
    upstream: dict[str, list[Record]] = {
        "planning": [planning(1, text)],
        "decisions": [decision(1, "  " + text.upper().replace(" ", "   ") + "!")],
    }
    records, failures = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert [r.source_ids for r in records] == [["plan1"]]
    assert [(f.error_kind, f.input_ids) for f in failures] == [("duplicate", ["dec1"])]
    assert "plan1" in failures[0].message


def test_near_duplicate_is_dropped_while_a_different_text_is_kept(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    base = prose(1, 300).split()
    near = base.copy()
    near[150] = "CHANGED"  # one word of 300: Jaccard of 5-gram shingles ~0.97
    upstream: dict[str, list[Record]] = {
        "rollouts": [rollout(1, " ".join(base)), rollout(2, " ".join(near)), rollout(3, prose(2, 300))]
    }
    records, failures = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert [r.source_ids for r in records] == [["roll1"], ["roll3"]]
    assert [(f.error_kind, f.input_ids) for f in failures] == [("near_duplicate", ["roll2"])]
    assert "roll1" in failures[0].message

    exact_only, failures = run_stage(
        make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir), "dedup": "exact"})
    )
    assert len(exact_only) == 3 and failures == []
    upstream["rollouts"].append(rollout(4, " ".join(base)))
    no_dedup, failures = run_stage(
        make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir), "dedup": "none"})
    )
    assert len(no_dedup) == 4 and failures == []


# ---------------------------------------------------------------------------
# Decontamination
# ---------------------------------------------------------------------------


def test_record_containing_a_browsecomp_question_is_removed_and_an_unrelated_record_is_kept(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    if not BROWSECOMP.is_file():
        pytest.skip(f"benchmark file not found at {BROWSECOMP} (../shared/data is absent)")
    with open(BROWSECOMP, encoding="utf-8") as f:
        question = json.loads(f.readlines()[17])["question"]
    contaminated = f"<think>The user asks: {question} I should search.</think>"
    upstream: dict[str, list[Record]] = {"rollouts": [rollout(1, contaminated), rollout(2, prose(5))]}
    corpus = {"tokenizer": str(tokenizer_dir), "decontaminate": ["benchmarks/browsecomp_*.jsonl"]}
    records, failures = run_stage(make_ctx(tmp_path, upstream, corpus, base_dir=SHARED_DATA))
    assert [r.source_ids for r in records] == [["roll2"]]
    assert [(f.error_kind, f.input_ids) for f in failures] == [("contaminated", ["roll1"])]
    assert "browsecomp_200.jsonl:18" in failures[0].message


def test_decontamination_glob_matching_nothing_is_a_spec_error_naming_the_field(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    ctx = make_ctx(
        tmp_path, {}, {"tokenizer": str(tokenizer_dir), "decontaminate": ["nope/*.jsonl"]}, base_dir=tmp_path
    )
    with pytest.raises(SpecError, match=r"stages\.corpus\.decontaminate\[0\]"):
        STAGE.prepare(ctx)


def test_benchmark_file_without_questions_is_a_spec_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n')
    ctx = make_ctx(
        tmp_path, {}, {"tokenizer": str(tokenizer_dir), "decontaminate": ["b.jsonl"]}, base_dir=tmp_path
    )
    with pytest.raises(SpecError, match=r"b\.jsonl:1"):
        STAGE.prepare(ctx)


# ---------------------------------------------------------------------------
# Token counts and CPT stage routing
# ---------------------------------------------------------------------------


def test_the_mixture_rule_routes_short_texts_to_stage_1_and_long_correct_has_to_stage_2(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    tok = load_tokenizer(tokenizer_dir)
    short, long, longer = (
        [prose(10 + i, 5) for i in range(3)],
        [prose(20 + i, 40) for i in range(3)],
        prose(30, 400),
    )

    def n(text: str) -> int:
        return len(tok.backend.encode(text).ids)

    assert max(map(n, short)) < min(map(n, long)) and max(map(n, long)) < n(longer)
    corpus = {
        "tokenizer": str(tokenizer_dir),
        "stage1_max_tokens": max(map(n, short)),  # boundary: equal goes to stage 1
        "stage2_max_tokens": max(map(n, long)),
    }
    upstream: dict[str, list[Record]] = {
        "decisions": [
            decision(0, short[0]), decision(1, long[0]), decision(2, longer),
            decision(3, long[1], outcome="incorrect"), decision(4, short[1], outcome="incorrect"),
        ],
        "rollouts": [rollout(5, short[2]), rollout(6, long[2])],
    }  # fmt: skip
    counts = {0: n(short[0]), 2: n(longer)}
    records, failures = run_stage(make_ctx(tmp_path, upstream, corpus))
    assert [(r.source_ids[0], r.cpt_stage) for r in records] == [
        ("roll5", 1),  # a short correct rollout: stage 1
        ("dec0", 1),  # short HAS, correct or incorrect: stage 1
        ("dec1", 2),  # long HAS judged correct: stage 2
        ("dec4", 1),
    ]
    assert [r.n_tokens for r in records if r.source_ids == ["dec0"]] == [counts[0]]
    kinds = {f.input_ids[0]: f for f in failures}
    assert kinds["dec2"].error_kind == "too_long" and f"{counts[2]} tokens" in kinds["dec2"].message
    # Long but incorrect HAS, and a long rollout: no stage's rule takes them.
    assert kinds["dec3"].error_kind == "no_cpt_stage" and "outcome incorrect" in kinds["dec3"].message
    assert kinds["roll6"].error_kind == "no_cpt_stage" and "stage 2 takes decision" in kinds["roll6"].message
    assert len(failures) == 3


def test_only_judged_correct_rollouts_and_judged_unflagged_decisions_are_corpus_texts(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    upstream: dict[str, list[Record]] = {
        "rollouts": [rollout(1, prose(1)), rollout(2, prose(2), "incorrect"), rollout(3, prose(3), "unknown")],
        "decisions": [
            decision(4, prose(4)), decision(5, prose(5), "incorrect"), decision(6, prose(6), "unknown"),
            decision(7, prose(7), flag="filled_share 0.67 > 0.33: 4 of 6 alternatives are fills"),
        ],
    }  # fmt: skip
    records, failures = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert [r.source_ids[0] for r in records] == ["roll1", "dec4", "dec5"]
    assert failures == []


def test_the_incorrect_rollouts_switch_admits_them_with_an_explicit_outcome_line(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    def traced(i: int, outcome: str) -> RolloutRecord:
        return RolloutRecord(
            id=f"roll{i}", run_id="r", question=f"Question {i}?", steps=[TrajectoryStep(thought=prose(i, 30))],
            final_answer=f"answer {i}", outcome=outcome, source="rollout", text="unused",  # type: ignore[arg-type]
        )  # fmt: skip

    upstream: dict[str, list[Record]] = {
        "rollouts": [traced(1, "correct"), traced(2, "incorrect"), traced(3, "unknown")]
    }
    corpus = {"tokenizer": str(tokenizer_dir), "incorrect_rollouts": True}
    records, _ = run_stage(make_ctx(tmp_path, upstream, corpus))
    assert [r.source_ids[0] for r in records] == ["roll1", "roll2"]
    assert records[0].text.endswith("<answer>answer 1</answer>\n\nThis final answer is correct.")
    assert records[1].text.endswith("<answer>answer 2</answer>\n\nThis final answer is incorrect.")


def test_mixture_report_warns_about_a_stage_short_of_its_target_naming_what_is_missing() -> None:
    from synth.stages.corpus import CorpusSummaryRow, mixture_report

    rows = [
        CorpusSummaryRow(cpt_stage=1, kind="planning", records=10, tokens=9000),
        CorpusSummaryRow(cpt_stage=1, kind="decision", records=5, tokens=900),
        CorpusSummaryRow(cpt_stage=2, kind="decision", records=1, tokens=100),
    ]
    report = mixture_report(rows, CorpusConfig())
    assert [(s.cpt_stage, s.tokens, s.share, s.target_share) for s in report.stages] == [
        (1, 9900, 0.99, 0.6667),
        (2, 100, 0.01, 0.3333),
    ]
    (warning,) = report.warnings
    assert warning.startswith(
        "CPT stage 2 holds 1.0% of the corpus's tokens (target 33.3%): it has too few decision"
    )
    assert "32769-131072 tokens judged correct" in warning
    balanced = mixture_report(
        [*rows[:2], CorpusSummaryRow(cpt_stage=2, kind="decision", records=9, tokens=5000)], CorpusConfig()
    )
    assert balanced.warnings == []
    empty = mixture_report(rows[:1], CorpusConfig())
    assert "it has no decision (HAS) texts of 32769-131072 tokens" in empty.warnings[0]


def test_default_tokenizer_is_the_embedded_models(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synth.llm.embedded as embedded

    monkeypatch.setattr(embedded, "ensure_model_dir", lambda *a, **k: tokenizer_dir)
    load_tokenizer.cache_clear()
    try:
        records, _ = run_stage(make_ctx(tmp_path, {"rollouts": [rollout(1, prose(1))]}, {}))
    finally:
        load_tokenizer.cache_clear()
    assert records[0].n_tokens == len(load_tokenizer(tokenizer_dir).backend.encode(prose(1)).ids)


def test_record_ids_are_deterministic_content_hashes(tmp_path: Path, tokenizer_dir: Path) -> None:
    upstream: dict[str, list[Record]] = {
        "rollouts": [rollout(1, prose(1))],
        "decisions": [decision(1, prose(2))],
    }
    first, _ = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    second, _ = run_stage(make_ctx(tmp_path, upstream, {"tokenizer": str(tokenizer_dir)}))
    assert [r.id for r in first] == [r.id for r in second]
    assert len({r.id for r in first}) == 2


# ---------------------------------------------------------------------------
# Config and statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corpus", "field"),
    [
        ({"stage1_max_tokens": 100, "stage2_max_tokens": 50}, "stages.corpus"),
        ({"weights": {"webpages": 1.0}}, "stages.corpus.weights.webpages"),
        ({"weights": {"planning": -1}}, "stages.corpus.weights.planning"),
        ({"near_dup_threshold": 1.5}, "stages.corpus.near_dup_threshold"),
        ({"ngram": 0}, "stages.corpus.ngram"),
        ({"stage2": {"kinds": ["decision"], "target_share": 0.9}}, "stages.corpus"),
        ({"stage1": {"kinds": ["essays"], "target_share": 0.67}}, "stages.corpus.stage1.kinds"),
    ],
)
def test_bad_corpus_config_is_a_spec_error_naming_the_field(corpus: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "t", "stages": {"corpus": corpus}})
    assert err.value.field.startswith(field)  # a bad dict key is reported as `....webpages.[key]`


def test_weights_default_to_one_for_kinds_left_out() -> None:
    cfg = CorpusConfig(weights={"planning": 2.5})
    assert (cfg.weight("planning"), cfg.weight("rollout")) == (2.5, 1.0)


def test_summarize_corpus_reports_records_and_tokens_per_stage_and_kind_and_drops(tmp_path: Path) -> None:
    def rec(i: int, kind: str, n: int, stage: int) -> CorpusRecord:
        return CorpusRecord(
            id=f"c{i}", run_id="r", kind=kind, text="t", n_tokens=n, cpt_stage=stage, source_ids=[f"s{i}"]
        )  # type: ignore[arg-type]

    store = ShardStore(tmp_path)
    store.write_unit("corpus", "00000", [rec(1, "planning", 10, 1), rec(2, "rollout", 5000, 2)], run_id="r")
    store.write_unit(
        "corpus", "00001", [rec(3, "planning", 7, 1)],
        [Failure(input_ids=["x"], error_kind="too_long", message="m"),
         Failure(input_ids=["y"], error_kind="contaminated", message="m")],
        run_id="r",
    )  # fmt: skip
    summary = summarize_corpus(tmp_path)
    assert [(r.cpt_stage, r.kind, r.records, r.tokens) for r in summary.rows] == [
        (1, "planning", 2, 17),
        (2, "rollout", 1, 5000),
    ]
    assert summary.dropped == {"contaminated": 1, "too_long": 1}
    assert summary.total_tokens == 5017
    assert summarize_corpus(tmp_path / "empty").rows == []


def test_corpus_is_a_barrier_stage_registered_under_its_name() -> None:
    from synth.stages import get_stage

    stage = get_stage("corpus")
    assert stage is STAGE and stage.barrier
    assert stage.upstream == ("planning", "reasoning", "rollouts", "decisions", "memory")
