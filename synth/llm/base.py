"""The interface every stage uses to talk to a language model.

Stages depend on this protocol only, so their unit tests pass a scripted fake and need
neither a server nor a network. The real implementation is ``synth.llm.client.LLMClient``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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


class LLMTruncated(LLMError):
    """A structured reply cut by the completion cap (``finish_reason: length``) that did not parse.

    Its own kind, not ``invalid_output``: the fix is a larger cap, not a better prompt, and
    ``agentcpt stats`` names the setting to raise from the cap in the message.
    """

    kind = "truncated"

    @classmethod
    def at_cap(cls, cap: int, raw_output: str | None = None) -> LLMTruncated:
        return cls(f"reply cut by the {cap}-token cap (finish_reason: length)", raw_output=raw_output)


_TRUNCATED_CAP = re.compile(r"cut by the (\d+)-token cap")


def truncation_caps(messages: Iterable[str]) -> set[int]:
    """The caps named by ``truncated`` failure messages."""
    return {int(m.group(1)) for text in messages if (m := _TRUNCATED_CAP.search(text or ""))}


class LLMTimeout(LLMError):
    kind = "timeout"


class LLMHTTPError(LLMError):
    """A non-retryable HTTP status, or a retryable one after the retries ran out."""

    kind = "http_error"

    def __init__(
        self, message: str, raw_output: str | None = None, *, status: int | None = None, server_message: str = ""
    ) -> None:
        super().__init__(message, raw_output)
        self.status = status
        self.server_message = server_message


class LLMConnectionError(LLMError):
    kind = "connection_error"


class EndpointFailure(Exception):
    """The endpoint itself is broken (bad key, unknown model, refused connections…): stop the run.

    Deliberately *not* an ``LLMError``: stages turn ``LLMError`` into failed-ledger rows, and
    a dead endpoint must not fill the ledger with rows that a resumed run would then skip.
    This propagates out of the stage, the unit is not committed, and the run ends
    ``failed`` with ``str(err)`` as its one-line message, e.g.
    ``llm: https://api.openai.com/v1 answered 401: Incorrect API key provided``.
    """

    def __init__(self, endpoint: str, base_url: str, problem: str) -> None:
        super().__init__(f"{endpoint}: {base_url} {problem}")
        self.endpoint = endpoint
        self.base_url = base_url
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:  # it crosses process boundaries (Ray)
        return (type(self), (self.endpoint, self.base_url, self.problem))


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
