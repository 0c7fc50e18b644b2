"""OpenAI-compatible HTTP server for the built-in engine.

Start it from the command line::

    charbench serve --model tiny --port 8000

or in process (tests, serve-sweep)::

    from charbench.engine.server import build_app, BackgroundServer
    app = build_app(engine, manage_engine=True)     # engine: an AsyncLLMEngine
    with BackgroundServer(app) as srv:              # uvicorn in a thread, free loopback port
        httpx.get(srv.url + "/health")

Endpoints:

``POST /v1/completions``, ``POST /v1/chat/completions``
    OpenAI-compatible, streaming (SSE ``data: {...}`` events ending with ``data: [DONE]``)
    and non-streaming. See :mod:`charbench.engine.openai_protocol` for the accepted
    fields. Streams send one event per engine output (one per generated token, even when
    its text is empty, e.g. half of a UTF-8 character), so client-side inter-token gaps
    line up with the server's ``token_times_s``.
``GET /v1/models``, ``GET /health``
    Model list; 200 ``{"status": "ok"}`` while the engine runs, 503 once it is shutting
    down or dead. Each model says ``"weights": "random"|"checkpoint"`` (null when the
    engine does not say), ``"chat_template": "checkpoint"|"fallback"`` and ``"warnings"``
    (e.g. that random weights produce meaningless text; see :mod:`charbench.engine.labels`).
``GET /metrics``
    Prometheus text exposition (version 0.0.4) of the engine counters plus server
    counters (rejections, client aborts).
``GET /v1/charbench/records?ids=ID1,ID2``
    Server-side timing of finished requests, keyed by the response ``id``
    (``cmpl-...``/``chatcmpl-...``, also sent as the ``X-Request-Id`` header): every
    :class:`~charbench.engine.api.RequestRecord` field plus ``ttft_ms``, ``e2el_ms``,
    ``tpot_ms``, ``itl_ms`` and ``server_arrival_time_s`` (when the HTTP handler got the
    request; the engine's ``arrival_time_s`` is when the request entered the engine).
    Times are the server process's ``perf_counter`` seconds: compare durations with
    client measurements, not absolute times. Without ``ids`` the latest ``limit``
    (default 1000) records are returned. Records of the latest 50 000 requests are kept.

Limits (:mod:`charbench.engine.http_limits`): a body over ``max_body_bytes`` (default
16 MiB) gets 413 without being read whole; a connection whose request head is not
complete within ``header_timeout_s`` (default 10 s) gets 408 and is closed. Every error,
including a malformed query parameter (``?limit=abc``: 400, ``param`` ``limit``), has the
OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.

Admission: a request is refused with 429 when the engine already has ``max_queue``
waiting requests, with 503 when the engine is shutting down or dead, and with 400 when
the prompt (plus ``max_tokens``) does not fit the model's context. A client that
disconnects has its request cancelled, which aborts it in the engine and frees its KV
blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from charbench.engine.api import EngineConfig, RequestOutput, RequestRecord, SamplingParams
from charbench.engine.http_limits import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_MB,
    MIB,
    BodyLimitMiddleware,
    body_limit_bytes,
    check_header_timeout,
    header_timeout_protocol,
)
from charbench.engine.labels import engine_labels
from charbench.engine.openai_protocol import (
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    OpenAIError,
    chat_response,
    completion_response,
    new_id,
    parse_request,
    render_chat,
)
from charbench.errors import ConfigError

logger = logging.getLogger("charbench.server")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class ServerCounters:
    """Server-side counters exported on /metrics."""

    rejected_queue_full_total: int = 0
    rejected_unavailable_total: int = 0
    rejected_invalid_total: int = 0
    client_aborts_total: int = 0
    requests_total: int = 0


class _ServerState:
    """Everything the endpoints share: the engine, limits, records and counters."""

    def __init__(
        self, engine: Any, max_queue: int, served_names: list[str], records_capacity: int
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.served_names = served_names
        self.model_name = served_names[0]
        self.records: OrderedDict[str, tuple[RequestRecord, float, bool]] = OrderedDict()
        self.records_capacity = records_capacity
        self.counters = ServerCounters()
        self.starting = 0  # generations created whose task has not registered with the engine yet
        self.in_flight = 0
        self.shutting_down = False

    # ---- engine facts (read lazily: the engine may finish loading after build_app)
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    def engine_unavailable_reason(self) -> str | None:
        """Why the engine cannot take requests now, or None when it can."""
        if self.shutting_down:
            return "the server is shutting down"
        eng = self.engine
        for attr in ("errored", "is_dead", "dead"):
            if getattr(eng, attr, False) is True:
                err = getattr(eng, "dead_error", None) or getattr(eng, "error", None)
                return "the engine has stopped" + (f": {err}" if err else "")
        running = getattr(eng, "is_running", None)
        if running is False:
            return "the engine is not running"
        return None

    def remember(self, gen: _Generation) -> None:
        """Keep a finished or aborted request's record for /v1/charbench/records.

        The record object is kept as is (converted to JSON only when asked for), so the
        hot path costs one dict insert.
        """
        if gen.last is None:
            return
        self.records[gen.request_id] = (gen.last.record, gen.server_arrival_time_s, gen.aborted_by_client)
        if len(self.records) > self.records_capacity:
            self.records.popitem(last=False)

    def record_json(self, request_id: str) -> dict[str, Any]:
        """One kept record as a JSON-ready dict (fields + derived latencies)."""
        rec, arrival, aborted = self.records[request_id]
        data = dataclasses.asdict(rec)
        data["request_id"] = request_id
        data["engine_request_id"] = rec.request_id
        data["ttft_ms"] = rec.ttft_ms
        data["e2el_ms"] = rec.e2el_ms
        data["tpot_ms"] = rec.tpot_ms
        data["itl_ms"] = rec.itl_ms
        data["server_arrival_time_s"] = arrival
        data["aborted_by_client"] = aborted
        return data


class _Generation:
    """One request's generation in the engine.

    The engine's async generator is started at once in a small task that waits for the
    first output, so the request is registered with the engine (and counted in its
    queue) before the HTTP handler goes on, and an immediate refusal (prompt too long,
    queue full) can still become a 4xx status. Later outputs are read directly by the
    response (no extra task or queue per token). ``close()`` aborts an unfinished
    request in the engine, which frees its KV blocks.
    """

    def __init__(
        self,
        state: _ServerState,
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


def _map_engine_error(state: _ServerState, exc: BaseException) -> OpenAIError:
    """Translate an exception raised by the engine for one request."""
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


# --------------------------------------------------------------------------- admission


def _check_model(state: _ServerState, model: str | None) -> None:
    if model is not None and model not in state.served_names:
        raise OpenAIError(
            f"model: '{model}' is not served here; use one of {state.served_names}",
            status_code=404,
            param="model",
            code="model_not_found",
        )


def _fit_to_context(
    state: _ServerState, prompt_ids: list[int], params: SamplingParams, max_tokens_given: bool
) -> None:
    """Refuse prompts that do not fit; shrink a defaulted max_tokens to what fits."""
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


async def _admit(
    state: _ServerState, prompt_ids: list[int], params: SamplingParams, request_id: str, t0: float
) -> _Generation:
    """Start a generation or raise 429/503; surfaces an immediate engine refusal as 4xx."""
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
    gen = _Generation(state, prompt_ids, params, request_id, t0)
    await asyncio.sleep(0)  # let the request reach the engine (and fail fast if refused)
    exc = gen.early_error()
    if exc is not None:
        gen.close()
        raise _map_engine_error(state, exc)
    return gen


class _ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (body already consumed)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _collect(gen: _Generation, request: Request) -> RequestOutput:
    """Wait for a non-streaming generation's last output, aborting it if the client leaves."""

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
        raise _ClientGone()
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()


class _SSEResponse(StreamingResponse):
    """StreamingResponse that always releases its generation, even if never iterated."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _stream_events(
    state: _ServerState, gen: _Generation, writer: ChunkWriter, prompt_tokens: int
) -> AsyncIterator[str]:
    """The SSE events of one streaming response: one event per engine output."""
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
            yield ChunkWriter.error_event(_map_engine_error(state, exc)) + ChunkWriter.DONE
    finally:
        # Closed early (client gone, or the send failed): abort the request in the engine.
        gen.close(client_gone=not completed)


# --------------------------------------------------------------------------- metrics


def _metrics_text(state: _ServerState) -> str:
    """Prometheus text exposition of engine and server counters."""
    s = state.engine.stats()
    label = '{model_name="' + state.model_name.replace("\\", "\\\\").replace('"', '\\"') + '"}'
    rows: list[tuple[str, str, str, float]] = [
        ("charbench_num_requests_waiting", "gauge", "Requests waiting to be scheduled.", s.num_waiting),
        ("charbench_num_requests_running", "gauge", "Requests in the running batch.", s.num_running),
        ("charbench_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use (0-1).", s.kv_cache_usage),
        ("charbench_kv_cache_blocks_used", "gauge", "KV-cache blocks in use.", s.kv_blocks_used),
        ("charbench_kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", s.kv_blocks_total),
        ("charbench_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens_total),
        ("charbench_generation_tokens_total", "counter", "Output tokens generated.", s.generation_tokens_total),
        ("charbench_num_preemptions_total", "counter", "Sequences preempted.", s.preemptions_total),
        ("charbench_requests_finished_total", "counter", "Requests finished (any reason).", s.requests_finished_total),
        ("charbench_server_requests_in_flight", "gauge", "HTTP generations in flight.", state.in_flight),
        ("charbench_server_requests_total", "counter", "Generation requests received.", state.counters.requests_total),
        ("charbench_server_client_aborts_total", "counter", "Requests aborted because the client disconnected.",
         state.counters.client_aborts_total),
    ]
    out: list[str] = []
    for name, kind, help_, value in rows:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name}{label} {float(value)!r}\n")
    name = "charbench_server_requests_rejected_total"
    out.append(f"# HELP {name} Requests refused (queue full, engine unavailable or dead, invalid request).\n# TYPE {name} counter\n")
    c = state.counters
    for reason, value in (
        ("queue_full", c.rejected_queue_full_total),
        ("unavailable", c.rejected_unavailable_total),
        ("invalid", c.rejected_invalid_total),
    ):
        out.append(f'{name}{label[:-1]},reason="{reason}"}} {float(value)!r}\n')
    return "".join(out)


# --------------------------------------------------------------------------- app


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def build_app(
    engine: Any,
    *,
    max_queue: int | None = None,
    served_model_name: str | None = None,
    manage_engine: bool = False,
    records_capacity: int = 50_000,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * MIB),
) -> FastAPI:
    """Build the FastAPI app serving ``engine``.

    Args:
        engine: an ``AsyncLLMEngine`` (or anything with its interface: ``generate``,
            ``stats``, ``num_waiting``, ``tokenizer``, ``model_config``, ``max_model_len``).
        max_queue: refuse with 429 when this many requests wait; default: the engine
            config's ``max_queue`` (``engine.cfg``/``engine.config``) or 1024.
        served_model_name: the name in responses and ``/v1/models``; default
            ``engine.model_config.name``. Requests may also name the engine config's
            ``model`` string (preset name or checkpoint path).
        manage_engine: call ``engine.start()`` on app startup and ``engine.shutdown()`` on
            app shutdown (inside the server's event loop).
        records_capacity: how many request records ``/v1/charbench/records`` keeps.
        max_body_bytes: larger request bodies get 413 (counted as they arrive).

    Raises:
        ConfigError: ``max_queue`` or ``max_body_bytes`` below 1.
    """
    cfg = getattr(engine, "cfg", None) or getattr(engine, "config", None)
    if max_queue is None:
        max_queue = int(getattr(cfg, "max_queue", 1024) or 1024)
    if max_queue < 1:
        raise ConfigError(f"--max-queue: must be >= 1, got {max_queue}")
    names = [served_model_name or str(engine.model_config.name)]
    cfg_model = getattr(cfg, "model", None)
    if isinstance(cfg_model, str) and cfg_model not in names:
        names.append(cfg_model)
    state = _ServerState(engine, max_queue, names, records_capacity)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await _maybe_await(engine.start())
        try:
            yield
        finally:
            state.shutting_down = True
            if manage_engine:
                await _maybe_await(engine.shutdown())

    app = FastAPI(title="charbench engine", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.charbench = state
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes: must be >= 1, got {max_body_bytes} (--max-body-mb sets it in MiB)")
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status_code in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = OpenAIError(str(exc.detail), status_code=exc.status_code, code=str(exc.status_code))
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        reason = state.engine_unavailable_reason()
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": state.model_name,
                        "object": "model",
                        "created": int(_START_TIME),
                        "owned_by": "charbench",
                        "max_model_len": state.max_model_len,
                        # what a newcomer needs to read the completions right
                        **engine_labels(engine),
                        # engine settings a load generator needs (serve-sweep's steady-state window)
                        **{k: getattr(cfg, k) for k in ("max_num_seqs", "tp", "dtype") if cfg is not None and hasattr(cfg, k)},
                    }
                ],
            }
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(_metrics_text(state), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/charbench/records")
    async def records(ids: str | None = None, limit: int = 1000) -> JSONResponse:
        if ids:
            wanted = [i for i in ids.split(",") if i]
            data = [state.record_json(i) for i in wanted if i in state.records]
            missing = [i for i in wanted if i not in state.records]
        else:
            keys = list(state.records)[-limit:] if limit > 0 else []
            data = [state.record_json(i) for i in keys]
            missing = []
        return JSONResponse({"object": "list", "data": data, "missing": missing})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        t0 = time.perf_counter()
        state.counters.requests_total += 1
        req: CompletionRequest = _parse(state, CompletionRequest, await request.body())
        _check_model(state, req.model)
        tok = state.tokenizer
        prompt = req.normalized_prompt(getattr(tok, "vocab_size", None))
        prompt_ids = tok.encode(prompt, add_bos=True) if isinstance(prompt, str) else prompt
        return await _generate(state, request, "completion", req, prompt_ids, default_max_tokens=16, t0=t0)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        state.counters.requests_total += 1
        req: ChatCompletionRequest = _parse(state, ChatCompletionRequest, await request.body())
        _check_model(state, req.model)
        prompt_ids = chat_prompt_ids(state.tokenizer, req.messages)
        default = max(state.max_model_len - len(prompt_ids), 1)
        return await _generate(state, request, "chat", req, prompt_ids, default_max_tokens=default, t0=t0)

    return app


_START_TIME = time.time()


def validation_error(exc: RequestValidationError) -> OpenAIError:
    """FastAPI's validation failure (a malformed query parameter) as a 400 OpenAI error
    naming the parameter, e.g. ``limit: Input should be a valid integer, ... (got 'abc')``."""
    parts = []
    param: str | None = None
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("query", "path", "header", "body", "cookie")]
        name = ".".join(loc) or "request"
        param = param or (name if loc else None)
        got = f" (got {e['input']!r})" if "input" in e and e["input"] is not None else ""
        parts.append(f"{name}: {e.get('msg', 'invalid value')}{got}")
    return OpenAIError("; ".join(parts) or "invalid request", param=param)


def chat_prompt_ids(tok: Any, messages: list[Any]) -> list[int]:
    """Token ids of a chat prompt, as transformers' ``apply_chat_template(tokenize=True)``.

    With the checkpoint's template the special-token strings (``bos_token``, ...) are the
    template's to place and no BOS is added (the template writes it when the model wants
    it); the fallback template gets the tokenizer's BOS.
    """
    template = getattr(tok, "chat_template", None)
    text = render_chat(messages, template, getattr(tok, "special_tokens", None))
    return tok.encode(text, add_bos=not template)


def _parse(state: _ServerState, model: type, body: bytes) -> Any:
    try:
        return parse_request(model, body)
    except OpenAIError:
        state.counters.rejected_invalid_total += 1
        raise


async def _generate(
    state: _ServerState,
    request: Request,
    kind: str,
    req: CompletionRequest | ChatCompletionRequest,
    prompt_ids: list[int],
    default_max_tokens: int,
    t0: float,
) -> Response:
    """Shared body of the two generation endpoints."""
    try:
        params = req.sampling_params(default_max_tokens, getattr(state.tokenizer, "vocab_size", None))
    except OpenAIError:
        state.counters.rejected_invalid_total += 1
        raise
    max_given = (req.max_completion_tokens if isinstance(req, ChatCompletionRequest) else None) is not None or (
        req.max_tokens is not None
    )
    try:
        _fit_to_context(state, prompt_ids, params, max_given)
    except OpenAIError:
        state.counters.rejected_invalid_total += 1
        raise
    request_id = new_id("cmpl" if kind == "completion" else "chatcmpl")
    gen = await _admit(state, prompt_ids, params, request_id, t0)
    headers = {"X-Request-Id": request_id}
    if req.stream:
        writer = ChunkWriter(kind, request_id, state.model_name, req.include_usage())  # type: ignore[arg-type]
        headers["Cache-Control"] = "no-cache"
        return _SSEResponse(
            _stream_events(state, gen, writer, len(prompt_ids)),
            on_close=lambda: gen.close(client_gone=True),
            headers=headers,
        )
    created = int(time.time())
    try:
        final = await _collect(gen, request)
    except _ClientGone:
        # nobody reads this (nginx's "client closed request" code, for logs)
        return Response(status_code=499)
    except Exception as exc:
        raise _map_engine_error(state, exc) from None
    finally:
        gen.close()
    build = completion_response if kind == "completion" else chat_response
    return JSONResponse(build(request_id, state.model_name, created, final, len(prompt_ids)), headers=headers)


# --------------------------------------------------------------------------- running


def _make_uvicorn_server(config: Any) -> Any:
    """A uvicorn Server for which SIGINT/SIGTERM are the normal way to stop.

    uvicorn re-raises the captured signal after its graceful shutdown (the process then
    dies by the signal, or Python raises KeyboardInterrupt); a server stopped on purpose
    should instead return normally so ``charbench serve`` exits with status 0.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return _Server(config)


def _uvicorn_config(
    app: FastAPI, host: str, port: int, log_level: str, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level in ("debug", "trace"),
        # uvicorn's "auto" protocol (httptools when installed, else h11) plus a request-head
        # timeout uvicorn lacks (a half-sent request line would hold a connection forever)
        http=header_timeout_protocol(float(header_timeout_s)),
        loop="auto",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket before the model loads, so a busy port fails fast.

    Raises:
        ConfigError: the host does not resolve or the port cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r} ({exc}); use 127.0.0.1 or an interface address") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--port: cannot listen on {host}:{port} ({exc.strerror}); pick a free port, or 0 for any"
        ) from None
    return sock


def run_server(
    cfg: EngineConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    served_model_name: str | None = None,
    warn_exposed: bool = True,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
) -> None:
    """Build the engine from ``cfg`` and serve it until SIGINT/SIGTERM (then return).

    The port is bound first (a busy port fails before the model loads) and the model is
    loaded before connections are accepted, so ``/health`` answers only when ready.

    Args:
        cfg: engine configuration (``cfg.max_queue`` bounds the waiting queue).
        host: interface to bind; loopback by default.
        port: TCP port (0 picks a free one; the log names the one bound).
        log_level: uvicorn log level (``debug`` also enables the access log).
        served_model_name: name reported to clients; default the model's name.
        warn_exposed: log a warning when ``host`` is not loopback (the server has no
            authentication); ``charbench serve`` prints its own.
        max_body_mb: request bodies over this many MiB get 413.
        header_timeout_s: connections whose request head takes longer get 408.

    Raises:
        ConfigError: the host/port cannot be bound, a limit is not positive, or the engine
            config is invalid.
    """
    body_limit = body_limit_bytes(max_body_mb)
    check_header_timeout(header_timeout_s)
    if warn_exposed and host not in LOOPBACK_HOSTS:
        logger.warning(
            "binding to non-loopback host %s: the server has no authentication and is "
            "reachable from other machines", host,
        )
    sock = bind_socket(host, port)
    engine = None
    try:
        from charbench.engine.engine import AsyncLLMEngine  # heavy: torch

        engine = AsyncLLMEngine(cfg)
        app = build_app(
            engine, max_queue=cfg.max_queue, served_model_name=served_model_name, manage_engine=True,
            max_body_bytes=body_limit,
        )
        bound = sock.getsockname()
        config = _uvicorn_config(app, host, int(bound[1]), log_level, header_timeout_s)
        labels = engine_labels(engine)
        uv_log = logging.getLogger("uvicorn.error")
        uv_log.info(
            "charbench serve: model %s on http://%s:%d (max_model_len=%d, max_queue=%d, "
            "weights=%s, chat_template=%s, max_body=%g MiB, header_timeout=%g s)",
            engine.model_config.name, host if ":" not in host else f"[{host}]", bound[1],
            engine.max_model_len, cfg.max_queue, labels["weights"], labels["chat_template"],
            max_body_mb, header_timeout_s,
        )
        for warning in labels["warnings"]:
            uv_log.warning("charbench serve: %s", warning)
        _make_uvicorn_server(config).run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        if engine is not None:
            # The app's shutdown normally stops the engine; when the server failed before
            # (or during) startup it did not, and tensor-parallel workers would outlive us.
            engine.shutdown()  # idempotent


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a free loopback port (tests, benches).

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``.

    Args:
        app: the ASGI app (e.g. from :func:`build_app`; its body limit is set there).
        host: interface to bind.
        port: 0 picks a free port.
        log_level: uvicorn log level.
        header_timeout_s: connections whose request head takes longer get 408.

    Raises:
        ConfigError: the port cannot be bound or ``header_timeout_s`` is not positive.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    ) -> None:
        timeout_s = check_header_timeout(header_timeout_s)
        self._sock = bind_socket(host, port)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self.server = _make_uvicorn_server(_uvicorn_config(app, host, self.port, log_level, timeout_s))
        self._thread = threading.Thread(target=self._run, name="charbench-server", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        """Start the thread and wait until the server accepts connections.

        Raises:
            RuntimeError: the server failed to start. TimeoutError: it did not start in
                time. Either way the thread is stopped and the socket closed.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            failed = self._error is not None or not self._thread.is_alive()
            if failed or time.monotonic() > deadline:
                self.stop(timeout_s=5.0)  # __exit__ does not run when __enter__ raises
                if failed:
                    raise RuntimeError(f"server failed to start: {self._error!r}")
                raise TimeoutError(f"server did not start within {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the server to exit (runs the app's shutdown) and join the thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BackgroundServer", "LOOPBACK_HOSTS", "ServerCounters", "bind_socket", "build_app", "run_server"]
