"""Endpoint configuration (the `llm` and `judge_llm` blocks of a run spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class PriceTable(BaseModel):
    """USD per million tokens, for the optional cost column of the accounting."""

    model_config = ConfigDict(extra="forbid")
    prompt_usd_per_mtok: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    completion_usd_per_mtok: float = Field(0.0, ge=0, description="USD per 1M completion tokens")


class LLMConfig(BaseModel):
    """How to reach one OpenAI-compatible chat-completions endpoint, and how hard to push it."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field("embedded", description="'embedded' starts transformers serve locally; else an http(s) URL ending in /v1")
    model: str | None = Field(None, description="model name sent to the endpoint; null = the endpoint's first model")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key (never the key itself)")
    max_concurrency: PositiveInt = Field(64, description="ceiling on requests in flight, cluster-wide")
    requests_per_minute: PositiveInt | None = Field(None, description="RPM limit, cluster-wide")
    tokens_per_minute: PositiveInt | None = Field(None, description="TPM limit (prompt + completion), cluster-wide")
    temperature: float = Field(0.8, ge=0, le=2, description="sampling temperature")
    max_tokens: PositiveInt = Field(1024, description="completion token cap per request")
    timeout_s: PositiveFloat = Field(120, description="per-request timeout in seconds")
    max_retries: int = Field(6, ge=0, le=50, description="retries for transient errors (429, 5xx, timeouts, connection errors)")
    max_invalid_retries: int = Field(2, ge=0, le=20, description="retries of a reply that did not parse or validate against the schema")
    backoff_base_s: PositiveFloat = Field(0.5, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: PositiveFloat = Field(30.0, description="ceiling of one retry delay (a longer Retry-After wins)")
    embedded_port: int = Field(8010, ge=1, le=65535, description="loopback port of the embedded endpoint")
    embedded_continuous_batching: bool = Field(True, description="embedded endpoint: batch requests (~3x throughput; one sampling temperature for all)")
    price: PriceTable | None = Field(None, description="optional price table for cost accounting")


def completion_cap(stage_cap: int | None, endpoint_cap: int) -> int:
    """The smaller of a stage's completion cap and its endpoint's: a stage never raises it."""
    return endpoint_cap if stage_cap is None else min(stage_cap, endpoint_cap)
