"""The embedded model's tokenizer, its JSON-schema constraints, and a tiny random model, once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synth.llm.embedded import ensure_model_dir
from synth.llm.grammar import JsonConstraints
from testing.masked_decoding import EOS


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_model_dir())


@pytest.fixture(scope="session")
def model() -> Any:
    """The embedded model itself (SmolLM2-135M-Instruct): greedy decoding shows any wrong cache."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ensure_model_dir()).eval()


@pytest.fixture(scope="session")
def constraints(tokenizer: Any) -> JsonConstraints:
    return JsonConstraints(tokenizer, vocab_size=49152, eos_token_ids=[EOS])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide random Llama with SmolLM2's tokenizer and chat template (~13 MB)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = True
    model.generation_config.eos_token_id = 2
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(ensure_model_dir()).save_pretrained(out)
    return out
