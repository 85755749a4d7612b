"""Document masks for packed sequences: boundaries at EOD, the THD layout, and loss isolation on CPU."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pretrain import convert, model
from pretrain.data import Batch
from pretrain.packing import block_causal_mask, pad_segments, segment_starts

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")

EOD = 0
VOCAB = 96


# ----------------------------------------------------------------------------- boundaries and layout


def test_a_document_starts_at_its_predecessors_eod_and_every_row_starts_one() -> None:
    tokens = torch.tensor([[5, 6, EOD, 7, 8, EOD, 9, 4], [EOD, 3, 3, EOD, EOD, 2, 2, 2]])
    assert segment_starts(tokens, EOD).tolist() == [0, 2, 5, 8, 11, 12, 16]


def test_block_causal_mask_lets_a_token_see_only_its_own_document() -> None:
    mask = block_causal_mask(torch.tensor([0, 2, 5], dtype=torch.int32), 5)[0, 0]
    visible = (~mask).int().tolist()
    assert visible == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


def test_padding_for_context_parallelism_keeps_the_row_length_and_every_real_token_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, VOCAB, (2, 64), generator=gen)
    for row, col in ((0, 10), (0, 11), (0, 30), (1, 5), (1, 50)):
        tokens[row, col] = EOD
    labels = torch.roll(tokens, -1, dims=1)
    loss_mask = torch.ones(2, 64)
    cu = segment_starts(tokens, EOD)
    packed = pad_segments(tokens, labels, loss_mask, cu, multiple=8)  # CP 4

    assert packed.tokens.shape == (1, 128)
    padded = packed.cu_seqlens_padded.tolist()
    assert (
        padded[0] == 0
        and padded[-1] == 128
        and all((b - a) % 8 == 0 for a, b in zip(padded, padded[1:], strict=False))
    )
    real = packed.cu_seqlens.tolist()
    kept = 0
    for k in range(len(real) - 1):
        n = real[k + 1] - real[k]
        start = padded[k]
        original = cu[k].item()
        assert torch.equal(packed.tokens[0, start : start + n], tokens.reshape(-1)[original : original + n])
        assert packed.loss_mask[0, start : start + n].eq(1).all()
        assert packed.loss_mask[0, start + n : padded[k + 1]].eq(0).all()  # padding is not trained on
        assert packed.position_ids[0, start : start + n].tolist() == list(range(n))
        kept += n
    segments = len(cu) - 1
    assert 128 - segments * 7 <= kept <= 128  # only the tail of the last segment that fits is dropped
    assert packed.max_seqlen == max(b - a for a, b in zip(padded, padded[1:], strict=False))


def test_without_context_parallelism_the_layout_is_the_identity() -> None:
    tokens = torch.tensor([[5, 6, EOD, 7], [8, EOD, 9, 9]])
    labels = torch.roll(tokens, -1, dims=1)
    cu = segment_starts(tokens, EOD)
    packed = pad_segments(tokens, labels, torch.ones(2, 4), cu, multiple=1)
    assert torch.equal(packed.tokens, tokens.reshape(1, -1))
    assert torch.equal(packed.cu_seqlens, packed.cu_seqlens_padded) and torch.equal(packed.cu_seqlens, cu)


# ----------------------------------------------------------------------------- loss isolation


@pytest.fixture(scope="module")
def cpu_trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A tiny random Llama in megatron-core on CPU, inside the CPU runtime's trainer."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain.runtime import megatron_cpu
    from pretrain.runtime.cpu import CpuTrainer

    megatron_cpu.patch_megatron_for_cpu()
    owns = megatron_cpu.init_cpu_process_group()
    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=256,
        )
    )
    path = Path(tmp_path_factory.mktemp("llama"))
    hf.save_pretrained(path)
    arch = model.load_architecture(path)
    cfg = model.transformer_config(arch, model.ParallelSizes(), torch.float32, use_cpu_initialization=True)
    gpt = model.build_gpt_model(arch, cfg, "local", seq_length=64)
    convert.load_hf_into_model(gpt, path, arch)
    yield CpuTrainer(gpt, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, clip_grad=1.0)
    parallel_state.destroy_model_parallel()
    if owns:
        dist.destroy_process_group()


def _pack(first_doc: list[int], second_doc: list[int], rest: list[int], seq: int) -> tuple[Batch, int]:
    """A sample as GPTDataset yields it (tokens = text[:-1], labels = text[1:]); returns it and where doc B starts."""
    text = first_doc + [EOD] + second_doc + [EOD] + rest
    text = text[: seq + 1]
    tokens, labels = torch.tensor([text[:-1]]), torch.tensor([text[1:]])
    return Batch(
        tokens=tokens, labels=labels, loss_mask=torch.ones(1, seq), position_ids=torch.arange(seq)[None]
    ), len(first_doc)


def _doc_b_losses(trainer: object, first_doc: list[int], doc_b: list[int], masked: bool) -> torch.Tensor:
    """Losses of the labels of document B (its first token, every later one, and its EOD)."""
    batch, start = _pack(first_doc, doc_b, list(range(1, 30)), seq=48)
    if masked:
        batch.cu_seqlens = segment_starts(batch.tokens, EOD)
    with torch.no_grad():
        losses = trainer.token_losses(batch)  # type: ignore[attr-defined]
    # Position `start` holds doc A's EOD, whose label is B's first token.
    return losses[0, start : start + len(doc_b) + 1]


def test_a_tokens_loss_does_not_change_when_the_previous_document_in_its_pack_changes(
    cpu_trainer: object,
) -> None:
    gen = torch.Generator().manual_seed(3)
    doc_a = torch.randint(1, VOCAB, (12,), generator=gen).tolist()
    other_a = torch.randint(1, VOCAB, (12,), generator=gen).tolist()  # same length, other text
    longer_a = torch.randint(1, VOCAB, (17,), generator=gen).tolist()  # doc B moves 5 positions
    doc_b = torch.randint(1, VOCAB, (15,), generator=gen).tolist()

    reference = _doc_b_losses(cpu_trainer, doc_a, doc_b, masked=True)
    same_length = _doc_b_losses(cpu_trainer, other_a, doc_b, masked=True)
    shifted = _doc_b_losses(cpu_trainer, longer_a, doc_b, masked=True)
    assert (same_length - reference).abs().max().item() < 1e-6
    # RoPE is relative: moving the document changes only float rounding.
    assert (shifted - reference).abs().max().item() < 1e-4

    # Without document masks doc B's tokens attend to doc A, and their losses move.
    unmasked = _doc_b_losses(cpu_trainer, doc_a, doc_b, masked=False)
    unmasked_other = _doc_b_losses(cpu_trainer, other_a, doc_b, masked=False)
    print(
        "doc B loss change when doc A changes: masked same length "
        f"{(same_length - reference).abs().max().item():.2e}, masked shifted {(shifted - reference).abs().max().item():.2e}, "
        f"unmasked {(unmasked_other - unmasked).abs().max().item():.2e}"
    )
    assert (unmasked_other - unmasked).abs().max().item() > 1e-3


def test_masked_micro_batch_of_several_rows_equals_each_row_alone(cpu_trainer: object) -> None:
    """Rows are flattened into one THD row: a row's losses must not depend on the row before it."""
    gen = torch.Generator().manual_seed(4)
    rows = torch.randint(1, VOCAB, (2, 33), generator=gen)
    rows[:, 7] = EOD
    both = Batch(
        tokens=rows[:, :-1],
        labels=rows[:, 1:],
        loss_mask=torch.ones(2, 32),
        position_ids=torch.arange(32).expand(2, -1),
    )
    both.cu_seqlens = segment_starts(both.tokens, EOD)
    second = Batch(
        tokens=rows[1:, :-1],
        labels=rows[1:, 1:],
        loss_mask=torch.ones(1, 32),
        position_ids=torch.arange(32)[None],
    )
    second.cu_seqlens = segment_starts(second.tokens, EOD)
    with torch.no_grad():
        together = cpu_trainer.token_losses(both)  # type: ignore[attr-defined]
        alone = cpu_trainer.token_losses(second)  # type: ignore[attr-defined]
    assert (together[1] - alone[0]).abs().max().item() < 1e-4
