"""Headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by selenium) opens the
dashboard of a real server, logs in with the token, sees the run and one sample.

The screenshots are kept under ``test-artifacts/`` at the repository root (gitignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from testing.api_server import ApiServer, stop_driver, wait_for_state

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "configs" / "quickstart" / "pages"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token-0123456789"


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium chromium-driver)"
)
def test_dashboard_in_chromium_shows_the_run_and_a_sample(tmp_path, fake_llm):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    data_dir = tmp_path / "data"
    (data_dir / "inputs").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:3]:
        shutil.copy(page, data_dir / "inputs")
    spec = {
        "name": "browser <check>",
        "inputs": {"web": ["inputs/*.html"]},
        # documents needs no LLM; the fake endpoint keeps the driver from starting the embedded one.
        "llm": {"base_url": fake_llm.base_url, "model": "fake-model"},
        "stages": {"documents": {"min_chars": 100}},
    }
    ARTIFACTS.mkdir(exist_ok=True)

    run_id = None
    with ApiServer(data_dir, TOKEN) as server:
        try:
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
                resp = client.post("/v1/runs", json=spec)
                assert resp.status_code == 201, resp.text
                run_id = resp.json()["run_id"]
                assert wait_for_state(client, run_id, timeout_s=300)["state"] == "succeeded"

            options = webdriver.ChromeOptions()
            options.binary_location = str(CHROMIUM)
            for arg in (
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--window-size=1280,1600",
            ):
                options.add_argument(arg)
            # An explicit driver path: selenium must not try to download one.
            browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
            try:
                wait = WebDriverWait(browser, 30)
                browser.get(f"{server.base_url}/")
                token_box = wait.until(ec.presence_of_element_located((By.ID, "token")))
                token_box.send_keys(TOKEN)
                browser.find_element(By.ID, "login-submit").click()

                row = wait.until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-run-id="{run_id}"]'))
                )
                assert "browser <check>" in row.text  # escaped in HTML, shown verbatim
                assert "succeeded" in row.text
                browser.save_screenshot(str(ARTIFACTS / "dashboard-runs.png"))

                row.find_element(By.LINK_TEXT, run_id).click()
                sample = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".sample .sample-text")))
                assert len(sample.text.strip()) >= 100  # a document's extracted text
                assert browser.find_element(By.ID, "run-state").text == "succeeded"
                stage_rows = browser.find_elements(By.CSS_SELECTOR, "tr.stage-row")
                assert [r.get_attribute("data-stage") for r in stage_rows] == ["documents"]
                browser.save_screenshot(str(ARTIFACTS / "dashboard-run.png"))
            finally:
                browser.quit()
        finally:
            if run_id is not None:
                stop_driver(data_dir / "runs" / run_id)
    assert (ARTIFACTS / "dashboard-run.png").stat().st_size > 10_000
