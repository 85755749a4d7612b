"""Documents whose text is known when inputs are listed: tool responses and knowledge-graph
triples. Unlike a ``SourceItem`` (a pointer into a file, re-read by the worker), such an
item carries its text: it was already read to be listed (a trajectory line, a rollout row,
a group of triples), and is small (a tool response is capped by the agent's context).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InlineDocument(BaseModel):
    """A work item of the documents stage that needs no extraction."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["inline"] = "inline"
    ref: str = Field(description="stable name for ids and the ledger (file#line/step, run/rollout/step)")
    url: str = Field(description="where the text came from: a visited URL, a search locator, a triple source")
    title: str | None = None
    date: str | None = None
    text: str
    source_type: Literal["tool_response", "knowledge_graph"]
