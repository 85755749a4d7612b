"""A run directory with a complete lineage, built from real agent trajectories (../shared/data).

Every record kind the corpus draws from is there, linked as the pipeline links them::

    documents (tool responses) <- memory (their sentences) <- questions (the trajectory's task)
        <- planning, reasoning, rollouts (the trajectory) <- decisions
    corpus: planning / reasoning / rollout / decision texts, and knowledge texts over memory

Every third question also cites a statement of the next trajectory's first document, so
some source groups span two trajectories (what the lineage split must keep together). Two
more trajectories are imported rollouts (no question, no documents) with their decisions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from synth.records import (
    CorpusRecord,
    DecisionRecord,
    DocumentRecord,
    MemoryRecord,
    PlanningRecord,
    QuestionRecord,
    ReasoningRecord,
    Record,
    RolloutRecord,
)
from synth.shards import ShardStore
from synth.spec import RunSpec, StagesConfig, dump_spec
from synth.stages.corpus import CorpusConfig

TRAJECTORIES = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "trajectories"
    / "webdancer_sample_traj.jsonl"
)
RUN_ID = "lineage-run"


def _id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def read_trajectories(n: int) -> list[dict]:
    if not TRAJECTORIES.is_file():
        pytest.fail(f"real trajectories not found at {TRAJECTORIES} (the shared data directory is absent)")
    out = []
    with open(TRAJECTORIES, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def _texts(traj: dict, max_chars: int) -> tuple[str, list[str], list[str]]:
    """The task, the tool responses and the assistant turns of a trajectory (clipped)."""
    messages = traj["messages"]
    question = (
        messages[1]["content"].rsplit("</tools>", 1)[-1].strip()[-600:] or messages[1]["content"][-600:]
    )
    responses = [m["content"][:max_chars] for m in messages[2:] if m["role"] == "user"]
    turns = [m["content"][:max_chars] for m in messages[2:] if m["role"] == "assistant"]
    return question, responses, turns


def build_lineage_run(
    runs_dir: Path, tokenizer_dir: Path, questions: int = 12, imports: int = 2, max_chars: int = 1500
) -> Path:
    """Write ``runs_dir/lineage-run`` (all stages + corpus + spec.yaml); returns the run directory."""
    run_dir = runs_dir / RUN_ID
    records: dict[str, list[Record]] = {
        s: []
        for s in (
            "documents",
            "memory",
            "questions",
            "planning",
            "reasoning",
            "rollouts",
            "decisions",
            "corpus",
        )
    }
    corpus: list[CorpusRecord] = []

    def add_corpus(kind: str, source: Record | list[Record], text: str) -> None:
        sources = source if isinstance(source, list) else [source]
        ids = [s.id for s in sources]
        corpus.append(
            CorpusRecord(
                id=_id("corpus", kind, *ids),
                run_id=RUN_ID,
                parent_ids=ids,
                kind=kind,  # type: ignore[arg-type]
                text=text,
                n_tokens=len(text.split()),
                cpt_stage=1,
                source_ids=ids,
            )
        )

    trajectories = read_trajectories(questions + imports + 1)
    first_memory: list[MemoryRecord] = []
    per_traj_memory: list[list[MemoryRecord]] = []
    for t, traj in enumerate(trajectories[: questions + 1]):
        _, responses, _ = _texts(traj, max_chars)
        memory: list[MemoryRecord] = []
        for d, text in enumerate(responses[:2] or ["(no tool response)"]):
            doc = DocumentRecord(
                id=_id("doc", str(t), str(d)),
                run_id=RUN_ID,
                url=f"https://example.org/{t}/{d}",
                text=text,
                n_chars=len(text),
                source_type="tool_response",
            )
            records["documents"].append(doc)
            for s, sentence in enumerate([x for x in text.split(". ") if x.strip()][:2]):
                memory.append(
                    MemoryRecord(
                        id=_id("mem", doc.id, str(s)),
                        run_id=RUN_ID,
                        parent_ids=[doc.id],
                        entity=f"entity {t}",
                        statement=sentence.strip(),
                        doc_id=doc.id,
                    )
                )
        records["memory"] += memory
        per_traj_memory.append(memory)
        first_memory.append(memory[0])

    for t, traj in enumerate(trajectories[:questions]):
        task, responses, turns = _texts(traj, max_chars)
        knowledge = [m.id for m in per_traj_memory[t]]
        if t % 3 == 0:  # a multi-document question: it joins trajectory t's group with t+1's
            knowledge.append(first_memory[t + 1].id)
        q = QuestionRecord(
            id=_id("q", str(t)),
            run_id=RUN_ID,
            parent_ids=knowledge,
            style="multi_hop",
            question=task,
            answer=str(traj.get("answer")),
            entities=[f"entity {t}"],
            knowledge_ids=knowledge,
        )
        plan = PlanningRecord(
            id=_id("plan", q.id),
            run_id=RUN_ID,
            parent_ids=[q.id],
            question_id=q.id,
            analysis=turns[0][:400],
            accepted=True,
            reason="accepted",
            text=f"{task}\n{turns[0]}",
        )
        reason = ReasoningRecord(
            id=_id("reason", q.id),
            run_id=RUN_ID,
            parent_ids=[q.id],
            question_id=q.id,
            step1=turns[0][:200],
            step2=turns[-1][:200],
            final_answer=str(traj.get("answer")),
            correct=True,
            text=f"{task}\n{turns[-1]}",
        )
        rollout_text = "\n".join(f"{a}\n{r}" for a, r in zip(turns, responses, strict=False))
        rollout = RolloutRecord(
            id=_id("rollout", q.id),
            run_id=RUN_ID,
            parent_ids=[q.id],
            question_id=q.id,
            question=task,
            steps=[],
            outcome="correct",
            source="rollout",
            text=f"{task}\n{rollout_text}",
        )
        decision = DecisionRecord(
            id=_id("decision", rollout.id),
            run_id=RUN_ID,
            parent_ids=[rollout.id],
            trajectory_id=rollout.id,
            steps=[],
            outcome="correct",
            text="\n".join(turns) + "\nMy decision is Correct.",
        )
        records["questions"].append(q)
        records["planning"].append(plan)
        records["reasoning"].append(reason)
        records["rollouts"].append(rollout)
        records["decisions"].append(decision)
        add_corpus("planning", plan, plan.text or "")
        add_corpus("reasoning", reason, reason.text or "")
        add_corpus("rollout", rollout, rollout.text or "")
        add_corpus("decision", decision, decision.text)
        add_corpus("knowledge", per_traj_memory[t], "\n".join(f"- {m.statement}" for m in per_traj_memory[t]))

    for t, traj in enumerate(trajectories[questions + 1 :], start=questions + 1):
        task, responses, turns = _texts(traj, max_chars)
        imported = RolloutRecord(
            id=_id("import", str(t)),
            run_id=RUN_ID,
            parent_ids=[],
            question=task,
            steps=[],
            outcome="correct",
            source="import:chatml",
            text=f"{task}\n" + "\n".join(f"{a}\n{r}" for a, r in zip(turns, responses, strict=False)),
        )
        decision = DecisionRecord(
            id=_id("decision", imported.id),
            run_id=RUN_ID,
            parent_ids=[imported.id],
            trajectory_id=imported.id,
            steps=[],
            outcome="correct",
            text="\n".join(turns) + "\nMy decision is Correct.",
        )
        records["rollouts"].append(imported)
        records["decisions"].append(decision)
        add_corpus("rollout", imported, imported.text or "")
        add_corpus("decision", decision, decision.text)

    records["corpus"] = list(corpus)
    store = ShardStore(run_dir)
    for stage, recs in records.items():
        store.write_unit(stage, "00000", recs, run_id=RUN_ID)
    spec = RunSpec(name="quickstart", stages=StagesConfig(corpus=CorpusConfig(tokenizer=str(tokenizer_dir))))
    (run_dir / "spec.yaml").write_text(dump_spec(spec))
    return run_dir


def train_tokenizer(directory: Path, texts: list[str], vocab_size: int = 384) -> Path:
    """A small byte-level BPE with `<|endoftext|>` (id 0), trained on ``texts`` (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory


@pytest.fixture(scope="session")
def lineage_workspace(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], tuple[Path, Path]]:
    """A factory: a fresh copy of the lineage run (and its tokenizer) under a new temp directory."""
    root = tmp_path_factory.mktemp("lineage-tok")
    texts = []
    for traj in read_trajectories(16):
        texts += [m["content"][:2000] for m in traj["messages"][1:]]
    tokenizer = train_tokenizer(root / "tokenizer", texts)

    def make() -> tuple[Path, Path]:
        runs = tmp_path_factory.mktemp("runs")
        return build_lineage_run(runs, tokenizer), tokenizer

    return make
