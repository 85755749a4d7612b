"""`agentcpt tokenize`: megatron-core indexed datasets and blend files from a corpus or a Parquet glob."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from agentcpt.cli import main as cli_main
from pretrain import tokenize as tok_mod
from pretrain.blend import load_blend
from pretrain.tokenize import tokenize_command, tokenize_files
from synth.records import CorpusRecord, Failure
from synth.shards import ShardStore
from synth.spec import RunSpec, StagesConfig, dump_spec
from synth.stages.corpus import CorpusConfig
from synth.tokens import load_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRAJECTORIES = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"

TEXTS = [
    "<think>The question asks for the capital of Australia.</think>",
    '<tool_call>{"name": "search", "arguments": {"query": ["Canberra population 2021"]}}</tool_call>',
    "<tool_response>Canberra is the capital city of Australia. Population 467,194.</tool_response>",
    "<answer>Canberra</answer>",
    "Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.",
    "Ünïcödé text — with dashes, emojis 🚀 and 中文字符 too.",
    "Option 2 is chosen. My decision is Correct.",
]


def train_tiny_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A small byte-level BPE with an `<|endoftext|>` token, saved as tokenizer.json (no hub)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def corpus_records(n: int, unit: int) -> list[CorpusRecord]:
    kinds = ["planning", "reasoning", "rollout", "decision", "knowledge"]
    out = []
    for i in range(n):
        text = f"{TEXTS[(i + unit) % len(TEXTS)]} (unit {unit}, row {i})" + " more words" * (i % 4)
        out.append(
            CorpusRecord(
                id=f"c{unit}-{i}",
                run_id="r1",
                kind=kinds[(i + unit) % len(kinds)],
                text=text,
                n_tokens=len(text.split()),
                cpt_stage=1 if i % 3 else 2,
                source_ids=[f"s{unit}-{i}"],
            )
        )
    return out


def make_run(
    output_dir: Path, tokenizer_dir: Path, units: int = 3, rows: int = 11, weights: dict | None = None
) -> str:
    run_dir = output_dir / "r1"
    store = ShardStore(run_dir)
    for u in range(units):
        store.write_unit("corpus", f"{u:05d}", corpus_records(rows, u), run_id="r1")
    # The runner commits a barrier stage's dropped inputs as a unit with no records.
    dropped = [Failure(input_ids=["x"], error_kind="duplicate", message="same text as y")]
    store.write_unit("corpus", "dropped", [], dropped, run_id="r1")
    spec = RunSpec(
        name="t",
        stages=StagesConfig(corpus=CorpusConfig(tokenizer=str(tokenizer_dir), weights=weights or {})),
    )
    (run_dir / "spec.yaml").write_text(dump_spec(spec))
    return "r1"


def read_dataset(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix)


# ---------------------------------------------------------------------------
# Acceptance: megatron reads what we write
# ---------------------------------------------------------------------------


def test_megatron_indexed_dataset_holds_one_document_per_corpus_row_with_tokenizer_ids_plus_eod(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    run_id = make_run(tmp_path / "runs", tiny_tokenizer_dir)
    assert (
        tokenize_command(run_id=run_id, output_dir=str(tmp_path / "runs"), workers=2, heldout_fraction=0) == 0
    )

    tok = load_tokenizer(tiny_tokenizer_dir)
    corpus = ShardStore(tmp_path / "runs" / run_id).read_table("corpus").to_pylist()
    expected: dict[tuple[int, str], list[str]] = {}
    for row in corpus:  # unit order, then row order: the documented document order
        expected.setdefault((row["cpt_stage"], row["kind"]), []).append(row["text"])

    out = tmp_path / "runs" / run_id / "megatron"
    n_docs = 0
    for (stage, kind), texts in expected.items():
        ds = read_dataset(str(out / f"cpt{stage}_{kind}"))
        assert len(ds) == len(texts)
        assert ds.index.dtype == np.uint16
        for i, text in enumerate(texts):
            assert ds[i].tolist() == tok.backend.encode(text).ids + [tok.eod_id]
        n_docs += len(ds)
    assert n_docs == len(corpus)
    assert not list(out.glob(".tokenize-tmp-*"))


def test_merged_output_is_byte_identical_to_megatron_builder_add_index(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tok = load_tokenizer(tiny_tokenizer_dir)
    files = []
    for i in range(3):
        path = tmp_path / f"in-{i}.parquet"
        pq.write_table(pa.table({"text": [f"{t} #{i}" for t in TEXTS]}), path)
        files.append(path)
    result = tokenize_files(files, tok, tmp_path / "ours" / "mix", workers=2, progress_stream=None)
    assert [d.kind for d in result.datasets] == ["text"]

    # The same documents through megatron's own builder: one part per file, merged with add_index.
    parts = []
    for i in range(3):
        prefix = str(tmp_path / f"mega-part-{i}")
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        for t in TEXTS:
            ids = tok.backend.encode(f"{t} #{i}").ids + [tok.eod_id]
            builder.add_document(torch.tensor(ids), [len(ids)])
        builder.finalize(prefix + ".idx")
        parts.append(prefix)
    merged = IndexedDatasetBuilder(str(tmp_path / "mega.bin"), dtype=np.uint16)
    for prefix in parts:
        merged.add_index(prefix)
    merged.finalize(str(tmp_path / "mega.idx"))

    ours = Path(result.datasets[0].prefix)
    assert ours.with_suffix(".bin").read_bytes() == (tmp_path / "mega.bin").read_bytes()
    assert ours.with_suffix(".idx").read_bytes() == (tmp_path / "mega.idx").read_bytes()


def test_gpt_dataset_builds_from_blend_file_and_yields_sequence_length_plus_one_tokens(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    run_id = make_run(tmp_path / "runs", tiny_tokenizer_dir, rows=30)
    tokenize_command(run_id=run_id, output_dir=str(tmp_path / "runs"))
    blend = load_blend(tmp_path / "runs" / run_id / "megatron" / "blend_cpt1.json")
    tok = load_tokenizer(tiny_tokenizer_dir)

    class MegatronTokenizer:  # what GPTDataset reads from a tokenizer
        eod = tok.eod_id
        pad = tok.eod_id
        vocab_size = tok.vocab_size
        unique_identifiers = {"class": "tiny-bpe", "path": str(tok.path)}

    seq_len = 16
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        config = GPTDatasetConfig(
            random_seed=1234,
            sequence_length=seq_len,
            blend=blend.megatron_blend(),
            split="1,0,0",
            path_to_cache=str(tmp_path / "cache"),
            tokenizer=MegatronTokenizer(),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
        )
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [40, 0, 0], lambda: True, config).build()
        assert len(train) >= 40
        for i in range(len(train)):
            sample = train[i]
            # tokens and labels are the two shifted views of one window of seq_len + 1 tokens
            window = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
            assert len(window) == seq_len + 1
            assert sample["labels"][:-1].tolist() == sample["tokens"][1:].tolist()
            assert window.max() < tok.vocab_size
        raw, _ = train.datasets[0]._query_document_sample_shuffle_indices(0)
        assert len(raw) == seq_len + 1
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# Blend file, naming, dtype
# ---------------------------------------------------------------------------


def test_blend_file_weights_are_kind_weight_times_tokens_and_megatron_parses_them(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    run_id = make_run(tmp_path / "runs", tiny_tokenizer_dir, weights={"planning": 3.0, "knowledge": 0.0})
    tokenize_command(run_id=run_id, output_dir=str(tmp_path / "runs"), heldout_fraction=0)
    out = tmp_path / "runs" / run_id / "megatron"
    assert sorted(p.name for p in out.glob("blend*.json")) == ["blend_cpt1.json", "blend_cpt2.json"]
    blend = load_blend(out / "blend_cpt1.json")
    by_kind = {d.kind: d for d in blend.datasets}
    assert set(by_kind) == {"planning", "reasoning", "rollout", "decision", "knowledge"}
    assert by_kind["knowledge"].weight == 0.0
    raw = {k: (3.0 if k == "planning" else 1.0) * d.tokens for k, d in by_kind.items() if k != "knowledge"}
    for kind, w in raw.items():
        assert by_kind[kind].weight == pytest.approx(w / sum(raw.values()))
    prefixes, weights = blend.megatron_blend()
    assert by_kind["knowledge"].prefix not in prefixes
    assert prefixes == [by_kind[k].prefix for k in ("planning", "reasoning", "rollout", "decision")]
    assert weights == pytest.approx(
        [by_kind[k].weight for k in ("planning", "reasoning", "rollout", "decision")]
    )
    assert blend.tokenizer.eod_token == "<|endoftext|>" and blend.tokenizer.dtype == "uint16"


def test_parquet_glob_without_kind_columns_writes_one_text_dataset_with_out_prefix(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    for i in range(2):
        pq.write_table(pa.table({"body": TEXTS[i::2] + [""]}), tmp_path / f"x-{i}.parquet")
    code = cli_main(
        ["tokenize", "--input", str(tmp_path / "x-*.parquet"), "--text-column", "body",
         "--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path / "out" / "web")]
    )  # fmt: skip
    assert code == 0
    ds = read_dataset(str(tmp_path / "out" / "web_text"))
    expected = TEXTS[0::2] + [""] + TEXTS[1::2] + [""]
    assert len(ds) == len(expected)
    assert ds[len(TEXTS[0::2])].tolist() == [
        load_tokenizer(tiny_tokenizer_dir).eod_id
    ]  # empty text: just EOD
    blend = json.loads((tmp_path / "out" / "web_blend.json").read_text())
    assert blend["cpt_stage"] is None and blend["data_path"] == [
        "1.0",
        str((tmp_path / "out" / "web_text").resolve()),
    ]


def test_null_texts_are_counted_and_not_written(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    pq.write_table(pa.table({"text": ["a b c", None, "d e"]}), tmp_path / "n.parquet")
    result = tokenize_files(
        [tmp_path / "n.parquet"], load_tokenizer(tiny_tokenizer_dir), tmp_path / "o/", progress_stream=None
    )
    assert result.null_texts == 1 and result.documents == 2
    assert len(read_dataset(result.datasets[0].prefix)) == 2


def test_vocab_of_65500_or_more_is_written_as_int32(tmp_path: Path) -> None:
    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<|endoftext|>"] = 70_000
    big = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    big.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "big").mkdir()
    big.save(str(tmp_path / "big" / "tokenizer.json"))
    pq.write_table(pa.table({"text": ["w1 w69999 w65535", "w70 zzz"]}), tmp_path / "b.parquet")
    tok = load_tokenizer(tmp_path / "big")
    assert tok.dtype == np.int32
    result = tokenize_files([tmp_path / "b.parquet"], tok, tmp_path / "o/", progress_stream=None)
    ds = read_dataset(result.datasets[0].prefix)
    assert ds.index.dtype == np.int32
    assert ds[0].tolist() == [1, 69_999, 65_535, 70_000] and ds[1].tolist() == [70, 70_000, 70_000]


# ---------------------------------------------------------------------------
# Bad input: exit 2 naming the problem, nothing half-written
# ---------------------------------------------------------------------------


def test_unknown_run_is_bad_input_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["tokenize", "nope", "--output-dir", str(tmp_path), "--tokenizer", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_run_without_corpus_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r0").mkdir()
    assert cli_main(["tokenize", "r0", "--output-dir", str(tmp_path)]) == 2
    assert "has no corpus" in capsys.readouterr().err


def test_glob_matching_nothing_is_bad_input_naming_the_glob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(tmp_path / "missing-*.parquet")
    assert cli_main(["tokenize", "--input", pattern, "--out", str(tmp_path / "o/")]) == 2
    assert f"--input: no file matches {pattern!r}" in capsys.readouterr().err


def test_missing_text_column_is_bad_input_and_writes_nothing(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"content": ["b"]}), tmp_path / "b.parquet")
    code = cli_main(
        ["tokenize", "--input", str(tmp_path / "*.parquet"), "--tokenizer", str(tiny_tokenizer_dir),
         "--out", str(tmp_path / "o/")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--text-column" in err and "b.parquet" in err and "'text'" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_tokenizer_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    code = cli_main(
        ["tokenize", "--input", str(tmp_path / "a.parquet"), "--tokenizer", str(tmp_path / "no-tok"),
         "--out", str(tmp_path / "o/")]
    )  # fmt: skip
    assert code == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_failure_midway_leaves_no_partial_output_and_keeps_previous_files(
    tmp_path: Path, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        pq.write_table(pa.table({"text": TEXTS}), tmp_path / f"in-{i}.parquet")
    files = sorted(tmp_path.glob("in-*.parquet"))
    tok = load_tokenizer(tiny_tokenizer_dir)
    out = tmp_path / "o"
    tokenize_files(files[:1], tok, f"{out}/", progress_stream=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real = tok_mod.tokenize_file

    def failing(path: Path, *args, **kwargs):
        if path.name == "in-2.parquet":
            raise OSError("disk on fire")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tok_mod, "tokenize_file", failing)
    with pytest.raises(OSError, match="disk on fire"):
        tokenize_files(files, tok, f"{out}/", workers=2, progress_stream=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old output intact, no temp dir


# ---------------------------------------------------------------------------
# The real CPT tokenizer (SmolLM2, from the bundled GGUF)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ids_equal_the_real_smollm2_tokenizer_on_real_trajectories(tmp_path: Path) -> None:
    if not TRAJECTORIES.is_file():
        pytest.skip(f"real trajectories not found at {TRAJECTORIES} (../shared/data is absent)")
    from synth.llm.embedded import ensure_model_dir

    model_dir = ensure_model_dir()  # converted once per machine, then cached
    texts = []
    with open(TRAJECTORIES, encoding="utf-8") as f:
        for line in list(f)[:40]:
            texts.append("\n\n".join(m["content"] for m in json.loads(line)["messages"]))
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet")
    tok = load_tokenizer(model_dir)
    assert (tok.eod_token, tok.vocab_size, tok.dtype) == ("<|endoftext|>", 49152, np.uint16)
    result = tokenize_files([tmp_path / "t.parquet"], tok, tmp_path / "o/", progress_stream=None)

    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ds = read_dataset(result.datasets[0].prefix)
    assert len(ds) == len(texts)
    for i, text in enumerate(texts):
        assert ds[i].tolist() == reference(text)["input_ids"] + [
            reference.convert_tokens_to_ids("<|endoftext|>")
        ]


# ---------------------------------------------------------------------------
# Megatron-LM's own data arguments
# ---------------------------------------------------------------------------


def test_data_args_files_read_back_through_megatron_lms_argument_parsing(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    """--data-args-path is read as get_blend_from_list(f.read().split()); --per-split-data-args-path as JSON."""
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    run_id = make_run(tmp_path / "runs", tiny_tokenizer_dir, rows=30)
    tokenize_command(run_id=run_id, output_dir=str(tmp_path / "runs"))
    out = tmp_path / "runs" / run_id / "megatron"
    for stage in (1, 2):
        blend = load_blend(out / f"blend_cpt{stage}.json")
        text = (out / f"data_args_cpt{stage}.txt").read_text()
        assert all(len(line.split()) == 2 for line in text.splitlines())  # one `weight prefix` pair per entry
        prefixes, weights = get_blend_from_list(text.split())
        assert (prefixes, weights) == blend.megatron_blend()
        assert not any(p.endswith("_heldout") for p in prefixes)

    per_split = json.loads((out / "per_split_data_args_cpt1.json").read_text())
    assert set(per_split) == {"train", "valid", "test"} and per_split["test"] is None
    for split in ("train", "valid"):  # Megatron-LM splits strings before parsing
        if isinstance(per_split[split], str):
            per_split[split] = per_split[split].split()
    train_blend = get_blend_from_list(per_split["train"])
    valid_blend = get_blend_from_list(per_split["valid"])
    assert valid_blend is not None and all(p.endswith("_heldout") for p in valid_blend[0])

    tok = load_tokenizer(tiny_tokenizer_dir)

    class MegatronTokenizer:
        eod = tok.eod_id
        pad = tok.eod_id
        vocab_size = tok.vocab_size
        unique_identifiers = {"class": "tiny-bpe", "path": str(tok.path)}

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        config = GPTDatasetConfig(
            random_seed=1,
            sequence_length=16,
            blend_per_split=[train_blend, valid_blend, None],
            path_to_cache=str(tmp_path / "cache"),
            tokenizer=MegatronTokenizer(),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
        )
        train, valid, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [8, 4, None], lambda: True, config
        ).build()
    finally:
        dist.destroy_process_group()
    assert len(train) >= 8 and len(valid) >= 4
