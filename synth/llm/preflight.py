"""Preflight: prove an endpoint works before a run spends anything on it.

For each endpoint of a run (``llm``, and ``judge_llm`` when it differs), before the first
LLM stage starts (and by ``agentcpt validate``):

1. ``GET /models`` (skipped when the server has no such route): the endpoint is reachable,
   the key is accepted, and the configured model is one it serves — otherwise the error
   lists what it does serve;
2. one tiny structured completion with the exact request shape the stages send (the same
   dialect: cap parameter, sampling fields, ``reasoning_effort``, ``extra_body``,
   ``response_format``), so a 400 to ``max_tokens`` surfaces here, naming the parameter
   and the setting that fixes it.

A failure raises ``EndpointFailure`` whose text is the run's one-line message:
``llm: http://…/v1 answered 401: Incorrect API key provided``. Whether the tiny reply
parses does not matter (a 135M model may not manage it); that the endpoint answered does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from synth.llm.base import EndpointFailure, LLMError, LLMHTTPError, LLMInvalidOutput, LLMTimeout, LLMTruncated
from synth.llm.config import EMBEDDED, LLMConfig

# The preflight's own request; tests recognise it by these messages.
PREFLIGHT_MESSAGES: list[dict[str, str]] = [
    {"role": "user", "content": 'agentcpt preflight: reply with the JSON object {"ok": true} and nothing else.'}
]
# Room for the object even on a thinking model's short reply; the cap's *name* is what is tested.
PREFLIGHT_MAX_TOKENS = 16
# Transient failures (429, 5xx, read timeouts) are retried this many times, no more: a
# preflight must answer in seconds, and connection failures are never retried.
PREFLIGHT_RETRIES = 2
_LISTED_MODELS_SHOWN = 20


class PreflightReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool


@dataclass(frozen=True)
class EndpointCheck:
    """What the preflight found out about one endpoint."""

    name: str
    base_url: str
    model: str
    served: list[str] | None  # None: the server has no model list
    seconds: float

    def describe(self) -> str:
        listed = "no model list" if self.served is None else f"{len(self.served)} models listed"
        return f"{self.name}: {self.base_url} ok (model {self.model}, {listed}, {self.seconds:.1f} s)"


def _served_listing(served: list[str]) -> str:
    shown = ", ".join(served[:_LISTED_MODELS_SHOWN])
    more = len(served) - _LISTED_MODELS_SHOWN
    return shown + (f" … and {more} more" if more > 0 else "")


async def check_endpoint(name: str, config: LLMConfig, *, api_key: str | None = None) -> EndpointCheck:
    """Preflight one endpoint (see the module docstring); raises ``EndpointFailure``.

    ``config.base_url`` must be a URL (``embedded`` is resolved to one before this runs).
    """
    from synth.llm.client import LLMClient

    if config.base_url == EMBEDDED:
        raise ValueError("resolve base_url: embedded to the endpoint's URL before the preflight")
    started = time.monotonic()
    cfg = config.model_copy(update={"max_retries": min(config.max_retries, PREFLIGHT_RETRIES)})
    client = LLMClient(cfg, name=name, api_key=api_key)
    url = config.base_url.rstrip("/")
    try:
        served = await client.list_models()
        model = config.model
        if model is None:
            if not served:
                raise EndpointFailure(name, url, f"lists no model to use; set {name}.model")
            model = served[0]
        elif served is not None and model not in served:
            raise EndpointFailure(
                name, url, f"does not serve model {model!r}; it serves: {_served_listing(served)}"
            )
        client.pin_model(model)
        try:
            await client.complete(
                PREFLIGHT_MESSAGES, PreflightReply, stage="preflight", max_tokens=PREFLIGHT_MAX_TOKENS
            )
        except (LLMInvalidOutput, LLMTruncated):
            pass  # it answered in the stages' request shape; what it said does not matter here
        except LLMHTTPError as err:
            if err.status is None:
                raise EndpointFailure(name, url, f"failed the test request: {err}") from None
            raise EndpointFailure(name, url, f"answered {err.status}: {err.server_message}") from None
        except LLMTimeout:
            raise EndpointFailure(
                name, url, f"did not answer a {PREFLIGHT_MAX_TOKENS}-token test request within {cfg.timeout_s:g} s"
            ) from None
        except LLMError as err:
            raise EndpointFailure(name, url, f"failed the test request: {err}") from None
    finally:
        await client.aclose()
    return EndpointCheck(name=name, base_url=url, model=model, served=served, seconds=time.monotonic() - started)


def distinct_endpoints(llm: LLMConfig, judge_llm: LLMConfig | None) -> list[tuple[str, LLMConfig]]:
    """``[("llm", …), ("judge_llm", …)]``, without a judge block that is null or the same as ``llm``."""
    out = [("llm", llm)]
    if judge_llm is not None and judge_llm != llm:
        out.append(("judge_llm", judge_llm))
    return out
