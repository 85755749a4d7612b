"""Operator-bound endpoints and cluster: a submitted spec cannot aim the server's secrets.

Every refusal is a 422 naming the field, decided before anything is connected to: a
listener named by a refused spec receives nothing (not even a TCP connection).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from api_helpers import AUTH, minimal_spec, settings_for
from pydantic import ValidationError

from agentcpt.cli import main as cli_main
from api.settings import ApiSettings, LLMEndpoint, check_ray_address, get_api_settings


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that records every connection and what it was sent."""

    sock: socket.socket
    connections: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(0.5)
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            self.connections.append(data)
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    lst = Listener(sock)
    thread = threading.Thread(target=lst.serve, daemon=True)
    thread.start()
    yield lst
    sock.close()
    thread.join(timeout=5)


VLLM = LLMEndpoint(base_url="http://10.1.2.3:8000/v1", api_key_env="VLLM_API_KEY", name="vllm")


def _refused(api, spec) -> dict:
    before = api.client.get("/v1/runs", headers=AUTH).json()["count"]
    resp = api.client.post("/v1/runs", json=spec, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert api.client.get("/v1/runs", headers=AUTH).json()["count"] == before
    return resp.json()["error"]


def test_a_foreign_base_url_is_422_and_the_listener_receives_nothing(make_api, listener):
    api = make_api(llm_endpoints=[VLLM])
    for url in (f"http://127.0.0.1:{listener.port}/v1", f"http://localhost:{listener.port}/v1"):
        err = _refused(api, minimal_spec(llm={"base_url": url, "model": "m"}))
        assert err["field"] == "llm.base_url" and "does not allow" in err["message"], err
    judge = {"base_url": f"http://127.0.0.1:{listener.port}/v1", "model": "m"}
    err = _refused(api, minimal_spec(llm={"base_url": "vllm", "model": "m"}, judge_llm=judge))
    assert err["field"] == "judge_llm.base_url"
    time.sleep(0.3)
    assert listener.connections == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00::1]:8000/v1", "private"),
        ("http://10.0.0.7:8000/v1", "private"),
        ("http://192.168.1.10/v1", "private"),
        ("http://127.0.0.2:8010/v1", "loopback"),
        ("http://[::ffff:169.254.169.254]/v1", "link-local"),
        ("http://metadata.google.internal/v1", "local"),
        ("https://api.example.com/v1", None),
        ("embedded", None),  # not on this server's list
    ],
)
def test_addresses_not_on_the_list_are_422_naming_the_field(make_api, url, kind):
    err = _refused(make_api(llm_endpoints=[VLLM]), minimal_spec(llm={"base_url": url, "model": "m"}))
    assert err["field"] == "llm.base_url"
    if kind:
        assert f"a {kind} address" in err["message"], err


def test_another_api_key_env_on_an_allowed_endpoint_is_422(make_api):
    api = make_api(llm_endpoints=[VLLM])
    for env in ("AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "AGENTCPT_API_TOKEN"):
        err = _refused(api, minimal_spec(llm={"base_url": "vllm", "model": "m", "api_key_env": env}))
        assert err["field"] == "llm.api_key_env", err
    judge = {"base_url": "http://10.1.2.3:8000/v1", "model": "m", "api_key_env": "GITHUB_TOKEN"}
    err = _refused(api, minimal_spec(llm={"base_url": "vllm", "model": "m"}, judge_llm=judge))
    assert err["field"] == "judge_llm.api_key_env"


def test_an_allowed_endpoint_by_name_or_url_gets_its_bound_key(make_api):
    api = make_api("succeed", llm_endpoints=[VLLM])
    by_name = api.submit(minimal_spec(llm={"base_url": "vllm", "model": "m"}))
    by_url = api.submit(
        minimal_spec(llm={"base_url": "HTTP://10.1.2.3:8000/v1/", "model": "m", "api_key_env": "VLLM_API_KEY"})
    )
    for run in (by_name, by_url):
        stored = yaml.safe_load((api.data_dir / "runs" / run["run_id"] / "spec.yaml").read_text())
        assert stored["llm"]["base_url"] == "http://10.1.2.3:8000/v1"
        assert stored["llm"]["api_key_env"] == "VLLM_API_KEY"
        api.wait(run["run_id"])


def test_the_default_list_allows_only_embedded_and_sends_it_no_key(make_api):
    api = make_api("succeed")
    run = api.submit(minimal_spec())  # llm.base_url defaults to embedded
    stored = yaml.safe_load((api.data_dir / "runs" / run["run_id"] / "spec.yaml").read_text())
    assert stored["llm"]["base_url"] == "embedded" and stored["llm"]["api_key_env"] == ""
    api.wait(run["run_id"])
    err = _refused(make_api(), minimal_spec(llm={"base_url": "https://api.openai.com/v1", "model": "m"}))
    assert err["field"] == "llm.base_url"


@pytest.mark.parametrize(
    "address", ["this://x", "torch://x", "ray://10.0.0.1:10001", "http://10.0.0.1:8265", "127.0.0.1:{port}"]
)
def test_any_execution_ray_address_is_422_and_no_module_is_imported(make_api, listener, address):
    before = {"this", "torch"} & set(sys.modules)
    err = _refused(make_api(), minimal_spec(execution={"ray_address": address.format(port=listener.port)}))
    assert err["field"] == "execution.ray_address"
    assert {"this", "torch"} & set(sys.modules) == before  # `this://x` used to print the Zen of Python
    time.sleep(0.2)
    assert listener.connections == []


def test_agentcpt_llm_endpoints_and_ray_address_are_read_from_the_environment(monkeypatch, tmp_path):
    endpoints = [{"base_url": "http://vllm:8000/v1/", "api_key_env": "VLLM_API_KEY", "name": "vllm"}]
    monkeypatch.setenv("AGENTCPT_LLM_ENDPOINTS", json.dumps(endpoints))
    monkeypatch.setenv("AGENTCPT_RAY_ADDRESS", "http://ray-head:8265")
    monkeypatch.setenv("AGENTCPT_DATA_DIR", str(tmp_path))
    get_api_settings.cache_clear()
    try:
        settings = get_api_settings()
    finally:
        get_api_settings.cache_clear()
    assert settings.llm_endpoints == [
        LLMEndpoint(base_url="http://vllm:8000/v1", api_key_env="VLLM_API_KEY", name="vllm")
    ]
    assert settings.ray_address == "http://ray-head:8265"


@pytest.mark.parametrize("address", ["this://x", "torch://x", "ray://head:10001", "file:///etc/passwd", "a b:1"])
def test_an_operator_ray_address_that_ray_would_import_by_name_is_refused(address, tmp_path):
    with pytest.raises(ValueError):
        check_ray_address(address)
    with pytest.raises(ValidationError):
        ApiSettings(data_dir=tmp_path, ray_address=address)


def test_serve_exits_2_naming_a_malformed_endpoint_list(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AGENTCPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AGENTCPT_API_TOKEN", "a-real-token-0123456789abcdef")
    monkeypatch.setenv("AGENTCPT_LLM_ENDPOINTS", json.dumps([{"base_url": "ftp://x", "api_key_env": "K"}]))
    get_api_settings.cache_clear()
    try:
        assert cli_main(["serve", "--port", "1"]) == 2
    finally:
        get_api_settings.cache_clear()
    assert "AGENTCPT_LLM_ENDPOINTS" in capsys.readouterr().err


def test_endpoint_entries_are_checked(tmp_path):
    for bad in (
        {"base_url": "embedded", "api_key_env": "AGENTCPT_API_TOKEN"},
        {"base_url": "http://x/v1", "api_key_env": "NOT A NAME"},
        {"base_url": "http://x/v1", "name": "embedded"},
    ):
        with pytest.raises(ValidationError):
            LLMEndpoint(**bad)
    with pytest.raises(ValidationError, match="listed twice"):
        ApiSettings(data_dir=tmp_path, llm_endpoints=[VLLM, VLLM])
    assert settings_for(tmp_path).llm_endpoints == [LLMEndpoint(base_url="embedded")]
