"""A whole run with the long-horizon profile on the fake endpoint: stage-2 texts, both blends
(megatron-core reads stage 2's), clean outcomes and no pipeline wording, stats and quality."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.blend import load_blend
from pretrain.tokenize import tokenize_command
from synth.catalog import print_stats
from synth.layout import RunLayout
from synth.quality.report import load_quality, quality_command
from synth.records import CorpusRecord, DecisionRecord, RolloutRecord
from synth.shards import ShardStore
from synth.stages.rollouts import FORCE_ANSWER
from synth.tokens import load_tokenizer

REPO = Path(__file__).resolve().parents[3]
PAGES = REPO / "configs" / "quickstart" / "pages"
STAGE1_WINDOW = 6000

# Sentences the pipeline itself writes (prompts, notes, fills of old): none may reach a CPT text.
PIPELINE_WORDING = (
    "I should search for:",
    "I should read ",
    "I should work this out with Python",
    "outcome was not judged",
    "earlier steps omitted",
    "not available offline",
    "[… cut:",
    "[page cut to",
    "Whether my decisions were correct",
    FORCE_ANSWER,
    "your reply has neither",
    "Propose ",
    "Rewrite it so that",
)


def tokenizer_dir(directory: Path) -> Path:
    """A small byte-level BPE trained on the sample pages (no hub), with an EOD token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator([p.read_text(encoding="utf-8") for p in sorted(PAGES.glob("*.html"))], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def long_spec(base_url: str, tok: Path) -> dict[str, Any]:
    return {
        "name": "long",
        "inputs": {"web": ["inputs/pages/*.html"]},
        "llm": {"base_url": base_url, "model": "fake-model", "max_concurrency": 8, "max_tokens": 4096},
        "stages": {
            "documents": {"min_chars": 100},
            "memory": {},
            "questions": {"per_cluster": 2},
            "planning": {},
            "reasoning": {},
            "rollouts": {"profile": "long", "tools": ["search", "visit"], "max_questions": 8, "max_steps": 40,
                         "max_context_tokens": 24000},
            "decisions": {"alternatives": 2},
            "corpus": {"tokenizer": str(tok), "stage1_max_tokens": STAGE1_WINDOW},
        },
        "execution": {"unit_size": 3},
    }  # fmt: skip


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory, ray_cluster: Any) -> Path:
    from pipelines.progress import LogDisplay
    from pipelines.runner import run_session
    from synth.spec import parse_spec
    from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

    base = tmp_path_factory.mktemp("long-run")
    (base / "inputs" / "pages").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html")):
        shutil.copy(page, base / "inputs" / "pages")
    tok = tokenizer_dir(base / "tok")
    config = FakeServerConfig(responder="testing.fake_llm_server:research_responder")
    with FakeOpenAIServer(config) as server:
        result = run_session(
            parse_spec(long_spec(server.base_url, tok)), run_id="long", ray_address=ray_cluster.address,
            base_dir=base, display=LogDisplay(io.StringIO()), out=io.StringIO(), max_workers=2, print_summary=False,
        )  # fmt: skip
    assert result.outcome.state == "succeeded", result.outcome.error
    return result.run_dir


@pytest.mark.slow
def test_the_long_profile_makes_stage_2_texts_and_a_blend_megatron_reads(
    long_run: Path, tmp_path: Path
) -> None:
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    store = ShardStore(long_run)
    rollouts = {r.id: r for r in store.read_records("rollouts") if isinstance(r, RolloutRecord)}
    # Long research: well past the short profile's 8 steps (the context budget ends it here).
    assert max(len(r.steps) for r in rollouts.values()) > 12
    assert any(s.raw for r in rollouts.values() for s in r.steps)  # summarizing visits kept the pages
    corpus = [r for r in store.read_records("corpus") if isinstance(r, CorpusRecord)]
    stage2 = [r for r in corpus if r.cpt_stage == 2]
    assert stage2 and all(r.kind == "decision" and r.n_tokens > STAGE1_WINDOW for r in stage2)

    out = tmp_path / "megatron"
    tokenize_command(run_id="long", output_dir=str(long_run.parent), out=str(out) + "/", heldout_fraction=0)
    blend = load_blend(out / "blend_cpt2.json")
    assert (out / "blend_cpt1.json").is_file()
    weights = {Path(d.prefix).name: d.weight for d in blend.datasets}
    assert weights["cpt2_decision"] == pytest.approx(0.9)  # 10% replay of stage 1
    assert sum(w for name, w in weights.items() if name.startswith("cpt1_")) == pytest.approx(0.1)

    tok = load_tokenizer(Path(json.loads((out / "blend_cpt2.json").read_text())["tokenizer"]["path"]).parent)

    class MegatronTokenizer:  # what GPTDataset reads from a tokenizer
        eod = tok.eod_id
        pad = tok.eod_id
        vocab_size = tok.vocab_size
        unique_identifiers = {"class": "tiny-bpe", "path": str(tok.path)}

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        config = GPTDatasetConfig(
            random_seed=1234, sequence_length=512, blend=blend.megatron_blend(), split="1,0,0",
            path_to_cache=str(tmp_path / "cache"), tokenizer=MegatronTokenizer(), reset_position_ids=False,
            reset_attention_mask=False, eod_mask_loss=False,
        )  # fmt: skip
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [64, 0, 0], lambda: True, config).build()
        assert len(train) >= 64
        sample = train[0]
        assert len(sample["tokens"]) == 512 and int(np.max(sample["tokens"].numpy())) < tok.vocab_size
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_corpus_holds_only_judged_correct_rollouts_and_no_pipeline_wording(long_run: Path) -> None:
    store = ShardStore(long_run)
    rollouts = {r.id: r for r in store.read_records("rollouts") if isinstance(r, RolloutRecord)}
    decisions = {r.id: r for r in store.read_records("decisions") if isinstance(r, DecisionRecord)}
    assert {r.outcome for r in rollouts.values()} >= {"correct", "incorrect"}
    corpus = [r for r in store.read_records("corpus") if isinstance(r, CorpusRecord)]
    for text in corpus:
        if text.kind == "rollout":
            assert rollouts[text.source_ids[0]].outcome == "correct"
        if text.kind == "decision":
            assert (
                decisions[text.source_ids[0]].outcome != "unknown"
                and decisions[text.source_ids[0]].flag is None
            )
        for sentence in PIPELINE_WORDING:
            assert sentence not in text.text, (
                f"{text.kind} text {text.id} holds pipeline wording {sentence!r}"
            )


@pytest.mark.slow
def test_stats_and_quality_show_the_cpt_stages_against_their_targets(long_run: Path) -> None:
    buf = io.StringIO()
    stats = print_stats(long_run, file=buf)
    assert stats.cpt_mixture is not None and [s.cpt_stage for s in stats.cpt_mixture.stages] == [1, 2]
    assert "corpus: CPT stages against their target shares" in buf.getvalue()
    # Stage 1 has only short planning, reasoning and HAS texts here: short of its target, it says
    # what it lacks (knowledge texts were not asked for).
    assert "warning: CPT stage 1 holds" in buf.getvalue() and "no knowledge texts" in buf.getvalue()

    printed = io.StringIO()
    assert quality_command("long", output_dir=str(long_run.parent), file=printed) == 0
    report = load_quality(RunLayout(long_run))
    assert report is not None and report.decisions is not None and report.corpus is not None
    assert report.decisions.probe.accuracy is not None and report.decisions.length_ratio_median is not None
    assert report.corpus.mixture is not None and report.corpus.mixture.stages[1].tokens > 0
    assert (
        report.rollouts is not None
        and sum(report.rollouts.by_source["rollout"].values()) == report.rollouts.records
    )
    text = printed.getvalue()
    assert (
        "chosen-option probe: accuracy" in text
        and "CPT stage 2:" in text
        and f"wrote {RunLayout(long_run).quality}" in text
    )


def test_an_imported_long_trajectory_is_a_stage_2_source(tmp_path: Path) -> None:
    """OpenAI tool-call imports go through the same rollouts -> decisions -> corpus path to stage 2."""
    import asyncio

    from synth.llm.client import response_format
    from synth.spec import parse_spec
    from synth.stage import StageContext
    from synth.stages.corpus import STAGE as CORPUS
    from synth.stages.decisions import STAGE as DECISIONS
    from synth.stages.rollouts import STAGE as ROLLOUTS
    from testing.fake_llm_server import schema_responder
    from testing.scripted_llm import ScriptedLLM

    page = " ".join(p.read_text(encoding="utf-8") for p in sorted(PAGES.glob("*.html"))[:2])[:3000]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Which tower on the sample pages is the tallest?"}
    ]
    for i in range(30):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": [f"tower {i}"]})},
        }
        messages += [
            {
                "role": "assistant",
                "content": f"I should compare the towers, looking at source {i} next.",
                "tool_calls": [call],
            },
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"Result {i}: {page}"},
        ]
    messages.append({"role": "assistant", "content": "The Orlan Tower is the tallest."})
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"messages": messages, "answer": "Orlan Tower", "outcome": "correct"}) + "\n")

    def respond(msgs: list[dict[str, Any]], schema: Any) -> Any:
        return schema_responder(
            {"messages": msgs, "response_format": response_format(schema)} if schema else {"messages": msgs}
        )

    tok = tokenizer_dir(tmp_path / "tok")
    spec = parse_spec(
        {
            "name": "t", "inputs": {"trajectories": [str(path)]}, "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "max_tokens": 4096},
            "stages": {"rollouts": {}, "decisions": {"alternatives": 2}, "corpus": {"tokenizer": str(tok), "stage1_max_tokens": STAGE1_WINDOW}},
        }
    )  # fmt: skip
    records: dict[str, list[Any]] = {}
    ctx = StageContext(
        run_id="t", spec=spec, llm=ScriptedLLM(respond), judge_llm=ScriptedLLM(respond), run_dir=tmp_path,
        base_dir=tmp_path, read_stage=lambda s: records.get(s, []),
    )  # fmt: skip
    records["rollouts"] = asyncio.run(ROLLOUTS.process(ROLLOUTS.prepare(ctx).items, ctx)).records
    (rollout,) = records["rollouts"]
    assert (
        rollout.source == "import:openai_tools" and rollout.outcome == "correct" and len(rollout.steps) == 31
    )
    records["decisions"] = asyncio.run(DECISIONS.process(records["rollouts"], ctx)).records
    prepared = CORPUS.prepare(ctx)
    out = asyncio.run(CORPUS.process(prepared.items, ctx))
    (text,) = out.records
    assert (text.kind, text.cpt_stage) == ("decision", 2) and text.n_tokens > STAGE1_WINDOW
    # The long trace itself is a rollout text: the default rule gives stage 2 only HAS, so it is
    # dropped with its reason.
    (dropped,) = out.failures
    assert dropped.error_kind == "no_cpt_stage" and dropped.input_ids == [rollout.id]
