"""The request cache: keys, segment files per unit, and no double payment on resume (even after kill -9)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synth.llm.cache import CachedReply, RequestCache, cache_scope, request_key
from synth.llm.client import CompletionRequest, LLMClient
from synth.llm.config import LLMConfig
from testing.fake_llm_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[3]
BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0.0,
    "max_tokens": 16,
}


class Answer(BaseModel):
    text: str


def test_key_covers_the_whole_body_and_the_extra_headers() -> None:
    base = request_key(BODY)
    assert base == request_key(dict(reversed(BODY.items())))  # canonical
    variants = {
        request_key({**BODY, "model": "other"}),
        request_key({**BODY, "messages": [{"role": "user", "content": "hello!"}]}),
        request_key({**BODY, "temperature": 0.5}),
        request_key(
            {**BODY, "response_format": {"type": "json_schema", "json_schema": Answer.model_json_schema()}}
        ),
        request_key(BODY, {"X-Tenant": "a"}),
        request_key(BODY, draw=1),
    }
    assert base not in variants and len(variants) == 6


def test_put_then_get_round_trips_and_missing_torn_or_corrupt_entries_are_misses(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path)
    key, other = request_key(BODY), request_key({**BODY, "temperature": 0.3})
    assert cache.get(key) is None
    reply = CachedReply(content="hi", prompt_tokens=3, completion_tokens=1, model="m")
    cache.put(key, reply)
    cache.put(other, reply)
    assert cache.get(key) == reply and key in cache and len(cache) == 2
    cache.close()
    (segment,) = cache.files()
    # A corrupt entry and a torn last line (a kill mid-write) read as misses; the rest survive.
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(lines[0].replace(b'"hi"', b'"hi') + lines[1][:-10])
    fresh = RequestCache(tmp_path)
    assert fresh.get(key) is None and fresh.get(other) is None
    fresh.put(key, reply)
    assert RequestCache(tmp_path).get(key) == reply


WRITER = textwrap.dedent(
    """
    import sys
    from synth.llm.cache import CachedReply, RequestCache
    content = sys.argv[2] * 50_000  # big enough that a torn write would show
    for i in range(20):
        cache = RequestCache(sys.argv[1])
        cache.put("k" * 64, CachedReply(content=content, model="m"))
        got = RequestCache(sys.argv[1]).get("k" * 64)
        assert got is not None and len(got.content) == 50_000, "torn read"
        cache.close()
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
        cache = RequestCache(cache_dir)
        async with LLMClient(config, cache=cache) as llm:
            out = [o async for o in llm.complete_many(requests)]
        cache.close()
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


# --------------------------------------------------------------------------------------
# Segments: files grow with units, not requests (issue 19)
# --------------------------------------------------------------------------------------


def test_cache_files_grow_with_units_not_requests(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path)
    for unit in ("00000", "00001", "00002"):
        with cache_scope("planning", unit):
            for i in range(200):
                cache.put(request_key({**BODY, "n": f"{unit}-{i}"}), CachedReply(content=f"r{i}", model="m"))
        cache.publish("planning", unit)
    files = cache.files()
    assert len(files) == 3 and all(f.name.endswith(".jsonl") for f in files)  # 600 requests, 3 files
    assert len(cache) == 600

    # A unit finds its own requests again (on any worker), and only its own.
    again = RequestCache(tmp_path)
    with cache_scope("planning", "00001"):
        assert again.get(request_key({**BODY, "n": "00001-7"})) == CachedReply(content="r7", model="m")
        assert again.get(request_key({**BODY, "n": "00000-7"})) is None


KILLED_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from pipelines.units import UnitTask
    from pipelines.worker import UnitWorker, WorkerJob
    from synth.records import QuestionRecord
    from synth.spec import parse_spec
    from testing.toy_stages import EchoPlanning

    run_dir, url, marker, hang = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "hang"

    class AnswersThenHangs(EchoPlanning):
        async def process(self, items, ctx):
            out = await super().process(items, ctx)
            if hang:  # every request answered, the unit not committed: the test kills us here
                Path(marker).write_text("answered")
                await asyncio.sleep(3600)
            return out

    spec = parse_spec({
        "name": "t", "llm": {"base_url": url, "model": "fake-model", "temperature": 0.0},
        "stages": {"questions": {}, "planning": {}},
    })
    job = WorkerJob(run_id="t", run_dir=run_dir, base_dir=run_dir, spec=spec,
                    stages={"planning": AnswersThenHangs(use_llm=True)})
    questions = [
        QuestionRecord(id=f"q{i}", run_id="t", style="factual", question=f"what is {i}?", answer="a",
                       entities=[f"n{i}"], knowledge_ids=[])
        for i in range(12)
    ]

    async def main():
        worker = UnitWorker(job, worker_name="w")
        result = await worker.run_unit(UnitTask("planning", "00000"), questions)
        await worker.close()
        print(result.records)

    asyncio.run(main())
    """
)


def test_a_unit_killed_between_its_requests_and_its_commit_pays_nothing_twice(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "answered"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FakeOpenAIServer(mode="thread") as server:
        victim = subprocess.Popen(
            [sys.executable, "-c", KILLED_WORKER, str(run_dir), server.base_url, str(marker), "hang"], env=env
        )
        try:
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert victim.poll() is None and time.monotonic() < deadline, "the unit never got its answers"
                time.sleep(0.05)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
        paid = server.stats().requests
        assert paid == 12 and not (run_dir / "manifest.d").exists()  # answered, not committed

        resumed = subprocess.run(
            [sys.executable, "-c", KILLED_WORKER, str(run_dir), server.base_url, str(marker), "commit"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert resumed.stdout.split() == ["12"]
        assert server.stats().requests == paid  # the resumed unit asked nothing again
    # The resumed attempt asked nothing, so wrote nothing; its commit sealed the killed one's segment.
    (segment,) = RequestCache(run_dir / "cache" / "llm").files()
    assert segment.name.endswith(".jsonl") and segment.parent.name == "00000"
