"""``agentcpt validate``: spec, globs and endpoints checked without running anything — and the
README's provider blocks pass it."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from synth.errors import SpecError
from synth.llm.config import is_openai_reasoning_model
from synth.validate import validate_command
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig

REPO = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, **spec: Any) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "v", "stages": {"planning": {}}, **spec}))
    return path


def validate(path: Path, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = validate_command(str(path), out=out, **kw)
    return code, out.getvalue()


def test_a_good_spec_and_endpoint_pass_and_nothing_runs(tmp_path: Path) -> None:
    with FakeOpenAIServer(mode="thread") as server:
        code, out = validate(write_spec(tmp_path, llm={"base_url": server.base_url, "model": "fake-model"}))
        assert server.stats().requests == 1  # the preflight's test completion, nothing else
    assert code == 0
    assert "spec ok; stages: planning" in out and f"llm: {server.base_url} ok (model fake-model" in out
    assert not (tmp_path / "runs").exists()


def test_a_failing_endpoint_exits_1_with_its_one_line_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCPT_TEST_KEY", "sk-wrong")
    with FakeOpenAIServer(FakeServerConfig(api_key="sk-right"), mode="thread") as server:
        spec = write_spec(tmp_path, llm={"base_url": server.base_url, "model": "fake-model", "api_key_env": "AGENTCPT_TEST_KEY"})
        code, out = validate(spec)
    assert code == 1
    assert out.splitlines()[-1] == f"llm: {server.base_url} answered 401: Incorrect API key provided"


def test_a_glob_matching_nothing_is_bad_input_relative_to_the_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, inputs={"web": ["pages/*.html"]}, stages={"documents": {}})
    with pytest.raises(SpecError, match=r"inputs.web\[0\]: no file matches 'pages/\*.html' \(relative to "):
        validate(spec)
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "a.html").write_text("<p>x</p>")
    code, out = validate(spec, skip_endpoints=True)
    assert code == 0 and "inputs: 1 web files" in out


def test_the_cli_validates_the_quickstart_from_another_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentcpt.cli", "validate", str(REPO / "configs" / "quickstart.yaml"), "--skip-endpoints"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "27 web files, 1 trajectory files" in proc.stdout


# --------------------------------------------------------------------------------------
# The README's provider sections
# --------------------------------------------------------------------------------------


def readme_llm_blocks() -> list[dict[str, Any]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Provider dialects", 1)[1].split("\n### ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)]
    return [b["llm"] for b in blocks]


def test_the_readme_has_a_block_per_provider_people_use() -> None:
    urls = [b["base_url"] for b in readme_llm_blocks()]
    models = [b["model"] for b in readme_llm_blocks()]
    assert urls.count("https://api.openai.com/v1") == 2  # a reasoning model and a chat model
    assert any(is_openai_reasoning_model(m) for m in models)
    assert any("Qwen3" in m for m in models)  # vLLM / SGLang
    assert any(b.get("extra_body", {}).get("chat_template_kwargs") == {"enable_thinking": False} for b in readme_llm_blocks())
    assert any("openrouter" in u for u in urls)


@pytest.mark.parametrize("block", readme_llm_blocks(), ids=lambda b: b["model"])
def test_each_readme_provider_block_passes_validate(block: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As written (no network here), then against a fake endpoint speaking that provider's
    # dialect: OpenAI's reasoning models refuse max_tokens and any temperature.
    assert validate(write_spec(tmp_path, llm=block), skip_endpoints=True)[0] == 0
    monkeypatch.setenv(block["api_key_env"], "sk-test")
    strict = ["max_tokens", "temperature"] if is_openai_reasoning_model(block["model"]) else []
    config = FakeServerConfig(model=block["model"], api_key="sk-test", reject_params=strict)
    with FakeOpenAIServer(config, mode="thread") as server:
        code, out = validate(write_spec(tmp_path, llm={**block, "base_url": server.base_url}))
    assert code == 0, out
