"""Embedded server throughput: the batching loop against continuous batching and one-at-a-time.

Starts the constrained server on the embedded model once per mode and sends the same load:
``--clients`` concurrent clients, each a chain of ``--chain`` dependent requests (the next is
sent when the previous answers, as an agent's steps are), prompts of ``--prompt-words`` words
and reply caps cycling through 24..96 tokens, half of them with a JSON schema. Prints per
mode the wall time and completion tokens/s, then the loop's speed as a ratio to each other
mode on the same load (> 1: the loop is faster).

    .venv/bin/python bench/embedded.py [--clients 8] [--chain 2] [--prompt-words 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from synth.llm.embedded import EMBEDDED_MAX_CONCURRENCY, default_threads, ensure_model_dir, served_models

MODES = {
    "loop": ["--batch-size", str(EMBEDDED_MAX_CONCURRENCY)],
    "continuous": ["--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "256"],
    "sequential": ["--batch-size", "1"],
}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "facts",
        "schema": {
            "type": "object",
            "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
            "required": ["facts"],
        },
    },
}
SENTENCE = "Riverton welcomed 2.41 million overnight visitors in 2024, up from 2.22 million in 2023."


def start(mode: str, model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "synth.llm.constrained_server", model_dir.name, "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": str(default_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(  # noqa: S603 (our own module)
        argv + MODES[mode], cwd=model_dir.parent, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while served_models(f"http://127.0.0.1:{port}/v1", timeout_s=1.0) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{mode}: the server did not start")
        time.sleep(0.5)
    return proc


async def load(url: str, model: str, clients: int, chain: int, words: int) -> tuple[float, int]:
    text = " ".join([SENTENCE] * max(1, words // 15))
    caps = [24, 48, 72, 96]

    async def client(session: aiohttp.ClientSession, c: int) -> int:
        tokens = 0
        for step in range(chain):
            body: dict[str, object] = {
                "model": model,
                "messages": [
                    {"role": "user", "content": f"Client {c}, step {step}. List facts from: {text}"}
                ],
                "max_tokens": caps[(c + step) % len(caps)],
                "temperature": 0.8,
            }
            if (c + step) % 2 == 0:
                body["response_format"] = SCHEMA
            async with session.post(url + "/chat/completions", json=body) as resp:
                resp.raise_for_status()
                tokens += (await resp.json())["usage"]["completion_tokens"]
        return tokens

    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        counts = await asyncio.gather(*[client(session, c) for c in range(clients)])
        return time.perf_counter() - started, sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--chain", type=int, default=2)
    parser.add_argument("--prompt-words", type=int, default=300)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args()
    model_dir = ensure_model_dir()
    results: dict[str, tuple[float, int]] = {}
    for mode in args.modes.split(","):
        proc = start(mode, model_dir, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}/v1"
            model = (served_models(url) or [model_dir.name])[0]
            asyncio.run(load(url, model, 1, 1, 5))  # warm-up: loads the model and the grammar tables
            wall, tokens = asyncio.run(load(url, model, args.clients, args.chain, args.prompt_words))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        results[mode] = (wall, tokens)
        print(
            f"{mode:11s} wall {wall:7.1f} s  completion tokens {tokens:5d}  {tokens / wall:6.1f} tokens/s",
            flush=True,
        )
    if "loop" in results:
        loop_speed = results["loop"][1] / results["loop"][0]
        for mode, (wall, tokens) in results.items():
            if mode != "loop":
                print(
                    f"loop / {mode}: {loop_speed / (tokens / wall):.2f}x tokens/s, {wall / results['loop'][0]:.2f}x wall"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
