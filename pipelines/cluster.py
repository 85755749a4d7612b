"""Ray: joining or starting a cluster, and the pool of worker actors the driver schedules onto.

Local by default: ``ray.init(address="local")`` starts a private instance sized to the
machine (``"local"``, not the default, so that a cluster someone started with ``ray start``
on this machine is never joined by accident), with the dashboard off unless
``AGENTCPT_RAY_INCLUDE_DASHBOARD=1`` (it serves Ray's own metrics, at a cost in memory).
``--ray-address`` / ``execution.ray_address`` joins an existing cluster instead.

The pool holds one ``UnitWorker`` actor per CPU of every alive node, pinned (softly) to
that node, so every node works and the manifest's ``worker`` column names them all. Actors
restart when their process dies and Ray retries the units they were running
(``max_task_retries``); the worker's commit protocol makes those retries exactly-once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from pipelines.fence import WORKER_NAMESPACE
from pipelines.units import UnitTask
from pipelines.worker import UnitWorker, WorkerJob
from synth.settings import get_settings

# A unit is retried this many times after its worker process died (not after a stage error:
# those are deterministic and fail the run, to be resumed after a fix).
UNIT_RETRIES_ON_WORKER_DEATH = 3


@contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """Connect to ``address`` (or start a local instance); yields the cluster address.

    A Ray connection already open in this process (tests, notebooks) is reused and left
    open; one opened here is closed on exit.
    """
    import ray

    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    # No usage-stats prompt or upload from a library call.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray gives a starting node a fixed 30 s to register with its GCS; on a machine
        # busy with other work that can run out, so a failed local start is tried once more.
        for attempt in range(2):
            try:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=get_settings().ray_include_dashboard,
                    **kwargs,
                )
                break
            except Exception:  # ray.init raises bare Exception for a node that timed out
                ray.shutdown()
                if attempt == 1:
                    raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass
class _Member:
    handle: Any
    node_id: str
    in_flight: int = 0


class WorkerPool:
    """``UnitWorker`` actors across the cluster, with least-loaded dispatch."""

    def __init__(self, job: WorkerJob, *, max_actors: int | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = ray.remote(UnitWorker)
        nodes = sorted(
            (n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1),
            key=lambda n: n["NodeID"],
        )
        # One slot per CPU, interleaved across nodes, so a cap on actors still uses every node.
        per_node = [[n["NodeID"]] * int(n["Resources"]["CPU"]) for n in nodes]
        slots = [node_id for group in zip_longest(*per_node) for node_id in group if node_id is not None]
        if max_actors is not None:
            slots = slots[:max_actors]
        if not slots:
            raise RuntimeError("the Ray cluster has no node with a CPU to run workers on")
        self._members = [
            _Member(
                actor_cls.options(
                    # Named, so that a later session of the run can end it (pipelines.fence).
                    name=f"worker-{job.run_id}-{job.session}-{i}" if job.session else None,
                    namespace=WORKER_NAMESPACE,
                    num_cpus=1,
                    max_restarts=-1,
                    max_task_retries=UNIT_RETRIES_ON_WORKER_DEATH,
                    # Soft: if the node dies, the actor restarts wherever there is room.
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
                ).remote(job),
                node_id,
            )
            for i, node_id in enumerate(slots)
        ]
        self._owner: dict[Any, _Member] = {}

    def __len__(self) -> int:
        return len(self._members)

    @property
    def handles(self) -> list[Any]:
        return [m.handle for m in self._members]

    def nodes(self) -> set[str]:
        return {m.node_id for m in self._members}

    def _least_loaded(self) -> _Member:
        return min(self._members, key=lambda m: m.in_flight)

    def submit_unit(self, task: UnitTask, items: list[Any] | None) -> Any:
        member = self._least_loaded()
        ref = member.handle.run_unit.remote(task, items)
        member.in_flight += 1
        self._owner[ref] = member
        return ref

    def submit_prepare(self, stage: str, unit_size: int, limit: int | None = None) -> Any:
        member = self._least_loaded()
        ref = member.handle.prepare.remote(stage, unit_size, limit)
        member.in_flight += 1
        self._owner[ref] = member
        return ref

    def done(self, ref: Any) -> None:
        member = self._owner.pop(ref, None)
        if member is not None:
            member.in_flight -= 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close every worker's LLM clients, then end the actors."""
        import ray

        refs = [m.handle.close.remote() for m in self._members]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for m in self._members:
            ray.kill(m.handle, no_restart=True)
        self._members = []
