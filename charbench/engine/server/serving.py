"""Serving an app with uvicorn: in the foreground (``charbench serve``) or in a thread.

:func:`bind_socket` binds before anything heavy loads, so a busy port fails fast;
:func:`run_server` builds the engine and serves it until SIGINT/SIGTERM;
:class:`BackgroundServer` runs an app on a free loopback port for tests and benches.
Both use uvicorn with the request-head timeout of :mod:`charbench.engine.http_limits`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from fastapi import FastAPI

from charbench.engine.api import EngineConfig
from charbench.engine.http_limits import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_MB,
    body_limit_bytes,
    check_header_timeout,
    header_timeout_protocol,
)
from charbench.engine.labels import engine_labels
from charbench.engine.server.app import build_app
from charbench.errors import ConfigError

logger = logging.getLogger("charbench.server")

#: hosts only this machine can reach (binding elsewhere warns: the server has no authentication)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


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
    """uvicorn's config for ``app``: the head-timeout protocol, access log only when debugging."""
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

