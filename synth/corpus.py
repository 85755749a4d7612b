"""The `corpus` stage: render, dedup, decontaminate and split into CPT stages 1 and 2."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dedup: Literal["minhash", "exact", "none"] = Field("minhash", description="dedup across kinds")
    decontaminate: list[str] = Field(default_factory=list, description="benchmark JSONL globs with a `question` field")
    stage1_max_tokens: PositiveInt = Field(32768, description="records up to this many tokens go to CPT stage 1")
    stage2_max_tokens: PositiveInt = Field(131072, description="records up to this many tokens go to CPT stage 2; longer are dropped")
