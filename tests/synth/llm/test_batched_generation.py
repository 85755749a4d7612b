"""The embedded server's batching: every row comes out as it would alone.

The embedded model (SmolLM2-135M) generates greedily, so a padded row, or a row that joined a
running batch, that differed from its unpadded self by one token would show. (A tiny random
model would not do: it repeats one token whatever the context.) The
manager lingers long enough here that the requests a test sends together are admitted
together, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from transformers import GenerationConfig

from synth.llm.batched_generation import BatchedGenerateManager
from synth.llm.decode_batch import DecodeBatch, Row
from synth.llm.grammar import JsonConstraints, grammar_for

PROMPTS = [
    "The capital of France is",
    "Riverton welcomed 2.41 million overnight visitors in 2024, up from 2.22 million in 2023. The increase was",
    "Count: 1 2 3",
]


def greedy(max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=2)


def manager(
    model: Any, tokenizer: Any, grammars: dict[str, str] | None = None, **kwargs: Any
) -> BatchedGenerateManager:
    constraints: list[JsonConstraints] = []

    def constraints_for(_model: Any, _processor: Any) -> JsonConstraints:
        if not constraints:
            constraints.append(JsonConstraints(tokenizer, vocab_size=49152, eos_token_ids=[2]))
        return constraints[0]

    return BatchedGenerateManager(
        (grammars or {}).get, constraints_for, linger_s=kwargs.pop("linger_s", 1.0), **kwargs
    )


def run_all(
    gen: BatchedGenerateManager, model: Any, tokenizer: Any, requests: list[tuple[str, GenerationConfig]]
) -> list[tuple[str, int, list[int]]]:
    async def main() -> list[tuple[str, int, list[int]]]:
        calls = []
        for i, (prompt, config) in enumerate(requests):
            inputs = {"input_ids": torch.tensor([tokenizer(prompt).input_ids])}
            calls.append(gen.generate_non_streaming(model, tokenizer, inputs, config, f"req-{i}"))
        return list(await asyncio.gather(*calls))

    try:
        return asyncio.run(main())
    finally:
        gen.stop()


def test_rows_of_a_batch_generate_exactly_what_they_generate_alone(model: Any, tokenizer: Any) -> None:
    requests = [(prompt, greedy(12)) for prompt in PROMPTS]
    batched = manager(model, tokenizer)
    together = run_all(batched, model, tokenizer, requests)
    assert batched.batch_sizes == [3]  # one generate, rows left-padded to the longest prompt
    one_by_one = manager(model, tokenizer, max_batch=1)
    alone = run_all(one_by_one, model, tokenizer, requests)
    assert one_by_one.batch_sizes == [1, 1, 1]
    assert [r[2] for r in together] == [r[2] for r in alone]
    assert [r[0] for r in together] == [r[0] for r in alone]
    # The prompt length reported is the row's own, not the padded one.
    assert [r[1] for r in together] == [len(tokenizer(p).input_ids) for p in PROMPTS]


def test_each_row_stops_at_its_own_max_new_tokens(model: Any, tokenizer: Any) -> None:
    budgets = [3, 9, 20]
    gen = manager(model, tokenizer)
    results = run_all(gen, model, tokenizer, [(PROMPTS[1], greedy(b)) for b in budgets])
    assert gen.batch_sizes == [3]
    lengths = [len(r[2]) for r in results]
    assert all(n <= b for n, b in zip(lengths, budgets, strict=True)), lengths
    # Same prompt, greedy: a shorter budget is a prefix of a longer one.
    for shorter, longer in zip(results, results[1:], strict=False):
        assert longer[2][: len(shorter[2])] == shorter[2]


def test_rows_keep_their_own_sampling_settings_in_one_batch(model: Any, tokenizer: Any) -> None:
    sampled = GenerationConfig(
        do_sample=True, temperature=1.5, top_k=50, top_p=0.9, max_new_tokens=12, eos_token_id=2
    )
    gen = manager(model, tokenizer)
    mixed = run_all(
        gen, model, tokenizer, [(PROMPTS[0], sampled), (PROMPTS[1], greedy(12)), (PROMPTS[0], sampled)]
    )
    assert gen.batch_sizes == [3]
    alone = run_all(manager(model, tokenizer), model, tokenizer, [(PROMPTS[1], greedy(12))])
    assert mixed[1][2] == alone[0][2]  # the greedy row stayed greedy next to sampled ones
    assert mixed[0][2] != mixed[2][2]  # and the sampled rows sampled


def test_a_request_joins_a_running_batch_and_leaves_as_soon_as_it_is_done(model: Any, tokenizer: Any) -> None:
    alone = run_all(manager(model, tokenizer), model, tokenizer, [(p, greedy(12)) for p in PROMPTS[1:]])
    gen = manager(model, tokenizer, linger_s=0.0)

    async def main() -> tuple[list[Any], bool]:
        def submit(prompt: str, config: GenerationConfig, rid: str) -> Any:
            inputs = {"input_ids": torch.tensor([tokenizer(prompt).input_ids])}
            return asyncio.ensure_future(gen.generate_non_streaming(model, tokenizer, inputs, config, rid))

        long = submit(PROMPTS[0], greedy(400), "long")
        while not gen.batch_sizes:  # the long request is decoding
            await asyncio.sleep(0.01)
        joiners = await asyncio.gather(*[submit(p, greedy(12), f"j{i}") for i, p in enumerate(PROMPTS[1:])])
        long_still_running = not long.done()
        await long
        return joiners, long_still_running

    try:
        joiners, long_still_running = asyncio.run(main())
    finally:
        gen.stop()
    assert long_still_running  # the short ones did not wait for the long one
    assert gen.batch_sizes[0] == 1 and sum(gen.batch_sizes) == 3
    # Their cache was merged into the running one (left-padded): same tokens as alone.
    assert [r[2] for r in joiners] == [r[2] for r in alone]


def test_running_rows_keep_decoding_while_a_new_request_is_prefilled(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 0
    steps_during_prefill: list[int] = []
    real_step, real_prefill = DecodeBatch.step, DecodeBatch.prefill

    def counting_step(self: DecodeBatch) -> None:
        nonlocal steps
        if self.rows:
            steps += 1
        real_step(self)

    def slow_prefill(self: DecodeBatch, rows: list[Row]) -> Any:
        before = steps
        time.sleep(1.0 if self.rows else 0.0)  # a long prompt, next to rows that are decoding
        prefilled = real_prefill(self, rows)
        steps_during_prefill.append(steps - before)
        return prefilled

    monkeypatch.setattr(DecodeBatch, "step", counting_step)
    monkeypatch.setattr(DecodeBatch, "prefill", slow_prefill)
    alone = run_all(manager(model, tokenizer), model, tokenizer, [(PROMPTS[1], greedy(12))])
    steps = 0
    gen = manager(model, tokenizer, linger_s=0.0)

    async def main() -> list[Any]:
        def submit(prompt: str, config: GenerationConfig, rid: str) -> Any:
            inputs = {"input_ids": torch.tensor([tokenizer(prompt).input_ids])}
            return asyncio.ensure_future(gen.generate_non_streaming(model, tokenizer, inputs, config, rid))

        long = submit(PROMPTS[2], greedy(200), "long")  # counts on and on
        while steps < 2:  # the long request is decoding
            await asyncio.sleep(0.01)
        joiner = await submit(PROMPTS[1], greedy(12), "joiner")
        return [joiner, await long]

    try:
        joiner, _ = asyncio.run(main())
    finally:
        gen.stop()
    assert steps_during_prefill[-1] >= 3  # the long row went on while the joiner was prefilled
    assert joiner[2] == alone[0][2]


def test_a_batch_holds_at_most_max_batch_tokens_of_padded_prompt(model: Any, tokenizer: Any) -> None:
    longest = max(len(tokenizer(p).input_ids) for p in PROMPTS)
    gen = manager(model, tokenizer, max_batch_tokens=2 * longest)
    run_all(gen, model, tokenizer, [(p, greedy(4)) for p in PROMPTS])
    assert sorted(gen.batch_sizes) == [1, 2]


def test_a_grammar_masks_its_own_row_only(model: Any, tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert grammar is not None
    gen = manager(model, tokenizer, grammars={"req-0": grammar})
    constrained, free = run_all(gen, model, tokenizer, [(PROMPTS[0], greedy(24)), (PROMPTS[0], greedy(24))])
    assert gen.batch_sizes == [2]
    assert constrained[0].replace(" ", "") in ('{"ok":true}', '{"ok":false}')
    assert not free[0].lstrip().startswith("{")  # the random model, unconstrained


def test_a_request_the_loop_does_not_implement_runs_alone_under_its_grammar(
    model: Any, tokenizer: Any
) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert grammar is not None
    penalised = GenerationConfig(do_sample=False, repetition_penalty=1.3, max_new_tokens=24, eos_token_id=2)
    gen = manager(model, tokenizer, grammars={"req-0": grammar})
    (reply,) = run_all(gen, model, tokenizer, [(PROMPTS[0], penalised)])
    assert gen.batch_sizes == []  # model.generate, not the decode loop
    assert reply[0].replace(" ", "") in ('{"ok":true}', '{"ok":false}')


def test_a_failed_forward_fails_every_request_of_its_batch_and_the_next_batch_runs(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = manager(model, tokenizer)
    real_forward = model.forward
    calls: list[int] = []

    def failing_once(**kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real_forward(**kwargs)

    monkeypatch.setattr(model, "forward", failing_once)

    async def main() -> tuple[list[Any], Any]:
        inputs = {"input_ids": torch.tensor([tokenizer("x").input_ids])}
        first = await asyncio.gather(
            *[gen.generate_non_streaming(model, tokenizer, inputs, greedy(3), f"r{i}") for i in range(2)],
            return_exceptions=True,
        )
        second = await gen.generate_non_streaming(model, tokenizer, inputs, greedy(3), "r2")
        return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        gen.stop()
    assert [str(e) for e in first] == ["out of memory (simulated)"] * 2
    assert isinstance(second[0], str) and calls[:2] == [2, 1]  # prefill of both, then of the next


def test_the_decode_loop_keeps_no_autograd_graph(model: Any, tokenizer: Any) -> None:
    # With autograd on, the shared cache keeps every step's graph: the embedded server grew
    # to 23 GB within minutes of a preview run.
    batch = DecodeBatch(model, [2], None)
    finished: list[list[int]] = []
    row = Row.of(tokenizer(PROMPTS[1]).input_ids, greedy(5), None, finished.append, lambda err: None)
    batch.admit([row])
    batch.step()
    tensors = batch.cache_tensors()
    assert tensors and all(t.grad_fn is None and not t.requires_grad for t in tensors)
    while batch.rows:
        batch.step()
    assert len(finished) == 1 and len(finished[0]) <= 5


@pytest.mark.parametrize(("top_k", "top_p"), [(50, 1.0), (50, 0.8), (0, 0.8), (0, 1.0)])
def test_a_sampled_row_draws_from_transformers_own_top_k_top_p_distribution(top_k: int, top_p: float) -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from synth.llm.decode_batch import _pick

    torch.manual_seed(0)
    logits = torch.randn(2000) * 3
    logits[:5] = float("-inf")  # masked by a grammar
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=top_k, top_p=top_p, max_new_tokens=1)
    row = Row.of([1], config, None, lambda tokens: None, print)
    expected = TemperatureLogitsWarper(0.7)(None, logits[None].clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    expected_p = torch.softmax(expected[0], dim=-1)
    draws = 20_000
    seen = torch.bincount(torch.tensor([_pick(logits, row) for _ in range(draws)]), minlength=2000).float() / draws
    assert seen[expected_p == 0].sum() == 0  # nothing outside the allowed set
    assert 0.5 * (seen - expected_p).abs().sum() < 0.05  # total variation distance
