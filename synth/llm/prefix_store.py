"""Keys and values of recently decoded sequences, so a new prompt prefills only what it adds.

A pipeline's prompts repeat themselves: every request of a stage opens with the same system
prompt, an agent's next step is its last prompt plus the reply and the tool's response, and
the decisions of one trajectory share its question and earlier steps. In a causal model the
keys and values of a token depend only on the tokens before it, so the cache of any stored
sequence is valid, position for position, for every prompt that starts with the same tokens.

``PrefixStore`` keeps whole sequences (prompt and reply) of finished rows, one batch row
each, up to ``max_positions`` positions in all, least recently used out first; ``longest``
finds the entry sharing the longest prefix with a prompt.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import count

import torch

MIN_REUSE = 16  # shorter shared prefixes are not worth a separate prefill


@dataclass(frozen=True)
class PrefixHit:
    length: int  # prompt tokens whose keys and values come from the store
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer [1, heads, length, dim], views


class PrefixStore:
    """Sequences' keys and values, found by longest common prefix (module docstring)."""

    def __init__(self, max_positions: int) -> None:
        self.max_positions = max_positions
        self._entries: OrderedDict[int, tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = (
            OrderedDict()
        )
        self._ids = count()
        self.positions = 0
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to the store, for logs and tests
        self._lock = threading.Lock()  # prefills look up while the decode thread adds

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompt: list[int]) -> PrefixHit | None:
        """The stored prefix shared with ``prompt`` (at most all but its last token), if long enough."""
        with self._lock:
            return self._longest(prompt)

    def _longest(self, prompt: list[int]) -> PrefixHit | None:
        if not self._entries:
            return None
        wanted = torch.tensor(prompt[:-1], dtype=torch.long)  # the last token's logits are needed
        best_id, best = None, 0
        for entry_id, (tokens, _) in self._entries.items():
            shared = _common_prefix(tokens, wanted)
            if shared > best:
                best_id, best = entry_id, shared
        if best_id is None or best < MIN_REUSE:
            return None
        self._entries.move_to_end(best_id)
        self.reused_tokens += best
        layers = self._entries[best_id][1]
        return PrefixHit(best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers])

    def add(self, tokens: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store a sequence: ``tokens`` and, per layer, its ``[1, heads, len(tokens), dim]`` keys and values.

        The tensors are kept as given (callers pass copies). An entry that is a prefix of the
        new sequence is dropped: the new one answers for it.
        """
        if len(tokens) < MIN_REUSE or len(tokens) > self.max_positions:
            return
        with self._lock:
            self._add(tokens, layers)

    def _add(self, tokens: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        new = torch.tensor(tokens, dtype=torch.long)
        for entry_id, (stored, _) in list(self._entries.items()):
            if len(stored) <= len(new) and _common_prefix(stored, new) == len(stored):
                self._drop(entry_id)
        self._entries[next(self._ids)] = (new, layers)
        self.positions += len(new)
        while self.positions > self.max_positions:
            self._drop(next(iter(self._entries)))

    def _drop(self, entry_id: int) -> None:
        tokens, _ = self._entries.pop(entry_id)
        self.positions -= len(tokens)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0]) if differs.numel() else n
