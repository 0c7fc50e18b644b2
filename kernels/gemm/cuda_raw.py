"""charbench's own CUDA GEMM kernels (``kernels/cuda/*.cu``), loaded with ``cupy.RawModule``.

Two kernels whose datapath is fixed by their source, not by a library heuristic:

* ``cuda-simt``: tiled shared-memory SIMT kernel on CUDA cores (fp32, and fp16 operands with
  fp32 FFMA accumulation = the ``fp16-simt`` dtype, the paper's "FP16" without tensor cores).
* ``cuda-tc``: ``mma.sync`` m16n8k16 tensor-core kernel (fp16, bf16; fp32 accumulation).

::

    g = get_backend("cuda-tc").prepare(a, b, get_dtype("fp16"), alpha=1.0); g()

The torch operands are handed to CuPy without a copy (``cupy.asarray`` over the same device
memory). Operand layouts the kernels need are made in ``prepare`` (never in the timed call):
the SIMT kernel reads B row-major (K, N), the tensor-core kernel reads B K-major (N, K).
:func:`compile_sources_with_nvcc` builds every ``.cu`` file with ``nvcc`` (used by the tests on
machines without a GPU).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError
from charbench.kernels.gemm.base import GemmBackend, PreparedGemm, check_shape
from charbench.kernels.gemm.dtypes import DTypeSpec

CU_FILES = ("gemm_simt.cu", "gemm_tc.cu", "gemm_simt_acc.cu")


def cuda_source(name: str) -> str:
    """The text of ``kernels/cuda/<name>`` (package data)."""
    return resources.files("charbench.kernels").joinpath("cuda", name).read_text()


def compile_sources_with_nvcc(out_dir: Path, arch: str = "sm_80", kind: str = "cubin", nvcc: str | None = None) -> list[Path]:
    """Compile every ``.cu`` file with nvcc into ``out_dir``; returns the outputs.

    Args:
        out_dir: folder for the ``.cubin``/``.ptx`` files.
        arch: e.g. ``sm_80``, ``sm_90``.
        kind: ``cubin`` or ``ptx``.
        nvcc: path to nvcc (default: the one on PATH).

    Raises:
        RuntimeError: nvcc failed; the message holds its output.
    """
    exe = nvcc or shutil.which("nvcc")
    if exe is None:
        raise RuntimeError("nvcc not found on PATH")
    outs = []
    for name in CU_FILES:
        src = out_dir / name
        src.write_text(cuda_source(name))
        target = out_dir / f"{Path(name).stem}.{arch}.{kind}"
        proc = subprocess.run([exe, f"-arch={arch}", f"-{kind}", "-O3", "-std=c++17", "-o", str(target), str(src)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc {name} ({arch}, {kind}) failed:\n{proc.stdout}\n{proc.stderr}")
        outs.append(target)
    return outs


def _cupy_reason() -> str | None:
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy is not usable ({type(exc).__name__}: {exc}); pip install 'charbench[cuda12]' (or [cuda13])"
    return None


@functools.lru_cache(maxsize=8)
def _module(name: str, device_index: int) -> Any:
    """Compile ``kernels/cuda/<name>`` with NVRTC for the device (cached)."""
    import cupy

    with cupy.cuda.Device(device_index):
        mod = cupy.RawModule(code=cuda_source(name), options=("--std=c++17",))
        mod.compile()
        return mod


def _as_cupy(t: Any) -> Any:
    """A CuPy view of a contiguous torch CUDA tensor (bf16 shown as int16: same bits)."""
    import cupy
    import torch

    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return cupy.asarray(t)


class _RawBackend(GemmBackend):
    kernels: dict[str, str] = {}

    def probe(self, device: str) -> str | None:
        """Needs a CUDA device and CuPy (which compiles the ``.cu`` source with NVRTC)."""
        if not device.startswith("cuda"):
            return f"backend {self.name} runs charbench's CUDA kernels: it needs a CUDA GPU (and CuPy); this device is {device}"
        return _cupy_reason()

    #: (M and N multiple, K multiple) the kernel's tiles need
    tile: tuple[int, int] = (128, 8)

    def size_reason(self, m: int, n: int, k: int) -> str | None:
        """The kernels have no edge handling: M, N and K must be multiples of the tile."""
        mn, kk = self.tile
        if m % mn or n % mn or k % kk:
            return f"backend {self.name} needs M and N multiples of {mn} and K a multiple of {kk}"
        return None

    def _launch_setup(self, spec: DTypeSpec, a: Any) -> tuple[Any, int]:
        dev = a.device.index or 0
        kernel = _module(self.source, dev).get_function(self.kernels[spec.name])
        return kernel, dev


class SimtGemm(_RawBackend):
    """Tiled shared-memory SIMT GEMM on CUDA cores (``kernels/cuda/gemm_simt.cu``)."""

    name = "cuda-simt"
    description = "charbench CUDA-core kernel: 128x128x8 tiles, 8x8 per thread, fp32 FFMA (fp16 HFMA / int8 dp4a: gemm_simt_acc.cu)"
    dtypes = ("fp32", "fp16-simt", "int8")
    source = "gemm_simt.cu"
    kernels = {"fp32": "gemm_simt_f32", "fp16-simt": "gemm_simt_f16"}
    #: (dtype, --accumulate) -> (source, kernel, accumulator); int8 is always dp4a into int32
    variants = {
        ("fp32", "fp32"): ("gemm_simt.cu", "gemm_simt_f32", "fp32"), ("fp32", "out"): ("gemm_simt.cu", "gemm_simt_f32", "fp32"),
        ("fp16-simt", "fp32"): ("gemm_simt.cu", "gemm_simt_f16", "fp32"),
        ("fp16-simt", "out"): ("gemm_simt_acc.cu", "gemm_simt_f16_acc16", "fp16"),
        ("int8", "fp32"): ("gemm_simt_acc.cu", "gemm_simt_i8_dp4a", "int32 (dp4a)"),
        ("int8", "out"): ("gemm_simt_acc.cu", "gemm_simt_i8_dp4a", "int32 (dp4a)"),
    }

    @classmethod
    def accumulator(cls, spec: DTypeSpec, accumulate: str) -> str:
        """The accumulator type this backend uses for ``spec`` under ``--accumulate``."""
        return cls.variants[(spec.name, accumulate)][2]

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0, accumulate: str = "fp32") -> PreparedGemm:
        """Prepare a launch; B is made row-major (K, N) if it is not.

        Args:
            accumulate: ``fp32`` or ``out`` (fp16 HFMA accumulation for fp16-simt, as CUTLASS's default).
        """
        import cupy
        import numpy as np
        import torch

        src, kname, _acc = self.variants[(spec.name, accumulate)]

        m, n, k = check_shape(a, b)
        why = self.size_reason(m, n, k)
        if why:
            raise ConfigError(f"--size {m},{n},{k}: {why}")
        a_c = a.contiguous()
        b_c = b.contiguous()
        layout = "A row-major, B row-major" + (" (copied)" if b_c.data_ptr() != b.data_ptr() else "")
        out = torch.empty(m, n, dtype=torch.int32 if spec.name == "int8" else a.dtype, device=a.device)
        dev = a.device.index or 0
        kernel = _module(src, dev).get_function(kname)
        args = (_as_cupy(a_c), _as_cupy(b_c), _as_cupy(out), np.int32(m), np.int32(n), np.int32(k), np.float32(alpha))
        tile = 128 if src == "gemm_simt.cu" else 64
        grid, block = (n // tile, m // tile), (256,)

        cupy.cuda.Device(dev).use()  # once here, not per launch

        def run() -> Any:
            kernel(grid, block, args)
            return out

        return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, keep=[a_c, b_c, args])


class TensorCoreGemm(_RawBackend):
    """mma.sync tensor-core GEMM (``kernels/cuda/gemm_tc.cu``)."""

    name = "cuda-tc"
    description = "charbench tensor-core kernel: mma.sync m16n8k16, 128x128x32 tiles, 4-stage cp.async"
    dtypes = ("fp16", "bf16")
    source = "gemm_tc.cu"
    kernels = {"fp16": "gemm_tc_f16", "bf16": "gemm_tc_bf16"}
    tile = (128, 32)
    smem_bytes = 4 * 2 * 128 * 32 * 2

    def prepare(self, a: Any, b: Any, spec: DTypeSpec, *, alpha: float = 1.0) -> PreparedGemm:
        """Prepare a launch; B is made K-major (N, K) if it is not."""
        import cupy
        import numpy as np
        import torch

        m, n, k = check_shape(a, b)
        why = self.size_reason(m, n, k)
        if why:
            raise ConfigError(f"--size {m},{n},{k}: {why}")
        a_c = a.contiguous()
        bt = b.t().contiguous()  # (N, K); no copy when b is already a K-major view
        layout = "A row-major, B K-major" + (" (copied)" if bt.data_ptr() != b.data_ptr() else "")
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
        kernel, dev = self._launch_setup(spec, a)
        kernel.max_dynamic_shared_size_bytes = self.smem_bytes
        args = (_as_cupy(a_c), _as_cupy(bt), _as_cupy(out), np.int32(m), np.int32(n), np.int32(k), np.float32(alpha))
        grid, block = (n // 128, m // 128), (256,)
        smem = self.smem_bytes

        cupy.cuda.Device(dev).use()  # once here, not per launch

        def run() -> Any:
            kernel(grid, block, args, shared_mem=smem)
            return out

        return PreparedGemm(run, out, lambda o: o, m, n, k, self.name, layout, keep=[a_c, bt, args])
