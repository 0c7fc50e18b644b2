"""Fixtures for the measurement tests: fake NVML, fake clock, fake powercap tree.

The fakes themselves live in :mod:`charbench.measure.testing` so any test can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from charbench.measure.testing import FakeClock, FakeGpu, FakePowercap, fake_nvml


@pytest.fixture(autouse=True)
def _clean_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start with no CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER from the shell."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


@pytest.fixture
def nvml_fake() -> Iterator[Callable[..., Any]]:
    """Factory: ``nv = nvml_fake([FakeGpu(...), ...], init_error=None)`` installs a fake
    pynvml until the test ends and returns the autospecced module."""
    with ExitStack() as stack:

        def install(gpus: list[FakeGpu] | None = None, **kwargs: Any) -> Any:
            return stack.enter_context(fake_nvml(gpus, **kwargs))

        yield install


@pytest.fixture
def clock() -> FakeClock:
    """A fake perf_counter starting at 100 s."""
    return FakeClock(100.0)


@pytest.fixture
def powercap(tmp_path: Any) -> Iterator[FakePowercap]:
    """An empty fake powercap class folder whose denied reads raise PermissionError."""
    with FakePowercap(tmp_path / "powercap") as pc:
        yield pc
