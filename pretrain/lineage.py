"""Held-out data by source: no held-out text shares a trajectory, question or document with a trained one.

Holding out by kind alone overstates what CPT teaches: a held-out decision text replays
the steps of an agent run whose rollout text is trained on, and a held-out planning text
asks a question whose reasoning text is trained on. Here every corpus text gets its
**sources**: the trajectories (``rollouts`` records), questions and documents in its
lineage, found by walking ``parent_ids`` up from the records it was rendered from
(decision -> rollout -> question -> memory -> document). Texts that share a source are
one group (connected components); whole groups are held out, so the held-out texts'
sources and the trained texts' sources are disjoint.

Which groups: per kind, about ``fraction`` of the groups holding that kind (at least one
when a kind has two or more groups), picked in a seeded hash order so the split is stable
across re-tokenizations; a group is never held out when it would leave a kind with
nothing to train on. A text whose lineage cannot be traced is its own source.

``agentcpt tokenize RUN_ID`` writes held-out texts into ``split: heldout`` datasets and
lists them, with their sources, in ``megatron/heldout.json`` (an audit trail).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

# Stages whose records are sources: an agent run, a question, a document.
SOURCE_STAGES = ("rollouts", "questions", "documents")
HELDOUT_FILE = "heldout.json"
DEFAULT_FRACTION = 0.05


@dataclass(frozen=True)
class CorpusText:
    """What the split needs of one corpus record."""

    id: str
    kind: str
    parents: tuple[str, ...]


class Lineage:
    """``parent_ids`` of every record of a run, and which stage each record belongs to."""

    def __init__(self, parents: Mapping[str, Iterable[str]], stage_of: Mapping[str, str]) -> None:
        self.parents = {k: tuple(v) for k, v in parents.items()}
        self.stage_of = dict(stage_of)
        self._memo: dict[str, frozenset[str]] = {}

    def sources(self, record_id: str) -> frozenset[str]:
        """Trajectories, questions and documents at or above ``record_id`` (iterative; lineage is a DAG)."""
        if record_id in self._memo:
            return self._memo[record_id]
        found: set[str] = set()
        seen: set[str] = set()
        stack = [record_id]
        while stack:
            rid = stack.pop()
            if rid in seen:
                continue
            seen.add(rid)
            if rid in self._memo:
                found |= self._memo[rid]
                continue
            if self.stage_of.get(rid) in SOURCE_STAGES:
                found.add(rid)
            stack.extend(self.parents.get(rid, ()))
        result = frozenset(found)
        self._memo[record_id] = result
        return result

    def text_sources(self, text: CorpusText) -> frozenset[str]:
        """A corpus text's sources (itself when its lineage cannot be traced)."""
        found: frozenset[str] = frozenset().union(*(self.sources(p) for p in text.parents))
        return found or frozenset({text.id})


class HeldOut(BaseModel):
    """The split: which corpus texts are held out, and the sources they came from."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(description="target share of each kind's source groups held out")
    seed: int = Field(description="hash seed of the group order")
    texts: dict[str, list[str]] = Field(description="held-out corpus record id -> its sources")

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.texts)


class _Groups:
    """Union-find over texts sharing a source."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def split_by_lineage(
    texts: list[CorpusText], lineage: Lineage, fraction: float = DEFAULT_FRACTION, seed: int = 0
) -> HeldOut:
    """Hold out whole source groups, about ``fraction`` of each kind's groups (see the module docstring)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    sources = [lineage.text_sources(t) for t in texts]
    groups = _Groups(len(texts))
    first_text_of: dict[str, int] = {}
    for i, srcs in enumerate(sources):
        for s in srcs:
            if s in first_text_of:
                groups.union(first_text_of[s], i)
            else:
                first_text_of[s] = i
    members: dict[int, list[int]] = {}
    for i in range(len(texts)):
        members.setdefault(groups.find(i), []).append(i)

    def order_key(root: int) -> str:
        anchor = min(s for i in members[root] for s in sources[i])
        return hashlib.sha256(f"{seed}:{anchor}".encode()).hexdigest()

    ordered = sorted(members, key=order_key)
    kinds_of = {root: {texts[i].kind for i in members[root]} for root in ordered}
    train_groups = {k: sum(k in ks for ks in kinds_of.values()) for k in {t.kind for t in texts}}
    held: set[int] = set()
    if fraction > 0:
        for kind in sorted(train_groups):
            with_kind = [r for r in ordered if kind in kinds_of[r]]
            if len(with_kind) < 2:
                continue  # one group: holding it out would leave nothing of this kind to train on
            target = max(1, round(fraction * len(with_kind)))
            count = sum(r in held for r in with_kind)
            for root in with_kind:
                if count >= target:
                    break
                if root in held or any(train_groups[k] <= 1 for k in kinds_of[root]):
                    continue
                held.add(root)
                count += 1
                for k in kinds_of[root]:
                    train_groups[k] -= 1
    return HeldOut(
        fraction=fraction,
        seed=seed,
        texts={texts[i].id: sorted(sources[i]) for root in held for i in members[root]},
    )


# ---------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------


def _columns(files: list[Path], columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for f in files:
        rows += pq.read_table(f, columns=columns).to_pylist()
    return rows


def read_run(run_dir: Path) -> tuple[list[CorpusText], Lineage]:
    """The corpus texts of a run and the lineage of every other record (ids and parent ids only)."""
    from synth.shards import ShardStore

    store = ShardStore(run_dir)
    stages = sorted({row.stage for row in store.manifest_rows()})
    parents: dict[str, list[str]] = {}
    stage_of: dict[str, str] = {}
    for stage in stages:
        if stage == "corpus":
            continue
        for row in _columns(store.files(stage), ["id", "parent_ids"]):
            parents[row["id"]] = row["parent_ids"] or []
            stage_of[row["id"]] = stage
    texts = [
        CorpusText(id=row["id"], kind=row["kind"], parents=tuple(row["source_ids"] or ()))
        for row in _columns(store.files("corpus"), ["id", "kind", "source_ids"])
    ]
    return texts, Lineage(parents, stage_of)
