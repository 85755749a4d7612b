"""Hostile input lines and pages: each is one ledger row naming its file and line (or WARC
record), and the rest of the input still becomes records."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from synth.ingest.limits import (
    MAX_JSON_DEPTH,
    MAX_LINE_BYTES,
    MAX_PAGE_BYTES,
    InputLimitError,
    iter_lines,
    loads_bounded,
)
from synth.records import Failure
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.documents import STAGE as DOCUMENTS
from synth.stages.rollouts import STAGE as ROLLOUTS
from testing.scripted_llm import ScriptedLLM

WEBDANCER = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "trajectories"
    / "webdancer_sample_traj.jsonl"
)
DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5_000
FIFTY_MB = 50 * 1024 * 1024
PROSE = "The harbour bridge opened in 1987 after nine years of work by the city engineers. " * 5
OK_HTML = f"<html><head><title>ok</title></head><body><article><p>{PROSE}</p></article></body></html>"


def _ctx(tmp_path: Path, **inputs: Any) -> StageContext:
    spec = parse_spec(
        {"name": "t", "inputs": inputs, "stages": {"documents": {}, "rollouts": {"judge": False}}}
    )
    llm = ScriptedLLM(lambda messages, schema: "")
    return StageContext(
        run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, seed=0, base_dir=tmp_path
    )


def _documents(tmp_path: Path, web: list[str]) -> tuple[list[Any], list[Failure]]:
    ctx = _ctx(tmp_path, web=web)
    prepared = DOCUMENTS.prepare(ctx)
    out = asyncio.run(DOCUMENTS.process(prepared.items, ctx))
    return out.records, [*prepared.dropped, *out.failures]


def _page(url: str) -> str:
    return json.dumps({"url": url, "text": PROSE})


# ---------------------------------------------------------------------------
# The bounded parser
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEEP_ARRAY, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
        (
            "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        ),
        (f'{{"n": {HUGE_INT}}}', "a number of 5,000 characters (limit 100)"),
        (f'{{"x": 1.{HUGE_INT}}}', "a number of 5,002 characters (limit 100)"),
        ('{"a": ', "not valid JSON: Expecting value (column 7)"),
    ],
    ids=["100k-deep", "just-too-deep", "5000-digit-int", "5000-digit-float", "truncated"],
)
def test_bounded_parser_refuses_with_a_message(text: str, message: str) -> None:
    with pytest.raises(InputLimitError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        loads_bounded(text)
    assert caught.value.kind == "invalid_input"


def test_bounded_parser_reads_ordinary_json() -> None:
    nested: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = [nested]
    assert (
        loads_bounded(json.dumps({"n": 12345678901234567890, "x": 1.5e-3, "deep": nested}))["n"]
        == 12345678901234567890
    )


def test_an_overlong_line_is_measured_and_hashed_without_being_kept() -> None:
    lines = list(iter_lines(io.BytesIO(b"short\n" + b"x" * 5000 + b"\nlast"), max_bytes=100))
    assert [(line.number, line.offset, line.length) for line in lines] == [
        (1, 0, 6),
        (2, 6, 5001),
        (3, 5007, 4),
    ]
    assert lines[0].data == b"short\n" and lines[1].data is None and lines[2].data == b"last"


# ---------------------------------------------------------------------------
# Web inputs
# ---------------------------------------------------------------------------


def test_deep_array_and_huge_integer_in_web_jsonl_are_one_ledger_row_each(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    lines = [
        _page("https://a.example/1"),
        DEEP_ARRAY,
        json.dumps({"url": "https://a.example/2", "text": PROSE})[:-1] + f', "views": {HUGE_INT}}}',
        '{"url": "https://a.example/3", "html": ' + DEEP_ARRAY + "}",
        _page("https://a.example/4"),
    ]
    path.write_text("\n".join(lines) + "\n")
    records, failures = _documents(tmp_path, ["pages.jsonl"])
    assert sorted(r.url for r in records) == ["https://a.example/1", "https://a.example/4"]
    assert [(f.input_ids, f.error_kind) for f in failures] == [
        (["pages.jsonl#1"], "invalid_input"),
        (["pages.jsonl#2"], "invalid_input"),
        (["pages.jsonl#3"], "invalid_input"),
    ]
    assert failures[0].message == f"{path}:2: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    assert failures[1].message == f"{path}:3: a number of 5,000 characters (limit 100)"
    assert failures[2].message.startswith(f"{path}:4: JSON nested deeper")


def test_fifty_megabyte_pages_are_too_large_rows_not_truncated_documents(tmp_path: Path) -> None:
    big_html = b"<html><body><p>" + b"word " * (FIFTY_MB // 5) + b"</p></body></html>"
    (tmp_path / "big.html").write_bytes(big_html)
    (tmp_path / "ok.html").write_text(
        f"<html><head><title>ok</title></head><body><article><p>{PROSE}</p></article></body></html>"
    )
    with (tmp_path / "pages.jsonl").open("w") as f:
        f.write(_page("https://a.example/small") + "\n")
        f.write(json.dumps({"url": "https://a.example/big", "html": big_html.decode()}) + "\n")
        f.write(json.dumps({"url": "https://a.example/mid", "text": "x" * (MAX_PAGE_BYTES + 1)}) + "\n")
    with (tmp_path / "crawl.warc").open("wb") as fh:
        writer = WARCWriter(fh, gzip=False)
        for url, body in (
            ("https://w.example/big", big_html),
            ("https://w.example/ok", OK_HTML.encode()),
        ):
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )

    records, failures = _documents(tmp_path, ["*.html", "pages.jsonl", "crawl.warc"])
    too_large = {f.input_ids[0]: f.message for f in failures if f.error_kind == "too_large"}
    assert set(too_large) == {"big.html", "pages.jsonl#1", "pages.jsonl#2", "crawl.warc#0"}
    assert (
        too_large["big.html"]
        == f"{tmp_path / 'big.html'}: the page is {len(big_html):,} bytes, over the 10,000,000-byte limit"
    )
    assert too_large["pages.jsonl#1"].startswith(f"{tmp_path / 'pages.jsonl'}:2: the line is ")
    assert (
        too_large["pages.jsonl#2"]
        == f"{tmp_path / 'pages.jsonl'}:3: text: the page is 10,000,001 bytes, over the 10,000,000-byte limit"
    )
    assert "crawl.warc record at byte 0 (https://w.example/big): the record is" in too_large["crawl.warc#0"]
    urls = sorted(r.url for r in records)
    assert "https://a.example/small" in urls and "https://w.example/ok" in urls
    assert all(r.n_chars < 1_000_000 for r in records)


# ---------------------------------------------------------------------------
# Trajectory inputs
# ---------------------------------------------------------------------------


def test_deep_array_and_huge_integer_in_a_trajectory_file_are_one_ledger_row_each(tmp_path: Path) -> None:
    real = WEBDANCER.read_text().splitlines()[:2]
    obj = json.loads(real[0])
    messages = obj["messages"]
    deep_call = dict(
        obj,
        messages=[
            *messages[:2],
            {"role": "assistant", "content": "<tool_call>" + DEEP_ARRAY + "</tool_call>"},
        ],
    )
    lines = [
        real[0],
        DEEP_ARRAY,
        real[1][:-1] + f', "steps_taken": {HUGE_INT}}}',
        json.dumps(deep_call),
        "x" * 10,
    ]
    path = tmp_path / "traj.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ctx = _ctx(tmp_path, trajectories=["traj.jsonl"])
    prepared = ROLLOUTS.prepare(ctx)
    out = asyncio.run(ROLLOUTS.process(prepared.items, ctx))
    assert len(out.records) == 1 and prepared.dropped == []
    rows = sorted((f.input_ids[0], f.error_kind, f.message) for f in out.failures)
    assert [r[0] for r in rows] == ["traj.jsonl:2", "traj.jsonl:3", "traj.jsonl:4", "traj.jsonl:5"]
    assert rows[0][2] == f"traj.jsonl:2: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    assert rows[1][2] == "traj.jsonl:3: a number of 5,000 characters (limit 100)"
    assert rows[2][2].startswith("traj.jsonl:4: messages[2]: tool call nested too deep")
    assert rows[3][2].startswith("traj.jsonl:5: not valid JSON")
    assert {r[1] for r in rows} == {"invalid_trajectory"}


def test_an_oversized_trajectory_line_is_a_too_large_row(tmp_path: Path) -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "q" * (MAX_LINE_BYTES + 1)}]})
    (tmp_path / "traj.jsonl").write_text(line + "\n")
    ctx = _ctx(tmp_path, trajectories=["traj.jsonl"])
    prepared = ROLLOUTS.prepare(ctx)
    out = asyncio.run(ROLLOUTS.process(prepared.items, ctx))
    (row,) = out.failures
    assert row.error_kind == "too_large" and row.input_ids == ["traj.jsonl:1"]
    assert row.message == (
        f"traj.jsonl:1: the line is {len(line) + 1:,} bytes, over the {MAX_LINE_BYTES:,}-byte limit"
    )
