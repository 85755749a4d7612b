"""The `reasoning` stage (FAS, paper §2.2.3): two-step reasoning without tools, judged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: bool = Field(True, description="ask the LLM judge when exact/numeric matching is inconclusive")
