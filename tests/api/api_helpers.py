"""Constants and helpers shared by the control-plane tests (fixtures live in conftest.py)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.csrf import CSRF_FIELD
from api.services.launchers import LocalProcessLauncher
from api.settings import ApiSettings
from synth.runstate import TERMINAL_STATES

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAKE_DRIVER = Path(__file__).resolve().with_name("fake_driver.py")


def fake_driver_command(mode: str) -> Callable[[Path, str], list[str]]:
    return lambda spec_path, run_id: [sys.executable, str(FAKE_DRIVER), str(spec_path), run_id, mode]


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "api-test",
        "inputs": {"web": ["inputs/*.html"]},
        "stages": {"documents": {}},
    }
    spec.update(overrides)
    return spec


@dataclass
class ApiHarness:
    client: TestClient
    data_dir: Path
    launcher: LocalProcessLauncher

    def submit(self, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.client.post("/v1/runs", json=spec or minimal_spec(), headers=AUTH)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def get(self, run_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/v1/runs/{run_id}", headers=AUTH)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(
        self, run_id: str, states: frozenset[str] = TERMINAL_STATES, timeout_s: float = 30
    ) -> dict[str, Any]:
        """Poll GET /v1/runs/{id} until its state is one of ``states``."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get(run_id)
            if run["state"] in states:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run['state']} after {timeout_s} s: {run}")
            time.sleep(0.05)


def settings_for(data_dir: Path, token: str | None = TOKEN, **extra: Any) -> ApiSettings:
    return ApiSettings(data_dir=data_dir, api_token=SecretStr(token) if token is not None else None, **extra)


def form_token(html: str) -> str:
    """The CSRF token a dashboard page put into its forms."""
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def login(client: TestClient, token: str = TOKEN, next_path: str = "/") -> Any:
    """Log in through the dashboard's form as a browser would (login page, then post it)."""
    page = client.get("/")
    return client.post(
        "/login",
        data={"token": token, "next": next_path, CSRF_FIELD: form_token(page.text)},
        follow_redirects=False,
    )
