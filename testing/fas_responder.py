"""A fake model for the first-order synthesis stages: the replies a decent model gives, from the prompt alone.

``schema_responder`` answers every structured call with random words, so a pipeline on it
rejects everything and measures nothing. This responder reads each stage's prompt and
writes what a competent model would: statements copied from the chunk, a support verdict
from word overlap, template questions over the facts (a blank to fill, a difference to
compute, a page to reach, a report, an either/or choice), plans that search, step-2
answers worked out from the facts, judge verdicts from normalized matching, and a ReAct
agent that searches, visits the first hit and answers from the page.

It also makes the mistakes models make, at fixed rates chosen by a hash of the input
(deterministic: a resumed run sees the same replies): bylines and invented additions in
memory, answers leaked into questions, missing or wrong calculations, wrong final answers,
a few questions it can answer closed-book because it "read" the page earlier. The rates
are this fake's, not a measurement of any model: figures from a run on it show that each
filter catches what it should and lets the rest through.

Use ``FakeServerConfig(responder="testing.fas_responder:fas_responder")`` for a fake
endpoint, or ``ScriptedLLM(scripted_fas)`` in process.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from typing import Any

from synth.answers import content_coverage, match_answers, mentions_answer, ungrounded_numbers, values_in
from synth.stages.memory import leading_subject
from synth.statement_checks import has_predicate

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“])")
_YEAR_RE = re.compile(r"\b(1[89]\d{2}|20\d{2})\b")
_URL_RE = re.compile(r"https?://[^\s\])>\"']+|(?:file|search|kg):[^\s\])>\"';]+")
BLANK = "____"

# Sentences the fake has "read" (memory prompts): it can fill some blanks closed-book.
_KNOWN: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def _h(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:8], 16)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _fmt(value: float) -> str:
    if abs(value - round(value)) < 1e-9:
        return f"{int(round(value)):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------
# Facts: blanks and values
# ---------------------------------------------------------------------------


def _blank_span(sentence: str) -> str | None:
    """What a question about ``sentence`` asks for: its first non-year figure, else its first
    year, else a capitalized name after the sentence's start."""
    figures = [raw for raw, v in values_in(sentence) if not (_YEAR_RE.fullmatch(raw.strip()) and 1800 <= v <= 2100)]
    if figures:
        return figures[0]
    year = _YEAR_RE.search(sentence)
    if year:
        return year.group(0)
    names = re.findall(r"(?<=\s)([A-Z][a-z]+(?:\s+[A-Z][a-z]+)+)", sentence)
    return names[0] if names else None


def _blanked(sentence: str, span: str) -> str:
    return sentence.replace(span, BLANK, 1)


def _main_value(sentence: str) -> tuple[str, float] | None:
    figures = [(raw, v) for raw, v in values_in(sentence) if not (_YEAR_RE.fullmatch(raw.strip()) and 1800 <= v <= 2100)]
    return figures[0] if figures else None


def _fill(blanked: str, facts: list[str]) -> str | None:
    """The span that fills ``blanked`` from the fact it was made from."""
    if BLANK not in blanked:
        return None
    before, after = blanked.split(BLANK, 1)
    pattern = re.escape(before.strip()[-60:]) + r"\s*(.+?)\s*" + re.escape(after.strip()[:60])
    for fact in facts:
        m = re.search(pattern, fact)
        if m:
            return m.group(1)
    return None


def _quoted(question: str) -> list[str]:
    return re.findall(r"'([^']*" + re.escape(BLANK) + r"[^']*)'", question)


# ---------------------------------------------------------------------------
# memory: statements, support verdicts
# ---------------------------------------------------------------------------


_NAME_RE = re.compile(r"\b[A-Z][\w'’.-]*(?:\s+(?:of|the|de|for)?\s*[A-Z][\w'’.-]*)+")


def _name_in(sentence: str) -> str | None:
    """The sentence's first multi-word capitalized name (after a leading article), else its subject."""
    for m in _NAME_RE.finditer(sentence):
        name = re.sub(r"^(?:The|A|An|In|On|At|By|During)\s+", "", m.group(0)).strip()
        if " " in name:
            return name
    return leading_subject(sentence)


def _statements(prompt: str) -> dict[str, Any]:
    n = int(m.group(1)) if (m := re.search(r"List up to (\d+) facts", prompt)) else 5
    body = prompt.rsplit("\n\nText", 1)[-1]
    header, _, chunk = body.partition(":\n")
    date = m.group(1) if (m := re.search(r"\(([^)]*\d{4}[^)]*)\)\s*$", header)) else None
    out: list[dict[str, Any]] = []
    for sentence in _SENTENCE_RE.split(_squash(chunk)):
        sentence = sentence.strip(" \"“”")
        words = sentence.split()
        if not (6 <= len(words) <= 60) or not has_predicate(sentence):
            continue
        with _KNOWN_LOCK:
            _KNOWN.add(sentence)
        entity = _name_in(sentence)
        if entity is None:
            continue
        year = _YEAR_RE.search(sentence)
        h = _h("statement", sentence)
        if h % 9 == 0:  # a byline-like fragment, no claim
            out.append({"entity": entity, "statement": f"{entity} ({date or (year.group(0) if year else '2024')})", "time": None})
        elif h % 11 == 1:  # fluent, and not in the text
            out.append(
                {"entity": entity, "statement": sentence.rstrip(".") + ", the largest figure ever recorded in Scotland.", "time": None}
            )
        elif h % 13 == 2 and words[0].istitle() and words[0].lower() in chunk:
            out.append({"entity": words[0], "statement": sentence, "time": None})
        else:
            out.append({"entity": entity, "statement": sentence, "time": year.group(0) if year else None})
        if len(out) >= n:
            break
    return {"statements": out}


def _support(prompt: str) -> dict[str, Any]:
    source = prompt.split("Source text:\n", 1)[-1].split("\n\nStatements:\n", 1)[0]
    listing = prompt.rsplit("\n\nStatements:\n", 1)[-1]
    verdicts = []
    for line in listing.splitlines():
        m = re.match(r"(\d+)\.\s+(.*)", line)
        if not m:
            continue
        statement = m.group(2)
        names = [w for w in re.findall(r"\b[A-Z][a-z]{3,}\b", statement) if w not in source]
        if not has_predicate(statement):
            verdict = "incomplete"
        elif ungrounded_numbers(statement, source) or names or content_coverage(statement, source) < 0.85:
            verdict = "unsupported"
        else:
            verdict = "supported"
        verdicts.append(verdict)
    return {"verdicts": verdicts}


# ---------------------------------------------------------------------------
# questions
# ---------------------------------------------------------------------------


def _facts(prompt: str) -> list[tuple[str, str, str | None]]:
    """(handle, text, url) of the last facts block."""
    block = prompt.rsplit("Facts:\n", 1)[-1].split("\n\n", 1)[0]
    out = []
    for line in block.splitlines():
        m = re.match(r"(S\d+):\s+(.*?)(?:\s+\[([^\]]+)\])?$", line)
        if m:
            text = re.sub(r"\s*\(time: [^)]*\)$", "", m.group(2))
            out.append((m.group(1), text, m.group(3)))
    return out


def _question(prompt: str) -> dict[str, Any]:
    style = m.group(1).replace("-", "_") if (m := re.search(r"Write one ([a-z-]+) question", prompt)) else "factual"
    facts = _facts(prompt)
    h = _h("question", style, facts)
    blankable = [(s, t, u, span) for s, t, u in facts if (span := _blank_span(t))]
    valued = [(s, t, u, v) for s, t, u in facts if (v := _main_value(t))]
    reply: dict[str, Any] | None = None
    if style == "numerical" and len(valued) >= 2:
        (sa, ta, _, (ra, va)), (sb, tb, _, (rb, vb)) = valued[0], valued[1]
        diff = abs(va - vb)
        reply = {
            "question": f"What is the difference between the figure in '{_blanked(ta, ra)}' and the one in "
            f"'{_blanked(tb, rb)}'?",
            "answer": _fmt(diff * (1.1 if h % 7 == 0 else 1.0)),
            "statements": [sa, sb],
            "calculation": None if h % 11 == 0 else f"abs({va!r} - {vb!r})",
        }
    elif style == "navigation":
        pages = [(s, t, u, span) for s, t, u, span in blankable if u]
        starts = [f for f in facts if f[2]]
        for s, t, u, span in pages:
            start = next((f for f in starts if f[2] != u), None)
            if start:
                reply = {
                    "question": f"The page {start[2]} is a starting point. Which page do you reach from there that "
                    f"states: '{_blanked(t, span)}'?",
                    "answer": u,
                    "statements": [start[0], s],
                }
                break
    elif style == "report" and len(facts) >= 3:
        chosen = facts[:4]
        reply = {
            "question": "Write a short report covering what is known about " + ", ".join(
                dict.fromkeys(leading_subject(t) or "the subject" for _, t, _ in chosen)
            ) + ".",
            "answer": " ".join(t for _, t, _ in chosen)[:2500],
            "statements": [s for s, _, _ in chosen],
        }
    elif style == "choice" and len(valued) >= 2:
        (sa, ta, _, (ra, va)), (sb, tb, _, (rb, vb)) = valued[0], valued[1]
        if va != vb:
            reply = {
                "question": f"Which figure is larger, {ra} or {rb}, going by the facts '{_blanked(ta, ra)}' and "
                f"'{_blanked(tb, rb)}'?",
                "answer": ra if va > vb else rb,
                "statements": [sa, sb],
            }
    elif style == "synthesis" and len(facts) >= 2:
        reply = {
            "question": "Summarize what the facts state about " + (leading_subject(facts[0][1]) or "the subject") + ".",
            "answer": " ".join(t for _, t, _ in facts[:2])[:400],
            "statements": [facts[0][0], facts[1][0]],
        }
    elif blankable:
        s, t, _, span = blankable[0]
        cited = [s] if style == "factual" else [facts[0][0], s] if facts[0][0] != s else [f[0] for f in facts[:2]]
        reply = {"question": f"Fill in the blank: '{_blanked(t, span)}'", "answer": span, "statements": cited}
    if reply is None:
        return {"question": "What do the facts say?", "answer": "nothing", "statements": []}
    if h % 10 == 3 and style not in ("choice", "navigation"):
        reply["question"] += f" (Hint: {reply['answer']})"
    elif h % 12 == 5:
        reply["statements"] = []
    return reply


def _closed_book(prompt: str) -> dict[str, Any]:
    question = prompt.split("Question:", 1)[-1].strip()
    blanks = _quoted(question) or ([question.split(":", 1)[-1].strip(" '")] if BLANK in question else [])
    with _KNOWN_LOCK:
        known = list(_KNOWN)
    if len(blanks) == 1 and _h("closed", question) % 3 == 0:
        filled = _fill(blanks[0], known)
        if filled:
            return {"answer": filled}
    return {"answer": "unknown"}


# ---------------------------------------------------------------------------
# planning, reasoning, judges
# ---------------------------------------------------------------------------


def _plan(prompt: str) -> dict[str, Any]:
    question = prompt.rsplit("Question:", 1)[-1].strip()
    words = [w for w in re.findall(r"[\w'-]+", question.replace(BLANK, " ")) if len(w) > 2][:12]
    h = _h("plan", question)
    if h % 8 == 0:
        return {"analysis": "This looks simple enough to answer directly.", "tool": "answer", "arguments": {"answer": "unknown"}}
    return {
        "analysis": "The question asks for one figure stated on a page; I do not know it, so I search for the "
        "statement's key words first, then read the best page.",
        "tool": "search",
        "arguments": {"query": [" ".join(words)]},
    }


def _plan_verdict(prompt: str) -> dict[str, Any]:
    action = prompt.rsplit("First action:", 1)[-1]
    if "answer directly" in action:
        return {"reason": "content_inconsistency", "rationale": "It answers without the facts it needs."}
    if _h("verdict", prompt) % 9 == 0:
        return {"reason": "logic_discontinuity", "rationale": "The query does not follow from the analysis."}
    return {"reason": "accepted", "rationale": "The plan searches for the fact the question needs."}


def _solve(question: str, facts: list[str], urls: dict[str, str]) -> str | None:
    """Work a question of ``_question``'s templates out from facts (text -> url)."""
    quoted = _quoted(question)
    if question.startswith("What is the difference") and len(quoted) == 2:
        values = []
        for q in quoted:
            span = _fill(q, facts)
            parsed = values_in(span) if span else []
            if not parsed:
                return None
            values.append(parsed[0][1])
        return _fmt(abs(values[0] - values[1]))
    if question.startswith("Which figure is larger") and len(quoted) == 2:
        spans = [_fill(q, facts) for q in quoted]
        parsed = [values_in(s)[0] if s and values_in(s) else None for s in spans]
        if None in parsed:
            return None
        return spans[0] if parsed[0][1] > parsed[1][1] else spans[1]
    if "Which page do you reach" in question and quoted:
        blank = quoted[-1]
        before, after = blank.split(BLANK, 1)
        for fact in facts:
            if before.strip()[-40:] in fact and after.strip()[:40] in fact:
                return urls.get(fact)
        return None
    if question.startswith("Write a short report") or question.startswith("Summarize"):
        n = 4 if question.startswith("Write") else 2
        return " ".join(facts[:n])
    if quoted:
        return _fill(quoted[0], facts)
    return None


def _knowledge(prompt: str) -> tuple[list[str], dict[str, str]]:
    block = prompt.rsplit("Facts:\n", 1)[-1].split("\nQuestion:", 1)[0]
    facts, urls = [], {}
    for line in block.splitlines():
        line = line.removeprefix("- ").strip()
        m = re.match(r"(.*?)\s*\(((?:time: [^;)]*)?(?:; )?(?:source: ([^)]*))?)\)$", line)
        text = m.group(1) if m else line
        facts.append(text)
        if m and m.group(3):
            urls[text] = m.group(3).strip()
    return facts, urls


def _step1(prompt: str) -> dict[str, Any]:
    return {
        "reasoning": "Sub-questions: (1) Which statement is meant? (2) What figure or page does it give? I do not "
        "remember the exact value, so I can only guess. So the answer is unknown.",
        "answer": "unknown",
    }


def _step2(prompt: str) -> dict[str, Any]:
    question = prompt.rsplit("Question:", 1)[-1].split("\nEarlier attempt:", 1)[0].strip()
    facts, urls = _knowledge(prompt)
    h = _h("step2", question)
    answer = _solve(question, facts, urls)
    if answer is None or h % 8 == 0:
        return {
            "reasoning": "The earlier attempt did not know the value. The facts do not settle it clearly either. "
            "So the answer is unknown.",
            "final_answer": "unknown",
        }
    cited = " ".join(f"The facts say: {f}" for f in facts[:4])
    stated = "a figure I cannot pin down" if h % 15 == 1 else answer
    return {
        "reasoning": f"(1) The earlier attempt guessed without evidence. {cited} (2) Checking the question against "
        f"these facts gives the value directly. So the answer is {stated}.",
        "final_answer": answer,
    }


def _answer_verdict(prompt: str) -> dict[str, Any]:
    gold = prompt.rsplit("Gold answer:", 1)[-1].split("\nAnswer to grade:", 1)[0].strip()
    predicted = prompt.rsplit("Answer to grade:", 1)[-1].strip()
    ok = (
        match_answers(predicted, gold).verdict == "match"
        or mentions_answer(predicted, gold)
        or (content_coverage(gold, predicted) >= 0.6 and not ungrounded_numbers(gold, predicted))
    )
    return {"correct": ok, "rationale": "same answer" if ok else "a different answer"}


def _rubric(prompt: str) -> dict[str, Any]:
    last = prompt.rsplit("Rubric:\n", 1)[-1]
    points_block, _, answer = last.partition("\nAnswer to grade:")
    points = [re.sub(r"^\d+\.\s*", "", p) for p in points_block.splitlines() if p.strip()]
    return {"covered": [content_coverage(p, answer) >= 0.6 for p in points], "contradiction": False}


# ---------------------------------------------------------------------------
# the ReAct agent (rollouts)
# ---------------------------------------------------------------------------


def _agent(messages: list[dict[str, Any]]) -> str:
    turns = [m for m in messages if m.get("role") == "user"]
    start = max(i for i, m in enumerate(turns) if "<tool_response>" not in str(m.get("content")))
    question = str(turns[start].get("content"))
    responses = [str(m.get("content")) for m in turns[start + 1 :]]
    if not responses:
        query = " ".join(w for w in re.findall(r"[\w'-]+", question.replace(BLANK, " ")) if len(w) > 2)[:200]
        return (
            "<think>I need the statement this question is about; I search for its key words.</think>\n"
            f'<tool_call>\n{{"name": "search", "arguments": {{"query": ["{query}"]}}}}\n</tool_call>'
        )
    last = responses[-1]
    urls = [u for u in _URL_RE.findall(last) if u.startswith("http")]
    if len(responses) == 1 and urls:
        return (
            "<think>The first result looks relevant; I read it.</think>\n"
            f'<tool_call>\n{{"name": "visit", "arguments": {{"url": "{urls[0]}", "goal": "the statement in the '
            'question"}}\n</tool_call>'
        )
    text = " ".join(responses)
    sentences = [s.strip() for s in _SENTENCE_RE.split(_squash(re.sub(r"</?tool_response>", " ", text)))]
    answer = _solve(question.removeprefix("User:").strip(), sentences, {}) or "unknown"
    return f"<think>The page states it.</think>\n<answer>{answer}</answer>"


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

_BY_SCHEMA = {
    "StatementBatch": _statements,
    "SupportVerdicts": _support,
    "QuestionDraft": _question,
    "ClosedBookAnswer": _closed_book,
    "PlanDraft": _plan,
    "PlanVerdict": _plan_verdict,
    "Step1Draft": _step1,
    "Step2Draft": _step2,
    "AnswerVerdict": _answer_verdict,
    "RubricVerdict": _rubric,
}


def fas_reply(messages: list[dict[str, Any]], schema_name: str | None) -> Any:
    """The reply for a chat request, or None when this fake has no reply for it."""
    handler = _BY_SCHEMA.get(schema_name or "")
    if handler is not None:
        return handler(str(messages[-1].get("content", "")))
    system = str(messages[0].get("content", "")) if messages else ""
    if schema_name is None and "research assistant" in system:
        return _agent(messages)
    return None


def fas_responder(body: dict[str, Any]) -> Any:
    """Fake-server entry point (``testing.fas_responder:fas_responder``)."""
    from testing.fake_llm_server import schema_responder

    fmt = body.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name")
    reply = fas_reply(body.get("messages") or [], name)
    return schema_responder(body) if reply is None else reply


def scripted_fas(messages: list[dict[str, Any]], schema: Any) -> Any:
    """``ScriptedLLM`` entry point: the same replies in process."""
    reply = fas_reply(messages, schema.__name__ if schema is not None else None)
    if reply is None:
        raise AssertionError(f"fas_responder has no reply for {schema!r}")
    return reply
