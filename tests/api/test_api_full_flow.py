"""The whole flow over HTTP with the real driver: submit with a fake LLM, poll to done,
then read the run's shards, stats, samples and metrics.

The spec imports real agent trajectories (``../shared/data``) into ``rollouts``, whose judge
calls the LLM (the fake OpenAI server), next to ``documents`` over bundled sample pages.
The LLM is an operator-allowed endpoint named in the spec by its name; the fake server
answers only the key bound to it (any other bearer token gets 401), so the run succeeding
proves the driver sent that key and no other.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml
from api_helpers import AUTH, settings_for
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import LLMEndpoint
from synth.runstate import TERMINAL_STATES
from testing.api_server import stop_driver
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
PAGES = REPO / "configs" / "quickstart" / "pages"


BOUND_KEY = "bound-key-of-the-fake-endpoint-0123"


@pytest.mark.slow
def test_submit_poll_to_done_then_read_shards_stats_samples_and_metrics(tmp_path, monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the shared real trajectories) is absent")
    data_dir = tmp_path / "data"
    (data_dir / "inputs" / "pages").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:4]:
        shutil.copy(page, data_dir / "inputs" / "pages")
    lines = (SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl").read_text().splitlines()[:6]
    (data_dir / "inputs" / "traj.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "name": "full-flow",
        "inputs": {"web": ["inputs/pages/*.html"], "trajectories": ["inputs/traj.jsonl"]},
        "llm": {"base_url": "fake", "model": "fake-model", "max_concurrency": 8},
        "stages": {"documents": {"min_chars": 100}, "rollouts": {}},
        "execution": {"unit_size": 4},
    }
    # The driver inherits the API's environment: only the bound variable holds the right key.
    monkeypatch.setenv("FAKE_LLM_KEY", BOUND_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "the-wrong-key-for-this-endpoint")
    fake_llm = FakeOpenAIServer(FakeServerConfig(api_key=BOUND_KEY)).start()
    endpoint = LLMEndpoint(base_url=fake_llm.base_url, api_key_env="FAKE_LLM_KEY", name="fake")
    app = create_app(settings_for(data_dir, llm_endpoints=[endpoint]))
    run_id = None
    with TestClient(app) as client:
        try:
            resp = client.post("/v1/runs", json=spec, headers=AUTH)
            assert resp.status_code == 201, resp.text
            run_id = resp.json()["run_id"]
            stored = yaml.safe_load((data_dir / "runs" / run_id / "spec.yaml").read_text())["llm"]
            assert (stored["base_url"], stored["api_key_env"]) == (fake_llm.base_url, "FAKE_LLM_KEY")
            run = _poll(client, run_id)
            assert run["state"] == "succeeded", run
            stages = {s["stage"]: s for s in run["stages"]}
            assert stages["documents"]["records"] == 4
            assert stages["rollouts"]["records"] == 6 and stages["rollouts"]["llm_requests"] > 0
            assert run["tokens"]["total"] > 0

            shards = client.get(f"/v1/runs/{run_id}/shards", headers=AUTH).json()
            rows = {(r["stage"], r["kind"]): 0 for r in shards["data"]}
            for r in shards["data"]:
                rows[(r["stage"], r["kind"])] += r["rows"]
            assert rows[("documents", "records")] == 4 and rows[("rollouts", "records")] == 6

            stats = client.get(f"/v1/runs/{run_id}/stats", headers=AUTH).json()
            rollouts = next(s for s in stats["stages"] if s["stage"] == "rollouts")
            assert rollouts["rows"] == 6 and rollouts["accepted"] is not None
            assert rollouts["acceptance_rate"] == round(rollouts["accepted"] / 6, 4)
            assert stats["tokens"]["total"] == run["tokens"]["total"]
            assert stats["llm"]["rollouts"]["failures"] == {}  # a wrong key would be 401s here

            samples = client.get(
                f"/v1/runs/{run_id}/samples", params={"stage": "rollouts", "limit": 2}, headers=AUTH
            ).json()
            assert samples["count"] == 6 and len(samples["data"]) == 2
            assert all(s["source"].startswith("import:") for s in samples["data"])
            assert "<tool_call>" in samples["data"][0]["text"] or "<answer>" in samples["data"][0]["text"]

            listed = client.get("/v1/runs", headers=AUTH).json()
            assert [r["run_id"] for r in listed["data"]] == [run_id]
            metrics = client.get("/metrics", headers=AUTH).text
            assert f'agentcpt_stage_records_total{{run_id="{run_id}",stage="rollouts"}} 6.0' in metrics
        finally:
            if run_id is not None:
                stop_driver(data_dir / "runs" / run_id)
            fake_llm.stop()


def _poll(client: TestClient, run_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}", headers=AUTH).json()
        if run["state"] in TERMINAL_STATES or time.monotonic() > deadline:
            return run
        time.sleep(0.5)
