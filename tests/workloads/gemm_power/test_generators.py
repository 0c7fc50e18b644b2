"""Generators, bit-exact on small matrices: each edit changes exactly what it says."""

from __future__ import annotations

import pytest
import torch

from charbench.kernels.gemm.dtypes import get_dtype, to_dtype
from charbench.workloads.gemm_power import generators as G
from charbench.workloads.gemm_power.experiments import EXPERIMENTS, get_experiment


def _u(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Storage words as unsigned int64."""
    view = {8: torch.int8, 16: torch.int16, 32: torch.int32}[bits]
    return t.contiguous().view(view).to(torch.int64) & ((1 << bits) - 1)


def _const(spec_name: str, value: float, n: int = 4096) -> torch.Tensor:
    return to_dtype(torch.full((n // 64, 64), value), get_dtype(spec_name))


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", "int8"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_randomize_low_bits_changes_only_those_bits(dtype: str, n: int) -> None:
    spec = get_dtype(dtype)
    t = _const(dtype, 37.0)
    out, fixed = G.randomize_low_bits(t, spec, n, torch.Generator().manual_seed(1))
    diff = _u(t, spec.storage_bits) ^ _u(out, spec.storage_bits)
    assert fixed == 0
    assert int((diff & ~((1 << n) - 1)).abs().sum()) == 0  # nothing above bit n-1 changed
    # every low bit is random: each one differs from the constant somewhere
    for bit in range(n):
        assert bool(((diff >> bit) & 1).any()), bit


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_randomize_high_bits_changes_only_those_bits(dtype: str, n: int) -> None:
    spec = get_dtype(dtype)
    t = _const(dtype, 3.0)
    out, fixed = G.randomize_high_bits(t, spec, n, torch.Generator().manual_seed(2))
    u0, u1 = _u(t, spec.storage_bits), _u(out, spec.storage_bits)
    diff = u0 ^ u1
    lo = spec.bits - n
    # 3.0's lowest exponent bit is 0, so no edit can make an Inf/NaN: nothing needed fixing
    assert fixed == 0
    assert int((diff & ((1 << lo) - 1)).sum()) == 0
    for bit in range(lo, spec.bits):
        assert bool(((diff >> bit) & 1).any()), bit


def test_tf32_bit_edits_target_the_format_bits() -> None:
    spec = get_dtype("tf32")
    t = _const("tf32", 1.7)
    out, _ = G.randomize_low_bits(t, spec, 4, torch.Generator().manual_seed(3))
    diff = _u(t, 32) ^ _u(out, 32)
    assert int((diff & 0x1FFF).sum()) == 0  # the 13 ignored bits stay zero
    assert bool(((diff >> 13) & 0xF).any()) and int((diff >> 17).sum()) == 0
    z = G.zero_low_bits(to_dtype(torch.randn(8, 8), spec), spec, 5)
    assert int((_u(z, 32) & (0x1F << 13)).sum()) == 0


@pytest.mark.parametrize("n", [0, 1, 4, 8])
def test_flip_random_bits_flips_exactly_n_distinct_bits(n: int) -> None:
    spec = get_dtype("int8")
    t = _const("int8", 19.0)
    out, _ = G.flip_random_bits(t, spec, n, torch.Generator().manual_seed(4))
    diff = _u(t, 8) ^ _u(out, 8)
    counts = torch.tensor([bin(v).count("1") for v in diff.reshape(-1).tolist()])
    assert (counts == n).all()


def test_flip_random_bits_keeps_floats_finite_and_counts_fixes() -> None:
    spec = get_dtype("fp16")
    t = _const("fp16", 1.0)
    out, fixed = G.flip_random_bits(t, spec, 16, torch.Generator().manual_seed(5))
    assert torch.isfinite(out.float()).all()
    # all 16 bits flipped: 1.0 (0x3C00) -> 0xC3FF, finite; nothing to fix
    assert fixed == 0 and (_u(out, 16) == 0xC3FF).all()
    out, fixed = G.randomize_high_bits(_const("fp16", 1.0), spec, 6, torch.Generator().manual_seed(6))
    assert torch.isfinite(out.float()).all() and fixed > 0


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", "int8"])
@pytest.mark.parametrize("n", [0, 2, 7])
def test_zero_low_and_high_bits(dtype: str, n: int) -> None:
    spec = get_dtype(dtype)
    t = to_dtype(torch.randn(16, 16, generator=torch.Generator().manual_seed(7)) * 50, spec)
    w = spec.storage_bits
    low = G.zero_low_bits(t, spec, n)
    high = G.zero_high_bits(t, spec, n)
    u, ul, uh = _u(t, w), _u(low, w), _u(high, w)
    mask_low = (1 << n) - 1
    mask_high = ((1 << n) - 1) << (w - n)
    assert (ul == (u & ~mask_low)).all()
    assert (uh == (u & ~mask_high)).all()


def test_partial_sort_rows_sorts_exactly_that_fraction() -> None:
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(8))
    for p in (0.0, 0.3, 0.55, 1.0):
        out = G.partial_sort_rows(x, p)
        flat, orig = out.reshape(-1), x.reshape(-1)
        m = round(p * 60)
        assert torch.equal(flat[:m], torch.sort(orig).values[:m])
        smallest = set(torch.sort(orig).values[:m].tolist())
        rest = [v for v in orig.tolist() if v not in smallest]
        assert flat[m:].tolist() == rest  # the others keep their original order
        assert sorted(flat.tolist()) == sorted(orig.tolist())


def test_partial_sort_cols_fills_column_major() -> None:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(9))
    out = G.partial_sort_cols(x, 0.5)
    seq = G.partial_sort_rows(x, 0.5).reshape(-1)
    assert torch.equal(out.t().reshape(-1), seq)


def test_partial_sort_within_rows() -> None:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(10))
    out = G.partial_sort_within_rows(x, 0.5)
    for r in range(5):
        head = torch.sort(x[r]).values[:4]
        assert torch.equal(out[r, :4], head)
        assert out[r, 4:].tolist() == [v for v in x[r].tolist() if v not in set(head.tolist())]
    assert torch.equal(G.partial_sort_within_rows(x, 1.0), torch.sort(x, dim=1).values)


def test_sparsity_zeroes_exactly_round_p_n_and_is_nested() -> None:
    x = torch.randn(30, 7, generator=torch.Generator().manual_seed(11))
    prev = torch.zeros_like(x, dtype=torch.bool)
    for p in (0.0, 0.1, 0.33, 0.5, 0.9, 1.0):
        out = G.sparsify(x, p, torch.Generator().manual_seed(12))
        zeros = out == 0
        assert int(zeros.sum()) == round(p * x.numel())
        assert (zeros | ~prev).all()  # a superset of the lower p's zeros
        assert torch.equal(out[~zeros], x[~zeros])
        prev = zeros


def test_conversion_happens_before_bit_edits() -> None:
    """bits-low on bf16: the edit touches only the low bits of the *bf16* word of the RNE-rounded draw."""
    spec = get_dtype("bf16")
    exp = get_experiment("bits-low")
    a0, _ = G.generate_matrix(exp, 0, spec, 8, 8, 99, "cpu")
    a3, _ = G.generate_matrix(exp, 3, spec, 8, 8, 99, "cpu")
    # n = 0 is the constant draw rounded to bf16 with round-to-nearest-even
    draw = G.constant(8, 8, 2.0**10, G._gen("cpu", 99), "cpu")
    assert torch.equal(a0, draw.to(torch.bfloat16))
    diff = _u(a0, 16) ^ _u(a3, 16)
    assert int((diff & ~0x7).sum()) == 0 and bool(diff.any())
    # had the edit been done on float32 bits first, the low bf16 bits could not change at all
    f32_edit = (draw.view(torch.int32) ^ 0x7).view(torch.float32).to(torch.bfloat16)
    assert torch.equal(f32_edit, a0)


def test_generate_pair_is_deterministic_and_b_is_kmajor() -> None:
    spec = get_dtype("fp16")
    from charbench.workloads.gemm_power.experiments import NON_GEMM_GENERATORS

    for name, exp in EXPERIMENTS.items():
        if exp.generator in NON_GEMM_GENERATORS:  # 16-18, idle: no operands
            continue
        v = exp.values(spec.family, "quick", spec.bits)[-1]
        a1, b1, info = G.generate_pair(exp, v, spec, 16, 24, 32, seed=3, device="cpu")
        a2, b2, _ = G.generate_pair(exp, v, spec, 16, 24, 32, seed=3, device="cpu")
        assert a1.shape == (16, 32) and b1.shape == (32, 24)
        assert torch.equal(a1.view(torch.int16), a2.view(torch.int16)) and torch.equal(b1.view(torch.int16), b2.view(torch.int16)), name
        if exp.transpose_b:
            assert b1.stride() == (1, 32) and info["b_layout"].startswith("K-major")
        else:
            assert b1.is_contiguous() and info["b_layout"].startswith("row-major")
    base = get_experiment("baseline")
    a3, _, _ = G.generate_pair(base, 0, spec, 16, 24, 32, seed=4, device="cpu")
    assert not torch.equal(a1, a3)


def test_unique_values_and_distribution_parameters() -> None:
    spec = get_dtype("fp32")
    a, _ = G.generate_matrix(get_experiment("unique"), 4, spec, 64, 64, 5, "cpu")
    assert len(torch.unique(a)) <= 4
    a, _ = G.generate_matrix(get_experiment("mu"), 2.0**10, spec, 128, 128, 5, "cpu")
    assert abs(a.mean().item() - 1024) < 0.1 and abs(a.std().item() - 1.0) < 0.1
    a, _ = G.generate_matrix(get_experiment("sorted-mu"), 4.0, spec, 32, 32, 5, "cpu")
    assert torch.equal(a.reshape(-1), torch.sort(a.reshape(-1)).values)
    a, _ = G.generate_matrix(get_experiment("sigma"), 8.0, spec, 128, 128, 5, "cpu")
    assert abs(a.std().item() - 8.0) < 0.5
    i8, _ = G.generate_matrix(get_experiment("baseline"), 0, get_dtype("int8"), 128, 128, 5, "cpu")
    assert i8.dtype == torch.int8 and 25 < i8.float().std().item() < 39  # N(0, 2^5), saturated


def test_sweeps_follow_the_paper() -> None:
    e = EXPERIMENTS
    assert e["sigma"].values("fp") == [round(2.0**i, 4) for i in range(-5, 11)]  # the paper passes np.round(2**n, 4): 0.0312
    assert e["sigma"].values("int8") == [2.0**i for i in range(0, 7)]
    assert e["mu"].values("fp")[-1] == 2.0**14
    assert e["sparsity"].values("fp") == [round(0.1 * i, 1) for i in range(11)]
    assert e["bits-low"].values("fp", bits=16) == [float(i) for i in range(17)]
    assert e["bits-low"].values("int8", bits=8) == [float(i) for i in range(9)]
    assert e["unique"].values("fp") == [2.0**i for i in range(10)]
    for exp in e.values():
        for fam, bits in (("fp", 16), ("fp", 32), ("int8", 8), ("fp8", 8)):
            q = exp.values(fam, "quick", bits)
            assert 1 <= len(q) <= 4 and len(set(q)) == len(q)
            assert set(q) <= set(exp.values(fam, "paper", bits))
