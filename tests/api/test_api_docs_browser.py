"""``/docs`` and ``/redoc`` render in headless Chromium with the network blocked (air-gapped), and
the pages' CSP (scripts from this server only) blocks nothing they need.

Everything but 127.0.0.1 goes to a dead proxy, so a CDN request would fail and leave the
page blank. Screenshots are kept under ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testing.api_server import ApiServer

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "docs-browser-token-0123456789"


def _ours_broken(message: str, base_url: str) -> bool:
    """A console error about the pages themselves: an inline script or one of our files blocked
    by the CSP, or one of our files failing to load."""
    if "Content Security Policy" in message:
        url = re.search(r"'(https?://[^']+)' violates", message)
        return url is None or url.group(1).startswith(base_url)
    return "net::ERR_" in message and message.startswith(base_url)


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium chromium-driver)"
)
def test_swagger_ui_and_redoc_render_with_the_network_blocked(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # The air gap: every host but loopback goes through a proxy that does not exist.
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with ApiServer(data_dir, TOKEN) as server:
        browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            wait = WebDriverWait(browser, 60)
            # The docs open with the dashboard's session, like its pages.
            browser.get(f"{server.base_url}/")
            wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
            browser.find_element(By.ID, "login-submit").click()
            wait.until(ec.presence_of_element_located((By.ID, "logout")))

            browser.get(f"{server.base_url}/docs")
            title = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
            assert "agentcpt control plane" in title.text
            operations = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
            paths = {op.text.replace("\u200b", "") for op in operations}
            assert {"/v1/runs", "/v1/runs/{run_id}/samples", "/metrics"} <= paths, paths
            browser.save_screenshot(str(ARTIFACTS / "docs-offline.png"))

            browser.get(f"{server.base_url}/redoc")
            heading = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".api-info h1")))
            assert "agentcpt control plane" in heading.text
            browser.save_screenshot(str(ARTIFACTS / "redoc-offline.png"))

            severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert [m for m in severe if _ours_broken(m, server.base_url)] == [], severe
            # The one off-site request either page makes is ReDoc's footer logo, which its CSP
            # blocks (it hides itself): nothing the pages need comes from outside.
            offsite = {u for m in severe for u in re.findall(r"'(https?://[^']+)' violates", m)}
            assert offsite <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, offsite
        finally:
            browser.quit()
    assert (ARTIFACTS / "docs-offline.png").stat().st_size > 10_000
