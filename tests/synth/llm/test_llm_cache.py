"""The request cache: keys, atomic entries shared by processes, and no double payment on resume."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synth.llm.cache import CachedReply, RequestCache, request_key
from synth.llm.client import CompletionRequest, LLMClient
from synth.llm.config import LLMConfig
from testing.fake_llm_server import FakeOpenAIServer

MSGS = [{"role": "user", "content": "hello"}]
PARAMS = {"temperature": 0.0, "max_tokens": 16}


class Answer(BaseModel):
    text: str


def test_key_covers_model_messages_parameters_and_schema() -> None:
    base = request_key("m", MSGS, PARAMS, None)
    assert base == request_key("m", [dict(MSGS[0])], dict(reversed(PARAMS.items())), None)  # canonical
    variants = {
        request_key("other", MSGS, PARAMS, None),
        request_key("m", [{"role": "user", "content": "hello!"}], PARAMS, None),
        request_key("m", MSGS, {**PARAMS, "temperature": 0.5}, None),
        request_key("m", MSGS, PARAMS, Answer.model_json_schema()),
    }
    assert base not in variants and len(variants) == 4


def test_put_then_get_round_trips_and_missing_or_corrupt_entries_are_misses(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path)
    key = request_key("m", MSGS, PARAMS, None)
    assert cache.get(key) is None
    reply = CachedReply(content="hi", prompt_tokens=3, completion_tokens=1, model="m")
    cache.put(key, reply)
    assert cache.get(key) == reply and key in cache and len(cache) == 1
    cache.path(key).write_text("{not json")
    assert cache.get(key) is None
    assert not list(tmp_path.rglob("*.tmp"))  # no temp files left behind


WRITER = textwrap.dedent(
    """
    import sys
    from synth.llm.cache import CachedReply, RequestCache
    cache = RequestCache(sys.argv[1])
    content = sys.argv[2] * 50_000  # big enough that a torn write would show
    for i in range(100):
        cache.put("k" * 64, CachedReply(content=content, model="m"))
        got = cache.get("k" * 64)
        assert got is not None and len(got.content) == 50_000, "torn read"
    """
)


def test_many_processes_writing_and_reading_one_key_never_see_a_torn_entry(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), letter], stderr=subprocess.PIPE, text=True
        )
        for letter in "abcd"
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    entry = RequestCache(tmp_path).get("k" * 64)
    assert entry is not None and entry.content in {c * 50_000 for c in "abcd"}


def _run(url: str, cache_dir: Path, requests: list[CompletionRequest], temperature: float = 0.0) -> list[Any]:
    async def main() -> list[Any]:
        config = LLMConfig(base_url=url, model="m", temperature=temperature, backoff_base_s=0.01)
        async with LLMClient(config, cache=RequestCache(cache_dir)) as llm:
            out = [o async for o in llm.complete_many(requests)]
            return sorted(((o.request.tag, o.value if o.ok else o.error.kind) for o in out), key=str)

    return asyncio.run(main())


def test_a_resumed_run_never_pays_twice_for_an_answered_request(tmp_path: Path) -> None:
    requests = [
        CompletionRequest(messages=[{"role": "user", "content": f"q{i}"}], schema=Answer, tag=i)
        for i in range(20)
    ]
    with FakeOpenAIServer(mode="thread") as server:
        first = _run(server.base_url, tmp_path, requests)
        assert server.stats().requests == 20
        second = _run(server.base_url, tmp_path, requests)  # "resume": a fresh client, same cache
        assert server.stats().requests == 20
    assert first == second


def test_failed_requests_are_not_cached_and_are_asked_again(tmp_path: Path) -> None:
    bad = [
        CompletionRequest(messages=[{"role": "user", "content": "[[fault:garbage]]"}], schema=Answer, tag=0)
    ]
    with FakeOpenAIServer(mode="thread") as server:
        assert _run(server.base_url, tmp_path, bad) == [(0, "invalid_output")]
        sent = server.stats().requests
        _run(server.base_url, tmp_path, bad)
        assert server.stats().requests == 2 * sent
    assert len(RequestCache(tmp_path)) == 0


def test_identical_sampled_requests_are_separate_draws_and_replay_on_resume(tmp_path: Path) -> None:
    same = [CompletionRequest(messages=[{"role": "user", "content": "same"}], tag=i) for i in range(3)]
    with FakeOpenAIServer(mode="thread") as server:
        _run(server.base_url, tmp_path, same, temperature=0.8)
        assert server.stats().requests == 3  # three draws, not one answer copied thrice
        _run(server.base_url, tmp_path, same, temperature=0.8)
        assert server.stats().requests == 3  # the resume finds all three


def test_identical_greedy_requests_share_one_entry(tmp_path: Path) -> None:
    same = [CompletionRequest(messages=[{"role": "user", "content": "same"}], tag=i) for i in range(3)]
    with FakeOpenAIServer(mode="thread") as server:
        _run(server.base_url, tmp_path, same[:1], temperature=0.0)
        _run(server.base_url, tmp_path, same, temperature=0.0)
        assert server.stats().requests == 1
