"""Request and response models of the control plane (DESIGN §7), one family per resource.

The request body of ``POST /v1/runs`` is a run spec (``synth.spec.RunSpec``); it is parsed
with ``synth.spec.parse_spec`` so that the API and the CLI name a bad field identically.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth.catalog import RunStats
from synth.records import (
    CorpusRecord,
    DecisionRecord,
    DocumentRecord,
    MemoryRecord,
    PlanningRecord,
    QuestionRecord,
    ReasoningRecord,
    RolloutRecord,
)
from synth.runstate import RunState

Backend = Literal["local", "ray"]

RUN_SPEC_EXAMPLE: dict[str, Any] = {
    "name": "quickstart",
    "inputs": {"web": ["inputs/pages/*.html"], "trajectories": []},
    # An endpoint of AGENTCPT_LLM_ENDPOINTS, by name or URL ("embedded" is allowed by default).
    "llm": {"base_url": "embedded", "max_concurrency": 8},
    "stages": {
        "documents": {"min_chars": 200},
        "memory": {},
        "questions": {"per_cluster": 4},
        "planning": {},
    },
    "execution": {"unit_size": 64, "seed": 0},
}


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------


class ErrorDetail(_Public):
    code: str = Field(description="short machine-readable code, e.g. invalid_spec, not_found, unauthorized")
    message: str = Field(description="one line for a human")
    field: str | None = Field(
        None, description="dotted path of the offending field (spec key, query or path parameter)"
    )


class ErrorBody(_Public):
    """The body of every 4xx/5xx response."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_spec",
                        "message": "extra field not permitted",
                        "field": "stages.planning.k",
                    }
                }
            ]
        },
    )
    error: ErrorDetail


# -- runs -----------------------------------------------------------------------


class TokenTotals(_Public):
    prompt: int = Field(0, ge=0, description="prompt tokens sent to LLM endpoints")
    completion: int = Field(0, ge=0, description="completion tokens received")
    total: int = Field(0, ge=0, description="prompt + completion")


class StageProgressPublic(_Public):
    stage: str = Field(description="stage name (DESIGN §6)")
    units_done: int = Field(ge=0, description="work units committed")
    units_total: int | None = Field(description="work units in the stage; null until its input is known")
    records: int = Field(ge=0, description="records committed")
    failed: int = Field(ge=0, description="inputs that ended in the failed ledger")
    llm_requests: int = Field(ge=0, description="LLM requests made by this stage")
    tokens: TokenTotals
    latency_p50_ms: float | None = Field(None, description="median LLM request latency")
    latency_p99_ms: float | None = Field(None, description="99th percentile LLM request latency")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    eta_s: float | None = Field(None, description="estimated seconds to finish the stage")


class RunPublic(_Public):
    """A run as the control plane sees it: its state reconciled from the run directory and its driver."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "run_id": "quickstart-20250101-120000-1a2b3c",
                    "name": "quickstart",
                    "state": "running",
                    "backend": "local",
                    "source": "api",
                    "created_at": "2025-01-01T12:00:00Z",
                    "started_at": "2025-01-01T12:00:02Z",
                    "finished_at": None,
                    "duration_s": 42.0,
                    "error": None,
                    "cancel_requested": False,
                    "attempts": 1,
                    "stages": [
                        {
                            "stage": "documents",
                            "units_done": 1,
                            "units_total": 1,
                            "records": 20,
                            "failed": 2,
                            "llm_requests": 0,
                            "tokens": {"prompt": 0, "completion": 0, "total": 0},
                        }
                    ],
                    "tokens": {"prompt": 0, "completion": 0, "total": 0},
                    "llm_requests": 0,
                    "progress_updated_at": "2025-01-01T12:00:40Z",
                }
            ]
        },
    )
    run_id: str = Field(description="the run's id; its directory is <output_dir>/<run_id>")
    name: str = Field(description="the spec's name")
    state: RunState = Field(description="queued | running | succeeded | failed | cancelled")
    backend: Backend = Field(description="where the driver runs: a local detached process, or a Ray job")
    source: Literal["api", "cli"] = Field(
        "api",
        description="api: submitted here; cli: started with `agentcpt run` / `make synth` and found under an "
        "output dir (read and cancel only)",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = Field(
        None, description="seconds from start to finish (or to now while running)"
    )
    error: str | None = Field(
        None, description="why the run failed (with the driver's log tail when it died)"
    )
    cancel_requested: bool = Field(
        False, description="a cancel was requested and the driver has not stopped yet"
    )
    attempts: int = Field(1, ge=1, description="1 + the number of resumes")
    stages: list[StageProgressPublic] = Field(
        default_factory=list, description="per-stage progress, pipeline order"
    )
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    llm_requests: int = Field(0, ge=0)
    progress_updated_at: datetime | None = Field(None, description="when the driver last wrote progress")


class RunsPublic(_Public):
    data: list[RunPublic]
    count: int = Field(ge=0, description="number of runs in the store (all pages)")
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)


# -- shards, stats, samples ------------------------------------------------------


class ShardPublic(_Public):
    stage: str
    unit: str = Field(description="work unit name (zero-padded)")
    kind: Literal["records", "failed"] = Field(description="records shard, or failed-ledger shard")
    path: str = Field(description="path relative to the run directory")
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    worker: str = Field(description="host:pid that committed the unit")


class ShardsPublic(_Public):
    data: list[ShardPublic]
    count: int = Field(ge=0)


class RunStatsPublic(RunStats):
    """``synth.catalog.run_stats`` (the numbers ``agentcpt stats`` prints), plus the run's token totals."""

    tokens: TokenTotals = Field(default_factory=TokenTotals, description="LLM tokens over all stages")


Sample = Annotated[
    DocumentRecord
    | MemoryRecord
    | QuestionRecord
    | PlanningRecord
    | ReasoningRecord
    | RolloutRecord
    | DecisionRecord
    | CorpusRecord,
    Field(discriminator="stage"),
]


class SamplesPublic(_Public):
    stage: str
    data: list[Sample] = Field(description="records of the stage, in unit order")
    count: int = Field(ge=0, description="records in the stage (all pages)")
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)


class HealthPublic(_Public):
    status: Literal["ok"] = "ok"
