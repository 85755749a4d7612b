"""Synthetic input for ``bench/scale.py``: JSONL pages of facts, and a fake-endpoint responder
that answers the memory stage with the page's own facts (so statements pass grounding).

Every page holds sentences ``"<Name> Corp was founded in <year> and employs <n> people."``;
a tenth of the pages re-post an earlier page with one sentence changed (near duplicates for
the dedup passes).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

_FACT_RE = re.compile(r"([A-Z][a-z]+ Corp) was founded in (\d{4}) and employs (\d+) people\.")
_SYLLABLES = ["ka", "lo", "mi", "ren", "sa", "tor", "vel", "zu", "an", "bri", "cor", "dun"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def _fact(rng: random.Random) -> str:
    return f"{_name(rng)} Corp was founded in {rng.randint(1850, 2020)} and employs {rng.randint(5, 90000)} people."


def write_pages(
    directory: Path, n: int, *, seed: int = 0, per_file: int = 5000, facts: int = 8
) -> list[Path]:
    """``n`` JSONL pages in files of ``per_file`` lines; returns the files."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    files: list[Path] = []
    fh = None
    for i in range(n):
        if i % per_file == 0:
            if fh is not None:
                fh.close()
            files.append(directory / f"pages-{i // per_file:05d}.jsonl")
            fh = files[-1].open("w")
        if texts and rng.random() < 0.1:
            sentences = texts[rng.randrange(len(texts))].split(". ")
            sentences[rng.randrange(len(sentences))] = _fact(rng)[:-1]
            text = ". ".join(sentences)
        else:
            text = " ".join(_fact(rng) for _ in range(facts))
        texts.append(text)
        assert fh is not None
        fh.write(json.dumps({"url": f"https://scale.example/{i}", "text": text, "title": f"Page {i}"}) + "\n")
    if fh is not None:
        fh.close()
    return files


def memory_responder(body: dict[str, Any]) -> Any:
    """The first two facts of the chunk, as the memory stage's StatementBatch; the support
    check's verdicts ("supported", one per numbered statement) when that is what is asked."""
    text = str(body.get("messages", [{}])[-1].get("content", ""))
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
    if schema == "SupportVerdicts":
        statements_part = text.rsplit("Statements:", 1)[-1]
        n = len(re.findall(r"^\d+\. ", statements_part, flags=re.MULTILINE))
        return {"verdicts": [{"n": i, "verdict": "supported", "reason": "stated"} for i in range(1, n + 1)]}
    statements = [
        {"entity": m.group(1), "statement": m.group(0), "time": m.group(2)} for m in _FACT_RE.finditer(text)
    ][:2]
    return {"statements": statements}
