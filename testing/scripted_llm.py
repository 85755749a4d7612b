"""Test doubles for the LLM layer, shipped with the package so tests and benchmarks share them.

``ScriptedLLM`` implements the ``LLM`` protocol in-process: stage unit tests give it a
function from (messages, schema) to a reply and need no server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from synth.llm.base import LLMError, LLMInvalidOutput, Message
from synth.llm.parse import OutputParseError, parse_structured

Reply = str | BaseModel | dict[str, Any] | Exception
Responder = Callable[[list[Message], type[BaseModel] | None], Reply]


class ScriptedLLM:
    """An in-process LLM whose replies come from a function; records every call."""

    def __init__(self, responder: Responder, model_name: str = "scripted-llm") -> None:
        self._responder = responder
        self._model_name = model_name
        self.calls: list[dict[str, Any]] = []

    @property
    def model_name(self) -> str:
        return self._model_name

    async def complete(
        self,
        messages: list[Message],
        schema: type[BaseModel] | None = None,
        *,
        stage: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Any:
        self.calls.append({"messages": messages, "schema": schema, "stage": stage})
        reply = self._responder(messages, schema)
        if isinstance(reply, LLMError):
            raise reply
        if isinstance(reply, Exception):
            raise reply
        if schema is None:
            return reply if isinstance(reply, str) else json.dumps(reply if isinstance(reply, dict) else reply.model_dump())
        if isinstance(reply, schema):
            return reply
        if isinstance(reply, str):
            # The same tolerant parsing as the real client (fences, prose, several objects).
            try:
                return parse_structured(reply, schema)
            except OutputParseError as err:
                raise LLMInvalidOutput(str(err), raw_output=reply) from None
        data = reply if isinstance(reply, dict) else reply.model_dump()
        try:
            return schema.model_validate(data)
        except ValidationError as err:
            raw = json.dumps(data, default=str)
            raise LLMInvalidOutput(f"reply does not match {schema.__name__}: {err}", raw_output=raw) from None
