"""Blend files -> megatron-core `GPTDataset`s, and the batches the trainer reads from them.

A CPT stage trains on the blend file ``agentcpt tokenize`` wrote for it
(``runs/<id>/megatron/blend_cpt<N>.json``, see `pretrain.blend`), optionally:

* **holding out kinds** (e.g. ``decision`` and ``rollout``): their datasets leave the
  training mixture and become the validation set, so the held-out loss is measured on
  agentic text the model never trained on;
* **mixing in replay data** (general text tokenized with ``agentcpt tokenize --input``):
  ``replay_weight`` of the training samples come from it, keeping general ability (the
  AgentFounder recipe mixes a small share of general data into both stages).

Without held-out kinds, megatron's per-dataset ``split`` carves a validation share out of
every dataset instead.

The data position is the number of samples consumed: step ``s`` reads samples
``[s * global_batch, (s + 1) * global_batch)`` of the train dataset, whose order megatron
fixes from the seed. A checkpoint stores that number, so a resumed run reads exactly
the samples an uninterrupted run would have read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from pretrain.blend import BlendFile, load_blend


class DataError(ValueError):
    """A blend or data option that cannot be honoured (message names the field)."""


@dataclass(frozen=True)
class LossTotals:
    """Summed next-token loss and the number of tokens it covers."""

    loss_sum: float
    tokens: int

    def __add__(self, other: LossTotals) -> LossTotals:
        return LossTotals(self.loss_sum + other.loss_sum, self.tokens + other.tokens)

    @property
    def mean(self) -> float:
        return self.loss_sum / max(self.tokens, 1)


@dataclass
class Batch:
    """One micro-batch: ``[batch, seq]`` tensors as `GPTDataset` yields them, stacked."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device, non_blocking=True)
                for t in (self.tokens, self.labels, self.loss_mask, self.position_ids)
            )
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            "tokens": self.tokens,
            "labels": self.labels,
            "loss_mask": self.loss_mask,
            "position_ids": self.position_ids,
        }


class Blend(BaseModel):
    """Prefixes and weights of one split, as megatron's ``blend`` tuple wants them."""

    model_config = ConfigDict(extra="forbid")
    prefixes: list[str] = Field(description="dataset path prefixes (.bin/.idx)")
    weights: list[float] = Field(description="sampling weights, one per prefix")

    def as_megatron(self) -> tuple[list[str], list[float] | None]:
        return self.prefixes, (self.weights if len(self.prefixes) > 1 else None)


class StageBlends(BaseModel):
    """What one stage trains on and evaluates on."""

    model_config = ConfigDict(extra="forbid")
    train: Blend = Field(description="training mixture (corpus minus held-out kinds, plus replay)")
    valid: Blend | None = Field(description="held-out kinds; None: a split share of every train dataset")
    eod_id: int = Field(description="end-of-document id the datasets were written with")
    vocab_size: int = Field(description="tokenizer vocabulary (largest id + 1)")


def _weighted(blend: BlendFile, drop: set[str]) -> list[tuple[str, float, str]]:
    """(prefix, weight, kind) of the datasets in the blend's mixture, minus the ``drop`` kinds."""
    return [
        (d.prefix, d.weight, d.kind)
        for d in blend.datasets
        if d.weight > 0 and d.tokens > 0 and d.kind not in drop
    ]


def stage_blends(
    blend_path: Path, holdout_kinds: list[str], replay_path: Path | None, replay_weight: float
) -> StageBlends:
    """Read a stage's blend file (and the replay blend) into train / validation mixtures."""
    corpus = load_blend(blend_path)
    kinds = {d.kind for d in corpus.datasets if d.tokens > 0}
    unknown = set(holdout_kinds) - kinds
    if unknown:
        raise DataError(
            f"data.holdout_kinds: {sorted(unknown)} not in {blend_path} (kinds there: {sorted(kinds)})"
        )
    train_rows = _weighted(corpus, set(holdout_kinds))
    if not train_rows:
        raise DataError(
            f"data.holdout_kinds: holding out {holdout_kinds} leaves nothing to train on in {blend_path}"
        )
    total = sum(w for _, w, _ in train_rows)
    prefixes = [p for p, _, _ in train_rows]
    weights = [w / total * (1.0 - replay_weight) for _, w, _ in train_rows]
    if replay_path is not None and replay_weight > 0:
        replay = load_blend(replay_path)
        if replay.tokenizer.eod_id != corpus.tokenizer.eod_id:
            raise DataError(f"data.replay_blend: tokenizer differs from the corpus ({replay.tokenizer.path})")
        rows = _weighted(replay, set())
        if not rows:
            raise DataError(f"data.replay_blend: {replay_path} holds no tokens")
        rtotal = sum(w for _, w, _ in rows)
        prefixes += [p for p, _, _ in rows]
        weights += [w / rtotal * replay_weight for _, w, _ in rows]
    valid: Blend | None = None
    if holdout_kinds:
        # Every held-out dataset in its natural (token) proportion, including kinds the
        # corpus weights kept out of training (weight 0).
        held = [d for d in corpus.datasets if d.kind in holdout_kinds and d.tokens > 0]
        vtotal = sum(d.tokens for d in held)
        valid = Blend(prefixes=[d.prefix for d in held], weights=[d.tokens / vtotal for d in held])
    return StageBlends(
        train=Blend(prefixes=prefixes, weights=weights),
        valid=valid,
        eod_id=corpus.tokenizer.eod_id,
        vocab_size=corpus.tokenizer.vocab_size,
    )


class _TokenizerView:
    """What `GPTDataset` reads from a tokenizer: ``eod``, ``vocab_size``, ``unique_identifiers``.

    No ``pad``: documents are packed back to back (`add_extra_token_to_sequence`), so no
    sequence is padded and megatron's default pad id (-1, never a real token) applies.
    """

    def __init__(self, eod: int, vocab_size: int) -> None:
        self.eod = eod
        self.vocab_size = vocab_size
        self.unique_identifiers = OrderedDict(eod=eod, vocab_size=vocab_size)


@dataclass
class StageDatasets:
    train: Any
    valid: Any


def build_datasets(
    blends: StageBlends,
    seq_length: int,
    train_samples: int,
    valid_samples: int,
    valid_fraction: float,
    seed: int,
    cache_dir: Path,
) -> StageDatasets:
    """`BlendedMegatronDatasetBuilder(GPTDataset, ...)` for one stage (needs a torch.distributed group)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    common: dict[str, Any] = dict(
        random_seed=seed,
        sequence_length=seq_length,
        tokenizer=_TokenizerView(blends.eod_id, blends.vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(cache_dir),
        mid_level_dataset_surplus=0.005,
    )
    if blends.valid is not None:
        config = GPTDatasetConfig(
            blend_per_split=[blends.train.as_megatron(), blends.valid.as_megatron(), None], **common
        )
    else:
        valid_pct = round(valid_fraction * 1000)
        if valid_pct < 1:
            raise DataError("data.valid_fraction: too small to hold out any validation data")
        config = GPTDatasetConfig(
            blend=blends.train.as_megatron(), split=f"{1000 - valid_pct},{valid_pct},0", **common
        )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, None], lambda: True, config
    ).build()
    if train is None or valid is None:
        raise DataError("data: megatron built no train or validation dataset (empty blend?)")
    return StageDatasets(train=train, valid=valid)


def collate(samples: list[dict[str, torch.Tensor]]) -> Batch:
    """Stack `GPTDataset` samples into one micro-batch."""
    return Batch(
        tokens=torch.stack([s["tokens"] for s in samples]),
        labels=torch.stack([s["labels"] for s in samples]),
        loss_mask=torch.stack([s["loss_mask"] for s in samples]).float(),
        position_ids=torch.stack([s["position_ids"] for s in samples]),
    )


def microbatches(dataset: Any, first_sample: int, count: int, micro_batch_size: int) -> list[Batch]:
    """``count`` consecutive samples from ``first_sample`` as micro-batches of ``micro_batch_size``."""
    if count % micro_batch_size:
        raise DataError(f"{count} samples do not split into micro-batches of {micro_batch_size}")
    return [
        collate([dataset[first_sample + i + j] for j in range(micro_batch_size)])
        for i in range(0, count, micro_batch_size)
    ]


def rank_share(
    dataset: Any, first_sample: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> list[Batch]:
    """This data-parallel rank's micro-batches of the global batch starting at ``first_sample``.

    The global batch is split into ``dp_size`` contiguous shares (as Megatron-LM's pretraining
    sampler does), so what a rank reads is a pure function of the samples consumed so far:
    resuming with that number reads what an uninterrupted run reads.
    """
    per_rank = global_batch_size // dp_size
    return microbatches(dataset, first_sample + dp_rank * per_rank, per_rank, micro_batch_size)
