"""schemathesis against /openapi.json, in process: no 5xx, every response matches its schema.

Bounded so the whole property run stays well under a minute on 2 cores. Runs submitted
by generated specs get a launcher that starts nothing (the HTTP surface is under test
here, not the driver); one run with committed shards is seeded under the run id that the
schema gives as its example, so the read endpoints are also exercised on real data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from api_helpers import AUTH, settings_for
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.modes import GenerationMode

from api.db import RunRow
from api.main import create_app
from api.services.launchers import (
    DriverHandle,
    DriverProbe,
    LauncherRegistry,
    LaunchRequest,
    LocalProcessLauncher,
)
from synth.ids import record_id
from synth.records import DocumentRecord, Failure, utc_now
from synth.runstate import RunDir, RunStatus
from synth.shards import ShardStore

EXAMPLE_RUN_ID = "quickstart-20250101-120000-1a2b3c"


class NoDriverLauncher(LocalProcessLauncher):
    """Accepts a launch without starting anything; the run then reads as failed (no driver)."""

    def launch(self, req: LaunchRequest) -> DriverHandle:
        return DriverHandle()

    def probe(self, handle: DriverHandle, log_path: Path) -> DriverProbe:
        return DriverProbe(alive=False, detail="no driver in this test")


def _seed_run(app, data_dir: Path) -> None:
    run_dir = data_dir / "runs" / EXAMPLE_RUN_ID
    docs = [
        DocumentRecord(
            id=record_id("documents", [], {}, i), run_id=EXAMPLE_RUN_ID, url=f"u{i}", text=f"t{i}", n_chars=2
        )
        for i in range(3)
    ]
    ShardStore(run_dir).write_unit(
        "documents", "00000", docs, [Failure(input_ids=["a"], error_kind="dropped_empty", message="empty")]
    )
    (run_dir / "spec.yaml").write_text("name: seeded\n")
    RunDir(run_dir).write_status(
        RunStatus(run_id=EXAMPLE_RUN_ID, name="seeded", state="succeeded", finished_at=utc_now())
    )
    with app.state.ctx.runs.sessions() as s:
        s.add(
            RunRow(
                run_id=EXAMPLE_RUN_ID,
                name="seeded",
                state="succeeded",
                backend="local",
                created_at=utc_now(),
                run_dir=str(run_dir),
                spec_path=str(run_dir / "spec.yaml"),
                log_path=str(run_dir / "driver.log"),
            )
        )
        s.commit()


@pytest.fixture
def api_schema(tmp_path):
    data_dir = tmp_path / "data"
    # The spec example in the schema reads inputs/pages/*.html: make it a valid submission.
    (data_dir / "inputs" / "pages").mkdir(parents=True)
    (data_dir / "inputs" / "pages" / "page.html").write_text("<p>x</p>")
    app = create_app(settings_for(data_dir), launchers=LauncherRegistry(local=NoDriverLauncher()))
    _seed_run(app, data_dir)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def _check(strategy, max_examples: int) -> None:
    @given(case=strategy)
    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(case):
        # positive_data_acceptance is left out: a schema-valid spec may still be refused
        # with 422 for semantic reasons (a glob that matches no file, a path outside the
        # data dir), and that is the documented contract.
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    run()


@pytest.mark.slow
def test_api_conforms_to_its_openapi_schema(api_schema):
    # schemathesis' pytest plugin (parametrize / from_fixture) does not run under pytest 9
    # here, so its strategies are driven with hypothesis directly: the same checks.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        for example in api_schema.get_strategies_from_examples(operation):
            _check(example, max_examples=5)
        _check(operation.as_strategy(GenerationMode.POSITIVE), max_examples=15)
        if len(operation.path_parameters) or len(operation.query) or len(operation.body):
            _check(operation.as_strategy(GenerationMode.NEGATIVE), max_examples=15)
