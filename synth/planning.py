"""The `planning` stage (FAS, paper §2.2.2): analysis + predicted first action, judged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PlanningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: bool = Field(True, description="run the LLM judge; false accepts every sample that passes the tool check")
