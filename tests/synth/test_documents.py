"""The documents stage: HTML / WARC / JSONL inputs to clean documents, every drop with its reason."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from synth.records import DocumentRecord, Failure
from synth.spec import parse_spec
from synth.stage import StageContext, StageOutput
from synth.stages.documents import STAGE, DocumentsConfig
from testing.scripted_llm import ScriptedLLM

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
REPO = Path(__file__).resolve().parents[2]
QUICKSTART_PAGES = REPO / "configs" / "quickstart" / "pages"

BOILERPLATE_MARKERS = [
    "Zebra-cookie-consent-text",
    "Manage preferences",
    "Quokka-nav-weather-link",
    "Local news",
    "Pelican-sidebar-most-read",
    "Walrus-newsletter-signup",
    "Narwhal-footer-legal",
    "All rights reserved",
]


def _ctx(tmp_path: Path, web: list[str], **documents: Any) -> StageContext:
    spec = parse_spec({"name": "t", "inputs": {"web": web}, "stages": {"documents": documents}})
    llm = ScriptedLLM(lambda messages, schema: "")
    return StageContext(
        run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, seed=0, base_dir=tmp_path
    )


def _run(ctx: StageContext) -> tuple[list[Failure], StageOutput]:
    prepared = STAGE.prepare(ctx)
    return prepared.dropped, asyncio.run(STAGE.process(prepared.items, ctx))


def _copy(name: str, tmp_path: Path, as_name: str | None = None) -> Path:
    dest = tmp_path / (as_name or name)
    shutil.copy(FIXTURES / name, dest)
    return dest


def _html(title: str, body: str) -> bytes:
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><nav><a href='/'>Home</a> <a href='/news'>News</a></nav><article><h1>{title}</h1>{body}</article>"
        f"<footer>Copyright 2024. All rights reserved.</footer></body></html>"
    ).encode()


ARTICLE_BODY = (
    "<p>The Orrin Hut on Mount Calder was rebuilt in 2011 after an avalanche destroyed the old building in 2009. "
    "It now sleeps 60 climbers and is staffed from June to September every year by two wardens.</p>"
    "<p>About 4,800 climbers attempt the summit each year, most of them by the north ridge, which takes "
    "two days with a night at the hut at 2,650 metres above sea level.</p>"
)


def _write_warc(path: Path, pages: list[tuple[str, bytes, str]], *, extra_records: bool = True) -> None:
    """A gzipped WARC: one response record per (url, body, content type), plus request/warcinfo noise."""
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        if extra_records:
            writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))
        for url, body, content_type in pages:
            if extra_records:
                req_headers = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example")], is_http_request=True)
                writer.write_record(writer.create_warc_record(url, "request", http_headers=req_headers))
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


def test_nav_cookie_sidebar_and_footer_text_is_not_in_extracted_text(tmp_path: Path) -> None:
    _copy("article_with_chrome.html", tmp_path)
    dropped, out = _run(_ctx(tmp_path, ["*.html"]))
    assert dropped == [] and out.failures == []
    (doc,) = out.records
    assert isinstance(doc, DocumentRecord)
    for marker in BOILERPLATE_MARKERS:
        assert marker not in doc.text, marker
    assert "reopened on 4 May 2024" in doc.text and "1.2 million ferry passengers" in doc.text
    assert doc.title == "Greywick ferry terminal reopens after 14-month rebuild"
    assert doc.date == "2024-05-06"
    assert doc.url == "https://www.greywickgazette.example/local/ferry-terminal-reopens"
    assert doc.language == "en" and doc.source_type == "web" and doc.n_chars == len(doc.text)


def test_title_falls_back_to_h1_when_the_page_title_is_boilerplate(tmp_path: Path) -> None:
    _copy("boilerplate_title.html", tmp_path)
    _, out = _run(_ctx(tmp_path, ["*.html"]))
    (doc,) = out.records
    assert doc.title == "Ashby Rowing Club wins the 2024 river regatta"


def test_page_with_no_main_text_is_dropped_with_its_reason(tmp_path: Path) -> None:
    _copy("nav_only.html", tmp_path)
    _copy("article_with_chrome.html", tmp_path)
    _, out = _run(_ctx(tmp_path, ["*.html"]))
    assert len(out.records) == 1
    (failure,) = out.failures
    assert failure.error_kind == "dropped_no_main_text"
    assert failure.input_ids == ["nav_only.html"] and "nav_only.html" in failure.message


def test_short_and_long_documents_are_dropped_with_counted_reasons(tmp_path: Path) -> None:
    _copy("article_with_chrome.html", tmp_path)  # ~950 chars of text
    (tmp_path / "short.html").write_bytes(
        _html("A short note", "<p>The hut opened on 1 June 2024 for the summer season with new beds.</p>")
    )
    _, out = _run(_ctx(tmp_path, ["*.html"], min_chars=200, max_chars=600))
    kinds = sorted(f.error_kind for f in out.failures)
    assert kinds == ["dropped_too_long", "dropped_too_short"]
    assert out.records == []


def test_language_filter_drops_documents_in_other_languages(tmp_path: Path) -> None:
    (tmp_path / "en.html").write_bytes(_html("Orrin Hut", ARTICLE_BODY))
    german = (
        "<p>Die Orrin-Hütte am Mount Calder wurde 2011 wieder aufgebaut, nachdem eine Lawine das alte Gebäude "
        "im Jahr 2009 zerstört hatte. Sie bietet heute 60 Bergsteigern Platz und ist von Juni bis September "
        "von zwei Hüttenwirten bewirtschaftet.</p><p>Jedes Jahr versuchen etwa 4.800 Bergsteiger den Gipfel zu "
        "erreichen, die meisten über den Nordgrat, für den man zwei Tage mit einer Übernachtung braucht.</p>"
    )
    (tmp_path / "de.html").write_bytes(_html("Orrin-Hütte", german))
    _, out = _run(_ctx(tmp_path, ["*.html"], languages=["en"]))
    assert [d.language for d in out.records] == ["en"]
    (failure,) = out.failures
    assert failure.error_kind == "dropped_language" and "'de'" in failure.message


# ---------------------------------------------------------------------------
# Input formats
# ---------------------------------------------------------------------------


def test_warc_with_three_response_records_yields_three_documents(tmp_path: Path) -> None:
    urls = [f"https://calder.example/page-{i}" for i in range(3)]
    _write_warc(
        tmp_path / "crawl.warc.gz",
        [
            (
                u,
                _html(f"Orrin Hut report {i}", ARTICLE_BODY.replace("2011", str(2011 + i))),
                "text/html; charset=utf-8",
            )
            for i, u in enumerate(urls)
        ],
    )
    dropped, out = _run(_ctx(tmp_path, ["*.warc.gz"]))
    assert dropped == [] and out.failures == []
    assert [d.url for d in out.records] == urls
    assert {d.source_type for d in out.records} == {"warc"}
    assert len({d.id for d in out.records}) == 3
    assert all("Copyright" not in d.text for d in out.records)


def test_non_html_and_error_responses_in_a_warc_are_dropped_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "mixed.warc"
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=False)
        ok = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        png = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
        missing = StatusAndHeaders("404 Not Found", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        for url, headers, body in [
            ("https://x.example/a", ok, _html("Orrin Hut", ARTICLE_BODY)),
            ("https://x.example/logo.png", png, b"\x89PNG...."),
            ("https://x.example/gone", missing, b"<html>gone</html>"),
        ]:
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )
    dropped, out = _run(_ctx(tmp_path, ["*.warc"]))
    assert [d.url for d in out.records] == ["https://x.example/a"]
    assert sorted(f.error_kind for f in dropped) == ["dropped_http_status", "dropped_not_html"]
    assert all("mixed.warc" in f.message for f in dropped)


def test_jsonl_lines_with_html_or_text_become_documents_and_keep_their_source_type(tmp_path: Path) -> None:
    observation = (
        "Search results for 'Orrin Hut capacity': 1. The Orrin Hut on Mount Calder sleeps 60 climbers and is "
        "open from June to September. 2. The hut was rebuilt in 2011 after an avalanche in 2009."
    )
    lines = [
        {
            "url": "https://calder.example/hut",
            "html": _html("Orrin Hut", ARTICLE_BODY).decode(),
            "crawl_id": 7,
        },
        {
            "url": "tool://search?q=orrin+hut",
            "text": observation * 2,
            "source_type": "tool_response",
            "title": "search",
        },
        {"url": "https://calder.example/empty"},
        "not json at all",
    ]
    path = tmp_path / "pages.jsonl"
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    dropped, out = _run(_ctx(tmp_path, ["*.jsonl"]))
    assert [(d.url, d.source_type) for d in out.records] == [
        ("https://calder.example/hut", "jsonl"),
        ("tool://search?q=orrin+hut", "tool_response"),
    ]
    assert out.records[1].text.startswith("Search results") and out.records[1].title == "search"
    assert sorted((f.error_kind, f.input_ids[0]) for f in dropped) == [
        ("invalid_input", "pages.jsonl#2"),
        ("invalid_input", "pages.jsonl#3"),
    ]
    assert "pages.jsonl:3" in dropped[0].message or "pages.jsonl:3" in dropped[1].message


def test_a_broken_file_is_reported_by_name_and_the_rest_still_run(tmp_path: Path) -> None:
    _copy("article_with_chrome.html", tmp_path)
    (tmp_path / "broken.warc.gz").write_bytes(gzip.compress(b"WARC/1.0\r\nthis is not a warc record")[:25])
    (tmp_path / "empty.html").write_bytes(b"")
    dropped, out = _run(_ctx(tmp_path, ["*"]))
    by_file = {f.input_ids[0].split("#")[0]: f for f in dropped}
    assert set(by_file) == {"broken.warc.gz", "empty.html"}
    assert all(f.error_kind == "unreadable_input" for f in dropped)
    assert (
        "broken.warc.gz" in by_file["broken.warc.gz"].message
        and "empty.html" in by_file["empty.html"].message
    )
    assert [d.title for d in out.records] == ["Greywick ferry terminal reopens after 14-month rebuild"]


def test_a_truncated_warc_keeps_the_records_before_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "cut.warc.gz"
    _write_warc(
        path,
        [(f"https://calder.example/{i}", _html(f"Report {i}", ARTICLE_BODY), "text/html") for i in range(3)],
        extra_records=False,
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # damage the last record only
    dropped, out = _run(_ctx(tmp_path, ["*.warc.gz"]))
    assert len(out.records) + len(out.failures) >= 2
    assert [d.url for d in out.records][:2] == ["https://calder.example/0", "https://calder.example/1"]
    assert any("cut.warc.gz" in f.message for f in dropped + out.failures)


def test_unsupported_file_types_are_reported_not_ignored(tmp_path: Path) -> None:
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    _copy("article_with_chrome.html", tmp_path)
    dropped, out = _run(_ctx(tmp_path, ["*"]))
    assert [(f.error_kind, f.input_ids) for f in dropped] == [("unsupported_input", ["notes.pdf"])]
    assert len(out.records) == 1


# ---------------------------------------------------------------------------
# Ids, item transport, the bundled pages
# ---------------------------------------------------------------------------


def test_document_ids_are_deterministic_and_items_survive_serialization(tmp_path: Path) -> None:
    _copy("article_with_chrome.html", tmp_path)
    _copy("boilerplate_title.html", tmp_path)
    ctx = _ctx(tmp_path, ["*.html"])
    prepared = STAGE.prepare(ctx)
    first = asyncio.run(STAGE.process(prepared.items, ctx))
    # A runner may ship items between processes as plain dicts.
    as_dicts = [json.loads(item.model_dump_json()) for item in prepared.items]
    second = asyncio.run(STAGE.process(as_dicts, ctx))
    assert [r.id for r in first.records] == [r.id for r in second.records]
    assert len({r.id for r in first.records}) == 2


def test_every_bundled_quickstart_page_extracts_cleanly(tmp_path: Path) -> None:
    pages = sorted(QUICKSTART_PAGES.glob("*.html"))
    assert 20 <= len(pages) <= 40
    spec = parse_spec(
        {"name": "t", "inputs": {"web": ["configs/quickstart/pages/*.html"]}, "stages": {"documents": {}}}
    )
    llm = ScriptedLLM(lambda m, s: "")
    ctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=REPO)
    dropped, out = _run(ctx)
    assert dropped == [] and out.failures == []
    assert len(out.records) == len(pages)
    for doc in out.records:
        assert 1500 <= doc.n_chars <= 4500, (doc.url, doc.n_chars)
        assert doc.title and doc.date and doc.url.startswith("https://") and doc.language == "en"
        for marker in ("Accept all cookies", "All rights reserved", "Subscribe", "Most read", "Privacy"):
            assert marker not in doc.text, (doc.url, marker)


def test_config_defaults_are_valid() -> None:
    cfg = DocumentsConfig()
    assert cfg.min_chars == 200 and cfg.near_dup_threshold == 0.8
    with pytest.raises(ValueError):
        DocumentsConfig(min_chars=0)
