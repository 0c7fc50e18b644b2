"""``--generator paper``: the paper's host-side inputs, bit for bit (IDP ``matrices.h``).

The paper generates each operand as a float32 sequence on the host, edits it (sorts,
sparsity), transposes B, converts to the GEMM type with round-to-nearest and edits raw bits,
then hands CUTLASS the buffer as a **column-major** matrix (A: M x K with lda = M; B: K x N
with ldb = K)::

    a, b, info = paper_pair(get_experiment("sort-rows"), 0.4, get_dtype("fp16"), 2048, 2048, 2048, seed=1)
    # a: (M, K) torch view of A's buffer, b: (K, N) view of B's buffer; values as the paper's GEMM read them

What this reproduces (each checked against the released ``bit_metrics``, see tests):

* the engine and distributions of :mod:`.paper_rng` (libstdc++ ``minstd_rand0``), A seeded with
  ``seed`` and B with ``seed + 1``;
* counts ``int(float(size) * float(p))``; ``std::partial_sort`` (heap select) with its
  remainder in heap order: a position after the sorted head holds the heap's evicted maximum
  where its value entered the heap, else its own value (:func:`partial_sort_heap`);
* fill order by GEMM index: the generated sequence runs along **M** for A and along **N** for
  B (transposed, the default); experiment 9 ("sort-cols") runs along **K** for both;
  experiment 13 (B not transposed) along K for B; experiment 10 sorts runs of M (A) / N (B);
* non-finite encodings produced by bit edits are kept (the paper's GEMM then outputs Inf/NaN);
* ``MatrixBits`` (experiment 4) shuffles one persistent bit-position vector per element,
  continuing the engine after the constant's normal draw.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from charbench.errors import ConfigError
from charbench.kernels.gemm.dtypes import DTypeSpec
from charbench.workloads.gemm_power.experiments import BASE_SIGMA, MEAN_SWEEP_SIGMA, Experiment, fill_order
from charbench.workloads.gemm_power.paper_rng import MinStdRand0, normal_f32, shuffle_indices, shuffle_small, uniform_int

#: storage types the paper's code handles (DTYPE = float, half_t, int8_t; bf16 by the same code)
_NP_STORAGE = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def check_supported(spec: DTypeSpec) -> None:
    """Raise a ConfigError for a dtype the paper's generator cannot express."""
    if spec.storage not in _NP_STORAGE and spec.storage != "bfloat16":
        raise ConfigError(f"--generator paper: dtype {spec.name} ({spec.storage}) has no counterpart in the paper's code "
                          "(FP32, FP16, INT8; BF16 by the same conversion); use --generator charbench")


def paper_count(size: int, p: float) -> int:
    """``static_cast<int>(static_cast<float>(size) * percent)`` with ``percent`` a float."""
    return int(np.float32(size) * np.float32(p))


# --- the float stage ------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _normal_cached(seed: int, n: int, mean: float, stddev: float) -> tuple[np.ndarray, int]:
    """``normal_f32`` of a fresh engine seeded with ``seed``: (read-only values, engine state after).

    Every point of a sweep that starts from the same seeded normal (baseline, the sorts,
    sparsity, bit zeroing) draws the same sequence; a table of 2048^2 inputs would otherwise
    redraw it ~100 times. Read-only, so a later edit cannot corrupt the cached copy.
    """
    eng = MinStdRand0(seed)
    x = normal_f32(eng, n, mean, stddev)
    x.setflags(write=False)
    return x, eng.state


def _seeded_normal(seed: int, n: int, mean: float, stddev: float) -> tuple[np.ndarray, MinStdRand0]:
    """(values, engine) as ``eng = MinStdRand0(seed); normal_f32(eng, n, mean, stddev)`` leaves them."""
    x, state = _normal_cached(int(seed), int(n), float(mean), float(stddev))
    eng = MinStdRand0(seed)
    eng.state = state
    return x, eng


def _heap_select_evictions(ranks: np.ndarray, m: int) -> tuple[list[int], list[int]]:
    """Positions (>= m) whose value entered the max-heap of the m smallest, and the ranks evicted there.

    A plain loop over the candidates only: a position can enter only if its rank is below
    the heap's current maximum, which a vectorized filter per chunk checks first.
    """
    import heapq

    heap = (-ranks[:m]).tolist()
    heapq.heapify(heap)
    pos_out: list[int] = []
    ev_out: list[int] = []
    arr = np.asarray(ranks, dtype=np.int64)
    chunk = 1 << 12
    replace = heapq.heapreplace
    add_pos, add_ev = pos_out.append, ev_out.append
    for s in range(m, arr.size, chunk):
        seg = arr[s:s + chunk]
        offs = np.flatnonzero(seg < -heap[0])
        for off, v in zip((offs + s).tolist(), seg[offs].tolist()):
            if v < -heap[0]:
                add_pos(off)
                add_ev(-replace(heap, -v))
    return pos_out, ev_out


def partial_sort_heap(x: np.ndarray, m: int, seg: int | None = None) -> np.ndarray:
    """``std::partial_sort(begin, begin + m, end)`` of each segment of length ``seg``.

    libstdc++ heap-selects: it heapifies the first m values, then for each later value
    smaller than the heap's maximum swaps the two (the maximum goes to that position), and
    finally sorts the heap. So the head is the m smallest, ascending, and a later position
    holds its own value unless that value entered the heap, in which case it holds the
    maximum evicted at that moment. Which maximum is evicted depends only on the heap's
    contents, not on its internal order, so any max-heap gives the same result.
    """
    seg = x.size if seg is None else seg
    rows = x.size // seg
    xs = x.reshape(rows, seg)
    if m <= 0:
        return x.copy()
    if m >= seg:
        return np.sort(xs, axis=1, kind="stable").reshape(-1)
    out = xs.copy()
    for r in range(rows):
        row = xs[r]
        order = np.argsort(row, kind="stable")  # equal values: the earlier one ranks lower
        rank = np.empty(seg, dtype=np.int64)
        rank[order] = np.arange(seg, dtype=np.int64)
        sorted_vals = row[order]
        pos, ev = _heap_select_evictions(rank, m)
        out[r, :m] = sorted_vals[:m]
        if pos:
            out[r, np.asarray(pos)] = sorted_vals[np.asarray(ev)]
    return out.reshape(-1)


def _float_sequence(exp: Experiment, value: float, family: str, rows: int, cols: int, seed: int) -> tuple[np.ndarray, MinStdRand0]:
    """The generated float32 buffer (row-major rows x cols, before any transpose) and the engine."""
    g = exp.generator
    size = rows * cols
    base = BASE_SIGMA[family]
    if g == "gaussian_sigma":
        return _seeded_normal(seed, size, 0.0, value)
    if g in ("gaussian_mean", "sorted_mean"):
        x, eng = _seeded_normal(seed, size, value, MEAN_SWEEP_SIGMA[family])
        return (partial_sort_heap(x, size) if g == "sorted_mean" else x), eng
    eng = MinStdRand0(seed)
    if g == "unique":
        n = int(value)
        vals = normal_f32(eng, n, 0.0, base)
        idx = uniform_int(eng, np.full(size, n - 1, dtype=np.int64))
        return vals[idx], eng
    if g in ("bits_random", "bits_low", "bits_high"):
        v = normal_f32(eng, 1, 0.0, base)
        return np.full(size, v[0], dtype=np.float32), eng
    x, eng = _seeded_normal(seed, size, 0.0, base)
    if g == "sort_rows":
        return (partial_sort_heap(x, paper_count(size, value)) if value != 0.0 else x), eng
    if g == "sort_cols":
        if value == 0.0:
            return x, eng
        v = partial_sort_heap(x, paper_count(size, value))
        i = np.arange(size, dtype=np.int64)
        out = np.empty_like(v)
        out[(i % rows) * cols + i // rows] = v  # the paper's (i % cols) * cols + i / cols for square
        return out, eng
    if g == "sort_within_rows":
        return (partial_sort_heap(x, paper_count(cols, value), seg=cols) if value != 0.0 else x), eng
    if g in ("sparsity", "sorted_sparsity"):
        if g == "sorted_sparsity":
            x = partial_sort_heap(x, size)
        if value != 0.0:
            cnt = paper_count(size, value)
            zero_at = shuffle_indices(MinStdRand0(seed), size, first=cnt)  # a fresh engine, same seed
            x = x.copy()
            x[zero_at] = np.float32(0.0)
        return x, eng
    if g in ("baseline", "zero_low", "zero_high"):
        return x, eng
    raise ValueError(f"unknown generator {g}")


# --- conversion and the bit stage -------------------------------------------------------------

def convert(x: np.ndarray, spec: DTypeSpec) -> np.ndarray:
    """CUTLASS ``NumericConverter<DTYPE, float>`` (round to nearest even; int8 saturates)."""
    if spec.storage == "float32":
        return x.astype(np.float32)
    if spec.storage == "float16":
        return x.astype(np.float16)  # RNE, overflow to Inf
    if spec.storage == "int8":
        return np.clip(np.rint(x), -128, 127).astype(np.int8)
    if spec.storage == "bfloat16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        nan = np.isnan(x)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return np.where(nan, np.uint16(0x7FC0), r)  # bf16 words as uint16
    raise ConfigError(f"--generator paper: no conversion for {spec.storage}")


def _words(buf: np.ndarray, width: int) -> np.ndarray:
    return buf.view(_UINT[width]).copy() if buf.dtype != _UINT[width] else buf.copy()


@lru_cache(maxsize=2)
def _bit_positions(state: int, size: int, width: int) -> tuple[np.ndarray, int]:
    """``MatrixBits``' persistent position vector after each element's shuffle, from engine ``state``.

    Returns (read-only (size, width) uint8 positions, engine state after the shuffles). The
    shuffles do not depend on n, so a sweep over n (one operand each) computes them once.
    """
    eng = MinStdRand0(1)
    eng.state = state
    ident = np.tile(np.arange(width, dtype=np.int64), (size, 1))
    shuffle_small(eng, ident)  # per element: the permutation one std::shuffle call applies
    # the vector persists: state_i = state_{i-1}[perm_i]; prefix composition by doubling
    pos = ident.astype(np.uint8)  # small: the doubling scan moves 16-32 bytes per element
    del ident
    d = 1
    while d < size:
        pos[d:] = np.take_along_axis(pos[:-d], pos[d:], axis=1)  # right side read before the write
        d *= 2
    pos.setflags(write=False)
    return pos, eng.state


def bits_random(words: np.ndarray, width: int, n: int, eng: MinStdRand0) -> np.ndarray:
    """``MatrixBits``: per element, shuffle the persistent position vector, flip its first n."""
    if n <= 0:
        # the shuffles still run in the paper's code, but nothing is flipped
        return words
    size = words.size
    state, eng.state = _bit_positions(eng.state, size, width)
    mask = np.zeros(size, dtype=np.uint64)
    for j in range(n):
        mask |= np.uint64(1) << state[:, j].astype(np.uint64)
    return (words.astype(np.uint64) ^ mask).astype(words.dtype)


def _random_field(words: np.ndarray, positions: list[int], eng: MinStdRand0) -> np.ndarray:
    """Each listed bit (in draw order) set from one ``uniform_int_distribution(0, 1)`` call."""
    size = words.size
    k = len(positions)
    if k == 0:
        return words
    draws = uniform_int(eng, np.ones(size * k, dtype=np.int64)).reshape(size, k).astype(np.uint64)
    w = words.astype(np.uint64)
    for c, pos in enumerate(positions):
        bit = np.uint64(1) << np.uint64(pos)
        w = np.where(draws[:, c] == 1, w | bit, w & ~bit)
    return w.astype(words.dtype)


def bit_stage(buf: np.ndarray, spec: DTypeSpec, exp: Experiment, value: float, seed: int, eng: MinStdRand0) -> np.ndarray:
    """The paper's raw-bit edits on a converted buffer (storage words; values kept as produced)."""
    width = spec.storage_bits
    g = exp.generator
    n = int(value)
    if g not in ("bits_random", "bits_low", "bits_high", "zero_low", "zero_high"):
        return buf
    words = _words(buf, width)
    if g == "bits_random":
        words = bits_random(words, width, n, eng)
    elif g == "bits_low":
        words = _random_field(words, list(range(n)), MinStdRand0(seed))
    elif g == "bits_high":
        words = _random_field(words, [width - 1 - j for j in range(n)], MinStdRand0(seed))
    elif g == "zero_low" and n > 0:
        words = words & _UINT[width]((~((1 << n) - 1)) & ((1 << width) - 1))
    elif g == "zero_high" and n > 0:
        words = words & _UINT[width](((1 << (width - n)) - 1))
    return words


def paper_buffer(exp: Experiment, value: float, spec: DTypeSpec, rows: int, cols: int, seed: int, transpose: bool) -> np.ndarray:
    """One operand's device buffer as the paper builds it: storage words in memory order.

    Args:
        rows, cols: the generated shape (A: M, K; B: K, N).
        transpose: B's in-place transpose before conversion (the paper's default).
    """
    check_supported(spec)
    x, eng = _float_sequence(exp, value, spec.family, rows, cols, seed)
    if transpose:
        x = np.ascontiguousarray(x.reshape(rows, cols).T).reshape(-1)
    buf = convert(x, spec)
    words = bit_stage(buf, spec, exp, value, seed, eng)
    return words.view(_UINT[spec.storage_bits]) if words.dtype != _UINT[spec.storage_bits] else words


def paper_pair(exp: Experiment, value: float, spec: DTypeSpec, m: int, n: int, k: int, seed: int, device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """Operands A (M, K) and B (K, N) exactly as the paper's CUTLASS GEMM reads them.

    A's buffer is column-major with lda = M, B's with ldb = K; the returned tensors are
    views with those strides (A: stride (1, M), B: stride (1, K)), moved to ``device``.

    Returns:
        ``(a, b, info)``; info holds ``b_layout``, ``fill_order`` (by GEMM index) and
        ``nonfinite_frac`` (Inf/NaN encodings the edits produced, kept as the paper kept them).
    """
    import torch

    from charbench.kernels.gemm.dtypes import int_view_dtype, torch_dtype

    wa = paper_buffer(exp, value, spec, m, k, seed, transpose=False)
    wb = paper_buffer(exp, value, spec, k, n, seed + 1, transpose=exp.transpose_b)
    idt = int_view_dtype(spec)

    def as_tensor(words: np.ndarray, ld: int, other: int) -> Any:
        t = torch.from_numpy(words.view({8: np.int8, 16: np.int16, 32: np.int32}[spec.storage_bits]).copy())
        t = t.view(torch_dtype(spec)) if spec.storage != "int8" else t.view(idt)
        return t.reshape(other, ld).t().to(device)  # column-major: element (r, c) at r + c * ld

    a = as_tensor(wa, m, k)
    b = as_tensor(wb, k, n)
    nonfinite = 0
    if spec.is_float:
        nonfinite = int((~torch.isfinite(a.float())).sum().item() + (~torch.isfinite(b.float())).sum().item())
    return a, b, {
        "b_layout": "column-major K x N (ldb = K), B transposed at init" if exp.transpose_b else "column-major K x N (ldb = K), B not transposed",
        "fill_order": fill_order(exp, "paper"),
        "nonfinite_frac": nonfinite / float(m * k + k * n),
    }


def paper_bit_metrics(wa: np.ndarray, wb: np.ndarray, width: int) -> tuple[float, float, float]:
    """The paper's bit metrics of two buffers, computed as its C++ does (float accumulation).

    Mean Hamming weight: integer total / element count in float; bit alignment: per element
    ``matches / BIT_COUNT`` in float, summed sequentially in float, divided in float.
    """
    ua, ub = wa.view(_UINT[width]), wb.view(_UINT[width])
    n = np.float32(ua.size)
    hw_a = np.float32(np.bitwise_count(ua).sum(dtype=np.int64)) / n
    hw_b = np.float32(np.bitwise_count(ub).sum(dtype=np.int64)) / n
    matches = (width - np.bitwise_count(ua ^ ub).astype(np.int64)).astype(np.float32) / np.float32(width)
    total = np.cumsum(matches, dtype=np.float32)[-1]  # sequential float sum, as the C++ loop
    return float(hw_a), float(hw_b), float(total / n)
