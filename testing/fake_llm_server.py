"""A fake OpenAI-compatible chat-completions server, for tests and benchmarks.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` with a fixed latency, can
inject faults (429 with Retry-After, 500, replies slower than any client timeout, truncated
JSON bodies, bodies cut short mid-stream, dropped connections, unparseable content), and
counts what it saw server-side (``GET /_stats``: requests received, requests in flight and
their peak, faults injected by kind; ``POST /_reset`` zeroes them).

Run it in a separate process (the default: a benchmark's client and server then do not share
a GIL) or in a thread of the calling process::

    with FakeOpenAIServer(FakeServerConfig(latency_s=0.2)) as server:
        client = LLMClient(LLMConfig(base_url=server.base_url, model="fake"))
        ...
        assert server.stats().peak_in_flight <= 64

Reply content comes from a *responder*, named as an importable ``"module:function"``
string so that it works across processes (the child gets the parent's ``sys.path``, so a
function in a test module works too). It receives the request body (a dict) and
returns the reply text (a ``str``) or a JSON-able object (sent as its JSON text). The default,
``schema_responder``, returns a valid instance of the request's ``response_format``
JSON schema, deterministic for the same messages, or a short deterministic text; asked for a
length ("Each thought is between 40 and 120 words long.") it follows it, drawing its words on
the prompt and the key terms it lists (``ContextHints``). ``agent_responder`` adds a research
agent for ReAct turns (search, visit, answer when told to) and ``research_responder`` puts it
together with ``testing.pipeline_responder``'s grounded memory and questions: a whole
long-horizon run.

Faults are chosen per request, first match wins:

1. a ``[[fault:KIND]]`` marker anywhere in the messages: that request always fails so;
2. ``faults.schedule[i]`` for the i-th request the server receives (0-based);
3. ``faults.per_request[k]`` for the k-th attempt of each distinct request (same messages):
   e.g. ``["rate_limit", "server_error"]`` fails every request's first two attempts;
4. ``faults.rates``: an independent probability per kind (seeded).

It can also play a misconfigured or failing provider: refuse a bad key (``api_key``: 401
on every route), refuse request fields the way OpenAI's reasoning models refuse
``max_tokens`` (``reject_params``: 400 naming the field), die mid-run
(``die_after_requests``: the process exits when that many chat requests have been
received), cut replies at the request's token cap with ``finish_reason: length``
(``enforce_max_tokens``), and answer like a thinking model (``reasoning``). With
``request_log`` it appends one JSON line per chat request it answered 200 (the messages'
digest), flushed at once, so what a server that died was paid for is still known.

Run as a module for a standalone server: ``python -m testing.fake_llm_server --port 8099``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["rate_limit", "server_error", "slow", "truncated", "cut", "drop", "garbage"]
"""``rate_limit``: 429 with Retry-After. ``server_error``: 500. ``slow``: answer after
``slow_s`` (past the client's timeout). ``truncated``: a 200 whose JSON body is cut in half
(valid HTTP framing). ``cut``: Content-Length promises more than is sent, then the connection
closes. ``drop``: the connection closes without any response. ``garbage``: a well-formed
completion whose content is not JSON (tests the invalid-output path)."""

FAULT_KINDS: tuple[str, ...] = ("rate_limit", "server_error", "slow", "truncated", "cut", "drop", "garbage")
DEFAULT_RESPONDER = "testing.fake_llm_server:schema_responder"


class FaultPlan(BaseModel):
    """Which requests fail, and how; see the module docstring for the precedence."""

    model_config = ConfigDict(extra="forbid")
    rates: dict[FaultKind, float] = Field(
        default_factory=dict, description="probability per request, per kind"
    )
    schedule: list[FaultKind | None] = Field(
        default_factory=list, description="fault of the i-th request received"
    )
    per_request: list[FaultKind | None] = Field(
        default_factory=list, description="fault of the k-th attempt of each distinct request (by messages)"
    )


class FakeServerConfig(BaseModel):
    """How the fake server behaves."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("fake-model", description="the one model id /v1/models lists")
    latency_s: float = Field(0.0, ge=0, description="fixed delay before every reply")
    responder: str = Field(DEFAULT_RESPONDER, description="'module:function' producing reply content")
    faults: FaultPlan = Field(default_factory=FaultPlan, description="fault injection")
    retry_after_s: float | None = Field(
        1.0, ge=0, description="Retry-After header of 429 replies; null = none"
    )
    slow_s: float = Field(30.0, ge=0, description="delay of 'slow' replies")
    seed: int = Field(0, description="seed of the fault dice")
    api_key: str | None = Field(None, description="when set, any other bearer token gets 401 (every route)")
    reject_params: list[str] = Field(
        default_factory=list, description="request fields answered with a 400 naming them (e.g. max_tokens)"
    )
    die_after_requests: int | None = Field(
        None, ge=0, description="process mode: exit when this many chat requests have been received"
    )
    enforce_max_tokens: bool = Field(
        False, description="cut replies longer than the request's cap (4 chars a token), finish_reason: length"
    )
    reasoning: Literal["none", "think_prefix", "reasoning_content"] = Field(
        "none", description="answer like a thinking model: a <think> prefix, or a reasoning_content field"
    )
    request_log: str | None = Field(None, description="append a JSON line per chat request answered 200")


class ServerStats(BaseModel):
    """Server-side counters (``GET /_stats``)."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(0, description="chat-completion requests received")
    completed: int = Field(0, description="requests answered 200 with a full body")
    in_flight: int = Field(0, description="requests received and not yet answered or abandoned")
    peak_in_flight: int = Field(0, description="highest in_flight seen")
    faults: dict[str, int] = Field(default_factory=dict, description="faults injected, by kind")
    distinct_requests: int = Field(0, description="distinct message lists seen")
    models_requests: int = Field(0, description="GET /v1/models requests received")
    refused: dict[str, int] = Field(default_factory=dict, description="requests refused, by status (401, 400)")


# --------------------------------------------------------------------------------------
# Responders
# --------------------------------------------------------------------------------------

Responder = Callable[[dict[str, Any]], Any]

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def messages_digest(messages: Any) -> str:
    """A stable hex digest of a message list (the responder seed and the per-request key)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def schema_responder(body: dict[str, Any]) -> Any:
    """A valid instance of the request's json_schema, or a short text; deterministic per messages.

    When the last user message asks a field for a length ("Each thought is between 40 and 120
    words long."), the responder follows it as an instruction-following model would: every
    such field it writes has a word count in that range, in an agent's register drawn on that
    message (``ContextHints``); its other strings are made of the message's words and its urls
    are urls found there.
    """
    rng = random.Random(messages_digest(body.get("messages")))
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return SchemaInstanceGenerator(schema, rng, hints=instruction_hints(body.get("messages"))).generate()
    if fmt.get("type") == "json_object":
        return {"reply": _text(rng, 3, 8)}
    return "Reply " + _text(rng, 4, 10) + "."


def echo_responder(body: dict[str, Any]) -> str:
    """The last message's content, unchanged (handy for transport tests)."""
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


# "Each thought is between 40 and 120 words long." — a length the request asks of a field.
_WORD_RANGE_RE = re.compile(r"(thought|answer) is between (\d+) and (\d+) words")
_CONTEXT_URL_RE = re.compile(r"https?://[^\s)\]>\"'<]+")
_CONTEXT_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9'-]{2,}")
_MARKUP_RE = re.compile(r"<[^>]{1,40}>|\"\w+\"\s*:")
# "Key terms of the tool responses so far: ricin, Dorpat, 1888" — terms the request asks to ground in.
_TERMS_RE = re.compile(r"^\s*key terms\b[^:\n]*:\s*(.*)$", re.I | re.S)


# A research agent's register, measured on the WebDancer sample thoughts. The chosen-option probe
# (synth.quality.has) sees which *distinct* words an option holds, so the register is set in them
# (one right only in running words let the probe find the original, issue 15):
# * about 37% of the words are function words;
# * t content words hold about 3.9 * t**0.63 distinct ones (Heaps' law; each thought's rate varies
#   by about 10%); the rest are repeats, as an agent's topic words recur;
# * a fresh word comes from the question, the key terms of the tool responses that the prompt
#   lists, the steps it shows, or is new to the context (everyday agent words, or names and terms
#   a model brings in itself). With the shares below (each thought leans on each source to its own
#   degree, about 30%) the distinct words come out as the sample's: about 12% the question's and,
#   once there are responses, 13% their key terms and 20% their other words.
_FUNCTION_WORDS = "the and that for but with from this was are which about then not there its".split()
_STOP = frozenset(
    _FUNCTION_WORDS
    + "what who whom whose when where how why were has have had all any can into will would should could "
    "their than they them been".split()
)
_NEW_WORDS = (
    "search results first maybe need like should might check confirm sources mention visit start page "
    "information key query specific point looking sure find verify details relevant official"
).split() + _WORDS
_FUNCTION_SHARE = 0.37
_HEAPS_K, _HEAPS_BETA, _HEAPS_SPREAD = 3.9, 0.63, 0.1
_QUESTION_SHARE, _TERMS_SHARE, _CONTEXT_SHARE, _SHARE_SPREAD = 0.2, 0.2, 0.25, 0.3


def _heaps(tokens: int, k: float) -> float:
    """Distinct words expected among ``tokens`` content words."""
    return min(float(tokens), k * tokens**_HEAPS_BETA)


def _spread(rng: random.Random, value: float, sigma: float) -> float:
    """``value`` times a log-normal factor of mean 1."""
    return value * math.exp(rng.gauss(0.0, sigma) - sigma**2 / 2)


class ContextHints(BaseModel):
    """What an instruction-following model would draw on: the requested thought length, and the
    words, urls and listed key terms of the message it answers (the instruction itself left out)."""

    model_config = ConfigDict(extra="forbid")
    field_words: dict[str, tuple[int, int]] = Field(description="field name -> (low, high) words asked of it")
    question_words: list[str] = Field(description="words of the message's first paragraph (its question)")
    words: list[str] = Field(description="words of the rest of the message")
    urls: list[str]
    terms: list[str] = Field(
        default_factory=list, description='key terms the message lists to ground in ("Key terms of …: a, b")'
    )

    def text(self, rng: random.Random, field: str) -> str:
        """Text of the length asked of ``field`` in the register of ``_FUNCTION_SHARE`` and friends."""
        k = _spread(rng, _HEAPS_K, _HEAPS_SPREAD)
        shares = [_spread(rng, s, _SHARE_SPREAD) for s in (_QUESTION_SHARE, _TERMS_SHARE, _CONTEXT_SHARE)]
        out: list[str] = []
        written: list[str] = []  # content words, repeats included
        seen: set[str] = set()
        for _ in range(rng.randint(*self.field_words[field])):
            if rng.random() < _FUNCTION_SHARE:
                out.append(rng.choice(_FUNCTION_WORDS))
                continue
            t = len(written)
            # A fresh word as often as Heaps' law adds one, else a repeat in proportion to use.
            if rng.random() < _heaps(t + 1, k) - _heaps(t, k):
                word = self._fresh(rng, seen, shares)
            else:
                word = rng.choice(written)
            written.append(word)
            seen.add(word.casefold())
            out.append(word)
        return " ".join(out)

    def _fresh(self, rng: random.Random, seen: set[str], shares: list[float]) -> str:
        """A content word not written yet: from the question, the listed terms or the rest of the
        message by ``shares`` (an empty or used-up pool gives its turn away), else one of its own."""
        r = rng.random()
        for share, pool in zip(shares, (self.question_words, self.terms, self.words), strict=True):
            if r < share and pool:
                for _ in range(8):
                    word = rng.choice(pool)
                    if word.casefold() not in seen and word.casefold() not in _STOP:
                        return word
                break
            r -= share
        if rng.random() < 0.5 and (word := rng.choice(_NEW_WORDS)) not in seen:
            return word
        return _pseudo_word(rng)


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))


def instruction_hints(messages: Any) -> ContextHints | None:
    """Hints from the last user message when it asks a field for a word range; else None."""
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = str(users[-1].get("content", "")) if users else ""
    found = _WORD_RANGE_RE.findall(text)
    if not found:
        return None
    field_words = {name: (int(low), max(int(low), int(high))) for name, low, high in found}
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip() and not _WORD_RANGE_RE.search(p)]
    listed = [m.group(1) for p in paragraphs if (m := _TERMS_RE.match(p))]
    paragraphs = [p for p in paragraphs if not _TERMS_RE.match(p)]
    terms = [t.strip() for t in ",".join(listed).split(",") if t.strip() and t.strip() != "(none yet)"]
    urls = list(dict.fromkeys(u.rstrip(".,;:") for u in _CONTEXT_URL_RE.findall(text)))

    def words(parts: list[str]) -> list[str]:
        return _CONTEXT_WORD_RE.findall(_MARKUP_RE.sub(" ", _CONTEXT_URL_RE.sub(" ", "\n".join(parts))))

    rest = words(paragraphs[1:])
    return ContextHints(
        field_words=field_words,
        question_words=words(paragraphs[:1]),
        words=[w for w in rest if w not in {"Steps", "far", "none", "yet"}],
        urls=urls,
        terms=terms,
    )


def agent_responder(body: dict[str, Any]) -> Any:
    """``schema_responder``, plus a research agent for ReAct chat turns (no response_format and a
    system prompt listing ``<tools>``): it searches with words of the question and of the last
    tool response, visits urls found there, and answers when told to ("final answer now") or,
    rarely, on its own; deterministic per messages."""
    messages = body.get("messages") or []
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    if body.get("response_format") or "<tools>" not in system:
        return schema_responder(body)
    rng = random.Random(messages_digest(messages))
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    responses = [u for u in users if u.lstrip().startswith("<tool_response>")]
    first_response = next((i for i, u in enumerate(users) if u.lstrip().startswith("<tool_response>")), len(users))
    question = users[first_response - 1] if first_response else ""
    last = responses[-1] if responses else ""
    tools = re.findall(r"^- (\w+):", system.split("<tools>", 1)[1].split("</tools>", 1)[0], re.M)
    context = _CONTEXT_WORD_RE.findall(_MARKUP_RE.sub(" ", _CONTEXT_URL_RE.sub(" ", question + " " + last)))
    context = context or list(_WORDS)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(context) for _ in range(rng.randint(lo, hi)))

    # The agent thinks in the same register as an instruction-following model (ContextHints), on
    # the question and every response so far.
    hints = ContextHints(
        field_words={"thought": (15, 60)},
        question_words=_CONTEXT_WORD_RE.findall(question),
        words=_CONTEXT_WORD_RE.findall(_MARKUP_RE.sub(" ", _CONTEXT_URL_RE.sub(" ", "\n".join(responses)))),
        urls=[],
    )
    thought = hints.text(rng, "thought")
    forced = "final answer now" in users[-1] if users else False
    if forced or not ({"search", "visit"} & set(tools)) or rng.random() < 0.025:
        return f"<think>\n{thought}\n</think>\n<answer>{words(1, 4)}</answer>"
    urls = list(dict.fromkeys(u.rstrip(".,;:") for u in _CONTEXT_URL_RE.findall(last)))
    if "visit" in tools and urls and ("search" not in tools or rng.random() < 0.5):
        call = {"name": "visit", "arguments": {"url": rng.choice(urls), "goal": words(3, 8)}}
    else:
        call = {"name": "search", "arguments": {"query": [words(2, 6)]}}
    return f"<think>\n{thought}\n</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def research_responder(body: dict[str, Any]) -> Any:
    """A whole run with long research: ``agent_responder``'s agent on ReAct turns, and
    ``testing.pipeline_responder.grounded_responder`` (grounded memory and questions, schema
    instances for the rest) on every other request."""
    from testing.pipeline_responder import grounded_responder  # lazy: that module imports this one

    messages = body.get("messages") or []
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    if not body.get("response_format") and "<tools>" in system:
        return agent_responder(body)
    return grounded_responder(body)


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


class SchemaInstanceGenerator:
    """Builds a value that validates against a JSON schema (the subset pydantic emits).

    Handles ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``, ``enum``, ``const``, objects
    (all properties, ``additionalProperties``), arrays (``minItems``/``maxItems``, tuples via
    ``prefixItems``), strings (``minLength``/``maxLength``, formats date-time/date/time/duration/uri/email/uuid/ipv4),
    integers and numbers (inclusive and exclusive bounds, ``multipleOf``), booleans, null.
    ``pattern`` is not solved: such strings may not match.
    """

    def __init__(
        self, schema: dict[str, Any], rng: random.Random, max_depth: int = 8, hints: ContextHints | None = None
    ) -> None:
        self.root = schema
        self.rng = rng
        self.max_depth = max_depth
        self.hints = hints

    def generate(self) -> Any:
        return self.value(self.root, 0)

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def value(self, schema: dict[str, Any] | bool, depth: int) -> Any:
        if schema is True or schema == {}:
            return _text(self.rng, 1, 3)
        if not isinstance(schema, dict):
            raise ValueError("schema false cannot be satisfied")
        if "$ref" in schema:
            merged = {**self._resolve(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.value(merged, depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part["$ref"]) if "$ref" in part else part
                merged = _merge_schemas(merged, part)
            return self.value(merged, depth)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
                # Deep in recursion, prefer null (if allowed) so recursive models terminate.
                if depth >= self.max_depth and any(o.get("type") == "null" for o in schema[key]):
                    return None
                return self.value(self.rng.choice(options), depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or kind
            kind = self.rng.choice(kinds)
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        return getattr(self, f"_{kind}")(schema, depth)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if self.hints is not None and name in self.hints.field_words:
                out[name] = self.hints.text(self.rng, name)
                continue
            # Optional fields are filled too, except deep in recursion.
            if name in required or depth < self.max_depth:
                out[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        n_extra = max(int(schema.get("minProperties", 0)) - len(out), 0)
        if isinstance(extra, dict) and not props:
            n_extra = max(n_extra, self.rng.randint(1, 2) if depth < self.max_depth else 0)
        for i in range(n_extra):
            out[f"key_{i}"] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        n = max(lo, min(hi, self.rng.randint(1, 3) if depth < self.max_depth else lo))
        n = max(n, len(prefix)) if schema.get("items") is not False else len(prefix)
        item_schema = schema.get("items", {})
        out = [self.value(prefix[i], depth + 1) for i in range(min(n, len(prefix)))]
        out += [self.value(item_schema, depth + 1) for _ in range(n - len(out))]
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for v in out:
                if v not in seen:
                    seen.append(v)
            out = seen
        return out

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            return f"2024-0{self.rng.randint(1, 9)}-1{self.rng.randint(0, 9)}T12:00:00Z"
        if fmt == "date":
            return f"2024-0{self.rng.randint(1, 9)}-1{self.rng.randint(0, 9)}"
        if fmt in ("uri", "url"):
            if self.hints is not None and self.hints.urls:
                return self.rng.choice(self.hints.urls)
            return f"https://example.org/{self.rng.choice(_WORDS)}"
        if fmt == "email":
            return f"{self.rng.choice(_WORDS)}@example.org"
        if fmt == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if fmt == "time":
            return f"1{self.rng.randint(0, 9)}:30:00"
        if fmt == "duration":
            return f"PT{self.rng.randint(1, 59)}M"
        if fmt == "ipv4":
            return f"10.0.0.{self.rng.randint(1, 254)}"
        lo = int(schema.get("minLength", 0))
        hi = int(schema.get("maxLength", max(lo, 80)))
        vocabulary = (self.hints.question_words + self.hints.words) or _WORDS if self.hints is not None else _WORDS
        text = " ".join(self.rng.choice(vocabulary) for _ in range(self.rng.randint(2, 6)))
        while len(text) < lo:
            text += " " + self.rng.choice(_WORDS)
        text = text[:hi].rstrip() if hi >= 1 else ""
        while len(text) < lo:  # rstrip may have cut below the minimum
            text += self.rng.choice(string.ascii_lowercase)
        return text

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        lo, hi = _bounds(schema, integer=True)
        step = int(schema.get("multipleOf", 1)) or 1
        first = -(-lo // step) * step
        if first > hi:
            raise ValueError(f"no multiple of {step} in [{lo}, {hi}]")
        return first + step * self.rng.randint(0, (hi - first) // step)

    def _number(self, schema: dict[str, Any], depth: int) -> float:
        if "multipleOf" in schema:
            return self._multiple(schema)
        lo, hi = _bounds(schema, integer=False)
        return round(self.rng.uniform(lo, hi), 3) if hi > lo else float(lo)

    def _multiple(self, schema: dict[str, Any]) -> float:
        step = float(schema["multipleOf"])
        lo, hi = _bounds(schema, integer=False)
        k_lo, k_hi = int(-(-lo // step)), int(hi // step)
        return step * self.rng.randint(k_lo, max(k_lo, k_hi))

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[Any, Any]:
    eps = 1 if integer else 1e-3
    lo = schema.get("minimum", schema["exclusiveMinimum"] + eps if "exclusiveMinimum" in schema else None)
    hi = schema.get("maximum", schema["exclusiveMaximum"] - eps if "exclusiveMaximum" in schema else None)
    if lo is None and hi is None:
        lo, hi = 0, 100
    elif lo is None:
        lo = hi - 100
    elif hi is None:
        hi = lo + 100
    if integer:
        return math.ceil(lo), math.floor(hi)
    return float(lo), float(hi)


def _merge_schemas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if "properties" in a or "properties" in b:
        out["properties"] = {**a.get("properties", {}), **b.get("properties", {})}
        out["required"] = sorted(set(a.get("required", [])) | set(b.get("required", [])))
    return out


def load_responder(spec: str) -> Responder:
    """Import ``"module:function"``."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"responder must be 'module:function', got {spec!r}")
    func = getattr(importlib.import_module(module), name)
    if not callable(func):
        raise ValueError(f"responder {spec!r} is not callable")
    return func


# --------------------------------------------------------------------------------------
# The server (aiohttp)
# --------------------------------------------------------------------------------------

_MARKER = "[[fault:"


class _FakeApp:
    """Request handling and counters; one instance per server."""

    def __init__(self, config: FakeServerConfig, responder: Responder | None = None) -> None:
        self.config = config
        self.responder = responder or load_responder(config.responder)
        self.rng = random.Random(config.seed)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.completed = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.models_requests = 0
        self.faults: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def stats(self) -> ServerStats:
        return ServerStats(
            requests=self.requests,
            completed=self.completed,
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
            faults=dict(self.faults),
            distinct_requests=len(self.attempts),
            models_requests=self.models_requests,
            refused=dict(self.refused),
        )

    def refusal(self, request: Any, body: dict[str, Any] | None) -> Any:
        """The 401/400 a misconfigured provider would answer, or None."""
        from aiohttp import web

        if self.config.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.config.api_key}":
            self.refused["401"] += 1
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
                status=401,
            )  # fmt: skip
        for name in self.config.reject_params:
            if body is not None and name in body:
                self.refused["400"] += 1
                # OpenAI's wording for its reasoning models.
                hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
                return web.json_response(
                    {"error": {"message": f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                               "type": "invalid_request_error", "param": name, "code": "unsupported_parameter"}},
                    status=400,
                )  # fmt: skip
        return None

    def log_answered(self, body: dict[str, Any]) -> None:
        if self.config.request_log is None:
            return
        line = json.dumps({"digest": messages_digest(body.get("messages")), "status": 200}) + "\n"
        # One O_APPEND write per line: whole lines even from a process that dies right after.
        fd = os.open(self.config.request_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def choose_fault(self, index: int, body: dict[str, Any], key: str) -> str | None:
        text = json.dumps(body.get("messages"), ensure_ascii=False)
        pos = text.find(_MARKER)
        if pos >= 0:
            kind = text[pos + len(_MARKER) :].split("]]", 1)[0]
            if kind in FAULT_KINDS:
                return kind
        plan = self.config.faults
        if index < len(plan.schedule) and plan.schedule[index] is not None:
            return plan.schedule[index]
        attempt = self.attempts[key] - 1
        if attempt < len(plan.per_request) and plan.per_request[attempt] is not None:
            return plan.per_request[attempt]
        for kind, p in plan.rates.items():
            if self.rng.random() < p:
                return kind
        return None

    async def handle_models(self, request: Any) -> Any:
        from aiohttp import web

        self.models_requests += 1
        refused = self.refusal(request, None)
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": [{"id": self.config.model, "object": "model"}]})

    async def handle_stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.stats().model_dump())

    async def handle_reset(self, request: Any) -> Any:
        from aiohttp import web

        self.reset()
        return web.json_response({"ok": True})

    async def handle_chat(self, request: Any) -> Any:
        from aiohttp import web

        index = self.requests
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return web.json_response({"error": {"message": "messages must be a list"}}, status=400)
            if self.config.die_after_requests is not None and index >= self.config.die_after_requests:
                # A provider that goes away mid-run: no reply, and every later connection refused.
                os._exit(3)
            refused = self.refusal(request, body)
            if refused is not None:
                return refused
            key = messages_digest(body["messages"])
            self.attempts[key] += 1
            fault = self.choose_fault(index, body, key)
            if fault is not None:
                self.faults[fault] += 1
            if self.config.latency_s:
                await asyncio.sleep(self.config.latency_s)
            if fault == "rate_limit":
                headers = {}
                if self.config.retry_after_s is not None:
                    headers["Retry-After"] = f"{self.config.retry_after_s:g}"
                return web.json_response(
                    {"error": {"message": "rate limited", "type": "rate_limit"}}, status=429, headers=headers
                )
            if fault == "server_error":
                return web.json_response({"error": {"message": "injected failure"}}, status=500)
            if fault == "slow":
                await asyncio.sleep(self.config.slow_s)
            if fault == "drop":
                request.transport.close()
                raise asyncio.CancelledError  # nothing more to write; aiohttp tidies up
            payload = self.completion(body, garbage=fault == "garbage")
            raw = json.dumps(payload).encode()
            if fault == "truncated":
                return web.Response(body=raw[: len(raw) // 2], content_type="application/json")
            if fault == "cut":
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                resp.content_length = len(raw)
                await resp.prepare(request)
                await resp.write(raw[: len(raw) // 2])
                request.transport.close()
                raise asyncio.CancelledError
            self.completed += 1
            resp = web.Response(body=raw, content_type="application/json")
            # Written out before it is logged: a line in the log is a reply the client got.
            await resp.prepare(request)
            await resp.write_eof()
            self.log_answered(body)
            return resp
        finally:
            self.in_flight -= 1

    def completion(self, body: dict[str, Any], *, garbage: bool) -> dict[str, Any]:
        if garbage:
            content = "I cannot answer that in JSON, sorry."
        else:
            reply = self.responder(body)
            content = reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        reasoning = ""
        if self.config.reasoning != "none":
            reasoning = "Let me think about what is asked. " * 3
            if self.config.reasoning == "think_prefix":
                message["content"] = f"<think>\n{reasoning}\n</think>\n\n{content}"
            else:
                message["reasoning_content"] = reasoning
        finish_reason = "stop"
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        if self.config.enforce_max_tokens and isinstance(cap, int) and len(message["content"]) > 4 * cap:
            message["content"] = message["content"][: 4 * cap]
            finish_reason = "length"
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict))
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, (len(message["content"]) + len(message.get("reasoning_content", ""))) // 4)
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def build(self) -> Any:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_get("/_stats", self.handle_stats)
        app.router.add_post("/_reset", self.handle_reset)
        return app


async def _serve(
    config: FakeServerConfig,
    host: str,
    port: int,
    started: Callable[[int], None],
    responder: Responder | None = None,
) -> Any:
    """Start the aiohttp server; call ``started(port)``; return its runner (caller cleans up)."""
    from aiohttp import web

    app = _FakeApp(config, responder).build()
    # handler_cancellation: a client that gives up (timeout) cancels its handler, so the
    # in-flight counter measures requests a client is still waiting for.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    started(bound)
    return runner


# --------------------------------------------------------------------------------------
# The handle tests use
# --------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """Run the fake server in a child process (default) or a thread; a context manager.

    In thread mode, ``responder`` may be a callable instead of ``config.responder``.
    ``base_url`` is ``http://127.0.0.1:PORT/v1``; ``stats()`` and ``reset()`` talk to the
    server over HTTP, so they work the same in both modes. A child process exits when this
    object stops it, and also when the parent dies (it watches its stdin).
    """

    def __init__(
        self,
        config: FakeServerConfig | None = None,
        *,
        mode: Literal["process", "thread"] = "process",
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
        responder: Responder | None = None,
    ) -> None:
        if responder is not None and mode != "thread":
            raise ValueError(
                "a responder callable needs mode='thread'; name it in config.responder otherwise"
            )
        if mode == "thread" and config is not None and config.die_after_requests is not None:
            raise ValueError("die_after_requests ends the server's process: it needs mode='process'")
        self.config = config or FakeServerConfig()
        self._responder = responder
        self.mode = mode
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeOpenAIServer:
        if self.mode == "process":
            self._start_process()
        else:
            self._start_thread()
        return self

    def _start_process(self) -> None:
        argv = [
            sys.executable, "-m", "testing.fake_llm_server", "--host", self.host, "--port", str(self.port),
            "--config-json", self.config.model_dump_json(), "--watch-stdin",
        ]  # fmt: skip
        # stderr goes to a file, not a pipe: an unread pipe fills up and blocks the server.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        # The child sees our import path, so a responder defined in a test module (which
        # pytest put on sys.path) imports there too.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self._proc = subprocess.Popen(  # noqa: S603 (argv we built)
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        line = _readline_with_timeout(self._proc, self.startup_timeout_s)
        if not line.startswith("PORT "):
            tail = self.stderr_tail()
            self.stop()
            raise RuntimeError(f"fake server did not start: {line!r}; stderr: {tail}")
        self.port = int(line.split()[1])

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of the child process's stderr (process mode)."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def _start_thread(self) -> None:
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop_event = asyncio.Event()

            def started(port: int) -> None:
                self.port = port
                ready.set()

            async def main() -> None:
                runner = await _serve(self.config, self.host, self.port, started, self._responder)
                try:
                    assert self._stop_event is not None
                    await self._stop_event.wait()
                finally:
                    await runner.cleanup()

            try:
                loop.run_until_complete(main())
            except BaseException as err:  # noqa: BLE001 (reported to the starting thread)
                error.append(err)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(self.startup_timeout_s) or error:
            raise RuntimeError(f"fake server thread did not start: {error[0] if error else 'timeout'}")

    def stop(self) -> None:
        """Stop the server; idempotent."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()  # the child exits on stdin EOF
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
        if self._thread is not None and self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout=10)
            self._thread = None

    def stats(self) -> ServerStats:
        """Server-side counters (blocking HTTP call; fine from a test)."""
        with urllib.request.urlopen(self.root_url + "/_stats", timeout=10) as resp:  # noqa: S310
            return ServerStats.model_validate_json(resp.read())

    def reset(self) -> None:
        """Zero the counters (attempt counts per request included)."""
        req = urllib.request.Request(self.root_url + "/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _readline_with_timeout(proc: subprocess.Popen[str], timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout_s)
    if not result:
        return "(timeout waiting for the fake server)"
    if not result[0]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return f"(exited with code {proc.returncode})"
    return result[0].strip()


async def _main_async(config: FakeServerConfig, host: str, port: int, watch_stdin: bool) -> None:
    def started(bound: int) -> None:
        print(f"PORT {bound}", flush=True)

    runner = await _serve(config, host, port, started)
    try:
        if watch_stdin:
            # Exit when the parent closes our stdin, or dies: no orphaned servers.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        else:
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config-json", default="{}", help="FakeServerConfig as JSON")
    parser.add_argument("--watch-stdin", action="store_true", help="exit on stdin EOF")
    args = parser.parse_args(argv)
    config = FakeServerConfig.model_validate_json(args.config_json)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(config, args.host, args.port, args.watch_stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
