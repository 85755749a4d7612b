"""Admission control: the LimiterCore policy and the LocalLimiter queue (the cluster-wide one: tests/pipelines/test_limiter.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from synth.llm.limits import (
    LimiterCore,
    LocalLimiter,
    PermitResult,
    PermitSource,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------
# LimiterCore
# --------------------------------------------------------------------------------------


def test_core_never_grants_beyond_max_concurrency() -> None:
    core = LimiterCore(max_concurrency=4)
    grant = core.try_acquire(10)
    assert len(grant.permits) == 4
    assert grant.retry_in_s is None  # blocked by the window, not by time
    assert core.try_acquire(1).permits == ()
    core.release(grant.permits[0], PermitResult.ok())
    assert len(core.try_acquire(5).permits) == 1


def test_burst_of_429s_from_one_window_halves_the_window_once() -> None:
    core = LimiterCore(max_concurrency=64)
    permits = core.try_acquire(64).permits
    for p in permits:
        core.release(p, PermitResult.throttled())
    assert core.limit == 32
    assert core.throttled_total == 64


def test_429s_after_a_decrease_halve_again_for_permits_granted_later() -> None:
    core = LimiterCore(max_concurrency=64)
    first = core.try_acquire(1).permits[0]
    core.release(first, PermitResult.throttled())
    second = core.try_acquire(1).permits[0]
    core.release(second, PermitResult.throttled())
    assert core.limit == 16


def test_window_never_drops_below_min_concurrency() -> None:
    core = LimiterCore(max_concurrency=8, min_concurrency=2)
    for _ in range(10):
        core.release(core.try_acquire(1).permits[0], PermitResult.throttled())
    assert core.limit == 2


def test_successes_grow_the_window_additively_back_to_the_ceiling() -> None:
    core = LimiterCore(max_concurrency=16)
    core.release(core.try_acquire(1).permits[0], PermitResult.throttled())
    assert core.limit == 8
    # About one window's worth of successes adds one slot.
    for _ in range(9):
        core.release(core.try_acquire(1).permits[0], PermitResult.ok())
    assert core.limit == 9
    for _ in range(500):
        core.release(core.try_acquire(1).permits[0], PermitResult.ok())
    assert core.limit == 16


def test_errors_neither_grow_nor_shrink_the_window() -> None:
    core = LimiterCore(max_concurrency=16)
    core.release(core.try_acquire(1).permits[0], PermitResult.throttled())
    for _ in range(50):
        core.release(core.try_acquire(1).permits[0], PermitResult.error())
    assert core.limit == 8


def test_retry_after_pauses_every_acquire_until_it_passes() -> None:
    clock = FakeClock()
    core = LimiterCore(max_concurrency=8, clock=clock)
    core.release(core.try_acquire(1).permits[0], PermitResult.throttled(retry_after_s=2.5))
    grant = core.try_acquire(1)
    assert grant.permits == ()
    assert grant.retry_in_s == pytest.approx(2.5)
    clock.now += 2.6
    assert len(core.try_acquire(1).permits) == 1


def test_requests_per_minute_bucket_spaces_requests() -> None:
    clock = FakeClock()
    core = LimiterCore(max_concurrency=100, requests_per_minute=60, burst_s=5, clock=clock)  # 1/s, burst 5
    assert len(core.try_acquire(100).permits) == 5
    grant = core.try_acquire(1)
    assert grant.permits == () and grant.retry_in_s == pytest.approx(1.0)
    clock.now += 3.0
    assert len(core.try_acquire(100).permits) == 3


def test_tokens_per_minute_bucket_is_corrected_by_the_tokens_really_used() -> None:
    clock = FakeClock()
    core = LimiterCore(max_concurrency=100, tokens_per_minute=6000, burst_s=10, clock=clock)  # cap 1000
    a = core.try_acquire(1, estimated_tokens_each=600).permits[0]
    assert core.try_acquire(1, estimated_tokens_each=600).permits == ()  # 400 left
    core.release(a, PermitResult.ok(tokens_used=100))  # refunds 500 -> 900 left
    assert len(core.try_acquire(1, estimated_tokens_each=600).permits) == 1


def test_a_request_larger_than_the_token_bucket_still_gets_through_when_full() -> None:
    core = LimiterCore(max_concurrency=4, tokens_per_minute=600, burst_s=10)  # capacity 100
    assert len(core.try_acquire(1, estimated_tokens_each=5000).permits) == 1


def test_unused_permits_refund_their_request_and_tokens() -> None:
    clock = FakeClock()
    core = LimiterCore(max_concurrency=4, requests_per_minute=6, burst_s=10, clock=clock)  # one request
    p = core.try_acquire(1).permits[0]
    assert core.try_acquire(1).permits == ()
    core.release(p, PermitResult.unused())
    assert len(core.try_acquire(1).permits) == 1


# --------------------------------------------------------------------------------------
# LocalLimiter
# --------------------------------------------------------------------------------------


def test_local_limiter_is_a_permit_source() -> None:
    assert isinstance(LocalLimiter(4), PermitSource)


def test_local_limiter_keeps_in_flight_under_the_ceiling_with_many_waiters() -> None:
    async def main() -> int:
        limiter = LocalLimiter(max_concurrency=8)
        peak = 0
        in_flight = 0

        async def worker(i: int) -> None:
            nonlocal peak, in_flight
            permit = await limiter.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(random.random() * 0.002)
            in_flight -= 1
            limiter.release(permit, PermitResult.ok())

        await asyncio.gather(*(worker(i) for i in range(500)))
        assert limiter.in_flight == 0 and limiter.waiting == 0
        return peak

    assert asyncio.run(main()) == 8


def test_local_limiter_serves_waiters_in_arrival_order() -> None:
    async def main() -> list[int]:
        limiter = LocalLimiter(max_concurrency=1)
        first = await limiter.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            p = await limiter.acquire()
            order.append(i)
            limiter.release(p, PermitResult.ok())

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        limiter.release(first, PermitResult.ok())
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_cancelled_waiter_does_not_leak_a_permit() -> None:
    async def main() -> None:
        limiter = LocalLimiter(max_concurrency=1)
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limiter.release(held, PermitResult.ok())
        assert limiter.in_flight == 0
        p = await asyncio.wait_for(limiter.acquire(), 1)
        limiter.release(p, PermitResult.ok())

    asyncio.run(main())


def test_waiter_cancelled_just_after_being_granted_returns_its_permit() -> None:
    async def main() -> None:
        limiter = LocalLimiter(max_concurrency=1)
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.01)
        limiter.release(held, PermitResult.ok())  # grants to the waiter (future resolved)...
        waiter.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.in_flight == 0

    asyncio.run(main())


def test_local_limiter_wakes_time_blocked_waiters_by_itself() -> None:
    async def main() -> float:
        limiter = LocalLimiter(max_concurrency=8)
        p = await limiter.acquire()
        limiter.release(p, PermitResult.throttled(retry_after_s=0.2))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        p2 = await asyncio.wait_for(limiter.acquire(), 2)
        limiter.release(p2, PermitResult.ok())
        return loop.time() - t0

    assert 0.19 <= asyncio.run(main()) < 1.0


def test_local_limiter_works_across_event_loops() -> None:
    limiter = LocalLimiter(max_concurrency=2, requests_per_minute=600)  # bucket of 100

    async def burst() -> None:
        permits = [await limiter.acquire() for _ in range(2)]
        for p in permits:
            limiter.release(p, PermitResult.throttled(retry_after_s=0.05))
        p = await asyncio.wait_for(limiter.acquire(), 2)
        limiter.release(p, PermitResult.ok())

    asyncio.run(burst())
    asyncio.run(burst())  # the pause timer of the first loop must not strand the second


def test_timeouts_shrink_the_window_without_pausing_everyone() -> None:
    core = LimiterCore(max_concurrency=16)
    permits = core.try_acquire(16).permits
    for p in permits:
        core.release(p, PermitResult.timed_out())
    assert core.limit == 8  # once per window, like a burst of 429s
    assert core.throttled_total == 0
    assert len(core.try_acquire(1).permits) == 1  # no global pause
