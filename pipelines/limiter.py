"""One LLM limiter per endpoint for the whole cluster: a Ray actor that leases permits in batches.

The policy (concurrency window with AIMD after 429s, RPM/TPM buckets, the ``Retry-After``
pause) is ``synth.llm.limits.LimiterCore``; this module only makes it cluster-wide:

* ``ClusterLimiter`` wraps one ``LimiterCore`` and serves ``lease(client, n, tokens)`` and
  ``report(client, reports)`` — the ``PermitLessor`` protocol of ``synth.llm.limits`` plus
  a client id. It runs as an async Ray actor (``start_limiter``), shared by every worker.
* ``RayPermitLessor`` is the worker side: it forwards ``lease``/``report`` to the actor, and
  ``cluster_permit_source`` wraps it in the LLM layer's ``LeasedPermitSource``, which
  serves requests from permits leased ``batch_size`` at a time, so the actor sees one
  round trip per batch rather than one per request.

Two things only a cluster-wide limiter has to care about:

* **Long polling.** When the window is full, ``lease`` waits inside the actor (up to
  ``long_poll_s``) until a report frees capacity, instead of answering "no" and letting
  the client poll on a timer: polling every 50 ms would idle each permit for ~25 ms on
  average, ~12% of a 200 ms request.
* **Dead workers.** A worker killed with permits leased would hold them forever and
  silently shrink the cluster's concurrency. Each client's outstanding permits are kept in
  a ledger; a heartbeat thread in the worker (not its event loop, which a CPU-bound stage
  may block) keeps it alive, and a client silent for ``client_ttl_s`` loses its permits.
  Reports for permits no longer in the ledger are ignored, so a late report never frees
  capacity twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synth.llm.config import LLMConfig
from synth.llm.limits import Grant, LeasedPermitSource, LimiterCore, Permit, PermitResult


class LimiterStats(BaseModel):
    """Counters of a cluster limiter (for tests, the bench and progress output)."""

    model_config = ConfigDict(extra="forbid")
    in_flight: int = Field(description="permits currently leased and not reported back")
    limit: int = Field(description="current concurrency window (AIMD)")
    max_concurrency: int = Field(description="the configured ceiling")
    peak_in_flight: int = Field(description="highest in_flight seen")
    lease_calls: int = Field(description="lease round trips served")
    report_calls: int = Field(description="report round trips served")
    permits_granted: int = Field(description="permits handed out")
    throttled: int = Field(description="429s reported")
    reclaimed: int = Field(description="permits taken back from clients that stopped heartbeating")
    clients: int = Field(description="clients with a live ledger")


@dataclass
class _ClientLedger:
    last_seen: float
    outstanding: Counter[Permit] = field(default_factory=Counter)


@dataclass(frozen=True)
class EndpointLimits:
    """The limits of one endpoint: the tightest of every spec block that names its URL."""

    max_concurrency: int
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @classmethod
    def combine(cls, configs: list[LLMConfig]) -> EndpointLimits:
        def tightest(values: list[int | None]) -> int | None:
            known = [v for v in values if v is not None]
            return min(known) if known else None

        return cls(
            max_concurrency=min(c.max_concurrency for c in configs),
            requests_per_minute=tightest([c.requests_per_minute for c in configs]),
            tokens_per_minute=tightest([c.tokens_per_minute for c in configs]),
        )


class ClusterLimiter:
    """The cluster side of the permit protocol; runs inside an async Ray actor (or a test)."""

    def __init__(
        self,
        limits: EndpointLimits,
        *,
        client_ttl_s: float = 20.0,
        long_poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = LimiterCore(
            max_concurrency=limits.max_concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            clock=clock,
        )
        self._clock = clock
        self._ttl_s = client_ttl_s
        self._long_poll_s = long_poll_s
        self._clients: dict[str, _ClientLedger] = {}
        self._released: asyncio.Event | None = None
        self._peak = 0
        self._lease_calls = 0
        self._report_calls = 0
        self._granted = 0
        self._reclaimed = 0

    # -- the protocol -----------------------------------------------------------
    async def lease(self, client_id: str, n: int, estimated_tokens_each: int = 0) -> Grant:
        """Up to ``n`` permits; waits up to ``long_poll_s`` for capacity before answering with none.

        An empty answer after the wait says ``retry_in_s=0``: ask again at once (the wait
        happened here, where a report can end it early).
        """
        self._lease_calls += 1
        deadline = self._clock() + self._long_poll_s
        while True:
            ledger = self._touch(client_id)
            self._reap()
            grant = self.core.try_acquire(max(1, n), estimated_tokens_each)
            if grant.permits:
                ledger.outstanding.update(grant.permits)
                self._granted += len(grant.permits)
                self._peak = max(self._peak, self.core.in_flight)
                return grant
            remaining = deadline - self._clock()
            if remaining <= 0:
                return Grant((), 0.0)
            wait_s = remaining if grant.retry_in_s is None else min(remaining, grant.retry_in_s)
            released = self._event()
            try:
                await asyncio.wait_for(released.wait(), timeout=wait_s)
            except TimeoutError:
                pass

    async def report(self, client_id: str, reports: list[tuple[Permit, PermitResult]]) -> None:
        """Finished permits of ``client_id``; permits not in its ledger (already reclaimed) are ignored."""
        self._report_calls += 1
        ledger = self._touch(client_id)
        accepted: list[tuple[Permit, PermitResult]] = []
        for permit, result in reports:
            if ledger.outstanding[permit] > 0:
                ledger.outstanding[permit] -= 1
                accepted.append((permit, result))
        ledger.outstanding += Counter()  # drop zero counts
        if accepted:
            self.core.release_many(accepted)
            self._wake()

    def heartbeat(self, client_id: str) -> None:
        """Keep ``client_id``'s leased permits from being reclaimed."""
        self._touch(client_id)

    def forget(self, client_id: str) -> int:
        """Take back every permit of ``client_id`` now (a worker that shut down or died)."""
        ledger = self._clients.pop(client_id, None)
        return self._reclaim(ledger) if ledger else 0

    def stats(self) -> LimiterStats:
        return LimiterStats(
            in_flight=self.core.in_flight,
            limit=self.core.limit,
            max_concurrency=self.core.max_concurrency,
            peak_in_flight=self._peak,
            lease_calls=self._lease_calls,
            report_calls=self._report_calls,
            permits_granted=self._granted,
            throttled=self.core.throttled_total,
            reclaimed=self._reclaimed,
            clients=len(self._clients),
        )

    # -- internals ------------------------------------------------------------
    def _touch(self, client_id: str) -> _ClientLedger:
        now = self._clock()
        ledger = self._clients.get(client_id)
        if ledger is None:
            ledger = self._clients[client_id] = _ClientLedger(last_seen=now)
        ledger.last_seen = now
        return ledger

    def _reap(self) -> None:
        now = self._clock()
        for client_id in [c for c, led in self._clients.items() if now - led.last_seen > self._ttl_s]:
            self._reclaim(self._clients.pop(client_id))

    def _reclaim(self, ledger: _ClientLedger) -> int:
        # Whether a dead worker's request reached the endpoint is unknown: count its estimate
        # as spent (no TPM refund) and do not touch the AIMD window.
        reports = [(p, PermitResult.error(tokens_used=p.estimated_tokens)) for p in ledger.outstanding.elements()]
        if reports:
            self.core.release_many(reports)
            self._reclaimed += len(reports)
            self._wake()
        return len(reports)

    def _event(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released

    def _wake(self) -> None:
        # Wake every waiting lease: swap in a fresh event so later waiters block again.
        if self._released is not None:
            self._released.set()
            self._released = None


# --------------------------------------------------------------------------------------
# Ray glue (imported lazily: this module's policy part is usable without a cluster)
# --------------------------------------------------------------------------------------


def start_limiter(limits: EndpointLimits, *, name: str | None = None, **kwargs: Any) -> Any:
    """Start a ``ClusterLimiter`` as an async Ray actor (no CPU reserved) and return its handle.

    It restarts if its process dies; its ledger is then empty, so in-flight permits are
    forgotten (a brief overshoot) rather than leaked.
    """
    import ray

    actor_cls = ray.remote(ClusterLimiter)
    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 3, "max_concurrency": 1000}
    if name:
        options["name"] = name
    return actor_cls.options(**options).remote(limits, **kwargs)


class RayPermitLessor:
    """Worker side: a ``PermitLessor`` that forwards to a ``ClusterLimiter`` actor under one client id."""

    def __init__(self, actor: Any, client_id: str) -> None:
        self._actor = actor
        self.client_id = client_id

    async def lease(self, n: int, estimated_tokens_each: int) -> Grant:
        return await self._actor.lease.remote(self.client_id, n, estimated_tokens_each)

    async def report(self, reports: list[tuple[Permit, PermitResult]]) -> None:
        await self._actor.report.remote(self.client_id, reports)


class Heartbeat:
    """A daemon thread that pings the limiter every ``interval_s`` so this client's permits stay leased.

    A thread, not a task: a stage that blocks its event loop on CPU work must not lose
    its permits for it.
    """

    def __init__(self, actor: Any, client_id: str, interval_s: float = 4.0) -> None:
        self._actor = actor
        self._client_id = client_id
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"limiter-heartbeat-{client_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            # Fire and forget: a lost ping only matters if every ping for client_ttl_s is lost.
            self._actor.heartbeat.remote(self._client_id)


def cluster_permit_source(actor: Any, client_id: str, *, batch_size: int = 16) -> LeasedPermitSource:
    """The ``PermitSource`` a worker's LLM client uses: batched leases from the cluster limiter.

    Reports are flushed every 10 ms (not the default 50 ms): a freed permit is usable by
    any worker only once its report arrives, and the long-polling ``lease`` hands it on as
    soon as it does.
    """
    return LeasedPermitSource(
        RayPermitLessor(actor, client_id), batch_size=batch_size, flush_interval_s=0.01, poll_interval_s=0.05
    )
