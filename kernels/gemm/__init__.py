"""GEMM backends for the input-dependent power study, behind one registry.

::

    from charbench.kernels.gemm import get_backend, backend_names
    be = get_backend("torch")                 # torch, cupy, cuda-simt, cuda-tc, triton
    why = be.unavailable_reason(get_dtype("fp16"), "cuda:0")   # None when usable
    g = be.prepare(a, b, get_dtype("fp16"), alpha=1.0); g()

Backends: ``torch`` (cuBLAS/cuBLASLt on GPU, oneDNN/MKL on CPU), ``cupy`` (cuBLAS through
CuPy's ``gemmEx``), ``cuda-simt`` and ``cuda-tc`` (charbench's own CUDA kernels in
``kernels/cuda/*.cu``, loaded with ``cupy.RawModule``: a tiled shared-memory SIMT kernel and
an ``mma.sync`` tensor-core kernel, so CUDA-core vs tensor-core comparisons do not depend on
a vendor heuristic) and ``triton`` (a Triton GEMM). Optional packages are imported lazily.
"""

from __future__ import annotations

from charbench.errors import ConfigError
from charbench.kernels.gemm.base import GemmBackend, PreparedGemm, device_dtype_reason, output_scale
from charbench.kernels.gemm.dtypes import DTYPES, DTypeSpec, dtype_names, get_dtype

__all__ = [
    "BACKENDS", "GemmBackend", "PreparedGemm", "DTYPES", "DTypeSpec", "backend_names", "dtype_names",
    "get_backend", "get_dtype", "output_scale", "device_dtype_reason", "backends_for",
]

#: backend name -> "module:class"
BACKENDS: dict[str, str] = {
    "torch": "charbench.kernels.gemm.torch_backend:TorchGemm",
    "cupy": "charbench.kernels.gemm.cupy_backend:CupyGemm",
    "cuda-simt": "charbench.kernels.gemm.cuda_raw:SimtGemm",
    "cuda-tc": "charbench.kernels.gemm.cuda_raw:TensorCoreGemm",
    "triton": "charbench.kernels.gemm.triton_gemm:TritonGemm",
}

_CACHE: dict[str, GemmBackend] = {}


def backend_names() -> list[str]:
    """All backend names, in registry order."""
    return list(BACKENDS)


def get_backend(name: str) -> GemmBackend:
    """The backend called ``name`` (instances are cached; importing needs no optional package).

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in BACKENDS:
        raise ConfigError(f"--backends: unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name not in _CACHE:
        import importlib

        module, _, cls = BACKENDS[name].partition(":")
        _CACHE[name] = getattr(importlib.import_module(module), cls)()
    return _CACHE[name]


def backends_for(dtype: str) -> list[str]:
    """Names of the backends that implement ``dtype`` (on some device)."""
    return [n for n in BACKENDS if dtype in get_backend(n).dtypes]
