"""LLM client throughput against a fake endpoint with a known physical limit, and its memory bound.

A fake OpenAI-compatible server (``testing.fake_llm_server``, in its own process so client
and server do not share a GIL, but on the same 2 cores) answers every request after a
fixed latency L. With C requests in flight the best possible rate is C / L requests/s;
we print achieved / limit:

* C=64,  L=200 ms -> limit 320 req/s (goal >= 0.90; NOTES.md: openai SDK on httpx 0.27,
  raw aiohttp 0.97, openai SDK on aiohttp 0.93)
* C=256, L=1 s    -> limit 256 req/s

The first scenario also runs bare aiohttp (no limiter, retries or validation) against the
same server right after, as a peer: on a shared machine the limit moves with the load, the
peer shows by how much.

Then the memory bound: the same client drains a small and a large queue of requests
(zero latency, C=256), each in a fresh process; peak RSS must not grow with the queue
(``complete_many`` keeps at most 2 x C tasks alive and pulls requests lazily). The large
queue is 100,000 requests, or the largest the small run's rate drains in about a minute
(on 2 shared cores this run is CPU-bound: ~0.85 ms of client + server CPU per request).

Each run is ``python -m synth.llm.bench`` (the ``agentcpt llm bench`` code) in a child
process, so each reports its own peak RSS.

Usage: python bench/llm_client.py [--quick] [--big 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig


def run_client(base_url: str, concurrency: int, requests: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "synth.llm.bench", base_url, str(concurrency), str(requests)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if not out.stdout.strip():
        raise RuntimeError(f"bench child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _raw_aiohttp(base_url: str, concurrency: int, requests: int) -> float:
    """The peer: bare aiohttp POSTs from ``concurrency`` loops, no limiter/retries/validation."""
    import aiohttp

    numbers = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in numbers:
                body = {"model": "fake-model", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"Benchmark request {i}."}]}  # fmt: skip
                async with session.post(f"{base_url}/chat/completions", json=body) as resp:
                    json.loads(await resp.read())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def throughput(latency_s: float, concurrency: int, requests: int, peer: bool = False) -> dict[str, Any]:
    with FakeOpenAIServer(FakeServerConfig(latency_s=latency_s)) as server:
        result = run_client(server.base_url, concurrency, requests)
        peak_server = server.stats().peak_in_flight
        # Same server, same machine, right after: how far is bare aiohttp from the limit now?
        peer_rps = asyncio.run(_raw_aiohttp(server.base_url, concurrency, requests)) if peer else None
    limit = concurrency / latency_s
    extra = {}
    if peer_rps is not None:
        extra = {
            "raw_aiohttp_rps": round(peer_rps, 2),
            "raw_aiohttp_over_limit": round(peer_rps / limit, 3),
            "client_over_raw_aiohttp": round(result["requests_per_s"] / peer_rps, 3),
        }
    return {
        "scenario": f"concurrency {concurrency}, latency {latency_s * 1000:.0f} ms",
        "requests": requests,
        "limit_rps": round(limit, 1),
        "achieved_rps": result["requests_per_s"],
        "achieved_over_limit": round(result["requests_per_s"] / limit, 3),
        "latency_p50_ms": result["latency_p50_ms"],
        "latency_p99_ms": result["latency_p99_ms"],
        "errors": result["errors"],
        "server_peak_in_flight": peak_server,
        "client_peak_rss_mb": result["peak_rss_mb"],
        **extra,
    }


def memory(big: int, concurrency: int = 256, budget_s: float = 60.0) -> dict[str, Any]:
    """A small queue, then the largest queue up to ``big`` that the small run's rate drains in ``budget_s``."""
    small = 2000
    with FakeOpenAIServer(FakeServerConfig(latency_s=0.0)) as server:
        a = run_client(server.base_url, concurrency, small)
        fits = int(a["requests_per_s"] * budget_s)
        n_big = max(small * 5, min(big, fits))
        b = run_client(server.base_url, concurrency, n_big)
    note = (
        "" if n_big == big else f"reduced to what {a['requests_per_s']:.0f} req/s drains in {budget_s:.0f} s"
    )
    keys = ("requests", "requests_per_s", "elapsed_s", "peak_rss_mb", "peak_tasks", "errors")
    return {
        "scenario": f"queue of {small} vs {n_big} requests, concurrency {concurrency}, zero latency",
        "big_requested": big,
        "big_note": note,
        "small": {k: a[k] for k in keys},
        "big": {k: b[k] for k in keys},
        "rss_big_over_small": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the bench)")
    parser.add_argument("--big", type=int, default=None, help="requests in the large memory run")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    started = time.perf_counter()
    results = [
        throughput(0.2, 64, int(320 * 12 * scale), peer=True),
        throughput(1.0, 256, int(256 * 15 * scale)),
    ]
    big = args.big or (10_000 if args.quick else 100_000)
    results.append(memory(big, budget_s=15 if args.quick else 60))
    for r in results:
        print(json.dumps(r), flush=True)
    first = results[0]
    print(
        f"achieved/limit at concurrency 64, 200 ms: {first['achieved_over_limit']:.3f} (goal >= 0.90; "
        f"bare aiohttp just after on the same server: {first['raw_aiohttp_over_limit']:.3f}); "
        f"at concurrency 256, 1 s: {results[1]['achieved_over_limit']:.3f}; "
        f"peak RSS {results[2]['big']['peak_rss_mb']} MB for {results[2]['big']['requests']} queued requests vs "
        f"{results[2]['small']['peak_rss_mb']} MB for {results[2]['small']['requests']} "
        f"(ratio {results[2]['rss_big_over_small']}); total {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
