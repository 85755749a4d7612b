"""The `rollouts` stage: a ReAct agent in an offline tool environment, plus trajectory import."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

ToolName = Literal["search", "visit", "python"]


class RolloutsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_steps: PositiveInt = Field(8, description="tool calls before the agent must answer")
    tools: list[ToolName] = Field(default_factory=lambda: ["search", "visit", "python"], description="tools offered to the agent")
