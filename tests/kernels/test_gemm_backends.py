"""GEMM backends without a GPU: torch on the CPU, Triton in the interpreter, nvcc builds of the .cu files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from charbench.errors import ConfigError
from charbench.kernels.gemm import backend_names, backends_for, get_backend, get_dtype, output_scale
from charbench.kernels.gemm.dtypes import dtype_names, to_dtype
from charbench.kernels.reference import ERROR_BOUNDS, check_gemm, reference_gemm, relative_error


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("transpose_b", [True, False], ids=["B-kmajor", "B-rowmajor"])
def test_torch_backend_matches_float64(dtype: str, transpose_b: bool) -> None:
    res = check_gemm(get_backend("torch"), get_dtype(dtype), "cpu", 48, 40, 64, seed=5, transpose_b=transpose_b)
    assert res.ok, res.message
    if dtype == "int8":
        assert res.rel_error == 0.0


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_triton_gemm_in_interpreter_matches_float64(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    be = get_backend("triton")
    assert be.unavailable_reason(get_dtype(dtype), "cpu") is None
    # odd sizes exercise the masks; both B layouts
    for tb in (True, False):
        res = check_gemm(be, get_dtype(dtype), "cpu", 40, 36, 72, seed=9, transpose_b=tb)
        assert res.ok, res.message


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    why = get_backend("triton").unavailable_reason(get_dtype("fp16"), "cpu")
    assert why is not None and "TRITON_INTERPRET=1" in why


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_cu_file_compiles_with_nvcc(arch: str, tmp_path: Path) -> None:
    from charbench.kernels.gemm.cuda_raw import CU_FILES, compile_sources_with_nvcc

    nvcc = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)
    if nvcc is None:
        pytest.skip("nvcc not installed")
    outs = compile_sources_with_nvcc(tmp_path, arch=arch, kind="cubin", nvcc=nvcc)
    assert len(outs) == len(CU_FILES)
    assert all(p.stat().st_size > 1000 for p in outs)


def test_registry_names_and_errors() -> None:
    assert backend_names() == ["torch", "cupy", "cuda-simt", "cuda-tc", "triton"]
    with pytest.raises(ConfigError) as e:
        get_backend("cutlass")
    assert str(e.value) == "--backends: unknown backend 'cutlass'; valid: torch, cupy, cuda-simt, cuda-tc, triton"
    with pytest.raises(ConfigError) as e:
        get_dtype("fp64")
    assert str(e.value) == f"--dtypes: unknown dtype 'fp64'; valid: {', '.join(dtype_names())}"
    assert backends_for("fp16-simt") == ["cuda-simt"]
    assert set(backends_for("bf16")) == {"torch", "cupy", "cuda-tc", "triton"}


def test_cpu_reasons_say_what_is_needed() -> None:
    torch_be = get_backend("torch")
    assert torch_be.unavailable_reason(get_dtype("tf32"), "cpu") == (
        "tf32 runs on tensor cores: it needs a CUDA GPU with compute capability >= 8.0; this device is cpu")
    assert "compute capability >= 8.9" in torch_be.unavailable_reason(get_dtype("fp8-e4m3"), "cpu")
    for name in ("cupy", "cuda-simt", "cuda-tc"):
        why = get_backend(name).unavailable_reason(get_dtype("fp16" if name != "cuda-simt" else "fp32"), "cpu")
        assert why is not None and "CUDA GPU" in why


def test_output_scale_keeps_fp16_outputs_finite() -> None:
    spec = get_dtype("fp16")
    g = torch.Generator().manual_seed(0)
    a = to_dtype(torch.randn(64, 256, generator=g) * 1024, spec)
    b = to_dtype(torch.randn(256, 32, generator=g) * 1024, spec)
    alpha = output_scale(a, b, spec)
    assert alpha < 1 and alpha == 2.0 ** round(torch.log2(torch.tensor(alpha)).item())
    be = get_backend("torch")
    gm = be.prepare(a, b, spec, alpha=alpha)
    gm()
    out = gm.result()
    assert torch.isfinite(out).all()
    assert relative_error(out, reference_gemm(a, b, alpha)) < ERROR_BOUNDS["fp16"]
    assert output_scale(a.float(), b.float(), get_dtype("fp32")) == 1.0


def test_relative_error_flags_nan() -> None:
    ref = torch.ones(2, 2, dtype=torch.float64)
    assert relative_error(torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), ref) == float("inf")


def test_conversions_round_to_nearest() -> None:
    x = torch.tensor([2.5, 3.5, -2.5, 300.0, -300.0, 0.4])
    assert to_dtype(x, get_dtype("int8")).tolist() == [2, 4, -2, 127, -128, 0]
    assert to_dtype(torch.tensor([1000.0, -1e6]), get_dtype("fp8-e4m3")).float().tolist() == [448.0, -448.0]
    # tf32: 10 mantissa bits, ties to even
    one_plus = torch.tensor([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11])
    t = to_dtype(one_plus, get_dtype("tf32"))
    assert t.tolist() == [1.0, 1.0 + 2 * 2.0**-10]
    assert (t.view(torch.int32) & 0x1FFF).eq(0).all()


def test_custom_kernel_size_rules() -> None:
    assert get_backend("cuda-tc").size_reason(100, 128, 64) == "backend cuda-tc needs M and N multiples of 128 and K a multiple of 32"
    assert get_backend("cuda-tc").size_reason(256, 128, 64) is None
    assert get_backend("cuda-simt").size_reason(128, 128, 12) == "backend cuda-simt needs M and N multiples of 128 and K a multiple of 8"
    assert get_backend("torch").size_reason(7, 5, 3) is None


def test_torch_refuses_fp8_e5m2_on_cuda_and_triton_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench.kernels.gemm import base, get_backend, get_dtype

    monkeypatch.setattr(base, "device_dtype_reason", lambda spec, device: None)  # a capable GPU, faked
    e5m2 = get_dtype("fp8-e5m2")
    why = get_backend("torch").unavailable_reason(e5m2, "cuda:0")
    assert why == ("fp8-e5m2 with backend torch: torch._scaled_mm (cuBLASLt) does not multiply two e5m2 "
                   "matrices; use --backends triton for fp8-e5m2, or --dtypes fp8-e4m3")
    assert get_backend("torch").unavailable_reason(get_dtype("fp8-e4m3"), "cuda:0") is None
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert get_backend("triton").unavailable_reason(e5m2, "cuda:0") is None
