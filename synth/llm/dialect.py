"""The chat-completions dialect of one endpoint: request bodies, headers, replies of thinking models.

Providers agree on ``POST /chat/completions`` and differ in the details, which a run spec's
``llm`` block states (``synth.llm.config``):

* the completion cap's name: ``max_tokens``, or ``max_completion_tokens`` (OpenAI's
  reasoning models answer 400 to the former);
* sampling fields to send or leave out (``temperature: null``), ``top_p``, ``seed``,
  ``reasoning_effort``;
* anything else the provider understands (``extra_body``: vLLM's
  ``chat_template_kwargs: {enable_thinking: false}``) and extra headers.

Thinking models put their reasoning either in a separate message field
(``reasoning_content``: vLLM's and DeepSeek's reasoning parsers; ``reasoning``:
OpenRouter) or in the content, as a ``<think>…</think>`` prefix (Qwen3 and R1-style models
served without a reasoning parser; R1 distills often omit the opening tag). For
structured calls that prefix is stripped before the reply is parsed; either way, the
reasoning's tokens are counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.llm.config import LLMConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


def request_body(
    cfg: LLMConfig,
    *,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float | None,
    response_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one chat-completions request in ``cfg``'s dialect.

    ``temperature`` None sends no temperature (the server's default). Every field that is
    sent is in the body, so a cache key over the body covers all of them.
    """
    body: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    if cfg.top_p is not None:
        body["top_p"] = cfg.top_p
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    body[cfg.tokens_param(model)] = max_tokens
    if cfg.reasoning_effort is not None:
        body["reasoning_effort"] = cfg.reasoning_effort
    if response_format is not None:
        body["response_format"] = response_format
    # LLMConfig refuses extra_body keys that the fields above own, so nothing is overwritten.
    body.update(cfg.extra_body)
    return body


def request_headers(cfg: LLMConfig, api_key: str | None) -> dict[str, str]:
    """The HTTP headers of every request to ``cfg``'s endpoint (the key as a bearer token)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json", **cfg.extra_headers}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


@dataclass(frozen=True, slots=True)
class ThinkSplit:
    """A reply's content without a leading think block, and that block's text."""

    content: str
    reasoning: str


def split_think_prefix(content: str) -> ThinkSplit:
    """Separate a leading ``<think>…</think>`` block (or an untagged one ending in ``</think>``).

    An unterminated ``<think>`` (the cap cut the reasoning) leaves no content. A ``</think>``
    that follows a ``<think>`` later in the text is not a prefix, and nothing is stripped.
    """
    text = content.lstrip()
    if text.startswith(THINK_OPEN):
        end = text.find(THINK_CLOSE)
        if end < 0:
            return ThinkSplit(content="", reasoning=text[len(THINK_OPEN) :].strip())
        return ThinkSplit(content=text[end + len(THINK_CLOSE) :].lstrip(), reasoning=text[len(THINK_OPEN) : end].strip())
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:
        return ThinkSplit(content=text[end + len(THINK_CLOSE) :].lstrip(), reasoning=text[:end].strip())
    return ThinkSplit(content=content, reasoning="")


def reasoning_field(message: dict[str, Any]) -> str:
    """The reasoning a server returned beside the content (``reasoning_content`` / ``reasoning``)."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def reported_reasoning_tokens(usage: dict[str, Any]) -> int | None:
    """``usage.completion_tokens_details.reasoning_tokens`` when the server reports it (OpenAI, vLLM)."""
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        return int(details["reasoning_tokens"])
    return None


def estimate_reasoning_tokens(reasoning: str, content: str, completion_tokens: int) -> int:
    """Reasoning tokens when the server does not report them: its share of the reply's characters.

    Scaled to the server's own ``completion_tokens`` so the two stay consistent; 4
    characters per token when the server reports no usage at all.
    """
    if not reasoning:
        return 0
    if completion_tokens <= 0:
        return max(1, len(reasoning) // 4)
    return round(completion_tokens * len(reasoning) / (len(reasoning) + len(content)))


# The server's message names a parameter it refused: which setting changes what is sent.
_PARAMETER_FIXES: tuple[tuple[str, str, str], ...] = (
    # (parameter the server names, the body field that must have been sent, the fix)
    ("max_tokens", "max_tokens", "set {block}.max_tokens_param: max_completion_tokens"),
    ("max_completion_tokens", "max_completion_tokens", "set {block}.max_tokens_param: max_tokens"),
    ("temperature", "temperature", "set {block}.temperature: null to send none"),
    ("top_p", "top_p", "set {block}.top_p: null"),
    ("seed", "seed", "set {block}.seed: null"),
    ("reasoning_effort", "reasoning_effort", "set {block}.reasoning_effort: null"),
)


def refused_parameter_hint(server_message: str, body: dict[str, Any], block: str) -> str | None:
    """A fix for a 400 that names a parameter we sent (``'max_tokens' is not supported…``)."""
    for name, sent, fix in _PARAMETER_FIXES:
        if sent in body and re.search(rf"\b{name}\b", server_message):
            return fix.format(block=block)
    return None
