"""Control-plane latency under load: 200 concurrent ``GET /v1/runs/{id}`` while a run is going.

Starts ``agentcpt serve`` (its own process, one uvicorn worker) over a temp data dir and a
fake OpenAI endpoint with 1 s of latency, submits a real run (documents + memory, so the
driver is busy for a while), and as soon as the run is ``running`` fires rounds of 200
concurrent requests from an aiohttp client: ``GET /v1/runs/{id}`` (which reconciles the
run: job store, status.json, progress.json, driver liveness) and, interleaved, ``GET
/healthz`` on the same server (the floor: the HTTP stack and nothing else).

Prints p50/p99 of both and the ratios run/healthz (the cost of reconciliation over the
bare framework). Client and server share the machine's cores, so absolute figures include
the load generator.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from testing.api_server import ApiServer, stop_driver, wait_for_state
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

CONCURRENCY = 200
ROUNDS = 5
TOKEN = "bench-api-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "configs" / "quickstart" / "pages"


async def _burst(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    """``n`` concurrent GETs of ``url``; latency of each in ms (all must answer 200)."""

    async def one() -> float:
        start = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url} -> {resp.status}")
        return (time.perf_counter() - start) * 1000

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _measure(base_url: str, run_id: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"run": [], "healthz": []}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await _burst(session, f"{base_url}/healthz", 20)  # warm up connections and code paths
        await _burst(session, f"{base_url}/v1/runs/{run_id}", 20)
        for _ in range(ROUNDS):
            out["run"] += await _burst(session, f"{base_url}/v1/runs/{run_id}", CONCURRENCY)
            out["healthz"] += await _burst(session, f"{base_url}/healthz", CONCURRENCY)
    return out


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="agentcpt-bench-api-") as tmp,
        FakeOpenAIServer(FakeServerConfig(latency_s=1.0)) as llm,
    ):
        data_dir = Path(tmp)
        (data_dir / "inputs").mkdir()
        for page in sorted(PAGES.glob("*.html"))[:8]:
            shutil.copy(page, data_dir / "inputs")
        spec = {
            "name": "bench-api",
            "inputs": {"web": ["inputs/*.html"]},
            "llm": {"base_url": llm.base_url, "model": "fake-model", "max_concurrency": 2},
            "stages": {"documents": {"min_chars": 100}, "memory": {}},
            "execution": {"unit_size": 1},
        }
        run_id = None
        # REST specs may use only the endpoints the operator lists (AGENTCPT_LLM_ENDPOINTS).
        env = {"AGENTCPT_LLM_ENDPOINTS": json.dumps([{"base_url": llm.base_url}])}
        with ApiServer(data_dir, TOKEN, env=env) as server:
            try:
                with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
                    resp = client.post("/v1/runs", json=spec)
                    resp.raise_for_status()
                    run_id = resp.json()["run_id"]
                    wait_for_state(client, run_id, frozenset({"running"}), timeout_s=120)
                    t0 = time.perf_counter()
                    lat = asyncio.run(_measure(server.base_url, run_id))
                    wall_s = time.perf_counter() - t0
                    state_after = client.get(f"/v1/runs/{run_id}").json()["state"]
            finally:
                if run_id is not None:
                    stop_driver(data_dir / "runs" / run_id)

    run_p50, run_p99 = _pct(lat["run"], 50), _pct(lat["run"], 99)
    hz_p50, hz_p99 = _pct(lat["healthz"], 50), _pct(lat["healthz"], 99)
    result = {
        "concurrency": CONCURRENCY,
        "requests_per_endpoint": len(lat["run"]),
        "run_state_during": "running",
        "run_state_after": state_after,
        "get_run_p50_ms": round(run_p50, 1),
        "get_run_p99_ms": round(run_p99, 1),
        "healthz_p50_ms": round(hz_p50, 1),
        "healthz_p99_ms": round(hz_p99, 1),
        "ratio_p50_get_run_over_healthz": round(run_p50 / hz_p50, 2),
        "ratio_p99_get_run_over_healthz": round(run_p99 / hz_p99, 2),
        "requests_per_s_overall": round((len(lat["run"]) + len(lat["healthz"])) / wall_s, 1),
    }
    print(json.dumps(result, indent=2))
    print(
        f"GET /v1/runs/{{id}} with {CONCURRENCY} concurrent: p50 {run_p50:.1f} ms, p99 {run_p99:.1f} ms "
        f"({result['ratio_p50_get_run_over_healthz']}x / {result['ratio_p99_get_run_over_healthz']}x "
        f"the /healthz floor of p50 {hz_p50:.1f} ms, p99 {hz_p99:.1f} ms on the same server)"
    )


if __name__ == "__main__":
    main()
