"""Titles from the page, never from its chrome (synth.ingest.titles, via extract_html)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import trafilatura
from trafilatura.metadata import extract_title

from synth.ingest.extract import extract_html
from synth.ingest.titles import choose_titles
from synth.records import DocumentRecord
from synth.spec import parse_spec
from synth.stage import StageContext
from testing.scripted_llm import ScriptedLLM

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
HIDDEN_DIALOG = FIXTURES / "docs_hidden_dialog.html"


def test_the_fixture_reproduces_the_hidden_dialog_title_of_a_static_site_generator() -> None:
    # What the documents stage used to take: trafilatura's title lookup finds the help
    # dialog's heading (class "...-title") before the page's own.
    tree = trafilatura.load_html(HIDDEN_DIALOG.read_bytes())
    assert extract_title(tree) == "Keyboard shortcuts"


def test_a_hidden_help_dialog_never_gives_the_title() -> None:
    page = extract_html(HIDDEN_DIALOG.read_bytes())
    assert page is not None
    assert page.title == "Installing the toolchain"
    assert "Keyboard shortcuts" not in page.title_candidates
    assert "The Kestrel Book" not in page.title_candidates  # the menu bar's <h1> is chrome too


def _page(body: str, title: str = "Untitled") -> str:
    return f"<html><head><title>{title}</title></head><body>{body}<p>{'Some text of the page. ' * 20}</p></body></html>"


@pytest.mark.parametrize(
    "chrome",
    [
        '<div aria-hidden="true"><h1>Search</h1></div>',
        "<dialog><h1>Sign in</h1></dialog>",
        '<div role="dialog"><h1>Cookie settings</h1></div>',
        '<div hidden><h1>Loading</h1></div>',
        '<div style="display:none"><h1>Menu</h1></div>',
        "<nav><h1>Sections</h1></nav>",
        "<header><h1>The Daily Example</h1></header>",
        "<footer><h2>About us</h2></footer>",
        '<div class="modal"><h2>Subscribe</h2></div>',
    ],
)
def test_headings_inside_chrome_are_never_candidates(chrome: str) -> None:
    page = extract_html(_page(chrome + "<main><h1>Harbour crane arrives</h1></main>"))
    assert page is not None and page.title == "Harbour crane arrives"
    assert len(page.title_candidates) == 1


def test_an_article_header_is_content_not_chrome() -> None:
    page = extract_html(_page("<article><header><h1>Ferry terminal reopens</h1></header></article>"))
    assert page is not None and page.title == "Ferry terminal reopens"


def test_og_title_comes_first_then_the_main_heading_then_the_title_element() -> None:
    html = (
        '<html><head><title>Short | Gazette</title><meta property="og:title" content="From og">'
        '<meta property="og:site_name" content="Gazette"></head><body><main><h1>From heading</h1>'
        f"<p>{'Text of the page. ' * 20}</p></main></body></html>"
    )
    page = extract_html(html)
    assert page is not None and page.title_candidates == ("From og", "From heading", "Short")


def test_a_title_most_pages_of_a_site_share_falls_back_to_each_pages_next_candidate() -> None:
    pages = [(f"https://docs.example/p{i}", ["Kestrel Docs", f"Chapter {i}"]) for i in range(4)]
    pages.append(("https://other.example/a", ["Kestrel Docs"]))  # another site: its own title
    assert choose_titles(pages) == ["Chapter 0", "Chapter 1", "Chapter 2", "Chapter 3", "Kestrel Docs"]


def test_a_shared_title_on_too_few_pages_is_kept() -> None:
    pages = [(f"https://docs.example/p{i}", ["Kestrel Docs", f"Chapter {i}"]) for i in range(2)]
    assert choose_titles(pages) == ["Kestrel Docs", "Kestrel Docs"]


def test_the_documents_stage_replaces_a_site_wide_title(tmp_path: Path) -> None:
    from synth.stages.documents import STAGE

    for i in range(3):
        html = (
            '<html><head><meta property="og:title" content="Kestrel Docs">'
            f'<link rel="canonical" href="https://docs.example/ch{i}"></head><body><main><h1>Chapter {i} of the book</h1>'
            f"<p>{f'Chapter {i} explains one part of the Kestrel build tool in plain words. ' * 8}</p></main></body></html>"
        )
        (tmp_path / f"ch{i}.html").write_text(html)
    spec = parse_spec({"name": "t", "inputs": {"web": ["*.html"]}, "stages": {"documents": {}}})
    llm = ScriptedLLM(lambda m, s: "")
    ctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=tmp_path)
    out = asyncio.run(STAGE.process(STAGE.prepare(ctx).items, ctx))
    assert sorted(d.title for d in out.records) == [f"Chapter {i} of the book" for i in range(3)]


def test_memory_chunks_get_site_titles_across_all_documents(tmp_path: Path) -> None:
    from synth.stages.memory import STAGE

    docs = [
        DocumentRecord(
            id=f"d{i}", run_id="t", url=f"https://docs.example/ch{i}", title="Kestrel Docs",
            title_candidates=["Kestrel Docs", f"Chapter {i}"], text=f"Chapter {i} explains the tool. " * 10,
            n_chars=300,
        )
        for i in range(3)
    ]
    spec = parse_spec({"name": "t", "stages": {"documents": {}, "memory": {}}})
    llm = ScriptedLLM(lambda m, s: {"statements": []})
    ctx = StageContext(
        run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, read_stage=lambda s: {"documents": docs}[s]
    )
    assert sorted(c.title for c in STAGE.prepare(ctx).items) == ["Chapter 0", "Chapter 1", "Chapter 2"]


def test_a_copied_fixture_keeps_its_title(tmp_path: Path) -> None:
    from synth.stages.documents import STAGE

    shutil.copy(HIDDEN_DIALOG, tmp_path / "page.html")
    spec = parse_spec({"name": "t", "inputs": {"web": ["page.html"]}, "stages": {"documents": {}}})
    llm = ScriptedLLM(lambda m, s: "")
    ctx = StageContext(run_id="t", spec=spec, llm=llm, judge_llm=llm, run_dir=tmp_path, base_dir=tmp_path)
    (doc,) = asyncio.run(STAGE.process(STAGE.prepare(ctx).items, ctx)).records
    assert doc.title == "Installing the toolchain" and doc.url == "https://kestrel-docs.example/book/installing.html"
