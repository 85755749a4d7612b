"""``transformers serve`` that honours ``response_format``: the embedded endpoint's server.

``transformers serve`` (5.x) lists ``response_format`` among the fields it ignores and
passes no logits processor to generation, so a structured request to the embedded model got
free text: SmolLM2-135M's replies then failed to parse in every stage. This module serves
the same FastAPI app, built from the same parts (``transformers.cli.serving``), with small
subclasses that constrain decoding by the request's JSON schema (``synth.llm.grammar``,
llguidance) and batch concurrent requests on CPUs:

* ``ConstrainedChatCompletionHandler`` reads ``response_format``, compiles it (400 with the
  compiler's message when it cannot be enforced) and binds the grammar to the request id for
  the duration of the request;
* ``ConstrainedGenerationState`` builds the tokenizer side of the constraints once, from the
  served model's own tokenizer, and hands out the generation managers below;
* ``BatchedGenerateManager`` (``synth.llm.batched_generation``; the default, ``--batch-size``
  requests at once) decodes concurrent requests in one running batch, each row masked by its
  own grammar;
* ``ConstrainedCBGenerateManager`` (``--continuous-batching``, for GPUs) puts one
  ``GrammarCBLogitsProcessor`` at the head of the batch's logits processors. It finds each
  batch row's request id, keeps a matcher per constrained request, and masks only those rows:
  constrained and free requests share a batch, so continuous batching stays on.

Everything else (routes, model loading, chat templates, and sampling under continuous batching)
is transformers' own code.
The points where we rely on transformers internals are exercised by
``tests/synth/llm/test_constrained_server.py`` against a real (tiny) model, so an upgrade
that moves them fails a test instead of silently dropping the constraint.

Run: ``python -m synth.llm.constrained_server MODEL_DIR --host 127.0.0.1 --port 8010
--device cpu --batch-size 8`` (``synth.llm.embedded`` does), or with ``--continuous-batching
--cb-num-blocks N --cb-max-batch-tokens M`` on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import ContinuousBatchingConfig, LogitsProcessorList
from transformers.cli.serving.chat_completion import UNUSED_CHAT_COMPLETION_FIELDS, ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.systemone import SystemOneHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import (
    BaseGenerateManager,
    CBGenerateManager,
    GenerationState,
)
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

from synth.llm.batched_generation import DEFAULT_PREFIX_POSITIONS, BatchedGenerateManager
from synth.llm.grammar import (
    JsonConstraints,
    TrackedMatcher,
    UnsupportedResponseFormat,
    apply_token_bitmask,
    fill_mask,
    grammar_for,
)

GRACEFUL_SHUTDOWN_S = 5  # after SIGTERM: requests still running then are cancelled

# --------------------------------------------------------------------------------------
# Logits processors
# --------------------------------------------------------------------------------------


class GrammarCBLogitsProcessor(ContinuousBatchingLogitsProcessor):
    """Continuous-batching processor: masks the rows of constrained requests, leaves the rest.

    The batch loop calls ``prepare_tensor_args`` with the requests that get a new token, in
    the order of the logits rows, then ``__call__`` with the scores. We look each request's
    grammar up by its request id (``JsonConstraints.grammar_of``), bring its matcher up to
    date with the tokens generated so far, compute its mask into a bitmask row and pass the
    row numbers as this processor's tensor argument (-1: unconstrained).
    """

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, state: ConstrainedGenerationState) -> None:
        self._state = state
        self._tracked: dict[str, TrackedMatcher] = {}
        self._bitmask = torch.zeros((0, 0), dtype=torch.int32)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        rows = torch.full((len(requests_with_new_token),), -1, dtype=torch.int32)
        constraints = self._state.constraints
        if constraints is None:
            return rows
        if self._bitmask.shape[0] < len(requests_with_new_token):
            self._bitmask = torch.zeros(
                (len(requests_with_new_token), constraints.mask_words), dtype=torch.int32
            )
        for row, future in enumerate(requests_with_new_token):
            state = future.state
            grammar = constraints.grammar_of(state.request_id)
            if grammar is None:
                continue
            tracked = self._tracked.get(state.request_id)
            if tracked is None:
                tracked = self._tracked[state.request_id] = TrackedMatcher(constraints.matcher(grammar))
            # The library's own view of "generated so far" (it also covers a request whose
            # cache was offloaded and re-prefilled with its generated tokens as prompt).
            tracked.advance(state.to_generation_output().generated_tokens)
            fill_mask(constraints, tracked, self._bitmask, row)
            rows[row] = row
        for request_id in [r for r in self._tracked if constraints.grammar_of(r) is None]:
            del self._tracked[request_id]  # finished: its handler unbound it
        return rows

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        rows = tensor_arg[: scores.size(0)]
        constrained = (rows >= 0).nonzero().squeeze(-1)
        if constrained.numel() == 0:
            return scores
        masks = self._bitmask[rows[constrained].long()]
        scores[constrained] = apply_token_bitmask(scores[constrained], masks)
        return scores


def install_cb_processor(cb_manager: Any, processor: GrammarCBLogitsProcessor) -> None:
    """Put ``processor`` first in a ``ContinuousBatchingManager``'s logits processors.

    Must run before ``cb_manager.start()``: the batch processor sizes its argument tensors
    from ``tensors_required`` when the generation thread starts. First, so the mask sees raw
    scores (top-k/top-p after it keep only allowed tokens). Idempotent.
    """
    processors = cb_manager.logit_processor
    if any(isinstance(p, GrammarCBLogitsProcessor) for p in processors.logits_processor):
        return
    processors.logits_processor = LogitsProcessorList([processor, *processors.logits_processor])
    processors.tensors_required += 1  # one int32 row per batch: our bitmask row numbers
    processors.do_processing = True


# --------------------------------------------------------------------------------------
# Generation managers and state
# --------------------------------------------------------------------------------------


class ConstrainedCBGenerateManager(CBGenerateManager):
    """Continuous batching with ``GrammarCBLogitsProcessor`` installed before the loop starts."""

    def __init__(self, cb_config: ContinuousBatchingConfig | None, state: ConstrainedGenerationState) -> None:
        super().__init__(cb_config=cb_config)
        self._state = state

    def init_cb(self, model: Any, gen_config: Any) -> None:
        if self._cb is not None:
            return
        cb = model.init_continuous_batching(
            generation_config=gen_config, continuous_batching_config=self._cb_config
        )
        install_cb_processor(cb, GrammarCBLogitsProcessor(self._state))
        cb.start()
        self._cb = cb


class ConstrainedGenerationState(GenerationState):
    """``GenerationState`` handing out the constrained managers; owns the ``JsonConstraints``."""

    def __init__(
        self, *args: Any, batch_size: int = 1, prefix_positions: int = DEFAULT_PREFIX_POSITIONS, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size
        self.prefix_positions = prefix_positions
        self.constraints: JsonConstraints | None = None
        self._constraints_lock = threading.Lock()
        self._batched_managers: dict[str, BatchedGenerateManager] = {}

    def grammar_of(self, request_id: str) -> str | None:
        """The JSON grammar bound to ``request_id`` (None: unconstrained)."""
        return self.constraints.grammar_of(request_id) if self.constraints is not None else None

    def constraints_for(self, model: Any, processor: Any) -> JsonConstraints:
        """The server's ``JsonConstraints``, built from the served model on first use."""
        with self._constraints_lock:
            if self.constraints is None:
                tokenizer = getattr(processor, "tokenizer", processor)
                eos = model.generation_config.eos_token_id
                eos_ids = (
                    eos if isinstance(eos, list) else [eos] if eos is not None else [tokenizer.eos_token_id]
                )
                vocab_size = model.get_output_embeddings().weight.shape[0]
                self.constraints = JsonConstraints(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_ids)
            return self.constraints

    def get_manager(self, model_id: str, use_cb: bool = False) -> BaseGenerateManager:
        # GenerationState.get_manager with our manager classes (one CB manager, one
        # batching manager per model).
        if use_cb:
            if self._cb_model_id != model_id and self._cb_manager is not None:
                self._cb_manager.stop()
                self._cb_manager = None
            if self._cb_manager is None:
                self._cb_manager = ConstrainedCBGenerateManager(self._cb_config, self)
                self._cb_model_id = model_id
            return self._cb_manager
        if model_id not in self._batched_managers:
            self._batched_managers[model_id] = BatchedGenerateManager(
                self.grammar_of,
                self.constraints_for,
                max_batch=self.batch_size,
                prefix_positions=self.prefix_positions,
            )
        return self._batched_managers[model_id]

    def shutdown(self) -> None:
        super().shutdown()
        for manager in self._batched_managers.values():
            manager.stop()
        self._batched_managers.clear()


# --------------------------------------------------------------------------------------
# The chat handler
# --------------------------------------------------------------------------------------


class ConstrainedChatCompletionHandler(ChatCompletionHandler):
    """``/v1/chat/completions`` with ``response_format`` enforced (see the module docstring)."""

    _unused_fields = UNUSED_CHAT_COMPLETION_FIELDS - {"response_format"}
    generation_state: ConstrainedGenerationState

    async def handle_request(self, body: dict, request_id: str) -> StreamingResponse | JSONResponse:
        try:
            grammar = grammar_for(body.pop("response_format", None))
        except UnsupportedResponseFormat as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if grammar is None:
            return await super().handle_request(body, request_id)
        _, model, processor = self._resolve_model(dict(body))  # loaded once, then cached
        constraints = await asyncio.to_thread(self.generation_state.constraints_for, model, processor)
        try:
            await asyncio.to_thread(constraints.check, grammar)
        except UnsupportedResponseFormat as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        constraints.bind(request_id, grammar)
        try:
            response = await super().handle_request(body, request_id)
        except BaseException:
            constraints.unbind(request_id)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _unbind_when_done(response.body_iterator, constraints, request_id)
        else:
            constraints.unbind(request_id)
        return response


async def _unbind_when_done(
    body: AsyncIterator[Any], constraints: JsonConstraints, request_id: str
) -> AsyncIterator[Any]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        constraints.unbind(request_id)


# --------------------------------------------------------------------------------------
# The app and its command line
# --------------------------------------------------------------------------------------


def build_app(
    model: str,
    *,
    device: str = "cpu",
    continuous_batching: bool = False,
    cb_num_blocks: int | None = None,
    cb_max_batch_tokens: int | None = None,
    batch_size: int = 1,
    prefix_positions: int = DEFAULT_PREFIX_POSITIONS,
) -> FastAPI:
    """The ``transformers serve`` app pinned to ``model``, with the constrained chat handler.

    Mirrors what ``transformers.cli.serve.Serve`` assembles for the options the embedded
    endpoint uses; the other routes keep transformers' handlers (sharing our state).
    """
    model_manager = ModelManager(device=device, continuous_batching=continuous_batching, force_model=model)
    cb_config = None
    if cb_num_blocks is not None or cb_max_batch_tokens is not None:
        cb_config = ContinuousBatchingConfig(num_blocks=cb_num_blocks, max_batch_tokens=cb_max_batch_tokens)
    state = ConstrainedGenerationState(
        continuous_batching=continuous_batching,
        compile=False,
        cb_config=cb_config,
        batch_size=batch_size,
        prefix_positions=prefix_positions,
    )
    app = build_server(
        model_manager,
        ConstrainedChatCompletionHandler(model_manager=model_manager, generation_state=state),
        completion_handler=CompletionHandler(model_manager=model_manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=model_manager, generation_state=state),
        transcription_handler=TranscriptionHandler(model_manager, state),
        systemone_handler=SystemOneHandler(model_manager=model_manager, generation_state=state),
        generation_state=state,
    )
    # The server's lifespan unloads models but leaves a continuous-batching thread running;
    # whoever stops the server calls ``app.state.generation_state.shutdown()``.
    app.state.generation_state = state
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; the flags are the ``transformers serve`` ones the launcher uses."""
    parser = argparse.ArgumentParser(
        prog="python -m synth.llm.constrained_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", help="model directory (or hub id) to serve; requests may only name this one")
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=8010, help="listen port")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--continuous-batching", action="store_true", help="batch concurrent requests (paged attention)"
    )
    parser.add_argument(
        "--cb-num-blocks", type=int, default=None, help="KV cache blocks of continuous batching"
    )
    parser.add_argument(
        "--cb-max-batch-tokens", type=int, default=None, help="most tokens in one continuous-batching forward"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="without --continuous-batching: most concurrent requests in one model.generate (1: one at a time)",
    )
    parser.add_argument(
        "--prefix-cache-positions",
        type=int,
        default=DEFAULT_PREFIX_POSITIONS,
        help="without --continuous-batching: KV positions of finished sequences kept to reuse shared prompt prefixes (0: off)",
    )
    parser.add_argument("--log-level", default="warning", help="transformers log level")
    args = parser.parse_args(argv)

    import uvicorn
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers").setLevel(hf_logging.log_levels[args.log_level.lower()])
    # One line per batch (size, prompt and reply lengths, seconds) in the server's log.
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("synth.llm.batched_generation").setLevel(logging.INFO)
    app = build_app(
        args.model,
        device=args.device,
        continuous_batching=args.continuous_batching,
        cb_num_blocks=args.cb_num_blocks,
        cb_max_batch_tokens=args.cb_max_batch_tokens,
        batch_size=args.batch_size,
        prefix_positions=args.prefix_cache_positions,
    )
    try:
        # Without a bound, SIGTERM (a stopped or killed run: the launcher's parent-death signal)
        # waits for every request in flight and queued behind it: minutes of decoding for
        # clients that are gone, on the cores the next run needs.
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="info",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    finally:
        app.state.generation_state.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
