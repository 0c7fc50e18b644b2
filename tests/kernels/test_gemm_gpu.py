"""Every GEMM backend on a real GPU against float64 (skipped without CUDA)."""

from __future__ import annotations

import pytest

from charbench.kernels.gemm import BACKENDS, get_backend, get_dtype
from charbench.kernels.reference import check_gemm

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = [(be, dt) for be in BACKENDS for dt in ("fp32", "tf32", "fp16", "fp16-simt", "bf16", "int8", "fp8-e4m3", "fp8-e5m2")]


@pytest.mark.parametrize("backend,dtype", CASES, ids=[f"{b}-{d}" for b, d in CASES])
@pytest.mark.parametrize("transpose_b", [True, False], ids=["B-kmajor", "B-rowmajor"])
def test_backend_matches_float64_on_gpu(backend: str, dtype: str, transpose_b: bool) -> None:
    be = get_backend(backend)
    if dtype not in be.dtypes:
        pytest.skip(f"{backend} does not implement {dtype}")
    why = be.unavailable_reason(get_dtype(dtype), "cuda:0")
    if why:
        pytest.skip(why)
    res = check_gemm(be, get_dtype(dtype), "cuda:0", 256, 384, 512, seed=11, transpose_b=transpose_b)
    assert res.ok, res.message


def test_custom_kernels_reject_unsupported_sizes_with_the_rule() -> None:
    from charbench.errors import ConfigError
    from charbench.kernels.reference import random_operands

    why = get_backend("cuda-tc").unavailable_reason(get_dtype("fp16"), "cuda:0")
    if why:
        pytest.skip(why)
    a, b = random_operands(get_dtype("fp16"), 100, 128, 64, seed=1, device="cuda:0")
    with pytest.raises(ConfigError, match="multiples of 128"):
        get_backend("cuda-tc").prepare(a, b, get_dtype("fp16"))
