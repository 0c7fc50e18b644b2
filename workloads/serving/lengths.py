"""Synthetic request lengths (input and output tokens per request).

::

    spec = LengthSpec(dist="uniform", input_len=256, output_len=128, range_ratio=0.5)
    inp, out = sample_lengths(spec, n=100, seed=0)
    inp, out, clipped = fit_to_context(inp, out, max_model_len=2048)

Distributions (``input_len``/``output_len`` are each side's central value):

* ``fixed``: every request has exactly ``len`` tokens.
* ``uniform``: integers uniform in [len*(1-r), len*(1+r)], r = ``range_ratio`` (vLLM's
  ``random`` dataset convention).
* ``normal``: round(N(len, (s*len)^2)), s = ``std_ratio``, at least 1.
* ``zipf``: bounded Zipf on [1, 2*len]: P(x) proportional to x^-alpha
  (alpha = ``zipf_alpha``); many short requests and a heavy tail of long ones.
* ``azure-conv`` / ``azure-code``: log-normal with the published medians of the Azure
  LLM inference trace 2023 (conversation / coding service, Splitwise ISCA 2024), times
  ``scale``. The spread is charbench's assumption; ``data/azure_length_medians.json``
  states both with their provenance. ``input_len``/``output_len`` are ignored.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from charbench.errors import ConfigError

LENGTH_DISTS: tuple[str, ...] = ("fixed", "uniform", "normal", "zipf", "azure-conv", "azure-code")


@functools.lru_cache(maxsize=1)
def azure_classes() -> dict[str, Any]:
    """The Azure-shaped length classes (medians with their source, assumed spreads)."""
    text = resources.files("charbench.workloads.serving").joinpath("data/azure_length_medians.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class LengthSpec:
    """How to draw request lengths.

    Attributes:
        dist: one of :data:`LENGTH_DISTS`.
        input_len: central input length (tokens).
        output_len: central output length (tokens).
        range_ratio: half-width of ``uniform`` as a fraction of the length.
        std_ratio: standard deviation of ``normal`` as a fraction of the length.
        zipf_alpha: exponent of ``zipf``.
        scale: multiplies ``azure-*`` lengths (fit a small model's context).
    """

    dist: str = "fixed"
    input_len: int = 128
    output_len: int = 128
    range_ratio: float = 0.25
    std_ratio: float = 0.25
    zipf_alpha: float = 1.2
    scale: float = 1.0

    def validate(self) -> None:
        """Raise ConfigError naming the option when a value is out of range."""
        if self.dist not in LENGTH_DISTS:
            raise ConfigError(f"--length-dist: unknown distribution {self.dist!r}; valid: {', '.join(LENGTH_DISTS)}")
        if self.input_len < 1 or self.output_len < 1:
            raise ConfigError(f"--input-len/--output-len: must be >= 1 (got {self.input_len}, {self.output_len})")
        if not 0 <= self.range_ratio < 1:
            raise ConfigError(f"--range-ratio: must be in [0, 1), got {self.range_ratio}")
        if self.std_ratio < 0:
            raise ConfigError(f"--std-ratio: must be >= 0, got {self.std_ratio}")
        if not self.zipf_alpha > 0:
            raise ConfigError(f"--zipf-alpha: must be > 0, got {self.zipf_alpha}")
        if not self.scale > 0:
            raise ConfigError(f"--length-scale: must be > 0, got {self.scale}")


def _one_side(dist: str, center: int, n: int, spec: LengthSpec, rng: np.random.Generator) -> np.ndarray:
    if dist == "fixed":
        return np.full(n, center, dtype=np.int64)
    if dist == "uniform":
        lo = max(1, int(round(center * (1 - spec.range_ratio))))
        hi = max(lo, int(round(center * (1 + spec.range_ratio))))
        return rng.integers(lo, hi + 1, size=n, dtype=np.int64)
    if dist == "normal":
        x = np.rint(rng.normal(center, spec.std_ratio * center, size=n))
        return np.maximum(x, 1).astype(np.int64)
    if dist == "zipf":
        support = np.arange(1, 2 * center + 1, dtype=np.float64)
        p = support ** (-spec.zipf_alpha)
        p /= p.sum()
        return rng.choice(support.astype(np.int64), size=n, p=p)
    raise ConfigError(f"--length-dist: unknown distribution {dist!r}; valid: {', '.join(LENGTH_DISTS)}")


def _lognormal(median: float, sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.rint(median * np.exp(sigma * rng.standard_normal(n)))
    return np.maximum(x, 1).astype(np.int64)


def sample_lengths(spec: LengthSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (input, output) lengths.

    Input and output come from independent streams of one seeded generator, so changing
    the output distribution does not change the inputs.

    Raises:
        ConfigError: an invalid spec.
    """
    spec.validate()
    rng_in, rng_out = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if spec.dist.startswith("azure-"):
        c = azure_classes()["classes"][spec.dist]
        inp = _lognormal(c["input_median_tokens"] * spec.scale, c["input_sigma"], n, rng_in)
        out = _lognormal(c["output_median_tokens"] * spec.scale, c["output_sigma"], n, rng_out)
        return inp, out
    return _one_side(spec.dist, spec.input_len, n, spec, rng_in), _one_side(spec.dist, spec.output_len, n, spec, rng_out)


def fit_to_context(inp: np.ndarray, out: np.ndarray, max_model_len: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Shorten requests whose input + output exceeds ``max_model_len``.

    The output is kept when possible (it sets the decode work); the input is cut first,
    down to 1 token, then the output.

    Returns:
        (input lengths, output lengths, number of requests that were shortened).
    """
    inp = np.asarray(inp, dtype=np.int64).copy()
    out = np.asarray(out, dtype=np.int64).copy()
    if max_model_len is None:
        return inp, out, 0
    if max_model_len < 2:
        raise ConfigError(f"max_model_len {max_model_len} leaves no room for a prompt and an output token")
    too_long = inp + out > max_model_len
    out = np.minimum(out, max_model_len - 1)
    inp = np.minimum(inp, max_model_len - out)
    return np.maximum(inp, 1), np.maximum(out, 1), int(too_long.sum())


def length_class(spec: LengthSpec, input_len: int, output_len: int) -> str:
    """A short name of the workload class a point belongs to (for 'best config' tables)."""
    if spec.dist.startswith("azure-"):
        return spec.dist
    return f"in{input_len}-out{output_len}"
