"""libstdc++'s random machinery, vectorized in numpy, as the paper's host code used it.

The paper's generators (IDP ``matrices.h``) draw from ``std::default_random_engine``, which in
libstdc++ is ``minstd_rand0`` (Park-Miller: ``x <- 16807 x mod (2^31 - 1)``; seed 0 is taken
as 1, hence the comment "C DRE gives same output for seeds 0 and 1" in ``paper_expts.py``).
This module reproduces, draw for draw::

    eng = MinStdRand0(seed)
    x = normal_f32(eng, 2048 * 2048, mean=0.0, stddev=1024.0)   # std::normal_distribution<float>
    j = uniform_int(eng, np.full(10, 5))                        # std::uniform_int_distribution(0, 5)
    perm = shuffle_indices(MinStdRand0(seed), 2048 * 2048)      # std::shuffle of 0..n-1

* ``generate_canonical<float, 24>``: one engine draw, ``float(g - 1) / float(2^31 - 2)`` (the
  denominator rounds to 2^31 in float), clamped below 1.
* ``normal_distribution<float>``: the Marsaglia polar method; each accepted pair (x, y) yields
  ``y * mult`` first and ``x * mult`` next; float arithmetic, ``logf`` from the platform's libm
  (called through ctypes for the values whose rounding a double-precision log cannot settle).
* ``uniform_int_distribution``: downscaling with rejection (``scaling = range / (hi + 1)``).
* ``std::shuffle`` of a large range: Fisher-Yates forward, one distribution call per step
  (the engine's range is too small for libstdc++'s two-indices-per-draw path); the final
  permutation is resolved without a Python loop (see :func:`shuffle_indices`).

Everything is checked against the paper's released bit metrics (tests) and, where g++ is
installed, against a compiled libstdc++ program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from typing import Any

import numpy as np

MODULUS = 2147483647
MULTIPLIER = 16807
#: ``max() - min()`` of minstd_rand0 (outputs are 1 .. 2^31 - 2)
URNG_RANGE = MODULUS - 2
#: largest float below 1 (generate_canonical's clamp)
_BELOW_ONE = np.nextafter(np.float32(1.0), np.float32(0.0))


def _pow_mod(base: int, exp: int) -> int:
    return pow(base, exp, MODULUS)


class MinStdRand0:
    """``std::minstd_rand0`` (libstdc++'s ``default_random_engine``) with vectorized draws."""

    def __init__(self, seed: int) -> None:
        """Seed as ``engine.seed(seed)``: ``seed mod (2^31 - 1)``, and 0 becomes 1."""
        s = int(seed) % MODULUS
        self.state = s if s != 0 else 1

    def peek(self, n: int) -> np.ndarray:
        """The next ``n`` outputs (int64) without consuming them."""
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        out[0] = (self.state * MULTIPLIER) % MODULUS
        filled, step = 1, MULTIPLIER  # step = a^filled mod m
        while filled < n:
            c = min(filled, n - filled)
            # products < 2^31 * 2^31: fit in int64
            np.multiply(out[:c], step, out=out[filled:filled + c])
            np.remainder(out[filled:filled + c], MODULUS, out=out[filled:filled + c])
            step = (step * step) % MODULUS
            filled += c
        return out

    def advance(self, n: int) -> None:
        """Consume ``n`` outputs."""
        if n > 0:
            self.state = (self.state * _pow_mod(MULTIPLIER, n)) % MODULUS

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` outputs, consumed."""
        out = self.peek(n)
        if n:
            self.state = int(out[-1])
        return out


def canonical_f32(draws: np.ndarray) -> np.ndarray:
    """``generate_canonical<float, 24>`` of engine outputs (one draw each)."""
    u = (draws - 1).astype(np.float32) * np.float32(2.0**-31)  # exact: division by 2^31
    return np.minimum(u, _BELOW_ONE)


@lru_cache(maxsize=1)
def _libm_logf() -> Any:
    name = ctypes.util.find_library("m")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        fn = lib.logf
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


#: relative distance from a float32 rounding midpoint below which a double log cannot tell
#: how libm's logf rounds (glibc's logf errs by < 2^-25 relative before rounding)
_LOGF_DOUBT = 2.0**-24


def logf(x: np.ndarray) -> np.ndarray:
    """float32 natural log, rounded as the platform's ``logf`` rounds.

    The double-precision log rounded to float32 agrees with glibc's ``logf`` except near a
    rounding midpoint; those values (a fraction of them) are passed to libm's ``logf``.
    """
    x = np.asarray(x, dtype=np.float32)
    d = np.log(x.astype(np.float64))
    out = d.astype(np.float32)
    fn = _libm_logf()
    if fn is None or out.size == 0 or os.environ.get("CHARBENCH_PAPER_LOGF") == "double":
        # "double": the correctly rounded log (differs from glibc's logf in ~0.7% of values by
        # one float32 ulp); only for bulk feature tables where that cannot matter
        return out
    # distance of d from the midpoint between out and its neighbour on d's side
    nxt = np.where(d > out, np.nextafter(out, np.float32(np.inf)), np.nextafter(out, np.float32(-np.inf)))
    mid = (out.astype(np.float64) + nxt.astype(np.float64)) / 2.0
    doubt = np.abs(d - mid) <= _LOGF_DOUBT * np.abs(d)
    idx = np.flatnonzero(doubt)
    if idx.size:
        vals = x[idx]
        out[idx] = np.fromiter((fn(float(v)) for v in vals), dtype=np.float32, count=idx.size)
    return out


def normal_f32(eng: MinStdRand0, n: int, mean: float, stddev: float) -> np.ndarray:
    """``n`` draws of a fresh ``std::normal_distribution<float>(mean, stddev)``.

    Consumes exactly the engine draws the C++ object would (an odd ``n`` leaves the last
    pair's second value saved in the object, which the paper's code then discards).
    """
    out = np.empty(n, dtype=np.float32)
    filled = 0
    while filled < n:
        pairs_needed = (n - filled + 1) // 2
        batch = 2 * (int(pairs_needed * 1.28) + 16)  # acceptance pi/4
        draws = eng.peek(batch)
        v = canonical_f32(draws)
        # float(2) * u is exact; "- 1.0" is a double subtraction rounded to float on assignment
        v = (2.0 * v.astype(np.float64) - 1.0).astype(np.float32)
        x, y = v[0::2], v[1::2]
        r2 = x * x + y * y  # float arithmetic
        ok = np.flatnonzero((r2 <= np.float32(1.0)) & (r2 != np.float32(0.0)))
        use = ok[:pairs_needed]
        xs, ys, rs = x[use], y[use], r2[use]
        mult = np.sqrt((np.float32(-2.0) * logf(rs)) / rs)
        vals = np.empty(2 * use.size, dtype=np.float32)
        vals[0::2] = ys * mult
        vals[1::2] = xs * mult
        take = min(vals.size, n - filled)
        out[filled:filled + take] = vals[:take]
        filled += take
        consumed = 2 * (int(use[-1]) + 1) if use.size == pairs_needed else batch
        eng.advance(consumed)
    return out * np.float32(stddev) + np.float32(mean)


def uniform_int(eng: MinStdRand0, highs: np.ndarray) -> np.ndarray:
    """One ``uniform_int_distribution(0, highs[i])`` call per entry, in order (rejections included).

    Args:
        eng: the engine (advanced by the draws consumed).
        highs: inclusive upper bounds (int64, each < 2^31 - 2).
    """
    highs = np.asarray(highs, dtype=np.int64)
    total = highs.size
    out = np.empty(total, dtype=np.int64)
    uerange = highs + 1
    scaling = URNG_RANGE // uerange
    past = uerange * scaling
    done = 0
    while done < total:
        rem = total - done
        draws = eng.peek(rem + 64 + rem // 256) - 1
        sc, pa = scaling[done:], past[done:]
        rej = np.zeros(draws.size, dtype=bool)
        # which draw serves which call depends on the rejections before it: iterate to the
        # fixed point (each pass settles at least the first wrong draw; rejections are rare)
        while True:
            q = np.arange(draws.size) - (np.cumsum(rej) - rej)
            live = q < rem
            qc = np.minimum(q, rem - 1)
            new = live & (draws >= pa[qc])
            if np.array_equal(new, rej):
                break
            rej = new
        served = live & ~rej
        idx = np.flatnonzero(served)
        got = idx.size
        out[done:done + got] = draws[idx] // sc[q[idx]]
        eng.advance(int(idx[-1]) + 1 if got == rem else draws.size)
        done += got
    return out


def apply_forward_shuffle(swaps: np.ndarray, n: int, first: int | None = None) -> np.ndarray:
    """The array ``0..n-1`` after ``for i in 1..n-1: swap(a[i], a[swaps[i-1]])``.

    Resolved backwards without a loop over elements: the value at position q is the last
    step k that swapped into q (``swaps[k-1] == q``, k >= q), else whatever sat at
    ``swaps[q-1]`` just before step q, which is found the same way (chains are O(log n) long).

    Args:
        swaps: ``swaps[i-1]`` in [0, i], the partner of step i.
        n: array length.
        first: resolve only positions ``0..first-1`` (default: all).
    """
    cnt = n if first is None else int(first)
    if n <= 1 or cnt == 0:
        return np.arange(cnt, dtype=np.int64)
    steps = np.arange(1, n, dtype=np.int64)
    keys = np.sort(swaps.astype(np.int64) * n + steps)  # (target, step), ascending
    partner = np.empty(n, dtype=np.int64)
    partner[0] = 0
    partner[1:] = swaps
    res = np.full(cnt, -1, dtype=np.int64)
    pos = np.arange(cnt, dtype=np.int64)
    upto = np.full(cnt, n - 1, dtype=np.int64)  # value at pos after step `upto`
    active = np.arange(cnt, dtype=np.int64)
    while active.size:
        p, t = pos[active], upto[active]
        i = np.searchsorted(keys, p * n + t, side="right") - 1
        hit = (i >= 0) & (keys[np.maximum(i, 0)] // n == p)
        res[active[hit]] = keys[i[hit]] % n
        miss = active[~hit]
        pm = pos[miss]
        at_zero = pm == 0  # never written by its own step: still holds 0
        res[miss[at_zero]] = 0
        rest = miss[~at_zero]
        # untouched by any step after its own: the value step pm fetched from partner[pm]
        upto[rest] = pos[rest] - 1
        pos[rest] = partner[pos[rest]]
        active = rest
    return res


def shuffle_indices(eng: MinStdRand0, n: int, first: int | None = None) -> np.ndarray:
    """``std::shuffle`` of ``0..n-1`` with the engine (the first ``first`` entries).

    For n > 46340 (2^31 / n < n) libstdc++ draws one ``uniform_int_distribution(0, i)`` per
    step, which this reproduces; smaller ranges take libstdc++'s paired path
    (:func:`shuffle_small`).
    """
    if n <= 1:
        return np.arange(min(n, n if first is None else first), dtype=np.int64)
    if URNG_RANGE // n >= n:
        perm = np.arange(n, dtype=np.int64)
        shuffle_small(eng, perm[None, :])
        return perm[: n if first is None else first]
    swaps = uniform_int(eng, np.arange(1, n, dtype=np.int64))
    return apply_forward_shuffle(swaps, n, first)


def shuffle_small(eng: MinStdRand0, arrays: np.ndarray) -> None:
    """``std::shuffle`` of each row of ``arrays`` in turn, in place (small ranges).

    libstdc++ (GCC >= 10) draws two swap positions per distribution call when the engine's
    range allows (``range / n >= n``): for an even n one ``(0, 1)`` call first, then per pair
    of steps i, i+1 one call over ``(i+1)(i+2)`` values split as ``x / (i+2), x % (i+2)``.
    """
    rows, n = arrays.shape
    highs: list[int] = []
    plan: list[tuple[int, int, int]] = []  # (step i, divisor or 0 for single, which)
    i = 1
    if n % 2 == 0:
        highs.append(1)
        plan.append((1, 0, 0))
        i = 2
    while i < n:
        b0 = i + 1
        highs.append(b0 * (b0 + 1) - 1)
        plan.append((i, b0 + 1, 0))
        i += 2
    calls = len(highs)
    vals = uniform_int(eng, np.tile(np.asarray(highs, dtype=np.int64), rows)).reshape(rows, calls)
    r = np.arange(rows)
    for c, (step, div, _) in enumerate(plan):
        if div == 0:
            _swap_cols(arrays, r, step, vals[:, c])
        else:
            _swap_cols(arrays, r, step, vals[:, c] // div)
            _swap_cols(arrays, r, step + 1, vals[:, c] % div)


def _swap_cols(arrays: np.ndarray, r: np.ndarray, col: int, other: np.ndarray) -> None:
    a = arrays[r, col].copy()
    arrays[r, col] = arrays[r, other]
    arrays[r, other] = a
