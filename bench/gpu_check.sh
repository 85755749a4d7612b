#!/usr/bin/env bash
# The CPT trainer's GPU check: everything `make cpt` relies on, in about 5 minutes on one GPU.
#
#   bench/gpu_check.sh [OUT_DIR]                     # on a GPU node (repo root, .venv with the gpu extra,
#                                                    # or inside docker/trainer.Dockerfile)
#   GPU_CHECK_DRY_RUN=1 bench/gpu_check.sh [OUT_DIR] # without a GPU: the CPU-capable parts
#
# It writes one line per check to OUT_DIR/summary.txt (default /tmp/agentcpt-gpu-check):
#   PASS|FAIL|SKIP <check>: <figures>
# and exits 1 if any check failed. Self-contained: the corpus is the repo's own quickstart
# pages and trajectories, the models are random (a tiny Qwen3 for the flow, a Qwen3-1.7B
# shape for throughput); nothing is downloaded.
#
# Checks:
#   env          CUDA, Transformer Engine in megatron-core 0.16.1's range (2.9-2.11), mcore 0.16.1
#   preflight    the shipped configs pass the layout preflight for their nodes
#   two_stage    stage 1 then stage 2 (RoPE base change, document masks): loss falls, tokens/s and
#                MFU logged, stage 2 starts from stage 1's final checkpoint
#   resume       stop after 12 steps, resume: the per-step losses equal the uninterrupted run's
#   export       dist checkpoint -> HF (python -m pretrain.convert export); transformers' logits vs
#                the trained megatron-core model's on the same tokens
#   throughput   a Qwen3-1.7B-shaped model at 4K context: tokens/s, MFU, peak memory vs the estimate
#   parallel     (>= 2 GPUs) TP 2 and CP 2 loss curves vs plain data parallelism
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-/tmp/agentcpt-gpu-check}"
if [ -x "$REPO/.venv/bin/python" ]; then DEFAULT_PY="$REPO/.venv/bin/python"; else DEFAULT_PY=python; fi
PY="${PYTHON:-$DEFAULT_PY}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
# Deterministic kernels, so a resumed run can reproduce an uninterrupted one step for step.
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
export PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false

rm -rf "$OUT" && mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${GPU_CHECK_DRY_RUN:-0}" = "1" ] || [ "$GPUS" = "0" ]; then DRY=1; else DRY=0; fi
export GPU_CHECK_OUT="$OUT" GPU_CHECK_DRY="$DRY" GPU_CHECK_GPUS="$GPUS"
START=$(date +%s)

cat > "$OUT/check.py" <<'PYEOF'
"""The Python side of bench/gpu_check.sh: one subcommand per check, one summary line each."""

import json
import math
import os
import re
import sys
import time
from pathlib import Path

OUT = Path(os.environ["GPU_CHECK_OUT"])
DRY = os.environ["GPU_CHECK_DRY"] == "1"
GPUS = int(os.environ["GPU_CHECK_GPUS"])
REPO = Path(os.environ["PYTHONPATH"].split(":")[0])
SUMMARY = OUT / "summary.txt"
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12, "B200": 2250e12}


def report(status, check, detail):
    line = f"{status} {check}: {detail}"
    print(line, flush=True)
    with open(SUMMARY, "a") as f:
        f.write(line + "\n")


def peak_flops():
    if "PEAK_FLOPS" in os.environ:
        return float(os.environ["PEAK_FLOPS"])
    if DRY:
        return 3.3e11  # 2 CPU cores (configs/cpt/smoke.yaml)
    import torch

    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return 989e12


def events(stage_dir, event):
    path = Path(stage_dir) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["event"] == event]


# ----------------------------------------------------------------------------- env
def env():
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from packaging.version import Version

    mcore = version("megatron-core")
    try:
        te = version("transformer_engine")
    except PackageNotFoundError:
        te = None
    if DRY:
        report("SKIP", "env", f"no GPU (dry run): torch {torch.__version__}, megatron-core {mcore}, TE {te}")
        return
    ok_te = te is not None and Version("2.9.0a0") <= Version(te) < Version("2.12.0")
    status = "PASS" if torch.cuda.is_available() and ok_te and mcore == "0.16.1" else "FAIL"
    report(status, "env", f"{GPUS} x {torch.cuda.get_device_name(0)}, torch {torch.__version__} "
           f"(CUDA {torch.version.cuda}), megatron-core {mcore}, transformer_engine {te}")


# ----------------------------------------------------------------------------- workspace
def workspace():
    """Tokenizer, tiny Qwen3 (random), corpus (the repo's quickstart texts), blends, config."""
    import html as html_lib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import yaml
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pretrain.tokenize import tokenize_files
    from synth.tokens import load_tokenizer

    texts = []
    for page in sorted((REPO / "configs" / "quickstart" / "pages").glob("*.html")):
        raw = re.sub(r"(?s)<(script|style).*?</\1>", " ", page.read_text(encoding="utf-8"))
        texts.append(html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", raw))).strip())
    for path in sorted((REPO / "configs" / "quickstart" / "trajectories").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts.append("\n".join(str(m.get("content", "")) for m in record.get("messages", [])))
    hf = OUT / "hf"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.mkdir(parents=True)
    tok.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
                      max_position_embeddings=4096)
    cfg.architectures = ["Qwen3ForCausalLM"]
    Qwen3ForCausalLM(cfg).save_pretrained(hf)
    kinds = ["planning", "reasoning", "rollout", "decision", "knowledge"]
    rows = [{"text": t, "kind": kinds[i % 5], "cpt_stage": 1} for i, t in enumerate(texts)]
    rows += [{"text": t, "kind": "rollout", "cpt_stage": 2} for t in texts]  # stage 2: the same texts, packed long
    pq.write_table(pa.Table.from_pylist(rows), OUT / "corpus.parquet")
    tokenize_files([OUT / "corpus.parquet"], load_tokenizer(hf), str(OUT / "data") + "/", progress_stream=None)
    seq1, seq2 = (256, 512) if DRY else (1024, 2048)
    stage = lambda name, seq, steps, gbs, mbs, blend, **extra: {  # noqa: E731
        "name": name, "seq_length": seq, "train_steps": steps, "global_batch_size": gbs, "micro_batch_size": mbs,
        "data": {"blend": str(OUT / "data" / blend), "valid_fraction": 0.2, **extra.pop("data", {})},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3, "schedule": "cosine"},
        "eval": {"interval": 1000, "batches": 1}, "log_interval": 1, **extra}
    config = {
        "name": "gpu-check", "model": {"hf_dir": str(hf)}, "precision": "bf16",
        "checkpoint": {"dir": str(OUT / "ckpt"), "interval": 10, "export_hf": False},
        "peak_flops_per_device": peak_flops(), "seed": 1234,
        "stages": [
            stage("stage1", seq1, 30, 8, 2, "blend_cpt1.json"),
            stage("stage2", seq2, 15, 4, 1, "blend_cpt2.json", rope={"base": 500000.0}, data={"document_mask": True}),
        ],
    }
    (OUT / "check.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"workspace: {len(texts)} texts, vocab {tok.get_vocab_size()}, config {OUT / 'check.yaml'}")


# ----------------------------------------------------------------------------- preflight
def preflight():
    from pretrain.config import load_cpt_config
    from pretrain.layout import GIB, LayoutError, check_layouts
    from pretrain.model import architecture_from_hf

    shipped = [("qwen3_1p7b.yaml", "qwen3-1.7b", 8), ("qwen3_1p7b_multinode.yaml", "qwen3-1.7b", 32),
               ("qwen3_30b_a3b.yaml", "qwen3-30b-a3b", 64)]
    figures = []
    try:
        for config, model, gpus in shipped:
            arch = architecture_from_hf(json.loads((REPO / "configs/cpt/hf_configs" / f"{model}.json").read_text()))
            plans = check_layouts(load_cpt_config(REPO / "configs/cpt" / config), arch, gpus, 80 * GIB)
            figures.append(f"{config} on {gpus}: " + ", ".join(f"{p.stage} ~{p.memory.total / GIB:.0f} GiB" for p in plans))
    except LayoutError as err:
        report("FAIL", "preflight", str(err))
        return
    report("PASS", "preflight", "; ".join(figures))


# ----------------------------------------------------------------------------- two stages
def two_stage():
    s1, s2 = OUT / "ckpt" / "stage1", OUT / "ckpt" / "stage2"
    train1, train2 = events(s1, "train"), events(s2, "train")
    init = events(s2, "init")
    if not train1 or not train2:
        report("FAIL", "two_stage", f"the run did not finish both stages (see {OUT}/two_stage.log)")
        return
    first = sum(r["loss"] for r in train1[:5]) / 5
    last = sum(r["loss"] for r in train1[-5:]) / 5
    rate = train1[-1]["tokens_per_s"]
    util = train1[-1]["mfu"]
    from_stage1 = bool(init) and "stage1/iter_0000030" in init[0]["message"]
    falls = last < first - 0.1
    rate2 = train2[-1]["tokens_per_s"]
    ok = falls and from_stage1 and rate > 0 and util is not None and rate2 > 0
    report("PASS" if ok else "FAIL", "two_stage",
           f"stage1 loss {first:.3f} -> {last:.3f} (mean of first/last 5 steps), {rate:,.0f} tokens/s, "
           f"MFU {100 * util:.2f}%; stage2 {'from stage1/iter_0000030' if from_stage1 else 'NOT from stage 1'}, "
           f"loss {train2[0]['loss']:.3f} -> {train2[-1]['loss']:.3f}, {rate2:,.0f} tokens/s, document masks on")


# ----------------------------------------------------------------------------- resume
def resume():
    straight = [r["loss"] for r in events(OUT / "ckpt" / "stage1", "train")]
    resumed_rows = events(OUT / "ckpt_resume" / "stage1", "train")
    resumed = [r["loss"] for r in resumed_rows]
    resumes = events(OUT / "ckpt_resume" / "stage1", "resume")
    if len(resumed) != len(straight) or not resumes:
        report("FAIL", "resume", f"{len(resumed)} steps after resume, {len(straight)} uninterrupted, "
               f"{len(resumes)} resume event(s) (see {OUT}/resume.log)")
        return
    diff = max(abs(a - b) for a, b in zip(straight, resumed))
    same = "bitwise equal" if diff == 0 else f"max |delta loss| {diff:.2e}"
    report("PASS" if diff <= 1e-5 else "FAIL", "resume",
           f"stopped at step 12, resumed from iter_0000012: {len(resumed)} losses, {same} to the uninterrupted run")


# ----------------------------------------------------------------------------- export
def export():
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from pretrain.checkpoint import read_train_state
    from pretrain.config import CPTConfig
    from pretrain.runtime.choose import make_runtime

    checkpoint = OUT / "ckpt" / "stage2" / "iter_0000015"
    exported = OUT / "hf_export"
    if not (exported / "model.safetensors").is_file():
        report("FAIL", "export", f"no HF export at {exported} (see {OUT}/export.log)")
        return
    cfg = CPTConfig.model_validate(yaml.safe_load((OUT / "check.yaml").read_text()))
    stage = cfg.stage("stage2")
    state = read_train_state(checkpoint)
    runtime = make_runtime(cfg)
    try:
        runtime.start_stage(stage, cfg.seed)
        trainer = runtime.make_trainer(runtime.build_model(state.arch, stage), stage)
        trainer.load(checkpoint, with_optimizer=False)
        gpt = trainer.gpt if hasattr(trainer, "gpt") else trainer.model
        device = "cpu" if DRY else "cuda"
        ids = torch.randint(0, state.arch.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            gpt.eval()
            ours = gpt(ids, torch.arange(128, device=device).expand(2, -1), None)[..., : state.arch.vocab_size].float()
            dtype = torch.float32 if DRY else torch.bfloat16
            hf = AutoModelForCausalLM.from_pretrained(exported, dtype=dtype).to(device).eval()
            theirs = hf(ids).logits.float()
    finally:
        runtime.shutdown()
    diff = (ours - theirs).abs()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    scale = theirs.abs().mean().item()
    tol = 1e-3 if DRY else 0.05 * max(scale, 1.0)  # bf16 kernels differ (TE fused vs HF SDPA)
    ok = diff.mean().item() < tol and agree >= 0.97
    report("PASS" if ok else "FAIL", "export",
           f"HF export of stage2/iter_0000015 vs the megatron-core model: max |delta logit| {diff.max().item():.3e}, "
           f"mean {diff.mean().item():.3e} (mean |logit| {scale:.2f}), top-1 agreement {100 * agree:.1f}%")


# ----------------------------------------------------------------------------- throughput
def throughput():
    import torch
    import yaml

    from pretrain.config import CPTConfig
    from pretrain.data import Batch
    from pretrain.flops import mfu, training_flops_per_token
    from pretrain.layout import GIB, estimate_memory
    from pretrain.model import architecture_from_hf
    from pretrain.runtime.choose import make_runtime

    name = "tiny Qwen3 (dry run)" if DRY else "Qwen3-1.7B shape"
    if DRY:
        arch = architecture_from_hf(json.loads((OUT / "hf" / "config.json").read_text()))
        seq, gbs, steps, warmup = 256, 4, 2, 1
    else:
        arch = architecture_from_hf(json.loads((REPO / "configs/cpt/hf_configs/qwen3-1.7b.json").read_text()))
        seq, gbs, steps, warmup = 4096, 8, 8, 3
    raw = yaml.safe_load((OUT / "check.yaml").read_text())
    raw["stages"] = [{**raw["stages"][0], "seq_length": seq, "global_batch_size": gbs, "micro_batch_size": 1,
                      "train_steps": 100, "recompute": "none"}]
    cfg = CPTConfig.model_validate(raw)
    stage = cfg.stages[0]
    runtime = make_runtime(cfg)
    try:
        runtime.start_stage(stage, cfg.seed)
        trainer = runtime.make_trainer(runtime.build_model(arch, stage), stage)
        gen = torch.Generator().manual_seed(0)

        def batch():
            tokens = torch.randint(0, arch.vocab_size, (1, seq + 1), generator=gen)
            return Batch(tokens=tokens[:, :-1], labels=tokens[:, 1:], loss_mask=torch.ones(1, seq),
                         position_ids=torch.arange(seq)[None])

        for _ in range(warmup):
            trainer.train_step([batch() for _ in range(gbs)])
        if not DRY:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step([batch() for _ in range(gbs)])
        if not DRY:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / GIB if not DRY else None
    finally:
        runtime.shutdown()
    rate = steps * gbs * seq / elapsed
    util = mfu(rate, training_flops_per_token(arch, seq), 1, cfg.peak_flops_per_device)
    estimate = estimate_memory(arch, stage, 1).total / GIB
    memory = f", peak memory {peak:.1f} GiB (preflight estimate {estimate:.1f} GiB)" if peak is not None else ""
    report("PASS" if rate > 0 else "FAIL", "throughput",
           f"{name} ({arch.num_parameters / 1e9:.2f}B) at {seq} tokens, {gbs} samples/step, bf16, 1 device: "
           f"{rate:,.0f} tokens/s, MFU {100 * util:.1f}% of {cfg.peak_flops_per_device:.3g} FLOP/s{memory}")


# ----------------------------------------------------------------------------- TP / CP vs DP
def parallel():
    runs = {}
    for name in ("dp", "tp2", "cp2"):
        rows = events(OUT / f"ckpt_{name}" / "stage1", "train")
        runs[name] = [r["loss"] for r in rows]
    if not runs["dp"] or any(len(v) != len(runs["dp"]) for v in runs.values()):
        report("FAIL", "parallel", f"runs incomplete: { {k: len(v) for k, v in runs.items()} } (see {OUT}/parallel_*.log)")
        return
    diffs = {k: max(abs(a - b) for a, b in zip(v, runs["dp"])) for k, v in runs.items() if k != "dp"}
    ok = all(d < 0.02 for d in diffs.values())
    report("PASS" if ok else "FAIL", "parallel",
           f"{len(runs['dp'])} steps on 2 GPUs, max |delta loss| vs DP 2: TP 2 {diffs['tp2']:.2e}, CP 2 {diffs['cp2']:.2e}")


def parallel_configs():
    import yaml

    raw = yaml.safe_load((OUT / "check.yaml").read_text())
    for name, parallel in (("dp", {}), ("tp2", {"tensor": 2}), ("cp2", {"context": 2})):
        variant = json.loads(json.dumps(raw))
        variant["checkpoint"]["dir"] = str(OUT / f"ckpt_{name}")
        variant["stages"] = [{**variant["stages"][0], "train_steps": 10, "parallel": parallel}]
        (OUT / f"parallel_{name}.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))


if __name__ == "__main__":
    globals()[sys.argv[1]]()
PYEOF

check() { "$PY" "$OUT/check.py" "$@"; }
fail_line() { echo "FAIL $1: $2" | tee -a "$SUMMARY"; }
if [ "$DRY" = "1" ]; then
  train() { "$PY" -m pretrain.train "$@"; }
else
  train() { "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 -m pretrain.train "$@"; }
fi

echo "== agentcpt GPU check: $GPUS GPU(s), dry run $DRY, output $OUT"
check env
check workspace > "$OUT/workspace.log" 2>&1 || fail_line workspace "see $OUT/workspace.log"
check preflight

# Both stages, then the resume pair (stage 1 only), then export and logits.
train "$OUT/check.yaml" > "$OUT/two_stage.log" 2>&1 || fail_line two_stage_run "exit $? (see $OUT/two_stage.log)"
check two_stage
sed "s#$OUT/ckpt\$#$OUT/ckpt_resume#" "$OUT/check.yaml" > "$OUT/resume.yaml"
{ train "$OUT/resume.yaml" --stage stage1 --exit-after-steps 12 && train "$OUT/resume.yaml" --stage stage1; } \
  > "$OUT/resume.log" 2>&1 || fail_line resume_run "see $OUT/resume.log"
check resume
"$PY" -m pretrain.convert export "$OUT/ckpt/stage2/iter_0000015" --out "$OUT/hf_export" > "$OUT/export.log" 2>&1 \
  || fail_line export_run "see $OUT/export.log"
if [ "$DRY" = "1" ]; then check export; else
  "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 "$OUT/check.py" export >> "$OUT/export.log" 2>&1 \
    || fail_line export_logits "see $OUT/export.log"
fi
if [ "$DRY" = "1" ]; then check throughput > "$OUT/throughput.log" 2>&1 || fail_line throughput "see $OUT/throughput.log"; else
  "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 "$OUT/check.py" throughput > "$OUT/throughput.log" 2>&1 \
    || fail_line throughput "see $OUT/throughput.log"
fi
grep -h "throughput:" "$OUT/throughput.log" | grep -v "^FAIL" || true

if [ "$GPUS" -ge 2 ] && [ "$DRY" = "0" ]; then
  check parallel_configs
  for name in dp tp2 cp2; do
    "$PY" -m torch.distributed.run --standalone --nproc-per-node=2 -m pretrain.train "$OUT/parallel_$name.yaml" \
      > "$OUT/parallel_$name.log" 2>&1 || fail_line "parallel_$name" "see $OUT/parallel_$name.log"
  done
  check parallel
else
  echo "SKIP parallel: needs 2 GPUs ($GPUS here)" | tee -a "$SUMMARY"
fi

echo "== summary ($(( $(date +%s) - START )) s) in $SUMMARY"
cat "$SUMMARY"
! grep -q "^FAIL" "$SUMMARY"
