"""A fake-LLM responder that carries a whole run through every stage.

``testing.fake_llm_server:schema_responder`` answers with random schema-valid JSON: enough
for planning, reasoning, judges and decisions, but memory's grounding checks reject random
statements, so nothing downstream of memory would get records. This responder answers the
two grounded steps from the prompt itself (the way a faithful model would) and leaves the
rest to the schema responder:

* memory (``StatementBatch``): each sentence of the chunk that names a capitalised entity
  becomes a statement about it, word for word; the support check (``SupportVerdicts``)
  finds every one of them supported;
* questions (``QuestionDraft``): a question about the first cited fact whose answer is a
  number or the last words of that fact, citing S1 (and S2 for multi-statement styles);
* planning (``PlanDraft``): a well-formed ``search`` for the question, so the judge's verdict
  (random, from the schema responder) decides its reason rather than the tool check;
* rollouts (plain text, no schema): a ``search`` tool call first, an ``<answer>`` once a
  tool response is in the context.

Name it in ``FakeServerConfig(responder="testing.pipeline_responder:grounded_responder")``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from testing.fake_llm_server import schema_responder

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
# A run of capitalised words (not at the sentence start, which is capitalised anyway).
_ENTITY_RE = re.compile(r"(?<!^)(?<![.!?]\s)\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,3})")
_NUMBER_RE = re.compile(r"\d[\d,.]*\d|\d")
_FACT_RE = re.compile(r"^S\d+: (.*?)(?: \[[^\]]*\])?$", re.M)
_STYLE_RE = re.compile(r"Write one ([a-z-]+) question")
_GENERIC = frozenset("The This That These Those It Its In On At For And But Of A An As By".split())


def _schema_name(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    return (fmt.get("json_schema") or {}).get("name")


def _last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def memory_statements(body: dict[str, Any]) -> dict[str, Any]:
    """Statements copied from the chunk's sentences, each about a name it contains."""
    prompt = _last_user(body)
    text = prompt.split(":\n", 1)[1] if ":\n" in prompt else prompt
    statements = []
    for sentence in _SENTENCE_RE.split(" ".join(text.split())):
        names = [n for n in _ENTITY_RE.findall(sentence) if n.split()[0] not in _GENERIC]
        if names and 8 <= len(sentence.split()) <= 60:
            statements.append({"entity": names[0], "statement": sentence.strip(), "time": None})
        if len(statements) == 6:
            break
    return {"statements": statements}


def support_verdicts(body: dict[str, Any]) -> dict[str, Any]:
    """Every statement of the batch supported (they are copied from the source)."""
    statements = _last_user(body).rsplit("Statements:", 1)[-1]
    numbers = re.findall(r"^(\d+)\. ", statements, re.M)
    return {"verdicts": [{"n": int(n), "verdict": "supported", "reason": "stated in the text"} for n in numbers]}


def question_draft(body: dict[str, Any]) -> dict[str, Any]:
    """One question per prompt, answered by the cited facts."""
    prompt = _last_user(body)
    facts = _FACT_RE.findall(prompt)
    style_match = _STYLE_RE.search(prompt)
    style = style_match.group(1) if style_match else "factual"
    if not facts:
        return schema_responder(body)
    first = facts[0]
    numbers = _NUMBER_RE.findall(first)
    words = first.rstrip(".").split()
    answer = numbers[0] if numbers else " ".join(words[-2:])
    subject = " ".join(w for w in words[:4] if not _NUMBER_RE.search(w))
    cited = ["S1", "S2"] if len(facts) >= 2 else ["S1"]
    return {
        "question": f"According to the {style.replace('-', ' ')} record, what is reported about {subject}?",
        "answer": answer,
        "statements": cited,
    }


def plan_draft(body: dict[str, Any]) -> dict[str, Any]:
    """A plan whose first action is a well-formed search for the question (the judge decides the rest)."""
    question = _last_user(body).strip().splitlines()[-1][:160] or "the question"
    return {
        "analysis": "The question needs facts about the named entities; search for them first.",
        "tool": "search",
        "arguments": {"query": [question]},
    }


def agent_turn(body: dict[str, Any]) -> str:
    """A ReAct turn: search for the question first, answer once a tool response came back."""
    messages = body.get("messages") or []
    seen_response = any("<tool_response>" in str(m.get("content", "")) for m in messages[2:])
    if seen_response:
        return "<think>\nThe search results answer it.\n</think>\n<answer>42</answer>"
    question = _last_user(body).strip().splitlines()[-1][:120] or "the question"
    call = json.dumps({"name": "search", "arguments": {"query": [question]}})
    return f"<think>\nI should search first.\n</think>\n<tool_call>\n{call}\n</tool_call>"


def grounded_responder(body: dict[str, Any]) -> Any:
    """See the module docstring."""
    name = _schema_name(body)
    if name == "StatementBatch":
        return memory_statements(body)
    if name == "SupportVerdicts":
        return support_verdicts(body)
    if name == "QuestionDraft":
        return question_draft(body)
    if name == "PlanDraft":
        return plan_draft(body)
    if name is None and not body.get("response_format"):
        return agent_turn(body)
    return schema_responder(body)
