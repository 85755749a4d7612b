"""``LLMClient``: the one async client for any OpenAI-compatible chat-completions endpoint.

What a call does (``complete``)::

    breaker open? -> EndpointFailure (the run stops)
    request cache hit? -> return it
    loop:
        permit = await limiter.acquire()            # concurrency window, RPM/TPM, Retry-After pause
        POST /chat/completions under a timeout      # raw aiohttp, one pool per client
        limiter.release(permit, outcome); breaker.count(outcome)
        transient failure (429, 5xx, timeout, connection, malformed body)
            -> back off (exponential, jittered, >= Retry-After) and retry, up to max_retries
        reply does not parse/validate -> retry, up to max_invalid_retries
            (a reply cut by the cap that does not parse: LLMTruncated at once)
    store in the cache, return text or a validated pydantic object

The body is built in the endpoint's dialect (``synth.llm.dialect``: the cap's name,
optional sampling fields, ``reasoning_effort``, ``extra_body``), and the cache key covers
that whole body plus the extra headers.

Failures end as the typed errors of ``synth.llm.base`` (``LLMTimeout``,
``LLMConnectionError``, ``LLMHTTPError``, ``LLMInvalidOutput`` and ``LLMTruncated`` with
the raw reply), which a stage turns into a failed-ledger row — or, when the endpoint
itself is broken, as ``EndpointFailure``, which stops the run: the circuit breaker
opened (``synth.llm.breaker``), or no connection could be made in ``max_retries`` retries.

Timeouts: ``connect_timeout_s`` bounds opening a connection (a host that cannot be
reached fails in seconds), ``timeout_s`` the whole attempt.

Transport: raw aiohttp. Measured here (NOTES.md) with a 200 ms fake endpoint, concurrency
64, client and server on the same 2 cores: the openai SDK on its default httpx transport
reached 0.27 of the 320 req/s limit, raw httpx 0.31, the SDK on aiohttp 0.93, raw aiohttp
0.97 — and we need nothing from the SDK but one POST. ``bench/llm_client.py`` re-measures.

Memory: ``complete`` itself creates no task. To run many requests, use ``complete_many``,
which keeps at most ``window`` calls alive and pulls requests lazily from an iterable, so a
queue of 100,000 requests costs 100,000 small request objects at most, never 100,000 tasks.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import functools
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel

from synth.llm.accounting import UsageTracker
from synth.llm.base import (
    LLM,
    EndpointFailure,
    LLMConnectionError,
    LLMError,
    LLMHTTPError,
    LLMInvalidOutput,
    LLMTimeout,
    LLMTruncated,
    Message,
)
from synth.llm.breaker import CircuitBreaker
from synth.llm.cache import CachedReply, RequestCache, request_key
from synth.llm.config import EMBEDDED, LLMConfig
from synth.llm.dialect import (
    estimate_reasoning_tokens,
    reasoning_field,
    refused_parameter_hint,
    reported_reasoning_tokens,
    request_body,
    request_headers,
    split_think_prefix,
)
from synth.llm.limits import MAX_GLOBAL_PAUSE_S, LocalLimiter, PermitResult, PermitSource
from synth.llm.parse import OutputParseError, parse_structured

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

# Statuses worth retrying: throttling, timeouts reported by proxies, and server errors.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
# Statuses that say the endpoint's setup is wrong (shape, key, model, path): the breaker counts them.
ENDPOINT_STATUS = frozenset({400, 401, 403, 404, 405, 415, 422})
_MAX_ERROR_TEXT = 300
_MAX_RAW_OUTPUT = 4000
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")


@functools.lru_cache(maxsize=512)
def response_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a pydantic model, as sent in ``response_format`` (cached per class)."""
    return schema.model_json_schema()


def response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """``{"type": "json_schema", "json_schema": {"name": …, "schema": …}}`` for ``schema``.

    vLLM and SGLang enforce it with guided decoding; servers that do not (transformers
    serve) ignore it, which is why every reply is validated anyway.
    """
    name = _SCHEMA_NAME.sub("_", schema.__name__)[:64] or "reply"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": response_schema(schema)}}


class _RetryableError(Exception):
    """A failed attempt worth retrying; ``final()`` is the typed error if retries run out."""

    def __init__(
        self, kind: str, message: str, *, retry_after_s: float | None = None, raw: str | None = None
    ) -> None:
        super().__init__(message)
        # retry reason: rate_limited, server_error, timeout, bad_response, connection_error
        # (the connection broke after it was made) or unreachable (none could be made)
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.raw = raw

    def final(self, attempts: int) -> LLMError:
        message = f"{self} (gave up after {attempts} attempts)"
        if self.kind == "timeout":
            return LLMTimeout(message)
        if self.kind in ("connection_error", "unreachable"):
            return LLMConnectionError(message)
        return LLMHTTPError(message, raw_output=self.raw)


def transport_problem(err: BaseException, connect_timeout_s: float) -> tuple[str, str]:
    """``(kind, description)`` of an aiohttp/OS error: ``unreachable`` when no connection was made."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return "unreachable", f"no connection within {connect_timeout_s:g} s (connect timeout)"
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return "unreachable", "cannot resolve the host name"
    if isinstance(err, aiohttp.ClientConnectorError):
        os_error = getattr(err, "os_error", None)
        if getattr(os_error, "errno", None) == errno.ECONNREFUSED or isinstance(os_error, ConnectionRefusedError):
            return "unreachable", "connection refused"
        return "unreachable", f"cannot connect ({getattr(os_error, 'strerror', None) or err})"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "connection_error", "the server closed the connection without a reply"
    return "connection_error", f"{type(err).__name__}: {err}"


@dataclass(frozen=True, slots=True)
class _Reply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    reasoning: str = ""  # from a reasoning_content / reasoning field
    reasoning_tokens: int | None = None  # as the endpoint reported them

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[Message], max_tokens: int) -> int:
    """Prompt + completion tokens a request may use, for TPM budgeting (4 chars ~ 1 token)."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 8 * len(messages) + max_tokens


def server_message(raw: bytes) -> str:
    """The server's own error message from an error body (OpenAI ``error.message``, FastAPI ``detail``)."""
    text = raw[:2000].decode("utf-8", "replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            text = str(data["error"].get("message", text))
        elif isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
        elif isinstance(data, dict) and "detail" in data:
            text = str(data["detail"])
    except ValueError:
        pass
    return " ".join(text.split())


class LLMClient:
    """Async client for one OpenAI-compatible endpoint; implements ``synth.llm.base.LLM``.

    Args:
        config: endpoint, dialect and limits. ``base_url: embedded`` starts (or reuses) the
            embedded endpoint on first use; the client stops it on ``aclose()`` if it started it.
        name: the spec block this client serves (``llm`` or ``judge_llm``), for messages.
        limiter: where permits come from; default a ``LocalLimiter`` built from ``config``
            (capped at ``EMBEDDED_MAX_CONCURRENCY`` for ``base_url: embedded``). Pass a
            cluster-wide ``PermitSource`` to share limits between processes.
        cache: request cache; None disables caching.
        usage: usage tracker to record into; default a fresh one (``client.usage``).
        api_key: the key itself; default the env var named by ``config.api_key_env``. It is
            sent as a bearer token and never logged or put into an error message.

    One client belongs to one event loop (aiohttp sessions do); use it as
    ``async with LLMClient(cfg) as llm`` or call ``await llm.aclose()``.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        name: str = "llm",
        limiter: PermitSource | None = None,
        cache: RequestCache | None = None,
        usage: UsageTracker | None = None,
        api_key: str | None = None,
    ) -> None:
        self.config = config
        self.name = name
        if limiter is None:
            concurrency = config.max_concurrency
            if config.base_url == EMBEDDED:
                from synth.llm.embedded import EMBEDDED_MAX_CONCURRENCY

                concurrency = min(concurrency, EMBEDDED_MAX_CONCURRENCY)
            limiter = LocalLimiter(concurrency, config.requests_per_minute, config.tokens_per_minute)
        self.limiter: PermitSource = limiter
        self.cache = cache
        self.usage = usage if usage is not None else UsageTracker(price=config.price)
        self.breaker = CircuitBreaker(config.breaker)
        self._api_key = api_key if api_key is not None else os.environ.get(config.api_key_env)
        self._model: str | None = config.model
        self._base_url: str | None = None if config.base_url == EMBEDDED else config.base_url.rstrip("/")
        self._endpoint: Any = None  # an EmbeddedEndpoint, when we resolved 'embedded'
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._setup_lock: asyncio.Lock | None = None
        self._occurrences: dict[str, int] = {}
        self._rng = random.Random()

    def __repr__(self) -> str:  # never show the key
        return f"LLMClient(name={self.name!r}, base_url={self.config.base_url!r}, model={self._model!r})"

    # -- the LLM protocol -----------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The model id sent to the endpoint (resolved from ``/v1/models`` if not configured).

        Resolution normally happens in ``complete()``/``resolve_model()``/``async with``. Read
        before that, this property resolves it with one blocking ``GET /models`` (starting
        the embedded endpoint first if ``base_url`` is ``embedded``), so a stage may read it
        at any time.
        """
        if self._model is None:
            self._model = self._fetch_model_blocking()
        return self._model

    @property
    def base_url(self) -> str | None:
        """The endpoint URL (None until ``embedded`` is resolved)."""
        return self._base_url

    async def complete(
        self,
        messages: list[Message],
        schema: type[T] | None = None,
        *,
        stage: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> T | str:
        """One chat completion: the reply text, or with ``schema`` a validated instance of it.

        ``temperature`` None means the config's (which may itself be None: send none).

        Raises ``LLMTimeout``, ``LLMConnectionError`` or ``LLMHTTPError`` when the endpoint
        could not answer within ``max_retries`` retries (or answered a non-retryable 4xx),
        ``LLMInvalidOutput`` (with ``raw_output``) when no reply validated within
        ``max_invalid_retries`` retries, ``LLMTruncated`` when a structured reply was cut by
        the cap and did not parse — and ``EndpointFailure`` (not an ``LLMError``) when the
        endpoint is broken: the breaker is open, or no connection could be made.
        """
        self._raise_if_broken()
        try:
            await self._setup()
        except LLMError as err:  # the endpoint or its model list is unreachable
            self.usage.record_call(stage, failure_kind=err.kind)
            raise
        model = self.model_name
        temperature = self.config.temperature if temperature is None else temperature
        max_tokens = self.config.max_tokens if max_tokens is None else max_tokens
        body = request_body(
            self.config,
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format(schema) if schema is not None else None,
        )

        key = None
        if self.cache is not None:
            key = self._cache_key(body, sampled=temperature is None or temperature > 0)
            hit = await self._cache_get(key)
            if hit is not None:
                try:
                    value = self._interpret(hit.content, schema)
                except OutputParseError:
                    pass  # cannot happen for entries we wrote; re-ask rather than fail
                else:
                    self.usage.record_call(stage, cache_hit=True)
                    return value

        try:
            value, reply = await self._complete_uncached(body, schema, stage, messages, max_tokens)
        except LLMError as err:
            self.usage.record_call(stage, failure_kind=err.kind)
            raise
        self.usage.record_call(stage)
        if key is not None:
            await self._cache_put(
                key, CachedReply(content=reply.content, prompt_tokens=reply.prompt_tokens,
                                 completion_tokens=reply.completion_tokens, model=model),
            )  # fmt: skip
        return value

    async def complete_many(
        self,
        requests: Iterable[CompletionRequest] | AsyncIterable[CompletionRequest],
        *,
        window: int | None = None,
    ) -> AsyncIterator[CompletionOutcome]:
        """Run many requests with at most ``window`` (default 2 x max_concurrency) alive at once.

        Yields a ``CompletionOutcome`` per request as each finishes (not in input order).
        """
        async for outcome in complete_bounded(
            self, requests, window=window or 2 * self.config.max_concurrency
        ):
            yield outcome

    # -- lifecycle --------------------------------------------------------------------------

    async def resolve_model(self) -> str:
        """Resolve ``embedded`` and ``model: null`` now; returns the model id."""
        await self._setup()
        return self.model_name

    async def list_models(self) -> list[str] | None:
        """``GET /models``: the ids the endpoint serves, or None when it has no such route.

        One attempt per try, 429/5xx retried twice; raises ``EndpointFailure`` when the
        endpoint cannot be reached or refuses (401, 403, …) — the preflight's first step.
        """
        await self._setup(resolve_model=False)
        assert self._session is not None and self._base_url is not None
        url = f"{self._base_url}/models"
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(self._backoff_s(attempt, None))
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    async with self._session.get(url) as resp:
                        raw, status = await resp.read(), resp.status
            except aiohttp.ClientError as err:  # before TimeoutError: a connect timeout is both
                kind, problem = transport_problem(err, self.config.connect_timeout_s)
                if kind == "unreachable":
                    raise self._failure(f"unreachable: {problem}") from None
                continue
            except TimeoutError:
                raise self._failure(f"did not answer GET /models within {self.config.timeout_s:g} s") from None
            except OSError as err:
                raise self._failure(f"unreachable: {self._redact(str(err))}") from None
            if status in (404, 405):
                return None  # some servers have no model list; the test completion decides
            if status in RETRYABLE_STATUS:
                continue
            if status != 200:
                raise self._failure(f"answered {status}: {self._redact(server_message(raw))[:_MAX_ERROR_TEXT]}")
            try:
                return [str(m["id"]) for m in json.loads(raw)["data"]]
            except (ValueError, KeyError, TypeError):
                return None  # not an OpenAI model list: let the completion decide
        raise self._failure(f"answered GET /models with {status} three times")

    def pin_model(self, model: str) -> None:
        """Use ``model`` from now on (the preflight resolved it), instead of asking ``/models``."""
        self._model = model

    async def aclose(self) -> None:
        """Close the connection pool; stop the embedded endpoint if this client started it."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)

    async def __aenter__(self) -> LLMClient:
        await self._setup()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------

    def _failure(self, problem: str) -> EndpointFailure:
        return EndpointFailure(self.name, self._base_url or self.config.base_url, problem)

    def _raise_if_broken(self) -> None:
        if self.breaker.open_reason is not None:
            raise self._failure(self.breaker.open_reason)

    async def _setup(self, *, resolve_model: bool = True) -> None:
        """Resolve the endpoint, open the pool, resolve the model; once (per event loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (e.g. one asyncio.run per work unit): sessions and locks are
            # bound to the loop that made them, so start afresh. The old loop is normally
            # closed already; its pool's sockets were closed with it.
            self._loop = loop
            self._setup_lock = asyncio.Lock()
            if self._session is not None:
                self._session.detach()
                self._session = None
        elif self._session is not None and self._base_url is not None and (
            self._model is not None or not resolve_model
        ):
            return
        assert self._setup_lock is not None
        async with self._setup_lock:
            if self._base_url is None:
                await self._start_embedded()
            if self._session is None or self._session.closed:
                self._session = self._new_session()
            if self._model is None and resolve_model:
                self._model = await self._fetch_model()

    async def _start_embedded(self) -> None:
        await asyncio.to_thread(self._start_embedded_blocking)

    def _start_embedded_blocking(self) -> None:
        """Resolve ``base_url: embedded``: reuse or start the endpoint (we own what we start)."""
        from synth.llm.embedded import ensure_endpoint

        endpoint = ensure_endpoint(
            port=self.config.embedded_port,
            batching=self.config.embedded_continuous_batching,
            temperature=self.config.temperature,
        )
        if endpoint.started_here:
            self._endpoint = endpoint
        self._base_url = endpoint.base_url

    def _new_session(self) -> aiohttp.ClientSession:
        # One pool per client, as large as the concurrency ceiling: a permit never waits for
        # a connection, and no more sockets than permits are ever opened. So aiohttp's
        # `connect` timeout only ever times connecting (DNS, TCP, TLS), never a pool wait.
        connector = aiohttp.TCPConnector(
            limit=self.config.max_concurrency, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60
        )
        # The asyncio.timeout around each attempt is the overall deadline; a second aiohttp
        # timer per request would only cost CPU (it showed in profiles at hundreds of
        # requests/s). Connecting has its own, shorter bound: an unreachable host fails in
        # connect_timeout_s instead of timeout_s.
        connect_s = min(self.config.connect_timeout_s, self.config.timeout_s)
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)
        return aiohttp.ClientSession(
            connector=connector,
            headers=request_headers(self.config, self._api_key),
            timeout=timeout,
            raise_for_status=False,
        )

    async def _fetch_model(self) -> str:
        assert self._session is not None
        url = f"{self._base_url}/models"
        last: _RetryableError | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff_s(attempt, last.retry_after_s if last else None))
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    async with self._session.get(url) as resp:
                        raw = await resp.read()
                        status = resp.status
            except aiohttp.ClientError as err:  # before TimeoutError: a connect timeout is both
                kind, problem = transport_problem(err, self.config.connect_timeout_s)
                last = _RetryableError(kind, f"GET {url}: {self._redact(problem)}")
                continue
            except TimeoutError:
                last = _RetryableError("timeout", f"GET {url} timed out after {self.config.timeout_s:g} s")
                continue
            except OSError as err:
                last = _RetryableError("connection_error", f"GET {url}: {self._redact(str(err))}")
                continue
            if status != 200:
                error = f"GET {url}: HTTP {status} {self._error_text(raw)}"
                if status in RETRYABLE_STATUS:
                    last = _RetryableError("server_error", error)
                    continue
                raise LLMHTTPError(error, status=status, server_message=self._error_text(raw))
            try:
                models = [m["id"] for m in json.loads(raw)["data"]]
            except (ValueError, KeyError, TypeError):
                raise LLMHTTPError(f"GET {url}: not an OpenAI model list") from None
            if not models:
                raise LLMHTTPError(f"GET {url}: the endpoint lists no models; set {self.name}.model")
            return str(models[0])
        assert last is not None
        raise last.final(self.config.max_retries + 1)

    def _fetch_model_blocking(self) -> str:
        import urllib.error
        import urllib.request

        if self._base_url is None:
            self._start_embedded_blocking()
        url = f"{self._base_url}/models"
        headers = request_headers(self.config, self._api_key)
        try:
            with urllib.request.urlopen(  # noqa: S310 (the configured endpoint)
                urllib.request.Request(url, headers=headers),
                timeout=min(self.config.timeout_s, self.config.connect_timeout_s, 30),
            ) as resp:
                models = [m["id"] for m in json.loads(resp.read())["data"]]
        except urllib.error.HTTPError as err:
            raise LLMHTTPError(f"GET {url}: HTTP {err.code}", status=err.code) from None
        except OSError as err:
            raise LLMConnectionError(f"GET {url}: {self._redact(str(err))}") from None
        except (ValueError, KeyError, TypeError):
            raise LLMHTTPError(f"GET {url}: not an OpenAI model list") from None
        if not models:
            raise LLMHTTPError(f"GET {url}: the endpoint lists no models; set {self.name}.model")
        return str(models[0])

    async def _complete_uncached(
        self,
        body: dict[str, Any],
        schema: type[T] | None,
        stage: str,
        messages: list[Message],
        max_tokens: int,
    ) -> tuple[T | str, _Reply]:
        # orjson: UTF-8 as sent, ~10x the stdlib encoder's speed (issue 19); non-string keys
        # (a YAML `extra_body` may have them) become strings, as json.dumps made them.
        payload = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        estimated = estimate_tokens(messages, max_tokens)
        transient = 0
        invalid = 0
        while True:
            self._raise_if_broken()  # another call may have opened it while this one waited
            try:
                reply = await self._attempt(payload, body, estimated, stage)
            except _RetryableError as err:
                if transient >= self.config.max_retries:
                    if err.kind == "unreachable":
                        # No connection in max_retries retries: the endpoint is down, not this
                        # request. Stopping beats a ledger row that a resumed run would skip.
                        raise self._failure(
                            f"unreachable: {err} (gave up after {transient + invalid + 1} attempts)"
                        ) from None
                    raise err.final(transient + invalid + 1) from None
                transient += 1
                self.usage.record_retry(stage, err.kind)
                delay = self._backoff_s(transient, err.retry_after_s)
                log.debug("retrying after %s (%.2f s): %s", err.kind, delay, err)
                await asyncio.sleep(delay)
                continue
            text = reply.content
            reasoning = reply.reasoning
            if schema is not None:
                # A thinking model's reasoning is not the answer: parse what follows it.
                split = split_think_prefix(text)
                text, reasoning = split.content, "\n".join(r for r in (reasoning, split.reasoning) if r)
            reasoning_tokens = reply.reasoning_tokens
            if reasoning_tokens is None:
                reasoning_tokens = estimate_reasoning_tokens(reasoning, text, reply.completion_tokens)
            self.usage.record_reasoning(stage, reasoning_tokens)
            try:
                return (text if schema is None else parse_structured(text, schema)), reply
            except OutputParseError as err:
                if reply.truncated:
                    # The same cap would cut the same reply again: no retry, a named failure.
                    raise LLMTruncated.at_cap(max_tokens, raw_output=reply.content[:_MAX_RAW_OUTPUT]) from None
                if invalid >= self.config.max_invalid_retries:
                    raise LLMInvalidOutput(str(err), raw_output=reply.content[:_MAX_RAW_OUTPUT]) from None
                invalid += 1
                self.usage.record_retry(stage, "invalid_output")

    @staticmethod
    def _interpret(content: str, schema: type[T] | None) -> T | str:
        """A cached reply as a value: text as it came, or parsed past a thinking model's prefix."""
        if schema is None:
            return content
        return parse_structured(split_think_prefix(content).content, schema)

    async def _attempt(self, payload: bytes, body: dict[str, Any], estimated_tokens: int, stage: str) -> _Reply:
        """One POST under a permit and a timeout; a ``_Reply``, or a raised error."""
        session = self._session
        assert session is not None
        url = f"{self._base_url}/chat/completions"
        permit = await self.limiter.acquire(estimated_tokens)
        # Until we know better, an attempt that was sent but never answered ("error"):
        # neutral for the concurrency window, its token estimate counted as spent.
        result = PermitResult.error(tokens_used=estimated_tokens)
        started = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    async with session.post(url, data=payload) as resp:
                        raw = await resp.read()
                        status = resp.status
                        headers = resp.headers
            except aiohttp.ClientError as err:  # before TimeoutError: a connect timeout is both
                self.usage.record_attempt(stage, ok=False)
                kind, problem = transport_problem(err, self.config.connect_timeout_s)
                self.breaker.failure(f"unreachable: {problem}" if kind == "unreachable" else problem)
                raise _RetryableError(kind, self._redact(problem)) from None
            except TimeoutError:  # the attempt's deadline (timeout_s)
                self.usage.record_attempt(stage, ok=False)
                self.breaker.neutral()
                result = PermitResult.timed_out(tokens_used=estimated_tokens)
                raise _RetryableError("timeout", f"no reply within {self.config.timeout_s:g} s") from None
            except OSError as err:
                self.usage.record_attempt(stage, ok=False)
                self.breaker.failure(f"connection failed: {err}")
                raise _RetryableError("connection_error", f"{type(err).__name__}: {self._redact(str(err))}") from None
            latency_s = time.perf_counter() - started
            if status == 200:
                try:
                    reply = self._read_completion(raw)
                except _RetryableError:
                    self.usage.record_attempt(stage, ok=False)
                    self.breaker.neutral()
                    raise
                self.breaker.success()
                result = PermitResult.ok(tokens_used=reply.prompt_tokens + reply.completion_tokens)
                self.usage.record_attempt(
                    stage, ok=True, latency_s=latency_s, prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                )  # fmt: skip
                return reply
            self.usage.record_attempt(stage, ok=False)
            said = self._error_text(raw)
            message = f"HTTP {status} from {url}: {said}"
            if status == 429:
                self.breaker.neutral()
                retry_after = parse_retry_after(headers)
                result = PermitResult.throttled(retry_after)
                raise _RetryableError("rate_limited", message, retry_after_s=retry_after)
            result = PermitResult.error(tokens_used=0)
            if status in RETRYABLE_STATUS:
                self.breaker.neutral()
                raise _RetryableError("server_error", message, retry_after_s=parse_retry_after(headers))
            hint = refused_parameter_hint(said, body, self.name) if status == 400 else None
            if hint:
                said, message = f"{said} ({hint})", f"{message} ({hint})"
            if status in ENDPOINT_STATUS:
                self.breaker.failure(f"answered {status}: {said}")
                self._raise_if_broken()
            else:
                self.breaker.neutral()
            raise LLMHTTPError(message, status=status, server_message=said)
        finally:
            self.limiter.release(permit, result)

    def _read_completion(self, raw: bytes) -> _Reply:
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _RetryableError(
                "bad_response", "malformed response body (not a chat completion)",
                raw=raw[:_MAX_RAW_OUTPUT].decode("utf-8", "replace"),
            ) from None  # fmt: skip
        usage = data.get("usage") or {}
        if not isinstance(usage, dict):
            usage = {}
        finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        return _Reply(
            content=content if isinstance(content, str) else "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            reasoning=reasoning_field(message) if isinstance(message, dict) else "",
            reasoning_tokens=reported_reasoning_tokens(usage),
        )

    def _backoff_s(self, retry: int, retry_after_s: float | None) -> float:
        """Exponential backoff with equal jitter; never shorter than the server's Retry-After."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (retry - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, MAX_GLOBAL_PAUSE_S))
        return delay

    def _error_text(self, raw: bytes) -> str:
        """The server's error message, short and with the API key masked."""
        return self._redact(server_message(raw))[:_MAX_ERROR_TEXT]

    def _redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def _cache_key(self, body: dict[str, Any], *, sampled: bool) -> str:
        base = request_key(body, self.config.extra_headers)
        if not sampled:
            return base
        # Sampling: the k-th identical request in this process is a different draw (a stage
        # asking twice wants two answers), and a resumed run replays them to the same keys.
        k = self._occurrences.get(base, 0)
        self._occurrences[base] = k + 1
        return base if k == 0 else request_key(body, self.config.extra_headers, draw=k)

    async def _cache_get(self, key: str) -> CachedReply | None:
        assert self.cache is not None
        try:
            # Inline, not in a thread: a lookup is a dict get (a unit's segments are read once,
            # on its first lookup), and two thread hops cost more CPU per request than the
            # cache itself (issue 19).
            return self.cache.get(key)
        except OSError as err:
            log.warning("request cache read failed (treated as a miss): %s", err)
            return None

    async def _cache_put(self, key: str, reply: CachedReply) -> None:
        assert self.cache is not None
        try:
            self.cache.put(key, reply)  # one append to this unit's segment: no thread hop either
        except OSError as err:
            # The reply is good; losing its cache entry only costs a re-ask on resume.
            log.warning("request cache write failed: %s", err)


# --------------------------------------------------------------------------------------
# Many requests, bounded
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One ``complete()`` call to make; ``tag`` is yours (an id, an index) and comes back."""

    messages: list[Message]
    schema: type[BaseModel] | None = None
    stage: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    tag: Any = None


@dataclass(slots=True)
class CompletionOutcome:
    """How one request ended: ``value`` (text or model) or ``error`` (an ``LLMError``)."""

    request: CompletionRequest
    value: Any = None
    error: LLMError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def complete_bounded(
    llm: LLM,
    requests: Iterable[CompletionRequest] | AsyncIterable[CompletionRequest],
    *,
    window: int = 128,
) -> AsyncIterator[CompletionOutcome]:
    """Run ``requests`` through any ``LLM`` with at most ``window`` calls alive at once.

    Requests are pulled lazily, so a generator of 100,000 requests never materialises more
    than ``window`` tasks. Outcomes are yielded as calls finish. An ``LLMError`` becomes an
    outcome with ``error`` set; any other exception (a bug) cancels the rest and propagates.
    Closing the iterator early cancels the calls still running.
    """

    async def run(req: CompletionRequest) -> CompletionOutcome:
        try:
            value = await llm.complete(
                req.messages,
                req.schema,
                stage=req.stage,
                temperature=req.temperature,
                max_tokens=req.max_tokens,
            )
        except LLMError as err:
            return CompletionOutcome(req, error=err)
        return CompletionOutcome(req, value=value)

    async for outcome in bounded_as_completed(requests, run, window=window):
        yield outcome


R = TypeVar("R")
I = TypeVar("I")  # noqa: E741


async def bounded_as_completed(
    items: Iterable[I] | AsyncIterable[I],
    func: Callable[[I], Awaitable[R]],
    *,
    window: int,
) -> AsyncIterator[R]:
    """``func(item)`` for every item, at most ``window`` at a time, yielded as they finish.

    Completion is signalled through a queue (O(1) per item), not by re-waiting on the set
    of pending tasks (O(window) per item).
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    done: asyncio.Queue[asyncio.Task[R]] = asyncio.Queue()
    pending: set[asyncio.Task[R]] = set()
    sync_iter = iter(items) if isinstance(items, Iterable) else None
    async_iter = aiter(items) if sync_iter is None else None  # type: ignore[arg-type]
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    item = next(sync_iter) if sync_iter is not None else await anext(async_iter)  # type: ignore[arg-type]
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    break
                task = asyncio.ensure_future(func(item))
                pending.add(task)
                task.add_done_callback(done.put_nowait)
            if not pending:
                return
            task = await done.get()
            pending.discard(task)
            yield task.result()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
