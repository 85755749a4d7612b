"""The fake OpenAI-compatible server: schema-valid replies, counters, fault selection, lifecycle."""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
import uuid
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from synth.llm.client import response_format
from testing.fake_llm_server import (
    FakeOpenAIServer,
    FakeServerConfig,
    FaultPlan,
    instruction_hints,
    schema_responder,
)


class Action(BaseModel):
    tool: Literal["search", "visit", "python"]
    arguments: dict[str, str]


class Step(BaseModel):
    thought: str = Field(min_length=20, max_length=60)
    action: Action | None = None


class Options(BaseModel):
    kind: Literal["alternatives"] = "alternatives"
    steps: list[Step] = Field(min_length=3, max_length=5)
    score: float = Field(ge=0.5, le=0.75)
    rank: int = Field(gt=0, lt=3)
    ratio: float = Field(multiple_of=0.25, ge=1, le=2)
    tags: list[Literal["a", "b"]] = Field(min_length=1)
    fallback: Action | str
    note: str | None = None
    pair: tuple[int, str]


class Typed(BaseModel):
    id: uuid.UUID
    when: datetime.datetime
    day: datetime.date
    wait: datetime.timedelta
    extra: dict[str, int] = Field(min_length=1)


class Tree(BaseModel):
    label: str
    children: list[Tree] = Field(default_factory=list)


def body_for(schema: type[BaseModel], text: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "response_format": response_format(schema)}


@pytest.mark.parametrize("schema", [Action, Step, Options, Typed, Tree])
def test_schema_responder_returns_a_valid_instance(schema: type[BaseModel]) -> None:
    for i in range(20):
        schema.model_validate(schema_responder(body_for(schema, f"question {i}")))


def test_schema_responder_honours_array_min_length_and_required_fields() -> None:
    value = schema_responder(body_for(Options))
    assert 3 <= len(value["steps"]) <= 5
    assert set(Options.model_json_schema()["required"]) <= set(value)


def test_schema_responder_is_deterministic_per_messages_and_varies_across_them() -> None:
    a = schema_responder(body_for(Options, "x"))
    assert a == schema_responder(body_for(Options, "x"))
    assert any(schema_responder(body_for(Options, f"y{i}")) != a for i in range(5))


def test_schema_responder_without_a_schema_returns_short_text() -> None:
    reply = schema_responder({"messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(reply, str) and 0 < len(reply) < 200


class Thought(BaseModel):
    thought: str


def test_asked_for_a_length_the_responder_grounds_its_text_in_the_key_terms_the_prompt_lists() -> None:
    prompt = (
        "Question: Which university hosted the Stillmark ricin study?\n\nSteps so far:\n(a step)\n\n"
        "Key terms of the tool responses so far: Dorpat, Tartu, lectin, 1888\n\n"
        "Propose a thought. Each thought is between 200 and 300 words long."
    )
    hints = instruction_hints([{"role": "user", "content": prompt}])
    assert hints is not None and hints.terms == ["Dorpat", "Tartu", "lectin", "1888"]
    assert "Dorpat" not in hints.words and "Key" not in hints.words  # the list is not read as prose
    thought = schema_responder(body_for(Thought, prompt))["thought"]
    words = thought.split()
    assert 200 <= len(words) <= 300 and {"Dorpat", "Tartu", "lectin"} & set(words)
    # Like an agent's, its words repeat: far fewer distinct words than words (Heaps' law).
    assert len(set(words)) < 0.7 * len(words)


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_process_server_answers_models_and_chat_and_counts_requests() -> None:
    with FakeOpenAIServer(FakeServerConfig(model="m1")) as server:
        with urllib.request.urlopen(server.base_url + "/models", timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "m1"
        status, _, raw = post(server.base_url + "/chat/completions", body_for(Action))
        assert status == 200
        reply = json.loads(raw)
        Action.model_validate_json(reply["choices"][0]["message"]["content"])
        assert reply["usage"]["completion_tokens"] > 0
        stats = server.stats()
        assert (stats.requests, stats.completed, stats.in_flight, stats.peak_in_flight) == (1, 1, 0, 1)
        server.reset()
        assert server.stats().requests == 0


def test_fault_marker_beats_schedule_beats_per_request() -> None:
    plan = FaultPlan(schedule=["server_error"], per_request=["rate_limit", None])
    with FakeOpenAIServer(FakeServerConfig(faults=plan, retry_after_s=2), mode="thread") as server:
        url = server.base_url + "/chat/completions"
        assert post(url, body_for(Action, "a"))[0] == 500  # schedule[0]
        status, headers, _ = post(url, body_for(Action, "b"))  # first attempt of "b"
        assert status == 429 and headers["Retry-After"] == "2"
        assert post(url, body_for(Action, "b"))[0] == 200  # second attempt of "b"
        assert post(url, body_for(Action, "c [[fault:server_error]]"))[0] == 500
        assert server.stats().faults == {"server_error": 2, "rate_limit": 1}


def test_thread_mode_accepts_a_responder_callable() -> None:
    with FakeOpenAIServer(mode="thread", responder=lambda body: {"echo": len(body["messages"])}) as server:
        _, _, raw = post(server.base_url + "/chat/completions", body_for(Action))
        assert json.loads(json.loads(raw)["choices"][0]["message"]["content"]) == {"echo": 1}


def test_responder_callable_is_refused_in_process_mode() -> None:
    with pytest.raises(ValueError, match="thread"):
        FakeOpenAIServer(responder=lambda body: "x")


def test_stopping_the_process_server_frees_its_port() -> None:
    server = FakeOpenAIServer().start()
    url = server.base_url + "/models"
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_a_bad_responder_makes_start_fail_with_the_childs_error() -> None:
    with pytest.raises(RuntimeError, match="(?s)did not start.*no_such_module"):
        FakeOpenAIServer(FakeServerConfig(responder="no_such_module:f")).start()


def shouting_responder(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"]).upper()


def test_a_responder_defined_in_a_test_module_works_in_process_mode() -> None:
    config = FakeServerConfig(responder=f"{__name__}:shouting_responder")
    with FakeOpenAIServer(config) as server:
        _, _, raw = post(
            server.base_url + "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
        )
    assert json.loads(raw)["choices"][0]["message"]["content"] == "HI"


# --------------------------------------------------------------------------------------
# Playing a misconfigured or failing provider
# --------------------------------------------------------------------------------------


def test_a_bad_key_gets_401_on_every_route_and_the_right_key_gets_answers() -> None:
    with FakeOpenAIServer(FakeServerConfig(api_key="sk-right"), mode="thread") as server:
        url = server.base_url + "/chat/completions"
        bad = urllib.request.Request(server.base_url + "/models", headers={"Authorization": "Bearer sk-no"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=10)
        assert info.value.code == 401
        assert post(url, body_for(Action))[0] == 401
        good = urllib.request.Request(
            url, data=json.dumps(body_for(Action)).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-right"},
        )  # fmt: skip
        with urllib.request.urlopen(good, timeout=10) as resp:
            assert resp.status == 200
        assert server.stats().refused == {"401": 2}


def test_a_rejected_parameter_gets_openais_400_naming_it() -> None:
    with FakeOpenAIServer(FakeServerConfig(reject_params=["max_tokens"]), mode="thread") as server:
        url = server.base_url + "/chat/completions"
        status, _, raw = post(url, {**body_for(Action), "max_tokens": 5})
        assert status == 400
        assert json.loads(raw)["error"]["message"] == (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        )
        assert post(url, {**body_for(Action), "max_completion_tokens": 5})[0] == 200


def test_a_server_told_to_die_exits_at_that_request_and_its_log_keeps_what_it_answered(tmp_path: Any) -> None:
    log = tmp_path / "answered.jsonl"
    server = FakeOpenAIServer(FakeServerConfig(die_after_requests=2, request_log=str(log))).start()
    try:
        url = server.base_url + "/chat/completions"
        assert post(url, body_for(Action, "a"))[0] == 200
        assert post(url, body_for(Action, "b"))[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            post(url, body_for(Action, "c"))
        assert server._proc is not None and server._proc.wait(timeout=10) == 3
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # nobody listens any more
            post(url, body_for(Action, "d"))
    finally:
        server.stop()
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == [200, 200]


def test_dying_is_refused_in_thread_mode_where_it_would_end_the_tests_process() -> None:
    with pytest.raises(ValueError, match="needs mode='process'"):
        FakeOpenAIServer(FakeServerConfig(die_after_requests=1), mode="thread")
