"""A Triton GEMM: ``C = alpha * A @ B`` with fp32/int32 accumulation, any strides.

Triton is optional; the kernel is built on first use. On a CPU it runs under the Triton
interpreter (``TRITON_INTERPRET=1``), which is how the tests check it::

    TRITON_INTERPRET=1 python -c "from charbench.kernels.gemm import get_backend; ..."

FP32 uses ``input_precision="ieee"`` (no TF32), TF32 uses ``"tf32"``; FP16/BF16/FP8 use
the tensor cores with fp32 accumulation; INT8 accumulates in int32.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from charbench.kernels.gemm.base import GemmBackend, PreparedGemm, check_shape
from charbench.kernels.gemm.dtypes import DTypeSpec, out_torch_dtype

try:  # optional; the interpreter patches `tl` through this module's globals, so they must be here
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton missing or broken
    triton = None
    tl = None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=2)
def _build(interpret: bool) -> Any:
    """Define the kernel (Triton decides compile vs interpret at decoration time).

    The kernel avoids Triton's ``@jit`` library helpers (``tl.zeros``, ``tl.cdiv``): they are
    fixed when triton is imported, and the interpreter cannot call them if TRITON_INTERPRET
    was set afterwards (as the tests do).
    """
    assert triton is not None and tl is not None

    @triton.jit
    def _gemm_kernel(
        A, B, C, M, N, K, alpha,
        stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, ACC_INT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        FP8: tl.constexpr,
    ):
        pid = tl.program_id(0)
        # plain arithmetic, not tl.cdiv: library @jit helpers only work in the interpreter when
        # TRITON_INTERPRET was set before triton was imported
        num_m = (M + BLOCK_M - 1) // BLOCK_M
        num_n = (N + BLOCK_N - 1) // BLOCK_N
        # grouped ordering: GROUP_M row-blocks share B tiles in L2
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptr = A + rm[:, None] * stride_am + rk[None, :] * stride_ak
        b_ptr = B + rk[:, None] * stride_bk + rn[None, :] * stride_bn
        if ACC_INT:
            acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)
        else:
            acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a_mask = (rm[:, None] < M) & (rk[None, :] + k0 < K)
            b_mask = (rk[:, None] + k0 < K) & (rn[None, :] < N)
            a = tl.load(a_ptr, mask=a_mask, other=0)
            b = tl.load(b_ptr, mask=b_mask, other=0)
            # fp8 operands arrive as their raw bytes (uint8): Triton cannot cast the masked-load
            # filler 0 to fp8, but byte 0 is +0.0 in both formats, so bitcast after loading.
            if FP8 == 1:
                a = a.to(tl.float8e4nv, bitcast=True)
                b = b.to(tl.float8e4nv, bitcast=True)
            if FP8 == 2:
                a = a.to(tl.float8e5, bitcast=True)
                b = b.to(tl.float8e5, bitcast=True)
            if UPCAST:  # the interpreter's tl.dot misreads bf16; exact upcast keeps the math
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if ACC_INT:
                acc += tl.dot(a, b, out_dtype=tl.int32)
            else:
                acc += tl.dot(a, b, input_precision=PRECISION)
            a_ptr += BLOCK_K * stride_ak
            b_ptr += BLOCK_K * stride_bk
        c_ptr = C + rm[:, None] * stride_cm + rn[None, :] * stride_cn
        c_mask = (rm[:, None] < M) & (rn[None, :] < N)
        if ACC_INT:
            tl.store(c_ptr, acc, mask=c_mask)
        else:
            tl.store(c_ptr, (acc * alpha).to(C.dtype.element_ty), mask=c_mask)

    return _gemm_kernel


def _blocks(spec: DTypeSpec, device: str) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per dtype; small on the interpreter."""
    if device == "cpu":
        return 32, 32, 32, 4, 1
    if spec.name == "fp32":
        return 64, 64, 32, 4, 3
    if spec.storage_bits == 32:
        return 128, 128, 32, 8, 3
    if spec.storage_bits == 8:
        return 128, 256, 128, 8, 3
    return 128, 256, 64, 8, 3


class TritonGemm(GemmBackend):
    """Triton's ``tl.dot`` GEMM (tensor cores where the dtype has them)."""

    name = "triton"
    description = "Triton GEMM (tl.dot; interpreter on CPU with TRITON_INTERPRET=1)"
    dtypes = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8-e4m3", "fp8-e5m2")

    def probe(self, device: str) -> str | None:
        """Triton must import; a CPU needs ``TRITON_INTERPRET=1``."""
        if triton is None:
            return "triton is not importable; pip install 'charbench[triton]'"
        if device == "cpu" and not _interpret():
            return "the Triton GEMM needs a CUDA device (or TRITON_INTERPRET=1 on a CPU, for testing only)"
        if device.startswith("cuda") and _interpret():
            return "TRITON_INTERPRET=1 is set but the device is CUDA; unset it to compile the kernel"
        return None

    def device_reason(self, spec: DTypeSpec, device: str) -> str | None:
        """The interpreter runs any dtype torch can hold on the CPU but fp8/tf32; a GPU needs the dtype's capability."""
        if device == "cpu":
            if spec.family == "fp8" or spec.name == "tf32":
                return f"{spec.name} under the Triton interpreter is not supported; run it on a GPU"
            return None
        return super().device_reason(spec, device)

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0) -> PreparedGemm:
        """Prepare one Triton launch over the operands as given (any strides)."""
        import torch

        m, n, k = check_shape(a, b)
        device = "cpu" if a.device.type == "cpu" else str(a.device)
        kernel = _build(_interpret())
        bm, bn, bk, warps, stages = _blocks(spec, device)
        out = torch.empty(m, n, dtype=out_torch_dtype(spec), device=a.device)
        grid = (-(-m // bm) * -(-n // bn),)
        acc_int = spec.family == "int8"
        precision = "tf32" if spec.name == "tf32" else "ieee"
        al = float(alpha)
        # Triton's interpreter (CPU) computes bf16 tl.dot wrongly; upcasting bf16 -> fp32 is exact.
        upcast = device == "cpu" and spec.name == "bf16"
        extra = {} if device == "cpu" else {"num_warps": warps, "num_stages": stages}
        fp8 = {"fp8-e4m3": 1, "fp8-e5m2": 2}.get(spec.name, 0)
        a_in, b_in = (a.view(torch.uint8), b.view(torch.uint8)) if fp8 else (a, b)

        def run() -> Any:
            kernel[grid](
                a_in, b_in, out, m, n, k, al,
                a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, ACC_INT=acc_int, PRECISION=precision, UPCAST=upcast, FP8=fp8, **extra,
            )
            return out

        kmajor = b.stride(0) == 1
        return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, f"A row-major, B {'K-major' if kmajor else 'row-major'} (strided loads)", keep=[a, b])
