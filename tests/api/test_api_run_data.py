"""Shards, stats and samples of a run, read through the manifest."""

from __future__ import annotations

import pytest
from api_helpers import AUTH

from synth.shards import ShardStore


@pytest.fixture
def finished(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    assert api.wait(run_id)["state"] == "succeeded"
    return api, run_id


def test_shards_are_the_manifest_rows(finished):
    api, run_id = finished
    body = api.client.get(f"/v1/runs/{run_id}/shards", headers=AUTH).json()
    expected = [r.__dict__ for r in ShardStore(api.data_dir / "runs" / run_id).manifest_rows()]
    assert body["data"] == expected and body["count"] == 4
    assert {(r["stage"], r["unit"], r["kind"]) for r in body["data"]} == {
        ("documents", "00000", "records"),
        ("documents", "00000", "failed"),
        ("documents", "00001", "records"),
        ("planning", "00000", "records"),
    }
    only = api.client.get(f"/v1/runs/{run_id}/shards?stage=planning", headers=AUTH).json()
    assert [r["stage"] for r in only["data"]] == ["planning"]


def test_stats_give_per_stage_counts_acceptance_and_tokens(finished):
    api, run_id = finished
    stats = api.client.get(f"/v1/runs/{run_id}/stats", headers=AUTH).json()
    stages = {s["stage"]: s for s in stats["stages"]}
    assert stages["documents"]["rows"] == 7 and stages["documents"]["failed"] == 1
    assert stages["planning"]["accepted"] == 2 and stages["planning"]["acceptance_rate"] == 0.5
    assert stats["failures_by_kind"] == {"documents": {"dropped_too_short": 1}}
    assert stats["tokens"] == {"prompt": 1200, "completion": 300, "total": 1500}
    assert stages["planning"]["llm_prompt_tokens"] == 1200


def test_samples_page_through_units_in_order(finished):
    api, run_id = finished
    url = f"/v1/runs/{run_id}/samples"
    whole = api.client.get(url, params={"stage": "documents", "limit": 100}, headers=AUTH).json()
    assert whole["count"] == 7 and len(whole["data"]) == 7
    ids = [r["id"] for r in whole["data"]]
    # A page that straddles the two unit files.
    page = api.client.get(url, params={"stage": "documents", "limit": 3, "offset": 2}, headers=AUTH).json()
    assert [r["id"] for r in page["data"]] == ids[2:5]
    assert page["data"][0]["stage"] == "documents" and "<b>tags</b>" in page["data"][0]["text"]
    past = api.client.get(url, params={"stage": "documents", "offset": 50}, headers=AUTH).json()
    assert past["data"] == [] and past["count"] == 7
    plan = api.client.get(url, params={"stage": "planning", "limit": 1}, headers=AUTH).json()["data"][0]
    assert plan["action"] == {"tool": "search", "arguments": {"query": "q0"}}
    empty = api.client.get(url, params={"stage": "corpus"}, headers=AUTH).json()
    assert empty == {"stage": "corpus", "data": [], "count": 0, "limit": 20, "offset": 0}


BAD_QUERIES = [
    ({"stage": "nope"}, "stage"),
    ({"stage": "../documents"}, "stage"),
    ({"stage": "documents%2F..%2F"}, "stage"),
    ({}, "stage"),
    ({"stage": "documents", "limit": 0}, "limit"),
    ({"stage": "documents", "limit": 101}, "limit"),
    ({"stage": "documents", "offset": -1}, "offset"),
    ({"stage": "documents", "offset": 10**12}, "offset"),
    ({"stage": "documents", "limit": "many"}, "limit"),
]


def test_bad_sample_queries_are_422_naming_the_parameter(finished):
    api, run_id = finished
    for params, field in BAD_QUERIES:
        resp = api.client.get(f"/v1/runs/{run_id}/samples", params=params, headers=AUTH)
        assert resp.status_code == 422, (params, resp.text)
        assert resp.json()["error"]["field"] == field, params
    resp = api.client.get(f"/v1/runs/{run_id}/shards", params={"stage": "shards/../x"}, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "stage"


def test_run_data_of_an_unknown_run_is_404(make_api):
    api = make_api()
    for path in ("shards", "stats", "samples?stage=documents"):
        resp = api.client.get(f"/v1/runs/ghost/{path}", headers=AUTH)
        assert resp.status_code == 404, path
