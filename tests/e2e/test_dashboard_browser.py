"""Headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by selenium) opens the
dashboard of a real server, logs in with the token, sees the run and one sample; and, for a
real run of every stage followed by a tiny CPT on its corpus, sees every chart drawn with data.

The screenshots are kept under ``test-artifacts/`` at the repository root (gitignored).
"""

from __future__ import annotations

import json
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
    # REST specs may use only the endpoints the operator lists (AGENTCPT_LLM_ENDPOINTS).
    env = {"AGENTCPT_LLM_ENDPOINTS": json.dumps([{"base_url": fake_llm.base_url}])}
    with ApiServer(data_dir, TOKEN, env=env) as server:
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


# ----------------------------------------------------------------------------- charts

LINE_CHARTS = (
    "records-rate", "failures", "llm-requests-rate", "llm-tokens-rate", "llm-latency", "llm-cost",
    "cpt-loss", "cpt-lr", "cpt-tokens-rate",
)  # fmt: skip
BAR_CHARTS = ("planning-reasons", "reasoning-correctness", "corpus-tokens")


def _chromium(profile: Path):  # -> selenium.webdriver.Chrome
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,1600",
    ):  # fmt: skip
        options.add_argument(arg)
    # An explicit driver path: selenium must not try to download one.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def train_tiny_cpt(run_dir: Path, work: Path) -> None:
    """CPT on the run's own corpus, as `make cpt-smoke` does but tiny: a 384-token BPE tokenizer and a
    2-layer Llama trained from the corpus texts, `agentcpt tokenize RUN`, then 12 trainer steps into
    ``runs/<id>/cpt-smoke`` (where the trainer writes its metrics.jsonl)."""
    import pyarrow.parquet as pq
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain import train
    from pretrain.config import CPTConfig
    from pretrain.tokenize import tokenize_command
    from synth.layout import RunLayout
    from synth.shards import ShardStore

    layout = RunLayout(run_dir)
    texts = [t for f in ShardStore(run_dir).files("corpus") for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"]))
    hf_dir = work / "hf"
    hf_dir.mkdir(parents=True)
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=128,
    )  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(config).save_pretrained(hf_dir)
    assert tokenize_command(run_id=run_dir.name, tokenizer=str(hf_dir), output_dir=str(run_dir.parent)) in (0, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and kinder to a shared machine
    try:
        train.run(
            CPTConfig.model_validate(
                {
                    "name": "dashboard-charts",
                    "model": {"hf_dir": str(hf_dir)},
                    "checkpoint": {"dir": str(layout.cpt_smoke), "interval": 1000, "export_hf": False},
                    "precision": "fp32",
                    "stages": [
                        {
                            "name": "stage1", "seq_length": 64, "train_steps": 12, "global_batch_size": 4,
                            "micro_batch_size": 2, "log_interval": 2,
                            "data": {"blend": str(layout.blend(1)), "holdout_kinds": []},
                            "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
                            "eval": {"interval": 4, "batches": 1},
                        }
                    ],
                }  # fmt: skip
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert layout.cpt_metrics(), "the trainer wrote no metrics.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium chromium-driver)"
)
def test_dashboard_in_chromium_draws_every_chart_from_a_real_run(tmp_path: Path) -> None:
    """Every stage through the API's real driver, then CPT on its corpus; the run page draws every
    chart with data, from the page alone (inline SVG: nothing is fetched)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig
    from testing.small_run import GROUNDED_RESPONDER, copy_inputs, every_stage_spec

    data_dir = tmp_path / "data"
    try:
        copy_inputs(data_dir)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    ARTIFACTS.mkdir(exist_ok=True)
    run_id = None
    with FakeOpenAIServer(FakeServerConfig(responder=GROUNDED_RESPONDER, latency_s=0.05)) as llm:
        env = {"AGENTCPT_LLM_ENDPOINTS": json.dumps([{"base_url": llm.base_url}])}
        with ApiServer(data_dir, TOKEN, env=env) as server:
            try:
                with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
                    resp = client.post("/v1/runs", json=every_stage_spec(llm.base_url, name="charts"))
                    assert resp.status_code == 201, resp.text
                    run_id = resp.json()["run_id"]
                    run = wait_for_state(client, run_id, timeout_s=400)
                    assert run["state"] == "succeeded", run
                run_dir = data_dir / "runs" / run_id
                train_tiny_cpt(run_dir, tmp_path / "cpt")

                browser = _chromium(tmp_path / "chromium-profile")
                try:
                    wait = WebDriverWait(browser, 30)
                    browser.get(f"{server.base_url}/runs/{run_id}")
                    wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
                    browser.find_element(By.ID, "login-submit").click()
                    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "figure.chart")))
                    figures = {f.get_attribute("data-chart"): f for f in browser.find_elements(By.CSS_SELECTOR, "figure.chart")}
                    assert set(figures) == {*LINE_CHARTS, *BAR_CHARTS}
                    points = {name: int(f.get_attribute("data-points")) for name, f in figures.items()}
                    assert all(n > 0 for n in points.values()), points
                    for name in LINE_CHARTS:
                        figure = figures[name]
                        lines = figure.find_elements(By.CSS_SELECTOR, "svg path.line")
                        assert lines and all(p.get_attribute("d").startswith("M") for p in lines), name
                        assert figure.find_element(By.CSS_SELECTOR, "svg").size["height"] > 100, name
                    for name in BAR_CHARTS:
                        figure = figures[name]
                        bars = figure.find_elements(By.CSS_SELECTOR, "svg rect.hbar")
                        assert len(bars) == int(figure.get_attribute("data-points")) > 0, name
                        assert max(float(b.get_attribute("width")) for b in bars) > 100, name
                    # Nothing on the page is fetched from elsewhere (no CDN): no src, no external href.
                    assert browser.find_elements(By.CSS_SELECTOR, "[src], link[href]") == []
                    height = browser.execute_script("return document.documentElement.scrollHeight")
                    browser.set_window_size(1280, min(int(height) + 100, 6000))
                    browser.save_screenshot(str(ARTIFACTS / "dashboard-charts.png"))
                finally:
                    browser.quit()
            finally:
                if run_id is not None:
                    stop_driver(data_dir / "runs" / run_id)
    assert (ARTIFACTS / "dashboard-charts.png").stat().st_size > 50_000
