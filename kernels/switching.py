"""Switching-activity statistics of GEMM operands, from their raw bits.

What the multipliers see depends on the bits of the operands and on how often those bits
change between consecutive operands. Per input pair this computes, in the dtype's bit
layout (format bits only: TF32 ignores the 13 low bits of its float32 word):

* mean Hamming weight of A and B (set bits per element);
* the paper's *bit alignment*: fraction of bit positions where A and B agree, element by
  element in memory order;
* operand toggle rate: mean Hamming distance between consecutive operands along K, the
  order in which they stream into the dot products (A along its rows, B down its columns),
  and, for comparison, along the other axis (A down M, B along N);
* the fraction of zero operands and of zero products ``A[i,k] * B[k,j]``.

::

    from charbench.kernels.switching import switching_stats
    s = switching_stats(a, b, get_dtype("fp16"))   # a (M, K), b (K, N) in storage dtype
    s["toggle_k_frac"], s["hamming_frac"], s["zero_operand_frac"]

Everything is vectorized torch on the operands' device: XOR of shifted views, then a
population count of 64-bit words (numpy's hardware ``bitwise_count`` on the CPU when
available, a SWAR bit trick in torch otherwise). No Python loop touches elements.
"""

from __future__ import annotations

from typing import Any

from charbench.kernels.gemm.dtypes import DTypeSpec, int_view_dtype

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101
_CHUNK = 1 << 24  # int64 words per SWAR pass (bounds temporaries to ~128 MiB)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _swar_popcount_sum(words: Any) -> int:
    """Total set bits of an int64 tensor (SWAR: per-word counts, summed)."""
    import torch

    total = 0
    flat = words.reshape(-1)
    m1, m2, m4, h01 = (torch.tensor(_signed64(c), dtype=torch.int64, device=flat.device) for c in (_M1, _M2, _M4, _H01))
    for start in range(0, flat.numel(), _CHUNK):
        x = flat[start:start + _CHUNK]
        # arithmetic right shifts are harmless: each mask clears the bits a sign fill sets
        x = x - ((x >> 1) & m1)
        x = (x & m2) + ((x >> 2) & m2)
        x = (x + (x >> 4)) & m4
        x = (x * h01) >> 56  # top byte holds the count (<= 64, so the sign bit stays 0)
        total += int((x & 0xFF).sum().item())
    return total


def _as_words(x: Any) -> Any:
    """The bytes of an integer tensor as int64 words (zero-padded to a multiple of 8 bytes)."""
    import torch

    b = x.contiguous().reshape(-1).view(torch.uint8)
    pad = (-b.numel()) % 8
    if pad:
        b = torch.cat([b, torch.zeros(pad, dtype=torch.uint8, device=b.device)])
    return b.view(torch.int64)


def popcount_sum(x: Any, *, use_numpy: bool | None = None) -> int:
    """Total number of set bits in an integer tensor (any integer dtype, any device).

    Args:
        x: integer tensor.
        use_numpy: force (True) or forbid (False) numpy's ``bitwise_count`` on CPU tensors;
            None picks it when available.
    """
    words = _as_words(x)
    if words.numel() == 0:
        return 0
    if words.device.type == "cpu":
        import numpy as np

        if use_numpy is None:
            use_numpy = hasattr(np, "bitwise_count")
        if use_numpy:
            return int(np.bitwise_count(words.numpy().view(np.uint64)).sum(dtype=np.int64))
    return _swar_popcount_sum(words)


def _masked(bits: Any, spec: DTypeSpec) -> Any:
    """Keep the format bits only (TF32: drop the 13 low bits of the float32 word)."""
    if spec.bits == spec.storage_bits:
        return bits
    import torch

    mask = spec.format_mask
    width = spec.storage_bits
    signed_mask = mask - (1 << width) if mask >= 1 << (width - 1) else mask
    return bits & torch.tensor(signed_mask, dtype=bits.dtype, device=bits.device)


def _nonzero(bits: Any, spec: DTypeSpec) -> Any:
    """Boolean tensor: the element's value is not zero (floats: +0 and -0 are both zero)."""
    import torch

    if spec.sign_bit is None:
        return bits != 0
    width = spec.storage_bits
    mag_mask = (1 << spec.sign_bit) - 1 if spec.sign_bit == width - 1 else ((1 << width) - 1) & ~(1 << spec.sign_bit)
    return (bits & torch.tensor(mag_mask, dtype=bits.dtype, device=bits.device)) != 0


def _toggle_bits(x: Any, dim: int) -> tuple[int, int]:
    """(total flipped bits, number of neighbour pairs) along ``dim`` of a 2-D int tensor."""
    n = x.shape[dim]
    if n < 2:
        return 0, 0
    if dim == 1:
        d = x[:, 1:] ^ x[:, :-1]
    else:
        d = x[1:, :] ^ x[:-1, :]
    return popcount_sum(d), d.numel()


def switching_stats(a: Any, b: Any, spec: DTypeSpec) -> dict[str, float]:
    """Switching statistics of the pair ``(a, b)`` for ``C = a @ b``.

    Args:
        a: (M, K) operand in the dtype's storage type.
        b: (K, N) operand; may be a transposed view (K-major storage), which is used as is.
        spec: the dtype (bit layout).

    Returns:
        ``hamming_a_bits``, ``hamming_b_bits`` (mean set bits per element), ``hamming_frac``
        (mean over A and B, per format bit), ``bit_alignment_frac``, ``toggle_a_k_bits``,
        ``toggle_b_k_bits``, ``toggle_a_m_bits``, ``toggle_b_n_bits`` (mean flipped bits
        between neighbours), ``toggle_k_frac`` and ``toggle_mn_frac`` (mean of A and B, per
        format bit), ``zero_operand_frac``, ``zero_product_frac``.
    """
    import torch

    idt = int_view_dtype(spec)
    ab = _masked(a.view(idt), spec)
    # Work on B's storage order: a K-major view is the transpose of a contiguous (N, K).
    b_kmajor = b.dim() == 2 and b.stride(0) == 1 and not b.is_contiguous()
    bst = _masked((b.t() if b_kmajor else b).view(idt), spec)  # (N, K) if K-major else (K, N)
    m, k = ab.shape
    n = b.shape[1]
    w = spec.bits

    hw_a = popcount_sum(ab) / max(1, ab.numel())
    hw_b = popcount_sum(bst) / max(1, bst.numel())
    ta_k, pa_k = _toggle_bits(ab, 1)
    ta_m, pa_m = _toggle_bits(ab, 0)
    if b_kmajor:
        tb_k, pb_k = _toggle_bits(bst, 1)
        tb_n, pb_n = _toggle_bits(bst, 0)
    else:
        tb_k, pb_k = _toggle_bits(bst, 0)
        tb_n, pb_n = _toggle_bits(bst, 1)
    # bit alignment: memory order of A against memory order of B, over the common length
    fa, fb = ab.reshape(-1), bst.reshape(-1)
    common = min(fa.numel(), fb.numel())
    mism = popcount_sum(fa[:common] ^ fb[:common]) if common else 0
    align = 1.0 - mism / (common * w) if common else 0.0

    cnt_a = _nonzero(ab, spec).sum(dim=0, dtype=torch.float64)  # non-zeros of A per k: (K,)
    cnt_b = _nonzero(bst, spec).sum(dim=0 if b_kmajor else 1, dtype=torch.float64)  # non-zeros of B per k: (K,)
    zero_ops = (ab.numel() - int(cnt_a.sum().item())) + (bst.numel() - int(cnt_b.sum().item()))
    nonzero_products = float((cnt_a * cnt_b).sum().item())
    total_products = float(m) * float(n) * float(k)

    toggle_a_k = ta_k / pa_k if pa_k else 0.0
    toggle_b_k = tb_k / pb_k if pb_k else 0.0
    toggle_a_m = ta_m / pa_m if pa_m else 0.0
    toggle_b_n = tb_n / pb_n if pb_n else 0.0
    return {
        "hamming_a_bits": hw_a,
        "hamming_b_bits": hw_b,
        "hamming_frac": (hw_a + hw_b) / (2 * w),
        "bit_alignment_frac": align,
        "toggle_a_k_bits": toggle_a_k,
        "toggle_b_k_bits": toggle_b_k,
        "toggle_a_m_bits": toggle_a_m,
        "toggle_b_n_bits": toggle_b_n,
        "toggle_k_frac": (toggle_a_k + toggle_b_k) / (2 * w),
        "toggle_mn_frac": (toggle_a_m + toggle_b_n) / (2 * w),
        "zero_operand_frac": zero_ops / max(1, ab.numel() + bst.numel()),
        "zero_product_frac": 1.0 - nonzero_products / total_products if total_products else 0.0,
    }


#: features of the power model, in order (all fractions in [0, 1])
MODEL_FEATURES = ("toggle_k_frac", "hamming_frac", "zero_operand_frac")


# --- bit-field-aware, per-operand statistics (the switching model's feature set) -------------

#: bit fields per storage format: name -> (lowest bit, width); int8: sign, high 3, low 4 bits
FIELDS = {
    "float32": {"sign": (31, 1), "exp": (23, 8), "man": (0, 23)},
    "float16": {"sign": (15, 1), "exp": (10, 5), "man": (0, 10)},
    "bfloat16": {"sign": (15, 1), "exp": (7, 8), "man": (0, 7)},
    "float8_e4m3fn": {"sign": (7, 1), "exp": (3, 4), "man": (0, 3)},
    "float8_e5m2": {"sign": (7, 1), "exp": (2, 5), "man": (0, 2)},
    "int8": {"sign": (7, 1), "hi": (4, 3), "lo": (0, 4)},
}


def _np_words(t: Any, spec: DTypeSpec) -> Any:
    """(rows, cols) unsigned numpy words of a 2-D operand (a copy in logical order)."""
    import numpy as np

    u = {8: np.uint8, 16: np.uint16, 32: np.uint32}[spec.storage_bits]
    return np.ascontiguousarray(t.contiguous().view(int_view_dtype(spec)).cpu().numpy()).view(u)


def field_switching_stats(a: Any, b: Any, spec: DTypeSpec) -> dict[str, float]:
    """Per-operand, per-bit-field Hamming weights and toggle rates, and zero fractions.

    For operand ``x`` in (a, b) and each field ``f`` of the format (floats: sign, exp, man;
    int8: sign, hi = bits 4-6, lo = bits 0-3):

    * ``hw_x_f_frac``: mean set bits of the field, per field bit;
    * ``tog_x_k_f_frac``: mean flipped field bits between neighbours along K (the order the
      dot products consume them), per field bit; ``tog_x_mn_f_frac``: the same along M (A)
      or N (B);
    * ``zero_x_frac``: fraction of elements equal to zero (+0 and -0 for floats).

    Args:
        a: (M, K) operand; b: (K, N) operand (any strides), in the storage dtype.
        spec: the dtype.
    """
    import numpy as np

    fields = FIELDS[spec.storage]
    out: dict[str, float] = {}
    wa = _np_words(a, spec)      # (M, K)
    wb = _np_words(b.t(), spec)  # (N, K): K along the rows for both
    for name, w in (("a", wa), ("b", wb)):
        along_k = w[:, 1:] ^ w[:, :-1]
        along_mn = w[1:, :] ^ w[:-1, :]
        for f, (lo, width) in fields.items():
            mask = w.dtype.type(((1 << width) - 1) << lo)
            out[f"hw_{name}_{f}_frac"] = float(np.bitwise_count(w & mask).sum(dtype=np.int64)) / (w.size * width)
            out[f"tog_{name}_k_{f}_frac"] = (float(np.bitwise_count(along_k & mask).sum(dtype=np.int64)) / (along_k.size * width)
                                             if along_k.size else 0.0)
            out[f"tog_{name}_mn_{f}_frac"] = (float(np.bitwise_count(along_mn & mask).sum(dtype=np.int64)) / (along_mn.size * width)
                                              if along_mn.size else 0.0)
        mag = w if spec.sign_bit is None else (w & w.dtype.type(((1 << spec.storage_bits) - 1) & ~(1 << spec.sign_bit)))
        out[f"zero_{name}_frac"] = float((mag == 0).sum()) / w.size
    return out


def field_feature_names(spec: DTypeSpec) -> list[str]:
    """The names :func:`field_switching_stats` returns for ``spec``, in order."""
    names = []
    for x in ("a", "b"):
        for f in FIELDS[spec.storage]:
            names += [f"hw_{x}_{f}_frac", f"tog_{x}_k_{f}_frac", f"tog_{x}_mn_{f}_frac"]
        names.append(f"zero_{x}_frac")
    return names


# --- per bit position: every field aggregate (and finer ones) derives from these ----------

def _bit_counts(w: Any) -> Any:
    """Set bits per bit position (index 0 = least significant) over a numpy array of uint words."""
    import numpy as np

    nbytes = w.dtype.itemsize
    if w.size == 0:
        return np.zeros(8 * nbytes, dtype=np.int64)
    # little-endian words: byte j holds bits 8j..8j+7; bitorder "little" puts bit 0 first
    bits = np.unpackbits(np.ascontiguousarray(w).reshape(-1).view(np.uint8).reshape(-1, nbytes), axis=1, bitorder="little")
    return bits.sum(axis=0, dtype=np.int64)


def bit_position_stats(a: Any, b: Any, spec: DTypeSpec) -> dict[str, float]:
    """Per operand and bit position: set-bit rate and toggle rates along K and along M (A) / N (B).

    Keys ``hw_{x}_b{j}``, ``togk_{x}_b{j}``, ``togmn_{x}_b{j}`` (x in a, b; j = bit index,
    0 = least significant), each a fraction in [0, 1]: the share of elements (or neighbour
    pairs) with that bit set (or flipped). The field statistics of
    :func:`field_switching_stats` are averages of these over the field's bits; keeping every
    position lets a model weigh bits unequally (a multiplier's mantissa array is not its
    exponent adder).

    Args:
        a: (M, K) operand; b: (K, N) operand (any strides), in the storage dtype.
        spec: the dtype.
    """
    import sys

    if sys.byteorder != "little":  # the byte -> bit mapping of _bit_counts assumes it
        raise RuntimeError("bit_position_stats needs a little-endian host")
    out: dict[str, float] = {}
    wa = _np_words(a, spec)      # (M, K)
    wb = _np_words(b.t(), spec)  # (N, K): K along the rows for both
    width = spec.storage_bits
    for name, w in (("a", wa), ("b", wb)):
        for key, arr in (("hw", w), ("togk", w[:, 1:] ^ w[:, :-1]), ("togmn", w[1:, :] ^ w[:-1, :])):
            cnt = _bit_counts(arr)
            for j in range(width):
                out[f"{key}_{name}_b{j}"] = float(cnt[j]) / arr.size if arr.size else 0.0
    return out


def output_stats(a: Any, b: Any, rows: int = 64, out_max: float = 65504.0) -> dict[str, float]:
    """Magnitude of the GEMM's output on an even sample of ``rows`` rows of C = A @ B.

    The accumulator's bits switch with the size of the partial sums, and an fp16 accumulator
    (the paper's CUTLASS default for FP16) overflows past ``out_max``. Computed in float64
    on the sampled rows (rows / M of the full GEMM's work); the sample's standard error of a
    row-mean statistic is at most its row-to-row standard deviation / sqrt(rows).

    Returns:
        ``out_log2_abs_mean`` (mean log2(1 + |c|) over finite outputs; 0 if none),
        ``out_over_frac`` (fraction with |c| > out_max or non-finite).
    """
    import numpy as np
    import torch

    m = a.shape[0]
    idx = torch.linspace(0, m - 1, steps=min(rows, m)).round().long()
    af = a[idx].to(torch.float64)
    bf = b.to(torch.float64)
    with np.errstate(all="ignore"):
        c = (af @ bf).numpy()
    fin = np.isfinite(c)
    over = (~fin) | (np.abs(np.where(fin, c, 0.0)) > out_max)
    return {
        "out_log2_abs_mean": float(np.log2(1.0 + np.abs(c[fin])).mean()) if fin.any() else 0.0,
        "out_over_frac": float(over.mean()),
    }
