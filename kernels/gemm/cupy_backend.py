"""cuBLAS through CuPy's ``cublasGemmEx`` binding, with explicit data and compute types.

Calling ``gemmEx`` directly (rather than ``cupy.matmul``) fixes the compute type per dtype:
FP32 -> ``CUBLAS_COMPUTE_32F`` (no TF32), TF32 -> ``CUBLAS_COMPUTE_32F_FAST_TF32``, FP16/BF16
-> fp32 accumulation, INT8 -> ``CUBLAS_COMPUTE_32I`` with an int32 output. The torch operands
are used in place (their device pointers)::

    g = get_backend("cupy").prepare(a, b, get_dtype("bf16")); g()

cuBLAS is column-major: row-major ``C = A @ B`` is computed as ``C^T = B^T @ A^T``.
"""

from __future__ import annotations

from typing import Any

from charbench.kernels.gemm.base import GemmBackend, PreparedGemm, check_shape
from charbench.kernels.gemm.dtypes import DTypeSpec, out_torch_dtype

# cudaDataType_t and cublasComputeType_t values (library_types.h, cublas_api.h)
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF, CUDA_R_8I, CUDA_R_32I = 0, 2, 14, 3, 10
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_32I = 68, 77, 72
OP_N, OP_T = 0, 1
GEMM_DEFAULT = -1

_TYPES: dict[str, tuple[int, int, int]] = {  # dtype -> (A/B type, C type, compute type)
    "fp32": (CUDA_R_32F, CUDA_R_32F, COMPUTE_32F),
    "tf32": (CUDA_R_32F, CUDA_R_32F, COMPUTE_32F_FAST_TF32),
    "fp16": (CUDA_R_16F, CUDA_R_16F, COMPUTE_32F),
    "bf16": (CUDA_R_16BF, CUDA_R_16BF, COMPUTE_32F),
    "int8": (CUDA_R_8I, CUDA_R_32I, COMPUTE_32I),
}


class CupyGemm(GemmBackend):
    """cuBLAS ``GemmEx`` via CuPy."""

    name = "cupy"
    description = "cuBLAS GemmEx through CuPy (explicit compute type)"
    dtypes = tuple(_TYPES)

    def probe(self, device: str) -> str | None:
        """Needs a CUDA device and an importable CuPy that sees it."""
        if not device.startswith("cuda"):
            return f"backend cupy calls cuBLAS: it needs a CUDA GPU; this device is {device}"
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return f"CuPy is not usable ({type(exc).__name__}: {exc}); pip install 'charbench[cuda12]' (or [cuda13])"
        return None

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0) -> PreparedGemm:
        """Prepare one ``cublasGemmEx`` call over the operands in place."""
        import cupy
        import numpy as np
        import torch
        from cupy_backends.cuda.libs import cublas

        m, n, k = check_shape(a, b)
        ab_type, c_type, compute = _TYPES[spec.name]
        a_c = a.contiguous()  # row-major (M, K) == column-major (K, M) with ld K
        kmajor = b.stride(0) == 1 and b.stride(1) == k
        if not kmajor and spec.family == "int8":  # cuBLAS int8 wants the "TN" layout: make B K-major
            b = b.t().contiguous().t()
            kmajor = True
        if kmajor:  # K-major: column-major (K, N) with ld K
            b_buf, trans_b_cm, ldb = b, OP_T, k
            layout = "A row-major, B K-major"
        else:  # row-major (K, N) == column-major (N, K) with ld N
            b_buf, trans_b_cm, ldb = b.contiguous(), OP_N, n
            layout = "A row-major, B row-major"
        out = torch.empty(m, n, dtype=out_torch_dtype(spec), device=a.device)
        dev = a.device.index or 0
        cupy.cuda.Device(dev).use()
        handle = cupy.cuda.device.get_cublas_handle()
        if compute == COMPUTE_32I:
            al, be = np.array(int(alpha), dtype=np.int32), np.array(0, dtype=np.int32)
        else:
            al, be = np.array(alpha, dtype=np.float32), np.array(0.0, dtype=np.float32)
        # C^T (N, M) = op(B-buffer) (N, K) @ op(A-buffer) (K, M), all column-major
        args = (handle, trans_b_cm, OP_N, n, m, k, al.ctypes.data, b_buf.data_ptr(), ab_type, ldb,
                a_c.data_ptr(), ab_type, k, be.ctypes.data, out.data_ptr(), c_type, n, compute, GEMM_DEFAULT)
        stream = torch.cuda.current_stream(a.device).cuda_stream
        cublas.setStream(handle, stream)

        def run() -> Any:
            cublas.gemmEx(*args)
            return out

        return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, keep=[a_c, b_buf, al, be])
