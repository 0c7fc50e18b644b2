"""HTTP limits of the engine server: a request-body cap and a request-head timeout.

Both protect every endpoint from one misbehaving client:

* :class:`BodyLimitMiddleware` (ASGI) answers 413 when a body is larger than the cap. It
  refuses a too-large ``Content-Length`` before reading anything, and counts the bytes
  of other (chunked) bodies as they arrive, so an oversized body is never held whole in
  memory (uvicorn itself pauses reading while the app has not taken a chunk).
* :func:`header_timeout_protocol` subclasses uvicorn's HTTP protocol so that a
  connection whose request head (request line and headers) is not complete within N
  seconds -- of connecting, or of the first byte of a later request on a kept-alive
  connection -- gets a 408 answer and is closed. uvicorn has no such timeout: its
  ``timeout_keep_alive`` is armed only after a response, so a connection that never
  completes a request line stays open forever (a few hundred of them exhaust the
  server's file descriptors). Idle kept-alive connections are closed by uvicorn's
  ``timeout_keep_alive`` as before.

Both answers use the OpenAI error shape and close the connection::

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=16 * MIB)
    uvicorn.Config(app, http=header_timeout_protocol(10.0))
"""

from __future__ import annotations

import functools
import json
import math
from typing import TYPE_CHECKING

from charbench.errors import ConfigError

if TYPE_CHECKING:  # kept light: ``charbench serve`` reads the defaults before the server loads
    import asyncio

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from charbench.engine.openai_protocol import OpenAIError

MIB = 1024 * 1024
DEFAULT_MAX_BODY_MB = 16.0
"""Default body cap in MiB: a 1M-token prompt as a JSON list of ids is about 8 MiB."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Default time for a request head to arrive (clients send it in milliseconds)."""


def _positive(value: float, flag: str, unit: str, default: float) -> float:
    """``value`` when it is a finite number > 0 (the one check of both limits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{flag}: must be a finite number > 0 ({unit}), got {value!r}; the default is {default:g}")
    return float(value)


def body_limit_bytes(max_body_mb: float) -> int:
    """``--max-body-mb`` (MiB) as bytes.

    Raises:
        ConfigError: not a finite number > 0.
    """
    return max(int(_positive(max_body_mb, "--max-body-mb", "MiB", DEFAULT_MAX_BODY_MB) * MIB), 1)


def check_header_timeout(header_timeout_s: float) -> float:
    """``--header-timeout-s`` as a float.

    Raises:
        ConfigError: not a finite number > 0.
    """
    return _positive(header_timeout_s, "--header-timeout-s", "seconds", DEFAULT_HEADER_TIMEOUT_S)


def _limit_text(limit: int) -> str:
    return f"{limit / MIB:.4g} MiB ({limit} bytes)"


def too_large_error(limit: int, size: int | None) -> OpenAIError:
    """The 413 error for a body over ``limit`` bytes (``size``: its declared length)."""
    from charbench.engine.openai_protocol import OpenAIError

    got = f"{size} bytes is over" if size is not None else "over"  # a chunked body's size is not known
    return OpenAIError(
        f"request body: {got} this server's limit of {_limit_text(limit)}; send a "
        "smaller request or restart the server with a larger --max-body-mb",
        status_code=413,
        code="request_too_large",
    )


def error_bytes(err: OpenAIError) -> bytes:
    """The JSON body of ``err``."""
    return json.dumps(err.body()).encode()


class _BodyTooLarge(Exception):
    """Raised into the app by the counting ``receive`` once the cap is passed."""


class BodyLimitMiddleware:
    """Answer 413 (OpenAI error shape, ``connection: close``) to bodies over the cap.

    Args:
        app: the ASGI app to protect.
        max_body_bytes: the largest body accepted (>= 1; :func:`charbench.engine.server.build_app` checks it).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send, too_large_error(limit, declared))
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if started:  # too late for a status: let the server drop the connection
                raise
            await _send_error(send, too_large_error(limit, None))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses malformed lengths before the app runs
    return None


async def _send_error(send: Send, err: OpenAIError) -> None:
    body = error_bytes(err)
    await send({
        "type": "http.response.start",
        "status": err.status_code,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            # the rest of the body is not read: the connection cannot carry another request
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


def head_timeout_response(timeout_s: float) -> bytes:
    """The raw 408 response sent when a request head did not arrive in time."""
    from charbench.engine.openai_protocol import OpenAIError

    body = error_bytes(OpenAIError(
        f"request head (request line and headers) not received within {timeout_s:g} s; "
        "send the whole head at once (the server's --header-timeout-s)",
        status_code=408,
        code="request_timeout",
    ))
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + b"connection: close\r\n\r\n"
        + body
    )


@functools.lru_cache(maxsize=None)
def header_timeout_protocol(timeout_s: float, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class with a request-head timeout (see the module docstring).

    Args:
        timeout_s: seconds a request head may take.
        base: the uvicorn protocol class to extend; default the one uvicorn's ``auto``
            picks (httptools when installed, else h11). Both set ``self.cycle`` when a
            request head is complete, which is how the timer knows to stop.
    """
    timeout_s = check_header_timeout(timeout_s)
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        header_timeout_s = timeout_s
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            awaiting = self._awaiting_head()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request head is complete
                self._cancel_head_timer()
            elif awaiting and self._head_timer is None:  # first bytes of a later request
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _awaiting_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            transport = self.transport
            # a WebSocket upgrade hands the transport to another protocol
            if transport.is_closing() or transport.get_protocol() is not self or not self._awaiting_head():
                return
            self.logger.info("closing a connection whose request head took over %g s", self.header_timeout_s)
            transport.write(head_timeout_response(self.header_timeout_s))
            transport.close()

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


__all__ = [
    "BodyLimitMiddleware",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_BODY_MB",
    "MIB",
    "check_header_timeout",
    "header_timeout_protocol",
    "body_limit_bytes",
    "too_large_error",
]
