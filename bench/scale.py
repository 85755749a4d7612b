"""bench/scale.py — documents to corpus at 1x, 4x and 16x input size: does anything grow faster than the input?

The pipeline: ``documents`` (JSONL pages, ``testing.scale_corpus``: facts, a tenth of the
pages near-duplicates of earlier ones) -> ``memory`` (one LLM call per page against the
fake OpenAI-compatible endpoint, a separate process with a fixed latency, whose responder
returns the page's own facts) -> ``corpus`` (knowledge texts per entity, MinHash dedup,
token counts). The same spec at ``base``, ``4 x base`` and ``16 x base`` pages (default
6,250, so the largest run has 100,000 pages and 100,000 LLM requests), each a fresh run on
one local Ray cluster started before the clock.

Printed per size and stage: wall time (first start to last finish of the stage; stages
overlap), records and records/s, failed rows, files written (shards, ledger, manifest
entries, dedup side files, request-cache segments); per size: driver and worker peak RSS.
Then the fitted exponents (least squares on log-log): time vs size (1.0 = linear) and
driver peak RSS vs size (0 = flat). Goals (issue 19): time exponent <= 1.1, driver RSS
exponent <= 0.2.

Run: ``.venv/bin/python -P bench/scale.py [--base 6250]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from synth.layout import RunLayout
from synth.spec import parse_spec
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig
from testing.scale_corpus import memory_responder, write_pages

assert memory_responder  # the fake server imports it by name

STAGES = ("documents", "memory", "corpus")
MULTIPLIERS = (1, 4, 16)


class RssPeaks:
    """Peak RSS of this process (the driver) and of the worker actor processes, sampled every 0.25 s."""

    def __init__(self) -> None:
        self.driver = 0
        self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        self.driver = max(self.driver, me.memory_info().rss)
        for proc in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if " ".join(proc.cmdline()).startswith("ray::UnitWorker"):
                    self.worker = max(self.worker, proc.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def __enter__(self) -> RssPeaks:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def tiny_tokenizer(directory: Path) -> Path:
    """A small byte-level BPE trained on a few lines (the corpus stage counts tokens with it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["Kalomi Corp was founded in 1950 and employs 300 people."] * 10, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def files_written(layout: RunLayout, stage: str) -> int:
    roots = [
        *(d / stage for d in layout.data_dirs),
        layout.manifest_entries / stage,
        layout.root / "signatures" / stage,
        layout.llm_cache / stage,
    ]
    return sum(1 for r in roots if r.exists() for f in r.rglob("*") if f.is_file())


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def run_size(pages: int, work: Path, server_url: str, tokenizer: Path) -> dict[str, Any]:
    inputs = write_pages(work / "inputs", pages, seed=pages)
    spec = parse_spec(
        {
            "name": "scale",
            "inputs": {"web": [str(p) for p in inputs]},
            "llm": {"base_url": server_url, "model": "fake-model", "max_concurrency": 64, "temperature": 0.0},
            "stages": {
                "documents": {"min_chars": 100},
                "memory": {},
                "corpus": {"include_knowledge": True, "tokenizer": str(tokenizer)},
            },
            "execution": {"unit_size": 1000},
            "output_dir": "runs",
        }
    )
    run_id = f"scale-{pages}"
    log = io.StringIO()
    with RssPeaks() as rss:
        rss_before = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        result = run_session(
            spec, run_id=run_id, base_dir=work, display=LogDisplay(log), out=log, print_summary=False
        )
        wall_s = time.perf_counter() - t0
    if result.outcome.state != "succeeded":
        sys.exit(
            f"{pages} pages: run {result.outcome.state}: {result.outcome.error}\n{log.getvalue()[-3000:]}"
        )
    layout = RunLayout(result.run_dir)
    progress = json.loads(layout.progress.read_text())["stages"]
    stages = {}
    for name in STAGES:
        p = progress.get(name, {})
        start, end = _ts(p.get("started_at")), _ts(p.get("finished_at"))
        stage_s = (end - start) if start and end else None
        stages[name] = {
            "wall_s": round(stage_s, 2) if stage_s else None,
            "records": p.get("records", 0),
            "records_per_s": round(p.get("records", 0) / stage_s, 1) if stage_s else None,
            "failed": p.get("failed", 0),
            "llm_requests": p.get("llm", {}).get("requests", 0),
            "files_written": files_written(layout, name),
        }
    return {
        "pages": pages,
        "wall_s": round(wall_s, 2),
        "driver_peak_rss_mb": round(rss.driver / 2**20, 1),
        "driver_rss_growth_mb": round((rss.driver - rss_before) / 2**20, 1),
        "worker_peak_rss_mb": round(rss.worker / 2**20, 1),
        "stages": stages,
    }


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) on log(x) by least squares."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=6250, help="pages at 1x (16x is the largest run)")
    parser.add_argument("--latency-s", type=float, default=0.05)
    args = parser.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load = os.getloadavg()
    print(f"machine load average (1/5/15 min) at the start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    config = FakeServerConfig(latency_s=args.latency_s, responder="testing.scale_corpus:memory_responder")
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, FakeOpenAIServer(config) as server:
            tokenizer = tiny_tokenizer(Path(tmp) / "tokenizer")
            for m in MULTIPLIERS:
                r = run_size(args.base * m, Path(tmp) / f"x{m}", server.base_url, tokenizer)
                results.append(r)
                print(json.dumps(r), flush=True)
    finally:
        ray.shutdown()

    print()
    for r in results:
        print(
            f"{r['pages']:>7} pages: {r['wall_s']:8.2f} s; driver peak RSS {r['driver_peak_rss_mb']} MB "
            f"(+{r['driver_rss_growth_mb']} MB during the run), worker peak RSS {r['worker_peak_rss_mb']} MB"
        )
        for name, s in r["stages"].items():
            print(
                f"{'':>9}{name:<10} {s['wall_s']} s, {s['records']} records ({s['records_per_s']}/s), "
                f"{s['failed']} failed, {s['llm_requests']} LLM requests, {s['files_written']} files"
            )
    sizes = [float(r["pages"]) for r in results]
    time_exp = exponent(sizes, [r["wall_s"] for r in results])
    rss_exp = exponent(sizes, [r["driver_peak_rss_mb"] for r in results])
    growth_exp = exponent(sizes, [max(r["driver_rss_growth_mb"], 1.0) for r in results])
    stage_exps = {
        name: round(exponent(sizes, [r["stages"][name]["wall_s"] or 1e-3 for r in results]), 3)
        for name in STAGES
    }
    print(f"time exponent (wall vs pages): {time_exp:.3f} (goal <= 1.1); per stage: {stage_exps}")
    print(
        f"driver peak RSS exponent: {rss_exp:.3f} (goal <= 0.2); of its growth during the run: {growth_exp:.3f}"
    )
    load = os.getloadavg()
    print(
        f"machine load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
