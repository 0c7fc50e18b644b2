"""Per-request records and the per-point serving metrics (vLLM's definitions and names).

::

    m = compute_metrics(records, duration_s=12.3, slo=Slo(ttft_ms=500, tpot_ms=50))
    m["median_ttft_ms"], m["p99_tpot_ms"], m["request_goodput_rps"], m["slo_attainment_frac"]

Definitions (as in vLLM ``bench serve``; times are client-side ``perf_counter`` seconds):

* TTFT = first token received - request sent.
* E2EL = last byte received - request sent.
* TPOT = (E2EL - TTFT) / (output tokens - 1), for requests with at least 2 output tokens.
* ITL = gaps between consecutive token arrivals, pooled over all requests.
* Each latency gets ``mean_``, ``median_``, ``std_`` (population), ``p90_``, ``p99_`` in ms.
* Throughputs divide by ``duration_s`` (first send to last completion):
  ``request_throughput_rps``, ``output_throughput_tok_s``,
  ``total_token_throughput_tok_s`` (vLLM's ``request_throughput``, ``output_throughput``,
  ``total_token_throughput``, renamed to carry their units).
* A request is *good* when it succeeded and meets every SLO given (a request with one
  output token has no TPOT and passes that check, as in vLLM);
  ``request_goodput_rps`` = good / duration, ``slo_attainment_frac`` = good / all requests
  (failed requests count as not good).

Steady state (ML.ENERGY benchmark style, generalized to any arrival pattern): the window
opens when ``max_num_seqs`` requests are in their decode phase at once (first token
received, not finished: the batch is full) and closes at the first later moment when
fewer than ``max_num_seqs`` requests remain unfinished, counting those not yet sent
(the drain has begun). A load that never fills the batch has no steady window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from charbench.record import Record

LATENCIES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
STATS: tuple[str, ...] = ("mean", "median", "std", "p90", "p99")


@dataclass
class Slo:
    """Service-level objectives in ms (None = not constrained)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @property
    def given(self) -> bool:
        """True when at least one objective is set."""
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def as_dict(self) -> dict[str, float]:
        """The set objectives, e.g. ``{"ttft_ms": 500.0}``."""
        return {k: v for k, v in (("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms), ("e2el_ms", self.e2el_ms)) if v is not None}


@dataclass
class ClientRecord:
    """What the load generator saw of one request (client ``perf_counter`` seconds).

    Attributes:
        index: position in the point's workload.
        request_id: the id the client gave it.
        input_len: requested prompt tokens.
        expected_output_tokens: the output length asked for (forced where supported).
        scheduled_s: intended send time (None for closed-loop loads).
        send_s: when the request was sent.
        first_token_s: when the first token arrived.
        token_times_s: arrival time of each token event.
        end_s: when the response ended (success or failure).
        prompt_tokens: prompt tokens the target reports (``usage``) or the tokenizer counted.
        output_tokens: output tokens (``usage`` when sent, else token events counted).
        output_tokens_source: ``usage``, ``events`` or ``engine``.
        error: error text of a failed request (None when it succeeded).
        timed_out: the request hit the client timeout.
        server_id: the response id the server gave (joins with server-side records).
        server: server-side timing of this request, when the target exposes it.
    """

    index: int
    request_id: str
    input_len: int
    expected_output_tokens: int
    scheduled_s: float | None = None
    send_s: float = 0.0
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    end_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    output_tokens_source: str = "events"
    error: str | None = None
    timed_out: bool = False
    server_id: str | None = None
    server: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Finished without error and produced at least one token."""
        return self.error is None and self.first_token_s is not None and self.end_s is not None

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token (ms)."""
        return None if self.first_token_s is None else (self.first_token_s - self.send_s) * 1e3

    @property
    def e2el_ms(self) -> float | None:
        """End-to-end latency (ms) of a successful request."""
        return (self.end_s - self.send_s) * 1e3 if self.ok and self.end_s is not None else None

    @property
    def tpot_ms(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1), for >= 2 output tokens."""
        e2el, ttft = self.e2el_ms, self.ttft_ms
        if e2el is None or ttft is None or self.output_tokens < 2:
            return None
        return (e2el - ttft) / (self.output_tokens - 1)

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between consecutive token arrivals (ms)."""
        t = self.token_times_s
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])]

    def meets(self, slo: Slo) -> bool:
        """Succeeded and met every given objective."""
        if not self.ok:
            return False
        checks = ((slo.ttft_ms, self.ttft_ms), (slo.tpot_ms, self.tpot_ms), (slo.e2el_ms, self.e2el_ms))
        for limit, value in checks:
            if limit is not None and value is not None and value > limit:
                return False
        return True


def _stats(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{s}_{name}_ms": None for s in STATS}
    a = np.asarray(values, dtype=float)
    return {
        f"mean_{name}_ms": float(a.mean()),
        f"median_{name}_ms": float(np.median(a)),
        f"std_{name}_ms": float(a.std()),
        f"p90_{name}_ms": float(np.percentile(a, 90)),
        f"p99_{name}_ms": float(np.percentile(a, 99)),
    }


def duration_of(records: list[ClientRecord]) -> float | None:
    """First send to last completion (s); None without any finished request."""
    ends = [r.end_s for r in records if r.end_s is not None]
    if not records or not ends:
        return None
    return max(ends) - min(r.send_s for r in records)


def compute_metrics(records: list[ClientRecord], duration_s: float | None = None, slo: Slo | None = None) -> Record:
    """Latency, throughput, goodput and error metrics of one point.

    Args:
        records: every request of the point (failed ones included).
        duration_s: wall time the throughputs divide by (default :func:`duration_of`).
        slo: objectives for goodput/attainment (None or empty = not computed).

    Returns:
        A :class:`~charbench.record.Record`; values that cannot be computed are null
        with their reason.
    """
    slo = slo or Slo()
    ok = [r for r in records if r.ok]
    n = len(records)
    dur = duration_s if duration_s is not None else duration_of(records)
    reasons: dict[str, str] = {}
    # Prompt tokens are known only when the target reported usage or a tokenizer counted
    # them; an unknown count is not 0, so the total (and total-token throughput) is null.
    uncounted = sum(1 for r in ok if r.prompt_tokens is None)
    total_in = None if uncounted else int(sum(r.prompt_tokens or 0 for r in ok))
    out: dict[str, Any] = {
        "request_count": n,
        "completed_count": len(ok),
        "error_count": n - len(ok),
        "error_frac": (n - len(ok)) / n if n else None,
        "timeout_count": sum(1 for r in records if r.timed_out),
        "duration_s": dur,
        "total_input_tokens": total_in,
        "total_output_tokens": int(sum(r.output_tokens for r in ok)),
        "output_len_mismatch_count": sum(1 for r in ok if r.output_tokens != r.expected_output_tokens),
        "max_in_flight_count": max_in_flight_count(records),
    }
    if dur is not None and dur > 0:
        out["request_throughput_rps"] = len(ok) / dur
        out["output_throughput_tok_s"] = out["total_output_tokens"] / dur
        out["total_token_throughput_tok_s"] = (total_in + out["total_output_tokens"]) / dur if total_in is not None else None
    else:
        for k in ("request_throughput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s"):
            out[k] = None
            reasons[k] = "no request finished (duration unknown)"
    if total_in is None:
        why = (f"prompt tokens unknown for {uncounted} of {len(ok)} successful request(s): the target sent no usage "
               "and no tokenizer counted them (pass --tokenizer)")
        reasons["total_input_tokens"] = why
        reasons.setdefault("total_token_throughput_tok_s", why)
    out.update(_stats("ttft", [v for r in ok if (v := r.ttft_ms) is not None]))
    out.update(_stats("tpot", [v for r in ok if (v := r.tpot_ms) is not None]))
    out.update(_stats("itl", [g for r in ok for g in r.itl_ms]))
    out.update(_stats("e2el", [v for r in ok if (v := r.e2el_ms) is not None]))
    for name in LATENCIES:
        if out[f"mean_{name}_ms"] is None:
            why = "no successful request" if not ok else ("no request produced 2+ tokens" if name in ("tpot", "itl") else "not measured")
            for s in STATS:
                reasons[f"{s}_{name}_ms"] = why
    if slo.given:
        good = sum(1 for r in records if r.meets(slo))
        out["good_request_count"] = good
        out["slo_attainment_frac"] = good / n if n else None
        out["request_goodput_rps"] = good / dur if dur else None
        if not dur:
            reasons["request_goodput_rps"] = "no request finished (duration unknown)"
    else:
        for k in ("good_request_count", "slo_attainment_frac", "request_goodput_rps"):
            out[k] = None
            reasons[k] = "no SLO given (--slo ttft_ms=...,tpot_ms=...,e2el_ms=...)"
    rec = Record()
    for k, v in out.items():
        rec.set(k, v, reason=reasons.get(k))
    return rec


def max_in_flight_count(records: list[ClientRecord]) -> int:
    """Most requests in flight at once (sent, not yet ended)."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.end_s is None:
            continue
        events.append((r.send_s, 1))
        events.append((r.end_s, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before sends at equal times
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


class SteadyTracker:
    """Detects the steady-state window live (or from records after the fact).

    Feed it ``first_token(t)`` and ``finished(t, had_first_token)``; it calls ``on_open(t)``
    once the batch is full (``max_num_seqs`` requests decoding) and ``on_close(t)`` once
    fewer than ``max_num_seqs`` requests remain unfinished.

    Attributes:
        t_open: when the window opened (None if it never did).
        t_close: when it closed.
        peak_decoding: most requests decoding at once (explains a window that never opened).
    """

    def __init__(
        self,
        total_requests: int,
        max_num_seqs: int,
        on_open: Callable[[float], None] | None = None,
        on_close: Callable[[float], None] | None = None,
    ) -> None:
        self.total = total_requests
        self.max_num_seqs = max_num_seqs
        self.on_open = on_open
        self.on_close = on_close
        self.decoding = 0
        self.peak_decoding = 0
        self.finished_count = 0
        self.t_open: float | None = None
        self.t_close: float | None = None
        self.unknown_reason: str | None = None

    def first_token(self, t: float) -> None:
        """A request got its first token at ``t``."""
        self.decoding += 1
        self.peak_decoding = max(self.peak_decoding, self.decoding)
        if self.t_open is None and self.t_close is None and self.decoding >= self.max_num_seqs and self._remaining() >= self.max_num_seqs:
            self.t_open = t
            if self.on_open is not None:
                self.on_open(t)

    def finished(self, t: float, had_first_token: bool) -> None:
        """A request ended at ``t`` (successfully or not)."""
        if had_first_token:
            self.decoding -= 1
        self.finished_count += 1
        self._close_if_draining(t)

    def _close_if_draining(self, t: float) -> None:
        if self.t_open is not None and self.t_close is None and self._remaining() < self.max_num_seqs:
            self.t_close = t
            if self.on_close is not None:
                self.on_close(t)

    def sending_stopped(self, sent: int) -> None:
        """Only ``sent`` requests went out (``--max-duration``): the window closes as if the load had ``sent``."""
        self.total = sent
        self._close_if_draining(time.perf_counter())

    def _remaining(self) -> int:
        return self.total - self.finished_count

    def reason_if_none(self) -> str | None:
        """Why there is no steady window (None when there is one)."""
        if self.unknown_reason is not None:
            return self.unknown_reason
        if self.t_open is not None and self.t_close is not None:
            return None
        if self.t_open is None:
            if self.total < self.max_num_seqs:
                return f"only {self.total} requests for max_num_seqs={self.max_num_seqs}: the batch can never be full"
            return (
                f"the batch never filled: at most {self.peak_decoding} requests decoded at once, "
                f"max_num_seqs={self.max_num_seqs} (load too low; raise the rate/concurrency or lower max_num_seqs)"
            )
        return "the steady window opened but the run ended before the drain (interrupted?)"


def steady_window_from_records(records: list[ClientRecord], max_num_seqs: int) -> SteadyTracker:
    """Replay the records' first-token and end events through a :class:`SteadyTracker`."""
    events: list[tuple[float, int, bool]] = []
    for r in records:
        if r.first_token_s is not None:
            events.append((r.first_token_s, 0, True))
        if r.end_s is not None:
            events.append((r.end_s, 1, r.first_token_s is not None))
    events.sort(key=lambda e: (e[0], e[1]))
    tr = SteadyTracker(len(records), max_num_seqs)
    for t, kind, had in events:
        if kind == 0:
            tr.first_token(t)
        else:
            tr.finished(t, had)
    return tr


def tokens_in_window(records: list[ClientRecord], t0: float, t1: float) -> int:
    """Output token events that arrived in [t0, t1] (the steady window's production)."""
    n = 0
    for r in records:
        if r.error is not None:
            continue
        ts = np.asarray(r.token_times_s)
        n += int(((ts >= t0) & (ts <= t1)).sum())
    return n


def energy_metrics(rec: Record, tokens_key: str, requests_key: str | None = None, prefix: str = "") -> Record:
    """J/request, J/output token and output tokens/J, gross and net of idle, derived in ``rec``.

    Each value derives from ``<prefix>energy_j`` (or ``<prefix>energy_net_j``) and the count
    it divides by: a missing energy makes it null with the energy's reason and a measured one
    passes on its provenance; zero tokens or requests give null too, never a division by zero.

    Args:
        rec: the record holding the energies and counts.
        tokens_key: the output-token count (``total_output_tokens``, ``steady_output_tokens``).
        requests_key: the completed-request count (None: no per-request values).
        prefix: the window (``steady_``).
    """
    p = prefix
    for energy in ("energy", "energy_net"):
        src = f"{p}{energy}_j"
        if requests_key is not None:
            rec.derive(f"{p}{energy}_per_request_j", lambda e, n: e / n if n else None, src, requests_key,
                       formula="per completed request", reason="no request completed")
        rec.derive(f"{p}{energy}_per_output_token_j", lambda e, n: e / n if n else None, src, tokens_key,
                   formula="per output token", reason="no output tokens")
        rec.derive(f"{p}output_per_{energy}_tok_j", lambda e, n: n / e if e > 0 else None, src, tokens_key,
                   formula="output tokens / energy", reason=f"{src} is not positive")
    return rec
