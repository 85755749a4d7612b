"""Every run in the API and the dashboard: runs started with ``agentcpt run`` (not through the API)
are found under the output dir, listed with ``source: cli``, readable and cancellable; run
directories that are half-written or deleted break nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import AUTH, FAKE_DRIVER

from synth.ids import record_id
from synth.records import DocumentRecord
from synth.runstate import RunDir, RunStatus
from synth.shards import ShardStore
from testing.api_server import ApiServer, stop_driver, wait_for_state

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "configs" / "quickstart" / "pages"


def make_cli_run(data_dir: Path, run_id: str, state: str = "succeeded", docs: int = 3) -> Path:
    """A finished run directory as `agentcpt run` leaves it (spec, status, progress, shards)."""
    run_dir = data_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text("name: from-cli\nstages: {documents: {}}\n")
    records = [
        DocumentRecord(id=record_id("documents", [], {}, i), run_id=run_id, url=f"u{i}", text=f"cli doc {i}", n_chars=9)
        for i in range(docs)
    ]
    ShardStore(run_dir).write_unit("documents", "00000", records, run_id=run_id)
    RunDir(run_dir).write_status(RunStatus(run_id=run_id, name="from-cli", state=state))  # type: ignore[arg-type]
    return run_dir


@pytest.fixture
def live_cli_driver(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A driver started by hand, outside the API (the stand-in driver, in its `wait` mode)."""
    run_id = "by-hand-20250101-000000-abcd"
    run_dir = data_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text("name: by-hand\n")
    proc = subprocess.Popen([sys.executable, str(FAKE_DRIVER), str(run_dir / "spec.yaml"), run_id, "wait"])
    deadline = time.monotonic() + 30
    while (RunDir(run_dir).read_status() is None or RunDir(run_dir).read_status().state != "running") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    yield run_id, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_cli_run_is_listed_with_its_source_and_its_data_is_readable(make_api):
    api = make_api("succeed")
    api_run = api.submit()["run_id"]
    api.wait(api_run)
    make_cli_run(api.data_dir, "cli-20250101-000000-0001")
    listed = api.client.get("/v1/runs", headers=AUTH).json()
    by_id = {r["run_id"]: r for r in listed["data"]}
    assert listed["count"] == 2
    assert by_id["cli-20250101-000000-0001"]["source"] == "cli"
    assert by_id["cli-20250101-000000-0001"]["state"] == "succeeded"
    assert by_id[api_run]["source"] == "api"
    run = api.get("cli-20250101-000000-0001")
    assert run["name"] == "from-cli" and run["source"] == "cli"
    samples = api.client.get(
        "/v1/runs/cli-20250101-000000-0001/samples", params={"stage": "documents"}, headers=AUTH
    ).json()
    assert samples["count"] == 3 and samples["data"][0]["text"] == "cli doc 0"
    stats = api.client.get("/v1/runs/cli-20250101-000000-0001/stats", headers=AUTH).json()
    assert next(s for s in stats["stages"] if s["stage"] == "documents")["rows"] == 3
    page = api.client.get("/", headers=AUTH).text
    assert 'data-run-id="cli-20250101-000000-0001"' in page and 'class="badge source-cli"' in page
    assert "source-cli" in api.client.get("/runs/cli-20250101-000000-0001", headers=AUTH).text


def test_a_cli_run_started_after_the_api_is_found_by_its_id(make_api):
    api = make_api()
    assert api.client.get("/v1/runs", headers=AUTH).json()["count"] == 0
    make_cli_run(api.data_dir, "late-20250101-000000-0002")
    assert api.get("late-20250101-000000-0002")["source"] == "cli"


def test_a_running_cli_run_is_cancelled_through_the_api(make_api, live_cli_driver):
    run_id, proc = live_cli_driver
    api = make_api()
    assert api.get(run_id)["state"] == "running"
    resp = api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert resp.status_code == 202, resp.text
    assert api.wait(run_id)["state"] == "cancelled"
    assert proc.wait(timeout=30) == 1  # the driver saw the marker and stopped itself
    resume = api.client.post(f"/v1/runs/{run_id}/resume", headers=AUTH)
    assert resume.status_code == 409 and "command line" in resume.json()["error"]["message"]


def test_a_cli_run_whose_driver_died_reads_as_failed_and_its_directory_is_left_alone(make_api, live_cli_driver):
    run_id, proc = live_cli_driver
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    api = make_api()
    run = api.get(run_id)
    assert run["state"] == "failed" and "ended without a final state" in run["error"]
    status = RunDir(api.data_dir / "runs" / run_id).read_status()
    assert status is not None and status.state == "running"  # the API does not write CLI runs' status


def test_half_written_and_foreign_entries_under_the_output_dir_break_nothing(make_api):
    api = make_api()
    runs = api.data_dir / "runs"
    (runs / "spec-only-20250101-000000-0003").mkdir(parents=True)
    (runs / "spec-only-20250101-000000-0003" / "spec.yaml").write_text("name: x\n")
    garbage = runs / "garbage-20250101-000000-0004"
    garbage.mkdir()
    (garbage / "status.json").write_text('{"run_id": "garbage", "state": "runn')  # torn by a crash
    (garbage / "progress.json").write_text("{not json")
    (runs / "empty-dir").mkdir()
    (runs / "a-file.txt").write_text("not a run")
    (runs / ".hidden").mkdir()
    outside = api.data_dir.parent / "outside-run"
    make_cli_run(api.data_dir, "tmp-20250101-000000-0005")
    shutil.move(str(runs / "tmp-20250101-000000-0005"), outside)
    os.symlink(outside, runs / "link-20250101-000000-0006")  # could point anywhere: never followed
    listed = api.client.get("/v1/runs", headers=AUTH)
    assert listed.status_code == 200
    states = {r["run_id"]: r["state"] for r in listed.json()["data"]}
    assert states == {"spec-only-20250101-000000-0003": "queued", "garbage-20250101-000000-0004": "queued"}
    for run_id in states:
        for path in ("", "/shards", "/stats", "/samples?stage=documents"):
            assert api.client.get(f"/v1/runs/{run_id}{path}", headers=AUTH).status_code == 200, (run_id, path)
        assert api.client.get(f"/runs/{run_id}", headers=AUTH).status_code == 200
    assert api.client.get("/metrics", headers=AUTH).status_code == 200
    assert api.client.get("/", headers=AUTH).status_code == 200


def test_a_deleted_cli_run_leaves_the_listing_and_a_deleted_api_run_reads_as_failed(make_api):
    api = make_api("wait")
    run_dir = make_cli_run(api.data_dir, "gone-20250101-000000-0007")
    assert api.get("gone-20250101-000000-0007")["source"] == "cli"
    shutil.rmtree(run_dir)
    assert api.client.get("/v1/runs/gone-20250101-000000-0007", headers=AUTH).status_code == 404
    assert api.client.get("/v1/runs", headers=AUTH).json()["count"] == 0

    api_run = api.submit()["run_id"]
    api.wait(api_run, frozenset({"running"}))
    (pid,) = api.launcher.started_pids()
    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(api.data_dir / "runs" / api_run)
    run = api.wait(api_run)
    assert run["state"] == "failed" and "was deleted" in run["error"]
    assert not (api.data_dir / "runs" / api_run).exists()  # reading a deleted run recreates nothing
    for path in ("/shards", "/stats", "/samples?stage=documents"):
        assert api.client.get(f"/v1/runs/{api_run}{path}", headers=AUTH).status_code == 200, path
    assert api.client.post(f"/v1/runs/{api_run}/cancel", headers=AUTH).status_code == 409
    assert api.client.get(f"/runs/{api_run}", headers=AUTH).status_code == 200
    assert not (api.data_dir / "runs" / api_run).exists()


@pytest.mark.slow
def test_a_run_started_with_agentcpt_run_appears_in_the_api_and_is_cancelled_through_it(tmp_path):
    """The real CLI and the real server: `agentcpt run` by hand, seen and cancelled over HTTP."""
    from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

    data_dir = tmp_path / "data"
    (data_dir / "inputs").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:6]:
        shutil.copy(page, data_dir / "inputs")
    run_id = "by-cli-20250101-000000-beef"
    with FakeOpenAIServer(FakeServerConfig(latency_s=3.0)) as llm:
        spec = data_dir / "spec.yaml"
        spec.write_text(
            "name: by-cli\ninputs: {web: ['inputs/*.html']}\n"
            f"llm: {{base_url: '{llm.base_url}', model: fake-model, max_concurrency: 1}}\n"
            "stages: {documents: {min_chars: 100}, memory: {}}\nexecution: {unit_size: 1}\n"
        )
        env = {**os.environ, "AGENTCPT_DATA_DIR": str(data_dir), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("AGENTCPT_API_TOKEN", None)
        with open(tmp_path / "cli.log", "wb") as log:
            cli = subprocess.Popen(
                [sys.executable, "-m", "agentcpt.cli", "run", str(spec), "--run-id", run_id],
                cwd=data_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            with (
                ApiServer(data_dir, "cli-runs-test-token-0123456789") as server,
                httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client,
            ):
                deadline = time.monotonic() + 240
                run = None
                while time.monotonic() < deadline:
                    listed = client.get("/v1/runs").json()["data"]
                    run = next((r for r in listed if r["run_id"] == run_id), None)
                    if run is not None and run["state"] == "running":
                        break
                    time.sleep(0.5)
                assert run is not None and run["source"] == "cli" and run["state"] == "running", run
                page = client.get("/").text
                assert f'data-run-id="{run_id}"' in page and "source-cli" in page
                assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
                assert wait_for_state(client, run_id, timeout_s=180)["state"] == "cancelled"
            assert cli.wait(timeout=120) != 0
        finally:
            stop_driver(data_dir / "runs" / run_id)
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGKILL)
                cli.wait(timeout=30)
