"""The vendor library through torch: cuBLAS/cuBLASLt on a GPU, oneDNN/MKL (or OpenBLAS) on a CPU.

::

    g = TorchGemm().prepare(a, b, get_dtype("bf16"))
    g(); c = g.result()

FP32/FP16/BF16 use ``torch.mm`` (or ``torch.addmm`` with ``beta=0`` when alpha != 1, which
maps to the library's own alpha); TF32 is FP32 with ``allow_tf32`` on for the loop only;
INT8 uses ``torch._int_mm`` (int32 accumulation and output); FP8 uses ``torch._scaled_mm``
with unit scales and a BF16 output (it needs B column-major, i.e. K-contiguous).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from charbench.kernels.gemm.base import GemmBackend, PreparedGemm, check_shape
from charbench.kernels.gemm.dtypes import DTypeSpec, out_torch_dtype


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _kmajor(b: Any) -> bool:
    """True when B (K, N) is stored K-contiguous (a transposed view of a contiguous (N, K))."""
    return b.stride(0) == 1 and b.stride(1) == b.shape[0]


class TorchGemm(GemmBackend):
    """``torch.mm`` and friends: whatever library torch dispatches to on the device."""

    name = "torch"
    description = "vendor library via torch (cuBLAS/cuBLASLt on GPU, oneDNN/MKL on CPU)"
    dtypes = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8-e4m3", "fp8-e5m2")

    def device_reason(self, spec: DTypeSpec, device: str) -> str | None:
        """As the base class, plus cuBLASLt's refusal of e5m2 x e5m2 (seen on an H200, torch 2.11)."""
        reason = super().device_reason(spec, device)
        if reason is None and spec.name == "fp8-e5m2" and device.startswith("cuda"):
            return ("fp8-e5m2 with backend torch: torch._scaled_mm (cuBLASLt) does not multiply two e5m2 "
                    "matrices; use --backends triton for fp8-e5m2, or --dtypes fp8-e4m3")
        return reason

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0) -> PreparedGemm:
        """Prepare ``C = alpha * a @ b`` (operands stay as given unless the op needs a layout)."""
        import torch

        m, n, k = check_shape(a, b)
        layout = f"A {'row-major' if a.is_contiguous() else 'strided'}, B {'K-major' if _kmajor(b) else 'row-major'}"
        if spec.family == "int8":
            # _int_mm: int8 x int8 -> int32; on CUDA it wants K % 8 == 0, N % 8 == 0, M > 16.
            # cuBLASLt's int8 kernels want the "TN" layout: B K-major (copied when it is not)
            out = torch.empty(m, n, dtype=torch.int32, device=a.device)
            a_c = a.contiguous()
            b_c = b
            if a.is_cuda and not _kmajor(b):
                b_c = b.t().contiguous().t()
                layout = "A row-major, B K-major (copied for int8)"

            def run() -> Any:
                return torch._int_mm(a_c, b_c, out=out)

            return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, keep=[a_c, b_c])
        if spec.family == "fp8":
            # _scaled_mm needs A row-major and B column-major (K-contiguous).
            a_c = a.contiguous()
            b_c = b if _kmajor(b) else b.t().contiguous().t()
            if b_c is not b:
                layout = "A row-major, B K-major (copied for _scaled_mm)"
            # alpha folds into scale_a: out = scale_a * scale_b * (A @ B), accumulated in fp32.
            sa = torch.tensor(float(alpha), dtype=torch.float32, device=a.device)
            one = torch.ones((), dtype=torch.float32, device=a.device)
            out = torch.empty(m, n, dtype=out_torch_dtype(spec), device=a.device)
            try:  # the out= overload avoids an allocation per call where torch has it
                torch._scaled_mm(a_c, b_c, scale_a=sa, scale_b=one, out_dtype=out.dtype, out=out)

                def run() -> Any:
                    return torch._scaled_mm(a_c, b_c, scale_a=sa, scale_b=one, out_dtype=out.dtype, out=out)
            except (TypeError, RuntimeError):

                def run() -> Any:
                    return out.copy_(torch._scaled_mm(a_c, b_c, scale_a=sa, scale_b=one, out_dtype=out.dtype))

            return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, keep=[a_c, b_c, sa, one])
        out = torch.empty(m, n, dtype=out_torch_dtype(spec), device=a.device)
        ctx = (lambda: _tf32(True)) if spec.name == "tf32" else (lambda: _tf32(False)) if a.is_cuda else contextlib.nullcontext
        if alpha == 1.0:

            def run() -> Any:
                return torch.mm(a, b, out=out)
        else:
            al = float(alpha)

            def run() -> Any:
                return torch.addmm(out, a, b, beta=0.0, alpha=al, out=out)

        return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, context=ctx, keep=[a, b])
