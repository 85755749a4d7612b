"""A small real run with every stage: its inputs and its spec (used by the card, export, datasets
and dashboard tests).

Inputs are four bundled sample pages and six real WebDancer trajectories (``../shared/data``).
The spec points at a fake OpenAI server answering through
``testing.pipeline_responder:grounded_responder`` (name it in the server's config), so each of
the eight stages commits records; a price is set, so the run accounts LLM cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "configs" / "quickstart" / "pages"
WEBDANCER = REPO / ".." / "shared" / "data" / "trajectories" / "webdancer_sample_traj.jsonl"
GROUNDED_RESPONDER = "testing.pipeline_responder:grounded_responder"
PRICE = {"prompt_usd_per_mtok": 0.5, "completion_usd_per_mtok": 1.5}


def copy_inputs(base: Path, pages: int = 4, trajectories: int = 6) -> None:
    """``base/inputs/pages/*.html`` (``pages`` sample pages and a stub too short to keep) and
    ``base/inputs/traj.jsonl``; FileNotFoundError without the shared data."""
    if not WEBDANCER.is_file():
        raise FileNotFoundError(f"{WEBDANCER} (the shared real trajectories) is absent")
    (base / "inputs" / "pages").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:pages]:
        shutil.copy(page, base / "inputs" / "pages")
    # A page too short to keep: the documents stage's failed ledger is never empty.
    (base / "inputs" / "pages" / "zz-stub.html").write_text(
        "<html><head><title>Stub</title></head><body><p>Too short.</p></body></html>", encoding="utf-8"
    )
    lines = WEBDANCER.read_text(encoding="utf-8").splitlines()[:trajectories]
    (base / "inputs" / "traj.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def every_stage_spec(base_url: str, name: str = "every-stage") -> dict[str, Any]:
    """Every stage, sized to finish in well under a minute against the fake server."""
    return {
        "name": name,
        "inputs": {"web": ["inputs/pages/*.html"], "trajectories": ["inputs/traj.jsonl"]},
        "llm": {"base_url": base_url, "model": "fake-model", "max_concurrency": 8, "price": PRICE},
        "stages": {
            "documents": {"min_chars": 100},
            "memory": {},
            # Styles the responder writes well; the closed-book filter would grade random guesses.
            "questions": {
                "per_cluster": 2,
                "max_clusters": 3,
                "styles": ["factual", "multi_hop", "synthesis"],
                "difficulty_filter": False,
            },
            "planning": {},
            "reasoning": {},
            "rollouts": {"max_questions": 2, "max_steps": 2},
            "decisions": {"alternatives": 2},
            "corpus": {},
        },
        "execution": {"unit_size": 4},
        "card": {"license": "apache-2.0", "source_datasets": ["Alibaba-NLP/WebDancer sample trajectories"]},
    }
