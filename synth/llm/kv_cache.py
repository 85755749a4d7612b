"""A KV cache whose layers grow in place: the decode loop's cache (``synth.llm.decode_batch``).

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, which
copies the whole cache every step: O(n) per token, O(n²) per reply. Profiled on this machine
(SmolLM2-135M, 8 rows at ~500 positions, one thread) that copy was 45-62 % of a decode step's
CPU, more than the matrix products. A ``GrowingLayer`` writes the new positions into a buffer
with spare room instead and hands attention a view of the filled part; when the buffer is
full it is reallocated 1.5x larger, so the copying is amortised O(1) per token. The tokens
are the same (``tests/synth/llm/test_kv_cache.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers.cache_utils import Cache, DynamicLayer

GROWTH = 1.5
MIN_SPARE = 64  # positions of room a buffer gets at least when it is (re)allocated


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` backed by a buffer of ``[batch, heads, capacity, dim]``.

    ``keys`` / ``values`` are always views of the filled ``length`` positions, as the
    ``DynamicLayer`` methods that read them expect.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._adopt(key_states[..., :0, :], value_states[..., :0, :])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            self._reallocate(end)
        self._key_buffer[..., self._length : end, :] = key_states
        self._value_buffer[..., self._length : end, :] = value_states
        self._set_length(end)
        return self.keys, self.values  # type: ignore[return-value]

    # DynamicLayer's other mutators replace keys/values wholesale: adopt what they made.
    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized:
            self._adopt(self.keys, self.values)  # type: ignore[arg-type]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.is_initialized:
            self._adopt(self.keys, self.values)  # type: ignore[arg-type]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.is_initialized:
            self._adopt(self.keys, self.values)  # type: ignore[arg-type]

    # ----- the buffer -----

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy ``keys`` / ``values`` into fresh buffers with room to grow."""
        length = keys.shape[-2]
        self._key_buffer = _with_room(keys, _capacity(length))
        self._value_buffer = _with_room(values, _capacity(length))
        self._set_length(length)

    def _reallocate(self, needed: int) -> None:
        capacity = max(_capacity(needed), int(self._key_buffer.shape[-2] * GROWTH))
        self._key_buffer = _with_room(self.keys, capacity)  # type: ignore[arg-type]
        self._value_buffer = _with_room(self.values, capacity)  # type: ignore[arg-type]

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]


def growing_cache(layers: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Cache:
    """An empty cache of ``GrowingLayer`` s, or one holding copies of ``layers``' keys and values."""
    if layers is None:
        return Cache(layer_class_to_replicate=GrowingLayer)
    filled = []
    for keys, values in layers:
        layer = GrowingLayer()
        layer.device = keys.device
        layer._adopt(keys, values)
        layer.is_initialized = True
        filled.append(layer)
    return Cache(layers=filled)


def _capacity(length: int) -> int:
    return max(length + MIN_SPARE, int(length * GROWTH))


def _with_room(filled: torch.Tensor, capacity: int) -> torch.Tensor:
    """A ``[batch, heads, capacity, dim]`` buffer whose first positions are ``filled``."""
    batch, heads, length, dim = filled.shape
    buffer = filled.new_empty((batch, heads, capacity, dim))
    buffer[..., :length, :] = filled
    return buffer
