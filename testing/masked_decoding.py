"""Decoding under a JSON-schema mask with random scores: a model with no idea, for grammar tests."""

from __future__ import annotations

import torch

from synth.llm.grammar import JsonConstraints, TrackedMatcher, apply_token_bitmask, fill_mask

EOS = 2  # SmolLM2's <|im_end|>


def decode_under_mask(
    constraints: JsonConstraints, grammar: str, seed: int, max_steps: int = 200
) -> list[int]:
    """Random scores every step, argmax after the mask, until EOS (tokens before it)."""
    tracked = TrackedMatcher(constraints.matcher(grammar))
    bitmask = torch.zeros((1, constraints.mask_words), dtype=torch.int32)
    generated: list[int] = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_steps):
        tracked.advance(generated)
        fill_mask(constraints, tracked, bitmask, 0)
        scores = torch.randn((1, constraints.vocab_size), generator=gen)
        token = int(apply_token_bitmask(scores, bitmask).argmax())
        if token == EOS:
            return generated
        generated.append(token)
    raise AssertionError(f"no EOS within {max_steps} tokens")
