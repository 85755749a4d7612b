"""Submitted specs: 422 naming the bad field, and no path from a client reaching outside the data dir."""

from __future__ import annotations

import os

import pytest
from api_helpers import AUTH, minimal_spec


def _error(api, spec=None, content=None):
    if content is not None:
        resp = api.client.post(
            "/v1/runs", content=content, headers={**AUTH, "Content-Type": "application/json"}
        )
    else:
        resp = api.client.post("/v1/runs", json=spec, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert set(resp.json()) == {"error"}
    return resp.json()["error"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (minimal_spec(stages={"planning": {"k": 1}}), "stages.planning.k"),
        (minimal_spec(stages={"planning": {"judge": "maybe"}}), "stages.planning.judge"),
        (minimal_spec(llm={"temperature": 5}), "llm.temperature"),
        (minimal_spec(execution={"unit_size": 0}), "execution.unit_size"),
        (minimal_spec(surprise=True), "surprise"),
        ({"inputs": {"web": ["inputs/*.html"]}}, "name"),
        (minimal_spec(inputs={"web": ["inputs/*.nothing"]}), "inputs.web[0]"),
        (minimal_spec(inputs={"web": []}), "inputs.web"),
        (minimal_spec(llm={"api_key_env": "AGENTCPT_API_TOKEN"}), "llm.api_key_env"),
        (minimal_spec(judge_llm={"api_key_env": "AWS_SECRET_ACCESS_KEY_ID"}), "judge_llm.api_key_env"),
    ],
)
def test_a_bad_spec_is_422_naming_the_field(make_api, spec, field):
    api = make_api()
    err = _error(api, spec)
    assert err["field"] == field, err
    assert err["code"] == "invalid_spec"
    assert api.client.get("/v1/runs", headers=AUTH).json()["count"] == 0


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b'"a string"', b'{"name": "\\ud800"}'])
def test_a_body_that_is_not_a_json_spec_is_422(make_api, body):
    err = _error(make_api(), content=body)
    assert err["code"] == "invalid_spec"


def test_an_oversized_body_is_413(make_api):
    api = make_api()
    resp = api.client.post("/v1/runs", content=b"{" + b" " * (1 << 20) + b"}", headers=AUTH)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "pattern",
    [
        "../outside/*.html",
        "inputs/../../outside/*.html",
        "/etc/passwd",
        "{outside}/*.html",  # absolute path outside the data dir (filled in below)
        "%2e%2e/outside/*.html",
        "..%2Foutside%2F*.html",
        "%252e%252e/outside/*.html",
        "inputs\\..\\..\\outside\\*.html",
        "~/secrets/*.html",
        "inputs/\x00.html",
    ],
)
def test_input_globs_that_leave_the_data_dir_are_rejected(make_api, tmp_path, pattern):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.html").write_text("<p>secret</p>")
    api = make_api()
    pattern = pattern.replace("{outside}", str(outside))
    err = _error(api, minimal_spec(inputs={"web": [pattern]}))
    assert err["field"] == "inputs.web[0]", err
    assert api.client.get("/v1/runs", headers=AUTH).json()["count"] == 0


def test_a_symlink_pointing_out_of_the_data_dir_is_rejected(make_api, tmp_path, data_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text("<p>secret</p>")
    os.symlink(outside / "secret.html", data_dir / "inputs" / "link.html")
    os.symlink(outside, data_dir / "linkdir")
    api = make_api()
    assert _error(api, minimal_spec(inputs={"web": ["inputs/*.html"]}))["field"] == "inputs.web[0]"
    assert _error(api, minimal_spec(inputs={"web": ["linkdir/*.html"]}))["field"] == "inputs.web[0]"


def test_trajectory_and_decontamination_globs_are_confined_too(make_api):
    api = make_api()
    spec = minimal_spec(inputs={"web": ["inputs/*.html"], "trajectories": ["../x.jsonl"]})
    assert _error(api, spec)["field"] == "inputs.trajectories[0]"
    spec = minimal_spec(stages={"documents": {}, "corpus": {"decontaminate": ["/etc/*"]}})
    assert _error(api, spec)["field"] == "stages.corpus.decontaminate[0]"


@pytest.mark.parametrize("output_dir", ["../elsewhere", "/tmp", "runs/../../x", "%2e%2e", "runs/*"])
def test_an_output_dir_outside_the_data_dir_is_rejected(make_api, output_dir):
    err = _error(make_api(), minimal_spec(output_dir=output_dir))
    assert err["field"] == "output_dir", err


def test_paths_inside_the_data_dir_are_accepted_absolute_or_relative(make_api, data_dir):
    api = make_api()
    spec = minimal_spec(
        inputs={"web": [str(data_dir / "inputs" / "page.html")]}, output_dir=str(data_dir / "mine")
    )
    run = api.submit(spec)
    assert (data_dir / "mine" / run["run_id"] / "spec.yaml").exists()
    assert api.wait(run["run_id"])["state"] == "succeeded"
