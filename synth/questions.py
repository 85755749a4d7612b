"""The `questions` stage: multi-style questions from clusters of entities and their statements."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from synth.records import QuestionStyle

ALL_STYLES: list[QuestionStyle] = ["factual", "numerical", "multi_hop", "synthesis", "navigation"]


class QuestionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    styles: list[QuestionStyle] = Field(default_factory=lambda: list(ALL_STYLES), min_length=1, description="question styles to draw from")
    per_cluster: PositiveInt = Field(4, description="questions per knowledge cluster, each in a different style")
    max_entities_per_cluster: PositiveInt = Field(3, description="largest cluster drawn")
    max_clusters: PositiveInt | None = Field(None, description="cap on clusters drawn; null = all")
