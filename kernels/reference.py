"""Float64 GEMM reference and the error bound each dtype must meet.

Every GEMM backend is checked the same way: fresh random inputs, the backend's output
against ``alpha * A @ B`` computed in float64 on the CPU, relative Frobenius error::

    from charbench.kernels.reference import check_gemm
    res = check_gemm(get_backend("torch"), get_dtype("bf16"), "cpu", 128, 96, 64, seed=3)
    assert res.ok, res.message

Bounds: fp32 < 1e-5; tf32, fp16, bf16 < 1e-2; fp8 < 5e-2 (3 mantissa bits in, bf16 out);
int8 exact (int32 accumulation cannot overflow at these sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from charbench.kernels.gemm.dtypes import DTypeSpec, to_dtype

#: relative Frobenius error bound per dtype (0 = exact)
ERROR_BOUNDS: dict[str, float] = {
    "fp32": 1e-5,
    "tf32": 1e-2,
    "fp16": 1e-2,
    "fp16-simt": 1e-2,
    "bf16": 1e-2,
    "int8": 0.0,
    "fp8-e4m3": 5e-2,
    "fp8-e5m2": 5e-2,
}


def reference_gemm(a: Any, b: Any, alpha: float = 1.0) -> Any:
    """``alpha * a @ b`` in float64 on the CPU (inputs upcast exactly)."""
    import torch

    return alpha * (a.detach().to("cpu").to(torch.float64) @ b.detach().to("cpu").to(torch.float64))


def relative_error(out: Any, ref: Any) -> float:
    """``||out - ref||_F / ||ref||_F`` in float64 (inf when out has NaN/Inf)."""
    import torch

    o = out.detach().to("cpu").to(torch.float64)
    if not bool(torch.isfinite(o).all()):
        return math.inf
    denom = float(ref.norm())
    diff = float((o - ref).norm())
    return diff / denom if denom > 0 else diff


@dataclass
class CheckResult:
    """Outcome of one correctness check."""

    backend: str
    dtype: str
    shape: tuple[int, int, int]
    rel_error: float
    bound: float
    ok: bool
    message: str


def random_operands(spec: DTypeSpec, m: int, n: int, k: int, seed: int, device: str, transpose_b: bool = True) -> tuple[Any, Any]:
    """Fresh random operands in the dtype (B as a K-major view when ``transpose_b``).

    Values are N(0, 1) (int8: N(0, 16)), converted with the dtype's rounding.
    """
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    scale = 16.0 if spec.family == "int8" else 1.0
    a32 = torch.randn(m, k, generator=g) * scale
    b32 = torch.randn(n, k, generator=g) * scale if transpose_b else torch.randn(k, n, generator=g) * scale
    a = to_dtype(a32, spec).to(device)
    bb = to_dtype(b32, spec).to(device)
    return a, (bb.t() if transpose_b else bb)


def check_gemm(backend: Any, spec: DTypeSpec, device: str, m: int, n: int, k: int, seed: int = 0, transpose_b: bool = True) -> CheckResult:
    """Run ``backend`` once on fresh random inputs and compare with the float64 reference."""
    from charbench.kernels.gemm.base import output_scale

    a, b = random_operands(spec, m, n, k, seed, device, transpose_b)
    alpha = output_scale(a, b, spec)
    g = backend.prepare(a, b, spec, alpha=alpha)
    with g:
        g()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    out = g.result()
    ref = reference_gemm(a, b, alpha)
    err = relative_error(out, ref)
    bound = ERROR_BOUNDS[spec.name]
    ok = err == 0.0 if bound == 0.0 else err < bound
    msg = (f"{backend.name} {spec.name} {m}x{n}x{k}: relative error {err:.3g} "
           f"{'<' if ok else '>='} bound {bound:g}" if bound > 0 else
           f"{backend.name} {spec.name} {m}x{n}x{k}: {'exact' if ok else f'not exact (relative error {err:.3g})'}")
    return CheckResult(backend.name, spec.name, (m, n, k), err, bound, ok, msg)
