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

Reply = str | BaseModel | dict[str, Any] | Exception
Responder = Callable[[list[Message], type[BaseModel] | None], Reply]


def _first_json_object(text: str) -> Any:
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in reply")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


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
        try:
            data = reply if isinstance(reply, dict) else (
                reply.model_dump() if isinstance(reply, BaseModel) else _first_json_object(reply)
            )
            return schema.model_validate(data)
        except (ValueError, ValidationError) as err:
            raw = reply if isinstance(reply, str) else json.dumps(data, default=str)
            raise LLMInvalidOutput(f"reply does not match {schema.__name__}: {err}", raw_output=raw) from None
