"""Input generators for every experiment of the paper, seeded and on the run's device.

As in the paper (IDP ``matrices.h``): values are generated in float32, value-level edits
(sorting, sparsity) are applied in float32, the matrix is converted to the target dtype with
round-to-nearest, and only then are the dtype's raw bits edited::

    a, b, info = generate_pair(get_experiment("bits-low"), 8, get_dtype("fp16"),
                               m=256, n=256, k=256, seed=1, device="cpu")

Conventions (charbench's frame; see :mod:`.experiments`):

* A is generated as (M, K); B as (N, K) and returned as the (K, N) view ``B.t()`` when
  ``transpose_b`` (the paper's default), else as (K, N). "Row-major" fill order is therefore
  along K for both operands by default.
* A partial sort of a fraction p puts the ``round(p * size)`` smallest values, ascending, at
  the start of the fill order; the remaining values keep their original relative order
  (``std::partial_sort`` leaves them unspecified). Sparsity p zeroes exactly
  ``round(p * size)`` elements, at the first positions of one seeded permutation, so higher
  p zeroes a superset of the lower p's positions (as the paper's fixed shuffle does).
* Bit experiments edit the dtype's *format* bits (TF32: the 19 bits the tensor cores read).
  An edit that produces an Inf/NaN encoding gets the lowest exponent bit cleared (the
  largest finite binade), so outputs stay finite; the fraction fixed is reported as
  ``nonfinite_fixed_frac``. (The paper kept such values, which turns the GEMM's output into
  NaN.)
* Fill order by GEMM index: both operands' sequences run along **K** (see the table in
  :mod:`.experiments`); ``--generator paper`` (:mod:`.paper_generators`) follows the paper's
  column-major layout instead.
* A uses seed stream ``(base_seed, seed, 0)``, B ``(base_seed, seed, 1)`` (the paper: seed and
  seed + 1); the same seed gives the same base matrix for every value of a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charbench.errors import ConfigError
from charbench.kernels.gemm.dtypes import DTypeSpec, int_view_dtype, to_dtype, to_signed, torch_dtype
from charbench.workloads.gemm_power.experiments import BASE_SIGMA, MEAN_SWEEP_SIGMA, Experiment

#: (lowest exponent bit, exponent width) per storage type
_EXPONENT = {"float32": (23, 8), "float16": (10, 5), "bfloat16": (7, 8), "float8_e4m3fn": (3, 4), "float8_e5m2": (2, 5)}
_CHUNK = 1 << 20  # elements per chunk in the random-bit-flip generator


def stream_seed(base_seed: int, seed: int, stream: int) -> int:
    """A 63-bit seed for one random stream (deterministic mix of the three ints)."""
    x = (base_seed * 0x9E3779B1 + seed * 0x85EBCA77 + stream * 0xC2B2AE3D + 0x27D4EB2F) & ((1 << 63) - 1)
    x ^= x >> 29
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 63) - 1)
    return x ^ (x >> 32)


def _gen(device: Any, seed: int) -> Any:
    import torch

    return torch.Generator(device=device).manual_seed(seed)


# --- float32 stage -----------------------------------------------------------------------

def gaussian(rows: int, cols: int, mu: float, sigma: float, gen: Any, device: Any) -> Any:
    """(rows, cols) float32 samples of N(mu, sigma)."""
    import torch

    return torch.randn(rows, cols, generator=gen, device=device, dtype=torch.float32).mul_(sigma).add_(mu)


def unique_values(rows: int, cols: int, n: int, sigma: float, gen: Any, device: Any) -> Any:
    """Each element one of ``n`` values drawn once from N(0, sigma), picked uniformly."""
    import torch

    vals = torch.randn(n, generator=gen, device=device, dtype=torch.float32).mul_(sigma)
    idx = torch.randint(0, n, (rows, cols), generator=gen, device=device)
    return vals[idx]


def constant(rows: int, cols: int, sigma: float, gen: Any, device: Any) -> Any:
    """A matrix filled with one value drawn from N(0, sigma)."""
    import torch

    v = torch.randn(1, generator=gen, device=device, dtype=torch.float32).mul_(sigma)
    return v.expand(rows, cols).contiguous()


def _partial_sort_1d(flat: Any, count: int) -> Any:
    """The ``count`` smallest values ascending, then the rest in their original order."""
    import torch

    if count <= 0:
        return flat.clone()
    if count >= flat.numel():
        return torch.sort(flat).values
    order = torch.argsort(flat, stable=True)
    head = order[:count]
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[head] = False
    return torch.cat([flat[head], flat[keep]])


def partial_sort_rows(x: Any, p: float) -> Any:
    """Partial sort of a fraction ``p`` of the whole matrix, in row-major fill order."""
    count = int(round(p * x.numel()))
    return _partial_sort_1d(x.reshape(-1), count).reshape(x.shape)


def partial_sort_cols(x: Any, p: float) -> Any:
    """As :func:`partial_sort_rows`, but the sequence fills the matrix column-major."""
    rows, cols = x.shape
    count = int(round(p * x.numel()))
    seq = _partial_sort_1d(x.reshape(-1), count)
    return seq.reshape(cols, rows).t().contiguous()


def partial_sort_within_rows(x: Any, p: float) -> Any:
    """In every row, the ``round(p * cols)`` smallest values ascending, then the rest in order."""
    import torch

    rows, cols = x.shape
    count = int(round(p * cols))
    if count <= 0:
        return x.clone()
    if count >= cols:
        return torch.sort(x, dim=1).values
    order = torch.argsort(x, dim=1, stable=True)
    head = order[:, :count]
    keep = torch.ones_like(x, dtype=torch.bool)
    keep.scatter_(1, head, False)
    rest = x[keep].reshape(rows, cols - count)  # boolean indexing keeps row-major order
    return torch.cat([torch.gather(x, 1, head), rest], dim=1)


def sparsify(x: Any, p: float, gen: Any) -> Any:
    """Zero exactly ``round(p * size)`` elements, at the first positions of a seeded permutation."""
    import torch

    count = int(round(p * x.numel()))
    out = x.clone()
    if count <= 0:
        return out
    perm = torch.randperm(x.numel(), generator=gen, device=x.device)
    out.view(-1)[perm[:count]] = 0.0
    return out


# --- raw-bit stage -----------------------------------------------------------------------

def _to_unsigned(t: Any, spec: DTypeSpec) -> Any:
    """The storage words as unsigned values in int64."""
    import torch

    return t.contiguous().view(int_view_dtype(spec)).to(torch.int64) & ((1 << spec.storage_bits) - 1)


def _from_unsigned(u: Any, spec: DTypeSpec, shape: Any) -> Any:
    return to_signed(u, spec.storage_bits).to(int_view_dtype(spec)).view(torch_dtype(spec)).reshape(shape)


def _keep_finite(u: Any, spec: DTypeSpec) -> tuple[Any, int]:
    """Clear the lowest exponent bit of Inf/NaN encodings; returns (words, how many)."""
    import torch

    if spec.family == "int8":
        return u, 0
    lo, width = _EXPONENT[spec.storage]
    exp_mask = ((1 << width) - 1) << lo
    bad = (u & exp_mask) == exp_mask
    if spec.storage == "float8_e4m3fn":  # E4M3FN: only S.1111.111 is NaN; no infinities
        bad &= (u & 0x7) == 0x7
    count = int(bad.sum().item())
    if count:
        u = torch.where(bad, u & ~(1 << lo), u)
    return u, count


def flip_random_bits(t: Any, spec: DTypeSpec, n: int, gen: Any) -> tuple[Any, int]:
    """Flip ``n`` distinct, uniformly chosen format bits of every element (paper: MatrixBits)."""
    import torch

    if n <= 0:
        return t.clone(), 0
    u = _to_unsigned(t, spec).reshape(-1)
    w, off = spec.bits, spec.bit_offset
    weights = torch.tensor([1 << (off + i) for i in range(w)], dtype=torch.int64, device=u.device)
    out = torch.empty_like(u)
    for s in range(0, u.numel(), _CHUNK):
        c = min(_CHUNK, u.numel() - s)
        keys = torch.rand(c, w, generator=gen, device=u.device)
        pos = keys.argsort(dim=1)[:, :n]  # n distinct bit positions per element
        mask = weights[pos].sum(dim=1)  # distinct powers of two: sum == OR
        out[s:s + c] = u[s:s + c] ^ mask
    out, fixed = _keep_finite(out, spec)
    return _from_unsigned(out, spec, t.shape), fixed


def _randomize_field(t: Any, spec: DTypeSpec, lo: int, n: int, gen: Any) -> tuple[Any, int]:
    import torch

    if n <= 0:
        return t.clone(), 0
    u = _to_unsigned(t, spec)
    field = ((1 << n) - 1) << lo
    r = torch.randint(0, 1 << n, u.shape, generator=gen, device=u.device, dtype=torch.int64)
    u = (u & ~field) | (r << lo)
    u, fixed = _keep_finite(u, spec)
    return _from_unsigned(u, spec, t.shape), fixed


def randomize_low_bits(t: Any, spec: DTypeSpec, n: int, gen: Any) -> tuple[Any, int]:
    """Set the ``n`` lowest format bits of every element to uniform random values."""
    return _randomize_field(t, spec, spec.bit_offset, n, gen)


def randomize_high_bits(t: Any, spec: DTypeSpec, n: int, gen: Any) -> tuple[Any, int]:
    """Set the ``n`` highest format bits of every element to uniform random values."""
    return _randomize_field(t, spec, spec.bit_offset + spec.bits - n, n, gen)


def zero_low_bits(t: Any, spec: DTypeSpec, n: int) -> Any:
    """Clear the ``n`` lowest format bits of every element."""
    if n <= 0:
        return t.clone()
    u = _to_unsigned(t, spec)
    u = u & ~(((1 << n) - 1) << spec.bit_offset)
    return _from_unsigned(u, spec, t.shape)


def zero_high_bits(t: Any, spec: DTypeSpec, n: int) -> Any:
    """Clear the ``n`` highest format bits of every element."""
    if n <= 0:
        return t.clone()
    u = _to_unsigned(t, spec)
    u = u & ~(((1 << n) - 1) << (spec.bit_offset + spec.bits - n))
    return _from_unsigned(u, spec, t.shape)


# --- one matrix, one pair ----------------------------------------------------------------

@dataclass
class MatrixInfo:
    """Facts about a generated matrix that the record keeps."""

    nonfinite_fixed: int = 0


def generate_matrix(exp: Experiment, value: float, spec: DTypeSpec, rows: int, cols: int, seed: int, device: Any) -> tuple[Any, MatrixInfo]:
    """One operand of experiment ``exp`` at sweep ``value``, in the dtype's storage type.

    Args:
        exp: the experiment.
        value: the swept parameter (sigma, mu, n, or p).
        spec: target dtype.
        rows, cols: shape in fill order.
        seed: stream seed (see :func:`stream_seed`).
        device: where to generate (the GEMM's device).
    """
    fam = spec.family
    base = BASE_SIGMA[fam]
    g = exp.generator
    gen = _gen(device, seed)
    info = MatrixInfo()
    x: Any
    if g == "gaussian_sigma":
        x = gaussian(rows, cols, 0.0, value, gen, device)
    elif g == "gaussian_mean":
        x = gaussian(rows, cols, value, MEAN_SWEEP_SIGMA[fam], gen, device)
    elif g == "sorted_mean":
        x = partial_sort_rows(gaussian(rows, cols, value, MEAN_SWEEP_SIGMA[fam], gen, device), 1.0)
    elif g == "unique":
        x = unique_values(rows, cols, int(value), base, gen, device)
    elif g in ("bits_random", "bits_low", "bits_high"):
        x = constant(rows, cols, base, gen, device)
    else:
        x = gaussian(rows, cols, 0.0, base, gen, device)
        if g == "sort_rows":
            x = partial_sort_rows(x, value)
        elif g == "sort_cols":
            x = partial_sort_cols(x, value)
        elif g == "sort_within_rows":
            x = partial_sort_within_rows(x, value)
        elif g == "sparsity":
            x = sparsify(x, value, _gen(device, seed ^ 0x5A5A5A5A))
        elif g == "sorted_sparsity":
            x = sparsify(partial_sort_rows(x, 1.0), value, _gen(device, seed ^ 0x5A5A5A5A))
        elif g not in ("baseline", "zero_low", "zero_high"):
            raise ValueError(f"unknown generator {g}")
    t = to_dtype(x, spec)  # round-to-nearest first ...
    n = int(value)
    bit_gen = _gen(device, seed ^ 0x3C3C3C3C)
    if g == "bits_random":  # ... then edit the dtype's raw bits
        t, info.nonfinite_fixed = flip_random_bits(t, spec, n, bit_gen)
    elif g == "bits_low":
        t, info.nonfinite_fixed = randomize_low_bits(t, spec, n, bit_gen)
    elif g == "bits_high":
        t, info.nonfinite_fixed = randomize_high_bits(t, spec, n, bit_gen)
    elif g == "zero_low":
        t = zero_low_bits(t, spec, n)
    elif g == "zero_high":
        t = zero_high_bits(t, spec, n)
    return t, info


def generate_pair(exp: Experiment, value: float, spec: DTypeSpec, m: int, n: int, k: int, seed: int, device: Any,
                  base_seed: int = 0, generator: str = "charbench") -> tuple[Any, Any, dict[str, Any]]:
    """Operands A (M, K) and B (K, N) of one point.

    Args:
        generator: ``charbench`` (this module: torch on the device, fill along K, finite
            values) or ``paper`` (:mod:`.paper_generators`: the paper's host inputs bit for
            bit, column-major, seeds ``seed`` and ``seed + 1``; ``base_seed`` unused).

    Returns:
        ``(a, b, info)`` where info has ``nonfinite_fixed_frac``, ``b_layout``,
        ``fill_order`` and ``generator``.
    """
    from charbench.workloads.gemm_power.experiments import fill_order

    if generator == "paper":
        from charbench.workloads.gemm_power.paper_generators import paper_pair

        a, b, info = paper_pair(exp, value, spec, m, n, k, seed, device)
        return a, b, {"nonfinite_fixed_frac": 0.0, "nonfinite_input_frac": info["nonfinite_frac"], "b_layout": info["b_layout"],
                      "fill_order": info["fill_order"], "generator": "paper"}
    if generator != "charbench":
        raise ConfigError(f"--generator: unknown generator {generator!r}; valid: paper, charbench")
    a, ia = generate_matrix(exp, value, spec, m, k, stream_seed(base_seed, seed, 0), device)
    if exp.transpose_b:
        bt, ib = generate_matrix(exp, value, spec, n, k, stream_seed(base_seed, seed, 1), device)
        b = bt.t()
    else:
        b, ib = generate_matrix(exp, value, spec, k, n, stream_seed(base_seed, seed, 1), device)
    fixed = (ia.nonfinite_fixed + ib.nonfinite_fixed) / float(m * k + k * n)
    return a, b, {"nonfinite_fixed_frac": fixed, "nonfinite_input_frac": 0.0,
                  "b_layout": "K-major (transposed)" if exp.transpose_b else "row-major (not transposed)",
                  "fill_order": fill_order(exp, "charbench"), "generator": "charbench"}
