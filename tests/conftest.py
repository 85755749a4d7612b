"""Fixtures shared by every test package.

* ``ray_cluster`` — one two-node Ray cluster on this machine (1 CPU per node, no
  dashboard), connected in the test process, started once per session: Ray takes a few
  seconds to start, and two nodes make every runner test a multi-node test.
* ``fake_llm`` — the LLM engineer's fake OpenAI-compatible server in a child process
  (deterministic schema-valid replies), stopped after the test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

RAY_NODE_ARGS: dict[str, Any] = {
    "num_cpus": 1,
    # The object store only carries work items between driver and workers here.
    "object_store_memory": 128 * 1024**2,
}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A two-node ``ray.cluster_utils.Cluster``, with ``ray.init`` connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray gives a starting node a fixed 30 s to register; on a machine shared with other
    # heavy jobs that can run out, so a failed start is tried once more.
    for attempt in range(2):
        cluster = Cluster()
        try:
            cluster.add_node(**RAY_NODE_ARGS, include_dashboard=False)
            cluster.add_node(**RAY_NODE_ARGS)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level=logging.WARNING)
            break
        except Exception:
            ray.shutdown()
            cluster.shutdown()
            if attempt == 1:
                raise
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def fake_llm() -> Iterator[Any]:
    """A ``FakeOpenAIServer`` (no latency, schema responder) in a child process."""
    from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

    with FakeOpenAIServer(FakeServerConfig()) as server:
        yield server
