"""The offline search and visit tools over a run's documents, and the tool dispatcher."""

from __future__ import annotations

import asyncio
from pathlib import Path

from synth.records import DocumentRecord, ToolAction
from synth.tools.environment import ToolEnvironment
from synth.tools.sandbox import SandboxLimits
from synth.tools.search import SearchIndex, get_search_index, search_tool, split_passages
from synth.tools.visit import select_for_goal, visit_tool


def doc(url: str, title: str, text: str) -> DocumentRecord:
    return DocumentRecord(id=url, run_id="t", url=url, title=title, text=text, n_chars=len(text))


DOCS = [
    doc(
        "https://example.org/bridge",
        "Kestrel Bay Bridge",
        "The Kestrel Bay Bridge opened in 1987.\n\nIt spans 2.4 kilometres and carries four lanes of traffic.",
    ),
    doc(
        "https://example.org/marmot",
        "Amber-tailed marmot",
        "The amber-tailed marmot lives above 3000 metres.",
    ),
    doc(
        "https://example.org/festival", "Lanternfall", "Lanternfall is a lantern festival held every October."
    ),
]


def test_search_returns_the_matching_page_with_its_url_and_snippet() -> None:
    index = SearchIndex.from_documents(DOCS)
    hits = index.search("when did the Kestrel Bay Bridge open", top_k=2)
    assert hits[0].url == "https://example.org/bridge"
    assert "1987" in hits[0].snippet
    assert all(h.score > 0 for h in hits)


def test_search_tool_answers_every_query_of_a_call() -> None:
    index = SearchIndex.from_documents(DOCS)
    text = search_tool(index, ["marmot altitude", "lantern festival month"], top_k=3)
    first, second = text.split("\n=======\n")
    assert "A search for 'marmot altitude' found 1 results" in first
    assert "[Amber-tailed marmot](https://example.org/marmot)" in first
    assert "https://example.org/festival" in second


def test_search_with_no_matching_term_says_so() -> None:
    index = SearchIndex.from_documents(DOCS)
    assert search_tool(index, ["zyzzyva quokka"], top_k=3).startswith("No results found for 'zyzzyva quokka'")
    assert search_tool(SearchIndex([]), ["bridge"], top_k=3).startswith("No results found")


def test_search_lists_each_page_once_even_when_several_passages_match() -> None:
    long_text = "\n\n".join(
        f"Paragraph {i} about the harbour expansion and its cranes. " * 10 for i in range(6)
    )
    index = SearchIndex.from_documents([doc("https://example.org/harbour", "Harbour", long_text), *DOCS])
    hits = index.search("harbour expansion cranes", top_k=5)
    assert [h.url for h in hits].count("https://example.org/harbour") == 1


def test_passages_respect_the_size_bound_and_keep_all_words() -> None:
    text = ("word " * 500).strip() + "\n\nshort paragraph\n\n" + "x" * 10
    passages = split_passages(text, max_chars=300)
    assert all(len(p) <= 300 for p in passages)
    assert sum(p.split().count("word") for p in passages) == 500


def test_visit_returns_the_page_text_with_the_goal() -> None:
    index = SearchIndex.from_documents(DOCS)
    text = visit_tool(index, "https://example.org/bridge/", "opening year", max_chars=4000)
    assert text.startswith(
        "The useful information in https://example.org/bridge for user goal opening year as follows:"
    )
    assert "opened in 1987" in text


def test_visit_of_an_unknown_url_says_it_is_not_available() -> None:
    index = SearchIndex.from_documents(DOCS)
    text = visit_tool(index, ["https://nowhere.example/x"], "anything", max_chars=4000)
    assert "could not be accessed" in text


def test_visit_cut_keeps_the_passages_about_the_goal() -> None:
    filler = "\n\n".join(f"Unrelated paragraph number {i} about weather and tides." for i in range(40))
    text = filler + "\n\nThe toll for cars rose to 4.50 euros in 2025.\n\n" + filler
    body, cut = select_for_goal(text, "car toll 2025", max_chars=400)
    assert cut and len(body) <= 400
    assert "4.50 euros" in body


def test_index_is_built_once_per_run_dir(tmp_path: Path) -> None:
    calls: list[int] = []

    def load() -> list[DocumentRecord]:
        calls.append(1)
        return DOCS

    first = get_search_index(tmp_path / "run-a", load)
    assert get_search_index(tmp_path / "run-a", load) is first
    assert len(calls) == 1
    get_search_index(tmp_path / "run-b", load)
    assert len(calls) == 2


def test_environment_accepts_a_single_query_string_and_runs_python() -> None:
    env = ToolEnvironment(index=SearchIndex.from_documents(DOCS), sandbox=SandboxLimits(cpu_s=2, wall_s=5))

    async def both() -> tuple[str, str]:
        found = await env.run(ToolAction(tool="search", arguments={"query": "marmot"}))
        printed = await env.run(ToolAction(tool="python", arguments={"code": "print(6 * 7)"}))
        return found, printed

    found, printed = asyncio.run(both())
    assert "https://example.org/marmot" in found
    assert printed == "stdout:\n42"
