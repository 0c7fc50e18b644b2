"""The FastAPI app: routes, the OpenAI-shaped error handlers, and the engine's lifespan.

The endpoints are described in :mod:`charbench.engine.server`; admission lives in
:mod:`~charbench.engine.server.admission`, a request's generation in
:mod:`~charbench.engine.server.generation`, the ``/metrics`` text in
:mod:`~charbench.engine.server.metrics_text`.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from charbench.engine.http_limits import DEFAULT_MAX_BODY_MB, MIB, BodyLimitMiddleware
from charbench.engine.labels import engine_labels
from charbench.engine.openai_protocol import (
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    OpenAIError,
    chat_response,
    completion_response,
    new_id,
    render_chat,
)
from charbench.engine.server.admission import admit, check_model, parse, sampling_params
from charbench.engine.server.generation import ClientGone, SSEResponse, collect, map_engine_error, stream_events
from charbench.engine.server.metrics_text import CONTENT_TYPE, metrics_text
from charbench.engine.server.state import ServerState
from charbench.errors import ConfigError

_START_TIME = time.time()


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
    state = ServerState(engine, max_queue, names, records_capacity)

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
        return PlainTextResponse(metrics_text(state), media_type=CONTENT_TYPE)

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
        return await _generate(state, request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(state, request, "chat")

    return app


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


def _completion_prompt(state: ServerState, req: CompletionRequest) -> tuple[list[int], int]:
    """A completion's prompt token ids and its default ``max_tokens`` (16, as OpenAI's)."""
    tok = state.tokenizer
    prompt = req.normalized_prompt(getattr(tok, "vocab_size", None))
    prompt_ids = tok.encode(prompt, add_bos=True) if isinstance(prompt, str) else prompt
    return prompt_ids, 16


def _chat_prompt(state: ServerState, req: ChatCompletionRequest) -> tuple[list[int], int]:
    """A chat's prompt token ids and its default ``max_tokens`` (the rest of the context)."""
    prompt_ids = chat_prompt_ids(state.tokenizer, req.messages)
    return prompt_ids, max(state.max_model_len - len(prompt_ids), 1)


async def _generate(state: ServerState, request: Request, kind: Literal["completion", "chat"]) -> Response:
    """Shared body of the two generation endpoints: parse, admit, then stream or collect."""
    t0 = time.perf_counter()
    state.counters.requests_total += 1
    body = await request.body()
    req: CompletionRequest | ChatCompletionRequest
    if kind == "completion":
        req = parse(state, CompletionRequest, body)
        check_model(state, req.model)
        prompt_ids, default_max_tokens = _completion_prompt(state, req)
    else:
        req = parse(state, ChatCompletionRequest, body)
        check_model(state, req.model)
        prompt_ids, default_max_tokens = _chat_prompt(state, req)
    params = sampling_params(state, req, prompt_ids, default_max_tokens)
    request_id = new_id("cmpl" if kind == "completion" else "chatcmpl")
    gen = await admit(state, prompt_ids, params, request_id, t0)
    headers = {"X-Request-Id": request_id}
    if req.stream:
        writer = ChunkWriter(kind, request_id, state.model_name, req.include_usage())
        headers["Cache-Control"] = "no-cache"
        return SSEResponse(
            stream_events(state, gen, writer, len(prompt_ids)),
            on_close=lambda: gen.close(client_gone=True),
            headers=headers,
        )
    created = int(time.time())
    try:
        final = await collect(gen, request)
    except ClientGone:
        # nobody reads this (nginx's "client closed request" code, for logs)
        return Response(status_code=499)
    except Exception as exc:
        raise map_engine_error(state, exc) from None
    finally:
        gen.close()
    build = completion_response if kind == "completion" else chat_response
    return JSONResponse(build(request_id, state.model_name, created, final, len(prompt_ids)), headers=headers)
