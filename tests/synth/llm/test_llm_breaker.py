"""Broken endpoints: the circuit breaker, the connect timeout, and truncated replies named as such."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from synth.llm.base import EndpointFailure, LLMHTTPError, LLMTruncated
from synth.llm.breaker import CircuitBreaker
from synth.llm.client import LLMClient
from synth.llm.config import BreakerConfig, LLMConfig
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

MSGS = [{"role": "user", "content": "hello"}]


class Answer(BaseModel):
    text: str


class Statements(BaseModel):
    statements: list[str]


def test_the_breaker_opens_after_n_failures_in_a_row_and_a_success_resets_the_run() -> None:
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=3, window_requests=1000))
    for _ in range(2):
        breaker.failure("answered 401: no")
    breaker.success()
    breaker.failure("answered 401: no")
    breaker.neutral()  # a 500 neither breaks nor resets the run of failures
    breaker.failure("answered 401: no")
    assert not breaker.is_open
    breaker.failure("answered 401: no")
    assert breaker.open_reason == "answered 401: no (3 failed requests in a row; circuit breaker)"


def test_the_breaker_opens_when_most_of_the_first_k_attempts_failed_even_with_successes_between() -> None:
    def run(pattern: str) -> CircuitBreaker:
        breaker = CircuitBreaker(BreakerConfig(consecutive_failures=100, window_requests=10, max_failure_share=0.5))
        for outcome in pattern:
            breaker.failure("answered 400: bad shape") if outcome == "F" else breaker.success()
        return breaker

    assert not run("FSFSFSFSFS").is_open  # 5 of 10: not above half
    assert not run("SSSSSSSSSS" + "FSFSFSFSFSFS").is_open  # failures after the first window are not judged by share
    assert run("FSFSFSFSFF").open_reason == (
        "answered 400: bad shape (6 of the first 10 requests failed so; circuit breaker)"
    )


def test_a_bad_key_mid_run_stops_the_client_after_n_refusals_then_sends_nothing_more() -> None:
    async def main(url: str) -> list[str]:
        config = LLMConfig(base_url=url, model="m", api_key_env="AGENTCPT_TEST_NO_SUCH_KEY",
                           breaker=BreakerConfig(consecutive_failures=5))  # fmt: skip
        outcomes = []
        async with LLMClient(config, api_key="sk-wrong") as llm:
            for _ in range(8):
                try:
                    await llm.complete(MSGS)
                except (LLMHTTPError, EndpointFailure) as err:
                    outcomes.append(type(err).__name__)
        return outcomes

    with FakeOpenAIServer(FakeServerConfig(api_key="sk-right"), mode="thread") as server:
        outcomes = asyncio.run(main(server.base_url))
        assert outcomes == ["LLMHTTPError"] * 4 + ["EndpointFailure"] * 4
        assert server.stats().requests == 5  # the open breaker sends nothing


def test_an_endpoint_failure_crosses_process_boundaries_whole() -> None:
    import pickle

    err = EndpointFailure("judge_llm", "http://h/v1", "answered 401: Incorrect API key provided")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "judge_llm: http://h/v1 answered 401: Incorrect API key provided"
    assert (back.endpoint, back.base_url, back.problem) == (err.endpoint, err.base_url, err.problem)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connect gets no answer, like an unroutable host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)  # takes the one slot
    try:
        yield port
    finally:
        filler.close()
        server.close()


def test_a_host_that_never_answers_fails_in_the_connect_timeout_not_the_read_timeout(unanswered_port: int) -> None:
    async def main() -> float:
        config = LLMConfig(base_url=f"http://127.0.0.1:{unanswered_port}/v1", model="m", connect_timeout_s=0.5,
                           timeout_s=60, max_retries=2, backoff_base_s=0.01)  # fmt: skip
        async with LLMClient(config) as llm:
            t0 = time.monotonic()
            with pytest.raises(EndpointFailure, match=r"unreachable: no connection within 0\.5 s \(connect timeout\)"):
                await llm.complete(MSGS)
            return time.monotonic() - t0

    assert asyncio.run(main()) < 5  # 3 attempts x 0.5 s, not 3 x 60 s


def ask(server: FakeOpenAIServer, schema: type[BaseModel] | None, max_tokens: int) -> tuple[Any, LLMClient]:
    async def main() -> tuple[Any, LLMClient]:
        config = LLMConfig(base_url=server.base_url, model="m", backoff_base_s=0.01, max_invalid_retries=2)
        async with LLMClient(config) as llm:
            try:
                return await llm.complete(MSGS, schema, stage="memory", max_tokens=max_tokens), llm
            except LLMTruncated as err:
                return err, llm

    return asyncio.run(main())


def test_a_structured_reply_cut_by_the_cap_is_a_truncated_failure_asked_once() -> None:
    config = FakeServerConfig(enforce_max_tokens=True, responder="tests.synth.llm.test_llm_breaker:long_statements")
    with FakeOpenAIServer(config, mode="thread") as server:
        err, llm = ask(server, Statements, max_tokens=8)
        assert server.stats().requests == 1  # the same cap would cut it again: no retry
    assert isinstance(err, LLMTruncated) and err.kind == "truncated"
    assert str(err) == "reply cut by the 8-token cap (finish_reason: length)"
    assert err.raw_output and err.raw_output.startswith('{"statements"')
    assert llm.usage.stage_usage("memory").failures == {"truncated": 1}


def test_a_reply_under_the_cap_parses_and_a_cut_text_reply_is_returned_to_the_stage() -> None:
    config = FakeServerConfig(enforce_max_tokens=True, responder="tests.synth.llm.test_llm_breaker:long_statements")
    with FakeOpenAIServer(config, mode="thread") as server:
        reply, _ = ask(server, Statements, max_tokens=200)
        assert isinstance(reply, Statements) and len(reply.statements) == 6
        text, _ = ask(server, None, max_tokens=8)
        assert isinstance(text, str) and len(text) == 32  # the stage parses what there is


def long_statements(body: dict[str, Any]) -> Any:
    return {"statements": [f"Statement number {i} about the entity." for i in range(6)]}
