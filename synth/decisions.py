"""The `decisions` stage (HAS, paper §2.3): each trajectory step as a choice among N+1 options."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class DecisionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alternatives: PositiveInt = Field(3, description="N alternative (thought, action) candidates per step")
