"""The experiment table of Gregersen et al. (SC24), as a registry: name -> generator and sweep.

Numbers follow the paper's ``paper_expts.py``: 1-15 are GEMM inputs; 16-18 and ``idle`` run
no GEMM (memory filled with ones / zeros, an XOR bit-flip kernel, the idle GPU). Sweep values depend on the dtype's family: ``fp`` (fp32, tf32,
fp16, fp16-simt, bf16), ``int8`` (the paper's INT8 settings) and ``fp8`` (charbench's own
choice: the paper has no FP8, so values are scaled to E4M3's +-448 range)::

    exp = get_experiment("sparsity")
    exp.values("fp", "paper")   # [0.0, 0.1, ..., 1.0]
    exp.values("fp", "quick")   # [0.0, 0.5, 0.9, 1.0]

Fill order, by GEMM index (which of M, N, K a generated sequence, and so a sort, runs along):

=====================  ===========================  ==================================
experiment             ``--generator paper``        ``--generator charbench``
=====================  ===========================  ==================================
most (1-8, 10-12, 14)  A along M, B along N         A along K, B along K
sort-cols (9)          A along K, B along K         A along M, B along N
no-transpose (13)      A along M, B along K         A along K, B along N
=====================  ===========================  ==================================

The paper's CUTLASS GEMM is column-major (A with lda = M, B with ldb = K, B transposed at
init), so its "rows" run along M and N; charbench's own generators fill (M, K) and (N, K)
row-major, so its ``sort-rows`` is the paper's 9 and its ``sort-cols`` the paper's 8
(:func:`fill_order` says which for a run).
"""

from __future__ import annotations

from dataclasses import dataclass

from charbench.errors import ConfigError

#: N(0, sigma) baseline of each family (paper: 2^10 for FP, 2^5 for INT8)
BASE_SIGMA = {"fp": 2.0**10, "int8": 2.0**5, "fp8": 2.0**4}
#: sigma of the mean sweeps (paper: 1 for FP, 8 for INT8)
MEAN_SWEEP_SIGMA = {"fp": 1.0, "int8": 8.0, "fp8": 1.0}
#: largest number of bits the bit experiments edit (paper: 16, INT8: 8)
MAX_BITS = {"fp": 16, "int8": 8, "fp8": 8}


def _pow2(lo: int, hi: int) -> list[float]:
    return [2.0**e for e in range(lo, hi + 1)]


def _fractions() -> list[float]:
    return [round(0.1 * i, 1) for i in range(11)]


@dataclass(frozen=True)
class Experiment:
    """One row of the paper's table.

    Attributes:
        name: CLI name.
        number: the paper's experiment number (0 = baseline).
        title: what varies.
        param: name of the swept parameter (x axis).
        generator: generator kind (see :mod:`.generators`).
        transpose_b: B generated as (N, K) (the paper's default) or as (K, N).
        log_x: plot the parameter on a log axis.
    """

    name: str
    number: int
    title: str
    param: str
    generator: str
    transpose_b: bool = True
    log_x: bool = False

    def values(self, family: str, sweep: str = "paper", bits: int = 16) -> list[float]:
        """Sweep values for a dtype family.

        Args:
            family: ``fp``, ``int8`` or ``fp8``.
            sweep: ``paper`` (the full table) or ``quick`` (2-4 values).
            bits: the dtype's format width (caps the bit experiments).
        """
        full = self._full(family, bits)
        if sweep == "paper":
            return full
        if sweep != "quick":
            raise ConfigError(f"sweep {sweep!r}; valid: paper, quick")
        return self._quick(family, bits, full)

    def _full(self, family: str, bits: int) -> list[float]:
        g = self.generator
        if g == "gaussian_sigma":
            # the paper passes np.round(2**n, 4): sigma 2^-5 is 0.0312 (IDP paper_expts.py)
            return [round(v, 4) for v in {"fp": _pow2(-5, 10), "int8": _pow2(0, 6), "fp8": _pow2(-5, 6)}[family]]
        if g in ("gaussian_mean", "sorted_mean"):
            return {"fp": _pow2(0, 14), "int8": _pow2(0, 6), "fp8": _pow2(0, 8)}[family]
        if g == "unique":
            return _pow2(0, 9)
        if g in ("bits_random", "bits_low", "bits_high", "zero_low", "zero_high"):
            return [float(n) for n in range(0, min(MAX_BITS[family], bits) + 1)]
        if g in ("sort_rows", "sort_cols", "sort_within_rows", "sparsity", "sorted_sparsity"):
            return _fractions()
        if g in ("baseline", "memory_ones", "memory_zeros", "idle"):
            return [0.0]
        if g == "bit_flips":
            return [float(n) for n in range(0, 33)]
        raise ValueError(f"unknown generator {g}")

    def _quick(self, family: str, bits: int, full: list[float]) -> list[float]:
        g = self.generator
        if g in ("bits_random", "bits_low", "bits_high", "zero_low", "zero_high"):
            top = min(MAX_BITS[family], bits)
            return sorted({0.0, float(top // 2), float(top)})
        if g == "sparsity" or g == "sorted_sparsity":
            return [0.0, 0.5, 0.9, 1.0]
        if g in ("sort_rows", "sort_cols", "sort_within_rows"):
            return [0.0, 0.5, 1.0]
        if g == "unique":
            return [1.0, 4.0, 512.0]
        if g in ("baseline", "memory_ones", "memory_zeros", "idle"):
            return [0.0]
        if g == "bit_flips":
            return [0.0, 4.0, 8.0, 32.0]
        return [full[0], full[len(full) // 2], full[-1]]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment("sigma", 1, "N(0, sigma): vary the standard deviation", "sigma", "gaussian_sigma", log_x=True),
        Experiment("mu", 2, "N(mu, sigma0): vary the mean", "mu", "gaussian_mean", log_x=True),
        Experiment("unique", 3, "n unique values drawn from N(0, sigma_base)", "n_unique", "unique", log_x=True),
        Experiment("bits-random", 4, "constant matrix, n random bits flipped per element", "n_bits", "bits_random"),
        Experiment("bits-low", 5, "constant matrix, n lowest bits randomized", "n_bits", "bits_low"),
        Experiment("bits-high", 6, "constant matrix, n highest bits randomized", "n_bits", "bits_high"),
        Experiment("sorted-mu", 7, "fully sorted N(mu, sigma0): vary the mean", "mu", "sorted_mean", log_x=True),
        Experiment("sort-rows", 8, "partial sort of a fraction p, row-major", "p", "sort_rows"),
        Experiment("sort-cols", 9, "partial sort of a fraction p, column-major", "p", "sort_cols"),
        Experiment("sort-within-rows", 10, "partial sort of a fraction p within each row", "p", "sort_within_rows"),
        Experiment("sparsity", 11, "uniform random zeros, fraction p", "p", "sparsity"),
        Experiment("sorted-sparsity", 12, "full sort, then random zeros, fraction p", "p", "sorted_sparsity"),
        Experiment("sort-rows-no-transpose", 13, "as sort-rows, B not transposed", "p", "sort_rows", transpose_b=False),
        Experiment("zero-low-bits", 14, "baseline with the n lowest bits zeroed", "n_bits", "zero_low"),
        Experiment("zero-high-bits", 15, "baseline with the n highest bits zeroed", "n_bits", "zero_high"),
        Experiment("baseline", 0, "baseline N(0, sigma_base)", "none", "baseline"),
        # not GEMMs (IDP other_expt.cu): memory contents alone, the bit-flip kernel, idle
        Experiment("memory-ones", 16, "int8 memory filled with ones (0xFF), resident, nothing running", "none", "memory_ones"),
        Experiment("memory-zeros", 17, "int8 memory filled with zeros, resident, nothing running", "none", "memory_zeros"),
        Experiment("bit-flips", 18, "XOR kernel: n low bits of every int8 flipped per launch", "n_bits", "bit_flips"),
        Experiment("idle", -1, "idle GPU (the paper's 300 s idle measurement)", "none", "idle"),
    ]
}

#: experiments that run no GEMM (see run.py: their own kernels, their own figures)
NON_GEMM_GENERATORS = ("memory_ones", "memory_zeros", "bit_flips", "idle")

#: the quick preset's subset: every family (distribution, uniqueness, bit randomization,
#: bit zeroing, sorting, sparsity, transposition), 2-4 values each
QUICK_EXPERIMENTS = (
    "sigma", "mu", "unique", "bits-random", "bits-low", "bits-high", "zero-low-bits",
    "sort-rows", "sort-within-rows", "sparsity", "sorted-sparsity", "sort-rows-no-transpose",
)


def fill_order(exp: Experiment, generator: str) -> str:
    """Which GEMM index each operand's generated sequence runs along (see the module table)."""
    if generator == "paper":
        if exp.generator == "sort_cols":
            return "A along K, B along K"
        return "A along M, B along " + ("N" if exp.transpose_b else "K")
    if exp.generator == "sort_cols":
        return "A along M, B along " + ("N" if exp.transpose_b else "K")
    return "A along K, B along " + ("K" if exp.transpose_b else "N")


GENERATORS = ("paper", "charbench")


def experiment_names() -> list[str]:
    """All experiment names, in table order."""
    return list(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """Look up an experiment.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in EXPERIMENTS:
        raise ConfigError(f"--experiments: unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS[name]
