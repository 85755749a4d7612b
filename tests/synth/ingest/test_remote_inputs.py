"""Remote inputs through fsspec (issue 19): S3 globs against a local S3-compatible server (moto)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.llm_setup import UnavailableLLM
from synth.errors import SpecError
from synth.ingest.sources import enumerate_sources
from synth.inputs import resolve_globs
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.documents import STAGE as DOCUMENTS
from testing.s3_server import LocalS3

REPO = Path(__file__).resolve().parents[3]
PAGES = sorted((REPO / "configs" / "quickstart" / "pages").glob("*.html"))[:6]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalS3]:
    from s3fs import S3FileSystem

    with LocalS3() as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        S3FileSystem.clear_instance_cache()  # fsspec caches clients: the endpoint differs per test
        yield server
        S3FileSystem.clear_instance_cache()


def _documents(web: list[str], tmp_path: Path) -> list[tuple[str | None, str]]:
    spec = parse_spec({"name": "t", "inputs": {"web": web}, "stages": {"documents": {}}})
    no_llm = UnavailableLLM()
    ctx = StageContext(run_id="t", spec=spec, llm=no_llm, judge_llm=no_llm, run_dir=tmp_path, base_dir=REPO)
    prepared = DOCUMENTS.prepare(ctx)
    out = asyncio.run(DOCUMENTS.process(prepared.items, ctx))
    return sorted(((d.title, d.text) for d in out.records), key=lambda d: (d[0] or "", d[1]))


def test_an_s3_glob_lists_the_bucket_in_order_and_a_glob_matching_nothing_names_the_field(
    s3: LocalS3,
) -> None:
    s3.upload(PAGES, "bucket", "pages/")
    s3.upload(PAGES[:1], "bucket", "other/")
    found = resolve_globs(["s3://bucket/pages/*.html"], "inputs.web")
    assert [str(p) for p in found] == [f"s3://bucket/pages/{p.name}" for p in PAGES]
    with pytest.raises(SpecError, match=r"inputs\.web\[0\].*no file matches"):
        resolve_globs(["s3://bucket/nothing/*.html"], "inputs.web")


def test_documents_from_s3_are_the_documents_of_the_local_copy(s3: LocalS3, tmp_path: Path) -> None:
    s3.upload(PAGES, "bucket", "pages/")
    local = _documents([str(p) for p in PAGES], tmp_path / "local")
    remote = _documents(["s3://bucket/pages/*.html"], tmp_path / "remote")
    assert len(local) == len(PAGES) and remote == local


def test_jsonl_and_warc_inputs_are_read_at_their_offsets_from_s3(s3: LocalS3, tmp_path: Path) -> None:
    lines = [
        {"url": f"https://example.org/{i}", "text": f"Plain text page number {i}. " * 20} for i in range(3)
    ]
    jsonl = tmp_path / "pages.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    warc = tmp_path / "crawl.warc.gz"
    html = PAGES[0].read_bytes()
    payload = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + html
    record = (
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: https://example.org/page\r\n"
        b"WARC-Record-ID: <urn:uuid:1>\r\nContent-Type: application/http; msgtype=response\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload + b"\r\n\r\n"
    )
    warc.write_bytes(gzip.compress(record))
    s3.upload([jsonl, warc], "bucket", "mixed/")

    paths = resolve_globs(["s3://bucket/mixed/*"], "inputs.web")
    items, failures = enumerate_sources(paths, None)
    assert failures == [] and [i.ref for i in items] == [
        "s3://bucket/mixed/crawl.warc.gz#0",
        "s3://bucket/mixed/pages.jsonl#0",
        "s3://bucket/mixed/pages.jsonl#1",
        "s3://bucket/mixed/pages.jsonl#2",
    ]
    local = _documents([str(warc), str(jsonl)], tmp_path / "local")
    remote = _documents(["s3://bucket/mixed/*"], tmp_path / "remote")
    assert len(local) == 4 and remote == local


def test_an_output_dir_on_an_object_store_is_refused_with_the_reason() -> None:
    with pytest.raises(SpecError, match=r"output_dir.*object-store URL.*atomic rename"):
        parse_spec({"name": "t", "output_dir": "s3://bucket/runs"})
