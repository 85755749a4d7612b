"""Fixtures for the control-plane tests: an app per test over a temp data dir.

Drivers are launched for real (detached processes), but run ``fake_driver.py``, which
follows the driver's on-disk contract in milliseconds. End-to-end tests use the real one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiHarness, fake_driver_command, settings_for
from fastapi.testclient import TestClient

from api.main import create_app
from api.services.launchers import LauncherRegistry, LocalProcessLauncher


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "inputs").mkdir(parents=True)
    (d / "inputs" / "page.html").write_text("<html><body><p>hello</p></body></html>")
    return d


@pytest.fixture
def make_api(data_dir: Path) -> Iterator[Callable[..., ApiHarness]]:
    """``make_api(mode="succeed")``: an app whose drivers are fake_driver.py in that mode."""
    opened: list[tuple[TestClient, LocalProcessLauncher]] = []

    def _make(mode: str = "succeed", **settings_extra: Any) -> ApiHarness:
        launcher = LocalProcessLauncher(command=fake_driver_command(mode))
        app = create_app(settings_for(data_dir, **settings_extra), launchers=LauncherRegistry(local=launcher))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append((client, launcher))
        return ApiHarness(client=client, data_dir=data_dir, launcher=launcher)

    yield _make
    for client, launcher in opened:
        client.__exit__(None, None, None)
        for pid in launcher.started_pids():  # a driver a failed test left running
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while launcher.started_pids() and time.monotonic() < deadline:  # polling reaps them
            time.sleep(0.05)
