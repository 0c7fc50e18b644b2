"""Benchmark: serve-sweep's client-side TTFT/ITL against `charbench serve`'s own records.

Target: the client's TTFT and ITL agree with the engine's server-side request records
(``GET /v1/charbench/records``) within 5 ms at the median, on CPU.

Method: start ``charbench serve --model tiny --device cpu`` in another process, run
serve-sweep's load generator (``HttpTarget`` + ``run_load``, token-id prompts of exact
length, forced output lengths) at a Poisson rate, join each request with its server
record by the response id, and compare

* TTFT: median(client) - median(server), and the median of per-request differences
  (client = first SSE token event - send; server = first token - the request entering
  the engine);
* ITL: the same over every inter-token gap whose request has as many client gaps as
  server gaps.

The difference is HTTP + SSE framing + the client's event loop; a loaded machine makes it
larger (the load average is recorded).

Run::

    .venv/bin/python tests/perf/bench_serve_fidelity.py --json-out bench_serve_fidelity.json
    .venv/bin/python tests/perf/bench_serve_fidelity.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

TARGET_MS = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, max_num_seqs: int) -> subprocess.Popen[bytes]:
    """``charbench serve`` on the tiny preset; returns once /health answers 200."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "charbench", "serve", "--model", "tiny", "--device", "cpu", "--port", str(port),
                             "--max-num-seqs", str(max_num_seqs), "--log-level", "warning"])
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError("charbench serve exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("charbench serve did not become healthy in 180 s")
        time.sleep(0.2)


def measure(url: str, n: int, rate: float, input_len: int, output_len: int, seed: int) -> dict[str, Any]:
    """One load; returns client/server medians and their differences."""
    from charbench.workloads.serving.arrivals import arrival_times
    from charbench.workloads.serving.client import HttpTarget
    from charbench.workloads.serving.loadgen import LoadPlan, WorkItem, run_load
    from charbench.workloads.serving.prompts import build_prompts

    target = HttpTarget(url, timeout_s=120)
    target.probe()
    prompts = build_prompts(target.tokenizer, [input_len] * n, "ids", seed=seed)
    times = arrival_times(n, rate, "poisson", seed=seed)
    items = [WorkItem(i, p.prompt, input_len, p.prompt_tokens, output_len, float(times[i])) for i, p in enumerate(prompts)]
    warm = [WorkItem(i, p.prompt, input_len, p.prompt_tokens, 4, 0.0) for i, p in enumerate(prompts[:4])]

    async def go() -> Any:
        async with target.session():
            await run_load(target, LoadPlan(warm, id_prefix="warm"))
            res = await run_load(target, LoadPlan(items))
            await target.server_records(res.records)
            return res

    res = asyncio.run(go())
    recs = [r for r in res.records if r.ok and r.server and r.server.get("ttft_ms") is not None]
    c_ttft = np.array([r.ttft_ms for r in recs])
    s_ttft = np.array([r.server["ttft_ms"] for r in recs])
    c_itl, s_itl = [], []
    for r in recs:
        a, b = r.itl_ms, list(r.server.get("itl_ms") or [])
        if len(a) == len(b):
            c_itl.extend(a)
            s_itl.extend(b)
    c_itl_a, s_itl_a = np.array(c_itl), np.array(s_itl)
    return {
        "requests": n,
        "joined": len(recs),
        "rate_rps": rate,
        "input_len": input_len,
        "output_len": output_len,
        "client_median_ttft_ms": float(np.median(c_ttft)),
        "median_server_ttft_ms": float(np.median(s_ttft)),
        "ttft_median_diff_ms": float(np.median(c_ttft) - np.median(s_ttft)),
        "ttft_per_request_median_diff_ms": float(np.median(c_ttft - s_ttft)),
        "client_median_itl_ms": float(np.median(c_itl_a)),
        "median_server_itl_ms": float(np.median(s_itl_a)),
        "itl_median_diff_ms": float(np.median(c_itl_a) - np.median(s_itl_a)),
        "itl_per_gap_median_diff_ms": float(np.median(c_itl_a - s_itl_a)),
        "itl_gaps_compared": int(len(c_itl_a)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures and their ratio to the target."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke test)")
    ap.add_argument("--rate", type=float, default=8.0, help="Poisson request rate (req/s)")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--json-out", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    port = _free_port()
    load0 = os.getloadavg()[0]
    proc = start_server(port, args.max_num_seqs)
    try:
        r = measure(f"http://127.0.0.1:{port}", 40 if args.quick else 200, args.rate, 64, 32, seed=0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    load1 = os.getloadavg()[0]
    ok_ttft = abs(r["ttft_median_diff_ms"]) <= TARGET_MS
    ok_itl = abs(r["itl_median_diff_ms"]) <= TARGET_MS
    print(f"TTFT median: client {r['client_median_ttft_ms']:.2f} ms, server {r['median_server_ttft_ms']:.2f} ms, "
          f"difference {r['ttft_median_diff_ms']:.2f} ms (per request {r['ttft_per_request_median_diff_ms']:.2f} ms); "
          f"target |diff| <= {TARGET_MS} ms, ratio {abs(r['ttft_median_diff_ms']) / TARGET_MS:.2f} {'PASS' if ok_ttft else 'FAIL'}")
    print(f"ITL median:  client {r['client_median_itl_ms']:.2f} ms, server {r['median_server_itl_ms']:.2f} ms, "
          f"difference {r['itl_median_diff_ms']:.3f} ms (per gap {r['itl_per_gap_median_diff_ms']:.3f} ms, {r['itl_gaps_compared']} gaps); "
          f"ratio {abs(r['itl_median_diff_ms']) / TARGET_MS:.2f} {'PASS' if ok_itl else 'FAIL'}")
    print(f"{r['joined']}/{r['requests']} requests joined; load average (1 min) before/after {load0:.2f}/{load1:.2f} on {os.cpu_count()} CPUs")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**r, "target_ms": TARGET_MS, "pass": ok_ttft and ok_itl, "loadavg_1m": [load0, load1], "cpus": os.cpu_count()}, f, indent=2)
    return 0 if ok_ttft and ok_itl else 1


if __name__ == "__main__":
    sys.exit(main())
