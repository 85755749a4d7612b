"""Verified memory: every statement is checked against its source chunk by the judge model.

The judge here is a scripted LLM with fixed verdicts, so each test says exactly what the judge
decided and checks what the stage did with it: supported statements (paraphrases included)
become records marked ``verified_by: judge``, the rest go to the ledger with the judge's
reason; statements the model-free checks reject (a byline, a subject-less sentence) never
reach the judge.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from synth.llm.base import LLMTimeout, LLMTruncated
from synth.records import DocumentRecord, MemoryRecord
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.memory import STAGE, StatementBatch
from synth.support import SupportVerdicts
from testing.scripted_llm import ScriptedLLM

TEXT = (
    "By Amara Okafor (2024-09-15). The Kestrel Bay Bridge opened in 1998 and carries 41,000 vehicles a day. "
    "Overnight stays in Riverton rose 4 percent in 2024, and the Riverton Visitor Bureau counted "
    "2.41 million overnight visitors."
)
DOC = DocumentRecord(
    id="d1", run_id="t", url="https://news.example/bay", title="Kestrel Bay in numbers", date="2024-09-15",
    text=TEXT, n_chars=len(TEXT),
)
PARAPHRASE = "Every day, 41,000 vehicles cross the Kestrel Bay Bridge, which opened in 1998."
UNSUPPORTED = "The Kestrel Bay Bridge is the longest bridge in Scotland."
STATEMENTS = [
    {"entity": "Amara Okafor", "statement": "Amara Okafor (2024-09-15)", "time": None},  # a byline
    {"entity": "", "statement": "Overnight stays rose 4 percent in 2024.", "time": "2024"},  # no subject
    {"entity": "Kestrel Bay Bridge", "statement": PARAPHRASE, "time": "1998"},
    {"entity": "Kestrel Bay Bridge", "statement": UNSUPPORTED, "time": None},
    {
        "entity": "Riverton Visitor Bureau",
        "statement": "The Riverton Visitor Bureau counted 2.41 million overnight visitors in 2024.",
        "time": "2024",
    },
]


def judged_statements(messages: list[dict[str, Any]]) -> list[str]:
    return re.findall(r"^\d+\. (.*)$", messages[-1]["content"].rsplit("Statements:\n", 1)[1], re.M)


def fixed_judge(verdicts: dict[str, tuple[str, str]]) -> Any:
    """A judge replying with ``verdicts[statement]`` = (verdict, reason); unlisted ones are left out."""

    def reply(messages: list[dict[str, Any]], schema: Any) -> Any:
        assert schema is SupportVerdicts
        return {
            "verdicts": [
                {"n": n, "verdict": verdicts[s][0], "reason": verdicts[s][1]}
                for n, s in enumerate(judged_statements(messages), 1)
                if s in verdicts
            ]
        }

    return reply


def context(tmp_path: Path, judge: Any, statements: list[dict[str, Any]] = STATEMENTS, **memory: Any) -> StageContext:
    spec = parse_spec({"name": "t", "stages": {"documents": {}, "memory": memory}})
    return StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(lambda m, s: {"statements": statements}, model_name="writer"),
        judge_llm=ScriptedLLM(judge, model_name="judge"),
        run_dir=tmp_path,
        read_stage=lambda stage: {"documents": [DOC]}[stage],
    )


def run(ctx: StageContext) -> tuple[list[MemoryRecord], dict[str, list[Any]]]:
    out = asyncio.run(STAGE.process(STAGE.prepare(ctx).items, ctx))
    failures: dict[str, list[Any]] = {}
    for f in out.failures:
        failures.setdefault(f.error_kind, []).append(f)
    return out.records, failures


VERDICTS = {
    PARAPHRASE: ("supported", "restates the opening year and the traffic"),
    UNSUPPORTED: ("unsupported", "the text says nothing about Scotland or length"),
    STATEMENTS[4]["statement"]: ("supported", "stated"),
}


def test_byline_subjectless_and_unsupported_statements_are_rejected_with_their_reasons(tmp_path: Path) -> None:
    ctx = context(tmp_path, fixed_judge(VERDICTS))
    records, failures = run(ctx)
    assert sorted(failures) == ["generic_subject", "no_predicate", "unsupported_statement"]
    assert json.loads(failures["no_predicate"][0].raw_output)["statement"] == "Amara Okafor (2024-09-15)"
    assert json.loads(failures["generic_subject"][0].raw_output)["statement"].startswith("Overnight stays")
    (unsupported,) = failures["unsupported_statement"]
    assert "Scotland" in unsupported.message and unsupported.input_ids == ["d1#c0"]
    assert json.loads(unsupported.raw_output)["statement"] == UNSUPPORTED
    # The model-free checks ran first: the judge saw only what passed them, in one batch.
    (call,) = ctx.judge_llm.calls
    assert judged_statements(call["messages"]) == [PARAPHRASE, UNSUPPORTED, STATEMENTS[4]["statement"]]
    assert TEXT in call["messages"][-1]["content"] and call["stage"] == "memory"


def test_a_supported_paraphrase_is_kept_and_marked_verified(tmp_path: Path) -> None:
    records, _ = run(context(tmp_path, fixed_judge(VERDICTS)))
    assert [r.statement for r in records] == [PARAPHRASE, STATEMENTS[4]["statement"]]
    assert all(r.verified_by == "judge" for r in records)
    assert records[0].entity == "Kestrel Bay Bridge" and records[0].model == "writer"


def test_incomplete_and_unjudged_statements_are_not_kept(tmp_path: Path) -> None:
    verdicts = {PARAPHRASE: ("incomplete", "reads like a caption")}  # the others get no verdict
    records, failures = run(context(tmp_path, fixed_judge(verdicts)))
    assert records == []
    assert [f.message for f in failures["incomplete_statement"]] == [
        "the judge found it not a self-contained claim: reads like a caption"
    ]
    assert len(failures["unverified_statement"]) == 2


def test_a_failed_support_call_leaves_its_statements_unverified_not_kept(tmp_path: Path) -> None:
    def judge(messages: list[dict[str, Any]], schema: Any) -> Any:
        return LLMTimeout("no reply within 120 s")

    records, failures = run(context(tmp_path, judge))
    assert records == []
    assert len(failures["unverified_statement"]) == 3
    assert all("timeout" in f.message for f in failures["unverified_statement"])


def test_statements_are_judged_in_batches(tmp_path: Path) -> None:
    many = [
        {"entity": "Kestrel Bay Bridge", "statement": f"The Kestrel Bay Bridge opened in 1998 ({i}).", "time": None}
        for i in range(1, 5)
    ]
    text = TEXT + " " + " ".join(f"({i})" for i in range(1, 5))
    doc = DOC.model_copy(update={"text": text, "n_chars": len(text)})
    supported = {s["statement"]: ("supported", "stated") for s in many}
    ctx = context(tmp_path, fixed_judge(supported), statements=many, support_batch_size=3)
    ctx.read_stage = lambda stage: {"documents": [doc]}[stage]
    records, _ = run(ctx)
    assert len(records) == 4
    assert [len(judged_statements(c["messages"])) for c in ctx.judge_llm.calls] == [3, 1]


def test_support_check_off_keeps_statements_unverified(tmp_path: Path) -> None:
    def judge(messages: list[dict[str, Any]], schema: Any) -> Any:
        raise AssertionError("the judge must not be called")

    records, failures = run(context(tmp_path, judge, support_check=False))
    assert len(records) == 3 and all(r.verified_by is None for r in records)
    assert "unsupported_statement" not in failures


def test_the_writer_sees_no_judge_prompt_and_the_judge_no_writer_prompt(tmp_path: Path) -> None:
    ctx = context(tmp_path, fixed_judge(VERDICTS))
    run(ctx)
    assert [c["schema"] for c in ctx.llm.calls] == [StatementBatch]
    assert {c["schema"] for c in ctx.judge_llm.calls} == {SupportVerdicts}


def test_the_judge_may_reply_with_bare_labels_in_order(tmp_path: Path) -> None:
    def judge(messages: list[dict[str, Any]], schema: Any) -> Any:
        return '{"verdicts": ["supported", "unsupported", "supported"]}'

    records, failures = run(context(tmp_path, judge))
    assert [r.statement for r in records] == [PARAPHRASE, STATEMENTS[4]["statement"]]
    assert [f.message for f in failures["unsupported_statement"]] == [
        "the judge found it not supported by its source chunk"
    ]


def test_verdicts_before_a_token_cap_cut_still_count(tmp_path: Path) -> None:
    def judge(messages: list[dict[str, Any]], schema: Any) -> Any:
        return LLMTruncated.at_cap(12, raw_output='{"verdicts": ["supported", "unsup')

    records, failures = run(context(tmp_path, judge))
    assert [r.statement for r in records] == [PARAPHRASE]
    assert len(failures["unverified_statement"]) == 2
