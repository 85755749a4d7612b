"""Document masks for packed sequences: where documents start, and the THD layout mcore wants.

`GPTDataset` packs documents back to back, each followed by the EOD token, and cuts the
stream into samples of ``seq_length``. Without a mask, a token attends to every earlier
token of its sample, across document boundaries: at 128K most of what a token sees belongs
to unrelated documents. With document masks a token attends only to its own document.

Where a document starts: **at its predecessor's EOD token**. A sample
``a1 a2 a3 E b1 b2 E c1`` splits into ``[a1 a2 a3] [E b1 b2] [E c1]``: ``a3`` predicts the
EOD inside document A, and the EOD then predicts ``b1`` seeing nothing but itself (a
document-start prior, like a BOS token). So every label of document B, ``b1`` included,
depends on document B alone, and no loss needs masking. (Megatron-LM's
``--reset-attention-mask`` cuts after the EOD instead and needs ``--eod-mask-loss``.)

Two consumers of the same boundaries (``cu_seqlens``, cumulative segment starts over the
micro-batch flattened to one row):

* the GPU path passes them to Transformer Engine's flash attention as THD
  ``PackedSeqParams``; with context parallelism TE needs every segment padded to a
  multiple of ``2 x CP`` (`pad_segments`);
* the CPU path (mcore's local attention has no THD) turns them into a block-diagonal causal
  mask (`block_causal_mask`) — the same attention pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def segment_starts(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Cumulative segment boundaries (int32, starting at 0, ending at ``tokens.numel()``).

    ``tokens`` is ``[batch, seq]``; rows are flattened in order, every row starts a segment
    and so does every EOD token that is not the first token of its row.
    """
    batch, seq = tokens.shape
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = tokens[:, 1:] == eod_id
    positions = torch.nonzero(starts.reshape(-1), as_tuple=False).reshape(-1)
    end = torch.tensor([batch * seq], dtype=positions.dtype)
    return torch.cat([positions, end]).to(torch.int32)


@dataclass
class PackedSequence:
    """A micro-batch as one row of segments, each padded to a multiple (THD layout)."""

    tokens: torch.Tensor  # [1, total]
    labels: torch.Tensor  # [1, total]
    loss_mask: torch.Tensor  # [1, total], 0 on padding
    position_ids: torch.Tensor  # [1, total], restarting at 0 in every segment
    cu_seqlens: torch.Tensor  # int32 [n + 1]: cumulative real lengths
    cu_seqlens_padded: torch.Tensor  # int32 [n + 1]: cumulative padded lengths (offsets in the row)
    max_seqlen: int  # longest padded segment

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            "tokens": self.tokens,
            "labels": self.labels,
            "loss_mask": self.loss_mask,
            "position_ids": self.position_ids,
        }


def pad_segments(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    cu_seqlens: torch.Tensor,
    multiple: int,
) -> PackedSequence:
    """Lay segments out one after another, each padded to a multiple of ``multiple``.

    The row keeps its length (``batch x seq``, which the pipeline schedule's fixed tensor
    shapes need): when padding overflows it, the tail of the last segment that fits is
    dropped — at most ``segments x (multiple - 1)`` tokens, 0.2% of a 128K sample with 30
    documents at CP 4. ``multiple=1`` is the identity layout. ``batch x seq`` must be a
    multiple of ``multiple`` (the config checks ``seq_length % (2 x CP)``).
    """
    flat = [t.reshape(-1) for t in (tokens, labels, loss_mask)]
    total = flat[0].numel()
    if total % multiple:
        raise ValueError(f"{total} tokens do not split into multiples of {multiple}")
    out_tokens = torch.zeros(total, dtype=tokens.dtype)
    out_labels = torch.zeros(total, dtype=labels.dtype)
    out_mask = torch.zeros(total, dtype=loss_mask.dtype)
    out_pos = torch.zeros(total, dtype=torch.long)
    real, padded = [0], [0]
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        offset = padded[-1]
        room = total - offset
        if room <= 0:
            break
        length = min(end - start, room)
        width = min(-(-length // multiple) * multiple, room)
        out_tokens[offset : offset + length] = flat[0][start : start + length]
        out_labels[offset : offset + length] = flat[1][start : start + length]
        out_mask[offset : offset + length] = flat[2][start : start + length]
        out_pos[offset : offset + length] = torch.arange(length)
        real.append(real[-1] + length)
        padded.append(offset + width)
    if padded[-1] != total:  # every segment fitted with room to spare: the rest is one pad run
        padded[-1] = total
    widths = [b - a for a, b in zip(padded[:-1], padded[1:], strict=True)]
    return PackedSequence(
        tokens=out_tokens.unsqueeze(0),
        labels=out_labels.unsqueeze(0),
        loss_mask=out_mask.unsqueeze(0),
        position_ids=out_pos.unsqueeze(0),
        cu_seqlens=torch.tensor(real, dtype=torch.int32),
        cu_seqlens_padded=torch.tensor(padded, dtype=torch.int32),
        max_seqlen=max(widths),
    )


def block_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``[1, 1, total, total]`` bool, True where attention is masked (mcore's convention).

    Position ``i`` may attend to ``j <= i`` of its own segment only.
    """
    segment = torch.zeros(total, dtype=torch.long)
    bounds = cu_seqlens.tolist()
    for k, start in enumerate(bounds[1:-1], start=1):
        segment[start:] = k
    same = segment[:, None] == segment[None, :]
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    return (~(same & causal)).view(1, 1, total, total)
