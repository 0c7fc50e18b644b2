"""Fakes for serve-sweep tests: a simulated batching target and a loopback SSE server.

``FakeTarget`` behaves like a continuous-batching engine with ``max_num_seqs`` slots: a
request waits for a slot, its first token comes ``prefill_s`` later, then one token every
``step_s`` (slower when more requests share the batch). ``LoopbackSSE`` is a raw-asyncio
HTTP/1.1 server answering ``/v1/completions`` with a fixed number of SSE token events.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

from charbench.workloads.serving.client import Hooks, Target
from charbench.workloads.serving.metrics import ClientRecord
from charbench.workloads.serving.prompts import TokenizerAdapter


def fake_tokenizer(vocab: int = 1000) -> TokenizerAdapter:
    """Whitespace 'tokenizer': one token per word; ids are word hashes."""
    words: dict[int, str] = {}

    def enc(text: str) -> list[int]:
        out = []
        for w in text.split():
            i = (sum(ord(c) for c in w) * 7919) % vocab
            words.setdefault(i, w)
            out.append(i)
        return out

    def dec(ids: list[int]) -> str:
        return " ".join(words.get(i, f"w{i}") for i in ids)

    return TokenizerAdapter(enc, dec, vocab, {0, 1}, adds_bos=False, source="fake")


class FakeTarget(Target):
    """A simulated engine (see module docstring)."""

    kind = "engine"

    def __init__(self, max_num_seqs: int = 4, prefill_s: float = 0.01, step_s: float = 0.005, fail_every: int = 0,
                 dead: bool = False, max_model_len: int = 4096, per_seq_s: float = 0.0, explode: bool = False) -> None:
        self.max_num_seqs = max_num_seqs
        self.prefill_s = prefill_s
        self.step_s = step_s
        self.per_seq_s = per_seq_s
        self.fail_every = fail_every
        self.is_dead = dead
        self.explode = explode
        self.tokenizer = fake_tokenizer()
        self.max_model_len = max_model_len
        self.label = "fake"
        self.sent = 0
        self.shutdowns = 0
        self.prompts: list[Any] = []
        self._sem: asyncio.Semaphore | None = None
        self._running = 0

    @property
    def dead(self) -> str | None:
        return "fake engine is dead" if self.is_dead else None

    async def send(self, rec: ClientRecord, prompt: Any, hooks: Hooks) -> None:
        if self.explode:
            raise KeyboardInterrupt
        loop_sem = self._sem
        if loop_sem is None or getattr(loop_sem, "_loop_id", None) != id(asyncio.get_running_loop()):
            loop_sem = asyncio.Semaphore(self.max_num_seqs)
            loop_sem._loop_id = id(asyncio.get_running_loop())  # type: ignore[attr-defined]
            self._sem = loop_sem
        self.sent += 1
        self.prompts.append(prompt)
        n = self.sent
        rec.send_s = time.perf_counter()
        try:
            if self.is_dead:
                rec.error = "ConnectError: connection refused"
                return
            if self.fail_every and n % self.fail_every == 0:
                rec.error = "HTTP 500: boom"
                return
            async with loop_sem:
                self._running += 1
                try:
                    await asyncio.sleep(self.prefill_s)
                    for i in range(rec.expected_output_tokens):
                        if i:
                            await asyncio.sleep(self.step_s + self.per_seq_s * self._running)
                        t = time.perf_counter()
                        if rec.first_token_s is None:
                            rec.first_token_s = t
                            hooks.first_token(t)
                        rec.token_times_s.append(t)
                        rec.output_tokens += 1
                finally:
                    self._running -= 1
            rec.prompt_tokens = len(prompt) if isinstance(prompt, list) else None
        finally:
            rec.end_s = time.perf_counter()
            hooks.finished(rec.end_s, rec.first_token_s is not None)

    def shutdown(self) -> None:
        self.shutdowns += 1


class LoopbackSSE:
    """A tiny raw-asyncio OpenAI-ish server in a thread: answers at once with SSE tokens.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        bodies: parsed JSON bodies of the POSTs received.
    """

    def __init__(self, tokens: int = 2, status: int = 200, model: str = "fake-model", records: bool = True,
                 drop_done: bool = False, usage: bool = True, chat: bool = False) -> None:
        self.tokens = tokens
        self.status = status
        self.model = model
        self.records = records
        self.drop_done = drop_done
        self.usage = usage
        self.chat = chat
        self.bodies: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self.url = f"http://127.0.0.1:{self.port}"
        self._n = 0

    def __enter__(self) -> LoopbackSSE:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock)
        self._ready.set()
        async with server:
            await self._stop.wait()

    def _response(self, path: str, body: dict[str, Any] | None) -> bytes:
        if path.startswith("/v1/models"):
            payload = json.dumps({"data": [{"id": self.model, "max_model_len": 2048}]}).encode()
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
        if path.startswith("/v1/charbench/records"):
            if not self.records:
                return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            ids = path.split("ids=")[-1].split("&")[0].replace("%2C", ",").split(",")
            data = [{"request_id": i, "ttft_ms": 1.0, "e2el_ms": 2.0, "tpot_ms": 1.0, "itl_ms": [1.0] * (self.tokens - 1),
                     "arrival_time_s": 0.0, "first_scheduled_time_s": 0.0005, "first_token_time_s": 0.001,
                     "server_arrival_time_s": 0.0, "output_tokens": self.tokens, "preemptions": 0} for i in ids]
            payload = json.dumps({"data": data, "missing": []}).encode()
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
        if self.status != 200:
            payload = json.dumps({"error": {"message": "overloaded", "type": "x"}}).encode()
            return b"HTTP/1.1 %d Err\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (self.status, len(payload), payload)
        self._n += 1
        rid = f"cmpl-{self._n}"
        pieces = []
        if self.chat:
            pieces.append(('data: {"id":"%s","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n' % rid).encode())
        for i in range(self.tokens):
            fr = '"length"' if i == self.tokens - 1 else "null"
            if self.chat:
                pieces.append(('data: {"id":"%s","choices":[{"index":0,"delta":{"content":"t%d"},"finish_reason":%s}]}\n\n' % (rid, i, fr)).encode())
            else:
                pieces.append(('data: {"id":"%s","choices":[{"index":0,"text":"t%d","finish_reason":%s}]}\n\n' % (rid, i, fr)).encode())
        if self.usage:
            pieces.append(('data: {"id":"%s","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n' % (rid, 5, self.tokens)).encode())
        if not self.drop_done:
            pieces.append(b"data: [DONE]\n\n")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: %s\r\ntransfer-encoding: chunked\r\n\r\n" % rid.encode()) + chunks

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                n = 0
                for line in lines[1:]:
                    if line[:15].lower() == b"content-length:":
                        n = int(line[15:])
                body = None
                if n:
                    raw = await reader.readexactly(n)
                    body = json.loads(raw)
                    self.bodies.append(body)
                writer.write(self._response(path.decode(), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ValueError):
            pass
        finally:
            writer.close()
