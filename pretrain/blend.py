"""The blend file: which megatron datasets a CPT stage trains on, and with what weights.

One JSON file per CPT stage, written by ``agentcpt tokenize`` next to the ``.bin``/``.idx``
files. ``data_path`` is exactly the flattened ``[weight, prefix, weight, prefix, ...]`` list
megatron's ``get_blend_from_list`` (and Megatron-LM's ``--data-path``) accepts; the rest
records how it was made (documents, tokens, the tokenizer and its EOD id), so the trainer
can check it uses the same tokenizer.

A dataset's weight is its kind's mixing weight (``stages.corpus.weights``, per token)
times its token count, normalised to sum to 1: with every kind at 1.0 the blend samples
each kind in its natural proportion, and megatron renormalises anyway. Datasets of
held-out sources (``split: heldout``) have weight 0.

Next to each blend file, Megatron-LM's ``--data-args-path`` and
``--per-split-data-args-path`` files (see below) describe the same mixture for users of
Megatron-LM / Megatron-Bridge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

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
    split: Literal["train", "heldout"] = Field(
        "train",
        description="heldout: texts of held-out sources (pretrain/lineage.py), never in data_path",
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
    """A blend over ``datasets``: weight = kind weight x tokens, normalised (see the module docstring).

    Held-out datasets keep weight 0: they are listed, never mixed into training.
    """
    raw = [kind_weights.get(d.kind, 1.0) * d.tokens if d.split == "train" else 0.0 for d in datasets]
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


# ---------------------------------------------------------------------------
# Megatron-LM's own data arguments
# ---------------------------------------------------------------------------
# Megatron-LM (and Megatron-Bridge) read ``--data-args-path FILE`` as
# ``get_blend_from_list(open(FILE).read().split())`` and ``--per-split-data-args-path FILE``
# as JSON with "train" / "valid" / "test", each such a string or list, or null
# (megatron/training/utils.py, get_blend_and_blend_per_split). Written next to every blend
# file, they let a user train on the same mixture with their own Megatron-LM.


def data_args_name(blend_name: str) -> str:
    """``blend_cpt1.json`` -> ``data_args_cpt1.txt`` (for ``--data-args-path``)."""
    return blend_name.replace("blend", "data_args", 1).removesuffix(".json") + ".txt"


def per_split_data_args_name(blend_name: str) -> str:
    """``blend_cpt1.json`` -> ``per_split_data_args_cpt1.json`` (for ``--per-split-data-args-path``)."""
    return blend_name.replace("blend", "per_split_data_args", 1)


def _pairs(datasets: list[BlendDataset], weights: list[float]) -> list[str]:
    lines = []
    for d, w in zip(datasets, weights, strict=True):
        if any(c.isspace() for c in d.prefix):
            raise ValueError(f"{d.prefix!r}: Megatron-LM splits data arguments on whitespace")
        lines.append(f"{w!r} {d.prefix}")
    return lines


def data_args_text(blend: BlendFile) -> str:
    """The training mixture as ``--data-args-path`` content: one ``weight prefix`` pair per line."""
    train = [d for d in blend.datasets if d.split == "train" and d.weight > 0]
    return "\n".join(_pairs(train, [d.weight for d in train])) + "\n"


def per_split_data_args(blend: BlendFile) -> dict[str, Any]:
    """``--per-split-data-args-path`` content: train = the mixture, valid = the held-out sources."""
    train = [d for d in blend.datasets if d.split == "train" and d.weight > 0]
    held = [d for d in blend.datasets if d.split == "heldout" and d.tokens > 0]
    total = sum(d.tokens for d in held)
    return {
        "train": " ".join(_pairs(train, [d.weight for d in train])),
        "valid": " ".join(_pairs(held, [d.tokens / total for d in held])) if held else None,
        "test": None,
    }
