"""The `documents` stage: web pages (HTML, WARC, JSONL) to clean documents with trafilatura."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class DocumentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_chars: PositiveInt = Field(200, description="documents with fewer extracted characters are dropped")
    max_chars: PositiveInt = Field(500_000, description="documents with more extracted characters are dropped")
    languages: list[str] | None = Field(None, description="ISO 639-1 codes to keep; null keeps all")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard at or above which a document is a near duplicate")
