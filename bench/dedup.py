"""Dedup at scale: signatures in the map units + banding at the barrier, vs today's single process.

Input: ``N_TEXTS`` synthetic texts, about a third of them re-posts of earlier ones with
edits that put their Jaccard similarity on both sides of the 0.8 threshold
(``testing.dedup_reference.near_duplicate_corpus``), committed as ``N_UNITS`` unit files
(as an upstream stage would leave them).

* **today**: ``testing.dedup_reference.reference_duplicate_matches`` — the pre-issue-19
  code: one process, a datasketch ``MinHash`` per text and a ``MinHashLSH``.
* **new**: what the pipeline does now. Each unit is signed where it is produced
  (``synth.dedup.write_unit_signatures``, here by a pool of ``WORKERS`` processes standing
  in for the Ray workers; started before the clock, as Ray workers are), then the barrier
  loads the side files and bands (``find_duplicate_matches(..., signatures=...)``).

Both run in this one invocation on the same input; prints the wall-clock ratio (goal >= 1.8
on 2 cores) and whether the kept sets (and every match) are identical. Also prints the
single-process signing cost per text of the implementations the issue asks to compare:
datasketch per text, datasketch ``MinHash.bulk``, rensa ``RMinHash``, and ours — and how
many decisions rensa's signatures would change (why ours, not rensa, is the default).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

N_TEXTS = int(os.environ.get("BENCH_DEDUP_TEXTS", "200000"))
N_UNITS = 40
WORKERS = 2
WORDS = 60  # mean words per text
SAMPLE = 10_000  # texts for the per-implementation signing comparison


def sign_unit(unit_path: str, side_path: str) -> tuple[int, float]:
    """A map unit's share of the work: read its records, sign them, write the side file.

    Returns the rows signed and the CPU seconds it took.
    """
    from synth.dedup import write_unit_signatures

    cpu0 = time.process_time()
    table = pq.read_table(unit_path)

    class Row:
        __slots__ = ("id", "text")

        def __init__(self, id: str, text: str) -> None:
            self.id, self.text = id, text

    rows = [
        Row(i, t)
        for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)
    ]
    return write_unit_signatures(Path(side_path), rows), time.process_time() - cpu0


def _warm(_: int) -> int:
    import synth.dedup  # noqa: F401  (import cost is paid once per worker, like a Ray actor's)

    return os.getpid()


def signing_costs(items: list[tuple[str, str]]) -> dict[str, float]:
    """Single-process signing time per text (ms) of each implementation, on the same texts."""
    from datasketch import MinHash

    from synth.dedup import normalize_text, shingles, sign_texts

    texts = [t for _, t in items]
    out: dict[str, float] = {}

    t0 = time.perf_counter()
    template = MinHash(num_perm=128, seed=1)
    for t in texts:
        grams = shingles(normalize_text(t), 5)
        if grams:
            m = template.copy()
            m.update_batch(list(grams))
    out["datasketch_per_text_ms"] = (time.perf_counter() - t0) / len(texts) * 1000

    t0 = time.perf_counter()
    sets = [list(shingles(normalize_text(t), 5)) for t in texts]
    MinHash.bulk([s for s in sets if s], num_perm=128, seed=1)
    out["datasketch_bulk_per_text_ms"] = (time.perf_counter() - t0) / len(texts) * 1000

    try:
        import rensa
    except ImportError:
        out["rensa_per_text_ms"] = float("nan")
    else:
        t0 = time.perf_counter()
        for t in texts:
            grams = shingles(normalize_text(t), 5)
            r = rensa.RMinHash(num_perm=128, seed=1)
            r.update([g.decode() for g in grams])
            r.digest()
        out["rensa_per_text_ms"] = (time.perf_counter() - t0) / len(texts) * 1000

    t0 = time.perf_counter()
    sign_texts(texts)
    out["ours_per_text_ms"] = (time.perf_counter() - t0) / len(texts) * 1000
    return {k: round(v, 4) for k, v in out.items()}


def rensa_disagreements(items: list[tuple[str, str]]) -> int | None:
    """Texts whose keep/drop decision changes when rensa's signatures replace datasketch's."""
    try:
        import rensa
    except ImportError:
        return None
    import numpy as np

    from synth.dedup import DuplicateIndex, find_duplicate_matches, normalize_text, shingles, sign_texts

    reference = find_duplicate_matches(items)
    index = DuplicateIndex(0.8)
    changed = 0
    for (item_id, text), sig in zip(items, sign_texts([t for _, t in items]), strict=True):
        grams = shingles(normalize_text(text), 5)
        minhash = None
        if grams:
            r = rensa.RMinHash(num_perm=128, seed=1)
            r.update([g.decode() for g in grams])
            minhash = np.asarray(r.digest(), dtype=np.uint32)
        match = index.add(item_id, type(sig)(exact=sig.exact, minhash=minhash, text_hash=sig.text_hash))
        changed += (match is None) != (item_id not in reference)
    return changed


def main() -> None:
    from synth.dedup import find_duplicate_matches, load_signatures
    from testing.dedup_reference import near_duplicate_corpus, reference_duplicate_matches

    items = near_duplicate_corpus(N_TEXTS, words=WORDS, seed=19)
    per_unit = -(-len(items) // N_UNITS)
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(WORKERS) as pool:
        units = []
        for u in range(N_UNITS):
            chunk = items[u * per_unit : (u + 1) * per_unit]
            path = Path(tmp) / f"unit-{u:05d}.parquet"
            pq.write_table(pa.table({"id": [i for i, _ in chunk], "text": [t for _, t in chunk]}), path)
            units.append((str(path), str(Path(tmp) / "signatures" / f"part-{u:05d}.parquet")))
        list(pool.map(_warm, range(WORKERS)))

        # Each path is one whole-corpus pass, so they cannot be interleaved: today's first,
        # then the new one, back to back in this process.
        t0, cpu0 = time.perf_counter(), time.process_time()
        today = reference_duplicate_matches(items)
        today_s, today_cpu = time.perf_counter() - t0, time.process_time() - cpu0

        t0 = time.perf_counter()
        done = list(pool.map(sign_unit, *zip(*units, strict=True)))
        map_s = time.perf_counter() - t0
        signed, map_cpu = sum(n for n, _ in done), sum(c for _, c in done)
        t1, cpu1 = time.perf_counter(), time.process_time()
        signatures = load_signatures(Path(side) for _, side in units)
        new = find_duplicate_matches(items, signatures=signatures)
        barrier_s, barrier_cpu = time.perf_counter() - t1, time.process_time() - cpu1
        new_s = map_s + barrier_s

    sample = items[:SAMPLE]
    result = {
        "texts": len(items),
        "signed_in_units": signed,
        "units": N_UNITS,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "dropped_today": len(today),
        "dropped_new": len(new),
        "identical_kept_set": set(today) == set(new),
        "identical_matches": today == new,
        "today_single_process_s": round(today_s, 2),
        "new_map_units_s": round(map_s, 2),
        "new_barrier_s": round(barrier_s, 2),
        "new_total_s": round(new_s, 2),
        "ratio_today_over_new": round(today_s / new_s, 3),
        "goal_ratio": 1.8,
        # CPU seconds, for a view that the other load on a shared machine does not skew.
        "today_cpu_s": round(today_cpu, 2),
        "new_cpu_s_map_units_plus_barrier": round(map_cpu + barrier_cpu, 2),
        "signing_sample_texts": len(sample),
        **signing_costs(sample),
        "rensa_changed_decisions_in_sample": rensa_disagreements(sample),
    }
    print(json.dumps(result, indent=2))
    if not result["identical_matches"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
