"""The embedded server's batching: concurrent requests decoded together, on CPUs.

Why not transformers' continuous batching: on the 2-core machines this project runs on, its
paged-attention loop decoded 2-4x slower than plain forwards over a padded batch (measured
with SmolLM2-135M on one core: 8 requests of 1.4k prompt tokens and 90 new tokens took 294 s
through it and 110 s as one padded ``model.generate``). On a GPU the balance is the other way
round, so the server keeps ``--continuous-batching`` as an option.

``BatchedGenerateManager`` runs one inference thread. Requests that the decode loop can serve
(``decode_batch.decodable``: greedy or temperature / top-k / top-p sampling, a length cap, a
JSON grammar) join the running ``DecodeBatch`` between two steps and leave it as soon as they
are done; each keeps its own sampling settings and grammar. A batch holds at most
``max_batch`` requests and ``max_batch_tokens`` padded cache positions (memory grows with
both); a request that does not fit waits for rows to finish. The thread lingers ``linger_s``
before starting an idle batch, so requests sent together are prefilled together. Finished
sequences stay in a ``PrefixStore`` of ``prefix_positions`` positions, so a prompt that
repeats a system prompt, or extends an agent's previous step, prefills only what is new.

Requests the loop does not implement (beam search, repetition penalties, stop strings...) and
streaming requests run alone through ``model.generate`` once the batch has drained, so two
generations never compete for the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.cli.serving.utils import (
    BaseGenerateManager,
    DirectStreamer,
    _GenerationCancelled,
    _StreamError,
)

from synth.llm.decode_batch import DecodeBatch, Prefilled, Row, decodable
from synth.llm.grammar import JsonConstraints, TrackedMatcher, apply_token_bitmask, fill_mask
from synth.llm.prefix_store import PrefixStore

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
# Padded KV-cache positions in one batch (rows x longest row): the cache and prefill's
# transients grow with it; 16k positions are ~750 MB of cache for SmolLM2-135M in fp32.
DEFAULT_MAX_BATCH_TOKENS = 16_384
# How long the first request to an idle batch waits for company. Requests of a pipeline
# arrive within milliseconds of each other (they were answered together); prefilling them in
# one forward is cheaper than one by one, and a generation takes seconds.
DEFAULT_LINGER_S = 0.05
# Positions of finished sequences kept for prefix reuse (``synth.llm.prefix_store``): 8k
# positions are ~380 MB for SmolLM2-135M in fp32. 0 turns reuse off.
DEFAULT_PREFIX_POSITIONS = 8_192

# --------------------------------------------------------------------------------------
# The grammar of a request generated alone
# --------------------------------------------------------------------------------------


class GrammarLogitsProcessor(LogitsProcessor):
    """``model.generate`` processor for a request generated alone: masks its next token by its grammar.

    ``generate`` calls it with the whole sequence so far (a batch of one); the tokens after
    ``prompt_len`` are fed to the matcher. ``generate`` stops calling once the row has ended.
    """

    def __init__(self, constraints: JsonConstraints, grammar: str, prompt_len: int) -> None:
        self._constraints = constraints
        self._tracked = TrackedMatcher(constraints.matcher(grammar))
        self._prompt_len = prompt_len
        self._bitmask = torch.zeros((1, constraints.mask_words), dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._tracked.advance(input_ids[0, self._prompt_len :].tolist())
        fill_mask(self._constraints, self._tracked, self._bitmask, 0)
        return apply_token_bitmask(scores, self._bitmask)


# --------------------------------------------------------------------------------------
# The manager
# --------------------------------------------------------------------------------------


@dataclass
class _Job:
    model: Any
    processor: Any
    input_ids: list[int]
    gen_config: GenerationConfig
    grammar: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[str, int, list[int]]]

    def finish(self, generated: list[int]) -> None:
        """Answer the request with its generated tokens (the end-of-sequence token included)."""
        text = self.processor.decode(generated, skip_special_tokens=True)
        self.resolve((text, len(self.input_ids), generated))

    def resolve(self, result: tuple[str, int, list[int]] | BaseException) -> None:
        def settle() -> None:
            if self.future.done():  # the client went away
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
            self.loop.call_soon_threadsafe(settle)


@dataclass
class _Stream:
    run: Callable[[], None]


@dataclass
class _Prefill:
    """Requests being prefilled on the prefill thread: (the prefilled rows, prompt tokens reused)."""

    jobs: list[_Job]
    future: Future[tuple[Prefilled, int]]

    def fail(self, err: BaseException) -> None:
        for job in self.jobs:  # a job answered already ignores this
            job.resolve(err)


def _prefill_with(batch: DecodeBatch, rows: list[Row], threads: int) -> tuple[Prefilled, int]:
    torch.set_num_threads(threads)  # this thread's own count (OpenMP: per thread)
    reused_before = batch.prefixes.reused_tokens if batch.prefixes is not None else 0
    prefilled = batch.prefill(rows)
    return prefilled, (batch.prefixes.reused_tokens if batch.prefixes is not None else 0) - reused_before


class BatchedGenerateManager(BaseGenerateManager):
    """Decodes concurrent non-streaming requests together (module docstring).

    ``grammar_of(request_id)`` tells which JSON grammar constrains a request (or None);
    ``constraints_for(model, processor)`` gives the tokenizer side of the constraints.
    """

    def __init__(
        self,
        grammar_of: Callable[[str], str | None],
        constraints_for: Callable[[Any, Any], JsonConstraints],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        linger_s: float = DEFAULT_LINGER_S,
        prefix_positions: int = DEFAULT_PREFIX_POSITIONS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._grammar_of = grammar_of
        self._constraints_for = constraints_for
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.linger_s = linger_s
        # One model per manager in practice; a store is tied to the model whose cache it holds.
        self.prefixes = PrefixStore(prefix_positions) if prefix_positions > 0 else None
        self._prefixes_model: Any = None
        self._inbox: queue.Queue[_Job | _Stream | None] = queue.Queue()
        self._held: deque[_Job | _Stream] = deque()  # taken from the inbox, not yet run
        self._stopping = False
        self.batch_sizes: list[int] = []  # requests per admission (prefill), for tests and logs
        # Prefill runs on its own thread so that new requests do not stall the rows decoding
        # (one decode step barely gains from a second core here; a prefill does): measured in
        # bench/embedded.py. The cores are split between the two threads.
        cores = torch.get_num_threads()
        self._decode_threads = max(1, cores // 2)
        self._prefill_threads = max(1, cores - self._decode_threads)
        self._prefill_pool = ThreadPoolExecutor(1, thread_name_prefix="prefill")
        self._thread = threading.Thread(target=self._serve, name="batched-generate", daemon=True)
        self._thread.start()

    # ----- the handler's side -----

    async def generate_non_streaming(self, model, processor, inputs, gen_config, request_id):  # type: ignore[no-untyped-def]
        input_ids = inputs["input_ids"]
        ids = input_ids[0].tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        loop = asyncio.get_running_loop()
        job = _Job(
            model, processor, ids, gen_config, self._grammar_of(request_id), loop, loop.create_future()
        )
        self._inbox.put(job)
        return await job.future

    def generate_streaming(self, model, processor, inputs, gen_config, request_id, response_parser=None):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        text_queue: asyncio.Queue[Any] = asyncio.Queue()
        rust_tokenizer = getattr(processor, "tokenizer", processor)._tokenizer
        streamer = DirectStreamer(rust_tokenizer, loop, text_queue, response_parser=response_parser)
        kwargs = {**inputs, "streamer": streamer, "generation_config": gen_config, "tokenizer": processor}
        grammar = self._grammar_of(request_id)
        if grammar is not None:
            constraints = self._constraints_for(model, processor)
            kwargs["logits_processor"] = LogitsProcessorList(
                [GrammarLogitsProcessor(constraints, grammar, inputs["input_ids"].shape[1])]
            )

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except _GenerationCancelled:
                loop.call_soon_threadsafe(text_queue.put_nowait, None)
            except Exception as err:  # noqa: BLE001 (reported to the client as a stream error)
                loop.call_soon_threadsafe(text_queue.put_nowait, _StreamError(str(err)))

        self._inbox.put(_Stream(run))
        return text_queue, streamer

    def stop(self) -> None:
        """Stop after the current step; requests not answered by then get an error."""
        self._stopping = True  # seen even while a full batch never looks at the inbox
        self._inbox.put(None)
        self._thread.join(timeout=5)
        self._prefill_pool.shutdown(wait=False, cancel_futures=True)

    # ----- the inference thread -----

    def _serve(self) -> None:
        torch.set_num_threads(self._decode_threads)  # this thread's own count (OpenMP: per thread)
        batch: DecodeBatch | None = None
        pending: _Prefill | None = None  # new rows going through the model beside the decode
        while not self._stopping:
            if (batch is None or not batch.rows) and pending is None:
                batch = None
                first = self._held.popleft() if self._held else self._inbox.get()
                if first is None:
                    break
                if isinstance(first, _Stream):
                    first.run()
                    continue
                if not decodable(first.gen_config):
                    self._run_alone(first)
                    continue
                batch = self._new_batch(first)
                pending = self._start_prefill(batch, [first, *self._joining(batch, 1, linger=True)])
            elif pending is None:
                assert batch is not None
                joining = self._joining(batch, 0, linger=False)
                pending = self._start_prefill(batch, joining) if joining else None
            assert batch is not None
            if pending is not None and (pending.future.done() or not batch.rows):
                self._finish_prefill(batch, pending)  # waits only when nothing else can run
                pending = None
            try:
                batch.step()
            except Exception as err:  # noqa: BLE001 (every request of the batch gets the error)
                log.exception("decoding a batch of %d requests failed", len(batch.rows))
                for row in batch.rows:
                    row.on_error(err)
                if pending is not None:  # its rows would join a batch that is gone
                    pending.fail(err)
                    pending = None
                batch = None
        stopped = RuntimeError("the generation manager stopped")
        for row in batch.rows if batch is not None else []:
            row.on_error(stopped)
        if pending is not None:
            pending.fail(stopped)
        for job in self._held:  # never started: their clients get an error, not a hang
            if isinstance(job, _Job):
                job.resolve(stopped)

    def _start_prefill(self, batch: DecodeBatch, jobs: list[_Job]) -> _Prefill:
        """Prefill ``jobs`` on the prefill thread: with the decode thread's cores left to it
        while rows are decoding, with all of them when the batch is idle."""
        rows = []
        for job in jobs:
            matcher = None
            if job.grammar is not None and batch.constraints is not None:
                matcher = TrackedMatcher(batch.constraints.matcher(job.grammar))
            rows.append(Row.of(job.input_ids, job.gen_config, matcher, job.finish, job.resolve))
        self.batch_sizes.append(len(jobs))
        threads = self._prefill_threads if batch.rows else self._decode_threads + self._prefill_threads
        future = self._prefill_pool.submit(_prefill_with, batch, rows, threads)
        return _Prefill(jobs, future)

    def _finish_prefill(self, batch: DecodeBatch, pending: _Prefill) -> None:
        """Join the prefilled rows to the batch (a failed prefill fails its own requests only)."""
        try:
            prefilled, reused = pending.future.result()
        except Exception as err:  # noqa: BLE001 (reported to those requests)
            log.exception("prefilling %d requests failed", len(pending.jobs))
            pending.fail(err)
            return
        log.info(
            "admitted %d requests (prompts %s tokens, %d of them reused) to a batch of %d",
            len(pending.jobs), [len(job.input_ids) for job in pending.jobs], reused, len(batch.rows),
        )  # fmt: skip
        batch.join(prefilled)

    def _new_batch(self, first: _Job) -> DecodeBatch:
        config = first.gen_config
        eos = (
            config.eos_token_id
            if config.eos_token_id is not None
            else first.model.generation_config.eos_token_id
        )
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        constraints = self._constraints_for(first.model, first.processor)
        if self.prefixes is not None and self._prefixes_model is not first.model:
            self.prefixes = PrefixStore(self.prefixes.max_positions)
            self._prefixes_model = first.model
        return DecodeBatch(first.model, eos_ids, constraints, self.prefixes)

    def _joining(self, batch: DecodeBatch, already: int, *, linger: bool) -> list[_Job]:
        """Waiting requests that fit in ``batch`` now (besides ``already`` admitted ones).

        Requests that cannot join (another model, generate-only, streaming, or no room) stay
        held, in order, and are looked at again after the next step.
        """
        joining: list[_Job] = []
        rows = len(batch.rows) + already
        width = batch.width
        candidates = list(self._held)
        self._held.clear()
        deadline = time.monotonic() + (self.linger_s if linger else 0.0)
        while rows + len(joining) < self.max_batch:
            if candidates:
                job = candidates.pop(0)
            else:
                try:
                    timeout = deadline - time.monotonic()
                    job = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
            if job is None:
                self._stopping = True  # after this step
                break
            fits = (
                isinstance(job, _Job)
                and job.model is batch.model
                and decodable(job.gen_config)
                and (rows + len(joining) + 1) * max(width, len(job.input_ids)) <= self.max_batch_tokens
            )
            if not fits:
                self._held.append(job)
                continue
            joining.append(job)  # type: ignore[arg-type]
            width = max(width, len(job.input_ids))
        self._held.extend(candidates)  # not looked at: the batch is full
        return joining

    def _run_alone(self, job: _Job) -> None:
        """A request the decode loop does not implement: one ``model.generate`` of its own."""
        model, processor = job.model, job.processor
        input_ids = torch.tensor([job.input_ids], dtype=torch.long, device=model.device)
        processors = LogitsProcessorList()
        if job.grammar is not None:
            constraints = self._constraints_for(model, processor)
            processors.append(GrammarLogitsProcessor(constraints, job.grammar, len(job.input_ids)))
        try:
            with torch.inference_mode():
                sequences = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=job.gen_config,
                    logits_processor=processors,
                    tokenizer=processor,
                )
            job.finish(sequences[0, len(job.input_ids) :].tolist())
        except Exception as err:  # noqa: BLE001 (reported to its client)
            log.exception("generating a request alone failed")
            job.resolve(err)
