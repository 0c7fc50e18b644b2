"""Switching statistics: popcount paths agree, and every statistic is exact on small inputs."""

from __future__ import annotations

import pytest
import torch

from charbench.kernels.gemm.dtypes import get_dtype, round_tf32
from charbench.kernels.switching import popcount_sum, switching_stats


def _py_popcount(t: torch.Tensor, width: int) -> int:
    return sum(bin(v & ((1 << width) - 1)).count("1") for v in t.reshape(-1).tolist())


@pytest.mark.parametrize("dtype,width", [(torch.int8, 8), (torch.int16, 16), (torch.int32, 32), (torch.int64, 64)])
@pytest.mark.parametrize("n", [1, 7, 1001])
def test_popcount_paths_agree_with_python(dtype: torch.dtype, width: int, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (n,), generator=g, dtype=dtype)
    ref = _py_popcount(x, width)
    assert popcount_sum(x, use_numpy=False) == ref
    assert popcount_sum(x, use_numpy=True) == ref
    assert popcount_sum(x) == ref


def test_popcount_of_extremes() -> None:
    assert popcount_sum(torch.tensor([-1], dtype=torch.int64), use_numpy=False) == 64
    assert popcount_sum(torch.tensor([torch.iinfo(torch.int64).min], dtype=torch.int64), use_numpy=False) == 1
    assert popcount_sum(torch.zeros(0, dtype=torch.int32)) == 0


def _i16(vals: list[list[int]]) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.int32).to(torch.int16).view(torch.float16)


def test_fp16_statistics_exact() -> None:
    spec = get_dtype("fp16")
    # A (2, 3): raw words; B (3, 2)
    a = _i16([[0x0000, 0x0001, 0x0003], [0x8000, 0x0000, 0x00FF]])
    b = _i16([[0x0001, 0x0000], [0x0001, 0x0000], [0x0000, 0xFFFF - 0x10000 + 0x10000 - 0x8000]])  # last: 0x7FFF
    s = switching_stats(a, b, spec)
    assert s["hamming_a_bits"] == pytest.approx((0 + 1 + 2 + 1 + 0 + 8) / 6)
    assert s["hamming_b_bits"] == pytest.approx((1 + 0 + 1 + 0 + 0 + 15) / 6)
    # A along K (rows): |0^1|=1, |1^3|=1, |8000^0|=1, |0^FF|=8 -> 11 over 4 pairs
    assert s["toggle_a_k_bits"] == pytest.approx(11 / 4)
    # B along K (columns): col0 1^1=0, 1^0=1; col1 0^0=0, 0^7FFF=15 -> 16 over 4 pairs
    assert s["toggle_b_k_bits"] == pytest.approx(16 / 4)
    # A along M: 0^8000=1, 1^0=1, 3^FF=6 -> 8 over 3; B along N: 1^0, 1^0, 0^7FFF -> 17 over 3
    assert s["toggle_a_m_bits"] == pytest.approx(8 / 3)
    assert s["toggle_b_n_bits"] == pytest.approx(17 / 3)
    assert s["toggle_k_frac"] == pytest.approx((11 / 4 + 16 / 4) / 32)
    # +0 and -0 (0x8000) are zero operands: A has 3 zeros, B has 3
    assert s["zero_operand_frac"] == pytest.approx(6 / 12)
    # products: k=0: A col0 nonzero count 0 -> 0; k=1: A col1 1 nz x B row1 1 nz = 1; k=2: 2 x 1 = 2
    assert s["zero_product_frac"] == pytest.approx(1 - 3 / (2 * 2 * 3))
    # alignment over memory order: A words vs B words element by element
    aw = [0x0000, 0x0001, 0x0003, 0x8000, 0x0000, 0x00FF]
    bw = [0x0001, 0x0000, 0x0001, 0x0000, 0x0000, 0x7FFF]
    mism = sum(bin(x ^ y).count("1") for x, y in zip(aw, bw))
    assert s["bit_alignment_frac"] == pytest.approx(1 - mism / (6 * 16))


def test_kmajor_view_gives_the_same_statistics_as_a_contiguous_copy() -> None:
    spec = get_dtype("bf16")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(17, 24, generator=g).to(torch.bfloat16)
    bt = torch.randn(9, 24, generator=g).to(torch.bfloat16)
    s_view = switching_stats(a, bt.t(), spec)
    s_copy = switching_stats(a, bt.t().contiguous(), spec)
    for key in ("hamming_a_bits", "hamming_b_bits", "toggle_a_k_bits", "toggle_b_k_bits", "toggle_a_m_bits",
                "toggle_b_n_bits", "zero_operand_frac", "zero_product_frac"):
        assert s_view[key] == pytest.approx(s_copy[key]), key


def test_tf32_ignores_the_13_low_bits() -> None:
    spec = get_dtype("tf32")
    a = round_tf32(torch.tensor([[1.0, 3.0], [-2.0, 0.5]]))
    noisy = (a.view(torch.int32) | 0x1FFF).view(torch.float32)  # set the ignored bits
    b = round_tf32(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
    s1, s2 = switching_stats(a, b, spec), switching_stats(noisy, b, spec)
    assert s1 == s2
    assert s1["hamming_a_bits"] <= 19


def test_int8_zero_and_sign() -> None:
    spec = get_dtype("int8")
    a = torch.tensor([[0, -1], [1, 0]], dtype=torch.int8)
    b = torch.tensor([[0, 0], [-128, 2]], dtype=torch.int8)
    s = switching_stats(a, b, spec)
    assert s["hamming_a_bits"] == pytest.approx((0 + 8 + 1 + 0) / 4)
    assert s["zero_operand_frac"] == pytest.approx(4 / 8)
    # k=0: A col0 nz=1, B row0 nz=0 -> 0; k=1: A col1 nz=1, B row1 nz=2 -> 2; 2 of 8 products non-zero
    assert s["zero_product_frac"] == pytest.approx(1 - 2 / 8)


def test_all_zero_and_constant_inputs_do_not_toggle() -> None:
    spec = get_dtype("fp32")
    z = torch.zeros(8, 8)
    s = switching_stats(z, z, spec)
    assert s["toggle_k_frac"] == 0 and s["hamming_frac"] == 0 and s["zero_product_frac"] == 1.0
    c = torch.full((8, 8), 3.25)
    s = switching_stats(c, c.t(), spec)
    assert s["toggle_k_frac"] == 0 and s["bit_alignment_frac"] == 1.0 and s["zero_operand_frac"] == 0


def test_bit_position_stats_exact() -> None:
    from charbench.kernels.switching import bit_position_stats

    spec = get_dtype("fp16")
    a = _i16([[0x0000, 0x0001, 0x0003], [0x8000, 0x0000, 0x00FF]])
    b = _i16([[0x0001, 0x0000], [0x0001, 0x0000], [0x0000, 0x7FFF]])
    s = bit_position_stats(a, b, spec)
    assert len(s) == 2 * 3 * 16
    # A's bit 0 is set in 0x0001, 0x0003, 0x00FF: 3 of 6; bit 15 in 0x8000 only
    assert s["hw_a_b0"] == 3 / 6 and s["hw_a_b15"] == 1 / 6 and s["hw_a_b8"] == 0.0
    # A along K: 0^1, 1^3, 8000^0, 0^FF -> bit 0 flips in 0^1, 0^FF; bit 1 in 1^3, 0^FF; bit 15 in 8000^0
    assert (s["togk_a_b0"], s["togk_a_b1"], s["togk_a_b15"], s["togk_a_b7"]) == (2 / 4, 2 / 4, 1 / 4, 1 / 4)
    # A along M: 0^8000, 1^0, 3^FF (= FC): bit 0 once, bit 2 once, bit 15 once
    assert (s["togmn_a_b0"], s["togmn_a_b1"], s["togmn_a_b2"], s["togmn_a_b15"]) == (1 / 3, 0.0, 1 / 3, 1 / 3)
    # B along K (its columns): 1^1, 1^0 | 0^0, 0^7FFF: bit 0 twice, bits 1-14 once, bit 15 never
    assert (s["togk_b_b0"], s["togk_b_b14"], s["togk_b_b15"]) == (2 / 4, 1 / 4, 0.0)
    # B along N (its rows): 1^0, 1^0, 0^7FFF
    assert (s["togmn_b_b0"], s["togmn_b_b3"]) == (3 / 3, 1 / 3)


def test_bit_position_stats_average_to_the_field_stats() -> None:
    from charbench.kernels.switching import FIELDS, bit_position_stats, field_switching_stats

    g = torch.Generator().manual_seed(3)
    for name in ("fp16", "fp32", "int8"):
        spec = get_dtype(name)
        if name == "int8":
            a = torch.randint(-128, 128, (9, 7), generator=g, dtype=torch.int8)
            b = torch.randint(-128, 128, (5, 7), generator=g, dtype=torch.int8).t()
        else:
            a = torch.randn(9, 7, generator=g).to({"fp16": torch.float16, "fp32": torch.float32}[name])
            b = torch.randn(5, 7, generator=g).to(a.dtype).t()
        s, f = bit_position_stats(a, b, spec), field_switching_stats(a, b, spec)
        for fld, (lo, width) in FIELDS[spec.storage].items():
            for x in "ab":
                for kind, key in (("hw", f"hw_{x}_{fld}_frac"), ("togk", f"tog_{x}_k_{fld}_frac"), ("togmn", f"tog_{x}_mn_{fld}_frac")):
                    assert sum(s[f"{kind}_{x}_b{j}"] for j in range(lo, lo + width)) / width == pytest.approx(f[key], abs=1e-12)


def test_output_stats_exact() -> None:
    from charbench.kernels.switching import output_stats

    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [300.0, 0.0]], dtype=torch.float16)
    b = torch.tensor([[1.0, 0.0], [0.0, 300.0]], dtype=torch.float16)
    # C = [[1, 600], [3, 1200], [300, 0]]; out_max 1000: one of six is over
    s = output_stats(a, b, rows=3, out_max=1000.0)
    assert s["out_over_frac"] == 1 / 6
    import math

    assert s["out_log2_abs_mean"] == pytest.approx(sum(math.log2(1 + v) for v in (1, 600, 3, 1200, 300, 0)) / 6)
    inf = torch.tensor([[float("inf")]], dtype=torch.float16)
    s = output_stats(inf, torch.ones(1, 1, dtype=torch.float16))
    assert s == {"out_log2_abs_mean": 0.0, "out_over_frac": 1.0}
