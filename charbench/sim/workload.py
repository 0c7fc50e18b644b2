"""Workload transforms the simulator applies (the traces themselves come from the study)."""

from __future__ import annotations

import math

import numpy as np

from charbench.sim.engine import Workload

#: copies of a request are spread this far after it (s), so they do not arrive in lockstep
COPY_JITTER_S = 1.0


def scale_load(wl: Workload, factor: float, seed: int) -> Workload:
    """The workload with ``factor`` x its requests over the same span (copies of random requests).

    Each request is kept and gets ``floor(factor - 1)`` copies plus one more with probability
    ``frac(factor - 1)``; a copy arrives up to :data:`COPY_JITTER_S` later.

    Raises:
        ValueError: ``factor`` < 1.
    """
    if factor < 1:
        raise ValueError(f"load factor must be >= 1, got {factor}")
    if factor == 1:
        return wl
    rng = np.random.default_rng(np.random.SeedSequence([seed, 14]))
    extra = factor - 1
    copies = np.full(len(wl), math.floor(extra), dtype=np.int64) + (rng.random(len(wl)) < extra - math.floor(extra))
    idx = np.repeat(np.arange(len(wl)), copies)
    t = np.concatenate([wl.arrival_s, wl.arrival_s[idx] + rng.random(len(idx)) * COPY_JITTER_S])
    order = np.argsort(t, kind="stable")
    inp = np.concatenate([wl.input_len, wl.input_len[idx]])[order]
    out = np.concatenate([wl.output_len, wl.output_len[idx]])[order]
    return Workload(t[order], inp, out, wl.duration_s, f"{wl.source} x{factor:g} load")
