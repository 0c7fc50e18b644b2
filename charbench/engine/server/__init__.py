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

The package, by role: :mod:`.app` (routes and error handlers), :mod:`.admission`
(validation and queue admission), :mod:`.generation` (one request's lifecycle, SSE),
:mod:`.metrics_text` (Prometheus text), :mod:`.state` (what the endpoints share) and
:mod:`.serving` (uvicorn, in the foreground or a background thread).
"""

from __future__ import annotations

from charbench.engine.server.app import build_app, chat_prompt_ids, validation_error
from charbench.engine.server.serving import LOOPBACK_HOSTS, BackgroundServer, bind_socket, run_server
from charbench.engine.server.state import ServerCounters

__all__ = [
    "BackgroundServer",
    "LOOPBACK_HOSTS",
    "ServerCounters",
    "bind_socket",
    "build_app",
    "chat_prompt_ids",
    "run_server",
    "validation_error",
]
