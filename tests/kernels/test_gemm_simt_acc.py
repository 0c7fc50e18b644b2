"""--accumulate: the output-type-accumulating CUDA-core kernels (nvcc PTX checks) and what each backend records."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from charbench.kernels.gemm import get_backend, get_dtype


def _nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)


def test_fp16_accumulates_in_half_and_int8_uses_dp4a(tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed")
    from charbench.kernels.gemm.cuda_raw import cuda_source

    src = tmp_path / "acc.cu"
    src.write_text(cuda_source("gemm_simt_acc.cu"))
    ptx = tmp_path / "acc.ptx"
    subprocess.run([nvcc, "-arch=sm_80", "-ptx", "-o", str(ptx), str(src)], check=True, capture_output=True, timeout=300)
    text = ptx.read_text()
    f16 = text.split(".entry gemm_simt_f16_acc16")[1].split(".entry")[0]
    i8 = text.split(".entry gemm_simt_i8_dp4a")[1].split(".entry")[0]
    assert "fma.rn.f16" in f16 and "fma.rn.f32" not in f16  # half-precision multiply-add into a half accumulator
    assert "dp4a.s32.s32" in i8  # four int8 products per instruction, int32 accumulator, CUDA cores (no mma)
    assert "mma" not in i8


def test_what_each_backend_records() -> None:
    from charbench.workloads.gemm_power.run import accumulation

    simt = get_backend("cuda-simt")
    assert accumulation(simt, get_dtype("fp16-simt"), "out", "cuda:0") == ("fp16", "")
    assert accumulation(simt, get_dtype("fp16-simt"), "fp32", "cuda:0") == ("fp32", "")
    assert accumulation(simt, get_dtype("int8"), "out", "cuda:0") == ("int32 (dp4a)", "")
    torch_be = get_backend("torch")
    assert accumulation(torch_be, get_dtype("fp32"), "out", "cpu") == ("fp32", "")
    assert accumulation(torch_be, get_dtype("int8"), "out", "cpu") == ("int32", "")
    acc, why = accumulation(torch_be, get_dtype("bf16"), "out", "cpu")
    assert acc is None and why == ("--accumulate out: torch accumulates bf16 in fp32 on cpu (no output-type accumulation to select); "
                                   "--backends cuda-simt --dtypes fp16-simt accumulates in fp16 as the paper's CUTLASS kernel did")
