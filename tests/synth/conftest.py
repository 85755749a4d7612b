"""Real small runs shared by the tests of what a run produces (card, export, datasets loading).

* ``full_run`` — every stage, on the session's Ray cluster (``testing.small_run``: four bundled
  sample pages, six real WebDancer trajectories, the fake OpenAI server answering through
  ``testing.pipeline_responder``), so each of the eight stages commits records.
* ``webdancer_run`` — the ``rollouts`` stage importing all 200 WebDancer trajectories (judge
  off: their outcome comes from exact matching or stays unknown).

Both are session-scoped: a run takes tens of seconds on two cores, and the tests only read it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _run(base: Path, spec: dict[str, Any], run_id: str, ray_address: str) -> Path:
    from pipelines.progress import LogDisplay
    from pipelines.runner import run_session
    from synth.spec import parse_spec

    result = run_session(
        parse_spec(spec),
        run_id=run_id,
        ray_address=ray_address,
        base_dir=base,
        display=LogDisplay(io.StringIO()),
        out=io.StringIO(),
        max_workers=2,
        print_summary=False,
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    return result.run_dir


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory, ray_cluster: Any) -> Iterator[Path]:
    from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig
    from testing.small_run import GROUNDED_RESPONDER, copy_inputs, every_stage_spec

    base = tmp_path_factory.mktemp("full-run")
    try:
        copy_inputs(base)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    with FakeOpenAIServer(FakeServerConfig(responder=GROUNDED_RESPONDER)) as server:
        yield _run(base, every_stage_spec(server.base_url), "every-stage", ray_cluster.address)


@pytest.fixture(scope="session")
def webdancer_run(tmp_path_factory: pytest.TempPathFactory, ray_cluster: Any) -> Iterator[Path]:
    from testing.fake_llm_server import FakeOpenAIServer
    from testing.small_run import WEBDANCER

    if not WEBDANCER.is_file():
        pytest.skip(f"{WEBDANCER} (the shared real trajectories) is absent")
    base = tmp_path_factory.mktemp("webdancer-run")
    with FakeOpenAIServer() as server:  # the run asks nothing; the endpoint only has to exist
        spec = {
            "name": "webdancer",
            "inputs": {"trajectories": [str(WEBDANCER.resolve())]},
            "llm": {"base_url": server.base_url, "model": "fake-model"},
            "stages": {"rollouts": {"judge": False}},
        }
        yield _run(base, spec, "webdancer", ray_cluster.address)
