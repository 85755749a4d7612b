"""``agentcpt run`` over ``inputs.web: ["s3://bucket/pages/*.html"]`` on a local S3 server (issue 19).

The server is moto's server mode on 127.0.0.1, started here; the run is a real ``agentcpt
run`` subprocess (its own local Ray, whose workers read the pages from S3). Its documents
must be those of the local copy of the same pages.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.llm_setup import UnavailableLLM
from synth.shards import ShardStore
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.documents import STAGE as DOCUMENTS
from testing.s3_server import LocalS3

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "configs" / "quickstart" / "pages").glob("*.html"))


def _key(title: str | None, text: str) -> tuple[str, str]:
    return (title or "", text)


def local_documents(tmp_path: Path) -> list[tuple[str, str]]:
    spec = parse_spec({"name": "t", "inputs": {"web": [str(p) for p in PAGES]}, "stages": {"documents": {}}})
    no_llm = UnavailableLLM()
    ctx = StageContext(run_id="t", spec=spec, llm=no_llm, judge_llm=no_llm, run_dir=tmp_path, base_dir=REPO)
    out = asyncio.run(DOCUMENTS.process(DOCUMENTS.prepare(ctx).items, ctx))
    return sorted(_key(d.title, d.text) for d in out.records)


@pytest.mark.slow
def test_agentcpt_run_over_an_s3_glob_gives_the_documents_of_the_local_copy(tmp_path: Path) -> None:
    with LocalS3() as s3:
        s3.upload(PAGES, "bucket", "pages/")
        spec = {
            "name": "s3-inputs",
            "inputs": {"web": ["s3://bucket/pages/*.html"]},
            "stages": {"documents": {}},
            "execution": {"unit_size": 8},
            "output_dir": "runs",
        }
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, **s3.env, "RAY_USAGE_STATS_ENABLED": "0"}
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from agentcpt.cli import main; sys.exit(main())",
             "run", "spec.yaml", "--run-id", "s3run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = ShardStore(tmp_path / "runs" / "s3run").read_records("documents")
    assert {r.source_type for r in records} == {"web"}
    remote = sorted(_key(r.title, r.text) for r in records)  # type: ignore[attr-defined]
    assert len(remote) >= 20 and remote == local_documents(tmp_path / "local")
