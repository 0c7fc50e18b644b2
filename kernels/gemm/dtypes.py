"""GEMM data types: storage, bit layout, rounding, and what a device needs to run them.

Every dtype the GEMM study sweeps is described once here, so generators, switching
analysis and backends agree on the raw bit layout::

    from charbench.kernels.gemm.dtypes import get_dtype, to_dtype, raw_bits
    spec = get_dtype("fp16")
    a = to_dtype(torch.randn(64, 64), spec)      # round-to-nearest (saturating for int8/fp8)
    bits = raw_bits(a, spec)                      # int16 view of the same memory

``bits``/``bit_offset`` describe the *format* bits inside the storage word: TF32 is stored
in a float32 word whose 13 low mantissa bits the tensor cores ignore, so its 19 format
bits start at bit 13. Bit edits and Hamming statistics use the format bits only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charbench.errors import ConfigError


@dataclass(frozen=True)
class DTypeSpec:
    """One GEMM input type.

    Attributes:
        name: CLI name (``fp16``, ``fp16-simt``, ...).
        label: human label for reports.
        storage: torch dtype name of the operands in memory.
        storage_bits: width of the storage word.
        bits: number of format bits (TF32: 19).
        bit_offset: position of the lowest format bit in the storage word (TF32: 13).
        family: sweep family of the experiment table: ``fp``, ``int8`` or ``fp8``.
        tensor_cores: True when the GEMM runs on tensor cores.
        min_cc: minimum CUDA compute capability, None when any CUDA GPU will do.
        cpu: the torch backend can run it on a CPU.
        max_finite: largest finite value (saturation bound for int8/fp8 conversion).
        out_storage: torch dtype name of the output C.
        sign_bit: index of the sign bit in the storage word (None for none).
    """

    name: str
    label: str
    storage: str
    storage_bits: int
    bits: int
    bit_offset: int
    family: str
    tensor_cores: bool
    min_cc: tuple[int, int] | None
    cpu: bool
    max_finite: float
    out_storage: str
    sign_bit: int | None

    @property
    def format_mask(self) -> int:
        """Mask of the format bits inside the (unsigned) storage word."""
        return ((1 << self.bits) - 1) << self.bit_offset

    @property
    def is_float(self) -> bool:
        """True for floating-point formats."""
        return self.family != "int8"


DTYPES: dict[str, DTypeSpec] = {
    s.name: s
    for s in [
        DTypeSpec("fp32", "FP32 (CUDA cores / CPU)", "float32", 32, 32, 0, "fp", False, None, True, 3.4028234663852886e38, "float32", 31),
        DTypeSpec("tf32", "TF32 (tensor cores)", "float32", 32, 19, 13, "fp", True, (8, 0), False, 3.4028234663852886e38, "float32", 31),
        DTypeSpec("fp16", "FP16 on tensor cores (paper: FP16-T)", "float16", 16, 16, 0, "fp", True, (7, 0), True, 65504.0, "float16", 15),
        DTypeSpec("fp16-simt", "FP16 on CUDA cores (paper: FP16)", "float16", 16, 16, 0, "fp", False, None, False, 65504.0, "float16", 15),
        DTypeSpec("bf16", "BF16 (tensor cores)", "bfloat16", 16, 16, 0, "fp", True, (8, 0), True, 3.3895313892515355e38, "bfloat16", 15),
        DTypeSpec("int8", "INT8, int32 accumulation", "int8", 8, 8, 0, "int8", True, (7, 5), True, 127.0, "int32", None),
        DTypeSpec("fp8-e4m3", "FP8 E4M3 (torch._scaled_mm)", "float8_e4m3fn", 8, 8, 0, "fp8", True, (8, 9), False, 448.0, "bfloat16", 7),
        DTypeSpec("fp8-e5m2", "FP8 E5M2 (torch._scaled_mm)", "float8_e5m2", 8, 8, 0, "fp8", True, (8, 9), False, 57344.0, "bfloat16", 7),
    ]
}


def dtype_names() -> list[str]:
    """All dtype names, in table order."""
    return list(DTYPES)


def get_dtype(name: str) -> DTypeSpec:
    """Look up a dtype by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in DTYPES:
        raise ConfigError(f"--dtypes: unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def torch_dtype(spec: DTypeSpec) -> Any:
    """The torch dtype of the operands in memory."""
    import torch

    return getattr(torch, spec.storage)


def out_torch_dtype(spec: DTypeSpec) -> Any:
    """The torch dtype of the GEMM output."""
    import torch

    return getattr(torch, spec.out_storage)


def int_view_dtype(spec: DTypeSpec) -> Any:
    """A signed integer torch dtype of the storage width (for raw-bit views)."""
    import torch

    return {8: torch.int8, 16: torch.int16, 32: torch.int32}[spec.storage_bits]


def raw_bits(t: Any, spec: DTypeSpec) -> Any:
    """Reinterpret an operand's memory as signed integers of the storage width (no copy)."""
    return t.view(int_view_dtype(spec))


def from_raw_bits(bits: Any, spec: DTypeSpec) -> Any:
    """Reinterpret storage-width integers as the dtype (no copy)."""
    return bits.view(torch_dtype(spec))


def round_tf32(x: Any) -> Any:
    """Round float32 values to TF32 (10 mantissa bits), round-to-nearest-even, kept in float32.

    The 13 low mantissa bits of the result are zero, which is what the tensor cores read.
    """
    import torch

    bits = x.contiguous().view(torch.int32).to(torch.int64)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    # back to a signed 32-bit word (rounding never leaves 32 bits for finite inputs)
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded)
    return rounded.to(torch.int32).view(torch.float32)


def to_dtype(x: Any, spec: DTypeSpec) -> Any:
    """Convert float32 values to ``spec`` with round-to-nearest, as the paper does.

    FP16/BF16: IEEE round-to-nearest-even (overflow gives inf, like CUTLASS's converter).
    TF32: round-to-nearest-even to 10 mantissa bits, stored in float32. INT8:
    round-half-even then saturate to [-128, 127]. FP8: saturate to the largest finite value
    first (torch would make NaN of out-of-range E4M3 values), then round-to-nearest-even.
    """
    import torch

    x = x.to(torch.float32)
    if spec.name == "tf32":
        return round_tf32(x)
    if spec.family == "int8":
        return torch.round(x).clamp_(-128, 127).to(torch.int8)
    if spec.family == "fp8":
        return x.clamp(-spec.max_finite, spec.max_finite).to(torch_dtype(spec))
    return x.to(torch_dtype(spec))


def to_signed(v: Any, width: int) -> Any:
    """Map unsigned ``width``-bit values held in int64 to their signed two's-complement value."""
    half = 1 << (width - 1)
    return ((v + half) & ((1 << width) - 1)) - half
