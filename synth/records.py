"""Record schemas: one pydantic model per stage, each with an explicit Arrow schema.

The Arrow schema of a record type is declared field by field (``ARROW_FIELDS``), never
inferred from data, so an empty shard and a full one have the same columns and types,
and DuckDB views over a stage never see a column change type between units.

Free-form JSON values (tool-call arguments) are stored as JSON text columns: their shape
varies per tool, and a struct column would have to be inferred.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

TS = pa.timestamp("us", tz="UTC")


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------
# Nested value types
# ---------------------------------------------------------------------------


class ToolAction(BaseModel):
    """A tool call: the tool's name and its arguments (a JSON object)."""

    model_config = ConfigDict(extra="forbid")
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


TOOL_ACTION_ARROW = pa.struct([("tool", pa.string()), ("arguments", pa.string())])


def _action_to_arrow(action: ToolAction | None) -> dict[str, str] | None:
    if action is None:
        return None
    return {"tool": action.tool, "arguments": json.dumps(action.arguments, ensure_ascii=False)}


def _action_from_arrow(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    args = value.get("arguments")
    return {"tool": value["tool"], "arguments": json.loads(args) if args else {}}


class TrajectoryStep(BaseModel):
    """One ReAct step: the thought, the tool call (None on the final answer step), what came back."""

    model_config = ConfigDict(extra="forbid")
    thought: str = ""
    action: ToolAction | None = None
    observation: str | None = None
    # What the tool read before it answered, when that differs from the observation (a
    # summarizing `visit` keeps the raw page here); never part of a CPT text.
    raw: str | None = None


STEP_ARROW = pa.struct(
    [("thought", pa.string()), ("action", TOOL_ACTION_ARROW), ("observation", pa.string()), ("raw", pa.string())]
)


OptionSource = Literal["original", "llm", "earlier_step", "template"]


class DecisionStep(BaseModel):
    """One HAS step: N+1 rendered options, the index of the original one, the real observation.

    ``sources[i]`` says where option i came from (the trajectory, the LLM, or a fill). When the
    original thought was condensed to the alternatives' length band, ``options[chosen]`` shows
    the condensed thought and ``original_thought`` keeps the trajectory's own.
    """

    model_config = ConfigDict(extra="forbid")
    options: list[str]
    chosen: int
    observation: str | None = None
    sources: list[OptionSource] = Field(default_factory=list)
    original_thought: str | None = None
    condensed: Literal["llm", "cut"] | None = None


# A count per kind. Not an Arrow map: ``datasets`` (and the Hub's viewer) have no map
# feature type, and a rollouts shard is the artefact people most want to load there.
MALFORMED_COUNT_ARROW = pa.struct([("kind", pa.string()), ("count", pa.int64())])

DECISION_STEP_ARROW = pa.struct(
    [
        ("options", pa.list_(pa.string())),
        ("chosen", pa.int32()),
        ("observation", pa.string()),
        ("sources", pa.list_(pa.string())),
        ("original_thought", pa.string()),
        ("condensed", pa.string()),
    ]
)


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


# Stage name -> record class; filled by Record subclasses as they are defined.
RECORD_TYPES: dict[str, type[Record]] = {}


class Record(BaseModel):
    """Fields every record has. Subclasses add their stage's fields and Arrow fields."""

    model_config = ConfigDict(extra="forbid")

    STAGE: ClassVar[str] = ""
    ARROW_FIELDS: ClassVar[list[pa.Field]] = []

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # A record class registers itself under its stage, so shard readers find its schema
        # by stage name without importing the stages (which would be an import cycle).
        super().__pydantic_init_subclass__(**kwargs)
        if cls.STAGE:
            RECORD_TYPES[cls.STAGE] = cls

    id: str
    run_id: str
    stage: str
    parent_ids: list[str] = Field(default_factory=list)
    model: str | None = None
    # The writing stage's prompt fingerprint (synth.stage.prompt_fingerprint); set by the runner.
    prompt_fingerprint: str | None = None
    created_at: datetime = Field(default_factory=utc_now)

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        common = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("parent_ids", pa.list_(pa.string())),
            pa.field("model", pa.string()),
            pa.field("prompt_fingerprint", pa.string()),
            pa.field("created_at", TS),
        ]
        return pa.schema(common + list(cls.ARROW_FIELDS))

    # Conversions between a record and an Arrow row. Subclasses with nested
    # JSON-valued fields override the two hooks below.
    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        return cls.model_validate(row)


class DocumentRecord(Record):
    STAGE: ClassVar[str] = "documents"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("url", pa.string()),
        pa.field("title", pa.string()),
        pa.field("date", pa.string()),
        pa.field("text", pa.string()),
        pa.field("source_type", pa.string()),
        pa.field("n_chars", pa.int64()),
        pa.field("language", pa.string()),
        pa.field("title_candidates", pa.list_(pa.string())),
    ]
    stage: Literal["documents"] = "documents"
    url: str
    title: str | None = None
    date: str | None = None
    text: str
    source_type: str = Field(
        "web", description="web | warc | jsonl | tool_response | trajectory_observation | knowledge_graph"
    )
    n_chars: int
    language: str | None = None
    title_candidates: list[str] = Field(
        default_factory=list, description="the page's title candidates, best first (synth.ingest.titles)"
    )


class MemoryRecord(Record):
    STAGE: ClassVar[str] = "memory"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("entity", pa.string()),
        pa.field("statement", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("time", pa.string()),
        pa.field("verified_by", pa.string()),
    ]
    stage: Literal["memory"] = "memory"
    entity: str
    statement: str
    doc_id: str
    source_url: str | None = None
    time: str | None = None
    verified_by: str | None = Field(
        None,
        description="how support by the source was checked: judge (entailment call), triple (a "
        "knowledge-graph fact); null = not checked",
    )


QuestionStyle = Literal["factual", "numerical", "multi_hop", "synthesis", "navigation", "report", "choice"]


class QuestionRecord(Record):
    STAGE: ClassVar[str] = "questions"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("style", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("entities", pa.list_(pa.string())),
        pa.field("knowledge_ids", pa.list_(pa.string())),
        pa.field("calculation", pa.string()),
    ]
    stage: Literal["questions"] = "questions"
    style: QuestionStyle
    question: str
    answer: str
    entities: list[str]
    knowledge_ids: list[str]
    calculation: str | None = Field(
        None, description="the Python expression the numerical answer was recomputed with (synth.calculation)"
    )


PlanningReason = Literal[
    "accepted",
    "content_inconsistency",
    "search_unnecessary",
    "logic_discontinuity",
    "invalid_tool",
    "other",
]


class PlanningRecord(Record):
    STAGE: ClassVar[str] = "planning"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("question_id", pa.string()),
        pa.field("analysis", pa.string()),
        pa.field("action", TOOL_ACTION_ARROW),
        pa.field("answer", pa.string()),
        pa.field("accepted", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("rationale", pa.string()),
        pa.field("text", pa.string()),
    ]
    stage: Literal["planning"] = "planning"
    question_id: str
    analysis: str
    action: ToolAction | None = None
    answer: str | None = None
    accepted: bool
    reason: PlanningReason
    rationale: str | None = None
    text: str | None = Field(None, description="rendered CPT text (accepted records only)")

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        row["action"] = _action_to_arrow(self.action)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        return cls.model_validate({**row, "action": _action_from_arrow(row.get("action"))})


class ReasoningRecord(Record):
    STAGE: ClassVar[str] = "reasoning"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("question_id", pa.string()),
        pa.field("step1", pa.string()),
        pa.field("step2", pa.string()),
        pa.field("final_answer", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("decided_by", pa.string()),
        pa.field("reject_reason", pa.string()),
        pa.field("text", pa.string()),
    ]
    stage: Literal["reasoning"] = "reasoning"
    question_id: str
    step1: str
    step2: str
    final_answer: str
    correct: bool
    decided_by: str | None = Field(None, description="exact | numeric | judge | rubric")
    reject_reason: str | None = None
    text: str | None = None


Outcome = Literal["correct", "incorrect", "unknown"]
JudgedBy = Literal["label", "exact", "numeric", "mention", "judge", "evidence"]


class RolloutRecord(Record):
    STAGE: ClassVar[str] = "rollouts"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("question_id", pa.string()),
        pa.field("question", pa.string()),
        pa.field("gold_answer", pa.string()),
        pa.field("steps", pa.list_(STEP_ARROW)),
        pa.field("final_answer", pa.string()),
        pa.field("outcome", pa.string()),
        pa.field("source", pa.string()),
        pa.field("n_tokens", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("malformed", pa.list_(MALFORMED_COUNT_ARROW)),
        pa.field("judged_by", pa.string()),
    ]
    stage: Literal["rollouts"] = "rollouts"
    question_id: str | None = None
    question: str
    gold_answer: str | None = None
    steps: list[TrajectoryStep]
    final_answer: str | None = None
    outcome: Outcome
    source: str = Field(description="'rollout' or 'import:<format>'")
    n_tokens: int | None = None
    text: str | None = None
    malformed: dict[str, int] = Field(
        default_factory=dict, description="malformed agent replies by kind (bad_json, unknown_tool, ...)"
    )
    judged_by: JudgedBy | None = Field(
        None,
        description="what decided the outcome: the file's label, exact/numeric match, a gold mention, the "
        "judge against the gold answer, or the judge against the trajectory's evidence (no gold)",
    )

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        row["steps"] = [
            {"thought": s.thought, "action": _action_to_arrow(s.action), "observation": s.observation, "raw": s.raw}
            for s in self.steps
        ]
        row["malformed"] = [{"kind": k, "count": n} for k, n in sorted(self.malformed.items())]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        steps = [{**s, "action": _action_from_arrow(s.get("action"))} for s in row.get("steps") or []]
        malformed: dict[str, int] = {}
        for entry in row.get("malformed") or []:
            # {kind, count} structs; shards written before the change hold an Arrow map,
            # which reads back as (key, value) pairs.
            kind, count = (entry["kind"], entry["count"]) if isinstance(entry, dict) else entry
            malformed[kind] = malformed.get(kind, 0) + count
        return cls.model_validate({**row, "steps": steps, "malformed": malformed})


class DecisionRecord(Record):
    STAGE: ClassVar[str] = "decisions"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("trajectory_id", pa.string()),
        pa.field("steps", pa.list_(DECISION_STEP_ARROW)),
        pa.field("outcome", pa.string()),
        pa.field("n_tokens", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("filled_options", pa.int64()),
        pa.field("question", pa.string()),
        pa.field("filled_share", pa.float64()),
        pa.field("flag", pa.string()),
    ]
    stage: Literal["decisions"] = "decisions"
    trajectory_id: str
    steps: list[DecisionStep]
    outcome: Outcome
    n_tokens: int | None = None
    text: str
    filled_options: int = Field(0, description="alternatives not proposed by the LLM (earlier steps' calls or templates)")
    question: str | None = None
    filled_share: float = Field(0.0, description="filled_options / all alternatives of the record")
    flag: str | None = Field(
        None, description="why the record stays out of the corpus (e.g. too many filled options); null = eligible"
    )


CorpusKind = Literal["planning", "reasoning", "rollout", "decision", "knowledge"]


class CorpusRecord(Record):
    STAGE: ClassVar[str] = "corpus"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("kind", pa.string()),
        pa.field("text", pa.string()),
        pa.field("n_tokens", pa.int64()),
        pa.field("cpt_stage", pa.int8()),
        pa.field("source_ids", pa.list_(pa.string())),
    ]
    stage: Literal["corpus"] = "corpus"
    kind: CorpusKind
    text: str
    n_tokens: int
    cpt_stage: Literal[1, 2]
    source_ids: list[str]




# ---------------------------------------------------------------------------
# The failed ledger
# ---------------------------------------------------------------------------


class Failure(BaseModel):
    """An input that did not yield a record, and why. Stages return these; the store adds where."""

    model_config = ConfigDict(extra="forbid")
    input_ids: list[str]
    error_kind: str = Field(description="e.g. invalid_output, timeout, http_error, dropped_too_short")
    message: str
    raw_output: str | None = None

    @field_validator("error_kind")
    @classmethod
    def _kind_is_identifier(cls, v: str) -> str:
        if not v or not v.replace("_", "").replace(":", "").isalnum():
            raise ValueError("error_kind must be a short identifier like 'invalid_output'")
        return v


FAILURE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("input_ids", pa.list_(pa.string())),
        pa.field("error_kind", pa.string()),
        pa.field("message", pa.string()),
        pa.field("raw_output", pa.string()),
        pa.field("created_at", TS),
    ]
)


def records_to_table(records: list[Record], record_type: type[Record]) -> pa.Table:
    """Records of one type to an Arrow table with that type's explicit schema."""
    schema = record_type.arrow_schema()
    rows = [r.to_row() for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def table_to_records(table: pa.Table, record_type: type[Record]) -> list[Record]:
    return [record_type.from_row(row) for row in table.to_pylist()]


def failures_to_table(failures: list[Failure], run_id: str, stage: str, unit: str) -> pa.Table:
    now = utc_now()
    rows = [
        {**f.model_dump(), "run_id": run_id, "stage": stage, "unit": unit, "created_at": now} for f in failures
    ]
    return pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA)
