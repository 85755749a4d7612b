"""HAS decisions: N+1 leak-free, style-matched options per step, the original chosen, the outcome."""

from __future__ import annotations

import asyncio
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from synth.ids import content_hash
from synth.llm.base import LLMTimeout
from synth.llm.client import response_format
from synth.records import (
    DecisionRecord,
    Failure,
    RolloutRecord,
    ToolAction,
    TrajectoryStep,
    records_to_table,
    table_to_records,
)
from synth.render import tags
from synth.render.traces import count_words, render_step
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.decisions import STAGE as DECISIONS
from synth.stages.decisions import (
    Candidates,
    DecisionsConfig,
    build_messages,
    observation_terms,
    reply_model,
    trim_words,
)
from synth.stages.rollouts import STAGE as ROLLOUTS
from testing.fake_llm_server import schema_responder
from testing.scripted_llm import ScriptedLLM

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEBDANCER = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"
URL_RE = re.compile(r"https?://[^\s)\]>\"'<]+")


def instruction_following(messages: list[dict[str, Any]], schema: Any) -> Any:
    """The fake endpoint's responder in-process: it follows the prompt's length and draws on its context."""
    body: dict[str, Any] = {"messages": messages}
    if schema is not None:
        body["response_format"] = response_format(schema)
    return schema_responder(body)


def distinct_alternatives(n: int, thought: str = "Maybe another angle on this.") -> Any:
    """A model that proposes n valid, distinct search calls, different for every prompt."""

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        tag = content_hash(messages[-1]["content"], 8)
        answers = schema is not None and '"answer"' in json.dumps(response_format(schema))
        if answers:
            return {"candidates": [{"thought": thought, "answer": f"guess {i} {tag}"} for i in range(n)]}
        return {
            "candidates": [
                {"thought": thought, "tool": "search", "arguments": {"query": [f"angle {i} {tag}"]}}
                for i in range(n)
            ]
        }

    return respond


def make_ctx(
    tmp_path: Path, llm: Any, seed: int = 0, max_tokens: int = 1024, **decisions: Any
) -> StageContext:
    spec = parse_spec(
        {
            "name": "t",
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "max_tokens": max_tokens},
            "stages": {"decisions": decisions},
            "execution": {"seed": seed},
        }
    )
    return StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(llm, model_name="alt-model"),
        judge_llm=ScriptedLLM(lambda m, s: {"correct": False}),
        run_dir=tmp_path,
        seed=seed,
        base_dir=tmp_path,
    )


def decide(ctx: StageContext, rollouts: list[RolloutRecord]) -> tuple[list[DecisionRecord], list[Failure]]:
    out = asyncio.run(DECISIONS.process(rollouts, ctx))
    return out.records, out.failures  # type: ignore[return-value]


def search(q: str) -> ToolAction:
    return ToolAction(tool="search", arguments={"query": [q]})


def rollout(
    steps: list[TrajectoryStep], final_answer: str | None = "1987", outcome: str = "correct", rid: str = "r1"
) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        run_id="t",
        question="When did the Kestrel Bay Bridge open?",
        gold_answer="1987",
        steps=steps,
        final_answer=final_answer,
        outcome=outcome,  # type: ignore[arg-type]
        source="rollout",
    )


THREE_STEPS = [
    TrajectoryStep(
        thought="I should search for the bridge first.",
        action=search("Kestrel Bay Bridge"),
        observation="OBS-ONE https://e.org/bridge",
    ),
    TrajectoryStep(
        thought="The result points at a page; I will read it.",
        action=ToolAction(tool="visit", arguments={"url": "https://e.org/bridge", "goal": "opening year"}),
        observation="OBS-TWO opened in 1987",
    ),
    TrajectoryStep(thought="The page says it opened in 1987."),
]


def option_parts(option: str) -> tuple[str, str, str | None]:
    """(thought, 'tool:<name>' or 'answer', the answer) of a rendered option."""
    thought = " ".join(tags.find_thoughts(option))
    calls = tags.find_tool_calls(option)
    if calls:
        return thought, "tool:" + tags.parse_tool_call(calls[0]).tool, None
    return thought, "answer", (tags.find_answers(option) or [None])[0]


def acting_steps(source: RolloutRecord) -> list[int]:
    return [k for k, s in enumerate(source.steps) if s.action is not None or k == len(source.steps) - 1]


def check_record(record: DecisionRecord, source: RolloutRecord, n: int) -> None:
    acting = acting_steps(source)
    assert len(record.steps) == len(acting)
    for step, k in zip(record.steps, acting, strict=True):
        assert len(step.options) == n + 1
        assert len(set(step.options)) == n + 1
        assert step.sources[step.chosen] == "original" and step.sources.count("original") == 1
        if step.condensed is None:
            assert step.options[step.chosen] == render_step(source.steps, k, source.final_answer)
        else:  # the condensed original keeps the trajectory's action and records its own thought
            assert step.original_thought == source.steps[k].thought
            assert step.options[step.chosen].endswith(
                render_step(source.steps, k, source.final_answer).split("</think>")[-1]
            )
        assert step.observation == source.steps[k].observation
        assert f"I will choose option {step.chosen + 1}." in record.text


@cache
def webdancer_rollouts(tmp: str) -> list[RolloutRecord]:
    spec = parse_spec({"name": "t", "inputs": {"trajectories": [str(WEBDANCER)]}, "stages": {"rollouts": {}}})
    ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(lambda m, s: "unused"),
        judge_llm=ScriptedLLM(lambda m, s: {"correct": "Derby" in m[-1]["content"]}),
        run_dir=Path(tmp),
        base_dir=Path(tmp),
    )
    out = asyncio.run(ROLLOUTS.process(ROLLOUTS.prepare(ctx).items, ctx))
    assert len(out.records) == 200, out.failures[:3]
    return out.records  # type: ignore[return-value]


def future_strings(source: RolloutRecord, k: int) -> set[str]:
    """URLs and search queries that first appear at step k or later (an independent reading of the rule)."""

    def text(step: TrajectoryStep) -> str:
        args = json.dumps(step.action.arguments, ensure_ascii=False) if step.action else ""
        return f"{step.thought}\n{args}\n{step.observation or ''}".casefold()

    before = source.question.casefold() + "\n".join(text(s) for s in source.steps[:k])
    later: set[str] = set()
    for step in source.steps[k:]:
        found = URL_RE.findall(text(step))
        if step.action is not None and step.action.tool == "search":
            query = step.action.arguments.get("query")
            found += [q.casefold() for q in ([query] if isinstance(query, str) else query or [])]
        later |= {s.rstrip(".,;:") for s in found if len(s.rstrip(".,;:")) >= 4}
    return {s for s in later if s not in before}


def assert_no_option_from_the_future(records: list[DecisionRecord], rollouts: list[RolloutRecord]) -> int:
    by_id = {r.id: r for r in rollouts}
    checked = 0
    for record in records:
        source = by_id[record.trajectory_id]
        for step, k in zip(record.steps, acting_steps(source), strict=True):
            future = future_strings(source, k)
            for i, option in enumerate(step.options):
                if i == step.chosen:
                    continue
                leaked = [s for s in future if s in option.casefold()]
                assert not leaked, f"{record.trajectory_id} step {k}: option {i} holds {leaked}"
                checked += 1
    return checked


# ---------------------------------------------------------------------------
# The acceptance checks on the 200 WebDancer trajectories
# ---------------------------------------------------------------------------

needs_webdancer = pytest.mark.skipif(
    not WEBDANCER.exists(), reason=f"shared data absent: {WEBDANCER} (../shared/data next to the repo)"
)


@needs_webdancer
def test_every_webdancer_step_gets_n_plus_1_options_of_its_form_within_the_length_band(
    tmp_path: Path,
) -> None:
    rollouts = webdancer_rollouts(str(tmp_path))
    records, failures = decide(
        make_ctx(tmp_path, instruction_following, alternatives=3, max_tokens=4096), rollouts
    )
    assert failures == []
    assert len(records) == 200
    by_id = {r.id: r for r in rollouts}
    for record in records:
        source = by_id[record.trajectory_id]
        assert record.parent_ids == [source.id] and record.question == source.question
        check_record(record, source, n=3)
        assert record.flag is None
        assert record.text.endswith(f"My decision is {source.outcome.capitalize()}.")
        for step in record.steps:
            parts = [option_parts(o) for o in step.options]
            chosen_thought, chosen_form, _ = parts[step.chosen]
            for i, (thought, form, _) in enumerate(parts):
                # Same form as the original (answer vs tool call), thought within 0.5-1.5x of its length.
                assert form.split(":")[0] == chosen_form.split(":")[0]
                if step.sources[i] == "llm":
                    assert (
                        0.5 * count_words(chosen_thought)
                        <= count_words(thought)
                        <= 1.5 * count_words(chosen_thought)
                    )
    assert sum(len(r.steps) for r in records) == 422  # 222 tool calls + 200 answers
    # A fill only where the model's random words happened to spell a later query (a leak, dropped).
    assert sum(r.filled_options for r in records) <= 5


@needs_webdancer
def test_no_option_holds_a_url_or_query_that_first_appears_at_its_step_or_later(tmp_path: Path) -> None:
    rollouts = webdancer_rollouts(str(tmp_path))
    by_question = {r.question: r for r in rollouts}

    def cheat(messages: list[dict[str, Any]], schema: Any) -> Any:
        """A model that knows the whole trajectory and proposes its every call and url, past and future."""
        if schema is not None and schema.__name__ == "Condensed":
            return "no JSON"
        source = by_question[messages[-1]["content"].split("\n", 1)[0].removeprefix("Question: ")]
        calls = [s.action for s in source.steps if s.action is not None]
        urls = [u for s in source.steps for u in URL_RE.findall(s.observation or "")]
        candidates = [{"thought": "I think so.", "tool": c.tool, "arguments": c.arguments} for c in calls]
        candidates += [
            {
                "thought": f"I will read {u} now.",
                "tool": "visit",
                "arguments": {"url": u, "goal": "the answer"},
            }
            for u in urls
        ]
        candidates += [{"thought": f"It is at {u}.", "answer": u} for u in urls]
        return {"candidates": candidates}

    leaky, failures = decide(make_ctx(tmp_path, cheat, alternatives=3), rollouts)
    nothing, more = decide(make_ctx(tmp_path, lambda m, s: "no JSON", alternatives=3), rollouts)
    assert len(leaky) + len(failures) == len(nothing) + len(more) == 200
    assert len(failures) + len(more) < 20  # too short a question for enough templates
    checked = assert_no_option_from_the_future(leaky + nothing, rollouts)
    assert checked > 2 * 3 * 400
    # Every option of the cheating model was from the trajectory itself: what is left of it is the
    # past (earlier calls, earlier urls); the rest are template fills, counted.
    assert all(r.flag is not None for r in nothing)


# ---------------------------------------------------------------------------
# Options: form, length, fills
# ---------------------------------------------------------------------------


def test_prompt_for_step_k_shows_only_what_came_before_it(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distinct_alternatives(2), alternatives=2, condense=False)
    (record,), _ = decide(ctx, [rollout(THREE_STEPS)])
    check_record(record, rollout(THREE_STEPS), n=2)
    prompts = sorted((c["messages"][-1]["content"] for c in ctx.llm.calls), key=len)  # type: ignore[attr-defined]
    assert "(none yet)" in prompts[0]
    assert "OBS-ONE" in prompts[1] and "OBS-TWO" not in prompts[1]
    assert "OBS-ONE" in prompts[2] and "OBS-TWO" in prompts[2]
    assert all("opened in 1987." not in p for p in prompts)


def test_the_prompt_lists_key_terms_of_the_earlier_responses_read_whole_and_none_of_later_ones() -> None:
    long_response = (
        "Results for the bridge. " + "filler text " * 200 + "Halvorsen built it; Halvorsen signed it."
    )
    steps = [
        TrajectoryStep(
            thought="I should search.", action=search("Kestrel Bay Bridge"), observation=long_response
        ),
        TrajectoryStep(
            thought="I will search again.", action=search("Halvorsen bridge"), observation="Zellweger 1987"
        ),
        TrajectoryStep(thought="It opened in 1987."),
    ]
    cfg = DecisionsConfig(prompt_observation_chars=300)
    question = "When did the Kestrel Bay Bridge open?"

    def terms(k: int) -> list[str]:
        prompt = build_messages(question, steps, k, cfg)[-1]["content"]
        line = next(
            p for p in prompt.split("\n\n") if p.startswith("Key terms of the tool responses so far: ")
        )
        return line.split(": ", 1)[1].split(", ")

    assert terms(0) == ["(none yet)"]
    # Past the 300 characters shown, the most frequent first; the question's words are not repeated.
    assert terms(1)[:2] == ["filler", "text"] and "Halvorsen" in terms(1)
    assert not {"Bridge", "bridge", "Kestrel"} & set(terms(1))
    # Step 1's own response (what its options must not know) appears from step 2 on only.
    assert "Zellweger" not in terms(1) and "Zellweger" in terms(2)
    assert observation_terms(question, [long_response], 2) == ["filler", "text"]


def test_the_reply_schema_allows_only_the_steps_form_and_the_trajectorys_tools() -> None:
    tool_schema = json.dumps(response_format(reply_model(("search", "visit"), False, 3)))
    answer_schema = json.dumps(response_format(reply_model(("search",), True, 2)))
    assert '"const": "search"' in tool_schema and '"const": "visit"' in tool_schema
    assert '"python"' not in tool_schema and '"answer"' not in tool_schema
    assert '"answer"' in answer_schema and '"tool"' not in answer_schema
    assert '"minItems": 3, "type": "array"' in tool_schema.replace('"maxItems": 3, ', "")


def test_an_answer_step_gets_answers_and_a_tool_step_gets_calls_of_the_trajectorys_tools(
    tmp_path: Path,
) -> None:
    def mixed(messages: list[dict[str, Any]], schema: Any) -> Any:
        return {
            "candidates": [
                {
                    "thought": "Read the page once more now.",
                    "tool": "python",
                    "arguments": {"code": "print(1)"},
                },
                {"thought": "Answer right now with this.", "answer": "1990"},
                {
                    "thought": "Search for the opening date.",
                    "tool": "search",
                    "arguments": {"query": ["Kestrel opening date"]},
                },
                {"thought": "Or maybe the year is 1988.", "answer": "1988"},
                {
                    "thought": "Search for the bridge history.",
                    "tool": "search",
                    "arguments": {"query": ["Kestrel history"]},
                },
            ]
        }

    (record,), _ = decide(make_ctx(tmp_path, mixed, alternatives=2), [rollout(THREE_STEPS)])
    first, _, last = record.steps
    assert sorted(option_parts(o)[1] for o in first.options) == ["tool:search", "tool:search", "tool:search"]
    assert [option_parts(o)[1] for o in last.options] == ["answer"] * 3
    assert {option_parts(o)[2] for o in last.options} == {"1987", "1990", "1988"}
    assert record.filled_options == 0


def test_short_alternatives_make_the_original_thought_condensed_into_their_band(tmp_path: Path) -> None:
    long_thought = " ".join(f"Sentence {i} weighs what the search should look for next." for i in range(12))
    steps = [TrajectoryStep(thought=long_thought, action=search("Kestrel Bay Bridge"), observation="OBS")]

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        if schema is not None and schema.__name__ == "Condensed":
            assert "between" in messages[-1]["content"] and "Sentence 11" in messages[-1]["content"]
            return {
                "thought": "I need the opening year, so the bridge's own records come first, then a check."
            }
        return distinct_alternatives(
            2, thought="A short alternative thought of about twelve words here, really."
        )(messages, schema)

    (record,), _ = decide(make_ctx(tmp_path, respond, alternatives=2), [rollout(steps, final_answer=None)])
    step = record.steps[0]
    assert step.condensed == "llm" and step.original_thought == long_thought
    chosen = option_parts(step.options[step.chosen])[0]
    assert chosen.startswith("I need the opening year")
    for i, option in enumerate(step.options):
        if i != step.chosen:
            assert (
                0.5 * count_words(chosen) <= count_words(option_parts(option)[0]) <= 1.5 * count_words(chosen)
            )
    assert '"Kestrel Bay Bridge"' in step.options[step.chosen]  # the action is the trajectory's own


def test_when_the_llm_cannot_condense_the_original_is_cut_at_sentences_into_the_band(tmp_path: Path) -> None:
    long_thought = " ".join(f"Sentence {i} weighs what the search should look for next." for i in range(12))
    steps = [TrajectoryStep(thought=long_thought, action=search("Kestrel Bay Bridge"), observation="OBS")]

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        if schema is not None and schema.__name__ == "Condensed":
            return {"thought": "far too short"}
        return distinct_alternatives(
            2, thought="A short alternative thought of about twelve words here, really."
        )(messages, schema)

    (record,), _ = decide(make_ctx(tmp_path, respond, alternatives=2), [rollout(steps, final_answer=None)])
    step = record.steps[0]
    chosen = option_parts(step.options[step.chosen])[0]
    assert step.condensed == "cut" and step.original_thought == long_thought
    assert chosen.endswith(
        "Sentence 11 weighs what the search should look for next."
    )  # the end leads to the action
    assert 6 <= count_words(chosen) <= 24


def test_alternatives_longer_than_the_band_are_trimmed_to_it(tmp_path: Path) -> None:
    wordy = " ".join(f"Clause {i} of a rambling alternative." for i in range(30))
    (record,), _ = decide(
        make_ctx(tmp_path, distinct_alternatives(2, thought=wordy), alternatives=2), [rollout(THREE_STEPS)]
    )
    for step, source in zip(record.steps, THREE_STEPS, strict=True):
        original = count_words(source.thought)
        assert step.condensed is None
        for i, option in enumerate(step.options):
            if i != step.chosen:
                assert count_words(option_parts(option)[0]) <= 1.5 * original


def test_trim_words_keeps_whole_trailing_sentences() -> None:
    assert trim_words("One two three. Four five. Six seven eight.", 5) == "Four five. Six seven eight."
    assert trim_words("a b c d e f g h", 3) == "f g h"
    assert trim_words("short", 10) == "short"


def test_invalid_model_output_is_filled_from_the_past_only_and_flagged(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: "I cannot produce JSON", alternatives=2)
    (record,), failures = decide(ctx, [rollout(THREE_STEPS)])
    assert failures == []
    check_record(record, rollout(THREE_STEPS), n=2)
    assert record.filled_options == 6 and record.filled_share == 1.0
    assert record.flag is not None and "6 of 6" in record.flag
    first = record.steps[0]
    others = [o for i, o in enumerate(first.options) if i != first.chosen]
    assert not any("https://e.org/bridge" in o for o in others)  # step 1 cannot know the url yet
    assert sorted(first.sources) == ["original", "template", "template"]
    assert any("When did the Kestrel Bay Bridge open?" in o for o in others)
    second = record.steps[1]
    # Step 2 may repeat step 1's call, with the agent's own earlier words as its thought.
    assert "earlier_step" in second.sources
    assert any("I should search for the bridge first." in o for o in second.options)


def test_a_record_with_a_third_or_fewer_fills_is_not_flagged(tmp_path: Path) -> None:
    def one_short(messages: list[dict[str, Any]], schema: Any) -> Any:
        reply = distinct_alternatives(3)(messages, schema)
        return {"candidates": reply["candidates"][:2]}

    (record,), _ = decide(make_ctx(tmp_path, one_short, alternatives=3), [rollout(THREE_STEPS)])
    assert record.filled_options == 3 and record.filled_share == pytest.approx(1 / 3, abs=1e-3)
    assert record.flag is None


def test_a_step_that_cannot_get_n_alternatives_fails_the_trajectory(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: "no JSON", alternatives=3, tools=["python"])
    records, (failure,) = decide(ctx, [rollout(THREE_STEPS)])
    assert records == []
    assert failure.error_kind == "insufficient_alternatives" and failure.input_ids == ["r1"]
    assert "0 distinct valid alternatives, 3 needed" in failure.message


def test_duplicates_of_the_original_and_invalid_candidates_are_replaced(tmp_path: Path) -> None:
    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        return {
            "candidates": [
                {
                    "thought": "Same call in other words.",
                    "tool": "search",
                    "arguments": {"query": "Kestrel Bay Bridge"},
                },
                {
                    "thought": "A new idea to follow.",
                    "tool": "search",
                    "arguments": {"query": ["bridge history"]},
                },
                {
                    "thought": "The new idea once again.",
                    "tool": "search",
                    "arguments": {"query": ["bridge history"]},
                },
                {"thought": "A tool that does not exist.", "tool": "browse", "arguments": {}},
                {"thought": "Nothing at all to do."},
            ]
        }

    ctx = make_ctx(tmp_path, respond, alternatives=2)
    (record,), _ = decide(ctx, [rollout(THREE_STEPS[:1], final_answer=None)])
    first = record.steps[0]
    calls = [json.loads(m) for o in first.options for m in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", o)]
    assert sorted(json.dumps(c["arguments"], sort_keys=True) for c in calls) == sorted(
        json.dumps(a, sort_keys=True)
        for a in (
            {"query": ["Kestrel Bay Bridge"]},
            {"query": ["bridge history"]},
            {"query": ["Kestrel Bay Bridge open"]},
        )
    )
    assert record.filled_options == 1  # the question's keywords


def test_shuffle_is_deterministic_per_seed_and_varies_with_it(tmp_path: Path) -> None:
    steps = [
        TrajectoryStep(thought=f"thought number {i}", action=search(f"q{i}"), observation=f"o{i}")
        for i in range(10)
    ]
    chosen_by_seed = []
    for seed in (0, 0, 1):
        (record,), _ = decide(
            make_ctx(
                tmp_path, distinct_alternatives(3, thought="another thought here"), seed=seed, alternatives=3
            ),
            [rollout(steps)],
        )
        chosen_by_seed.append([s.chosen for s in record.steps])
    assert chosen_by_seed[0] == chosen_by_seed[1]
    assert chosen_by_seed[0] != chosen_by_seed[2]
    assert len(set(chosen_by_seed[0])) > 1  # the original is not always in the same place


def test_alternatives_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        code = f"open({str(marker)!r}, 'w').write('x')"
        return {
            "candidates": [
                {"thought": "I will run it now here.", "tool": "python", "arguments": {"code": code}},
                {
                    "thought": "Or search the bridge instead.",
                    "tool": "search",
                    "arguments": {"query": ["bridge"]},
                },
            ]
        }

    steps = [
        THREE_STEPS[0],
        TrajectoryStep(
            thought="Compute it with some code.",
            action=ToolAction(tool="python", arguments={"code": "print(2)"}),
            observation="2",
        ),
    ]
    (record,), _ = decide(make_ctx(tmp_path, respond, alternatives=2), [rollout(steps, final_answer=None)])
    assert sum('"name": "python"' in o for o in record.steps[1].options) == 2
    assert not marker.exists()


def test_reply_spelling_variants_are_accepted() -> None:
    parsed = Candidates.model_validate(
        {
            "alternatives": [
                {"reasoning": "r", "tool_call": {"name": "search", "arguments": {"query": ["x"]}}},
                {"think": "t", "answer": "y"},
            ]
        }
    )
    assert parsed.candidates[0].tool == "search" and parsed.candidates[0].thought == "r"
    assert parsed.candidates[1].answer == "y"


# ---------------------------------------------------------------------------
# Outcome, failures, records
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "ending"),
    [("correct", "My decision is Correct."), ("incorrect", "My decision is Incorrect."), ("unknown", None)],
)
def test_text_ends_with_the_judged_outcome_and_an_unjudged_one_with_no_pipeline_words(
    tmp_path: Path, outcome: str, ending: str | None
) -> None:
    (record,), _ = decide(
        make_ctx(tmp_path, distinct_alternatives(2), alternatives=2), [rollout(THREE_STEPS, outcome=outcome)]
    )
    assert record.outcome == outcome
    if ending is not None:
        assert record.text.endswith(ending)
    else:
        assert "My decision is" not in record.text and "judged" not in record.text
        assert record.text.endswith(f"I will choose option {record.steps[-1].chosen + 1}.")


def test_text_lists_options_then_the_choice_then_the_real_response(tmp_path: Path) -> None:
    (record,), _ = decide(
        make_ctx(tmp_path, distinct_alternatives(2), alternatives=2), [rollout(THREE_STEPS)]
    )
    text = record.text
    assert text.startswith("Question: When did the Kestrel Bay Bridge open?")
    marks = [
        text.index(s)
        for s in (
            "Step 1.",
            "Option 3:",
            "I will choose option",
            "OBS-ONE",
            "Step 2.",
            "OBS-TWO",
            "Step 3.",
            "<answer>1987</answer>",
        )
    ]
    assert marks == sorted(marks)


def test_llm_transport_error_fails_the_trajectory_with_its_kind(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: LLMTimeout("slow", raw_output="half"), alternatives=2)
    records, (failure,) = decide(ctx, [rollout(THREE_STEPS)])
    assert records == [] and (failure.error_kind, failure.raw_output) == ("timeout", "half")


def test_a_trajectory_without_an_acting_step_is_a_failure(tmp_path: Path) -> None:
    cut_off = rollout([TrajectoryStep(thought="Hmm.")], final_answer=None, outcome="unknown")
    records, (failure,) = decide(make_ctx(tmp_path, distinct_alternatives(2)), [cut_off])
    assert records == [] and failure.error_kind == "no_decision_steps"


def test_every_rollout_of_a_unit_ends_as_a_record_or_a_failure(tmp_path: Path) -> None:
    good = [rollout(THREE_STEPS, rid=f"r{i}") for i in range(4)]
    bad = rollout([TrajectoryStep(thought="Hmm.")], final_answer=None, rid="r-bad")
    records, failures = decide(make_ctx(tmp_path, distinct_alternatives(3)), [*good, bad])
    assert sorted([r.trajectory_id for r in records] + [f.input_ids[0] for f in failures]) == sorted(
        ["r0", "r1", "r2", "r3", "r-bad"]
    )
    assert len({r.id for r in records}) == 4


def test_decision_records_round_trip_through_arrow(tmp_path: Path) -> None:
    long_thought = " ".join(f"Sentence {i} weighs the next search." for i in range(12))
    steps = [
        TrajectoryStep(thought=long_thought, action=search("Kestrel"), observation="OBS"),
        *THREE_STEPS[1:],
    ]
    records, _ = decide(make_ctx(tmp_path, distinct_alternatives(3)), [rollout(steps)])
    assert records[0].steps[0].condensed is not None
    assert table_to_records(records_to_table(records, DecisionRecord), DecisionRecord) == records
