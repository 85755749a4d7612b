"""Admission control for LLM requests: who may send the next request, and when.

The client calls a ``PermitSource`` around every HTTP attempt::

    permit = await source.acquire(estimated_tokens)      # may wait
    try:
        ... send the request ...
    finally:
        source.release(permit, PermitResult(...))        # never awaits

Two pieces live here (the cluster-wide limiter, a Ray actor over a ``LimiterCore``, is
``pipelines.limiter``):

* ``LimiterCore`` — the policy as a plain, synchronous, clock-injected state machine: a
  concurrency window under ``max_concurrency`` adapted by AIMD (halve on 429, +1 per window
  of successes, like TCP congestion control), ``requests_per_minute`` and
  ``tokens_per_minute`` token buckets, and a global pause honouring ``Retry-After``. It does
  no I/O and holds no asyncio objects, so a cluster-wide Ray actor can hold one.
* ``LocalLimiter`` — a ``PermitSource`` for one process: an asyncio FIFO queue in front of a
  ``LimiterCore``.

``release`` is synchronous on purpose: it runs in ``finally`` blocks, also when the request
task is being cancelled, where awaiting is unreliable. Remote implementations buffer the
report and flush it on their next round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from synth.llm.config import LLMConfig

log = logging.getLogger(__name__)

Outcome = Literal["ok", "throttled", "timeout", "error", "unused"]
"""How a permitted attempt ended.

``ok``: a reply came back (valid or not — the endpoint did its work); grows the window.
``throttled``: HTTP 429; shrinks the window, and ``retry_after_s`` pauses everyone.
``timeout``: no reply in time; shrinks the window (an overloaded server that does not say
429 — e.g. transformers serve queueing more work than it can finish — shows it this way,
and retrying at the same concurrency would only pile more work on it).
``error``: 5xx, connection error, malformed reply; neither grows nor shrinks the window.
``unused``: the permit was never used for a request (e.g. the caller was cancelled first).
"""

# A Retry-After longer than this is treated as this: a misbehaving header must not park a
# whole cluster for hours; the per-request backoff still applies on top.
MAX_GLOBAL_PAUSE_S = 120.0


@dataclass(frozen=True, slots=True)
class Permit:
    """The right to send one request.

    ``epoch`` is the limiter's decrease epoch when the permit was granted: a 429 shrinks the
    window only if no shrink happened since its permit was granted, so a burst of 429s from
    one window of requests halves the window once, not 64 times.
    """

    estimated_tokens: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class PermitResult:
    """What happened to a permitted attempt; see ``Outcome``."""

    outcome: Outcome
    retry_after_s: float | None = None
    tokens_used: int = 0

    @classmethod
    def ok(cls, tokens_used: int = 0) -> PermitResult:
        return cls("ok", None, tokens_used)

    @classmethod
    def throttled(cls, retry_after_s: float | None = None) -> PermitResult:
        return cls("throttled", retry_after_s, 0)

    @classmethod
    def timed_out(cls, tokens_used: int = 0) -> PermitResult:
        return cls("timeout", None, tokens_used)

    @classmethod
    def error(cls, tokens_used: int = 0) -> PermitResult:
        return cls("error", None, tokens_used)

    @classmethod
    def unused(cls) -> PermitResult:
        return cls("unused", None, 0)


@runtime_checkable
class PermitSource(Protocol):
    """What the client needs from a limiter: acquire before each attempt, release after."""

    async def acquire(self, estimated_tokens: int = 0) -> Permit:
        """Wait until one request may be sent; ``estimated_tokens`` = prompt + max completion."""
        ...

    def release(self, permit: Permit, result: PermitResult) -> None:
        """Return a permit with the attempt's outcome. Must not block; may buffer."""
        ...


# --------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate_per_s``; may go negative."""

    capacity: float
    rate_per_s: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate_per_s)
        self.stamp = now

    def wait_s(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are available (0 = now). ``cost`` is capped at capacity."""
        missing = min(cost, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate_per_s


@dataclass(frozen=True, slots=True)
class Grant:
    """Answer of ``LimiterCore.try_acquire``: the permits granted, and when to ask again.

    ``retry_in_s`` is ``None`` when the caller is blocked by the concurrency window (ask again
    after a release), else the seconds until a time-based limit (bucket, pause) opens.
    """

    permits: tuple[Permit, ...]
    retry_in_s: float | None = None


@dataclass
class LimiterCore:
    """The admission policy as a synchronous state machine; see the module docstring.

    ``burst_s`` sizes the rate buckets: at most ``burst_s`` seconds' worth of the per-minute
    limit may be sent at once (a full minute of burst invites 429s from providers that
    enforce limits over shorter windows).
    """

    max_concurrency: int
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    min_concurrency: int = 1
    decrease_factor: float = 0.5
    burst_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    in_flight: int = field(default=0, init=False)
    epoch: int = field(default=0, init=False)
    pause_until: float = field(default=0.0, init=False)
    _window: float = field(default=0.0, init=False)
    _rpm: _Bucket | None = field(default=None, init=False)
    _tpm: _Bucket | None = field(default=None, init=False)
    throttled_total: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.min_concurrency = max(1, min(self.min_concurrency, self.max_concurrency))
        self._window = float(self.max_concurrency)
        now = self.clock()
        if self.requests_per_minute:
            self._rpm = self._bucket(self.requests_per_minute, now)
        if self.tokens_per_minute:
            self._tpm = self._bucket(self.tokens_per_minute, now)

    def _bucket(self, per_minute: int, now: float) -> _Bucket:
        rate = per_minute / 60.0
        capacity = max(1.0, rate * self.burst_s)
        return _Bucket(capacity=capacity, rate_per_s=rate, level=capacity, stamp=now)

    @property
    def limit(self) -> int:
        """The current concurrency window (an integer between min and max concurrency)."""
        return max(self.min_concurrency, min(self.max_concurrency, math.floor(self._window)))

    def try_acquire(self, n: int = 1, estimated_tokens_each: int = 0) -> Grant:
        """Grant up to ``n`` permits now (possibly none) and say when to ask for the rest."""
        now = self.clock()
        permits: list[Permit] = []
        retry_in: float | None = None
        if now < self.pause_until:
            return Grant((), self.pause_until - now)
        for b in (self._rpm, self._tpm):
            if b is not None:
                b.refill(now)
        while len(permits) < n:
            if self.in_flight >= self.limit:
                retry_in = None
                break
            wait = 0.0
            if self._rpm is not None:
                wait = max(wait, self._rpm.wait_s(1.0))
            if self._tpm is not None:
                wait = max(wait, self._tpm.wait_s(float(estimated_tokens_each)))
            if wait > 0:
                retry_in = wait
                break
            if self._rpm is not None:
                self._rpm.level -= 1.0
            if self._tpm is not None:
                # Debit the estimate now, correct it on release with the tokens really used.
                self._tpm.level -= estimated_tokens_each
            self.in_flight += 1
            permits.append(Permit(estimated_tokens=estimated_tokens_each, epoch=self.epoch))
        return Grant(tuple(permits), None if len(permits) == n else retry_in)

    def release(self, permit: Permit, result: PermitResult) -> None:
        """Account one finished (or unused) permit."""
        self.release_many([(permit, result)])

    def release_many(self, reports: Iterable[tuple[Permit, PermitResult]]) -> None:
        """Account a batch of finished permits (what a remote limiter receives)."""
        now = self.clock()
        for permit, result in reports:
            self.in_flight = max(0, self.in_flight - 1)
            if self._tpm is not None:
                self._tpm.refill(now)
                self._tpm.level += permit.estimated_tokens - result.tokens_used
            if result.outcome == "unused" and self._rpm is not None:
                self._rpm.refill(now)
                self._rpm.level += 1.0
            if result.outcome == "ok":
                # Additive increase: +1 per window's worth of successes.
                self._window = min(float(self.max_concurrency), self._window + 1.0 / max(1.0, self._window))
            elif result.outcome in ("throttled", "timeout"):
                if permit.epoch == self.epoch:
                    self._window = max(float(self.min_concurrency), self._window * self.decrease_factor)
                    self.epoch += 1
                if result.outcome == "timeout":
                    continue
                self.throttled_total += 1
                if result.retry_after_s is not None and result.retry_after_s > 0:
                    pause = min(result.retry_after_s, MAX_GLOBAL_PAUSE_S)
                    self.pause_until = max(self.pause_until, now + pause)


# --------------------------------------------------------------------------------------
# One process
# --------------------------------------------------------------------------------------


class LocalLimiter:
    """A ``PermitSource`` for one process: FIFO waiters in front of a ``LimiterCore``.

    Waiting costs one future per waiting caller, and one timer for the whole queue.
    Must be used from a single event loop.
    """

    def __init__(
        self,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        min_concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = LimiterCore(
            max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            min_concurrency=min_concurrency,
            clock=clock,
        )
        self._waiters: deque[tuple[asyncio.Future[Permit], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: LLMConfig) -> LocalLimiter:
        """Build from an ``LLMConfig`` (max_concurrency, requests/tokens per minute)."""
        return cls(
            max_concurrency=config.max_concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
        )

    @property
    def in_flight(self) -> int:
        return self.core.in_flight

    @property
    def limit(self) -> int:
        return self.core.limit

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, estimated_tokens: int = 0) -> Permit:
        if not self._waiters:
            grant = self.core.try_acquire(1, estimated_tokens)
            if grant.permits:
                return grant.permits[0]
        fut: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, estimated_tokens))
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted just as we were cancelled: hand the permit back unused.
                self.release(fut.result(), PermitResult.unused())
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((fut, estimated_tokens))
                self._pump()
            raise

    def release(self, permit: Permit, result: PermitResult) -> None:
        self.core.release(permit, result)
        self._pump()

    def _pump(self) -> None:
        """Grant permits to queued waiters in order while the core allows."""
        while self._waiters:
            fut, tokens = self._waiters[0]
            if fut.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            grant = self.core.try_acquire(1, tokens)
            if not grant.permits:
                if grant.retry_in_s is not None:
                    self._arm_timer(grant.retry_in_s)
                return
            self._waiters.popleft()
            fut.set_result(grant.permits[0])

    def _arm_timer(self, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None and not self._timer.cancelled() and self._timer_loop is loop:
            return
        self._timer_loop = loop

        def fire() -> None:
            self._timer = None
            self._pump()

        # A little slack so the bucket has really refilled when we look again.
        self._timer = loop.call_later(max(0.0, delay_s) + 0.001, fire)
