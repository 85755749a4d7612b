"""``agentcpt llm bench``: drive any OpenAI-compatible endpoint with the client; print JSON.

Sends ``requests`` short text requests through ``LLMClient.complete_many`` at
``concurrency`` and reports::

    {"requests_per_s", "latency_p50_ms", "latency_p99_ms", "errors": {kind: n}, "retries",
     "peak_rss_mb", "peak_tasks", ...}

Latency is per successful HTTP attempt (send to reply), from the client's usage tracker.
``peak_tasks`` is the most asyncio tasks alive at once (sampled every 50 ms): it stays near
2 x concurrency however many requests are queued. ``peak_rss_mb`` is the process's peak
resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

from synth.llm.client import CompletionRequest, LLMClient
from synth.llm.config import LLMConfig


class BenchResult(BaseModel):
    """What ``run_bench`` measured."""

    model_config = ConfigDict(extra="forbid")
    base_url: str
    model: str | None
    concurrency: int
    requests: int
    ok: int = Field(description="requests that got a reply")
    errors: dict[str, int] = Field(description="failed requests by error kind")
    retries: int = Field(description="retried attempts (all reasons)")
    elapsed_s: float
    requests_per_s: float = Field(description="requests finished (ok or not) per second")
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    peak_rss_mb: float = Field(description="peak resident set size of this process")
    peak_tasks: int = Field(description="most asyncio tasks alive at once (sampled)")


def _requests(n: int, max_tokens: int) -> Iterator[CompletionRequest]:
    # A generator: the request list is never materialised.
    for i in range(n):
        yield CompletionRequest(
            messages=[{"role": "user", "content": f"Benchmark request {i}. Reply with one short sentence."}],
            stage="bench",
            max_tokens=max_tokens,
        )


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # KiB on Linux


async def run_bench(config: LLMConfig, requests: int, max_tokens: int = 16) -> BenchResult:
    """Run the benchmark in the current event loop."""
    peak_tasks = 0
    stop = asyncio.Event()

    async def watch_tasks() -> None:
        nonlocal peak_tasks
        while not stop.is_set():
            peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    ok = 0
    errors: Counter[str] = Counter()
    async with LLMClient(config) as client:
        watcher = asyncio.create_task(watch_tasks())
        started = time.perf_counter()
        async for outcome in client.complete_many(_requests(requests, max_tokens)):
            if outcome.error is None:
                ok += 1
            else:
                errors[outcome.error.kind] += 1
        elapsed = time.perf_counter() - started
        stop.set()
        await watcher
        usage = client.usage.usage("bench")
        model = client.model_name
    return BenchResult(
        base_url=config.base_url,
        model=model,
        concurrency=config.max_concurrency,
        requests=requests,
        ok=ok,
        errors=dict(errors),
        retries=usage.retries,
        elapsed_s=round(elapsed, 3),
        requests_per_s=round(requests / elapsed, 2) if elapsed > 0 else 0.0,
        latency_p50_ms=usage.latency_p50_ms,
        latency_p99_ms=usage.latency_p99_ms,
        peak_rss_mb=_peak_rss_mb(),
        peak_tasks=peak_tasks,
    )


def bench_command(
    base_url: str, model: str | None = None, concurrency: int = 64, requests: int = 2000, max_tokens: int = 16
) -> int:
    """CLI entry: print the ``BenchResult`` as JSON; exit 0 if every request got a reply, else 1."""
    from synth.errors import UsageError

    if concurrency < 1 or requests < 1 or max_tokens < 1:
        raise UsageError("--concurrency, --requests and --max-tokens must be >= 1")
    config = LLMConfig(base_url=base_url, model=model, max_concurrency=concurrency, max_tokens=max_tokens)
    result = asyncio.run(run_bench(config, requests, max_tokens))
    print(json.dumps(result.model_dump()), flush=True)
    return 0 if result.ok == result.requests else 1


if __name__ == "__main__":  # python -m synth.llm.bench URL CONCURRENCY REQUESTS
    sys.exit(bench_command(sys.argv[1], None, int(sys.argv[2]), int(sys.argv[3])))
