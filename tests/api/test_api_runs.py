"""Runs over HTTP: submit, poll, list, cancel, resume, and what happens when a driver dies."""

from __future__ import annotations

import os

import psutil
from api_helpers import AUTH, minimal_spec


def test_submit_returns_201_and_the_run_reaches_succeeded(make_api):
    api = make_api("succeed")
    created = api.submit()
    assert created["state"] == "queued"
    assert created["run_id"].startswith("api-test-")
    run = api.wait(created["run_id"])
    assert run["state"] == "succeeded"
    assert run["error"] is None
    assert run["finished_at"] and run["started_at"] and run["duration_s"] >= 0
    stages = {s["stage"]: s for s in run["stages"]}
    assert stages["documents"]["records"] == 7 and stages["documents"]["failed"] == 1
    assert stages["documents"]["units_done"] == stages["documents"]["units_total"] == 2
    assert run["tokens"] == {"prompt": 1200, "completion": 300, "total": 1500}
    assert run["llm_requests"] == 8


def test_the_run_directory_holds_the_confined_spec_and_the_driver_log(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    run_dir = api.data_dir / "runs" / run_id
    spec_text = (run_dir / "spec.yaml").read_text()
    assert str(api.data_dir.resolve() / "inputs" / "*.html") in spec_text
    assert (run_dir / "driver.log").read_text().startswith("--- agentcpt api: attempt 1")


def test_list_is_newest_first_and_paginated(make_api):
    api = make_api("succeed")
    ids = [api.submit(minimal_spec(name=f"run{i}"))["run_id"] for i in range(3)]
    page = api.client.get("/v1/runs?limit=2", headers=AUTH).json()
    assert page["count"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [r["run_id"] for r in page["data"]] == [ids[2], ids[1]]
    rest = api.client.get("/v1/runs?limit=2&offset=2", headers=AUTH).json()
    assert [r["run_id"] for r in rest["data"]] == [ids[0]]


def test_a_driver_that_dies_without_a_final_state_makes_the_run_failed_with_its_log_tail(make_api):
    api = make_api("crash")
    run_id = api.submit()["run_id"]
    run = api.wait(run_id)
    assert run["state"] == "failed"
    assert "driver ended without a final state" in run["error"]
    assert "exit code 3" in run["error"]
    assert "fake driver: something broke" in run["error"]
    # The verdict is written back to the run directory, so `agentcpt status` agrees.
    status = (api.data_dir / "runs" / run_id / "status.json").read_text()
    assert '"failed"' in status


def test_cancel_returns_202_and_the_driver_stops_as_cancelled(make_api):
    api = make_api("wait")
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    resp = api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert resp.status_code == 202, resp.text
    # The fake driver polls every 50 ms, so on a loaded machine it may already have stopped by
    # the time the API reads the run back: then the answer is the final state, not "cancelling".
    answer = resp.json()
    assert (answer["state"], answer["cancel_requested"]) in {("running", True), ("cancelled", False)}, answer
    assert (api.data_dir / "runs" / run_id / "CANCEL").exists()
    run = api.wait(run_id)
    assert run["state"] == "cancelled"
    assert run["cancel_requested"] is False


def test_a_cancel_sent_while_queued_survives_the_driver_clearing_the_marker_at_start(make_api):
    api = make_api("slow-start")
    run_id = api.submit()["run_id"]
    resp = api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert resp.status_code == 202 and resp.json()["state"] == "queued"
    assert api.wait(run_id)["state"] == "cancelled"


def test_cancel_of_a_finished_run_is_a_409_conflict(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    resp = api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "conflict"


def test_resume_after_a_crash_relaunches_and_the_run_succeeds(make_api):
    api = make_api("crash-once")
    run_id = api.submit()["run_id"]
    assert api.wait(run_id)["state"] == "failed"
    resp = api.client.post(f"/v1/runs/{run_id}/resume", headers=AUTH)
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "queued" and resp.json()["attempts"] == 2
    run = api.wait(run_id)
    assert run["state"] == "succeeded", run
    assert run["error"] is None and run["attempts"] == 2
    log = (api.data_dir / "runs" / run_id / "driver.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log


def test_resume_after_cancel_clears_the_cancel_marker(make_api):
    api = make_api("wait")
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert api.wait(run_id)["state"] == "cancelled"
    resp = api.client.post(f"/v1/runs/{run_id}/resume", headers=AUTH)
    assert resp.status_code == 202
    assert not (api.data_dir / "runs" / run_id / "CANCEL").exists()
    assert api.wait(run_id, frozenset({"running"}))["state"] == "running"
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert api.wait(run_id)["state"] == "cancelled"


def test_resume_of_a_running_or_succeeded_run_is_a_409_conflict(make_api):
    api = make_api("wait")
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    assert api.client.post(f"/v1/runs/{run_id}/resume", headers=AUTH).status_code == 409
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    api.wait(run_id)
    ok = make_api("succeed")
    done = ok.submit()["run_id"]
    ok.wait(done)
    assert ok.client.post(f"/v1/runs/{done}/resume", headers=AUTH).status_code == 409


def test_unknown_run_is_404_and_malformed_run_id_is_422(make_api):
    api = make_api()
    resp = api.client.get("/v1/runs/no-such-run", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json()["error"] == {
        "code": "not_found",
        "message": "run 'no-such-run' not found",
        "field": "run_id",
    }
    for bad in ("-leading-dash", "a" * 129, "with%20space"):
        resp = api.client.get(f"/v1/runs/{bad}", headers=AUTH)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"]["field"] == "run_id"
    for path in ("/cancel", "/resume"):
        assert api.client.post(f"/v1/runs/no-such-run{path}", headers=AUTH).status_code == 404


def test_drivers_run_detached_in_their_own_session(make_api):
    api = make_api("wait")
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    (pid,) = api.launcher.started_pids()
    assert os.getsid(pid) == pid != os.getsid(0)
    assert "AGENTCPT_API_TOKEN" not in psutil.Process(pid).environ()
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    api.wait(run_id)


def test_a_restarted_api_still_knows_runs_and_reconciles_a_driver_it_did_not_start(make_api):
    first = make_api("wait")
    run_id = first.submit()["run_id"]
    first.wait(run_id, frozenset({"running"}))
    # A second app over the same data dir and database: a restarted API. Its launcher has
    # no handle on the driver, so it must find it by pid + start time.
    second = make_api("wait")
    assert second.get(run_id)["state"] == "running"
    assert second.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH).status_code == 202
    assert second.wait(run_id)["state"] == "cancelled"
