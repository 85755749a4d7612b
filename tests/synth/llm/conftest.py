"""The embedded model's tokenizer and its JSON-schema constraints, loaded once per session."""

from __future__ import annotations

from typing import Any

import pytest

from synth.llm.grammar import JsonConstraints
from testing.masked_decoding import EOS


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from synth.llm.embedded import ensure_model_dir

    return AutoTokenizer.from_pretrained(ensure_model_dir())


@pytest.fixture(scope="session")
def constraints(tokenizer: Any) -> JsonConstraints:
    return JsonConstraints(tokenizer, vocab_size=49152, eos_token_ids=[EOS])
