"""Experiment 18's XOR kernel: the paper's byte truncation, Triton (interpreter) against torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from charbench.kernels.bitflip import byte_mask, get_flipper, torch_flip


def test_byte_mask_truncates_like_the_papers_int8_store() -> None:
    assert [byte_mask(n) for n in (0, 1, 4, 7, 8, 16, 32)] == [0, 1, 15, 127, -1, -1, -1]
    with pytest.raises(ValueError, match="n_bits must be in 0..64, got 65"):
        byte_mask(65)


def test_torch_flip_toggles_back_and_forth() -> None:
    x = torch.zeros(5, 7, dtype=torch.int8)
    flip = torch_flip(x, 3)
    flip()
    assert bool((x == 7).all())
    flip()
    assert bool((x == 0).all())
    assert get_flipper(x, 3)[1] == "torch"  # CPU tensor: no Triton


_SCRIPT = """
import torch
from charbench.kernels.bitflip import triton_flip
x = torch.arange(-128, 128, dtype=torch.int8).repeat(9)[:2000].clone()
ref = x ^ torch.tensor(15, dtype=torch.int8)
triton_flip(x, 4, block=256)()
assert torch.equal(x, ref), (x[:8], ref[:8])
print("ok")
"""


def test_triton_kernel_matches_torch_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
