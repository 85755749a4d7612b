"""Tiny deterministic stages for testing the runner, shipped with the package so that Ray
workers (and driver subprocesses in end-to-end tests) can import them.

They use real stage names and record types, so they go through the same shard store,
manifest and scheduling as the real stages, but need no input files and (unless asked)
no LLM:

* ``CountingQuestions`` — barrier ``questions``: items ``0..n-1``; drops every
  ``drop_every``-th one in ``prepare``; one ``QuestionRecord`` per item;
* ``EchoPlanning`` — map ``planning`` over ``questions``: one ``PlanningRecord`` per question,
  a failure for every ``fail_every``-th; with ``use_llm`` the analysis comes from
  ``ctx.llm`` (a structured call, so the fake OpenAI server's schema responder answers);
* ``CollectCorpus`` — barrier ``corpus`` over ``planning``: reads every planning record
  through ``ctx.read_stage`` in ``prepare``, one ``CorpusRecord`` per accepted one.

Every stage can sleep per unit (``delay_s``), append a line per attempt to a trace file
(``trace``: ``<time> <stage> <key> <pid> start|end``, see ``read_trace``), raise in one unit (``fail_unit``), or kill its
own worker process on the first attempt of one unit (``kill_unit``; the attempt marker
lives next to the trace file).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from synth.ids import record_id
from synth.records import CorpusRecord, Failure, PlanningRecord, QuestionRecord, Record
from synth.stage import Prepared, Stage, StageContext, StageOutput


@dataclass
class Behaviour:
    """Test knobs shared by the stages below (all off by default)."""

    delay_s: float = 0.0
    trace: str | None = None
    fail_unit: str | None = None
    kill_unit: str | None = None


class _TestStage(Stage):
    uses_llm: ClassVar[bool] = False

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()

    def config(self, spec: Any) -> BaseModel:
        return getattr(spec.stages, self.name)

    async def _before(self, key: str) -> None:
        b = self.behaviour
        self._trace(key, "start")
        if b.kill_unit is not None and key == b.kill_unit and b.trace:
            marker = Path(b.trace).with_suffix(f".killed-{self.name}-{key}")
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.fail_unit is not None and key == b.fail_unit:
            raise RuntimeError(f"{self.name}: injected failure in unit {key}")

    def _trace(self, key: str, event: str) -> None:
        if self.behaviour.trace:
            with open(self.behaviour.trace, "a") as f:
                f.write(f"{time.time():.6f} {self.name} {key} {os.getpid()} {event}\n")


def unit_key(index: int, unit_size: int) -> str:
    """The key of the unit holding item ``index`` (no drops): its first item's index.

    Stages are not told their unit's name (they need not know); these test stages key
    their behaviour on the first item of the unit instead.
    """
    return str(index - index % unit_size)


class CountingQuestions(_TestStage):
    """Barrier ``questions`` over the integers ``0..n-1``; see the module docstring."""

    name = "questions"
    upstream = ()
    barrier = True

    def __init__(self, n: int, drop_every: int = 0, behaviour: Behaviour | None = None) -> None:
        super().__init__(behaviour)
        self.n = n
        self.drop_every = drop_every

    def prepare(self, ctx: StageContext) -> Prepared:
        items: list[int] = []
        dropped: list[Failure] = []
        for i in range(self.n):
            if self.drop_every and i % self.drop_every == self.drop_every - 1:
                dropped.append(
                    Failure(input_ids=[f"item-{i}"], error_kind="dropped_test", message=f"item {i} dropped")
                )
            else:
                items.append(i)
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[int], ctx: StageContext) -> StageOutput:
        await self._before(str(items[0]) if items else "")
        out = StageOutput()
        for i in items:
            question = f"What is {i} squared?"
            out.records.append(
                QuestionRecord(
                    id=record_id("questions", [], {"seed": ctx.seed}, question),
                    run_id=ctx.run_id,
                    style="numerical",
                    question=question,
                    answer=str(i * i),
                    entities=[f"n{i}"],
                    knowledge_ids=[f"k{i}"],
                )
            )
        self._trace(str(items[0]) if items else "", "end")
        return out


class Analysis(BaseModel):
    """What ``EchoPlanning`` asks the LLM for (``use_llm``)."""

    model_config = ConfigDict(extra="forbid")
    analysis: str = Field(description="a short analysis of the question")


class EchoPlanning(_TestStage):
    """Map ``planning`` over ``questions``; see the module docstring."""

    name = "planning"
    upstream = ("questions",)
    barrier = False

    def __init__(
        self, fail_every: int = 0, use_llm: bool = False, behaviour: Behaviour | None = None
    ) -> None:
        super().__init__(behaviour)
        self.fail_every = fail_every
        self.use_llm = use_llm

    @property
    def uses_llm(self) -> bool:  # type: ignore[override]
        return self.use_llm

    async def process(self, items: Sequence[Record], ctx: StageContext) -> StageOutput:
        await self._before(items[0].entities[0][1:] if items else "")  # type: ignore[attr-defined]
        out = StageOutput()
        analyses = await asyncio.gather(*(self._analysis(q, ctx) for q in items))
        for q, analysis in zip(items, analyses, strict=True):
            assert isinstance(q, QuestionRecord)
            i = int(q.entities[0][1:])
            if isinstance(analysis, Failure):
                out.failures.append(analysis)
            elif self.fail_every and i % self.fail_every == 0:
                out.failures.append(
                    Failure(input_ids=[q.id], error_kind="test_reject", message=f"question {i} rejected")
                )
            else:
                out.records.append(
                    PlanningRecord(
                        id=record_id("planning", [q.id], {}, analysis),
                        run_id=ctx.run_id,
                        parent_ids=[q.id],
                        question_id=q.id,
                        analysis=analysis,
                        answer=q.answer,
                        accepted=True,
                        reason="accepted",
                        text=f"{q.question}\n<answer>{q.answer}</answer>",
                    )
                )
        self._trace(items[0].entities[0][1:] if items else "", "end")  # type: ignore[attr-defined]
        return out

    async def _analysis(self, q: Record, ctx: StageContext) -> str | Failure:
        assert isinstance(q, QuestionRecord)
        if not self.use_llm:
            return f"square {q.entities[0][1:]}"
        from synth.llm.base import LLMError

        try:
            reply = await ctx.llm.complete(
                [{"role": "user", "content": f"Analyse: {q.question}"}], Analysis, stage=self.name
            )
        except LLMError as err:
            return Failure(input_ids=[q.id], error_kind=err.kind, message=str(err), raw_output=err.raw_output)
        return reply.analysis


class CollectCorpus(_TestStage):
    """Barrier ``corpus`` over ``planning``: one corpus text per accepted planning record."""

    name = "corpus"
    upstream = ("planning",)
    barrier = True

    def prepare(self, ctx: StageContext) -> Prepared:
        records = sorted(ctx.read_stage("planning"), key=lambda r: r.id)
        return Prepared(items=[r for r in records if isinstance(r, PlanningRecord) and r.accepted])

    async def process(self, items: Sequence[PlanningRecord], ctx: StageContext) -> StageOutput:
        await self._before(items[0].id if items else "")
        out = StageOutput()
        for r in items:
            text = r.text or ""
            out.records.append(
                CorpusRecord(
                    id=record_id("corpus", [r.id], {"kind": "planning"}, text),
                    run_id=ctx.run_id,
                    parent_ids=[r.id],
                    kind="planning",
                    text=text,
                    n_tokens=len(text.split()),
                    cpt_stage=1,
                    source_ids=[r.id],
                )
            )
        self._trace(items[0].id if items else "", "end")
        return out


def toy_pipeline(
    n: int = 40,
    *,
    drop_every: int = 0,
    fail_every: int = 0,
    use_llm: bool = False,
    corpus: bool = True,
    questions: Behaviour | None = None,
    planning: Behaviour | None = None,
) -> dict[str, Stage]:
    """The test pipeline questions → planning (→ corpus), keyed by stage name."""
    stages: dict[str, Stage] = {
        "questions": CountingQuestions(n, drop_every=drop_every, behaviour=questions),
        "planning": EchoPlanning(fail_every=fail_every, use_llm=use_llm, behaviour=planning),
    }
    if corpus:
        stages["corpus"] = CollectCorpus()
    return stages


@dataclass(frozen=True)
class TraceEvent:
    time: float
    stage: str
    key: str
    pid: int
    event: str


def read_trace(path: str | Path) -> list[TraceEvent]:
    """The events a trace file holds, in file order (empty if it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    events = []
    for line in p.read_text().splitlines():
        t, stage, key, pid, event = line.split(" ")
        events.append(TraceEvent(float(t), stage, key, int(pid), event))
    return events


# --------------------------------------------------------------------------------------
# Seeding a run with committed upstream stages, and a fake-server responder for planning
# --------------------------------------------------------------------------------------


def seed_questions(run_dir: Path, run_id: str, n: int, unit_size: int) -> list[QuestionRecord]:
    """Commit ``n`` questions (and one memory statement behind each) into ``run_dir``.

    What a run's ``memory`` and ``questions`` stages would have committed, so that a spec
    enabling only ``planning`` (or ``reasoning``) has real input: used by
    ``bench/pipeline.py`` and the end-to-end tests.
    """
    from synth.records import MemoryRecord
    from synth.shards import ShardStore, unit_name

    store = ShardStore(run_dir)
    memory: list[MemoryRecord] = []
    questions: list[QuestionRecord] = []
    for i in range(n):
        entity = f"Entity {i}"
        statement = f"{entity} was founded in {1900 + i % 120} and has {i * 7 % 1000} employees."
        m = MemoryRecord(
            id=record_id("memory", [f"doc-{i}"], {}, statement),
            run_id=run_id,
            parent_ids=[f"doc-{i}"],
            entity=entity,
            statement=statement,
            doc_id=f"doc-{i}",
            source_url=f"https://example.org/{i}",
        )
        question = f"In which year was {entity} founded?"
        memory.append(m)
        questions.append(
            QuestionRecord(
                id=record_id("questions", [m.id], {"style": "factual"}, question),
                run_id=run_id,
                parent_ids=[m.id],
                style="factual",
                question=question,
                answer=str(1900 + i % 120),
                entities=[entity],
                knowledge_ids=[m.id],
            )
        )
    for k, start in enumerate(range(0, n, unit_size)):
        store.write_unit("memory", unit_name(k), memory[start : start + unit_size], run_id=run_id)
        store.write_unit("questions", unit_name(k), questions[start : start + unit_size], run_id=run_id)
    return questions


def planning_responder(body: dict[str, Any]) -> Any:
    """Fake-server replies for the planning stage: a valid search plan, and an accepting verdict.

    Deterministic per request (a function of the messages only), so a resumed run and an
    uninterrupted one produce the same records. Other requests get the schema responder's
    reply. Use as ``FakeServerConfig(responder="testing.toy_stages:planning_responder")``.
    """
    from testing.fake_llm_server import messages_digest, schema_responder

    fmt = body.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name")
    digest = messages_digest(body.get("messages"))
    question = str((body.get("messages") or [{}])[-1].get("content", ""))[:200]
    if name == "PlanDraft":
        return {
            "analysis": f"The question asks for one fact; search for it ({digest[:8]}).",
            "tool": "search",
            "arguments": {"query": [question]},
        }
    if name == "PlanVerdict":
        reason = "accepted" if int(digest[:2], 16) % 4 else "content_inconsistency"
        return {"reason": reason, "rationale": f"verdict {digest[:8]}"}
    return schema_responder(body)
