"""LARS (Medha §4.1, Alg. 3): order the prefills of a batch by least relative slack.

A prefill's slack is ``s = a + d - t - w(t)`` (arrival a, relative deadline d, now t,
predicted remaining prefill time w(t)); its relative slack ``rho = s / W`` divides by the
total predicted prefill time W, so a long request with seconds of slack does not starve
short ones whose slack is small in absolute terms but large relative to their work.
Remaining work comes from :class:`PrefillTimeCache`, the batch-time predictor summed over
fixed-size chunks (Alg. 3's precomputed prefill-time table).

The scheduler stays pure policy: a chunk policy that has a ``prefill_order`` attribute
(``seqs -> seqs``) gets the running prefills and the waiting queue in one list, and the
scheduler serves them in the order returned::

    times = PrefillTimeCache(predictor)
    lars = LarsOrder(times, deadline_of=proportional_deadline(times, 3.0, 0.5))
    policy = AdaptiveChunkPolicy(predictor, tbt_slo_s=0.05, prefill_order=lars)
    Scheduler(allocator, 16, 64, 8192, policy)      # prefills now go in LARS order
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from charbench.engine.adaptive_chunking import BatchTimePredictor, IterationSample, relative_slack
from charbench.errors import ConfigError


class PrefillTimeCache:
    """Predicted time to prefill the first ``n`` tokens of a sequence (alone in a batch).

    The table holds the cumulative predicted time of ``step``-token chunks run one after
    another (chunk k at context ``k * step``); a count between two steps is interpolated
    linearly. The table grows on demand.

    Args:
        predictor: the batch-time model.
        step: chunk size of the table (the Mnemosyne schedulers use 256).
    """

    def __init__(self, predictor: BatchTimePredictor, step: int = 256) -> None:
        if step < 1:
            raise ConfigError(f"prefill-time cache: step must be >= 1, got {step}")
        self.predictor, self.step = predictor, step
        self._cum = [0.0]

    def time_s(self, num_tokens: int) -> float:
        """Predicted seconds to prefill tokens ``[0, num_tokens)``."""
        k, r = divmod(max(int(num_tokens), 0), self.step)
        while len(self._cum) <= k + 1:
            i = len(self._cum) - 1
            self._cum.append(self._cum[-1] + self.predictor.predict(IterationSample(self.step, i * self.step, 0, 0)))
        return self._cum[k] + (self._cum[k + 1] - self._cum[k]) * r / self.step

    def remaining_s(self, seq: Any) -> float:
        """Predicted prefill time left for ``seq`` (``num_computed_tokens`` to ``num_tokens``)."""
        return self.time_s(seq.num_tokens) - self.time_s(seq.num_computed_tokens)


def fixed_deadline(deadline_s: float) -> Callable[[Any], float]:
    """Every request gets the same relative TTFT deadline ``deadline_s``."""
    if not deadline_s > 0:
        raise ConfigError(f"--ttft-slo-ms: must be > 0, got {deadline_s * 1000:g}")
    return lambda seq: deadline_s


def proportional_deadline(times: PrefillTimeCache, multiplier: float, min_s: float) -> Callable[[Any], float]:
    """Deadline ``max(min_s, multiplier x predicted prefill time)`` of the prompt.

    (The EDF scheduler read in the Mnemosyne code computes this and then overwrites it with
    ``max(prefill, min)``; here the multiplier is kept.)
    """
    if not multiplier > 0 or not min_s >= 0:
        raise ConfigError(f"LARS deadline: need multiplier > 0 and min >= 0, got {multiplier:g} and {min_s:g}")
    return lambda seq: max(min_s, multiplier * times.time_s(seq.num_prompt_tokens))


class LarsOrder:
    """``prefill_order`` for a chunk policy: ascending relative slack, ties in the given order.

    Args:
        times: remaining/total prefill time per sequence.
        deadline_of: ``seq -> relative deadline d`` in seconds.
        clock: the current time t, on the clock of ``Sequence.arrival_time_s``
            (``time.perf_counter``; tests pass a fake).

    Attributes:
        last_order: ``[(request_id, rho)]`` of the latest call (for logs and tests).
    """

    def __init__(
        self,
        times: PrefillTimeCache,
        deadline_of: Callable[[Any], float],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.times, self.deadline_of, self.clock = times, deadline_of, clock
        self.last_order: list[tuple[str, float]] = []

    def rho(self, seq: Any, now_s: float | None = None) -> float:
        """Relative slack of ``seq`` at ``now_s`` (default: the clock)."""
        now = self.clock() if now_s is None else now_s
        total = self.times.time_s(seq.num_tokens)
        return relative_slack(seq.arrival_time_s, self.deadline_of(seq), now, self.times.remaining_s(seq), total)

    def __call__(self, seqs: Sequence[Any]) -> list[Any]:
        """``seqs`` sorted by relative slack at one instant (stable)."""
        now = self.clock()
        keyed = [(self.rho(s, now), i, s) for i, s in enumerate(seqs)]
        keyed.sort(key=lambda x: (x[0], x[1]))
        self.last_order = [(getattr(s, "request_id", str(i)), r) for r, i, s in keyed]
        return [s for _, _, s in keyed]


class EdfOrder:
    """Earliest deadline (``a + d``) first: the baseline LARS is compared with.

    Args:
        deadline_of: ``seq -> relative deadline d`` in seconds.
    """

    def __init__(self, deadline_of: Callable[[Any], float]) -> None:
        self.deadline_of = deadline_of

    def __call__(self, seqs: Sequence[Any]) -> list[Any]:
        """``seqs`` by absolute deadline (stable)."""
        return sorted(seqs, key=lambda s: s.arrival_time_s + self.deadline_of(s))
