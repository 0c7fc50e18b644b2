"""Adaptive chunking (Mnemosyne/Medha §3.2, Alg. 1-2), LARS ordering, and Sarathi baselines.

* :class:`BatchTimePredictor` -- least squares of iteration time over prefill tokens,
  prefill attention work (chunk x KV context), chunk^2, decode count and decode KV context,
  fitted from profiled engine iterations and saved as JSON (the study's prepare cache).
* :class:`AdaptiveChunkPolicy` -- per iteration the decodes go first
  (:meth:`begin_batch`); each prefill then gets the largest chunk whose predicted batch
  time fits ``tbt_slo_s * (1 - clamp(relative slack, 0, 0.4))``, found by binary search.
  As the KV grows, attention per token grows and the chunk that fits shrinks.
* :func:`lars_order` -- least attained relative slack first: ``rho = (a + d - t - w) / W``.
* :class:`StaticDecreasingPolicy` -- Sarathi's static schedule: chunk sizes fall linearly
  over prefill stages, regardless of the batch.

Registered specs (``EngineConfig.chunk_policy`` / ``--chunk``): ``adaptive:PREDICTOR.json@SLO_MS``
and ``static-decreasing[:MAX:MIN:STAGES:SPAN]``. Example::

    pred = BatchTimePredictor.fit(samples)               # samples: list[IterationSample]
    policy = AdaptiveChunkPolicy(pred, tbt_slo_s=0.05)
    policy.begin_batch(decoding_seqs); n = policy.chunk_size(seq, budget_left=8192)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charbench.engine.chunking import ChunkableSeq, register_chunk_policy
from charbench.errors import ConfigError

FEATURES = ("intercept", "prefill_tokens", "prefill_attn", "chunk_sq", "num_decodes", "decode_context")
"""Predictor features; ``prefill_attn`` = chunk x (context + chunk), ``decode_context`` = sum of decode KV lengths."""

MAX_SLACK_FRACTION = 0.4
"""Clamp of the relative slack that shrinks a long prefill's budget (paper: 0.4)."""


@dataclass(frozen=True)
class IterationSample:
    """One profiled engine iteration (one prefill chunk plus decodes).

    Attributes:
        chunk_tokens: prefill chunk length (0 = decode-only).
        prefill_context: tokens already cached for the prefilling sequence.
        num_decodes: decode tokens co-batched.
        decode_context: sum of the decodes' KV lengths.
        time_s: measured iteration time (None to only predict).
    """

    chunk_tokens: int
    prefill_context: int
    num_decodes: int
    decode_context: int
    time_s: float | None = None

    def features(self) -> list[float]:
        """Row of :data:`FEATURES`."""
        c = float(self.chunk_tokens)
        return [1.0, c, c * (self.prefill_context + c), c * c,
                float(self.num_decodes), float(self.decode_context)]


class BatchTimePredictor:
    """Linear model of iteration time over :data:`FEATURES` (non-negative coefficients).

    Args:
        coef: one coefficient per feature, seconds per unit.
    """

    def __init__(self, coef: Sequence[float]) -> None:
        if len(coef) != len(FEATURES):
            raise ConfigError(f"predictor: need {len(FEATURES)} coefficients ({', '.join(FEATURES)}), got {len(coef)}")
        self.coef = [float(c) for c in coef]

    @classmethod
    def fit(cls, samples: Sequence[IterationSample]) -> BatchTimePredictor:
        """Least squares over measured samples; negative coefficients are refit as 0.

        Negative terms would make a bigger chunk predict faster, which breaks the binary
        search's monotonicity, so the fit is an active-set NNLS (drop and refit).

        Raises:
            ConfigError: fewer samples than features or a sample without a time.
        """
        if len(samples) < len(FEATURES) or any(s.time_s is None for s in samples):
            raise ConfigError(
                f"predictor: need >= {len(FEATURES)} profiled iterations with times, got {len(samples)}"
            )
        x = np.array([s.features() for s in samples])
        y = np.array([s.time_s for s in samples], dtype=float)
        active = list(range(len(FEATURES)))
        coef = np.zeros(len(FEATURES))
        while active:
            sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
            if (sol >= 0).all():
                coef[:] = 0.0
                coef[active] = sol
                break
            active.pop(int(np.argmin(sol)))
        return cls(coef.tolist())

    def predict(self, sample: IterationSample) -> float:
        """Predicted iteration time in seconds."""
        return float(sum(c * f for c, f in zip(self.coef, sample.features())))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"features": list(FEATURES), "coef": self.coef}

    def save(self, path: Path) -> None:
        """Write JSON (the study's prepare cache)."""
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> BatchTimePredictor:
        """Read :meth:`save`'s JSON.

        Raises:
            ConfigError: missing or malformed file.
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--chunk adaptive: cannot read predictor {path} ({exc})") from exc
        if data.get("features") != list(FEATURES):
            raise ConfigError(f"--chunk adaptive: predictor {path} has features {data.get('features')}, expected {list(FEATURES)}")
        return cls(data["coef"])


def largest_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest ``n`` in ``[lo, hi]`` with ``fits(n)`` for a monotone ``fits``; 0 if none.

    Args:
        fits: True for every n up to some threshold, False above it.
        lo: smallest useful answer.
        hi: largest allowed answer.
    """
    if hi < lo or not fits(lo):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def relative_slack(arrival_s: float, deadline_s: float, now_s: float, remaining_s: float, total_s: float) -> float:
    """LARS's ``rho = (a + d - t - w_remaining) / w_total`` (lower = more urgent).

    Args:
        arrival_s: arrival time a.
        deadline_s: relative deadline d (TTFT SLO).
        now_s: current time t.
        remaining_s: predicted remaining prefill time.
        total_s: predicted total prefill time (> 0).
    """
    return (arrival_s + deadline_s - now_s - remaining_s) / max(total_s, 1e-12)


def lars_order(items: Sequence[Any], rho: Callable[[Any], float]) -> list[Any]:
    """Items by ascending relative slack (stable: ties keep arrival order)."""
    return sorted(items, key=rho)


class AdaptiveChunkPolicy:
    """Largest chunk that keeps the predicted iteration time within the TBT budget.

    Args:
        predictor: the batch-time model.
        tbt_slo_s: per-iteration budget (the TBT SLO), seconds.
        min_chunk: smallest chunk worth scheduling (below it the prefill waits).
        max_chunk: largest chunk considered.
        slack_of: optional ``seq -> relative slack``; a request with slack gives up that
            fraction (clamped to [0, 0.4]) of the budget to co-batched work.
        prefill_order: optional ``seqs -> seqs`` (e.g. :class:`charbench.engine.lars.LarsOrder`);
            the scheduler serves running and waiting prefills in the order it returns.
        long_prefill_tokens: a sequence at least this long is a long prefill; Alg. 2 gives a
            second long prefill in the same batch no chunk (None: no limit).
        online_correction: EWMA weight in [0, 1) of the measured/predicted ratio of past
            iterations (the engine reports them through :meth:`observe_iteration`);
            predictions are scaled by it, so a predictor profiled on a quieter (or busier)
            machine state still holds the budget. 0 (default) keeps the fitted model as is.

    Attributes:
        history: ``(kv_context, chunk)`` chosen per call, in order (for the report).
    """

    def __init__(
        self,
        predictor: BatchTimePredictor,
        tbt_slo_s: float,
        min_chunk: int = 32,
        max_chunk: int = 8192,
        slack_of: Callable[[ChunkableSeq], float] | None = None,
        prefill_order: Callable[[list[Any]], list[Any]] | None = None,
        long_prefill_tokens: int | None = None,
        online_correction: float = 0.0,
    ) -> None:
        if not tbt_slo_s > 0 or tbt_slo_s == float("inf"):
            raise ConfigError(f"--tbt-slo-ms: must be a finite number > 0, got {tbt_slo_s * 1000:g}")
        if not 1 <= min_chunk <= max_chunk:
            raise ConfigError(f"--chunk adaptive: need 1 <= min chunk ({min_chunk}) <= max chunk ({max_chunk})")
        self.predictor, self.tbt_slo_s = predictor, tbt_slo_s
        self.min_chunk, self.max_chunk = min_chunk, max_chunk
        self.slack_of = slack_of
        self.prefill_order = prefill_order
        if long_prefill_tokens is not None and long_prefill_tokens < 1:
            raise ConfigError(f"--chunk adaptive: long prefill threshold must be >= 1 token, got {long_prefill_tokens}")
        self.long_prefill_tokens = long_prefill_tokens
        if not 0.0 <= online_correction < 1.0:
            raise ConfigError(f"--chunk adaptive: online correction weight must be in [0, 1), got {online_correction:g}")
        self.online_correction = online_correction
        self.correction = 1.0
        self._batch_raw_s = 0.0
        self._chunked = False
        self._long_in_batch = False
        self._decodes = 0
        self._decode_context = 0
        self._extra_s = 0.0
        self.history: list[tuple[int, int]] = []

    def begin_batch(self, decoding: Sequence[ChunkableSeq]) -> None:
        """Start an iteration: the decodes are in the batch first (Alg. 1)."""
        self._decodes = len(decoding)
        self._decode_context = sum(s.num_tokens for s in decoding)
        self._extra_s = 0.0
        self._long_in_batch = False
        self._batch_raw_s = self.predictor.predict(IterationSample(0, 0, self._decodes, self._decode_context))
        self._chunked = False

    def batch_time(self, chunk: int, context: int) -> float:
        """Predicted time of this iteration with a ``chunk``-token prefill at ``context``."""
        sample = IterationSample(chunk, context, self._decodes, self._decode_context)
        return self.correction * (self.predictor.predict(sample) + self._extra_s)

    def budget_s(self, seq: ChunkableSeq) -> float:
        """The iteration budget left to ``seq`` (Alg. 2: ``t_target * (1 - rho)``)."""
        rho = 0.0 if self.slack_of is None else min(max(self.slack_of(seq), 0.0), MAX_SLACK_FRACTION)
        return self.tbt_slo_s * (1.0 - rho)

    def chunk_size(self, seq: ChunkableSeq, budget_left: int) -> int:
        """Largest chunk fitting the time budget and the token budget (0: wait)."""
        is_long = self.long_prefill_tokens is not None and seq.num_tokens >= self.long_prefill_tokens
        if is_long and self._long_in_batch:
            return 0  # Alg. 2: one long prefill per batch
        context = seq.num_computed_tokens
        hi = min(budget_left, seq.num_uncomputed_tokens, self.max_chunk)
        budget = self.budget_s(seq)
        lo = min(self.min_chunk, hi)
        n = largest_fitting(lambda c: self.batch_time(c, context) <= budget, max(lo, 1), hi)
        if n:
            # later prefills in the same batch see this chunk's time as already spent
            raw = self.predictor.predict(IterationSample(n, context, 0, 0)) - self.predictor.predict(IterationSample(0, context, 0, 0))
            self._extra_s += raw
            self._batch_raw_s += raw
            self._chunked = True
            self.history.append((context, n))
            self._long_in_batch = self._long_in_batch or is_long
        return n

    def observe_iteration(self, elapsed_s: float) -> None:
        """The engine reports the measured time of the batch last planned.

        Only batches this policy gave a prefill chunk count: a decode-only batch's
        prediction may be ~0 where the fit dropped the decode terms, and its ratio would
        say nothing about the chunks the policy sizes.
        """
        if self.online_correction and self._chunked and self._batch_raw_s > 0 and elapsed_s > 0:
            ratio = elapsed_s / self._batch_raw_s
            a = self.online_correction
            self.correction = min(max((1 - a) * self.correction + a * ratio, 0.25), 8.0)

    def __repr__(self) -> str:
        return f"AdaptiveChunkPolicy(tbt_slo_s={self.tbt_slo_s}, min={self.min_chunk}, max={self.max_chunk})"


class StaticDecreasingPolicy:
    """Sarathi-Serve's static schedule: chunk falls linearly from ``max_chunk`` to
    ``min_chunk`` over ``stages`` equal stages of ``span_tokens`` processed tokens.

    Args:
        max_chunk: first stage's chunk.
        min_chunk: last stage's chunk.
        stages: number of stages.
        span_tokens: prefill tokens covered by the schedule (later tokens use the last stage).
    """

    def __init__(self, max_chunk: int = 2048, min_chunk: int = 256, stages: int = 8, span_tokens: int = 32768) -> None:
        if not 1 <= min_chunk <= max_chunk or stages < 1 or span_tokens < 1:
            raise ConfigError(
                "--chunk static-decreasing:MAX:MIN:STAGES:SPAN: need 1 <= MIN <= MAX, STAGES >= 1, "
                f"SPAN >= 1 (got {max_chunk}:{min_chunk}:{stages}:{span_tokens})"
            )
        step = (max_chunk - min_chunk) / max(stages - 1, 1)
        self.schedule = [int(round(max_chunk - i * step)) for i in range(stages)]
        self.span_tokens = span_tokens

    def chunk_size(self, seq: ChunkableSeq, budget_left: int) -> int:
        """The stage's chunk, capped by the budget and the tokens left."""
        stage = min(seq.num_computed_tokens * len(self.schedule) // self.span_tokens, len(self.schedule) - 1)
        return max(0, min(self.schedule[stage], budget_left, seq.num_uncomputed_tokens))


def _static_factory(arg: str | None, max_num_batched_tokens: int) -> StaticDecreasingPolicy:
    if not arg:
        return StaticDecreasingPolicy()
    try:
        values = [int(x) for x in arg.split(":")]
    except ValueError:
        raise ConfigError(f"--chunk static-decreasing:{arg}: expected integers MAX:MIN:STAGES:SPAN") from None
    if len(values) != 4:
        raise ConfigError(f"--chunk static-decreasing:{arg}: expected 4 integers MAX:MIN:STAGES:SPAN")
    return StaticDecreasingPolicy(*values)


def _adaptive_factory(arg: str | None, max_num_batched_tokens: int) -> AdaptiveChunkPolicy:
    path, sep, slo = (arg or "").rpartition("@")
    if not sep or not path:
        raise ConfigError("--chunk adaptive: the engine spec is 'adaptive:PREDICTOR.json@SLO_MS'")
    try:
        slo_ms = float(slo)
    except ValueError:
        raise ConfigError(f"--chunk adaptive: SLO '{slo}' is not a number of milliseconds") from None
    return AdaptiveChunkPolicy(BatchTimePredictor.load(Path(path)), slo_ms / 1000.0,
                               max_chunk=max_num_batched_tokens)


register_chunk_policy("static-decreasing", _static_factory)
register_chunk_policy("adaptive", _adaptive_factory)


@dataclass
class SimRequest:
    """A prefill in :func:`simulate_prefills` (times in seconds).

    Attributes:
        name: label.
        arrival_s: a.
        work_s: total prefill time W.
        deadline_s: relative deadline d.
        done_s: work finished so far.
        finish_s: completion time (None while running).
    """

    name: str
    arrival_s: float
    work_s: float
    deadline_s: float
    done_s: float = 0.0
    finish_s: float | None = None


ORDERINGS: dict[str, Callable[[SimRequest, float], float]] = {
    "fcfs": lambda r, t: r.arrival_s,
    "edf": lambda r, t: r.arrival_s + r.deadline_s,
    "lars": lambda r, t: relative_slack(r.arrival_s, r.deadline_s, t, r.work_s - r.done_s, r.work_s),
}
"""Prefill orderings: key per request at time t (lowest runs)."""


def simulate_prefills(requests: Sequence[SimRequest], ordering: str, quantum_s: float = 0.01) -> list[SimRequest]:
    """One server, preemptive at every quantum, running the request with the lowest key.

    Args:
        requests: the prefills (copied; the inputs are not modified).
        ordering: a key of :data:`ORDERINGS`.
        quantum_s: scheduling granularity (one chunk's time).

    Returns:
        The requests with ``finish_s`` set.
    """
    key = ORDERINGS[ordering]
    reqs = [SimRequest(r.name, r.arrival_s, r.work_s, r.deadline_s) for r in requests]
    steps = 0
    while any(r.finish_s is None for r in reqs):
        t = steps * quantum_s
        ready = [r for r in reqs if r.finish_s is None and r.arrival_s <= t + 1e-12]
        steps += 1
        if not ready:
            continue
        r = min(ready, key=lambda x: key(x, t))
        r.done_s += quantum_s
        if r.done_s >= r.work_s - 1e-9:
            r.finish_s = round(steps * quantum_s, 9)
    return reqs
