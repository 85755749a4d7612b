"""A ninth stage, built the way a contributor adds one: a config, a record class, a Stage
subclass — and one ``synth.stages.register`` call (the registry line). The architecture
test runs it through the scheduler and the catalog to show that nothing else is needed.

``reviews`` is a map stage over ``planning``: one ``ReviewRecord`` per planning record,
approving those whose analysis is long enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synth.ids import record_id
from synth.records import PlanningRecord, Record
from synth.stage import Stage, StageContext, StageOutput, Verdict


class ReviewConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_chars: int = Field(1, description="analyses shorter than this are not approved")


class ReviewRecord(Record):
    STAGE: ClassVar[str] = "reviews"
    ARROW_FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("planning_id", pa.string()),
        pa.field("approved", pa.bool_()),
    ]
    planning_id: str
    approved: bool


class ReviewStage(Stage[ReviewConfig, PlanningRecord]):
    name = "reviews"
    config_type = ReviewConfig
    record_type = ReviewRecord
    upstream = ("planning",)
    uses_llm = False
    verdict = Verdict(accepted_sql="approved", rejected_sql="NOT approved")
    summary_fields = ("approved",)

    async def process(self, items: Sequence[PlanningRecord], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        out = StageOutput()
        for p in items:
            approved = len(p.analysis or "") >= cfg.min_chars
            out.records.append(
                ReviewRecord(
                    id=record_id("reviews", [p.id], {"min_chars": cfg.min_chars}, str(approved)),
                    run_id=ctx.run_id,
                    stage="reviews",
                    parent_ids=[p.id],
                    planning_id=p.id,
                    approved=approved,
                )
            )
        return out


STAGE = ReviewStage()
