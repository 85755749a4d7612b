"""LLM wiring for a run: endpoints on the driver, clients in the workers.

Driver side (``RunEndpoints``): resolve ``base_url: embedded`` by starting (or reusing) the
embedded endpoint, so workers get a real URL; start one cluster limiter actor per distinct
endpoint URL (``llm`` and ``judge_llm`` pointing at the same URL share one, with the
tightest of their limits); ``preflight()`` each endpoint before the first stage
(``synth.llm.preflight``: a broken endpoint fails the run before anything is spent); stop
what was started when the run ends.

Worker side (``open_worker_llms``): one ``LLMClient`` per endpoint config, all sharing the
run's request cache (``RunLayout.llm_cache``, one segment file per unit, so a resumed run
never pays twice for an answered request), one usage tracker per worker process, and, per
endpoint, one permit source leasing from that endpoint's limiter actor.

The embedded endpoint listens on 127.0.0.1 of the driver's machine: a cluster spanning
several machines needs ``base_url`` pointing at a served endpoint (vLLM, SGLang, …).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.limiter import EndpointLimits, Heartbeat, cluster_permit_source, lookup_limiter, start_limiter
from synth.layout import RunLayout
from synth.llm.accounting import UsageSnapshot
from synth.llm.config import LLMConfig
from synth.llm.preflight import EndpointCheck, check_endpoint, distinct_endpoints
from synth.spec import RunSpec

EMBEDDED = "embedded"
# Seconds a permit may serve one worker's requests before it goes back to the limiter
# (concurrency-only endpoints; see ClusterPermitSource).
PERMIT_REUSE_S = 5.0


def endpoint_configs(spec: RunSpec) -> list[LLMConfig]:
    """The LLM configs a run uses: ``llm``, and ``judge_llm`` if it is set."""
    return [spec.llm] if spec.judge_llm is None else [spec.llm, spec.judge_llm]


class RunEndpoints:
    """The driver's view of a run's LLM endpoints; a context manager (see the module docstring)."""

    def __init__(self, spec: RunSpec, *, run_id: str, needed: bool) -> None:
        self._spec = spec
        self._run_id = run_id
        self._needed = needed
        self._embedded: Any = None
        self._embedded_starting: Future[Any] | None = None
        self._released = threading.Event()  # ends the thread that launched the embedded endpoint
        self._limiters: dict[str, tuple[str, Any]] = {}
        self.spec = spec  # with embedded URLs resolved, once open

    def start_embedded(self) -> RunEndpoints:
        """Start the embedded endpoint on a thread now, so its model loads while Ray starts
        (about 9 s and 7 s here, one after the other before); ``open`` waits for it.

        The thread stays alive until ``close``: the server asks Linux for SIGTERM when its
        parent dies (``PR_SET_PDEATHSIG``), and for Linux the parent is the thread that
        launched it, not the process.
        """
        if self._needed and self._embedded_config() is not None and self._embedded_starting is None:
            self._embedded_starting = Future()
            threading.Thread(
                target=self._keep_embedded, args=(self._embedded_starting,), name="embedded-endpoint", daemon=True
            ).start()
        return self

    def _keep_embedded(self, started: Future[Any]) -> None:
        try:
            started.set_result(self._start_embedded())
        except BaseException as err:  # noqa: BLE001 (open() raises it)
            started.set_exception(err)
            return
        self._released.wait()

    def _embedded_config(self) -> LLMConfig | None:
        return next((c for c in endpoint_configs(self._spec) if c.base_url == EMBEDDED), None)

    def _start_embedded(self) -> Any:
        from synth.llm.embedded import ensure_endpoint

        cfg = self._embedded_config()
        assert cfg is not None
        return ensure_endpoint(
            port=cfg.embedded_port, batching=cfg.embedded_continuous_batching, temperature=cfg.temperature
        )

    def open(self) -> RunEndpoints:
        """Start the embedded endpoint if needed (or wait for ``start_embedded``), then one limiter actor per URL."""
        if not self._needed:
            return self
        if self._embedded_config() is not None:
            starting, self._embedded_starting = self._embedded_starting, None
            self._embedded = starting.result() if starting is not None else self._start_embedded()
            url = self._embedded.base_url
            updates: dict[str, Any] = {}
            if self._spec.llm.base_url == EMBEDDED:
                updates["llm"] = self._spec.llm.model_copy(update={"base_url": url})
            if self._spec.judge_llm is not None and self._spec.judge_llm.base_url == EMBEDDED:
                updates["judge_llm"] = self._spec.judge_llm.model_copy(update={"base_url": url})
            self.spec = self._spec.model_copy(update=updates)
        by_url: dict[str, list[LLMConfig]] = {}
        for cfg in endpoint_configs(self.spec):
            by_url.setdefault(cfg.base_url, []).append(cfg)
        session = uuid.uuid4().hex[:8]
        for url, configs in by_url.items():
            name = f"limiter-{self._run_id}-{hashlib.sha256(url.encode()).hexdigest()[:8]}-{session}"
            self._limiters[url] = (name, start_limiter(EndpointLimits.combine(configs), name=name))
        return self

    def preflight(self) -> list[EndpointCheck]:
        """Check every endpoint of the run (``synth.llm.preflight``); raises ``EndpointFailure``.

        A ``model: null`` (the embedded endpoint) is pinned to the model it serves, so workers
        need not ask ``/models`` again.
        """
        if not self._needed:
            return []
        checks = asyncio.run(_check_all(distinct_endpoints(self.spec.llm, self.spec.judge_llm)))
        by_name = {c.name: c for c in checks}
        updates: dict[str, Any] = {}
        if self.spec.llm.model is None:
            updates["llm"] = self.spec.llm.model_copy(update={"model": by_name["llm"].model})
        judge = self.spec.judge_llm
        if judge is not None and judge.model is None:
            model = by_name["judge_llm"].model if "judge_llm" in by_name else by_name["llm"].model
            updates["judge_llm"] = judge.model_copy(update={"model": model})
        if updates:
            self.spec = self.spec.model_copy(update=updates)
        return checks

    @property
    def limiters(self) -> Mapping[str, str]:
        """Limiter actor name per endpoint URL (workers look the actors up by name)."""
        return {url: name for url, (name, _) in self._limiters.items()}

    @property
    def embedded_url(self) -> str | None:
        return self._embedded.base_url if self._embedded is not None else None

    def limiter_stats(self) -> dict[str, Any]:
        import ray

        return {url: ray.get(actor.stats.remote()) for url, (_, actor) in self._limiters.items()}

    def close(self) -> None:
        import ray

        for _, actor in self._limiters.values():
            with contextlib.suppress(ray.exceptions.RayError):
                ray.kill(actor, no_restart=True)
        self._limiters.clear()
        starting, self._embedded_starting = self._embedded_starting, None
        if starting is not None:  # started early, never opened (Ray failed to start, say)
            with contextlib.suppress(Exception):
                self._embedded = starting.result()
        if self._embedded is not None:
            self._embedded.stop()  # a no-op unless this run started it
            self._embedded = None
        self._released.set()

    def __enter__(self) -> RunEndpoints:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _check_all(endpoints: list[tuple[str, LLMConfig]]) -> list[EndpointCheck]:
    return [await check_endpoint(name, cfg) for name, cfg in endpoints]


class UnavailableLLM:
    """The LLM of a session whose stages all declared ``uses_llm = False``: any call is an error."""

    @property
    def model_name(self) -> str:
        return "none"

    async def complete(self, messages: list[Any], schema: Any = None, **kwargs: Any) -> Any:
        from synth.llm.base import LLMConnectionError

        raise LLMConnectionError(
            "no LLM endpoint was started: every stage of this session declared uses_llm = False"
        )


@dataclass
class WorkerLLMs:
    """The LLM side of one worker's stage context."""

    llm: Any
    judge_llm: Any
    usage: Any
    cache: Any = None  # the run's RequestCache (the worker publishes a unit's segment at commit)
    clients: list[Any] = field(default_factory=list)
    permit_sources: list[Any] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)

    def snapshot(self) -> UsageSnapshot:
        """Cumulative usage of this worker process (the driver merges these exactly)."""
        return self.usage.snapshot()

    async def aclose(self) -> None:
        for hb in self.heartbeats:
            hb.stop()
        for src in self.permit_sources:
            await src.aclose()
        for client in self.clients:
            await client.aclose()
        if self.cache is not None:
            self.cache.close()


def open_worker_llms(
    spec: RunSpec, run_dir: Path, limiters: Mapping[str, str], *, client_id: str
) -> WorkerLLMs:
    """LLM clients for one worker process (call inside its event loop)."""
    from synth.llm.accounting import UsageTracker
    from synth.llm.cache import RequestCache
    from synth.llm.client import LLMClient

    cache = RequestCache(RunLayout(run_dir).llm_cache)
    usage = UsageTracker(price=spec.llm.price)
    out = WorkerLLMs(llm=None, judge_llm=None, usage=usage, cache=cache)
    sources: dict[str, Any] = {}
    for url, name in limiters.items():
        actor = lookup_limiter(name)
        # A permit may pass from one request to the next in this worker only where no
        # request or token bucket applies (pipelines.limiter.ClusterPermitSource).
        rated = any(
            c.requests_per_minute is not None or c.tokens_per_minute is not None
            for c in endpoint_configs(spec)
            if c.base_url == url
        )
        sources[url] = cluster_permit_source(actor, f"{client_id}:{url}", reuse_s=0.0 if rated else PERMIT_REUSE_S)
        out.permit_sources.append(sources[url])
        source = sources[url]
        hb = Heartbeat(actor, f"{client_id}:{url}", last_contact=lambda s=source: s.last_contact)
        out.heartbeats.append(hb.start())

    def client(cfg: LLMConfig, name: str) -> Any:
        c = LLMClient(cfg, name=name, limiter=sources.get(cfg.base_url), cache=cache, usage=usage)
        out.clients.append(c)
        return c

    out.llm = client(spec.llm, "llm")
    out.judge_llm = (
        out.llm if spec.judge_llm is None or spec.judge_llm == spec.llm else client(spec.judge_llm, "judge_llm")
    )
    return out
