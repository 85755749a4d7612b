"""LLMClient against the fake server: replies, faults, limits, timeouts, secrets, bounded fan-out."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from aiohttp import web
from pydantic import BaseModel, Field

from synth.llm.base import (
    LLM,
    EndpointFailure,
    LLMConnectionError,
    LLMError,
    LLMHTTPError,
    LLMInvalidOutput,
    LLMTimeout,
)
from synth.llm.client import (
    CompletionRequest,
    LLMClient,
    bounded_as_completed,
    complete_bounded,
    parse_retry_after,
)
from synth.llm.config import LLMConfig
from synth.llm.limits import LocalLimiter
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig, FaultPlan
from testing.scripted_llm import ScriptedLLM


class Verdict(BaseModel):
    accepted: bool
    reason: Literal["accepted", "content_inconsistency", "other"]
    notes: list[str] = Field(min_length=2)


def cfg(server: FakeOpenAIServer, **kw: Any) -> LLMConfig:
    base: dict[str, Any] = {
        "base_url": server.base_url,
        "max_concurrency": 8,
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    return LLMConfig(**{**base, **kw})


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(mode="thread") as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# --------------------------------------------------------------------------------------
# Happy path
# --------------------------------------------------------------------------------------


def test_client_implements_the_llm_protocol(server: FakeOpenAIServer) -> None:
    assert isinstance(LLMClient(cfg(server)), LLM)


def test_structured_call_returns_a_validated_model_and_resolves_the_model_name(
    server: FakeOpenAIServer,
) -> None:
    async def main() -> tuple[Verdict, str]:
        async with LLMClient(cfg(server, model=None)) as llm:
            return await llm.complete(msgs("judge this"), Verdict, stage="planning"), llm.model_name

    verdict, model = run(main())
    assert isinstance(verdict, Verdict) and len(verdict.notes) >= 2
    assert model == "fake-model"


def test_structured_call_sends_response_format_json_schema() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"accepted": True, "reason": "accepted", "notes": ["a", "b"]}

    async def main(url: str) -> None:
        async with LLMClient(LLMConfig(base_url=url, model="m", temperature=0.3, max_tokens=77)) as llm:
            await llm.complete(msgs("q"), Verdict)

    with FakeOpenAIServer(mode="thread", responder=responder) as s:
        run(main(s.base_url))
    body = seen[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "schema": Verdict.model_json_schema()},
    }
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("m", 0.3, 77)


def test_the_body_goes_out_as_utf8_json_with_extra_body_keys_as_strings() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        return "ok"

    async def main(url: str) -> None:
        # YAML makes `2: high` an int key; json.dumps wrote it as "2", and so must orjson.
        config = LLMConfig(base_url=url, model="m", extra_body={"vendor": {2: "high"}})
        async with LLMClient(config) as llm:
            await llm.complete([{"role": "user", "content": "Zürich – 東京 😀"}])

    with FakeOpenAIServer(mode="thread", responder=responder) as s:
        run(main(s.base_url))
    assert seen[0]["vendor"] == {"2": "high"}
    assert seen[0]["messages"][0]["content"] == "Zürich – 東京 😀"


def test_text_call_returns_the_reply_text(server: FakeOpenAIServer) -> None:
    async def main() -> str:
        async with LLMClient(cfg(server)) as llm:
            return await llm.complete(msgs("hi"))

    assert run(main()).startswith("Reply ")


def test_usage_is_accounted_per_stage(server: FakeOpenAIServer) -> None:
    async def main() -> LLMClient:
        async with LLMClient(cfg(server)) as llm:
            await llm.complete(msgs("a"), Verdict, stage="planning")
            await llm.complete(msgs("b"), stage="reasoning")
            await llm.complete(msgs("c"), stage="reasoning")
            return llm

    llm = run(main())
    reasoning = llm.usage.usage("reasoning")
    assert (reasoning.requests, reasoning.retries, reasoning.failures) == (2, 0, {})
    assert reasoning.prompt_tokens > 0 and reasoning.completion_tokens > 0
    assert reasoning.latency_p50_ms is not None
    assert llm.usage.usage("planning").requests == 1


# --------------------------------------------------------------------------------------
# Faults: each recovers when it is transient, and ends typed when it persists
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retry_kind"),
    [
        ("rate_limit", "rate_limited"),
        ("server_error", "server_error"),
        ("truncated", "bad_response"),
        ("cut", "connection_error"),
        ("drop", "connection_error"),
        ("slow", "timeout"),
    ],
)
def test_transient_fault_is_retried_and_the_call_succeeds(fault: str, retry_kind: str) -> None:
    config = FakeServerConfig(faults=FaultPlan(per_request=[fault, fault]), retry_after_s=0.05, slow_s=10)

    async def main(s: FakeOpenAIServer) -> LLMClient:
        # Only the slow fault needs a short timeout; elsewhere a generous one keeps a busy
        # machine from adding timeouts of its own to the retry count.
        async with LLMClient(cfg(s, timeout_s=0.8 if fault == "slow" else 10)) as llm:
            assert isinstance(await llm.complete(msgs("q"), Verdict, stage="s"), Verdict)
            return llm

    with FakeOpenAIServer(config, mode="thread") as s:
        t0 = time.monotonic()
        llm = run(main(s))
        elapsed = time.monotonic() - t0
        assert s.stats().requests == 3
    usage = llm.usage.stage_usage("s")
    assert usage.retries_by_kind == {retry_kind: 2}
    assert usage.requests == 3 and usage.calls == 1
    assert elapsed < 8  # a slow reply is abandoned at the 0.8 s timeout, not awaited for 10 s


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("rate_limit", LLMHTTPError),
        ("server_error", LLMHTTPError),
        ("truncated", LLMHTTPError),
        ("cut", LLMConnectionError),
        ("drop", LLMConnectionError),
        ("slow", LLMTimeout),
    ],
)
def test_persistent_fault_ends_as_a_typed_error_after_max_retries(fault: str, error_type: type) -> None:
    config = FakeServerConfig(retry_after_s=0.01, slow_s=10)

    async def main(s: FakeOpenAIServer) -> LLMClient:
        async with LLMClient(cfg(s, timeout_s=0.3 if fault == "slow" else 10, max_retries=2)) as llm:
            with pytest.raises(error_type) as info:
                await llm.complete(msgs(f"q [[fault:{fault}]]"), Verdict, stage="s")
            assert "gave up after 3 attempts" in str(info.value)
            return llm

    with FakeOpenAIServer(config, mode="thread") as s:
        llm = run(main(s))
        assert s.stats().requests == 3
    assert llm.usage.usage("s").failures == {error_type.kind: 1}


def test_invalid_output_is_retried_then_raised_with_the_raw_reply() -> None:
    async def main(s: FakeOpenAIServer) -> LLMClient:
        async with LLMClient(cfg(s, max_invalid_retries=2)) as llm:
            with pytest.raises(LLMInvalidOutput) as info:
                await llm.complete(msgs("[[fault:garbage]]"), Verdict, stage="s")
            assert info.value.raw_output == "I cannot answer that in JSON, sorry."
            assert info.value.kind == "invalid_output"
            return llm

    with FakeOpenAIServer(mode="thread") as s:
        llm = run(main(s))
        assert s.stats().requests == 3
    assert llm.usage.stage_usage("s").retries_by_kind == {"invalid_output": 2}


def test_invalid_output_then_valid_output_succeeds() -> None:
    config = FakeServerConfig(faults=FaultPlan(per_request=["garbage"]))

    async def main(s: FakeOpenAIServer) -> Verdict:
        async with LLMClient(cfg(s)) as llm:
            return await llm.complete(msgs("q"), Verdict)

    with FakeOpenAIServer(config, mode="thread") as s:
        assert isinstance(run(main(s)), Verdict)


def test_retry_after_is_honoured_before_the_next_attempt() -> None:
    config = FakeServerConfig(faults=FaultPlan(per_request=["rate_limit"]), retry_after_s=0.6)

    async def main(s: FakeOpenAIServer) -> float:
        async with LLMClient(cfg(s)) as llm:
            t0 = time.monotonic()
            await llm.complete(msgs("q"))
            return time.monotonic() - t0

    with FakeOpenAIServer(config, mode="thread") as s:
        assert run(main(s)) >= 0.6


def test_429_shrinks_the_adaptive_concurrency_window() -> None:
    config = FakeServerConfig(faults=FaultPlan(per_request=["rate_limit"]), retry_after_s=0.01)

    async def main(s: FakeOpenAIServer) -> int:
        limiter = LocalLimiter(max_concurrency=8)
        async with LLMClient(cfg(s), limiter=limiter) as llm:
            await llm.complete(msgs("q"))
        return limiter.limit

    with FakeOpenAIServer(config, mode="thread") as s:
        assert run(main(s)) < 8


def test_non_retryable_status_fails_at_once() -> None:
    async def main(s: FakeOpenAIServer) -> None:
        # The fake serves /v1/...; a base URL without /v1 gets 404s.
        async with LLMClient(cfg(s, base_url=s.base_url.removesuffix("/v1"), model="m")) as llm:
            with pytest.raises(LLMHTTPError, match="HTTP 404"):
                await llm.complete(msgs("q"))

    with FakeOpenAIServer(mode="thread") as s:
        run(main(s))
        assert s.stats().requests == 0


def test_an_endpoint_refusing_every_connection_stops_the_run_instead_of_filling_the_ledger() -> None:
    async def main() -> None:
        config = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_base_s=0.01)
        async with LLMClient(config) as llm:
            with pytest.raises(EndpointFailure) as info:
                await llm.complete(msgs("q"))
        # Not an LLMError: a stage cannot turn it into a failed-ledger row by accident.
        assert not isinstance(info.value, LLMError)
        assert str(info.value) == (
            "llm: http://127.0.0.1:9/v1 unreachable: connection refused (gave up after 2 attempts)"
        )

    run(main())


def test_a_connection_dropped_by_the_server_stays_a_row_level_connection_error() -> None:
    async def main(s: FakeOpenAIServer) -> None:
        async with LLMClient(cfg(s, model="m", max_retries=1)) as llm:
            with pytest.raises(LLMConnectionError):
                await llm.complete(msgs("[[fault:drop]]"))

    with FakeOpenAIServer(mode="thread") as s:
        run(main(s))


def test_the_timeout_fires_even_when_the_server_never_answers() -> None:
    # A raw socket that accepts and never replies: only our own deadline can end the wait.
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]

    async def main() -> float:
        config = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.3, max_retries=1,
                           backoff_base_s=0.01)  # fmt: skip
        async with LLMClient(config) as llm:
            t0 = time.monotonic()
            with pytest.raises(LLMTimeout):
                await llm.complete(msgs("q"))
            return time.monotonic() - t0

    try:
        assert run(main()) < 2.0
    finally:
        sock.close()


def test_fault_storm_every_request_ends_typed_none_hangs_none_lost_ceiling_holds() -> None:
    """The acceptance test: mixed faults at a rate, 300 requests, ceiling 8, child-process server."""
    rates = {"rate_limit": 0.08, "server_error": 0.08, "slow": 0.04, "truncated": 0.04, "cut": 0.04,
             "drop": 0.04, "garbage": 0.04}  # fmt: skip
    config = FakeServerConfig(
        latency_s=0.005, faults=FaultPlan(rates=rates), retry_after_s=0.05, slow_s=5, seed=7
    )
    n = 300

    async def main(s: FakeOpenAIServer) -> tuple[dict[int, Any], LLMClient]:
        outcomes: dict[int, Any] = {}
        async with LLMClient(cfg(s, timeout_s=0.5, max_retries=2, max_invalid_retries=1)) as llm:
            requests = (
                CompletionRequest(messages=msgs(f"q{i}"), schema=Verdict, stage="s", tag=i) for i in range(n)
            )
            async for outcome in llm.complete_many(requests):
                assert outcome.request.tag not in outcomes
                outcomes[outcome.request.tag] = outcome.value if outcome.ok else outcome.error
        return outcomes, llm

    with FakeOpenAIServer(config) as s:
        outcomes, llm = asyncio.run(asyncio.wait_for(main(s), 120))  # none hangs
        stats = s.stats()
    assert sorted(outcomes) == list(range(n))  # none lost
    kinds = {type(v).__name__ for v in outcomes.values()}
    assert kinds <= {"Verdict", "LLMHTTPError", "LLMConnectionError", "LLMTimeout", "LLMInvalidOutput"}
    assert sum(isinstance(v, Verdict) for v in outcomes.values()) > n * 0.8
    assert stats.peak_in_flight <= 8
    assert sum(stats.faults.values()) > 0
    usage = llm.usage.stage_usage("s")
    assert usage.calls == n
    # Every request the server saw was counted by the client; on a loaded machine a few
    # attempts time out before the server reads them, so the client may count more.
    assert usage.requests >= stats.requests
    assert sum(usage.failures.values()) == sum(not isinstance(v, Verdict) for v in outcomes.values())


# --------------------------------------------------------------------------------------
# Secrets, lifecycle
# --------------------------------------------------------------------------------------


def test_api_key_comes_from_the_named_env_var_and_never_appears_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-test-SECRET-0123456789"
    seen_auth: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen_auth.append(auth)
        return web.json_response({"error": {"message": f"Incorrect API key provided: {auth}"}}, status=401)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            config = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env="MY_LLM_KEY")
            llm = LLMClient(config)
            assert secret not in repr(llm)
            with pytest.raises(LLMHTTPError) as info:
                await llm.complete(msgs("q"))
            await llm.aclose()
            assert "HTTP 401" in str(info.value)
            assert secret not in str(info.value) and secret not in (info.value.raw_output or "")
        finally:
            await runner.cleanup()

    monkeypatch.setenv("MY_LLM_KEY", secret)
    run(main())
    assert seen_auth == [f"Bearer {secret}"]


def test_cancelled_call_returns_its_permit(server: FakeOpenAIServer) -> None:
    async def main() -> int:
        limiter = LocalLimiter(max_concurrency=2)
        async with LLMClient(cfg(server, model="m"), limiter=limiter) as llm:
            task = asyncio.create_task(llm.complete(msgs("q [[fault:slow]]")))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return limiter.in_flight

    assert run(main()) == 0


def test_one_client_survives_being_used_from_two_event_loops(server: FakeOpenAIServer) -> None:
    llm = LLMClient(cfg(server))

    async def once() -> str:
        return await llm.complete(msgs("hi"))

    assert asyncio.run(once()) == asyncio.run(once())
    asyncio.run(llm.aclose())


def test_parse_retry_after_reads_seconds_milliseconds_and_dates() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert parse_retry_after({}) is None
    assert 0 <= parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 0.0  # past date
    assert parse_retry_after({"Retry-After": "soon"}) is None


# --------------------------------------------------------------------------------------
# Bounded fan-out
# --------------------------------------------------------------------------------------


def test_complete_bounded_never_holds_more_than_window_tasks() -> None:
    n, window = 20_000, 32

    async def main() -> tuple[int, int]:
        peak = 0

        def reply(messages: list[dict[str, Any]], schema: Any) -> str:
            nonlocal peak
            peak = max(peak, len(asyncio.all_tasks()))
            return "ok"

        llm = ScriptedLLM(reply)
        requests = (CompletionRequest(messages=msgs(str(i))) for i in range(n))
        done = 0
        async for outcome in complete_bounded(llm, requests, window=window):
            done += outcome.ok
        return done, peak

    done, peak = asyncio.run(main())
    assert done == n
    assert peak <= window + 1  # the window, plus the main task


def test_bounded_as_completed_propagates_bugs_and_cancels_the_rest() -> None:
    started: list[int] = []
    cancelled = threading.Event()

    async def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise RuntimeError("bug")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return i

    async def main() -> None:
        async for _ in bounded_as_completed(range(100), work, window=5):
            pass

    with pytest.raises(RuntimeError, match="bug"):
        asyncio.run(main())
    assert len(started) <= 6 and cancelled.is_set()


def test_default_limiter_caps_concurrency_for_the_embedded_endpoint() -> None:
    from synth.llm.embedded import EMBEDDED_MAX_CONCURRENCY

    llm = LLMClient(LLMConfig(base_url="embedded", max_concurrency=64))
    assert isinstance(llm.limiter, LocalLimiter) and llm.limiter.limit == EMBEDDED_MAX_CONCURRENCY
    assert LLMClient(LLMConfig(base_url="http://h/v1", max_concurrency=64)).limiter.limit == 64  # type: ignore[attr-defined]
