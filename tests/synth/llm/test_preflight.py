"""The preflight: an endpoint proves it works, or the run fails with one line saying why."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from synth.llm.base import EndpointFailure
from synth.llm.config import LLMConfig
from synth.llm.preflight import EndpointCheck, check_endpoint, distinct_endpoints
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig, messages_digest


def check(url: str, name: str = "llm", api_key: str | None = None, **settings: Any) -> EndpointCheck:
    config = LLMConfig(**{"base_url": url, "model": "fake-model", **settings})
    return asyncio.run(check_endpoint(name, config, api_key=api_key))


def failure(url: str, **kw: Any) -> str:
    with pytest.raises(EndpointFailure) as info:
        check(url, **kw)
    return str(info.value)


def test_a_working_endpoint_passes_with_one_model_list_and_one_tiny_completion() -> None:
    with FakeOpenAIServer(mode="thread") as server:
        result = check(server.base_url)
        stats = server.stats()
    assert (result.model, result.served) == ("fake-model", ["fake-model"])
    assert (stats.models_requests, stats.requests) == (1, 1)
    assert result.describe().startswith(f"llm: {server.base_url} ok (model fake-model, 1 models listed, ")


def test_a_bad_key_fails_naming_the_endpoint_the_status_and_the_servers_words() -> None:
    with FakeOpenAIServer(FakeServerConfig(api_key="sk-right"), mode="thread") as server:
        message = failure(server.base_url, api_key="sk-wrong")
        assert server.stats().requests == 0  # stopped at GET /models
    assert message == f"llm: {server.base_url} answered 401: Incorrect API key provided"


def test_a_model_the_server_does_not_serve_is_refused_with_what_it_does_serve() -> None:
    with FakeOpenAIServer(mode="thread") as server:
        message = failure(server.base_url, model="gpt-4o", name="judge_llm")
    assert message == f"judge_llm: {server.base_url} does not serve model 'gpt-4o'; it serves: fake-model"


def test_the_test_completion_has_the_stages_request_shape_so_a_refused_max_tokens_shows_up() -> None:
    with FakeOpenAIServer(FakeServerConfig(reject_params=["max_tokens"]), mode="thread") as server:
        message = failure(server.base_url)
        fixed = check(server.base_url, max_tokens_param="max_completion_tokens")
    assert message.startswith(f"llm: {server.base_url} answered 400: Unsupported parameter: 'max_tokens'")
    assert message.endswith("(set llm.max_tokens_param: max_completion_tokens)")
    assert fixed.model == "fake-model"


def test_a_closed_port_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    t0 = time.monotonic()
    message = failure(f"http://127.0.0.1:{port}/v1")
    assert message == f"llm: http://127.0.0.1:{port}/v1 unreachable: connection refused"
    assert time.monotonic() - t0 < 2


def test_an_unparseable_answer_still_passes_it_is_the_endpoint_that_is_checked() -> None:
    with FakeOpenAIServer(FakeServerConfig(responder="testing.fake_llm_server:echo_responder"), mode="thread") as server:
        assert check(server.base_url).model == "fake-model"


def test_model_null_takes_the_served_model_for_the_embedded_endpoint() -> None:
    with FakeOpenAIServer(FakeServerConfig(model="SmolLM2-135M-Instruct"), mode="thread") as server:
        result = check(server.base_url, model=None)
    assert result.model == "SmolLM2-135M-Instruct"


def test_the_preflight_request_is_recognisable_in_a_request_log(tmp_path: Any) -> None:
    log = tmp_path / "requests.jsonl"
    with FakeOpenAIServer(FakeServerConfig(request_log=str(log)), mode="thread") as server:
        check(server.base_url)
    from synth.llm.preflight import PREFLIGHT_MESSAGES

    assert messages_digest(PREFLIGHT_MESSAGES) in log.read_text()


def test_a_judge_block_equal_to_the_llm_block_is_checked_once() -> None:
    a, b = LLMConfig(base_url="http://a/v1", model="m"), LLMConfig(base_url="http://b/v1", model="m")
    assert [n for n, _ in distinct_endpoints(a, None)] == ["llm"]
    assert [n for n, _ in distinct_endpoints(a, a.model_copy())] == ["llm"]
    assert [n for n, _ in distinct_endpoints(a, b)] == ["llm", "judge_llm"]
