"""The blend file: which megatron datasets a CPT stage trains on, and with what weights.

One JSON file per CPT stage, written by ``agentcpt tokenize`` next to the ``.bin``/``.idx``
files. ``data_path`` is exactly the flattened ``[weight, prefix, weight, prefix, ...]`` list
megatron's ``get_blend_from_list`` (and Megatron-LM's ``--data-path``) accepts; the rest
records how it was made (documents, tokens, the tokenizer and its EOD id), so the trainer
can check it uses the same tokenizer.

A dataset's weight is its kind's mixing weight (``stages.corpus.weights``, per token)
times its token count, normalised to sum to 1: with every kind at 1.0 the blend samples
each kind in its natural proportion, and megatron renormalises anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt


class BlendDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(
        description="corpus kind (planning, reasoning, rollout, decision, knowledge), or 'text' for a plain Parquet glob"
    )
    prefix: str = Field(description="absolute path prefix of the dataset's .bin and .idx files")
    documents: NonNegativeInt = Field(description="documents (corpus rows) in the dataset")
    tokens: NonNegativeInt = Field(description="tokens in the dataset, EOD tokens included")
    weight: NonNegativeFloat = Field(
        description="normalised blend weight; 0 keeps the dataset out of data_path"
    )


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the tokenizer.json the ids came from")
    vocab_size: int = Field(description="largest token id + 1")
    eod_id: int = Field(description="id appended after every document")
    eod_token: str = Field(description="the EOD token's text")
    dtype: str = Field(description="numpy dtype of the .bin files (uint16 or int32)")


class BlendFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpt_stage: int | None = Field(
        description="CPT stage (1 or 2); null for a Parquet glob without a cpt_stage column"
    )
    data_path: list[str] = Field(description="[weight, prefix, ...] for megatron's get_blend_from_list")
    datasets: list[BlendDataset] = Field(
        description="every dataset written for this CPT stage, weight 0 included"
    )
    tokenizer: TokenizerInfo

    def megatron_blend(self) -> tuple[list[str], list[float] | None]:
        """``(prefixes, weights)`` as megatron's ``get_blend_from_list(self.data_path)`` returns them."""
        from megatron.core.datasets.utils import get_blend_from_list

        blend = get_blend_from_list(self.data_path)
        assert blend is not None
        return blend


def make_blend(
    cpt_stage: int | None,
    datasets: list[BlendDataset],
    kind_weights: dict[str, float],
    tokenizer: TokenizerInfo,
) -> BlendFile:
    """A blend over ``datasets``: weight = kind weight x tokens, normalised (see the module docstring)."""
    raw = [kind_weights.get(d.kind, 1.0) * d.tokens for d in datasets]
    total = sum(raw)
    weighted = [
        d.model_copy(update={"weight": (w / total) if total > 0 else 0.0})
        for d, w in zip(datasets, raw, strict=True)
    ]
    data_path: list[str] = []
    for d in weighted:
        if d.weight > 0:
            data_path += [repr(d.weight), d.prefix]
    return BlendFile(cpt_stage=cpt_stage, data_path=data_path, datasets=weighted, tokenizer=tokenizer)


def load_blend(path: str | Path) -> BlendFile:
    """Read a blend file written by ``agentcpt tokenize``."""
    return BlendFile.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def blend_json(blend: BlendFile) -> str:
    return blend.model_dump_json(indent=2) + "\n"
