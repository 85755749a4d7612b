"""The dashboard's pages, rendered server-side (the browser test drives them in Chromium)."""

from __future__ import annotations

from api_helpers import AUTH, minimal_spec


def test_runs_page_lists_runs_and_escapes_their_names(make_api):
    api = make_api("succeed")
    run_id = api.submit(minimal_spec(name="<script>alert(1)</script>"))["run_id"]
    api.wait(run_id)
    page = api.client.get("/", headers=AUTH)
    assert page.status_code == 200
    assert f'data-run-id="{run_id}"' in page.text
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none' forbids scripts
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'http-equiv="refresh"' not in page.text  # nothing running: no auto-refresh


def test_run_page_shows_stage_progress_acceptance_tokens_and_escaped_sample_text(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    page = api.client.get(f"/runs/{run_id}", headers=AUTH)
    assert page.status_code == 200
    html = page.text
    assert 'id="run-state">succeeded<' in html
    assert 'data-stage="documents"' in html and 'data-stage="planning"' in html
    assert "2 (50.0%)" in html  # planning: 2 of 4 accepted
    assert "1200 prompt + 300 completion = 1500 tokens" in html
    # Default sample stage: the first with records (documents); its text is escaped.
    assert "Document number 0 about &lt;b&gt;tags&lt;/b&gt; &amp; entities." in html
    assert "records 1–5 of 7" in html
    planning = api.client.get(f"/runs/{run_id}?stage=planning", headers=AUTH).text
    assert "&lt;think&gt;plan 0&lt;/think&gt;" in planning
    assert "accepted: True" in planning and "reason: logic_discontinuity" in planning
    second_page = api.client.get(f"/runs/{run_id}?stage=documents&offset=5", headers=AUTH).text
    assert "records 6–7 of 7" in second_page and "Document number 5" in second_page


def test_a_running_run_page_refreshes_itself(make_api):
    api = make_api("wait")
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    html = api.client.get(f"/runs/{run_id}", headers=AUTH).text
    assert 'http-equiv="refresh"' in html
    assert "No records committed yet." in html
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    api.wait(run_id)


def test_unknown_or_malformed_run_pages_are_errors_not_crashes(make_api):
    api = make_api()
    assert api.client.get("/runs/ghost", headers=AUTH).status_code == 404
    assert api.client.get("/runs/-bad", headers=AUTH).status_code == 422
    assert api.client.get("/runs/ghost?offset=x", headers=AUTH).status_code == 422
