"""One request's generation: its lifecycle in the engine, and how its outputs reach the client.

:class:`Generation` starts the request in the engine and aborts it when it is given up;
:func:`collect` waits for a non-streaming answer (aborting it if the client leaves),
:func:`stream_events` turns the outputs into SSE events, and :func:`map_engine_error`
turns an engine failure of this one request into an OpenAI-shaped HTTP error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from charbench.engine.api import RequestOutput, SamplingParams
from charbench.engine.openai_protocol import ChunkWriter, OpenAIError
from charbench.engine.server.state import ServerState
from charbench.errors import ConfigError

logger = logging.getLogger("charbench.server")


class Generation:
    """One request's generation in the engine.

    The engine's async generator is started at once in a small task that waits for the
    first output, so the request is registered with the engine (and counted in its
    queue) before the HTTP handler goes on, and an immediate refusal (prompt too long,
    queue full) can still become a 4xx status. Later outputs are read directly by the
    response (no extra task or queue per token). ``close()`` aborts an unfinished
    request in the engine, which frees its KV blocks.

    Args:
        state: the server state (engine, counters, kept records).
        prompt: prompt token ids.
        params: sampling parameters.
        request_id: the id the client sees (``cmpl-...``/``chatcmpl-...``).
        server_arrival_time_s: ``perf_counter`` time the HTTP handler got the request.
    """

    def __init__(
        self,
        state: ServerState,
        prompt: list[int],
        params: SamplingParams,
        request_id: str,
        server_arrival_time_s: float,
    ) -> None:
        self.state = state
        self.request_id = request_id
        self.server_arrival_time_s = server_arrival_time_s
        self.agen = state.engine.generate(prompt, params, request_id)
        self.last: RequestOutput | None = None
        self.finished = False  # the engine is done with the request (last output or error)
        self.aborted_by_client = False
        self._started = False
        self._released = False
        state.starting += 1
        self.first = asyncio.get_running_loop().create_task(self._first_output(), name=f"gen-{request_id}")
        self.first.add_done_callback(_retrieve_exception)

    async def _first_output(self) -> RequestOutput:
        st = self.state
        # Counted in `starting` until here; generate() registers the request with the engine
        # before its first suspension, in this same step, so admission never misses it.
        self._started = True
        st.starting -= 1
        st.in_flight += 1
        return await self._next("the engine ended a request without any output")

    async def _next(self, ended_early: str) -> RequestOutput:
        """The engine's next output; marks the request finished when the stream ends or fails."""
        try:
            out = await self.agen.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise RuntimeError(ended_early) from None
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.finished = True
            raise
        self._seen(out)
        return out

    def _seen(self, out: RequestOutput) -> None:
        self.last = out
        if out.finished:
            self.finished = True
            self._release()

    def early_error(self) -> BaseException | None:
        """The engine's exception if it refused the request right away."""
        if self.first.done() and not self.first.cancelled():
            return self.first.exception()
        return None

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Every output in order, up to the finished one; raises the engine's exception."""
        out = await self.first
        yield out
        while not self.finished:
            yield await self._next("the engine ended a request without a finished output")

    def close(self, client_gone: bool = False) -> None:
        """Abort the request in the engine unless it finished (idempotent).

        A consumer blocked in ``outputs()`` must be cancelled by the caller; its
        cancellation reaches the engine generator, which aborts the request.

        Args:
            client_gone: the client disconnected (counted as a client abort when unfinished).
        """
        if self._released:
            return
        if not self._started:  # the first-output task never ran: nothing reached the engine
            self._started = True
            self.state.starting -= 1
            self.first.cancel()
            self._released = True
            return
        if not self.finished:
            if client_gone:
                self.aborted_by_client = True
                self.state.counters.client_aborts_total += 1
            if not self.first.done():
                self.first.cancel()
            elif not self.agen.ag_running:
                # suspended at a yield: closing runs the engine's abort in its finally
                asyncio.get_running_loop().create_task(self.agen.aclose())
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.state.in_flight -= 1
            self.state.remember(self)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen (it is re-raised to whoever awaits the task), so a
    request abandoned before reading it does not log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


def map_engine_error(state: ServerState, exc: BaseException) -> OpenAIError:
    """Translate an exception raised by the engine for one request.

    Args:
        state: the server state (its rejection counters are incremented).
        exc: what the engine raised.

    Returns:
        The OpenAI error to answer with: 429 queue full, 503 engine unavailable, 500 for
        this request alone or an unexpected engine error, 400 for an invalid request.
    """
    if isinstance(exc, OpenAIError):
        return exc
    # Matched by name so this module does not import the engine (and torch).
    names = {c.__name__ for c in type(exc).__mro__}
    if "QueueFullError" in names:
        state.counters.rejected_queue_full_total += 1
        return OpenAIError(
            f"server overloaded: {exc}", status_code=429, type="rate_limit_error", code="queue_full"
        )
    if "EngineDeadError" in names:
        state.counters.rejected_unavailable_total += 1
        return OpenAIError(str(exc), status_code=503, type="service_unavailable", code="engine_unavailable")
    if "RequestFailedError" in names:  # this request alone; the engine logged it with its id
        return OpenAIError(str(exc), status_code=500, type="internal_error", code="request_failed")
    if isinstance(exc, (ConfigError, ValueError)):  # PromptTooLongError is a ConfigError
        state.counters.rejected_invalid_total += 1
        # SamplingParamsError names its field
        param = getattr(exc, "param", None) or ("prompt" if "prompt" in str(exc).lower() else None)
        return OpenAIError(str(exc), param=param)
    reason = state.engine_unavailable_reason()
    if reason is not None:
        return OpenAIError(reason, status_code=503, type="service_unavailable", code="engine_unavailable")
    logger.exception("engine error", exc_info=exc)
    return OpenAIError(
        f"internal engine error: {type(exc).__name__}: {exc}",
        status_code=500,
        type="internal_error",
        code="engine_error",
    )


class ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (body already consumed)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def collect(gen: Generation, request: Request) -> RequestOutput:
    """Wait for a non-streaming generation's last output, aborting it if the client leaves.

    Args:
        gen: the admitted generation.
        request: the HTTP request (watched for a disconnect).

    Returns:
        The finished output.

    Raises:
        ClientGone: the client disconnected first (the request was aborted).
    """

    async def consume() -> RequestOutput:
        final: RequestOutput | None = None
        async for out in gen.outputs():
            final = out
        assert final is not None
        return final

    work = asyncio.ensure_future(consume())
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()  # its cancellation reaches the engine generator: abort
        gen.close(client_gone=True)
        raise ClientGone()
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()


class SSEResponse(StreamingResponse):
    """StreamingResponse that always releases its generation, even if never iterated.

    Args:
        content: the SSE events.
        on_close: called once the response is done or abandoned.
        headers: response headers.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def stream_events(
    state: ServerState, gen: Generation, writer: ChunkWriter, prompt_tokens: int
) -> AsyncIterator[str]:
    """The SSE events of one streaming response: one event per engine output.

    Args:
        state: the server state (for mapping an engine failure).
        gen: the admitted generation.
        writer: formats the chunks of this completion or chat completion.
        prompt_tokens: prompt length, for the usage chunk.

    Yields:
        SSE event text; the last event carries ``data: [DONE]``.
    """
    completed = False
    try:
        if writer.kind == "chat":
            yield writer.role_chunk()
        try:
            async for out in gen.outputs():
                if out.finished:
                    # last event, usage and [DONE] in one write
                    completed = True
                    tail = writer.usage_chunk(prompt_tokens, len(out.token_ids)) if writer.include_usage else ""
                    yield writer.text_chunk(out.new_text, out.finish_reason) + tail + ChunkWriter.DONE
                elif out.new_token_ids or out.new_text:
                    yield writer.text_chunk(out.new_text, None)
        except Exception as exc:  # the engine failed the request after the stream started
            completed = True
            yield ChunkWriter.error_event(map_engine_error(state, exc)) + ChunkWriter.DONE
    finally:
        # Closed early (client gone, or the send failed): abort the request in the engine.
        gen.close(client_gone=not completed)
