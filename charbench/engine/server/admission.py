"""Whether a generation request is accepted: parsing, model name, context fit, queue room.

Every refusal is an :class:`~charbench.engine.openai_protocol.OpenAIError` (400 invalid,
404 unknown model, 429 queue full, 503 engine unavailable) and is counted in the
server's rejection counters, which ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from charbench.engine.api import SamplingParams
from charbench.engine.openai_protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, parse_request
from charbench.engine.server.generation import Generation, map_engine_error
from charbench.engine.server.state import ServerState


@contextlib.contextmanager
def _counted_invalid(state: ServerState) -> Iterator[None]:
    """Count an OpenAIError raised inside as an invalid request, and let it through."""
    try:
        yield
    except OpenAIError:
        state.counters.rejected_invalid_total += 1
        raise


def parse(state: ServerState, model: type, body: bytes) -> Any:
    """Parse a request body into ``model`` (400 with the field named when it does not fit).

    Args:
        state: the server state (counts the refusal).
        model: the pydantic request model.
        body: the raw request body.

    Returns:
        The parsed request.
    """
    with _counted_invalid(state):
        return parse_request(model, body)


def check_model(state: ServerState, model: str | None) -> None:
    """Refuse (404) a request naming a model this server does not serve.

    Args:
        state: the server state (holds the served names).
        model: the request's ``model`` field, or None when absent.
    """
    if model is not None and model not in state.served_names:
        raise OpenAIError(
            f"model: '{model}' is not served here; use one of {state.served_names}",
            status_code=404,
            param="model",
            code="model_not_found",
        )


def fit_to_context(
    state: ServerState, prompt_ids: list[int], params: SamplingParams, max_tokens_given: bool
) -> None:
    """Refuse prompts that do not fit; shrink a defaulted max_tokens to what fits.

    Args:
        state: the server state (holds the context length).
        prompt_ids: the prompt's token ids.
        params: sampling parameters (``max_tokens``/``min_tokens`` may be lowered).
        max_tokens_given: the client set the output length (then it is not shrunk).
    """
    limit = state.max_model_len
    n = len(prompt_ids)
    if n >= limit:
        raise OpenAIError(
            f"prompt: this model's maximum context length is {limit} tokens, but the prompt "
            f"has {n} tokens (at least 1 output token is needed); shorten the prompt",
            param="prompt",
            code="context_length_exceeded",
        )
    if n + params.max_tokens > limit:
        if not max_tokens_given:
            params.max_tokens = limit - n
            params.min_tokens = min(params.min_tokens, params.max_tokens)
            return
        raise OpenAIError(
            f"max_tokens: this model's maximum context length is {limit} tokens, but "
            f"{n + params.max_tokens} were requested ({n} in the prompt, {params.max_tokens} "
            f"for the completion); lower max_tokens to at most {limit - n} or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )


def sampling_params(
    state: ServerState,
    req: CompletionRequest | ChatCompletionRequest,
    prompt_ids: list[int],
    default_max_tokens: int,
) -> SamplingParams:
    """The request's sampling parameters, checked and fitted to the model's context.

    Args:
        state: the server state (tokenizer, context length, counters).
        req: the parsed request.
        prompt_ids: the prompt's token ids.
        default_max_tokens: the output length when the request sets none.

    Returns:
        Sampling parameters whose ``max_tokens`` fits the context.
    """
    with _counted_invalid(state):
        params = req.sampling_params(default_max_tokens, getattr(state.tokenizer, "vocab_size", None))
    max_given = (req.max_completion_tokens if isinstance(req, ChatCompletionRequest) else None) is not None or (
        req.max_tokens is not None
    )
    with _counted_invalid(state):
        fit_to_context(state, prompt_ids, params, max_given)
    return params


async def admit(
    state: ServerState, prompt_ids: list[int], params: SamplingParams, request_id: str, t0: float
) -> Generation:
    """Start a generation or raise 429/503; surfaces an immediate engine refusal as 4xx.

    Args:
        state: the server state (engine, queue bound, counters).
        prompt_ids: the prompt's token ids.
        params: checked sampling parameters.
        request_id: the id the client sees.
        t0: ``perf_counter`` time the HTTP handler got the request.

    Returns:
        The started generation.
    """
    reason = state.engine_unavailable_reason()
    if reason is not None:
        state.counters.rejected_unavailable_total += 1
        raise OpenAIError(reason, status_code=503, type="service_unavailable", code="engine_unavailable")
    waiting = int(state.engine.num_waiting) + state.starting
    if waiting >= state.max_queue:
        state.counters.rejected_queue_full_total += 1
        raise OpenAIError(
            f"server overloaded: {waiting} requests waiting (max_queue={state.max_queue}); retry later",
            status_code=429,
            type="rate_limit_error",
            code="queue_full",
        )
    gen = Generation(state, prompt_ids, params, request_id, t0)
    await asyncio.sleep(0)  # let the request reach the engine (and fail fast if refused)
    exc = gen.early_error()
    if exc is not None:
        gen.close()
        raise map_engine_error(state, exc)
    return gen
