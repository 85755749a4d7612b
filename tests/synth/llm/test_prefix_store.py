"""Prefix reuse in the embedded server: a prompt that starts like an earlier sequence prefills
only the rest, and decodes exactly what it decodes from scratch (greedy, the real SmolLM2)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from synth.llm.decode_batch import DecodeBatch, Row
from synth.llm.prefix_store import MIN_REUSE, PrefixStore

SYSTEM = (
    "<|im_start|>system\nYou turn a text into facts: short sentences, each with its date and its source. "
    "Reply with JSON only.<|im_end|>\n<|im_start|>user\n"
)


def kv(length: int, tag: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of [1, 2, length, 4] keys and values whose position p holds p + tag."""
    positions = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1).expand(1, 2, length, 4) + tag
    return [(positions.clone(), -positions.clone()) for _ in range(2)]


def test_the_longest_shared_prefix_wins_and_the_prompts_last_token_is_left_to_prefill() -> None:
    store = PrefixStore(10_000)
    short, long = list(range(100, 140)), list(range(100, 180))
    store.add(short, kv(len(short), tag=0.5))
    store.add([7] * 50 + long, kv(50 + len(long)))  # shares nothing at its start
    store.add(long, kv(len(long)))  # extends `short`: `short` is dropped, `long` answers for it
    assert len(store) == 2
    hit = store.longest(long[:60] + [1, 2, 3])
    assert hit is not None and hit.length == 60
    assert hit.layers[0][0].shape == (1, 2, 60, 4) and float(hit.layers[0][0][0, 0, 59, 0]) == 59.0
    whole = store.longest(long)  # the same prompt again: all but its last token
    assert whole is not None and whole.length == len(long) - 1
    assert store.reused_tokens == 60 + len(long) - 1


def test_a_shared_prefix_shorter_than_the_minimum_is_not_reused() -> None:
    store = PrefixStore(10_000)
    store.add(list(range(MIN_REUSE * 2)), kv(MIN_REUSE * 2))
    assert store.longest(list(range(MIN_REUSE - 1)) + [99_999, 5]) is None
    assert store.longest(list(range(MIN_REUSE)) + [99_999, 5]) is not None


def test_the_store_keeps_at_most_its_positions_least_recently_used_out_first() -> None:
    store = PrefixStore(100)
    first, second, third = ([n] * 40 for n in (1, 2, 3))
    store.add(first, kv(40))
    store.add(second, kv(40))
    assert store.longest(first + [0]) is not None  # `first` is now the most recently used
    store.add(third, kv(40))  # 120 > 100 positions: `second` goes
    assert store.positions == 80
    assert store.longest(second + [0]) is None
    assert store.longest(first + [0]) is not None and store.longest(third + [0]) is not None


def decode(model: Any, prompt: list[int], max_new_tokens: int, store: PrefixStore | None) -> list[int]:
    """Greedy tokens of one request decoded by a ``DecodeBatch`` over ``store``."""
    done: list[list[int]] = []

    def fail(err: BaseException) -> None:
        raise err

    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=2)
    batch = DecodeBatch(model, [2], None, store)
    batch.admit([Row.of(prompt, config, None, done.append, fail)])
    while batch.rows:
        batch.step()
    return done[0]


def test_an_agents_next_step_reuses_its_last_sequence_and_decodes_what_it_decodes_from_scratch(
    model: Any, tokenizer: Any
) -> None:
    store = PrefixStore(8192)
    first_prompt = tokenizer(SYSTEM + "Riverton welcomed 2.41 million overnight visitors in 2024.").input_ids
    reply = decode(model, first_prompt, 24, store)
    assert len(store) == 1
    # The next step: everything so far, then the tool's response.
    follow_up = (
        first_prompt + reply + tokenizer("\nThe tool says: up from 2.22 million in 2023. So").input_ids
    )
    reused = decode(model, follow_up, 24, store)
    assert store.reused_tokens == len(first_prompt) + len(reply) - 1  # all the cache held of the first
    assert reused == decode(model, follow_up, 24, None)


def test_requests_of_one_stage_reuse_their_system_prompt(model: Any, tokenizer: Any) -> None:
    store = PrefixStore(8192)
    decode(model, tokenizer(SYSTEM + "Alma Reyes founded Riverton in 1851.").input_ids, 16, store)
    second = tokenizer(SYSTEM + "The Ostrava plant opened in March 2019.").input_ids
    reused = decode(model, second, 16, store)
    shared = len(tokenizer(SYSTEM).input_ids)
    assert shared <= store.reused_tokens < len(second)
    assert reused == decode(model, second, 16, None)


def test_a_reusing_row_and_a_fresh_row_admitted_together_each_decode_as_alone(
    model: Any, tokenizer: Any
) -> None:
    store = PrefixStore(8192)
    decode(model, tokenizer(SYSTEM + "Alma Reyes founded Riverton in 1851.").input_ids, 16, store)
    reusing = tokenizer(SYSTEM + "The Ostrava plant opened in March 2019.").input_ids
    fresh = tokenizer("Count: 1 2 3").input_ids  # shares nothing
    done: dict[int, list[int]] = {}
    config = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=2)
    batch = DecodeBatch(model, [2], None, store)
    batch.admit(
        [
            Row.of(prompt, config, None, lambda tokens, i=i: done.__setitem__(i, tokens), print)
            for i, prompt in enumerate([reusing, fresh])
        ]
    )
    while batch.rows:
        batch.step()
    assert store.reused_tokens >= len(tokenizer(SYSTEM).input_ids)
    assert done[0] == decode(model, reusing, 16, None)
    assert done[1] == decode(model, fresh, 16, None)
