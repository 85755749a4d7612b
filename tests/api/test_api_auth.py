"""Auth: bearer token on every path but /healthz, and refusing to start without one."""

from __future__ import annotations

import pytest
from api_helpers import AUTH, TOKEN, form_token, login, settings_for
from fastapi.testclient import TestClient

from agentcpt.cli import main as cli_main
from api.main import create_app
from api.security import InsecureConfigError, is_loopback
from api.settings import get_api_settings

PROTECTED = [
    ("GET", "/v1/runs"),
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs/some-run"),
    ("POST", "/v1/runs/some-run/cancel"),
    ("POST", "/v1/runs/some-run/resume"),
    ("GET", "/v1/runs/some-run/shards"),
    ("GET", "/v1/runs/some-run/stats"),
    ("GET", "/v1/runs/some-run/samples?stage=documents"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


BAD_HEADERS = {
    "none": {},
    "wrong": {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    "longer": {"Authorization": f"Bearer {TOKEN}x"},
    "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "basic": {"Authorization": f"Basic {TOKEN}"},
    "no-scheme": {"Authorization": TOKEN},
    "empty": {"Authorization": "Bearer"},
}


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("auth-data")
    # 66 wrong tokens from one client here: the failed-auth limit is tested on its own.
    settings = settings_for(data_dir, auth_failures_per_window=10_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_path_but_healthz_is_401_without_the_right_token(shared_client, method, path):
    for name, headers in BAD_HEADERS.items():
        resp = shared_client.request(method, path, headers=headers, json={} if method == "POST" else None)
        assert resp.status_code == 401, (name, resp.text)
        body = {
            "error": {"code": "unauthorized", "message": "missing or invalid bearer token", "field": None}
        }
        assert resp.json() == body
        assert resp.headers["www-authenticate"] == "Bearer"


def test_healthz_needs_no_token(make_api):
    assert make_api().client.get("/healthz").json() == {"status": "ok"}


def test_the_right_token_is_accepted_and_unknown_paths_are_404_in_the_common_shape(make_api):
    api = make_api()
    assert api.client.get("/v1/runs", headers=AUTH).status_code == 200
    assert api.client.get("/openapi.json", headers=AUTH).status_code == 200
    resp = api.client.get("/v1/nothing-here", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = api.client.delete("/v1/runs", headers=AUTH)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_dashboard_pages_answer_401_with_a_login_form_and_a_cookie_after_login(make_api):
    api = make_api()
    page = api.client.get("/")
    assert page.status_code == 401 and 'action="/login"' in page.text
    assert api.client.get("/runs/anything").status_code == 401
    wrong = login(api.client, token="nope")
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    ok = login(api.client, next_path="//evil.example/x")
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = next(c for c in ok.headers.get_list("set-cookie") if c.startswith("agentcpt_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie  # a random session id, never the token
    assert api.client.get("/").status_code == 200
    # The cookie opens dashboard pages only, not the JSON API (no cross-site API calls).
    assert api.client.get("/v1/runs").status_code == 401
    api.client.post("/logout", data={"csrf_token": form_token(api.client.get("/").text)})
    assert api.client.get("/").status_code == 401


def test_bearer_header_also_opens_dashboard_pages(make_api):
    assert make_api().client.get("/", headers=AUTH).status_code == 200


@pytest.mark.parametrize("token", ["changeme", "CHANGEME-please", "secret", "short-token"])
def test_placeholder_or_short_tokens_are_refused_at_start(data_dir, token):
    with pytest.raises(InsecureConfigError):
        create_app(settings_for(data_dir, token=token))


def test_no_token_refuses_to_start_unless_insecure_localhost(data_dir):
    with pytest.raises(InsecureConfigError, match="AGENTCPT_API_TOKEN is not set"):
        create_app(settings_for(data_dir, token=None))
    app = create_app(settings_for(data_dir, token=None), insecure_localhost=True)
    assert app.state.ctx.auth.enabled is False


def test_serve_command_refuses_without_token_or_off_loopback(monkeypatch, data_dir, capsys):
    monkeypatch.setenv("AGENTCPT_DATA_DIR", str(data_dir))
    monkeypatch.delenv("AGENTCPT_API_TOKEN", raising=False)
    get_api_settings.cache_clear()
    try:
        assert cli_main(["serve", "--port", "1"]) == 2
        assert "AGENTCPT_API_TOKEN is not set" in capsys.readouterr().err
        assert cli_main(["serve", "--insecure-localhost", "--host", "0.0.0.0", "--port", "1"]) == 2
        assert "loopback" in capsys.readouterr().err
        monkeypatch.setenv("AGENTCPT_API_TOKEN", "changeme")
        get_api_settings.cache_clear()
        assert cli_main(["serve", "--port", "1"]) == 2
        assert "placeholder" in capsys.readouterr().err
    finally:
        get_api_settings.cache_clear()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
