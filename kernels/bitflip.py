"""The paper's experiment-18 kernel: XOR every byte of an int8 matrix with an n-bit mask.

IDP ``other_expt.cu`` launches ``A[i] ^= mask`` over a 16384^2 int8 matrix (initially zeros)
10,000 times, so every launch flips the same ``n`` low bits of every element back and forth.
Its mask is a ``uint64_t`` of ``n`` ones, XORed into an ``int8_t``: only the low 8 bits reach
memory, so masks of 8..32 bits all flip the whole byte (:func:`byte_mask`)::

    flip = get_flipper(x, n_bits=4)    # Triton on a GPU when available, torch elsewhere
    flip()                             # one launch, in place
"""

from __future__ import annotations

from typing import Any, Callable


def byte_mask(n_bits: int) -> int:
    """The byte the paper's ``A[i] ^ mask`` writes: ``(2^n - 1) & 0xFF``, as a signed int8 value."""
    if n_bits < 0 or n_bits > 64:
        raise ValueError(f"n_bits must be in 0..64, got {n_bits}")
    b = ((1 << n_bits) - 1) & 0xFF
    return b - 256 if b >= 128 else b


def torch_flip(x: Any, n_bits: int) -> Callable[[], None]:
    """One in-place ``x ^= mask`` per call (torch's elementwise kernel; CPU or GPU)."""
    import torch

    mask = torch.tensor(byte_mask(n_bits), dtype=torch.int8, device=x.device)

    def run() -> None:
        x.bitwise_xor_(mask)

    return run


def triton_flip(x: Any, n_bits: int, block: int = 1024) -> Callable[[], None]:
    """One in-place XOR launch per call, as a Triton kernel (runs under TRITON_INTERPRET=1 too)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _xor_kernel(ptr, n, mask, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        keep = offs < n
        v = tl.load(ptr + offs, mask=keep)
        tl.store(ptr + offs, v ^ mask.to(tl.int8), mask=keep)

    flat = x.view(-1)
    n = flat.numel()
    m = byte_mask(n_bits)
    grid = (triton.cdiv(n, block),)

    def run() -> None:
        _xor_kernel[grid](flat, n, m, BLOCK=block)

    return run


def triton_reason(device: str) -> str | None:
    """Why the Triton kernel cannot run on ``device`` (None when it can)."""
    import os

    if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton needs a GPU (or TRITON_INTERPRET=1)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def get_flipper(x: Any, n_bits: int) -> tuple[Callable[[], None], str]:
    """(one-launch callable, kernel name): Triton on a GPU when it loads, else torch."""
    dev = str(x.device)
    if dev.startswith("cuda") and triton_reason(dev) is None:
        return triton_flip(x, n_bits), "triton"
    return torch_flip(x, n_bits), "torch"
