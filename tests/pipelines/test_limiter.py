"""The cluster limiter: batched leases, a global ceiling across clients, long polls, dead clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipelines.limiter import (
    ClusterLimiter,
    ClusterPermitSource,
    EndpointLimits,
    PermitSourceClosed,
    cluster_permit_source,
    start_limiter,
)
from synth.llm.config import LLMConfig
from synth.llm.limits import Grant, Permit, PermitResult


def in_process(limiter: ClusterLimiter, client_id: str, **kwargs: Any) -> ClusterPermitSource:
    """A worker-side permit source trading with ``limiter`` directly (no Ray).

    Each call runs as its own task behind ``asyncio.shield``, as a Ray actor call does: a
    caller that stops waiting (is cancelled) does not stop the call inside the limiter.
    """

    async def exchange(reports: list[tuple[Permit, PermitResult]], n: int, tokens: int, wait: bool) -> Grant:
        return await asyncio.shield(
            asyncio.ensure_future(limiter.exchange(client_id, reports, n, tokens, wait))
        )

    async def close(reports: list[tuple[Permit, PermitResult]]) -> int:
        return await asyncio.shield(asyncio.ensure_future(limiter.close_client(client_id, reports)))

    return ClusterPermitSource(exchange, close, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_endpoint_limits_take_the_tightest_of_configs_sharing_a_url() -> None:
    a = LLMConfig(base_url="http://x/v1", max_concurrency=64, requests_per_minute=600)
    b = LLMConfig(base_url="http://x/v1", max_concurrency=16, tokens_per_minute=10_000)
    limits = EndpointLimits.combine([a, b])
    assert limits == EndpointLimits(max_concurrency=16, requests_per_minute=600, tokens_per_minute=10_000)


def test_one_lease_call_hands_out_a_whole_batch() -> None:
    async def scenario() -> tuple[Grant, Any]:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=64))
        grant = await limiter.exchange("w1", [], 16, 100, wait=True)
        return grant, limiter.stats()

    grant, stats = asyncio.run(scenario())
    assert len(grant.permits) == 16
    assert stats.lease_calls == 1 and stats.in_flight == 16


def test_two_workers_together_never_exceed_the_ceiling_and_lease_in_batches() -> None:
    ceiling = 8
    requests_per_worker = 200

    async def scenario() -> tuple[int, Any]:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=ceiling), long_poll_s=0.2)
        in_use = 0
        peak = 0

        async def request(source: ClusterPermitSource) -> None:
            nonlocal in_use, peak
            permit = await source.acquire(10)
            in_use += 1
            peak = max(peak, in_use)
            await asyncio.sleep(0.002)
            in_use -= 1
            source.release(permit, PermitResult.ok(10))

        sources = [in_process(limiter, f"w{i}", batch_size=4) for i in range(2)]
        await asyncio.gather(*(request(s) for s in sources for _ in range(requests_per_worker)))
        for s in sources:
            await s.aclose()
        return peak, limiter.stats()

    peak, stats = asyncio.run(scenario())
    assert peak <= ceiling
    assert stats.peak_in_flight <= ceiling
    assert stats.in_flight == 0  # everything came back
    assert stats.permits_granted >= 2 * requests_per_worker
    # Batching: far fewer round trips than requests.
    assert stats.lease_calls < requests_per_worker


def test_long_poll_lease_returns_as_soon_as_a_report_frees_capacity() -> None:
    async def scenario() -> tuple[float, Grant]:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=1), long_poll_s=5.0)
        first = await limiter.exchange("a", [], 1, wait=True)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        waiting = asyncio.create_task(limiter.exchange("b", [], 1, wait=True))
        await asyncio.sleep(0.05)
        await limiter.exchange("a", [(first.permits[0], PermitResult.ok())], 0)
        grant = await waiting
        return loop.time() - t0, grant

    elapsed, grant = asyncio.run(scenario())
    assert len(grant.permits) == 1
    assert elapsed < 1.0  # not the 5 s long-poll timeout


def test_long_poll_gives_up_with_an_immediate_retry_hint() -> None:
    async def scenario() -> Grant:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=1), long_poll_s=0.05)
        await limiter.exchange("a", [], 1, wait=True)
        return await limiter.exchange("b", [], 1, wait=True)

    grant = asyncio.run(scenario())
    assert grant.permits == () and grant.retry_in_s == 0.0


def test_permits_of_a_client_that_stops_heartbeating_are_reclaimed() -> None:
    clock = FakeClock()

    async def scenario() -> tuple[Grant, Any]:
        limiter = ClusterLimiter(
            EndpointLimits(max_concurrency=4), client_ttl_s=10, long_poll_s=0.0, clock=clock
        )
        await limiter.exchange("dead", [], 4, wait=True)
        clock.now += 5
        limiter.heartbeat("alive")
        blocked = await limiter.exchange("alive", [], 1, wait=True)
        assert blocked.permits == ()
        clock.now += 6  # "dead" silent for 11 s > ttl
        return await limiter.exchange("alive", [], 4, wait=True), limiter.stats()

    grant, stats = asyncio.run(scenario())
    assert len(grant.permits) == 4
    assert stats.reclaimed == 4


def test_heartbeats_keep_a_slow_client_permits() -> None:
    clock = FakeClock()

    async def scenario() -> Any:
        limiter = ClusterLimiter(
            EndpointLimits(max_concurrency=2), client_ttl_s=10, long_poll_s=0.0, clock=clock
        )
        await limiter.exchange("slow", [], 2, wait=True)
        for _ in range(5):
            clock.now += 8
            limiter.heartbeat("slow")
            await limiter.exchange("other", [], 1, wait=True)
        return limiter.stats()

    stats = asyncio.run(scenario())
    assert stats.reclaimed == 0 and stats.in_flight == 2


def test_a_late_report_after_reclaim_does_not_free_capacity_twice() -> None:
    clock = FakeClock()

    async def scenario() -> Any:
        limiter = ClusterLimiter(
            EndpointLimits(max_concurrency=2), client_ttl_s=10, long_poll_s=0.0, clock=clock
        )
        grant = await limiter.exchange("paused", [], 2, wait=True)
        clock.now += 11
        await limiter.exchange("other", [], 2, wait=True)  # reclaims "paused", takes both
        await limiter.exchange("paused", [(p, PermitResult.ok()) for p in grant.permits], 0)
        return limiter.stats()

    stats = asyncio.run(scenario())
    assert stats.in_flight == 2  # still held by "other"


def test_forget_returns_a_stopped_workers_permits_at_once() -> None:
    async def scenario() -> Any:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=3))
        await limiter.exchange("w", [], 3, wait=True)
        assert limiter.forget("w") == 3
        return limiter.stats()

    assert asyncio.run(scenario()).in_flight == 0


def test_throttle_reports_shrink_the_shared_window_once_per_burst() -> None:
    async def scenario() -> Any:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=16))
        a = await limiter.exchange("a", [], 8, wait=True)
        b = await limiter.exchange("b", [], 8, wait=True)
        await limiter.exchange("a", [(p, PermitResult.throttled()) for p in a.permits], 0)
        await limiter.exchange("b", [(p, PermitResult.throttled()) for p in b.permits], 0)
        return limiter.stats()

    stats = asyncio.run(scenario())
    assert stats.limit == 8  # halved once, not 16 times
    assert stats.throttled == 16


def test_limiter_actor_serves_workers_through_ray(ray_cluster: Any) -> None:
    import ray

    actor = start_limiter(EndpointLimits(max_concurrency=4))

    @ray.remote(num_cpus=0)
    def use_permits(handle: Any, client: str, n: int) -> int:
        async def go() -> int:
            source = cluster_permit_source(handle, client, batch_size=2)
            peak = 0
            in_use = 0

            async def one() -> None:
                nonlocal peak, in_use
                permit = await source.acquire()
                in_use += 1
                peak = max(peak, in_use)
                await asyncio.sleep(0.01)
                in_use -= 1
                source.release(permit, PermitResult.ok())

            await asyncio.gather(*(one() for _ in range(n)))
            await source.aclose()
            return peak

        return asyncio.run(go())

    try:
        peaks = ray.get([use_permits.remote(actor, f"c{i}", 20) for i in range(2)])
        stats = ray.get(actor.stats.remote())
    finally:
        ray.kill(actor, no_restart=True)
    assert all(p >= 1 for p in peaks)
    assert stats.peak_in_flight <= 4
    # Exact, whatever the timing: closing a source hands back every permit it held or was
    # about to receive (a long poll of one client still running while it closed, say).
    assert stats.in_flight == 0 and stats.clients == 0
    assert stats.permits_granted >= 40


def test_many_workers_closing_while_leases_are_in_flight_return_every_permit_through_ray(
    ray_cluster: Any,
) -> None:
    import ray

    ceiling = 6
    actor = start_limiter(EndpointLimits(max_concurrency=ceiling), long_poll_s=2.0)

    @ray.remote(num_cpus=0)
    def worker(handle: Any, client: str, seed: int) -> int:
        import random

        rng = random.Random(seed)

        async def go() -> int:
            source = cluster_permit_source(handle, client, batch_size=rng.choice([1, 2, 4]))
            done = 0

            async def one() -> None:
                nonlocal done
                permit = await source.acquire()
                await asyncio.sleep(rng.uniform(0.0, 0.02))
                source.release(permit, PermitResult.ok())
                done += 1

            tasks = [asyncio.ensure_future(one()) for _ in range(rng.randint(5, 40))]
            # Stop at a random moment, as a worker shutting down does: requests are cancelled
            # (those holding a permit release it), and the source closes at once, while its
            # pump may be mid-call: reporting, leasing for the cancelled waiters, long-polling.
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await source.aclose()
            return done

        return asyncio.run(go())

    try:
        for round_ in range(3):
            done = ray.get([worker.remote(actor, f"r{round_}-c{i}", 100 * round_ + i) for i in range(8)])
            stats = ray.get(actor.stats.remote())
            assert sum(done) > 0
            assert stats.in_flight == 0 and stats.clients == 0, (round_, stats)
            assert stats.peak_in_flight <= ceiling
    finally:
        ray.kill(actor, no_restart=True)


def test_closing_while_a_long_poll_is_in_flight_leaves_no_permit_behind() -> None:
    async def scenario() -> Any:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=1), long_poll_s=5.0)
        holder = in_process(limiter, "holder")
        held = await holder.acquire()
        waiter = in_process(limiter, "waiter")
        pending = asyncio.ensure_future(waiter.acquire())
        await asyncio.sleep(0.05)  # the waiter's pump is now long-polling inside the limiter
        t0 = asyncio.get_running_loop().time()
        await waiter.aclose()  # must not wait out the 5 s long poll
        closed_in = asyncio.get_running_loop().time() - t0
        holder.release(held, PermitResult.ok())  # frees the permit the long poll waited for
        await asyncio.sleep(0.05)
        await holder.aclose()
        with pytest.raises(PermitSourceClosed):
            await pending
        return closed_in, limiter.stats()

    closed_in, stats = asyncio.run(scenario())
    assert closed_in < 1.0
    assert stats.in_flight == 0 and stats.clients == 0


def test_a_stress_of_sources_closing_at_random_moments_keeps_exact_accounting() -> None:
    import random

    async def scenario(seed: int) -> tuple[int, Any]:
        rng = random.Random(seed)
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=5), long_poll_s=0.5)
        peak = in_use = 0

        async def client(i: int) -> None:
            nonlocal peak, in_use
            source = in_process(limiter, f"c{i}", batch_size=rng.choice([1, 3, 8]), linger_s=0.01)

            async def one() -> None:
                nonlocal peak, in_use
                permit = await source.acquire()
                in_use += 1
                peak = max(peak, in_use)
                try:
                    await asyncio.sleep(rng.uniform(0, 0.01))
                finally:
                    in_use -= 1
                    source.release(permit, rng.choice([PermitResult.ok(), PermitResult.error()]))

            tasks = [asyncio.ensure_future(one()) for _ in range(rng.randint(1, 30))]
            await asyncio.sleep(rng.uniform(0, 0.05))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await source.aclose()  # its pump may be mid-call right now

        await asyncio.gather(*(client(i) for i in range(20)))
        return peak, limiter.stats()

    for seed in range(10):
        peak, stats = asyncio.run(scenario(seed))
        assert peak <= 5 and stats.peak_in_flight <= 5
        assert stats.in_flight == 0 and stats.clients == 0, (seed, stats)


@pytest.mark.parametrize("n", [0, -1])
def test_an_exchange_asking_for_nothing_only_reports(n: int) -> None:
    async def scenario() -> tuple[Grant, Any]:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=2))
        first = await limiter.exchange("a", [], 1, wait=True)
        grant = await limiter.exchange("a", [(first.permits[0], PermitResult.ok())], n, wait=True)
        return grant, limiter.stats()

    grant, stats = asyncio.run(scenario())
    assert grant.permits == () and stats.in_flight == 0


def test_a_finished_request_reports_and_leases_again_in_one_round_trip() -> None:
    async def scenario() -> tuple[int, Any]:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=2), long_poll_s=1.0)
        source = in_process(limiter, "w", batch_size=2)
        a, b = await source.acquire(), await source.acquire()  # the window is now full
        third = asyncio.create_task(source.acquire())
        await asyncio.sleep(0.01)
        trips = source.round_trips
        source.release(a, PermitResult.ok())
        await asyncio.wait_for(third, timeout=1.0)
        trips = source.round_trips - trips
        source.release(b, PermitResult.ok())
        source.release(third.result(), PermitResult.ok())
        await source.aclose()
        return trips, limiter.stats()

    trips, stats = asyncio.run(scenario())
    assert trips <= 2  # (the empty poll while full, and) the report that brought the permit back
    assert stats.in_flight == 0


def test_permits_nobody_waits_for_go_back_to_the_cluster() -> None:
    async def scenario() -> Any:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=8))
        source = in_process(limiter, "w", batch_size=8, linger_s=0.05)
        permits = await asyncio.gather(*(source.acquire() for _ in range(3)))
        for p in permits:
            source.release(p, PermitResult.ok())
        await asyncio.sleep(0.3)
        return limiter.stats()

    assert asyncio.run(scenario()).in_flight == 0


def test_a_cancelled_waiter_does_not_leak_its_permit() -> None:
    async def scenario() -> Any:
        limiter = ClusterLimiter(EndpointLimits(max_concurrency=1), long_poll_s=0.05)
        source = in_process(limiter, "w", linger_s=0.01)
        held = await source.acquire()
        waiting = asyncio.create_task(source.acquire())
        await asyncio.sleep(0.02)
        waiting.cancel()
        source.release(held, PermitResult.ok())
        await asyncio.sleep(0.2)
        await source.aclose()
        return limiter.stats()

    assert asyncio.run(scenario()).in_flight == 0


def test_heartbeats_are_skipped_while_the_client_talks_to_the_limiter_anyway() -> None:
    import time
    from types import SimpleNamespace

    from pipelines.limiter import Heartbeat

    pings: list[str] = []
    handle = SimpleNamespace(heartbeat=SimpleNamespace(remote=pings.append))  # an actor handle's shape
    busy = Heartbeat(handle, "busy", interval_s=0.05, last_contact=time.monotonic).start()
    idle = Heartbeat(handle, "idle", interval_s=0.05, last_contact=lambda: float("-inf")).start()
    time.sleep(0.5)
    busy.stop()
    idle.stop()
    assert "busy" not in pings and pings.count("idle") >= 3


def _busy_worker(
    limiter: ClusterLimiter, reuse_s: float, outcome: PermitResult, requests: int = 200, gap_s: float = 0.0
) -> tuple[int, int, Any]:
    """``requests`` requests of 2 ms each, all waiting at once (``gap_s`` = 0) or one after
    another with ``gap_s`` between a release and the next acquire (a stage's next call)."""

    async def scenario() -> tuple[int, int, Any]:
        source = in_process(limiter, "w", batch_size=4, reuse_s=reuse_s)
        in_use = peak = 0

        async def one() -> None:
            nonlocal in_use, peak
            permit = await source.acquire()
            in_use += 1
            peak = max(peak, in_use)
            await asyncio.sleep(0.002)
            in_use -= 1
            source.release(permit, outcome)

        if gap_s:
            for _ in range(requests):
                await one()
                await asyncio.sleep(gap_s)
        else:
            await asyncio.gather(*(one() for _ in range(requests)))
        trips = source.round_trips
        await source.aclose()
        return trips, peak, limiter.stats()

    return asyncio.run(scenario())


def test_a_succeeded_permit_serves_this_workers_next_requests_without_a_round_trip_while_young() -> None:
    plain_trips, _, _ = _busy_worker(ClusterLimiter(EndpointLimits(max_concurrency=4)), 0.0, PermitResult.ok())
    trips, peak, stats = _busy_worker(ClusterLimiter(EndpointLimits(max_concurrency=4)), 60.0, PermitResult.ok())
    assert peak <= 4 and stats.peak_in_flight <= 4
    assert plain_trips >= 200 / 4 and trips <= 3  # a few leases of the first permits, then none
    assert stats.permits_granted <= 8 and stats.in_flight == 0


def test_a_reused_permit_goes_back_once_older_than_reuse_s() -> None:
    # 200 requests over ~0.8 s with permits young for 0.1 s: each permit comes back several times.
    _, _, stats = _busy_worker(
        ClusterLimiter(EndpointLimits(max_concurrency=4)), 0.1, PermitResult.ok(), requests=200, gap_s=0.002
    )
    assert 4 <= stats.permits_granted < 200 and stats.in_flight == 0


def test_a_released_permit_waits_as_a_spare_for_the_next_acquire() -> None:
    # One request at a time, 5 ms apart: with nobody waiting at the release the permit stays
    # here (linger) and the next acquire takes it without a round trip.
    trips, _, stats = _busy_worker(
        ClusterLimiter(EndpointLimits(max_concurrency=4)), 60.0, PermitResult.ok(), requests=50, gap_s=0.005
    )
    assert trips <= 2 and stats.permits_granted == 1 and stats.in_flight == 0


def test_a_throttled_permit_is_never_reused() -> None:
    _, _, stats = _busy_worker(ClusterLimiter(EndpointLimits(max_concurrency=4)), 60.0, PermitResult.throttled())
    assert stats.permits_granted >= 200 and stats.throttled == 200 and stats.in_flight == 0
