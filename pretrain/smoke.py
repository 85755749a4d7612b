"""``make cpt-smoke``: the CPT trainer on CPU, small, on the quickstart corpus.

Continues SmolLM2-135M-Instruct (converted from the embedded model) for a few minutes on
the newest quickstart run's corpus (``make synth``). The corpus is tokenized first
(``agentcpt tokenize RUN_ID``) if the run has no blend file yet; tokenizing holds out the
texts of a share of the run's sources (trajectories, questions, documents:
`pretrain.lineage`), and the agentic kinds ``decision`` and ``rollout`` are not trained on
at all. Two held-out losses are printed, before and after training:

* **same kind, unseen source**: kinds that are trained on, from sources no trained text
  comes from — what continual pre-training should generalise to;
* **other kind, unseen source**: the held-out kinds, from those unseen sources.

Neither shares a trajectory, question or document with a trained text, so the drop is not
memorised context (the kind-only hold-out it replaces let held-out decisions replay the
steps of trained rollouts). Settings come from ``configs/cpt/smoke.yaml``; the resolved
config is written next to the checkpoints (``runs/<id>/cpt-smoke/config.yaml``), and
TensorBoard event files to ``runs/<id>/cpt-smoke/tensorboard``.

Exit codes: 0 the same-kind unseen-source loss dropped; 1 it did not; 2 no corpus (run
``make synth``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from pretrain.config import CPTConfig
from pretrain.lineage import HELDOUT_FILE, HeldOut

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpt" / "smoke.yaml"
AGENTIC_HOLDOUT = ("decision", "rollout")
EXIT_OK, EXIT_NO_DROP, EXIT_NO_CORPUS = 0, 1, 2


class NoCorpusError(FileNotFoundError):
    """No run with a committed corpus under the runs directory."""


def _is_quickstart(run_dir: Path) -> bool:
    spec = run_dir / "spec.yaml"
    if not spec.is_file():
        return False
    raw = yaml.safe_load(spec.read_text(encoding="utf-8"))
    return isinstance(raw, dict) and raw.get("name") == "quickstart"


def find_corpus_run(runs_dir: Path) -> Path:
    """The newest run with committed corpus shards, quickstart runs first; never a preview."""
    from synth.layout import is_preview_run
    from synth.shards import ShardStore

    candidates = [
        d
        for d in Path(runs_dir).glob("*")
        if d.is_dir() and not is_preview_run(d.name) and ShardStore(d).files("corpus")
    ]
    if not candidates:
        raise NoCorpusError(f"no run with a corpus under {runs_dir}/: run `make synth` first")
    candidates.sort(key=lambda d: (_is_quickstart(d), d.stat().st_mtime), reverse=True)
    return candidates[0]


def ensure_blend(run_dir: Path) -> Path:
    """``runs/<id>/megatron/blend_cpt1.json``, tokenizing the run's corpus when it is missing or stale."""
    from synth.shards import ShardStore

    blend = run_dir / "megatron" / "blend_cpt1.json"
    newest_shard = max(p.stat().st_mtime for p in ShardStore(run_dir).files("corpus"))
    if not blend.is_file() or blend.stat().st_mtime < newest_shard:
        from pretrain.tokenize import tokenize_command

        tokenize_command(run_id=run_dir.name, output_dir=str(run_dir.parent))
    if not blend.is_file():
        raise NoCorpusError(f"{run_dir.name}: the corpus has no CPT stage 1 records (no {blend.name})")
    return blend


def smoke_config(template: Path, blend: Path, checkpoint_dir: Path, steps: int | None) -> CPTConfig:
    """The smoke template with this corpus's blend, held-out kinds and checkpoint directory."""
    from pretrain.blend import load_blend

    raw = yaml.safe_load(template.read_text(encoding="utf-8"))
    kinds = {d.kind for d in load_blend(blend).datasets if d.tokens > 0}
    holdout = [k for k in AGENTIC_HOLDOUT if k in kinds]
    if holdout and not kinds - set(holdout):
        holdout = holdout[:1]  # keep something to train on
    stage = raw["stages"][0]
    stage["data"]["blend"] = str(blend)
    stage["data"]["holdout_kinds"] = holdout
    if steps is not None:
        stage["train_steps"] = steps
        stage["eval"]["interval"] = steps
    raw["checkpoint"]["dir"] = str(checkpoint_dir)
    return CPTConfig.model_validate(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs", help="where `make synth` wrote its runs")
    parser.add_argument("--blend", help="use this blend file instead of the newest run's corpus")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="smoke config template")
    parser.add_argument("--steps", type=int, help="override train_steps")
    args = parser.parse_args(argv)
    from pretrain.train import quiet_megatron_warnings

    quiet_megatron_warnings()
    try:
        if args.blend:
            blend = Path(args.blend)
            if not blend.is_file():
                raise NoCorpusError(f"--blend: {blend} not found")
            out = blend.parent / "cpt-smoke"
        else:
            run_dir = find_corpus_run(Path(args.runs_dir))
            print(f"cpt-smoke: corpus of run {run_dir.name}", flush=True)
            blend = ensure_blend(run_dir)
            out = run_dir / "cpt-smoke"
    except NoCorpusError as err:
        print(f"cpt-smoke: {err}", file=sys.stderr)
        return EXIT_NO_CORPUS

    cfg = smoke_config(Path(args.config), blend, out, args.steps)
    shutil.rmtree(out, ignore_errors=True)  # a smoke run always starts from the HF model
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    holdout = cfg.stages[0].data.holdout_kinds
    heldout_file = blend.parent / HELDOUT_FILE
    sources = (
        f"{len(HeldOut.model_validate_json(heldout_file.read_text()).texts)} texts of held-out sources"
        if heldout_file.is_file()
        else "no source split (blend without lineage)"
    )
    print(
        f"cpt-smoke: never trained on: kinds {', '.join(holdout) or '(none)'}; {sources}",
        flush=True,
    )

    from pretrain.train import run

    result = run(cfg)[0]
    (_, before), (_, after) = result.heldout[0], result.heldout[-1]
    for line in report_lines(before, after):
        print(f"cpt-smoke: {line}")
    print(f"cpt-smoke: checkpoints, metrics and TensorBoard events in {out}")
    gate = "same_kind_unseen_source" if "same_kind_unseen_source" in before else "all"
    return EXIT_OK if after[gate] < before[gate] else EXIT_NO_DROP


GROUP_TITLES = {
    "same_kind_unseen_source": "held-out loss, same kind, unseen source",
    "other_kind_unseen_source": "held-out loss, other kind, unseen source",
    "held_out_kind": "held-out loss, held-out kind (sources may be shared)",
    "random_share": "held-out loss, random share",
}


def report_lines(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """One line per held-out group: its kinds, the loss before and after, and the change."""
    lines = []
    for group, title in GROUP_TITLES.items():
        if group not in before:
            continue
        kinds = [name.split("/", 1)[1] for name in before if name.startswith(group + "/")]
        label = f"{title} ({'+'.join(kinds)})" if kinds else title
        b, a = before[group], after[group]
        lines.append(f"{label}: before {b:.4f} -> after {a:.4f} ({a - b:+.4f})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
