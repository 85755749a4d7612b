"""The CPT tokenizer: loaded from a local path only, used to count tokens and to tokenize.

The corpus stage counts tokens with it (to route records to CPT stage 1 or 2) and
``agentcpt tokenize`` writes its ids to megatron's indexed format, so both must agree
on one tokenizer: the embedded model's by default (``synth.llm.embedded``), or any
local directory holding a ``tokenizer.json`` (or a file path to one).

We drive the Rust ``tokenizers`` backend directly rather than a ``transformers``
wrapper: it is the fastest encoder available here (the tokenize benchmark measures
against it) and it never reaches for a model hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Document separators, most specific first. An instruct model's eos token
# (SmolLM2-Instruct's `<|im_end|>`, Llama-3-Instruct's `<|eot_id|>`) ends a chat turn,
# not a document; pre-training separates documents with the base model's end-of-text
# token, so those are preferred over `eos_token` from tokenizer_config.json.
_EOD_CANDIDATES: tuple[str, ...] = ("<|endoftext|>", "<|end_of_text|>")
_EOD_FALLBACKS: tuple[str, ...] = ("</s>", "<eos>", "<|eos|>")

# megatron-core's `DType.optimal_dtype`: token ids below this cardinality fit uint16.
UINT16_MAX_VOCAB = 65500


class TokenizerNotFoundError(FileNotFoundError):
    """No usable tokenizer at the given path (the CLI reports it as bad input, exit 2)."""


@dataclass(frozen=True)
class CPTTokenizer:
    """A loaded tokenizer plus what megatron needs from it: the EOD id and the vocab size."""

    path: Path
    backend: Tokenizer
    eod_id: int
    eod_token: str
    vocab_size: int

    @property
    def dtype(self) -> type[np.integer]:
        """Token dtype of the indexed dataset: uint16 below 65,500 ids (as megatron chooses), else int32."""
        return np.uint16 if self.vocab_size < UINT16_MAX_VOCAB else np.int32

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added as the tokenizer's post-processor says)."""
        return [e.ids for e in self._encode(texts)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text (without the EOD that tokenize appends)."""
        return [len(e) for e in self._encode(texts)]

    def _encode(self, texts: Sequence[str]) -> list:
        # `encode_batch_fast` (tokenizers >= 0.20.2) skips character offsets, which we
        # never use; it is the same ids, measured ~15% faster here.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return encode(list(texts))


def tokenizer_json_path(path: str | Path) -> Path:
    """The ``tokenizer.json`` of a local tokenizer directory (or the file itself); raises if absent."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise TokenizerNotFoundError(
            f"tokenizer: no tokenizer.json at {path} (give a local directory holding tokenizer.json, or the file)"
        )
    return p.resolve()


def default_tokenizer_dir() -> Path:
    """The embedded model's directory (its tokenizer is the default CPT tokenizer).

    Converting the bundled GGUF on first use is the embedded module's job; this only asks
    it where the directory is.
    """
    try:
        from synth.llm.embedded import ensure_model_dir
    except ImportError as err:
        raise TokenizerNotFoundError(
            f"tokenizer: none given and the embedded model is unavailable ({err}); pass a local tokenizer path"
        ) from None
    return Path(ensure_model_dir())


def _choose_eod(backend: Tokenizer, config_dir: Path) -> tuple[str, int]:
    vocab = backend.get_vocab(with_added_tokens=True)
    eos_from_config: list[str] = []
    config_path = config_dir / "tokenizer_config.json"
    if config_path.is_file():
        eos = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos, dict):  # older configs store AddedToken dicts
            eos = eos.get("content")
        if isinstance(eos, str):
            eos_from_config.append(eos)
    for token in (*_EOD_CANDIDATES, *eos_from_config, *_EOD_FALLBACKS):
        if token in vocab:
            return token, vocab[token]
    raise TokenizerNotFoundError(
        f"tokenizer: {config_dir} has no end-of-document token (tried {', '.join(_EOD_CANDIDATES + _EOD_FALLBACKS)})"
    )


@lru_cache(maxsize=8)
def load_tokenizer(path: str | Path | None = None) -> CPTTokenizer:
    """Load the CPT tokenizer from a local path (None: the embedded model's). Cached per path.

    Raises ``TokenizerNotFoundError`` (a ``FileNotFoundError``) naming the path when there
    is no ``tokenizer.json`` there.
    """
    # Belt and braces: nothing below reaches a hub, but a transformers import elsewhere in
    # the process must not either.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    json_path = tokenizer_json_path(default_tokenizer_dir() if path is None else path)
    backend = Tokenizer.from_file(str(json_path))
    eod_token, eod_id = _choose_eod(backend, json_path.parent)
    # The largest id + 1, not len(vocab): added tokens may leave holes in the id space.
    vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
    return CPTTokenizer(
        path=json_path, backend=backend, eod_id=eod_id, eod_token=eod_token, vocab_size=vocab_size
    )
