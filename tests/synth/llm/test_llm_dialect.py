"""Provider dialects: what the client sends, what it accepts back from thinking models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from synth.llm.base import LLMHTTPError
from synth.llm.client import LLMClient
from synth.llm.config import LLMConfig, is_openai_reasoning_model
from synth.llm.dialect import (
    estimate_reasoning_tokens,
    refused_parameter_hint,
    reported_reasoning_tokens,
    request_body,
    split_think_prefix,
)
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

MSGS = [{"role": "user", "content": "hello"}]


class Answer(BaseModel):
    text: str


def body(cfg: LLMConfig, model: str = "m", temperature: float | None = 0.5) -> dict[str, Any]:
    return request_body(cfg, model=model, messages=MSGS, max_tokens=64, temperature=temperature)


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True), ("gpt-5.1", True),
     ("gpt-5-mini", True), ("gpt-4o", False), ("gpt-4.1-mini", False), ("openai/o3", False),
     ("Qwen/Qwen3-8B", False), ("omni", False)],
)  # fmt: skip
def test_openai_reasoning_models_are_recognised_by_their_bare_names(model: str, reasoning: bool) -> None:
    assert is_openai_reasoning_model(model) is reasoning


def test_auto_sends_max_completion_tokens_to_reasoning_models_and_an_override_wins() -> None:
    auto = LLMConfig()
    assert "max_completion_tokens" in body(auto, "o4-mini") and "max_tokens" not in body(auto, "o4-mini")
    assert body(auto, "gpt-4o")["max_tokens"] == 64
    assert "max_tokens" in body(LLMConfig(max_tokens_param="max_tokens"), "o4-mini")
    assert body(LLMConfig(max_tokens_param="max_completion_tokens"), "llama")["max_completion_tokens"] == 64


def test_optional_fields_are_sent_only_when_set_and_extra_body_is_merged() -> None:
    plain = body(LLMConfig(), temperature=None)
    assert set(plain) == {"model", "messages", "max_tokens"}  # temperature null: none sent
    full = body(
        LLMConfig(top_p=0.9, seed=3, reasoning_effort="low", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    )
    assert full["temperature"] == 0.5 and full["top_p"] == 0.9 and full["seed"] == 3
    assert full["reasoning_effort"] == "low" and full["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("key", ["temperature", "max_tokens", "max_completion_tokens", "model", "stream", "response_format"])
def test_extra_body_cannot_set_what_a_named_setting_owns(key: str) -> None:
    with pytest.raises(ValidationError, match=f"'{key}' is set by"):
        LLMConfig(extra_body={key: 1})


def test_extra_headers_can_never_carry_the_key() -> None:
    with pytest.raises(ValidationError, match="api_key_env"):
        LLMConfig(extra_headers={"authorization": "Bearer sk-secret"})
    assert LLMConfig(extra_headers={"X-Title": "agentcpt"}).extra_headers == {"X-Title": "agentcpt"}


@pytest.mark.parametrize(
    ("content", "answer", "reasoning"),
    [
        ('<think>\nweigh it\n</think>\n\n{"text": "a"}', '{"text": "a"}', "weigh it"),
        ('  <think></think>{"text": "a"}', '{"text": "a"}', ""),
        ('weigh it</think>\n{"text": "a"}', '{"text": "a"}', "weigh it"),  # R1 distills drop the opening tag
        ("<think>cut by the cap before it clo", "", "cut by the cap before it clo"),
        ('{"text": "<think>x</think>"}', '{"text": "<think>x</think>"}', ""),  # not a prefix
        ('{"text": "a"}', '{"text": "a"}', ""),
    ],
)
def test_a_leading_think_block_is_split_from_the_answer(content: str, answer: str, reasoning: str) -> None:
    split = split_think_prefix(content)
    assert (split.content, split.reasoning) == (answer, reasoning)


def test_reasoning_tokens_are_the_reported_ones_or_the_reasoning_share_of_the_reply() -> None:
    assert reported_reasoning_tokens({"completion_tokens_details": {"reasoning_tokens": 192}}) == 192
    assert reported_reasoning_tokens({"completion_tokens": 5}) is None
    assert estimate_reasoning_tokens("x" * 300, "y" * 100, completion_tokens=100) == 75
    assert estimate_reasoning_tokens("", "y" * 100, completion_tokens=100) == 0


def test_a_400_naming_a_sent_parameter_says_which_setting_fixes_it() -> None:
    sent = {"max_tokens": 5, "temperature": 0.8}
    openai = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    assert refused_parameter_hint(openai, sent, "llm") == "set llm.max_tokens_param: max_completion_tokens"
    temp = "Unsupported value: 'temperature' does not support 0.8 with this model."
    assert refused_parameter_hint(temp, sent, "judge_llm") == "set judge_llm.temperature: null to send none"
    assert refused_parameter_hint("context length exceeded", sent, "llm") is None


# --------------------------------------------------------------------------------------
# Against the fake endpoint
# --------------------------------------------------------------------------------------


def ask(server: FakeOpenAIServer, schema: type[BaseModel] | None = None, **settings: Any) -> tuple[Any, LLMClient]:
    async def main() -> tuple[Any, LLMClient]:
        config = LLMConfig(**{"base_url": server.base_url, "model": "m", "backoff_base_s": 0.01, **settings})
        async with LLMClient(config) as llm:
            return await llm.complete(MSGS, schema, stage="s"), llm

    return asyncio.run(main())


def test_a_server_refusing_max_tokens_fails_naming_the_fix_and_max_completion_tokens_works() -> None:
    with FakeOpenAIServer(FakeServerConfig(reject_params=["max_tokens"]), mode="thread") as server:
        with pytest.raises(LLMHTTPError) as info:
            ask(server, Answer)
        assert info.value.status == 400 and "'max_tokens'" in info.value.server_message
        assert "(set llm.max_tokens_param: max_completion_tokens)" in str(info.value)
        reply, _ = ask(server, Answer, max_tokens_param="max_completion_tokens")
        assert isinstance(reply, Answer)
        assert server.stats().refused == {"400": 1}


def test_temperature_null_sends_none_to_a_server_that_refuses_one() -> None:
    with FakeOpenAIServer(FakeServerConfig(reject_params=["temperature"]), mode="thread") as server:
        with pytest.raises(LLMHTTPError):
            ask(server, Answer)
        reply, _ = ask(server, Answer, temperature=None)
        assert isinstance(reply, Answer)


@pytest.mark.parametrize("style", ["think_prefix", "reasoning_content"])
def test_a_thinking_models_reasoning_is_stripped_before_parsing_and_its_tokens_counted(style: str) -> None:
    with FakeOpenAIServer(FakeServerConfig(reasoning=style), mode="thread") as server:  # type: ignore[arg-type]
        reply, llm = ask(server, Answer)
    assert isinstance(reply, Answer)
    usage = llm.usage.stage_usage("s")
    assert 0 < usage.reasoning_tokens < usage.completion_tokens
    assert llm.usage.usage("s").reasoning_tokens == usage.reasoning_tokens  # reaches progress/status


def test_a_text_call_keeps_the_think_block_for_the_stage_to_read() -> None:
    # Rollouts ask for ReAct text whose <think> block is the agent's thought.
    with FakeOpenAIServer(FakeServerConfig(reasoning="think_prefix"), mode="thread") as server:
        reply, _ = ask(server)
    assert reply.startswith("<think>") and "</think>" in reply
