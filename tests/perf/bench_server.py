"""Benchmark: HTTP streaming through ``charbench serve`` vs the in-process engine.

Target: at 16 concurrent streams, the output tokens/s a client receives over HTTP (SSE,
one event per token) is >= 90% of what the same engine delivers in process, with the
same prompts and output lengths forced with ``ignore_eos`` + ``min_tokens``.

Run::

    .venv/bin/python tests/perf/bench_server.py --model tiny --json-out bench_server.json

The in-process figure runs ``AsyncLLMEngine.generate`` in this process; the HTTP figure
starts ``python -m charbench serve`` as a subprocess and drives it with an async httpx
client from this process. Each measurement is repeated (``--repeats``) after a discarded
warm-up round; the median round is reported. Caveat: on a small shared CPU machine the
client process, the server's event loop and the engine's torch threads compete for the
same cores, so the ratio includes client-side CPU cost, not only server overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from charbench.engine.api import EngineConfig, SamplingParams

TARGET_RATIO = 0.90


def _prompts(n: int, prompt_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """``n`` token-id prompts of ``prompt_len`` tokens (printable-ASCII byte ids, valid and
    non-special for the byte tokenizer and within any larger vocabulary)."""
    rng = random.Random(seed)
    hi = min(vocab_size - 1, 126)
    return [[rng.randint(32, hi) for _ in range(prompt_len)] for _ in range(n)]


def _params(output_len: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=output_len, min_tokens=output_len, temperature=0.0, ignore_eos=True
    )


async def _in_process_round(engine: Any, prompts: list[list[int]], output_len: int, tag: str) -> dict[str, float]:
    async def one(i: int, prompt: list[int]) -> int:
        n = 0
        async for out in engine.generate(prompt, _params(output_len), f"{tag}-{i}"):
            n = len(out.token_ids)
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    return {"output_tokens": float(sum(counts)), "wall_s": wall, "tokens_per_s": sum(counts) / wall}


async def _http_round(client: httpx.AsyncClient, model: str, prompts: list[list[int]], output_len: int) -> dict[str, float]:
    """One round of concurrent SSE streams over a warm (keep-alive) client."""

    async def one(prompt: list[int]) -> tuple[int, int]:
        body = {
            "model": model, "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len,
            "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
        }
        # A light client (it shares the CPUs with the server): count SSE events in the
        # raw bytes and parse only the final usage event, instead of JSON per token.
        pat = b"data: {"
        events = 0
        carry = b""
        tail = b""
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for raw in r.aiter_raw():
                buf = carry + raw
                events += buf.count(pat)
                carry = buf[-(len(pat) - 1):]
                tail = (tail + raw)[-4096:]
        usage_events = [e for e in tail.split(b"\n\n") if e.startswith(b'data: {') and b'"choices":[]' in e]
        if not usage_events or not tail.endswith(b"data: [DONE]\n\n"):
            raise RuntimeError("stream did not end with a usage event and [DONE]")
        usage = json.loads(usage_events[-1][6:])["usage"]["completion_tokens"]
        return events - 1, usage  # minus the usage event

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    events = sum(e for e, _ in results)
    usage = sum(u for _, u in results)
    if events != usage:
        raise RuntimeError(f"SSE events ({events}) != usage completion_tokens ({usage})")
    return {"output_tokens": float(usage), "wall_s": wall, "tokens_per_s": usage / wall}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of a process (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class ServeProcess:
    """``python -m charbench serve`` in a subprocess on a free loopback port."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.port = _free_port()
        cmd = [
            sys.executable, "-m", "charbench", "serve", "--model", cfg.model, "--device", cfg.device,
            "--dtype", cfg.dtype, "--port", str(self.port), "--max-num-seqs", str(cfg.max_num_seqs),
            "--max-num-batched-tokens", str(cfg.max_num_batched_tokens), "--log-level", "warning",
        ]
        if cfg.kv_cache_gb is not None:
            cmd += ["--kv-cache-gb", str(cfg.kv_cache_gb)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charbench serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("charbench serve did not become healthy in 300 s")
            time.sleep(0.2)
        self.model = httpx.get(self.url + "/v1/models").json()["data"][0]["id"]

    def stop(self) -> int | None:
        """SIGTERM, then wait (kill after 30 s); returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


async def _measured(coro: Any, server_pid: int | None) -> dict[str, Any]:
    """Run one round; add CPU seconds of this process and (HTTP) of the server process."""
    c0, s0 = time.process_time(), _proc_cpu_s(server_pid) if server_pid else None
    res = dict(await coro)
    res["bench_process_cpu_s"] = time.process_time() - c0
    s1 = _proc_cpu_s(server_pid) if server_pid else None
    res["server_process_cpu_s"] = (s1 - s0) if (s0 is not None and s1 is not None) else None
    return res


def measure(cfg: EngineConfig, prompts: list[list[int]], output_len: int, repeats: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Alternate in-process and HTTP rounds (so load drift on a shared machine hits both).

    The in-process engine lives in this process; the HTTP engine in a ``charbench serve``
    subprocess. Both stay up for the whole run, idle while the other is measured.
    """
    from charbench.engine.engine import AsyncLLMEngine

    engine = AsyncLLMEngine(cfg)
    engine.start()
    server = ServeProcess(cfg)
    try:
        async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            inproc: list[dict[str, Any]] = []
            http: list[dict[str, Any]] = []
            n = len(prompts) + 4
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            client = httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits)
            await _in_process_round(engine, prompts, output_len, "warm")  # discarded
            await _http_round(client, server.model, prompts, output_len)  # discarded; opens the connections
            for k in range(repeats):
                order = ("in", "http") if k % 2 == 0 else ("http", "in")
                for which in order:
                    # pause: idle OpenMP workers of the other mode's torch spin for a while
                    await asyncio.sleep(0.5)
                    if which == "in":
                        inproc.append(await _measured(_in_process_round(engine, prompts, output_len, f"r{k}"), None))
                    else:
                        http.append(await _measured(_http_round(client, server.model, prompts, output_len), server.proc.pid))
            await client.aclose()
            return inproc, http

        return asyncio.run(run())
    finally:
        engine.shutdown()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print the figures and the ratio to the target."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="engine preset (tiny or small on CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--kv-cache-gb", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--torch-threads", type=int, default=None,
        help="torch intra-op threads in both modes (default: CPU count - 1 on CPU, leaving a "
             "core to the HTTP client; 0 keeps torch's default)",
    )
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)

    threads = args.torch_threads
    if threads is None:
        threads = max(1, (os.cpu_count() or 2) - 1) if args.device == "cpu" else 0
    if threads > 0:
        # Same for both modes: this process (in-process engine) and the serve subprocess
        # (inherits the variable). A client sharing the cores with a torch parallel region
        # that uses all of them stalls the region at its barriers.
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)

    cfg = EngineConfig(
        model=args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_gb=args.kv_cache_gb,
    )
    prompts = _prompts(args.concurrency, args.prompt_len, 258, args.seed)

    inproc, http = measure(cfg, prompts, args.output_len, args.repeats)
    inproc_tps = statistics.median(r["tokens_per_s"] for r in inproc)
    http_tps = statistics.median(r["tokens_per_s"] for r in http)
    ratio = http_tps / inproc_tps
    pair_ratios = [h["tokens_per_s"] / i["tokens_per_s"] for i, h in zip(inproc, http)]
    # CPU cost per 1000 output tokens: in-process engine (this process) vs serve process
    inproc_cpu = statistics.median(1e3 * r["bench_process_cpu_s"] / r["output_tokens"] for r in inproc)
    srv = [r for r in http if r["server_process_cpu_s"] is not None]
    server_cpu = statistics.median(1e3 * r["server_process_cpu_s"] / r["output_tokens"] for r in srv) if srv else None
    client_cpu = statistics.median(1e3 * r["bench_process_cpu_s"] / r["output_tokens"] for r in http)
    # uvicorn's "auto" choices in the server: uvloop and httptools when importable
    import importlib.util

    loop_impl = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    result = {
        "benchmark": "server_streaming_vs_in_process",
        "server_loop": loop_impl,
        "server_http": http_impl,
        "torch_threads": threads if threads > 0 else "torch default",
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "concurrency": args.concurrency,
        "prompt_len_tokens": args.prompt_len,
        "output_len_tokens": args.output_len,
        "cpu_count": os.cpu_count(),
        "in_process_rounds": inproc,
        "http_rounds": http,
        "in_process_tokens_per_s": inproc_tps,
        "http_tokens_per_s": http_tps,
        "ratio": ratio,
        "paired_round_ratios": pair_ratios,
        "median_paired_ratio": statistics.median(pair_ratios),
        "in_process_cpu_s_per_1k_tokens": inproc_cpu,
        "server_cpu_s_per_1k_tokens": server_cpu,
        "http_client_cpu_s_per_1k_tokens": client_cpu,
        "load_avg_1m_at_end": os.getloadavg()[0],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }
    print(f"model={args.model} device={args.device} concurrency={args.concurrency} "
          f"prompt={args.prompt_len} output={args.output_len} tokens, {args.repeats} rounds (median); "
          f"server loop={loop_impl} http={http_impl} torch threads={threads if threads > 0 else 'default'}")
    print(f"in-process engine : {inproc_tps:10.1f} output tokens/s  rounds: "
          + ", ".join(f"{r['tokens_per_s']:.1f}" for r in inproc))
    print(f"HTTP SSE (serve)  : {http_tps:10.1f} output tokens/s  rounds: "
          + ", ".join(f"{r['tokens_per_s']:.1f}" for r in http))
    print("paired round ratios: " + ", ".join(f"{x:.3f}" for x in pair_ratios)
          + f" (median {statistics.median(pair_ratios):.3f})")
    print(f"CPU s per 1k output tokens: in-process {inproc_cpu:.3f}, serve process "
          + (f"{server_cpu:.3f}" if server_cpu is not None else "not measured (no /proc)")
          + f", HTTP client {client_cpu:.3f}; 1-min load average now {os.getloadavg()[0]:.2f}")
    print(f"ratio HTTP/in-process = {ratio:.3f} (target >= {TARGET_RATIO:.2f}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}; {ratio / TARGET_RATIO:.2f}x of target)")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
