"""Endpoint configuration (the `llm` and `judge_llm` blocks of a run spec).

Besides where the endpoint is and how hard to push it, a block says which *dialect* of
the chat-completions API the endpoint speaks: the name of the completion-cap parameter
(OpenAI's reasoning models refuse ``max_tokens`` with a 400 and want
``max_completion_tokens``), sampling parameters to send or to leave out (those models
accept no ``temperature`` but their default), ``reasoning_effort``, and provider-specific
body fields and headers (vLLM's ``chat_template_kwargs``, a gateway's attribution
headers). ``synth.llm.dialect`` turns a block into request bodies.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

EMBEDDED = "embedded"

MaxTokensParam = Literal["auto", "max_tokens", "max_completion_tokens"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]

# OpenAI's reasoning models (o1, o3-mini, o4-mini, gpt-5, gpt-5.1, …): they answer 400 to
# ``max_tokens``. Bare names only: gateways that prefix them (``openai/o3``) translate.
_OPENAI_REASONING_MODEL = re.compile(r"^(o[1-9][0-9]*|gpt-5)([-.].*)?$", re.IGNORECASE)

# Body fields the client sets from named settings; extra_body must not set them behind
# their back (the value would silently win over, or lose to, the named setting).
MANAGED_BODY_FIELDS: dict[str, str] = {
    "model": "the 'model' setting",
    "messages": "the stage's prompt",
    "response_format": "the stage's output schema",
    "max_tokens": "the 'max_tokens' setting (sent under the name max_tokens_param says)",
    "max_completion_tokens": "the 'max_tokens' setting (sent under the name max_tokens_param says)",
    "temperature": "the 'temperature' setting (null = send none)",
    "top_p": "the 'top_p' setting",
    "seed": "the 'seed' setting",
    "reasoning_effort": "the 'reasoning_effort' setting",
    "stream": "the client (it reads whole replies)",
    "n": "the client (it reads one choice)",
}
# Headers the client sets itself. The key never goes into a spec: it is read from the env
# var named by api_key_env, so a spec (saved next to the run's output) holds no secret.
MANAGED_HEADERS = frozenset({"authorization", "content-type", "accept", "content-length", "host"})


def is_openai_reasoning_model(model: str | None) -> bool:
    """Whether ``model`` names one of OpenAI's reasoning models (which want ``max_completion_tokens``)."""
    return bool(model) and _OPENAI_REASONING_MODEL.match(model or "") is not None


class BreakerConfig(BaseModel):
    """When an endpoint counts as broken, and the run stops instead of filling the failed ledger.

    Counted, per endpoint and worker process, over HTTP attempts: failures that say the
    endpoint (not one request) is wrong — 400/401/403/404/405/415/422, connection refused,
    an unresolvable host, a connect timeout, a dropped connection. A 2xx reply resets the
    run of failures; 429, 5xx and read timeouts are neither (they are retried).
    """

    model_config = ConfigDict(extra="forbid")
    consecutive_failures: PositiveInt = Field(20, description="stop after this many such failures in a row")
    window_requests: PositiveInt = Field(100, description="the first K attempts, over which the failure share is judged")
    max_failure_share: float = Field(
        0.5, gt=0, le=1, description="stop once more than this share of the first window_requests attempts failed so"
    )


class PriceTable(BaseModel):
    """USD per million tokens, for the optional cost column of the accounting."""

    model_config = ConfigDict(extra="forbid")
    prompt_usd_per_mtok: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    completion_usd_per_mtok: float = Field(0.0, ge=0, description="USD per 1M completion tokens")


class LLMConfig(BaseModel):
    """How to reach one OpenAI-compatible chat-completions endpoint, and how hard to push it."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field("embedded", description="'embedded' starts transformers serve locally; else an http(s) URL ending in /v1")
    model: str | None = Field(
        None, description="model name sent to the endpoint; required unless base_url is 'embedded' (null = the model it serves)"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key (never the key itself)")
    max_concurrency: PositiveInt = Field(64, description="ceiling on requests in flight, cluster-wide")
    requests_per_minute: PositiveInt | None = Field(None, description="RPM limit, cluster-wide")
    tokens_per_minute: PositiveInt | None = Field(None, description="TPM limit (prompt + completion), cluster-wide")
    temperature: float | None = Field(
        0.8, ge=0, le=2, description="sampling temperature; null = send none (OpenAI reasoning models accept only their default)"
    )
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling; null = send none")
    seed: int | None = Field(None, description="sampling seed sent with every request; null = send none")
    max_tokens: PositiveInt = Field(1024, description="completion token cap per request")
    max_tokens_param: MaxTokensParam = Field(
        "auto",
        description="the request field carrying the completion cap: max_tokens | max_completion_tokens; "
        "auto = max_completion_tokens for OpenAI reasoning models (o1, o3, o4-mini, gpt-5…), else max_tokens",
    )
    reasoning_effort: ReasoningEffort | None = Field(
        None, description="reasoning_effort sent to reasoning models (none|minimal|low|medium|high); null = send none"
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields, sent as they are (e.g. vLLM: {chat_template_kwargs: {enable_thinking: false}})",
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers (e.g. a gateway's HTTP-Referer / X-Title); never the key"
    )
    timeout_s: PositiveFloat = Field(120, description="per-request timeout in seconds (connect + reply)")
    connect_timeout_s: PositiveFloat = Field(
        10, description="seconds to open a connection: a host that cannot be reached fails this fast, not after timeout_s"
    )
    max_retries: int = Field(6, ge=0, le=50, description="retries for transient errors (429, 5xx, timeouts, connection errors)")
    max_invalid_retries: int = Field(2, ge=0, le=20, description="retries of a reply that did not parse or validate against the schema")
    backoff_base_s: PositiveFloat = Field(0.5, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: PositiveFloat = Field(30.0, description="ceiling of one retry delay (a longer Retry-After wins)")
    embedded_port: int = Field(8010, ge=1, le=65535, description="loopback port of the embedded endpoint")
    embedded_continuous_batching: bool = Field(True, description="embedded endpoint: decode concurrent requests together (~4x the tokens/s of one at a time on CPU; the name is historical)")
    price: PriceTable | None = Field(None, description="optional price table for cost accounting")
    breaker: BreakerConfig = Field(
        default_factory=BreakerConfig, description="when failures stop the run instead of filling the failed ledger"
    )

    @field_validator("extra_body")
    @classmethod
    def _no_managed_body_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        clashes = [k for k in v if k in MANAGED_BODY_FIELDS]
        if clashes:
            k = clashes[0]
            raise ValueError(f"{k!r} is set by {MANAGED_BODY_FIELDS[k]}, not by extra_body")
        return v

    @field_validator("extra_headers")
    @classmethod
    def _no_managed_headers(cls, v: dict[str, str]) -> dict[str, str]:
        clashes = [k for k in v if k.lower() in MANAGED_HEADERS]
        if clashes:
            raise ValueError(
                f"{clashes[0]!r} is set by the client (the key comes from the env var named by api_key_env)"
            )
        return v

    def tokens_param(self, model: str | None) -> str:
        """The request field that carries the completion cap for ``model``."""
        if self.max_tokens_param != "auto":
            return self.max_tokens_param
        return "max_completion_tokens" if is_openai_reasoning_model(model) else "max_tokens"


def completion_cap(stage_cap: int | None, endpoint_cap: int) -> int:
    """The smaller of a stage's completion cap and its endpoint's: a stage never raises it."""
    return endpoint_cap if stage_cap is None else min(stage_cap, endpoint_cap)
