"""The support check of memory statements: is each statement entailed by its source chunk?

At 10^8 statements a 1-2 % unsupported rate becomes millions of wrong gold answers, and
neither the extraction model nor the grounding heuristics catch a fluent claim the text
never made ("... a city in Scotland"). So every statement is put to the judge model
(``judge_llm``) together with the chunk it came from, many statements per call: the chunk
is the long part of the prompt, the statements are short.

Verdicts: ``supported`` (the text says it, or it follows directly: a paraphrase, a unit
conversion), ``unsupported`` (it adds or changes a fact), ``incomplete`` (not a claim
that stands alone: a byline, a title, a phrase without a verb). A statement the judge
leaves out of its reply is ``unchecked`` and is not kept either: nothing enters the
memory unverified.

A local NLI model was the other option the issue allows; none of the PyPI packages for it
ships its weights (they download from a model hub at first use), and this project's
machines reach only package registries, so the judge model does the check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.llm.base import Message

SupportLabel = Literal["supported", "unsupported", "incomplete"]

SUPPORT_SYSTEM = """You check statements against a source text. For each numbered statement give one verdict:
supported - the text states it, or it follows directly from the text (a paraphrase or a unit conversion is fine)
unsupported - it adds something the text does not say (another place, number, date, cause or name) or contradicts the text
incomplete - it is not a full claim that can be understood without the text (a name with a date, a title, a phrase without a verb)
Reply with one JSON object: {"verdicts": ["...", "...", ...]} with one verdict per statement, in order."""
SUPPORT_USER = """Source text:
{source}

Statements:
{statements}"""
# One example with each verdict: a paraphrase that is supported, an addition that is not,
# a byline that is no claim. About a place no document mentions (the judge must not learn
# facts from it).
SUPPORT_EXAMPLE_SOURCE = (
    "By Ilse Marrow, 12 March 2024. The Osk ferry terminal reopened on 4 March 2024 after a two-year "
    "rebuild that cost 14 million euros, the Varn county council said."
)
SUPPORT_EXAMPLE_STATEMENTS: tuple[str, ...] = (
    "The rebuilt Osk ferry terminal reopened on 4 March 2024; the rebuild took two years and cost 14 million euros.",
    "The Osk ferry terminal is the largest ferry terminal in Varn county.",
    "Ilse Marrow (12 March 2024)",
)
# Verdicts only, no rationale: ~4 tokens a statement instead of ~25, which matters at 10^8
# statements, and lets a batch fit a small completion cap (the quickstart's is 96 tokens).
SUPPORT_EXAMPLE_REPLY = '{"verdicts": ["supported", "unsupported", "incomplete"]}'


def _numbered(statements: Sequence[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(statements, 1))


def support_messages(source: str, statements: Sequence[str]) -> list[Message]:
    """The check of ``statements`` against ``source``: instructions, the example, the batch."""
    example = SUPPORT_USER.format(source=SUPPORT_EXAMPLE_SOURCE, statements=_numbered(SUPPORT_EXAMPLE_STATEMENTS))
    return [
        {"role": "system", "content": SUPPORT_SYSTEM},
        {"role": "user", "content": example},
        {"role": "assistant", "content": SUPPORT_EXAMPLE_REPLY},
        {"role": "user", "content": SUPPORT_USER.format(source=source, statements=_numbered(statements))},
    ]


_LABEL_SYNONYMS: dict[str, str] = {
    "yes": "supported",
    "true": "supported",
    "entailed": "supported",
    "entailment": "supported",
    "support": "supported",
    "no": "unsupported",
    "false": "unsupported",
    "not_supported": "unsupported",
    "contradicted": "unsupported",
    "contradiction": "unsupported",
    "neutral": "unsupported",
    "not_a_claim": "incomplete",
    "fragment": "incomplete",
}


class SupportVerdict(BaseModel):
    """One statement's verdict; ``n`` is its 1-based number in the batch. The reply may give bare
    labels in order (what the prompt asks for) or objects with ``n``, ``verdict`` and ``reason``."""

    model_config = ConfigDict(extra="ignore")
    n: int = Field(ge=1, description="the statement's number")
    verdict: SupportLabel = Field(description="supported | unsupported | incomplete")
    reason: str = Field("", description="a few words saying why")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field, aliases in (("n", ("id", "number", "statement")), ("verdict", ("label", "supported"))):
            if field not in data:
                for alias in aliases:
                    if alias in data:
                        data[field] = data.pop(alias)
                        break
        label = data.get("verdict")
        if isinstance(label, bool):
            data["verdict"] = "supported" if label else "unsupported"
        elif isinstance(label, str):
            key = "_".join(label.strip().lower().replace("-", " ").split())
            data["verdict"] = _LABEL_SYNONYMS.get(key, key)
        if data.get("reason") is None:
            data["reason"] = ""
        return data


class SupportVerdicts(BaseModel):
    """The judge's reply for one batch (a bare list of verdicts is accepted too)."""

    model_config = ConfigDict(extra="ignore")
    verdicts: list[SupportVerdict] = Field(description="one verdict per statement, in order")

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            data = {"verdicts": data}
        if isinstance(data, dict) and isinstance(data.get("verdicts"), list):
            # Bare labels are numbered by position; objects keep their own "n" (or get theirs).
            data = {
                **data,
                "verdicts": [
                    v if isinstance(v, BaseModel) else {"n": i, **v} if isinstance(v, dict) else {"n": i, "verdict": v}
                    for i, v in enumerate(data["verdicts"], 1)
                ],
            }
        return data

    @classmethod
    def salvage(cls, raw: str | None) -> SupportVerdicts:
        """The verdicts a reply cut short by the token cap still holds, in order (labels only)."""
        return cls.model_validate({"verdicts": re.findall(r'"(supported|unsupported|incomplete)"', raw or "")})

    def by_number(self, n_statements: int) -> dict[int, SupportVerdict]:
        """Verdicts by statement number (the first one given wins; numbers out of range dropped)."""
        out: dict[int, SupportVerdict] = {}
        for v in self.verdicts:
            if 1 <= v.n <= n_statements:
                out.setdefault(v.n, v)
        return out
