"""Fixed-width time bins that integrate piecewise-constant signals exactly.

Memory depends on the simulated duration and the bin width, never on the number of requests
or events: a week at 60 s bins is 10,080 floats per channel::

    tl = Bins(bin_s=60.0, channels=3, duration_s=3600)
    tl.add_span(0, t0=10.0, t1=130.0, rate=700.0)   # 700 W for 120 s -> J spread over bins 0..2
    tl.add_point(1, t=42.0, amount=1.0)              # one arrival
    tl.mean_rate()                                   # per bin: amount / bin_s (W, req/s, ...)
"""

from __future__ import annotations

import math

import numpy as np


class Bins:
    """``channels`` rows of fixed-width bins; grows when an event falls past the end.

    Args:
        bin_s: bin width in s (> 0).
        channels: number of signals.
        duration_s: expected span (bins are added past it when needed).
    """

    def __init__(self, bin_s: float, channels: int, duration_s: float) -> None:
        if not bin_s > 0:
            raise ValueError(f"bin_s must be > 0, got {bin_s}")
        self.bin_s = float(bin_s)
        self.data = np.zeros((channels, max(1, math.ceil(duration_s / bin_s) + 1)), dtype=np.float64)
        self.used = 0  # bins up to the last one touched

    def _ensure(self, b: int) -> None:
        n = self.data.shape[1]
        if b >= n:
            grow = max(b + 1 - n, n // 2)
            self.data = np.concatenate([self.data, np.zeros((self.data.shape[0], grow))], axis=1)
        if b + 1 > self.used:
            self.used = b + 1

    def add_span(self, ch: int, t0: float, t1: float, rate: float) -> None:
        """Add ``rate`` x overlap for every bin [t0, t1) overlaps (an exact integral)."""
        if t1 <= t0 or rate == 0.0:
            return
        bs = self.bin_s
        b0, b1 = int(t0 // bs), int(t1 // bs)
        self._ensure(b1)
        row = self.data[ch]
        if b0 == b1:
            row[b0] += rate * (t1 - t0)
            return
        row[b0] += rate * ((b0 + 1) * bs - t0)
        if b1 > b0 + 1:
            row[b0 + 1:b1] += rate * bs
        row[b1] += rate * (t1 - b1 * bs)

    def add_point(self, ch: int, t: float, amount: float = 1.0) -> None:
        """Add ``amount`` to the bin holding ``t``."""
        b = int(t // self.bin_s)
        self._ensure(b)
        self.data[ch, b] += amount

    def totals(self) -> np.ndarray:
        """Sum over bins per channel."""
        return self.data[:, : self.used].sum(axis=1)

    def frame_data(self) -> np.ndarray:
        """The used bins (channels x bins)."""
        return self.data[:, : self.used]

    def starts(self) -> np.ndarray:
        """Start time of each used bin in s."""
        return np.arange(self.used, dtype=np.float64) * self.bin_s
