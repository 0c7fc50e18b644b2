"""Workload transforms the simulator applies (the traces themselves come from the study)."""

from __future__ import annotations

import math

import numpy as np

from charbench.sim.engine import Workload

#: a copy of a request arrives uniformly within this many s of it (either side): far enough
#: that copies are not a burst of their own, near enough to keep minute-scale bursts and the
#: diurnal shape
COPY_JITTER_S = 30.0


def scale_load(wl: Workload, factor: float, seed: int) -> Workload:
    """The workload with ``factor`` x its requests over the same span (copies of random requests).

    Each request is kept and gets ``floor(factor - 1)`` copies plus one more with probability
    ``frac(factor - 1)``; a copy arrives within :data:`COPY_JITTER_S` of it (clipped to the span).

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
    shift = (rng.random(len(idx)) * 2.0 - 1.0) * COPY_JITTER_S
    t = np.concatenate([wl.arrival_s, np.clip(wl.arrival_s[idx] + shift, 0.0, max(float(wl.duration_s), 0.0))])
    order = np.argsort(t, kind="stable")
    inp = np.concatenate([wl.input_len, wl.input_len[idx]])[order]
    out = np.concatenate([wl.output_len, wl.output_len[idx]])[order]
    return Workload(t[order], inp, out, wl.duration_s, f"{wl.source} x{factor:g} load")
