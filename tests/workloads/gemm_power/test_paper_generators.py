"""--generator paper: libstdc++'s engine and distributions, partial-sort remainder, layout, bit metrics.

Reference values are facts from the paper's release (github.com/theo-gregersen/input-dependent-power-sc24,
commit 2987094, ``a100_expt_results/bit_metrics/<dtype>/<experiment>.csv``, row of seed 1: mean
Hamming weight of A, of B, mean bit alignment, printed with %f). The release pairs A with B's
buffer before B's transpose for the alignment, so the checks build B untransposed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from charbench.kernels.gemm import get_dtype
from charbench.workloads.gemm_power import paper_rng as R
from charbench.workloads.gemm_power.experiments import get_experiment
from charbench.workloads.gemm_power.paper_generators import paper_bit_metrics, paper_buffer, paper_count, partial_sort_heap


def test_minstd_rand0_matches_its_definition() -> None:
    e = R.MinStdRand0(1)
    assert e.take(3).tolist() == [16807, 282475249, 1622650073]
    assert R.MinStdRand0(0).take(1).tolist() == [16807]  # seed 0 is taken as 1 ("same output for seeds 0 and 1")
    e = R.MinStdRand0(1)
    e.advance(9999)
    assert e.take(1).tolist() == [1043618065]  # the C++ standard's check value for minstd_rand0


def test_peek_take_advance_agree() -> None:
    a, b = R.MinStdRand0(7), R.MinStdRand0(7)
    whole = a.take(1000)
    b.advance(400)
    assert np.array_equal(b.peek(600), whole[400:])


def _sequential_uniform(seed: int, highs: list[int]) -> list[int]:
    e = R.MinStdRand0(seed)
    out = []
    for h in highs:
        scaling = R.URNG_RANGE // (h + 1)
        past = (h + 1) * scaling
        while True:
            r = int(e.take(1)[0]) - 1
            if r < past:
                out.append(r // scaling)
                break
    return out


def test_uniform_int_matches_a_sequential_rejection_loop() -> None:
    highs = [1, 5, 2**30, 2**30 + 7, 3, 2**31 - 10, 9] * 30  # huge ranges reject often
    e = R.MinStdRand0(3)
    assert R.uniform_int(e, np.asarray(highs)).tolist() == _sequential_uniform(3, highs)


def test_forward_shuffle_resolution_matches_the_loop() -> None:
    n = 3000
    swaps = R.uniform_int(R.MinStdRand0(11), np.arange(1, n))
    a = list(range(n))
    for i in range(1, n):
        j = int(swaps[i - 1])
        a[i], a[j] = a[j], a[i]
    assert R.apply_forward_shuffle(swaps, n).tolist() == a
    assert R.apply_forward_shuffle(swaps, n, first=10).tolist() == a[:10]


def _heap_partial_sort_reference(values: list[float], m: int) -> list[float]:
    """std::partial_sort as libstdc++ does it, element by element (make_heap, pop_heap, sort_heap)."""
    import heapq

    v = list(values)
    heap = [(-x, i) for i, x in enumerate(v[:m])]
    heapq.heapify(heap)
    for i in range(m, len(v)):
        if v[i] < -heap[0][0]:
            top = -heapq.heapreplace(heap, (-v[i], i))[0]
            v[i] = top
    v[:m] = sorted(-h[0] for h in heap)
    return v


def test_partial_sort_remainder_is_in_heap_order() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    for m in (1, 7, 2000, 4999):
        assert partial_sort_heap(x, m).tolist() == _heap_partial_sort_reference(x.tolist(), m)
    rows = partial_sort_heap(x[:4096], 3, seg=64).reshape(64, 64)
    assert rows[5].tolist() == _heap_partial_sort_reference(x[5 * 64:6 * 64].tolist(), 3)


def test_counts_are_the_papers_float_products() -> None:
    assert [paper_count(2048 * 2048, p) for p in (0.1, 0.3, 0.7)] == [419430, 1258291, 2936012]
    assert paper_count(2048, 0.1) == 204


_CPP = r'''
#include <random>
#include <cstdio>
#include <vector>
#include <algorithm>
int main() {
  std::default_random_engine e; e.seed(5);
  std::normal_distribution<float> d(0.0f, 1024.0f);
  for (int i = 0; i < 2001; i++) { float v = d(e); unsigned u; std::memcpy(&u, &v, 4); printf("%08x\n", u); }
  std::vector<int> idx(70000); for (int i = 0; i < 70000; i++) idx[i] = i;
  std::default_random_engine s; s.seed(5); std::shuffle(idx.begin(), idx.end(), s);
  for (int i = 0; i < 50; i++) printf("%d\n", idx[i]);
  return 0;
}
'''


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_against_compiled_libstdcxx(tmp_path: Path) -> None:
    src = tmp_path / "t.cpp"
    src.write_text("#include <cstring>\n" + _CPP)
    exe = tmp_path / "t"
    subprocess.run(["g++", "-O2", "-o", str(exe), str(src)], check=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    got = R.normal_f32(R.MinStdRand0(5), 2001, 0.0, 1024.0).view(np.uint32)
    assert [f"{u:08x}" for u in got.tolist()] == lines[:2001]
    assert R.shuffle_indices(R.MinStdRand0(5), 70000, first=50).tolist() == [int(v) for v in lines[2001:]]


def _metrics(dtype: str, exp: str, value: float, n: int = 2048) -> tuple[str, str, str]:
    spec = get_dtype(dtype)
    e = get_experiment(exp)
    wa = paper_buffer(e, value, spec, n, n, 1, transpose=False)
    wb = paper_buffer(e, value, spec, n, n, 2, transpose=False)
    return tuple(f"{v:.6f}" for v in paper_bit_metrics(wa, wb, spec.storage_bits))  # type: ignore[return-value]


@pytest.mark.parametrize("dtype,exp,value,ref", [
    ("fp16", "unique", 8.0, ("8.625248", "8.624632", "0.526040")),      # bit_metrics/fp16/3-gaussian-unique.csv
])
def test_fast_points_match_the_released_bit_metrics(dtype: str, exp: str, value: float, ref: tuple[str, str, str]) -> None:
    assert _metrics(dtype, exp, value) == ref


@pytest.mark.slow
@pytest.mark.perf  # 10-60 s each at 2048^2 on a shared 2-core machine: run with -m perf
@pytest.mark.parametrize("dtype,exp,value,ref", [
    ("fp16", "baseline", 0.0, ("8.175285", "8.177925", "0.539385")),        # fp16/baseline.csv
    ("fp16", "sigma", 0.0312, ("7.265128", "7.265817", "0.556078")),        # fp16/1-gaussian-stddev.csv (sigma = np.round(2**-5, 4))
    ("fp16", "sparsity", 0.1, ("7.357919", "7.360394", "0.535069")),        # fp16/11-sparsity.csv
    ("fp16", "sorted-sparsity", 0.5, ("4.087883", "4.088321", "0.716072")),  # fp16/12-sparsity-sort.csv
    ("fp16", "sort-rows", 0.1, ("8.175285", "8.177925", "0.603073")),       # fp16/8-sort-rows.csv
    ("fp16", "sort-cols", 0.1, ("8.175285", "8.177925", "0.603729")),       # fp16/9-sort-columns.csv
    ("fp16", "sort-within-rows", 0.1, ("8.175285", "8.177925", "0.568029")),  # fp16/10-sort-intra.csv
    ("fp16", "zero-high-bits", 3.0, ("6.058056", "6.061077", "0.599445")),  # fp16/15-bits-most-zeros.csv
    ("fp32", "baseline", 0.0, ("14.679594", "14.680736", "0.565147")),      # fp32/baseline.csv
    ("int8", "baseline", 0.0, ("3.988968", "3.988338", "0.499835")),        # int8/baseline.csv
    ("fp16", "bits-low", 1.0, ("7.500169", "7.500381", "0.218744")),        # fp16/5-bits-least.csv
    ("fp16", "bits-high", 2.0, ("6.999997", "8.000165", "0.250014")),       # fp16/6-bits-most.csv
    ("fp16", "bits-random", 1.0, ("8.000302", "7.999219", "0.308579")),     # fp16/4-bits.csv (minutes: per-element shuffles)
])
def test_points_match_the_released_bit_metrics(dtype: str, exp: str, value: float, ref: tuple[str, str, str]) -> None:
    assert _metrics(dtype, exp, value) == ref


def test_layout_is_column_major_with_b_transposed() -> None:
    from charbench.workloads.gemm_power.generators import generate_pair

    spec = get_dtype("fp32")
    e = get_experiment("sort-rows")
    a, b, info = generate_pair(e, 1.0, spec, 8, 8, 8, 1, "cpu", generator="paper")
    assert info["fill_order"] == "A along M, B along N" and info["generator"] == "paper"
    assert bool((a[1:, 0] >= a[:-1, 0]).all()) and bool((b[0, 1:] >= b[0, :-1]).all())  # sorted runs along M for A, N for B
    wa = paper_buffer(e, 1.0, spec, 8, 8, 1, transpose=False)
    assert np.array_equal(a.contiguous().t().reshape(-1).numpy().view(np.uint32), wa)  # A[m, k] = buffer[m + k * M]
    a13, b13, info13 = generate_pair(get_experiment("sort-rows-no-transpose"), 1.0, spec, 8, 8, 8, 1, "cpu", generator="paper")
    assert info13["fill_order"] == "A along M, B along K" and bool((b13[1:, 0] >= b13[:-1, 0]).all())


def test_non_finite_values_are_kept() -> None:
    spec = get_dtype("fp16")
    w = paper_buffer(get_experiment("bits-high"), 6.0, spec, 64, 64, 1, transpose=False)
    exp_all_ones = (w & 0x7C00) == 0x7C00
    assert exp_all_ones.any()  # Inf/NaN encodings stay, as the paper kept them


def test_unsupported_dtype_is_a_config_error() -> None:
    from charbench.errors import ConfigError
    from charbench.workloads.gemm_power.paper_generators import check_supported

    with pytest.raises(ConfigError, match="--generator paper: dtype fp8-e4m3"):
        check_supported(get_dtype("fp8-e4m3"))


def test_cli_generator_and_accumulate(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from charbench.cli import main

    base = ["gemm-power", "--device", "cpu", "--experiments", "sort-rows,bit-flips", "--dtypes", "bf16", "--size", "32",
            "--duration", "0.01", "--repeats", "1"]
    assert main([*base, "--generator", "paper", "--accumulate", "out"]) == 0
    capsys.readouterr()
    run = sorted((charbench_home / "gemm-power").iterdir())[-1]
    df = pd.read_parquet(run / "results.parquet")
    gemm = df[df["experiment"] == "sort-rows"]
    assert set(gemm["generator"]) == {"paper"} and set(gemm["fill_order"]) == {"A along M, B along N"}
    assert gemm["accumulator"].isna().all()
    assert json.loads(gemm["null_reasons"].iloc[0])["accumulator"].startswith("--accumulate out: torch accumulates bf16 in fp32 on cpu")
    flips = df[df["experiment"] == "bit-flips"]
    assert sorted(flips["value"]) == [0.0, 4.0, 8.0, 32.0] and (flips["time_per_launch_ms"] > 0).all()
    assert main([*base, "--generator", "bogus"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Error: --generator: unknown generator 'bogus'; valid: paper, charbench"
    assert main([*base, "--accumulate", "fp8"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Error: --accumulate: unknown accumulation 'fp8'; valid: out, fp32"


def test_bits_random_composes_the_persistent_shuffles() -> None:
    from charbench.workloads.gemm_power.paper_generators import bits_random

    w = np.full(3000, 0x3C00, np.uint16)
    got = bits_random(w.copy(), 16, 3, R.MinStdRand0(9))
    e = R.MinStdRand0(9)
    bits = np.arange(16)[None, :].copy()  # MatrixBits' vector: shuffled per element, never reset
    want = []
    for x in w:
        R.shuffle_small(e, bits)
        want.append(int(x) ^ sum(1 << int(bits[0, j]) for j in range(3)))
    assert got.astype(int).tolist() == want


def test_cached_draws_give_the_same_buffers_in_any_order() -> None:
    from charbench.workloads.gemm_power import paper_generators as P

    spec = get_dtype("fp16")
    names = [("baseline", 0.0), ("sort-rows", 0.3), ("sparsity", 0.5), ("zero-low-bits", 4.0), ("bits-random", 3.0), ("bits-random", 5.0)]

    def build() -> list[np.ndarray]:
        return [paper_buffer(get_experiment(e), v, spec, 24, 40, 7, transpose=True) for e, v in names]

    P._normal_cached.cache_clear()
    P._bit_positions.cache_clear()
    first = build()  # fills the caches as it goes
    again = build()  # every draw from the caches
    fresh = []
    for e, v in reversed(names):  # reversed order, cold caches per point
        P._normal_cached.cache_clear()
        P._bit_positions.cache_clear()
        fresh.append(paper_buffer(get_experiment(e), v, spec, 24, 40, 7, transpose=True))
    fresh.reverse()
    for x, y, z in zip(first, again, fresh):
        assert x.tolist() == y.tolist() == z.tolist()
    x, _ = P._seeded_normal(7, 960, 0.0, 1024.0)
    with pytest.raises(ValueError, match="read-only"):
        x[0] = 1.0
