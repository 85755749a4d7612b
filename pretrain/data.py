"""Blend files -> megatron-core `GPTDataset`s, and the batches the trainer reads from them.

A CPT stage trains on the blend file ``agentcpt tokenize`` wrote for it
(``runs/<id>/megatron/blend_cpt<N>.json``, see `pretrain.blend`), optionally:

* **held-out sources**: ``agentcpt tokenize RUN_ID`` writes the texts of a share of the
  run's sources (trajectory / question / document lineage, `pretrain.lineage`) into
  separate ``split: heldout`` datasets; they are never trained on, and no training text
  shares a source with them;
* **holding out kinds** (e.g. ``decision`` and ``rollout``): they leave the training
  mixture altogether. With a lineage split the held-out sets are then
  ``same_kind_unseen_source`` (trained kinds, unseen sources) and
  ``other_kind_unseen_source`` (held-out kinds, unseen sources), one dataset per kind;
* **mixing in replay data** (general text tokenized with ``agentcpt tokenize --input``):
  ``replay_weight`` of the training samples come from it, keeping general ability (the
  AgentFounder recipe mixes a small share of general data into both stages).

Without either, megatron's per-dataset ``split`` carves a validation share out of every
dataset instead.

The data position is the number of samples consumed: step ``s`` reads samples
``[s * global_batch, (s + 1) * global_batch)`` of the train dataset, whose order megatron
fixes from the seed. A checkpoint stores that number, so a resumed run reads exactly
the samples an uninterrupted run would have read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pretrain.blend import BlendDataset, BlendFile, load_blend
from pretrain.packing import segment_starts


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
    """One micro-batch: ``[batch, seq]`` tensors as `GPTDataset` yields them, stacked.

    ``cu_seqlens`` (document masks on) holds the document boundaries of the micro-batch
    flattened to one row (`pretrain.packing.segment_starts`); None lets attention cross
    documents.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor | None = None

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


# How a held-out set relates to the training data (the names logged and printed):
# * same_kind_unseen_source: kinds that are trained on, from sources (trajectory, question,
#   document lineage) no training text comes from — what CPT should generalise to;
# * other_kind_unseen_source: kinds never trained on (``holdout_kinds``), from those sources;
# * held_out_kind: kinds never trained on, sources possibly shared with training texts (a
#   blend without a lineage split, e.g. from ``agentcpt tokenize --input``);
# * random_share: ``valid_fraction`` of every training dataset (no held-out kinds, no split).
EvalGroup = Literal["same_kind_unseen_source", "other_kind_unseen_source", "held_out_kind", "random_share"]


class EvalSet(BaseModel):
    """One held-out dataset the trainer evaluates separately (one kind of one group)."""

    model_config = ConfigDict(extra="forbid")
    group: EvalGroup = Field(description="how it relates to the training data")
    kind: str | None = Field(description="corpus kind; None for random_share")
    blend: Blend | None = Field(description="its datasets; None: megatron's split of the training blend")

    @property
    def name(self) -> str:
        return self.group if self.kind is None else f"{self.group}/{self.kind}"


class StageBlends(BaseModel):
    """What one stage trains on and evaluates on."""

    model_config = ConfigDict(extra="forbid")
    train: Blend = Field(
        description="training mixture (train-split datasets minus held-out kinds, plus replay)"
    )
    evals: list[EvalSet] = Field(min_length=1, description="held-out sets, evaluated one by one")
    eod_id: int = Field(description="end-of-document id the datasets were written with")
    vocab_size: int = Field(description="tokenizer vocabulary (largest id + 1)")


def _weighted(blend: BlendFile, drop: set[str]) -> list[tuple[str, float, str]]:
    """(prefix, weight, kind) of the training datasets in the blend's mixture, minus the ``drop`` kinds."""
    return [
        (d.prefix, d.weight, d.kind)
        for d in blend.datasets
        if d.split == "train" and d.weight > 0 and d.tokens > 0 and d.kind not in drop
    ]


def _eval_sets(corpus: BlendFile, holdout_kinds: list[str]) -> list[EvalSet]:
    """Held-out sets: by lineage when the blend has held-out-source datasets, else by kind."""
    held = [d for d in corpus.datasets if d.split == "heldout" and d.tokens > 0]
    if held:
        groups: dict[tuple[EvalGroup, str], list[BlendDataset]] = {}
        for d in held:
            group: EvalGroup = (
                "other_kind_unseen_source" if d.kind in holdout_kinds else "same_kind_unseen_source"
            )
            groups.setdefault((group, d.kind), []).append(d)
    elif holdout_kinds:
        groups = {}
        for d in corpus.datasets:
            if d.kind in holdout_kinds and d.tokens > 0:
                groups.setdefault(("held_out_kind", d.kind), []).append(d)
    else:
        return [EvalSet(group="random_share", kind=None, blend=None)]
    sets = []
    for (group, kind), datasets in sorted(groups.items()):
        total = sum(d.tokens for d in datasets)
        blend = Blend(prefixes=[d.prefix for d in datasets], weights=[d.tokens / total for d in datasets])
        sets.append(EvalSet(group=group, kind=kind, blend=blend))
    return sets


def stage_blends(
    blend_path: Path, holdout_kinds: list[str], replay_path: Path | None, replay_weight: float
) -> StageBlends:
    """Read a stage's blend file (and the replay blend) into the training mixture and held-out sets."""
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
    return StageBlends(
        train=Blend(prefixes=prefixes, weights=weights),
        evals=_eval_sets(corpus, holdout_kinds),
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
    evals: list[tuple[EvalSet, Any]]  # each held-out set with its dataset
    eod_id: int


def build_datasets(
    blends: StageBlends,
    seq_length: int,
    train_samples: int,
    valid_samples: int,
    valid_fraction: float,
    seed: int,
    cache_dir: Path,
) -> StageDatasets:
    """`BlendedMegatronDatasetBuilder(GPTDataset, ...)` for one stage (needs a torch.distributed group).

    Every held-out set is its own validation dataset of ``valid_samples`` samples.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    common: dict[str, Any] = dict(
        random_seed=seed,
        sequence_length=seq_length,
        tokenizer=_TokenizerView(blends.eod_id, blends.vocab_size),
        # Document masks and positions are derived from the EOD tokens per micro-batch
        # (pretrain.packing): megatron's seq x seq masks would not fit at 128K.
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(cache_dir),
        mid_level_dataset_surplus=0.005,
    )

    def build(config: Any, sizes: list[int | None]) -> tuple[Any, Any, Any]:
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()

    evals: list[tuple[EvalSet, Any]] = []
    if blends.evals[0].blend is None:  # random_share: megatron's split of the training blend
        valid_pct = round(valid_fraction * 1000)
        if valid_pct < 1:
            raise DataError("data.valid_fraction: too small to hold out any validation data")
        _check_valid_share(blends.train.prefixes, (1000 - valid_pct) / 1000)
        config = GPTDatasetConfig(
            blend=blends.train.as_megatron(), split=f"{1000 - valid_pct},{valid_pct},0", **common
        )
        # The test share is 0: a size of 0, not None (megatron refuses None with blend weights).
        train, valid, _ = build(config, [train_samples, valid_samples, 0])
        evals.append((blends.evals[0], valid))
    else:
        config = GPTDatasetConfig(blend_per_split=[blends.train.as_megatron(), None, None], **common)
        train, _, _ = build(config, [train_samples, None, None])
        for eval_set in blends.evals:
            assert eval_set.blend is not None
            config = GPTDatasetConfig(blend_per_split=[None, eval_set.blend.as_megatron(), None], **common)
            _, valid, _ = build(config, [None, valid_samples, None])
            evals.append((eval_set, valid))
    if train is None or any(v is None for _, v in evals):
        raise DataError("data: megatron built no train or validation dataset (empty blend?)")
    return StageDatasets(train=train, evals=evals, eod_id=blends.eod_id)


def _check_valid_share(prefixes: list[str], train_share: float) -> None:
    """Refuse a split whose validation share of some dataset holds no document.

    megatron gives each split documents ``[round(a * n), round(b * n))``; a validation
    split with none makes `GPTDataset` loop forever looking for tokens, so this fails first.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for prefix in prefixes:
        documents = len(IndexedDataset(prefix))
        if round(train_share * documents) >= documents:
            raise DataError(
                f"data.valid_fraction={1 - train_share:g} holds out no document of {Path(prefix).name} "
                f"({documents} documents): raise it, or hold out kinds (data.holdout_kinds)"
            )


def collate(samples: list[dict[str, torch.Tensor]], eod_id: int | None = None) -> Batch:
    """Stack `GPTDataset` samples into one micro-batch (with document boundaries when ``eod_id`` is given)."""
    tokens = torch.stack([s["tokens"] for s in samples])
    return Batch(
        tokens=tokens,
        labels=torch.stack([s["labels"] for s in samples]),
        loss_mask=torch.stack([s["loss_mask"] for s in samples]).float(),
        position_ids=torch.stack([s["position_ids"] for s in samples]),
        cu_seqlens=segment_starts(tokens, eod_id) if eod_id is not None else None,
    )


def microbatches(
    dataset: Any, first_sample: int, count: int, micro_batch_size: int, eod_id: int | None = None
) -> list[Batch]:
    """``count`` consecutive samples from ``first_sample`` as micro-batches of ``micro_batch_size``."""
    if count % micro_batch_size:
        raise DataError(f"{count} samples do not split into micro-batches of {micro_batch_size}")
    return [
        collate([dataset[first_sample + i + j] for j in range(micro_batch_size)], eod_id)
        for i in range(0, count, micro_batch_size)
    ]


def rank_share(
    dataset: Any,
    first_sample: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    eod_id: int | None = None,
) -> list[Batch]:
    """This data-parallel rank's micro-batches of the global batch starting at ``first_sample``.

    The global batch is split into ``dp_size`` contiguous shares (as Megatron-LM's pretraining
    sampler does), so what a rank reads is a pure function of the samples consumed so far:
    resuming with that number reads what an uninterrupted run reads. ``eod_id`` (document
    masks on) adds each micro-batch's document boundaries.
    """
    per_rank = global_batch_size // dp_size
    return microbatches(dataset, first_sample + dp_rank * per_rank, per_rank, micro_batch_size, eod_id)
