"""The embedded endpoint's server: transformers serve with response_format enforced.

A tiny random-weight Llama with SmolLM2's tokenizer stands in for the model: it has no idea
what JSON is, so every structured reply that validates does so because of the constraint,
and its free-text replies show that the constraint stays on the rows that asked for it. The
tests go through the real client (``LLMClient``, no invalid-output retries) and the real app
(transformers' own handlers and batch loop), so a transformers upgrade that moves what
``synth.llm.constrained_server`` extends fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from synth.llm.base import LLMInvalidOutput
from synth.llm.client import LLMClient
from synth.llm.config import LLMConfig
from synth.llm.constrained_server import build_app
from synth.llm.embedded import EmbeddedEndpoint, served_models


class Verdict(BaseModel):
    verdict: Literal["correct", "incorrect"]
    confidence: int = Field(ge=0, le=9)
    note: str = Field(max_length=6)


class Checks(BaseModel):
    checks: list[Verdict] = Field(min_length=1, max_length=2)
    done: bool


MESSAGES = [{"role": "user", "content": "Judge the answer. Reply in JSON."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app: object) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while served_models(url, timeout_s=1.0) is None:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.state.generation_state.shutdown()  # type: ignore[attr-defined]


@pytest.fixture(params=["continuous-batching", "batched", "sequential"])
def server_url(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[str]:
    # Continuous batching: 64 tokens a forward, so prompts longer than that are prefilled in
    # chunks. Batched: up to 8 concurrent requests decoded together (the embedded endpoint's
    # mode). Sequential: one request at a time through the same manager.
    app = build_app(
        str(tiny_model_dir),
        continuous_batching=request.param == "continuous-batching",
        cb_num_blocks=16,
        cb_max_batch_tokens=64,
        batch_size=8 if request.param == "batched" else 1,
    )
    yield from start_server(app)


def client_config(url: str, max_tokens: int = 64) -> LLMConfig:
    models = served_models(url)
    assert models
    return LLMConfig(
        base_url=url, model=models[0], api_key_env="", max_tokens=max_tokens, temperature=1.0,
        max_retries=0, max_invalid_retries=0, max_concurrency=8, timeout_s=120,
    )  # fmt: skip


def test_every_structured_reply_validates_and_free_text_next_to_it_stays_free(server_url: str) -> None:
    async def main() -> tuple[list[Verdict | Checks], list[str]]:
        async with LLMClient(client_config(server_url, max_tokens=96)) as llm:
            structured = [llm.complete(MESSAGES, Verdict, stage="t") for _ in range(3)]
            structured += [llm.complete(MESSAGES, Checks, stage="t")]
            free = [llm.complete(MESSAGES, stage="t", max_tokens=24) for _ in range(2)]
            results = await asyncio.gather(*structured, *free)  # one batch, when batching is on
        return list(results[:4]), list(results[4:])

    structured, free = asyncio.run(main())
    assert [type(r) for r in structured] == [Verdict, Verdict, Verdict, Checks]
    for text in free:  # a random model writing free text: no JSON object in it
        assert isinstance(text, str) and text.strip()
        with pytest.raises(ValueError):
            Verdict.model_validate_json(text)


def test_without_a_response_format_the_random_model_is_not_json(server_url: str) -> None:
    # The control: the same client asking for Verdict *without* sending the schema gets junk,
    # so the validity above comes from the constraint.
    async def main() -> None:
        async with LLMClient(client_config(server_url)) as llm:
            text = await llm.complete(MESSAGES, stage="t", max_tokens=24)
            Verdict.model_validate_json(text)

    with pytest.raises(ValueError):
        asyncio.run(main())


def test_json_object_format_gives_a_json_object(server_url: str) -> None:
    body = {
        "model": served_models(server_url)[0],  # type: ignore[index]
        "messages": MESSAGES,
        "max_tokens": 48,
        "response_format": {"type": "json_object"},
    }
    reply = post(server_url, body)
    choice = reply["choices"][0]
    # A random model may fill the object until the cap; what it wrote must still be JSON so far.
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_an_unenforceable_schema_is_refused_with_400_naming_the_problem(server_url: str) -> None:
    body = {
        "model": served_models(server_url)[0],  # type: ignore[index]
        "messages": MESSAGES,
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
    }
    with pytest.raises(urllib.error.HTTPError) as err:
        post(server_url, body)
    assert err.value.code == 400
    assert "strin" in err.value.read().decode()


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


@pytest.mark.slow
def test_the_embedded_launcher_starts_the_constrained_server(tiny_model_dir: Path) -> None:
    """``EmbeddedEndpoint`` runs ``python -m synth.llm.constrained_server`` (its warm-up asks for JSON)."""
    with EmbeddedEndpoint(tiny_model_dir, port=free_port(), startup_timeout_s=240) as endpoint:
        assert endpoint.started_here

        async def main() -> Verdict:
            async with LLMClient(client_config(endpoint.base_url)) as llm:
                return await llm.complete(MESSAGES, Verdict, stage="t")

        assert isinstance(asyncio.run(main()), Verdict)


@pytest.mark.slow
def test_sigterm_stops_the_server_in_seconds_while_requests_are_still_decoding(tiny_model_dir: Path) -> None:
    """A stopped or killed run sends SIGTERM (the launcher's parent-death signal): the server must
    go within seconds, not after decoding every request in flight and queued for clients long gone."""
    with EmbeddedEndpoint(tiny_model_dir, port=free_port(), startup_timeout_s=240) as endpoint:
        proc = endpoint._proc
        assert proc is not None
        body = {
            "messages": MESSAGES,
            "max_tokens": 20000,
            "temperature": 0,
        }  # the random model never stops early
        clients = [
            threading.Thread(target=_post_quietly, args=(endpoint.base_url, body), daemon=True)
            for _ in range(12)
        ]
        for client in clients:
            client.start()
        time.sleep(3)  # the first batch is decoding, the rest are queued
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert time.monotonic() - started < 15


def _post_quietly(url: str, body: dict[str, object]) -> None:
    with contextlib.suppress(OSError):  # the server goes away under it
        post(url, body)


def test_a_reply_that_cannot_validate_is_still_reported_as_invalid(server_url: str) -> None:
    # The constraint covers JSON Schema; a pydantic rule the schema cannot express (here a
    # validator) is still checked by the client, and a miss is an ordinary invalid_output.
    from pydantic import field_validator

    class Never(Verdict):
        @field_validator("note")
        @classmethod
        def refuse(cls, v: str) -> str:
            raise ValueError("never valid")

    async def main() -> None:
        async with LLMClient(client_config(server_url)) as llm:
            await llm.complete(MESSAGES, Never, stage="t")

    with pytest.raises(LLMInvalidOutput):
        asyncio.run(main())
