"""What every GEMM backend provides, and the helpers they share.

A backend turns two operands into a *prepared* GEMM: a zero-argument callable that runs
one ``C = alpha * A @ B`` into a preallocated output, so the timed loop measures the
kernel and nothing else::

    backend = get_backend("torch")
    reason = backend.unavailable_reason(spec, "cuda:0")     # None when it can run
    g = backend.prepare(a, b, spec, alpha=output_scale(a, b, spec))
    with g:                                                  # e.g. enables TF32 for the loop
        g()                                                  # one GEMM (asynchronous on a GPU)
    c = g.result()                                           # torch tensor (M, N)

Operands: ``a`` is (M, K), ``b`` is (K, N), both torch tensors in the dtype's storage type
on the run's device; ``b`` may be a transposed view (the paper's "B transposed" layout:
B stored K-contiguous). A backend that needs another layout copies in ``prepare`` (never in
the timed call) and says so in :attr:`PreparedGemm.layout`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from charbench.kernels.gemm.dtypes import DTypeSpec


@dataclass
class PreparedGemm:
    """One ready-to-run GEMM.

    Attributes:
        run: runs one GEMM into ``out`` (asynchronous on a GPU).
        out: the output buffer (whatever the backend writes).
        to_torch: turns ``out`` into a torch (M, N) tensor (no copy where possible).
        m, n, k: problem size.
        backend: backend name.
        layout: how the kernel reads the operands (e.g. ``A row-major, B K-major``).
        context: a context manager factory active around the timed loop (global flags).
        keep: references the kernel needs alive (operand copies, modules).
    """

    run: Callable[[], Any]
    out: Any
    to_torch: Callable[[Any], Any]
    m: int
    n: int
    k: int
    backend: str
    layout: str
    context: Callable[[], Any] = contextlib.nullcontext
    keep: list[Any] = field(default_factory=list)
    _ctx: Any = None

    def __call__(self) -> Any:
        """Run one GEMM."""
        return self.run()

    def __enter__(self) -> PreparedGemm:
        self._ctx = self.context()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(*exc)

    @property
    def flops(self) -> int:
        """Floating-point (or integer) operations of one GEMM: 2*M*N*K."""
        return 2 * self.m * self.n * self.k

    def result(self) -> Any:
        """The output as a torch (M, N) tensor."""
        return self.to_torch(self.out)


class GemmBackend:
    """Base class of a backend. Subclasses set ``name``, ``dtypes`` and implement ``prepare``."""

    name: str = ""
    description: str = ""
    #: dtype names this backend implements (on a device that can run them)
    dtypes: tuple[str, ...] = ()

    def probe(self, device: str) -> str | None:
        """Why this backend cannot run on ``device`` at all, or None when it can."""
        return None

    def unavailable_reason(self, spec: DTypeSpec, device: str) -> str | None:
        """Why ``spec`` cannot run with this backend on ``device``, or None when it can."""
        reason = self.probe(device)
        if reason:
            return reason
        if spec.name not in self.dtypes:
            return f"backend {self.name} does not implement {spec.name} (it does: {', '.join(self.dtypes)})"
        return self.device_reason(spec, device)

    def device_reason(self, spec: DTypeSpec, device: str) -> str | None:
        """Why this backend cannot run an implemented ``spec`` on ``device`` (capability by default)."""
        return device_dtype_reason(spec, device)

    def size_reason(self, m: int, n: int, k: int) -> str | None:
        """Why this backend cannot run an (M, N, K) problem, or None (most backends take any size)."""
        return None

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0) -> PreparedGemm:
        """Build a :class:`PreparedGemm` for ``C = alpha * a @ b``."""
        raise NotImplementedError


def device_dtype_reason(spec: DTypeSpec, device: str) -> str | None:
    """Why the device itself cannot run ``spec`` (compute capability, CPU), or None."""
    if device == "cpu":
        if not spec.cpu:
            need = f"a CUDA GPU with compute capability >= {spec.min_cc[0]}.{spec.min_cc[1]}" if spec.min_cc else "a CUDA GPU"
            what = "tensor cores" if spec.tensor_cores else "CUDA cores"
            return f"{spec.name} runs on {what}: it needs {need}; this device is cpu"
        return None
    if spec.min_cc is not None:
        import torch

        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        cc = torch.cuda.get_device_capability(idx)
        if tuple(cc) < spec.min_cc:
            return (f"{spec.name} needs compute capability >= {spec.min_cc[0]}.{spec.min_cc[1]}; "
                    f"{device} ({torch.cuda.get_device_name(idx)}) is {cc[0]}.{cc[1]}")
    return None


def output_scale(a: Any, b: Any, spec: DTypeSpec) -> float:
    """A power-of-two ``alpha`` that keeps ``alpha * A @ B`` finite in the output dtype.

    Uses the Cauchy-Schwarz bound ``|C_ij| <= ||A_i|| * ||B_j||`` (exact for constant
    inputs). Accumulation happens in float32/int32 before alpha is applied, so alpha
    changes only the epilogue, not the values entering the multipliers. Returns 1 for
    wide-range outputs (fp32, bf16, int32).
    """
    if spec.out_storage not in ("float16",):
        return 1.0
    import torch

    an = a.to(torch.float32).norm(dim=1).max().item()
    bn = b.to(torch.float32).norm(dim=0).max().item()
    bound = an * bn
    limit = 0.25 * 65504.0
    if not math.isfinite(bound) or bound <= limit:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(bound / limit))


def check_shape(a: Any, b: Any) -> tuple[int, int, int]:
    """(M, N, K) of ``a @ b``; raises ValueError on mismatched inner dimensions."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM operands must be (M, K) and (K, N); got {tuple(a.shape)} and {tuple(b.shape)}")
    return int(a.shape[0]), int(b.shape[1]), int(a.shape[1])
