"""`agentcpt tokenize`: a corpus (or any Parquet glob) to megatron-core indexed datasets.

Output, for an output prefix ``P`` (default ``runs/<id>/megatron/``)::

    P cpt1_planning.bin / .idx      one dataset per CPT stage and kind, EOD after each document
    P cpt2_rollout.bin / .idx       ...
    P cpt1_rollout_heldout.bin / .idx   texts of held-out sources (run input only, pretrain/lineage.py)
    P blend_cpt1.json               per CPT stage: weights + prefixes (see pretrain/blend.py)
    P data_args_cpt1.txt            the same mixture for Megatron-LM's --data-args-path
    P per_split_data_args_cpt1.json ... and --per-split-data-args-path (valid = held out)
    P heldout.json                  held-out corpus ids and their sources (run input only)

A Parquet glob without ``cpt_stage``/``kind`` columns gives ``P text.bin/.idx`` and
``P blend.json``; a glob has no lineage, so nothing is held out.

How it is fast (bench/tokenize.py measures it against bare ``encode_batch``):

* Files are tokenized in parallel by threads, not processes: the Rust tokenizer
  releases the GIL and already spreads one batch over every core, so threads overlap
  one file's Python work (Arrow → str, ids → numpy, writes) with another's encoding
  without the start-up and pickling cost of processes.
* Texts are encoded in chunks of a few MB; each chunk's ids become one numpy array
  (``np.fromiter`` over the chained id lists, EOD appended) written with one ``write``
  per dataset.
* Parts are merged by concatenating ``.bin`` files and length arrays and writing the
  index with numpy, byte-identical to megatron's ``IndexedDatasetBuilder.add_index`` +
  ``finalize`` (tests/pretrain/test_tokenize.py checks it) but without its per-document
  Python loop and without importing torch.

Everything is written under a temp directory next to the output and renamed into place
at the end (blend files last), so an interrupted or failed run leaves no partial output.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pretrain.blend import (
    BlendDataset,
    BlendFile,
    TokenizerInfo,
    blend_json,
    data_args_name,
    data_args_text,
    make_blend,
    per_split_data_args,
    per_split_data_args_name,
)
from pretrain.lineage import DEFAULT_FRACTION, HELDOUT_FILE, HeldOut, read_run, split_by_lineage
from synth.errors import UsageError
from synth.stages.corpus import KINDS
from synth.tokens import CPTTokenizer, load_tokenizer

# (cpt_stage, kind, split): one output dataset. cpt_stage is None for inputs without that
# column; split is "heldout" for texts of held-out sources, else "train".
GroupKey = tuple[int | None, str, str]

GROUP_COLUMNS = ("cpt_stage", "kind")
# Text per encode call: big enough to keep every core busy for a while, small enough
# that the Python id lists (~36 bytes per token) stay around 150 MB.
CHUNK_CHARS = 4 << 20
READ_BATCH_ROWS = 256

# megatron-core's .idx format (megatron/core/datasets/indexed_dataset.py, _IndexWriter).
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_INDEX_VERSION = 1
_DTYPE_CODES: dict[type, int] = {np.uint16: 8, np.int32: 4}

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# ---------------------------------------------------------------------------
# The indexed-dataset writer
# ---------------------------------------------------------------------------


def write_index(idx_path: Path, lengths: np.ndarray, dtype: type) -> None:
    """Write a megatron ``.idx`` for documents of one sequence each with these token counts."""
    itemsize = np.dtype(dtype).itemsize
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    with open(idx_path, "wb") as f:
        f.write(_INDEX_HEADER)
        f.write(struct.pack("<Q", _INDEX_VERSION))
        f.write(struct.pack("<B", _DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", n))  # sequences
        f.write(struct.pack("<Q", n + 1))  # document boundaries: one sequence per document
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(n + 1, dtype=np.int64).tobytes())
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Part:
    """One input file's documents of one dataset: a ``.bin`` and its document lengths."""

    bin_path: Path
    lengths: np.ndarray


class _PartWriter:
    """Appends documents (id lists, EOD added here) to one ``.bin``, one write per chunk."""

    def __init__(self, bin_path: Path, dtype: type, eod_id: int) -> None:
        self.bin_path = bin_path
        self.dtype = dtype
        self.eod_id = eod_id
        self._file = open(bin_path, "wb")  # closed in close() or abort()
        self._lengths: list[np.ndarray] = []

    def add(self, docs: list[list[int]]) -> int:
        for ids in docs:
            ids.append(self.eod_id)  # the lists are ours (fresh from the tokenizer)
        lengths = np.fromiter(map(len, docs), dtype=np.int32, count=len(docs))
        total = int(lengths.sum(dtype=np.int64))
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=self.dtype, count=total)
        self._file.write(flat.data)
        self._lengths.append(lengths)
        return total

    def close(self) -> Part:
        self._file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        return Part(self.bin_path, lengths)

    def abort(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------
# Tokenizing files
# ---------------------------------------------------------------------------


class _Progress:
    """Thread-safe counters, printed at most every ``interval_s`` (and once at the end)."""

    def __init__(self, n_files: int, stream: TextIO | None, interval_s: float = 2.0) -> None:
        self.n_files = n_files
        self.stream = stream
        self.interval_s = interval_s
        self.files_done = 0
        self.docs = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, docs: int, tokens: int, file_done: bool = False) -> None:
        with self._lock:
            self.docs += docs
            self.tokens += tokens
            self.files_done += int(file_done)
            now = time.perf_counter()
            if now - self._last >= self.interval_s:
                self._last = now
                self._print(now)

    def finish(self) -> None:
        self._print(time.perf_counter())

    def _print(self, now: float) -> None:
        if self.stream is None:
            return
        rate = self.tokens / max(now - self.started, 1e-9)
        print(
            f"tokenize: {self.files_done}/{self.n_files} files, {self.docs:,} docs, "
            f"{self.tokens:,} tokens, {rate / 1e6:.2f}M tokens/s",
            file=self.stream,
            flush=True,
        )


@dataclass
class FileResult:
    parts: dict[GroupKey, Part] = field(default_factory=dict)
    docs: int = 0
    tokens: int = 0
    null_texts: int = 0


def _safe(name: str) -> str:
    return _SAFE_NAME.sub("_", name) or "_"


def tokenize_file(
    path: Path,
    part_no: int,
    text_column: str,
    group_columns: Sequence[str],
    tokenizer: CPTTokenizer,
    work_dir: Path,
    progress: _Progress,
    heldout_ids: frozenset[str] = frozenset(),
) -> FileResult:
    """Tokenize one Parquet file into one ``.bin`` part per (cpt_stage, kind, split) group, in row order.

    Rows whose ``id`` is in ``heldout_ids`` go to the held-out split.
    """
    result = FileResult()
    writers: dict[GroupKey, _PartWriter] = {}
    texts: list[str] = []
    keys: list[GroupKey] = []
    n_chars = 0

    def flush() -> None:
        nonlocal texts, keys, n_chars
        if not texts:
            return
        ids = tokenizer.encode_batch(texts)
        by_group: dict[GroupKey, list[list[int]]] = {}
        for key, doc in zip(keys, ids, strict=True):
            by_group.setdefault(key, []).append(doc)
        tokens = 0
        for key, docs in by_group.items():
            writer = writers.get(key)
            if writer is None:
                name = f"part-{part_no:05d}-{_safe(str(key[0]))}-{_safe(key[1])}-{key[2]}.bin"
                writer = writers[key] = _PartWriter(work_dir / name, tokenizer.dtype, tokenizer.eod_id)
            tokens += writer.add(docs)
        result.docs += len(texts)
        result.tokens += tokens
        progress.add(len(texts), tokens)
        texts, keys, n_chars = [], [], 0

    try:
        parquet = pq.ParquetFile(path)
        columns = [text_column, *group_columns] + (["id"] if heldout_ids else [])
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            batch_texts = batch.column(text_column).to_pylist()
            stages = batch.column("cpt_stage").to_pylist() if "cpt_stage" in group_columns else None
            kinds = batch.column("kind").to_pylist() if "kind" in group_columns else None
            ids = batch.column("id").to_pylist() if heldout_ids else None
            for i, text in enumerate(batch_texts):
                if text is None:
                    result.null_texts += 1
                    continue
                stage = stages[i] if stages is not None else None
                kind = kinds[i] if kinds is not None and kinds[i] is not None else "text"
                split = "heldout" if ids is not None and ids[i] in heldout_ids else "train"
                texts.append(text)
                keys.append((stage, kind, split))
                n_chars += len(text)
            if n_chars >= CHUNK_CHARS:
                flush()
        flush()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    result.parts = {key: w.close() for key, w in writers.items()}
    progress.add(0, 0, file_done=True)
    return result


def merge_parts(parts: Sequence[Part], prefix: Path, dtype: type) -> np.ndarray:
    """Concatenate parts (in order) into ``prefix.bin`` + ``prefix.idx``; returns the document lengths."""
    bin_path = prefix.with_name(prefix.name + ".bin")
    if len(parts) == 1:
        os.replace(parts[0].bin_path, bin_path)
    else:
        with open(bin_path, "wb") as out:
            for p in parts:
                with open(p.bin_path, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
                p.bin_path.unlink()
    with open(bin_path, "rb+") as f:
        os.fsync(f.fileno())
    lengths = np.concatenate([p.lengths for p in parts])
    write_index(prefix.with_name(prefix.name + ".idx"), lengths, dtype)
    return lengths


# ---------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------


class DatasetSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpt_stage: int | None
    kind: str
    split: str = Field("train", description="train, or heldout (texts of held-out sources)")
    prefix: str = Field(description="absolute path prefix of the .bin/.idx")
    documents: int
    tokens: int = Field(description="tokens written, EOD included")


class TokenizeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasets: list[DatasetSummary]
    blend_files: list[str] = Field(description="one per CPT stage (or one for a plain glob)")
    heldout_documents: int = Field(0, description="documents of held-out sources (not trained on)")
    documents: int
    tokens: int
    null_texts: int = Field(description="rows whose text was null: not written, counted here")
    elapsed_s: float


def split_out_prefix(out: str | Path) -> tuple[Path, str]:
    """``runs/x/megatron/`` -> (that directory, ""); ``data/mix`` -> (``data``, ``"mix_"``)."""
    s = str(out)
    if s.endswith(("/", os.sep)) or Path(s).is_dir():
        return Path(s), ""
    p = Path(s)
    return p.parent, p.name + "_"


def dataset_name(key: GroupKey) -> str:
    stage, kind, split = key
    name = f"cpt{stage}_{_safe(kind)}" if stage is not None else _safe(kind)
    return name + ("_heldout" if split == "heldout" else "")


def _group_order(key: GroupKey) -> tuple[bool, int, bool, int, str]:
    # CPT stage, training datasets before held-out ones, then the pipeline's kind order
    # (planning, ..., knowledge), other names after.
    stage, kind, split = key
    rank = KINDS.index(kind) if kind in KINDS else len(KINDS)
    return (stage is None, stage or 0, split == "heldout", rank, kind)


def blend_name(stage: int | None) -> str:
    return f"blend_cpt{stage}.json" if stage is not None else "blend.json"


def tokenize_files(
    files: Sequence[Path],
    tokenizer: CPTTokenizer,
    out: str | Path,
    text_column: str = "text",
    kind_weights: dict[str, float] | None = None,
    workers: int | None = None,
    progress_stream: TextIO | None = sys.stderr,
    heldout: HeldOut | None = None,
    replay_share: float = 0.0,
) -> TokenizeResult:
    """Tokenize Parquet ``files`` into megatron datasets + blend files under the prefix ``out``.

    With ``replay_share``, CPT stage 2's blend draws that share of its samples from stage 1's
    training datasets (``with_replay``; the corpus's ``stage2.replay_share``).

    Rows are split by ``cpt_stage`` and ``kind`` when every file has those columns, and
    rows listed in ``heldout`` (by ``id``) go to held-out datasets. Documents keep file
    order, then row order. Raises ``UsageError`` naming the file when one is not Parquet
    or lacks ``text_column`` (or ``id``, with ``heldout``).
    """
    started = time.perf_counter()
    if not files:
        raise UsageError("tokenize: no input files")
    schemas = [_read_schema(p, text_column) for p in files]
    group_columns = [c for c in GROUP_COLUMNS if all(c in s.names for s in schemas)]
    heldout_ids = heldout.ids if heldout is not None else frozenset()
    if heldout_ids:
        for p, schema in zip(files, schemas, strict=True):
            if "id" not in schema.names:
                raise UsageError(f"tokenize: {p} has no 'id' column to hold texts out by")
    workers = workers or min(len(files), 2)
    if workers < 1:
        raise UsageError("--workers: must be at least 1")

    out_dir, name_prefix = split_out_prefix(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / f".tokenize-tmp-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir()
    progress = _Progress(len(files), progress_stream)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize") as pool:
            futures = [
                pool.submit(
                    tokenize_file,
                    p,
                    i,
                    text_column,
                    group_columns,
                    tokenizer,
                    work_dir,
                    progress,
                    heldout_ids,
                )
                for i, p in enumerate(files)
            ]
            try:
                results = [f.result() for f in futures]  # file order, whatever finished first
            except BaseException:
                for f in futures:  # files not started yet need not be
                    f.cancel()
                raise
        progress.finish()

        # Merge every group's parts in file order, into final names inside work_dir.
        keys = sorted({k for r in results for k in r.parts}, key=_group_order)
        summaries: list[DatasetSummary] = []
        for key in keys:
            name = name_prefix + dataset_name(key)
            lengths = merge_parts(
                [r.parts[key] for r in results if key in r.parts], work_dir / name, tokenizer.dtype
            )
            summaries.append(
                DatasetSummary(
                    cpt_stage=key[0],
                    kind=key[1],
                    split=key[2],
                    prefix=str((out_dir / name).resolve()),
                    documents=len(lengths),
                    tokens=int(lengths.sum(dtype=np.int64)),
                )
            )

        info = TokenizerInfo(
            path=str(tokenizer.path),
            vocab_size=tokenizer.vocab_size,
            eod_id=tokenizer.eod_id,
            eod_token=tokenizer.eod_token,
            dtype=np.dtype(tokenizer.dtype).name,
        )
        blends: dict[str, BlendFile] = {}
        for stage in sorted({s.cpt_stage for s in summaries}, key=lambda s: (s is None, s or 0)):
            datasets = [
                BlendDataset(
                    kind=s.kind,
                    prefix=s.prefix,
                    documents=s.documents,
                    tokens=s.tokens,
                    weight=0.0,
                    split="heldout" if s.split == "heldout" else "train",
                )
                for s in summaries
                if s.cpt_stage == stage
            ]
            blends[name_prefix + blend_name(stage)] = make_blend(stage, datasets, kind_weights or {}, info)
        first, second = name_prefix + blend_name(1), name_prefix + blend_name(2)
        if replay_share > 0 and first in blends and second in blends:
            blends[second] = with_replay(blends[second], blends[first], replay_share)
        side_files = _megatron_lm_files(blends, heldout, name_prefix)
        for name, text in side_files.items():
            (work_dir / name).write_text(text, encoding="utf-8")
        for name, blend in blends.items():
            (work_dir / name).write_text(blend_json(blend), encoding="utf-8")

        # Publish: data files first, blend files last, so a blend never names a missing file.
        for s in summaries:
            name = Path(s.prefix).name
            for ext in (".bin", ".idx"):
                os.replace(work_dir / (name + ext), out_dir / (name + ext))
        for name in [*side_files, *blends]:
            os.replace(work_dir / name, out_dir / name)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    return TokenizeResult(
        datasets=summaries,
        blend_files=[str((out_dir / n).resolve()) for n in blends],
        heldout_documents=sum(s.documents for s in summaries if s.split == "heldout"),
        documents=sum(r.docs for r in results),
        tokens=sum(s.tokens for s in summaries),
        null_texts=sum(r.null_texts for r in results),
        elapsed_s=time.perf_counter() - started,
    )


def with_replay(target: BlendFile, earlier: BlendFile, share: float) -> BlendFile:
    """``target``'s mixture with ``share`` of its weight moved to ``earlier``'s training datasets (in
    their own proportions): stage 2 keeps replaying stage 1's data, against forgetting."""
    own = [d.model_copy(update={"weight": d.weight * (1 - share)}) for d in target.datasets]
    replay = [
        d.model_copy(update={"weight": d.weight * share})
        for d in earlier.datasets
        if d.split == "train" and d.weight > 0
    ]
    datasets = own + replay
    data_path: list[str] = []
    for d in datasets:
        if d.weight > 0:
            data_path += [repr(d.weight), d.prefix]
    return BlendFile(
        cpt_stage=target.cpt_stage, data_path=data_path, datasets=datasets, tokenizer=target.tokenizer
    )


def _run_replay_share(run_dir: Path) -> tuple[float, bool]:
    """(stage 2's replay share, whether the spec's mixture gives stage 2 a target) of a run's spec."""
    from synth.spec import load_spec

    spec_path = run_dir / "spec.yaml"
    corpus_cfg = load_spec(spec_path).stages.corpus if spec_path.is_file() else None
    if corpus_cfg is None:
        return 0.0, False
    return corpus_cfg.stage2.replay_share, corpus_cfg.stage2.target_share > 0


def _megatron_lm_files(
    blends: dict[str, BlendFile], heldout: HeldOut | None, name_prefix: str
) -> dict[str, str]:
    """Megatron-LM data-argument files next to every blend, and the held-out list (name -> text)."""
    import json

    files: dict[str, str] = {}
    for name, blend in blends.items():
        try:
            files[data_args_name(name)] = data_args_text(blend)
            files[per_split_data_args_name(name)] = json.dumps(per_split_data_args(blend), indent=2) + "\n"
        except ValueError as err:  # a prefix with whitespace: Megatron-LM could not read it back
            print(f"tokenize: no Megatron-LM data-args file for {name}: {err}", file=sys.stderr)
    if heldout is not None:
        files[name_prefix + HELDOUT_FILE] = heldout.model_dump_json(indent=1) + "\n"
    return files


def _read_schema(path: Path, text_column: str) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UsageError(f"tokenize: {path} is not a readable Parquet file ({err})") from None
    if text_column not in schema.names:
        raise UsageError(
            f"--text-column: {path} has no column {text_column!r} (columns: {', '.join(schema.names)})"
        )
    if not (
        pa.types.is_string(schema.field(text_column).type)
        or pa.types.is_large_string(schema.field(text_column).type)
    ):
        raise UsageError(
            f"--text-column: column {text_column!r} of {path} is {schema.field(text_column).type}, not text"
        )
    return schema


# ---------------------------------------------------------------------------
# The CLI command
# ---------------------------------------------------------------------------


def _run_sources(run_id: str, output_dir: str) -> tuple[list[Path], dict[str, float], str | None]:
    """A run's committed corpus shards, its kind weights and its spec's tokenizer path."""
    from synth.layout import validate_run_id
    from synth.shards import ShardStore
    from synth.spec import load_spec

    run_dir = Path(output_dir) / validate_run_id(run_id)
    if not run_dir.is_dir():
        raise UsageError(f"run_id: no run {run_id!r} under {output_dir}/")
    files = ShardStore(run_dir).files("corpus")
    if not files:
        raise UsageError(f"run_id: run {run_id!r} has no corpus yet (enable stages.corpus and run it)")
    weights: dict[str, float] = {}
    tokenizer: str | None = None
    spec_path = run_dir / "spec.yaml"
    if spec_path.is_file():
        corpus_cfg = load_spec(spec_path).stages.corpus
        if corpus_cfg is not None:
            weights = {k: corpus_cfg.weight(k) for k in KINDS}
            tokenizer = corpus_cfg.tokenizer
    return files, weights, tokenizer


def _glob_sources(pattern: str) -> list[Path]:
    import glob

    files = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
    if not files:
        raise UsageError(f"--input: no file matches {pattern!r}")
    return files


def tokenize_command(
    run_id: str | None = None,
    input: str | None = None,  # the CLI's flag name
    text_column: str = "text",
    tokenizer: str | None = None,
    out: str | None = None,
    output_dir: str = "runs",
    workers: int | None = None,
    heldout_fraction: float = DEFAULT_FRACTION,
) -> int:
    """``agentcpt tokenize``: a run's corpus (split per CPT stage, kind and held-out source) or a Parquet glob.

    For a run, about ``heldout_fraction`` of each kind's source groups are held out
    (`pretrain.lineage`); 0 holds nothing out.
    """
    if (run_id is None) == (input is None):
        raise UsageError("tokenize: give either RUN_ID or --input GLOB")
    weights: dict[str, float] = {}
    spec_tokenizer: str | None = None
    heldout: HeldOut | None = None
    replay_share, wants_stage2 = 0.0, False
    if run_id is not None:
        files, weights, spec_tokenizer = _run_sources(run_id, output_dir)
        replay_share, wants_stage2 = _run_replay_share(Path(output_dir) / run_id)
        out = out or str(Path(output_dir) / run_id / "megatron") + "/"
        if heldout_fraction > 0:
            texts, lineage = read_run(Path(output_dir) / run_id)
            heldout = split_by_lineage(texts, lineage, heldout_fraction)
    else:
        assert input is not None
        files = _glob_sources(input)
        if out is None:
            raise UsageError("--out: required with --input (an output prefix, e.g. data/megatron/)")
    if workers is not None and workers < 1:
        raise UsageError("--workers: must be at least 1")
    tok = load_tokenizer(tokenizer or spec_tokenizer)
    print(
        f"tokenize: {len(files)} file(s) with {tok.path} (EOD {tok.eod_token!r}={tok.eod_id}, {np.dtype(tok.dtype).name})",
        file=sys.stderr,
    )
    result = tokenize_files(
        files, tok, out, text_column=text_column, kind_weights=weights, workers=workers, heldout=heldout,
        replay_share=replay_share,
    )  # fmt: skip
    if wants_stage2 and not any(d.cpt_stage == 2 and d.split == "train" for d in result.datasets):
        print(
            "tokenize: warning: the corpus has no CPT stage 2 texts, so no blend_cpt2.json was written "
            "(agentcpt stats shows what stage 2 is missing)",
            file=sys.stderr,
        )
    if heldout is not None:
        print(
            f"tokenize: held out {result.heldout_documents:,} texts of unseen sources "
            f"(~{heldout.fraction:.0%} of each kind's source groups; see {HELDOUT_FILE})",
            file=sys.stderr,
        )
    for d in result.datasets:
        print(f"{d.prefix}  {d.documents:,} docs  {d.tokens:,} tokens")
    for b in result.blend_files:
        print(f"blend: {b}")
    if result.null_texts:
        print(f"tokenize: skipped {result.null_texts} rows with a null {text_column!r}", file=sys.stderr)
    rate = result.tokens / max(result.elapsed_s, 1e-9)
    print(
        f"tokenize: {result.documents:,} docs, {result.tokens:,} tokens in {result.elapsed_s:.1f}s ({rate / 1e6:.2f}M tokens/s)",
        file=sys.stderr,
    )
    return 0
