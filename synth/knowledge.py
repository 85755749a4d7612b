"""The statements a question was built from: ``knowledge_ids`` -> ``MemoryRecord``s.

Planning's judge and reasoning's step 2 need, for each question, the memory statements it
was synthesized from. Reading the whole ``memory`` stage once per work unit would cost a full
scan per unit, so the id index is kept per run in this process (a worker runs many units of
one run).

Why the cache is safe to share: memory ids are content hashes (``synth.ids``), so an id
found in the index always maps to the same statement, whichever context loaded it. Only an
id the index lacks can mean the index is stale (another test, another context, a memory
unit committed later); such a miss triggers one re-read, at most once per lookup call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from synth.records import MemoryRecord, Record
from synth.stage import StageContext

StageReader = Callable[[str], list[Record]]


class KnowledgeIndex:
    """Memory records of one run by id."""

    def __init__(self, records: Iterable[Record]) -> None:
        self._by_id: dict[str, MemoryRecord] = {r.id: r for r in records if isinstance(r, MemoryRecord)}

    def __len__(self) -> int:
        return len(self._by_id)

    def missing(self, ids: Iterable[str]) -> set[str]:
        return {i for i in ids if i not in self._by_id}

    def get(self, ids: Sequence[str]) -> list[MemoryRecord]:
        """The records for ``ids`` that exist, in the order given, without repeats."""
        seen: set[str] = set()
        out: list[MemoryRecord] = []
        for i in ids:
            rec = self._by_id.get(i)
            if rec is not None and i not in seen:
                seen.add(i)
                out.append(rec)
        return out


class KnowledgeCache:
    """Per-run ``KnowledgeIndex``es, least recently used first out.

    Keyed by the run directory and run id: one worker process may serve units of a few
    runs, and ``max_runs`` bounds the memory that costs.
    """

    def __init__(self, max_runs: int = 4) -> None:
        self._max_runs = max_runs
        self._indexes: OrderedDict[tuple[str, str], KnowledgeIndex] = OrderedDict()
        # Units of one run may be processed from several threads of a worker.
        self._lock = threading.Lock()
        self.loads = 0  # how many times a memory stage was read (tests assert on it)

    def _load(self, key: tuple[str, str], read_stage: StageReader) -> KnowledgeIndex:
        index = KnowledgeIndex(read_stage("memory"))
        self.loads += 1
        self._indexes[key] = index
        self._indexes.move_to_end(key)
        while len(self._indexes) > self._max_runs:
            self._indexes.popitem(last=False)
        return index

    def index_for(self, ctx: StageContext, needed_ids: Iterable[str] = ()) -> KnowledgeIndex:
        """The run's index, read on first use and re-read once if ``needed_ids`` are missing."""
        key = (str(ctx.run_dir.resolve()), ctx.run_id)
        needed = set(needed_ids)
        with self._lock:
            index = self._indexes.get(key)
            if index is None:
                return self._load(key, ctx.read_stage)
            self._indexes.move_to_end(key)
            if needed and index.missing(needed):
                return self._load(key, ctx.read_stage)
            return index

    def clear(self) -> None:
        with self._lock:
            self._indexes.clear()


# One cache per process, on purpose: it is what lets unit k+1 of a run skip the memory scan
# that unit k paid for. Created empty; nothing is read until a stage asks.
_CACHE = KnowledgeCache()


def knowledge_cache() -> KnowledgeCache:
    """The process-wide cache (tests call ``knowledge_cache().clear()`` or read ``.loads``)."""
    return _CACHE


def statements_for_questions(
    ctx: StageContext, knowledge_ids: Sequence[Sequence[str]]
) -> list[list[MemoryRecord]]:
    """For each question's ``knowledge_ids``, the memory records found (possibly fewer, or none)."""
    index = _CACHE.index_for(ctx, (i for ids in knowledge_ids for i in ids))
    return [index.get(ids) for ids in knowledge_ids]


def evidence_line(statement: str, time: str | None, source_url: str | None) -> str:
    """A statement as the agent would have retrieved it: the fact, when it holds, where it was read.

    ``"Riverton welcomed 2.41 million visitors. (time: 2024; source: https://visitriverton.example/stats)"``
    """
    text = " ".join(statement.split())
    meta = [f"time: {time}" if time and time not in text else None, f"source: {source_url}" if source_url else None]
    meta_text = "; ".join(m for m in meta if m)
    return f"{text} ({meta_text})" if meta_text else text


def format_statements(records: Sequence[MemoryRecord], max_statements: int) -> str:
    """Statements as a bulleted prompt block, each with its time and source URL: the first
    ``max_statements`` (a question rarely needs more than a dozen facts; small models have
    small context windows). Statements are whole (memory caps them at 500 characters): a
    fact cut in half is a different fact."""
    lines = [f"- {evidence_line(r.statement, r.time, r.source_url)}" for r in records[:max_statements]]
    return "\n".join(lines) if lines else "(none)"
