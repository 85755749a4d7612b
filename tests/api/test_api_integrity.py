"""A shard whose bytes no longer match its manifest sha256: the API answers 409 naming the file
(never 500, never silently different records); the manifest listing itself still works."""

from __future__ import annotations

from api_helpers import AUTH


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_a_409_naming_the_file_on_samples_stats_and_the_run_page(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    assert api.client.get(f"/v1/runs/{run_id}/stats", headers=AUTH).status_code == 200  # verified once, cached
    victim = api.data_dir / "runs" / run_id / "shards" / "documents" / "part-00001.parquet"
    _flip(victim)
    for path in (f"/v1/runs/{run_id}/samples?stage=documents&limit=100", f"/v1/runs/{run_id}/stats"):
        resp = api.client.get(path, headers=AUTH)
        assert resp.status_code == 409, (path, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "corrupt_shard" and str(victim) in error["message"]
    page = api.client.get(f"/runs/{run_id}", headers=AUTH)
    assert page.status_code == 409 and "part-00001.parquet" in page.text
    # Pages before the corrupt file and the manifest rows are still served.
    first = api.client.get(f"/v1/runs/{run_id}/samples?stage=documents&limit=4", headers=AUTH)
    assert first.status_code == 200 and len(first.json()["data"]) == 4
    assert api.client.get(f"/v1/runs/{run_id}/shards", headers=AUTH).status_code == 200
    assert api.client.get(f"/v1/runs/{run_id}/samples?stage=planning", headers=AUTH).status_code == 200
