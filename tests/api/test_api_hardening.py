"""API hardening: sessions, CSRF, failed-auth rate limit, body limit, security headers, local docs."""

from __future__ import annotations

import re
import time

import pytest
from api_helpers import AUTH, TOKEN, form_token, login, settings_for
from fastapi.testclient import TestClient

from api.csrf import CSRF_FIELD
from api.main import create_app
from api.ratelimit import FailedAuthLimiter
from api.sessions import SESSION_COOKIE

TEN_MIB = 10 * 1024 * 1024


def _session_cookie(resp) -> str:
    for header in resp.headers.get_list("set-cookie"):
        if header.startswith(f"{SESSION_COOKIE}="):
            return header
    raise AssertionError(f"no session cookie in {resp.headers}")


def _value(cookie_header: str) -> str:
    return cookie_header.split(";", 1)[0].split("=", 1)[1]


# -- sessions ---------------------------------------------------------------------------


def test_the_session_cookie_is_new_at_every_login_and_refused_after_logout(make_api):
    api = make_api()
    first = _value(_session_cookie(login(api.client)))
    api.client.cookies.clear()
    second = _value(_session_cookie(login(api.client)))
    assert first != second and len(first) >= 40
    assert TOKEN not in first + second
    # Both sessions open the dashboard, each on its own.
    api.client.cookies.clear()
    for value in (first, second):
        assert api.client.get("/", cookies={SESSION_COOKIE: value}).status_code == 200
    # Log the second out; a replay of its cookie is refused, the first still works.
    api.client.cookies.set(SESSION_COOKIE, second)
    page = api.client.get("/")
    out = api.client.post("/logout", data={CSRF_FIELD: form_token(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    api.client.cookies.clear()
    assert api.client.get("/", cookies={SESSION_COOKIE: second}).status_code == 401
    assert api.client.get("/docs", cookies={SESSION_COOKIE: second}).status_code == 401
    assert api.client.get("/", cookies={SESSION_COOKIE: first}).status_code == 200


def test_sessions_expire(make_api):
    api = make_api(session_ttl_s=1)
    cookie = _session_cookie(login(api.client))
    assert "Max-Age=1" in cookie
    value = _value(cookie)
    api.client.cookies.clear()
    assert api.client.get("/", cookies={SESSION_COOKIE: value}).status_code == 200
    time.sleep(1.2)
    assert api.client.get("/", cookies={SESSION_COOKIE: value}).status_code == 401


def test_a_session_ends_when_the_operator_rotates_the_token(data_dir):
    with TestClient(create_app(settings_for(data_dir))) as client:
        value = _value(_session_cookie(login(client)))
    rotated = "another-token-0123456789abcdef"
    with TestClient(create_app(settings_for(data_dir, token=rotated))) as client:
        assert client.get("/", cookies={SESSION_COOKIE: value}).status_code == 401


def test_cookies_are_httponly_samesite_strict_and_secure_behind_https(make_api):
    api = make_api()
    plain = _session_cookie(login(api.client))
    assert "HttpOnly" in plain and "samesite=strict" in plain.lower() and "Secure" not in plain
    https = TestClient(api.client.app, base_url="https://testserver")
    cookie = _session_cookie(login(https))
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Secure" in cookie
    csrf = next(c for c in https.get("/").headers.get_list("set-cookie") if c.startswith("agentcpt_csrf="))
    assert "HttpOnly" in csrf and "Secure" in csrf and "samesite=strict" in csrf.lower()


# -- CSRF -------------------------------------------------------------------------------


def test_state_changing_forms_need_this_browsers_csrf_token(make_api):
    api = make_api("wait")
    page = api.client.get("/")
    token = form_token(page.text)
    # No token, a wrong token, or a post from another site: 403, and nothing happens.
    for data, headers in (
        ({"token": TOKEN}, {}),
        ({"token": TOKEN, CSRF_FIELD: "x" * 43}, {}),
        ({"token": TOKEN, CSRF_FIELD: token}, {"Origin": "https://evil.example"}),
    ):
        resp = api.client.post("/login", data=data, headers=headers, follow_redirects=False)
        assert resp.status_code == 403, (data, headers)
        assert SESSION_COOKIE not in resp.headers.get("set-cookie", "")
    # A form from another site carries no cookie at all (SameSite=Strict).
    bare = TestClient(api.client.app)
    assert bare.post("/login", data={"token": TOKEN, CSRF_FIELD: token}).status_code == 403

    assert login(api.client).status_code == 303
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    run_page = api.client.get(f"/runs/{run_id}")
    assert 'id="cancel-run"' in run_page.text
    assert api.client.post(f"/runs/{run_id}/cancel", data={}).status_code == 403
    assert api.client.post("/logout", data={}).status_code == 403
    assert api.client.get("/").status_code == 200  # still logged in
    resp = api.client.post(
        f"/runs/{run_id}/cancel", data={CSRF_FIELD: form_token(run_page.text)}, follow_redirects=False
    )
    assert resp.status_code == 303
    assert api.wait(run_id)["state"] == "cancelled"


# -- failed-auth rate limit ---------------------------------------------------------------


def test_failed_bearer_tokens_are_rate_limited_per_client(make_api):
    api = make_api(auth_failures_per_window=5, auth_failure_window_s=60)
    for _ in range(5):
        assert api.client.get("/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    locked = api.client.get("/v1/runs", headers={"Authorization": "Bearer wrong"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    # Locked out: even the right token is refused from this address, so guessing learns nothing.
    assert api.client.get("/v1/runs", headers=AUTH).status_code == 429
    assert api.client.get("/healthz").status_code == 200


def test_failed_logins_are_rate_limited(make_api):
    api = make_api(auth_failures_per_window=3)
    for _ in range(3):
        assert login(api.client, token="guess-0123456789abcdef").status_code == 401
    resp = login(api.client)
    assert resp.status_code == 429 and "too many failed" in resp.text
    assert SESSION_COOKIE not in resp.headers.get("set-cookie", "")


def test_the_limiter_counts_per_address_within_its_window():
    now = [0.0]
    limiter = FailedAuthLimiter(limit=3, window_s=60, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after_s("10.0.0.1") == 60
    assert limiter.retry_after_s("10.0.0.2") is None
    now[0] = 61.0
    assert limiter.retry_after_s("10.0.0.1") is None
    for address in ("a", "b", "c"):  # bounded: the oldest address is forgotten
        limiter.failed(address)
    assert len(limiter._failures) == 2


# -- request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/runs"),
        ("POST", "/login"),
        ("POST", "/logout"),
        ("POST", "/v1/runs/some-run/cancel"),
        ("GET", "/healthz"),
        ("PUT", "/nowhere"),
    ],
)
def test_a_10_mib_body_is_413_on_every_path(make_api, method, path):
    api = make_api()
    resp = api.client.request(method, path, content=b"x" * TEN_MIB, headers=AUTH)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(make_api):
    api = make_api(max_body_bytes=64 * 1024)

    def chunks():
        for _ in range(64):
            yield b"x" * 16384

    resp = api.client.post("/v1/runs", content=chunks(), headers=AUTH)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    resp = api.client.post("/login", content=chunks())
    assert resp.status_code == 413


# -- headers and docs ---------------------------------------------------------------------


def test_every_response_forbids_sniffing_and_framing(make_api):
    api = make_api()
    for resp in (
        api.client.get("/healthz"),
        api.client.get("/v1/runs", headers=AUTH),
        api.client.get("/nowhere", headers=AUTH),
        api.client.get("/"),
    ):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]


def test_pages_allow_no_inline_script(make_api):
    api = make_api()
    dashboard = api.client.get("/", headers=AUTH)
    csp = dashboard.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # no script at all
    docs = api.client.get("/docs", headers=AUTH)
    docs_csp = docs.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]*)", docs_csp).group(1)
    assert script_src.strip() == "'self'"
    assert "<script>" not in docs.text and not re.search(r"<script(?![^>]*\bsrc=)", docs.text)


def test_docs_and_redoc_load_every_asset_from_this_server(make_api):
    api = make_api()
    for page in ("/docs", "/redoc"):
        html = api.client.get(page, headers=AUTH).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith("/docs/assets/") for r in refs), refs
        assert "cdn" not in html.lower() and "http" not in html.replace('"', "").split("<body>")[1]
        for ref in refs:
            asset = api.client.get(ref, headers=AUTH)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 100
    bundle = api.client.get("/docs/assets/swagger-ui-bundle.js", headers=AUTH)
    assert bundle.headers["content-type"].startswith("text/javascript") and len(bundle.content) > 1_000_000
    assert api.client.get("/docs/assets/redoc.standalone.js", headers=AUTH).status_code == 200
    assert api.client.get("/docs/assets/../main.py", headers=AUTH).status_code == 404
    assert api.client.get("/docs/assets/swagger-ui.css").status_code == 401
