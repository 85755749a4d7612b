"""Settings of the control plane: the process settings plus what only the API needs.

The operator, not a REST client, decides where runs submitted over HTTP may send data and
secrets:

* ``AGENTCPT_LLM_ENDPOINTS`` — a JSON list of ``{"base_url", "api_key_env", "name"}``: the
  only LLM endpoints a REST spec may use (default: only ``embedded``). The key sent to an
  endpoint is always the one bound to it here.
* ``AGENTCPT_RAY_ADDRESS`` — the Ray cluster (Jobs API URL) REST runs are submitted to;
  unset, each run's driver starts a private local Ray instance on the API's host.

Nothing reads the environment at import time: call ``get_api_settings()`` (tests build
``ApiSettings(...)`` directly, or call ``get_api_settings.cache_clear()``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from synth.llm.config import EMBEDDED as EMBEDDED_BASE_URL
from synth.settings import Settings

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def normalize_base_url(url: str) -> str:
    """The form endpoint URLs are compared in: no trailing slash, scheme and host lower-cased."""
    if url == EMBEDDED_BASE_URL:
        return url
    parts = urlsplit(url.strip())
    netloc = parts.netloc.lower()
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}" + (f"?{parts.query}" if parts.query else "")


class LLMEndpoint(BaseModel):
    """One LLM endpoint the operator lets REST specs use, with the env var holding its key."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="'embedded', or the endpoint's http(s) URL (ending in /v1)")
    api_key_env: str | None = Field(
        None, description="env var of the API process holding this endpoint's key; null = send no key"
    )
    name: str | None = Field(None, description="what a spec may write as llm.base_url instead of the URL")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v == EMBEDDED_BASE_URL:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be 'embedded' or an http(s) URL, got {v!r}")
        return normalize_base_url(v)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.match(v):
            raise ValueError(f"not an environment variable name: {v!r}")
        if v is not None and v.startswith("AGENTCPT_"):
            raise ValueError("the API's own settings (AGENTCPT_*) cannot be an endpoint's key")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME_RE.match(v) or v == EMBEDDED_BASE_URL):
            raise ValueError(f"a name is letters, digits, '.', '_', '-' (and not 'embedded'), got {v!r}")
        return v


def check_ray_address(address: str) -> str:
    """``address`` if Ray's Jobs client would treat it as a plain HTTP(S) address, else ValueError.

    Ray's client imports a Python module named by any other scheme (``this://x`` imports
    ``this``), so only ``http``, ``https`` and scheme-less ``host:port`` are accepted.
    """
    value = address.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"a Ray address must be http(s)://host:port or host:port, got scheme {scheme!r}")
        rest = value.split("://", 1)[1]
    else:
        rest = value
    if not rest or "/" in rest.rstrip("/") or any(c.isspace() for c in rest):
        raise ValueError(f"a Ray address must be http(s)://host:port or host:port, got {address!r}")
    return value


class ApiSettings(Settings):
    """``synth.settings.Settings`` plus the control plane's own (all ``AGENTCPT_*``)."""

    llm_endpoints: list[LLMEndpoint] = Field(
        default_factory=lambda: [LLMEndpoint(base_url=EMBEDDED_BASE_URL)],
        description="LLM endpoints REST specs may use (JSON list); default: only the embedded one",
    )
    max_body_bytes: PositiveInt = Field(1 << 20, description="largest request body accepted (413 above)")
    session_ttl_s: PositiveInt = Field(8 * 3600, description="dashboard sessions end this long after login")
    auth_failures_per_window: PositiveInt = Field(
        10, description="failed logins / bearer tokens per client address before 429"
    )
    auth_failure_window_s: PositiveInt = Field(60, description="window of auth_failures_per_window")
    metrics_retention_s: int = Field(
        3600, ge=0, description="finished runs leave the per-run /metrics series this long after they end"
    )

    @model_validator(mode="after")
    def _checked(self) -> ApiSettings:
        names = [e.name for e in self.llm_endpoints if e.name]
        urls = [e.base_url for e in self.llm_endpoints]
        for label, values in (("name", names), ("base_url", urls)):
            dupes = {v for v in values if values.count(v) > 1}
            if dupes:
                raise ValueError(f"llm_endpoints: {label} {sorted(dupes)[0]!r} is listed twice")
        if self.ray_address is not None:
            check_ray_address(self.ray_address)
        return self


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    return ApiSettings()
