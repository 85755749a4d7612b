"""The decode loop's growing KV cache: the same tokens as transformers' own, without a copy per step."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from synth.llm.kv_cache import growing_cache


def greedy_tokens(model: Any, tokenizer: Any, cache: Any, steps: int) -> list[int]:
    """Prefill a prompt into ``cache``, then decode ``steps`` greedy tokens one forward at a time."""
    ids = torch.tensor(
        [tokenizer("Riverton welcomed 2.41 million overnight visitors in 2024, and").input_ids]
    )
    tokens: list[int] = []
    with torch.inference_mode():
        logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        for _ in range(steps):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits
    return tokens


def test_a_growing_cache_decodes_the_tokens_a_dynamic_cache_decodes(model: Any, tokenizer: Any) -> None:
    # 100 steps past a 19-token prompt: the buffers are reallocated several times on the way.
    cache = growing_cache()
    assert greedy_tokens(model, tokenizer, cache, 100) == greedy_tokens(model, tokenizer, DynamicCache(), 100)
    prompt = tokenizer("Riverton welcomed 2.41 million overnight visitors in 2024, and").input_ids
    assert cache.get_seq_length() == len(prompt) + 100  # every sampled token was fed back


def test_a_step_writes_into_the_buffer_instead_of_copying_the_cache() -> None:
    keys, values = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 10, 4)
    cache = growing_cache([(keys, values)])
    layer = cache.layers[0]
    buffer = layer.keys.untyped_storage().data_ptr()
    for _ in range(20):  # within the spare room every buffer gets
        new_keys, new_values = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        out_keys, out_values = layer.update(new_keys, new_values)
        assert out_keys.untyped_storage().data_ptr() == buffer  # a view of the same buffer: nothing copied
        assert torch.equal(out_keys[..., -1:, :], new_keys) and torch.equal(
            out_values[..., -1:, :], new_values
        )
    assert layer.get_seq_length() == 30
    assert torch.equal(layer.keys[..., :10, :], keys) and torch.equal(layer.values[..., :10, :], values)


def test_a_full_buffer_grows_and_keeps_what_it_held() -> None:
    cache = growing_cache()
    layer = cache.layers[0] if cache.layers else None
    written = []
    for _ in range(300):
        step = torch.randn(1, 2, 1, 4)
        written.append(step)
        cache.update(step, step * 2, 0)
        layer = cache.layers[0]
    assert layer is not None
    assert torch.equal(layer.keys, torch.cat(written, dim=-2))
    assert torch.equal(layer.values, torch.cat(written, dim=-2) * 2)


def test_selecting_rows_keeps_the_layer_consistent() -> None:
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)
    cache = growing_cache([(keys, -keys)])
    layer = cache.layers[0]
    layer.batch_select_indices(torch.tensor([1]))
    layer.update(torch.ones(1, 1, 1, 2), -torch.ones(1, 1, 1, 2))
    assert torch.equal(layer.keys, torch.cat([keys[1:], torch.ones(1, 1, 1, 2)], dim=-2))
    assert torch.equal(layer.values, -layer.keys)
