"""The decode loop's growing KV cache against transformers' ``DynamicCache`` on the same decode.

Prefills ``--rows`` prompts of ``--context`` random tokens into each cache, then decodes
``--steps`` greedy tokens for every row, one forward per step as the embedded server does.
Prints per cache the CPU seconds per step (process time: robust to other load on the
machine), whether both produced the same tokens, and the ratio dynamic / growing (> 1: the
growing cache is cheaper), at each context length — the gap widens with the context, since
``DynamicCache`` copies the whole cache at every step.

    .venv/bin/python -P bench/kv_cache.py [--rows 8] [--steps 64] [--context 256 1024]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from synth.llm.embedded import default_threads, ensure_model_dir
from synth.llm.kv_cache import growing_cache


def decode(
    model: Any, make_cache: Callable[[], Any], rows: int, context: int, steps: int
) -> tuple[float, torch.Tensor]:
    """(CPU seconds per decode step, the tokens) for ``rows`` rows after a ``context``-token prefill."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (rows, context), generator=generator)
    mask = torch.ones_like(ids)
    tokens = []
    with torch.inference_mode():
        cache = make_cache()
        logits = model(
            input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1
        ).logits
        last = logits[:, -1].argmax(-1)
        started = time.process_time()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
            positions = (mask.cumsum(dim=1) - 1)[:, -1:]
            logits = model(
                input_ids=last[:, None], attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1,
            ).logits  # fmt: skip
            last = logits[:, -1].argmax(-1)
            tokens.append(last)
        per_step = (time.process_time() - started) / steps
    return per_step, torch.stack(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="rows decoded together (the server's batch)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps per measurement")
    parser.add_argument(
        "--context", type=int, nargs="+", default=[256, 1024], help="prompt lengths in tokens"
    )
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    model = AutoModelForCausalLM.from_pretrained(ensure_model_dir()).eval()
    print(f"SmolLM2-135M, {args.rows} rows, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"{'context':>8} {'dynamic ms/step':>16} {'growing ms/step':>16} {'same tokens':>12} {'ratio':>7}")
    for context in args.context:
        dynamic_s, dynamic_tokens = decode(model, DynamicCache, args.rows, context, args.steps)
        growing_s, growing_tokens = decode(model, growing_cache, args.rows, context, args.steps)
        same = torch.equal(dynamic_tokens, growing_tokens)
        print(
            f"{context:>8} {dynamic_s * 1000:>16.1f} {growing_s * 1000:>16.1f} {str(same):>12}"
            f" {dynamic_s / growing_s:>7.2f}"
        )


if __name__ == "__main__":
    main()
