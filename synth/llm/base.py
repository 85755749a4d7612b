"""The interface every stage uses to talk to a language model.

Stages depend on this protocol only, so their unit tests pass a scripted fake and need
neither a server nor a network. The real implementation is ``synth.llm.client.LLMClient``.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}


class LLMError(Exception):
    """A request that ended without a usable reply. ``kind`` goes into the failed ledger."""

    kind: str = "llm_error"

    def __init__(self, message: str, raw_output: str | None = None) -> None:
        super().__init__(message)
        self.raw_output = raw_output


class LLMInvalidOutput(LLMError):
    """The reply never parsed/validated against the schema, after the allowed retries."""

    kind = "invalid_output"


class LLMTimeout(LLMError):
    kind = "timeout"


class LLMHTTPError(LLMError):
    """A non-retryable HTTP status, or a retryable one after the retries ran out."""

    kind = "http_error"


class LLMConnectionError(LLMError):
    kind = "connection_error"


@runtime_checkable
class LLM(Protocol):
    """What a stage may ask of a model."""

    @property
    def model_name(self) -> str:
        """The model id written into each record's `model` field."""
        ...

    @overload
    async def complete(
        self, messages: list[Message], schema: None = None, *, stage: str = "", temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str: ...

    @overload
    async def complete(
        self, messages: list[Message], schema: type[T], *, stage: str = "", temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> T: ...

    async def complete(
        self,
        messages: list[Message],
        schema: type[T] | None = None,
        *,
        stage: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> T | str:
        """One chat completion: text, or (with ``schema``) a validated instance of it.

        Raises an ``LLMError`` subclass when no usable reply could be had; the caller turns
        that into a ``Failure`` row with ``err.kind`` and ``err.raw_output``.
        """
        ...
