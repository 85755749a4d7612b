"""Exact and near-duplicate detection over texts (documents, CPT samples), built to be distributed.

Two passes, both keeping the FIRST occurrence in the caller's order, so the result is a
pure function of the input sequence (a resumed run, which recomputes a barrier's
``prepare``, drops the same texts):

* exact: SHA-256 of the normalized text (NFKC, case-folded, punctuation and whitespace
  collapsed), so re-posts that differ only in spacing or capitalization collide;
* near: MinHash over word n-gram shingles (``synth.minhash``: bit-identical to datasketch's
  ``MinHash``), candidates from LSH bands (datasketch ``MinHashLSH``'s band choice and
  bucket rule), confirmed by the estimated Jaccard similarity against the threshold. A
  candidate is only ever compared with texts that were kept, so chains (A~B, B~C, A!~C)
  resolve the same way whatever the bucket order.

Where the work happens. Signatures (the expensive part: one sha1 per shingle) are computed
where records are produced: ``UnitWorker`` calls ``write_unit_signatures`` for each unit of
a stage that a downstream stage deduplicates (``memory`` reads ``documents``, ``corpus``
reads the LLM stages; see ``DEDUP_SOURCES``), so they are made in parallel across the
cluster and stored in a side file per unit (``RunLayout.signatures``). The barrier's
``prepare`` then only loads them (``load_signatures``) and streams through its ordered
texts banding and bucketing (``DuplicateIndex``); a text whose side file is missing, or
whose text changed since (checked by a hash of the text), is signed on the spot, so the
result never depends on which side files exist.

Memory at the barrier: one exact key and, per kept text, one signature (512 B) plus its
band keys — an index of ids and signatures, not of texts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from synth.minhash import MinHasher, MinHashParams, band_params

if TYPE_CHECKING:
    import pyarrow as pa

_NON_WORD_RE = re.compile(r"[\W_]+", re.UNICODE)

# Stages whose records' ``text`` a downstream stage deduplicates, and by whom: their units
# sign their records as they commit (``UnitWorker``), so the barrier only bands.
DEDUP_SOURCES: Mapping[str, str] = {
    "documents": "memory",
    "planning": "corpus",
    "reasoning": "corpus",
    "rollouts": "corpus",
    "decisions": "corpus",
}

DEFAULT_PARAMS = MinHashParams()


def normalize_text(text: str) -> str:
    """Text reduced to lowercase words separated by single spaces (the dedup key space)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD_RE.sub(" ", folded).strip()


def exact_key(text: str) -> str:
    """SHA-256 hex digest of the normalized text: equal for texts that differ only in form."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def text_hash(text: str) -> bytes:
    """A cheap 8-byte fingerprint of a text as stored, to tell whether a saved signature is still its own."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def shingles(normalized: str, ngram: int) -> set[bytes]:
    """Word n-grams of an already normalized text; a text shorter than n is one shingle."""
    words = normalized.split()
    if not words:
        return set()
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


@dataclass(frozen=True)
class DuplicateMatch:
    """Why an item was dropped: the id it duplicates, and how close it is."""

    kept_id: str
    kind: Literal["exact", "near"]
    similarity: float


@dataclass(frozen=True)
class TextSignature:
    """What dedup needs of one text: its exact key and MinHash (None: the text has no words)."""

    exact: bytes
    minhash: np.ndarray | None
    text_hash: bytes = b""


@dataclass(frozen=True)
class SignedTexts:
    """Signatures of many texts as columns: exact keys, text fingerprints, a MinHash matrix."""

    exact: list[bytes]
    text_hashes: list[bytes]
    minhash: np.ndarray  # (texts, num_perm) uint32; rows of texts without words are 0
    has_words: np.ndarray  # bool per text

    def __len__(self) -> int:
        return len(self.exact)

    def signature(self, i: int) -> TextSignature:
        return TextSignature(
            exact=self.exact[i],
            minhash=self.minhash[i] if self.has_words[i] else None,
            text_hash=self.text_hashes[i],
        )


def sign_columns(texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS) -> SignedTexts:
    """Signatures of many texts, in order (one batched MinHash pass)."""
    normalized = [normalize_text(t) for t in texts]
    matrix, has_words = MinHasher(params).signatures(normalized)
    return SignedTexts(
        exact=[hashlib.sha256(n.encode("utf-8")).digest() for n in normalized],
        text_hashes=[text_hash(t) for t in texts],
        minhash=matrix,
        has_words=has_words,
    )


def sign_texts(texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS) -> list[TextSignature]:
    """Signatures of many texts, in order, one object each."""
    signed = sign_columns(texts, params)
    return [signed.signature(i) for i in range(len(signed))]


class DuplicateIndex:
    """Streaming exact + LSH near-duplicate index: ``add`` each text's signature in order.

    Same decisions as datasketch's ``MinHashLSH`` used the obvious way (query, confirm the
    candidates' estimated Jaccard, keep the earliest match, insert the kept): bands of
    ``rows`` consecutive permutation values, a bucket per exact band value.
    """

    def __init__(self, threshold: float = 0.8, params: MinHashParams = DEFAULT_PARAMS) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.params = params
        self._bands, self._rows = band_params(threshold, params.num_perm)
        self._exact: dict[bytes, str] = {}
        self._order: dict[str, int] = {}
        self._kept_ids: list[str] = []
        self._kept_sigs: list[np.ndarray] = []
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self._bands)]

    def __len__(self) -> int:
        return len(self._order)

    def add(self, item_id: str, signature: TextSignature) -> DuplicateMatch | None:
        """The match if the text duplicates a kept one; otherwise keep it and return None."""
        if item_id in self._order:
            raise ValueError(f"id {item_id!r} appears twice")
        kept = self._exact.get(signature.exact)
        if kept is not None:
            return DuplicateMatch(kept_id=kept, kind="exact", similarity=1.0)
        sig = signature.minhash
        if sig is not None:
            raw = sig.tobytes()
            width = 4 * self._rows
            keys = [raw[b * width : (b + 1) * width] for b in range(self._bands)]
            candidates: set[int] = set()
            for band, key in zip(self._buckets, keys, strict=True):
                hit = band.get(key)
                if hit:
                    candidates.update(hit)
            for slot in sorted(candidates):  # slots are kept order: the first that passes wins
                similarity = float(np.count_nonzero(sig == self._kept_sigs[slot])) / len(sig)
                if similarity >= self.threshold:
                    return DuplicateMatch(
                        kept_id=self._kept_ids[slot], kind="near", similarity=round(similarity, 4)
                    )
            slot = len(self._kept_ids)
            self._kept_ids.append(item_id)
            self._kept_sigs.append(sig)
            for band, key in zip(self._buckets, keys, strict=True):
                band.setdefault(key, []).append(slot)
        self._exact[signature.exact] = item_id
        self._order[item_id] = len(self._order)
        return None


class NearDuplicateIndex:
    """Incremental exact + MinHash dedup of texts: ``check_and_add`` each text in order."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        params = MinHashParams(num_perm=num_perm, ngram=ngram, seed=seed)
        self._index = DuplicateIndex(threshold, params)
        self.threshold = threshold
        self.params = params

    def __len__(self) -> int:
        return len(self._index)

    def check_and_add(self, item_id: str, text: str) -> DuplicateMatch | None:
        """The match if ``text`` duplicates a kept text; otherwise keep it and return None."""
        return self._index.add(item_id, sign_texts([text], self.params)[0])


def _exact_only(items: Iterable[tuple[str, str]]) -> dict[str, DuplicateMatch]:
    seen: dict[str, str] = {}
    ids: set[str] = set()
    out: dict[str, DuplicateMatch] = {}
    for item_id, text in items:
        if item_id in ids:
            raise ValueError(f"id {item_id!r} appears twice")
        ids.add(item_id)
        key = exact_key(text)
        if key in seen:
            out[item_id] = DuplicateMatch(kept_id=seen[key], kind="exact", similarity=1.0)
        else:
            seen[key] = item_id
    return out


def find_duplicate_matches(
    items: Iterable[tuple[str, str]],
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    ngram: int = 5,
    near: bool = True,
    signatures: SignatureMap | None = None,
) -> dict[str, DuplicateMatch]:
    """Duplicates among ``(id, text)`` pairs: ``{dup_id: DuplicateMatch}``; the first of a group is kept.

    ``near=False`` does exact (normalized) dedup only. Ids must be unique. ``signatures``
    are precomputed ones (``load_signatures``) by id; one is used only if it was made from
    this very text with these parameters, the others are computed here.
    """
    if not near:
        return _exact_only(items)
    params = MinHashParams(num_perm=num_perm, ngram=ngram)
    pairs = list(items)
    known = signatures if signatures is not None and signatures.params == params else {}
    resolved = _resolve_signatures(pairs, known, params)
    index = DuplicateIndex(threshold, params)
    matches: dict[str, DuplicateMatch] = {}
    for (item_id, _), signature in zip(pairs, resolved, strict=True):
        if item_id in matches:
            raise ValueError(f"id {item_id!r} appears twice")
        match = index.add(item_id, signature)
        if match is not None:
            matches[item_id] = match
    return matches


def _resolve_signatures(
    pairs: Sequence[tuple[str, str]], known: Mapping[str, TextSignature], params: MinHashParams
) -> list[TextSignature]:
    out: list[TextSignature | None] = []
    missing: list[int] = []
    for i, (item_id, text) in enumerate(pairs):
        sig = known.get(item_id)
        if sig is not None and sig.text_hash == text_hash(text):
            out.append(sig)
        else:
            out.append(None)
            missing.append(i)
    if missing:
        for i, sig in zip(missing, sign_texts([pairs[i][1] for i in missing], params), strict=True):
            out[i] = sig
    return [s for s in out if s is not None]


def find_duplicates(
    items: Sequence[tuple[str, str]],
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    ngram: int = 5,
    near: bool = True,
) -> dict[str, str]:
    """``{dup_id: kept_id}`` for ``(id, text)`` pairs, keeping the first of each group in the given order."""
    matches = find_duplicate_matches(items, threshold, num_perm=num_perm, ngram=ngram, near=near)
    return {dup: m.kept_id for dup, m in matches.items()}


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and diagnostics)."""
    sa, sb = shingles(normalize_text(a), ngram), shingles(normalize_text(b), ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# --------------------------------------------------------------------------------------
# Signature side files: one per committed unit of a signed stage
# --------------------------------------------------------------------------------------

_PARAMS_KEY = b"agentcpt.minhash"


def signature_schema(params: MinHashParams = DEFAULT_PARAMS) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text_hash", pa.binary(8), nullable=False),
            pa.field("exact", pa.binary(32), nullable=False),
            pa.field("minhash", pa.binary(4 * params.num_perm), nullable=True),
        ],
        metadata={_PARAMS_KEY: params.tag.encode()},
    )


def signable(records: Iterable[Any]) -> list[tuple[str, str]]:
    """``(id, text)`` of the records that carry a non-empty ``text`` (what the barrier dedups)."""
    out: list[tuple[str, str]] = []
    for r in records:
        text = getattr(r, "text", None)
        if isinstance(text, str) and text:
            out.append((r.id, text))
    return out


def signatures_table(pairs: Sequence[tuple[str, str]], params: MinHashParams = DEFAULT_PARAMS) -> pa.Table:
    """The side-file table of ``(id, text)`` pairs (columns built from buffers, no row objects)."""
    import pyarrow as pa

    signed = sign_columns([t for _, t in pairs], params)
    schema = signature_schema(params)
    validity = pa.array(signed.has_words, type=pa.bool_()).buffers()[1]
    minhash = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("minhash").type,
        len(pairs),
        [validity, pa.py_buffer(np.ascontiguousarray(signed.minhash, dtype="<u4"))],
    )
    columns = [
        pa.array([i for i, _ in pairs], pa.string()),
        pa.array(signed.text_hashes, pa.binary(8)),
        pa.array(signed.exact, pa.binary(32)),
        minhash,
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_unit_signatures(path: Path, records: Iterable[Any], params: MinHashParams = DEFAULT_PARAMS) -> int:
    """Sign a unit's records and write the side file atomically (before the unit commits); rows written.

    Idempotent: a retried unit rewrites the file. A file left by an attempt whose records
    were not the ones committed is harmless: its text hashes do not match, and the barrier
    signs those texts itself.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.shards import atomic_write_bytes

    pairs = signable(records)
    sink = pa.BufferOutputStream()
    # Signatures are random bytes: compression, dictionaries and min/max statistics would
    # cost CPU for nothing (together ~15 us a row here).
    pq.write_table(
        signatures_table(pairs, params),
        sink,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
    )
    # No fsync: a side file lost to a power cut only costs the barrier the signing.
    atomic_write_bytes(path, memoryview(sink.getvalue()), sync_dir=False, sync_file=False)
    return len(pairs)


class SignatureMap(dict[str, TextSignature]):
    """Signatures by id, with the parameters they were made with."""

    def __init__(self, params: MinHashParams) -> None:
        super().__init__()
        self.params = params


def load_signatures(paths: Iterable[Path], params: MinHashParams = DEFAULT_PARAMS) -> SignatureMap:
    """Signatures of the given side files by id; unreadable files or other parameters are skipped.

    Rows are read one file at a time (only the index of signatures is held, never texts).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = SignatureMap(params)
    tag = params.tag.encode()
    width = params.num_perm
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException):
            continue  # a side file is an optimization: without it the barrier signs the text
        if (table.schema.metadata or {}).get(_PARAMS_KEY) != tag:
            continue
        ids = table.column("id").to_pylist()
        hashes = table.column("text_hash").to_pylist()
        exacts = table.column("exact").to_pylist()
        minhash = table.column("minhash").combine_chunks()
        valid = np.asarray(minhash.is_valid(), dtype=bool)
        data = minhash.buffers()[1]
        matrix = np.frombuffer(data, dtype="<u4", count=(minhash.offset + len(minhash)) * width)
        matrix = matrix.reshape(-1, width)[minhash.offset :]
        for i, item_id in enumerate(ids):
            sig = matrix[i] if valid[i] else None
            out[item_id] = TextSignature(exact=exacts[i], minhash=sig, text_hash=hashes[i])
    return out


def stage_signatures(
    run_dir: Path, stages: Iterable[str], params: MinHashParams = DEFAULT_PARAMS
) -> SignatureMap:
    """The signatures the committed units of ``stages`` left in ``run_dir`` (empty outside a run)."""
    from synth.layout import RunLayout
    from synth.shards import ShardStore

    store = ShardStore(run_dir)
    layout = RunLayout(Path(run_dir))
    paths = [
        layout.signatures(stage, unit)
        for stage in stages
        for unit in sorted(store.committed_units(stage))
        if layout.signatures(stage, unit).exists()
    ]
    return load_signatures(paths, params)


__all__ = [
    "DEDUP_SOURCES",
    "DuplicateIndex",
    "DuplicateMatch",
    "NearDuplicateIndex",
    "SignatureMap",
    "TextSignature",
    "exact_key",
    "find_duplicate_matches",
    "find_duplicates",
    "jaccard",
    "load_signatures",
    "normalize_text",
    "shingles",
    "sign_columns",
    "sign_texts",
    "signable",
    "stage_signatures",
    "write_unit_signatures",
]
