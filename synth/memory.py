"""The `memory` stage: documents to an entity-anchored open-world memory (paper §2.2.1)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_statements_per_doc: PositiveInt = Field(20, description="cap on statements kept per document")
    chunk_chars: PositiveInt = Field(3000, description="characters of document text per LLM call")
