"""`agentcpt tokenize` throughput vs the raw Rust tokenizer on the same texts (the limit).

Real text: the 200 WebDancer trajectories in ../shared/data (every message joined) plus
the quickstart pages, repeated with variation (messages rotated, a varying header) until
at least 5M tokens, written as corpus-shaped Parquet files (text, kind, cpt_stage).

Measured in one process, interleaved (limit, ours, limit, ours, ...), best of each:

* the limit: ``Tokenizer.encode_batch`` over all texts in one call, texts already in memory
  (the issue's reference); ``encode_batch_fast`` (no offsets) is printed as a stricter one;
* ours: ``pretrain.tokenize.tokenize_files`` end to end: Parquet read, encode, ids to numpy
  with EOD, ``.bin``/``.idx`` writes, merge, blend files.

Prints tokens/s of each and the ratio ours / encode_batch (goal >= 0.85). Tokens are
the texts' tokens (EODs not counted) for both. Tokenizer: the embedded model's
(SmolLM2-135M-Instruct), or ``--tokenizer DIR``.
"""

from __future__ import annotations

import sys
from os.path import abspath, dirname

# Run as `python bench/tokenize.py` (as `make bench` does), this file's directory is first on
# sys.path and its name shadows the stdlib `tokenize` that `inspect`/`linecache` import.
if sys.path and abspath(sys.path[0]) == dirname(abspath(__file__)):
    sys.path.pop(0)

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.tokenize import tokenize_files
from synth.tokens import CPTTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAJECTORIES = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"
PAGES = REPO / "configs" / "quickstart" / "pages"
MIN_TOKENS = 5_000_000
N_FILES = 8
KINDS = ["planning", "reasoning", "rollout", "decision", "knowledge"]


def base_texts() -> list[list[str]]:
    """Each real document as a list of parts (messages, or page paragraphs) to rotate."""
    docs: list[list[str]] = []
    with open(TRAJECTORIES, encoding="utf-8") as f:
        for line in f:
            docs.append([m["content"] for m in json.loads(line)["messages"]])
    for page in sorted(PAGES.glob("*.html")) if PAGES.is_dir() else []:
        import trafilatura

        text = trafilatura.extract(page.read_text(encoding="utf-8")) or ""
        docs.append([p for p in text.split("\n") if p.strip()] or [text])
    return docs


def corpus_texts(tok: CPTTokenizer) -> tuple[list[str], int]:
    """Variants of the real documents until they hold at least MIN_TOKENS tokens, and that count."""
    docs = base_texts()
    texts: list[str] = []
    total = 0
    variant = 0
    while total < MIN_TOKENS:
        batch = []
        for i, parts in enumerate(docs):
            k = variant % len(parts)
            batch.append(f"Sample {i}, variant {variant}.\n\n" + "\n\n".join(parts[k:] + parts[:k]))
        total += sum(tok.count_tokens(batch))
        texts += batch
        variant += 1
    return texts, total


def write_inputs(texts: list[str], directory: Path) -> list[Path]:
    files = []
    per = -(-len(texts) // N_FILES)
    for f in range(N_FILES):
        chunk = texts[f * per : (f + 1) * per]
        table = pa.table(
            {
                "text": chunk,
                "kind": [KINDS[(f * per + i) % len(KINDS)] for i in range(len(chunk))],
                "cpt_stage": pa.array([1 + (i % 4 == 0) for i in range(len(chunk))], pa.int8()),
            }
        )
        path = directory / f"part-{f:05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        files.append(path)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="local tokenizer directory (default: the embedded model's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each, interleaved; best is kept")
    ap.add_argument("--workers", type=int, default=None, help="tokenize_files workers (default: its own)")
    args = ap.parse_args()
    if not TRAJECTORIES.is_file():
        print(f"bench/tokenize: {TRAJECTORIES} not found (../shared/data is absent)", file=sys.stderr)
        return 2

    tok = load_tokenizer(args.tokenizer)
    texts, n_tokens = corpus_texts(tok)
    n_chars = sum(map(len, texts))
    print(f"texts: {len(texts)} docs, {n_chars / 1e6:.1f}M chars, {n_tokens / 1e6:.2f}M tokens ({tok.path})")

    work = Path(tempfile.mkdtemp(prefix="agentcpt-bench-tokenize-"))
    try:
        files = write_inputs(texts, work)
        names = ("encode_batch", "encode_batch_fast", "ours")
        best = dict.fromkeys(names, float("inf"))
        cpu = dict.fromkeys(names, float("inf"))  # process CPU time, all threads: robust to a busy machine
        for r in range(args.repeats):
            for name in names:
                out = work / f"out-{r}"
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "encode_batch":
                    tok.backend.encode_batch(texts)
                elif name == "encode_batch_fast":
                    tok.backend.encode_batch_fast(texts)
                else:
                    result = tokenize_files(files, tok, f"{out}/", workers=args.workers, progress_stream=None)
                best[name] = min(best[name], time.perf_counter() - t0)
                cpu[name] = min(cpu[name], time.process_time() - c0)
            assert result.documents == len(texts) and result.tokens == n_tokens + len(texts), (
                "token count mismatch"
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rate = {k: n_tokens / v for k, v in best.items()}
    for k, v in rate.items():
        print(
            f"{k:>18}: {v / 1e6:6.3f}M tokens/s  ({best[k]:.2f} s wall, {cpu[k]:.2f} s CPU; best of {args.repeats})"
        )
    ratio = rate["ours"] / rate["encode_batch"]
    print(f"ratio ours / encode_batch      = {ratio:.3f}  (goal >= 0.85)")
    print(
        f"ratio ours / encode_batch_fast = {rate['ours'] / rate['encode_batch_fast']:.3f}  (stricter: no offsets)"
    )
    print(f"CPU-time ratio encode_batch / ours = {cpu['encode_batch'] / cpu['ours']:.3f}  (work per token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
