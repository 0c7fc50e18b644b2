"""Shared fixtures: every test gets its own results root and fresh device probes.

``CHARBENCH_HOME`` points at a per-test temporary folder (so no test writes under the
working directory), ``--debug`` state is cleared, and the cached device probes of
:mod:`charbench.device` are reset before and after each test (so a test that fakes a
missing package cannot leak its answer into the next one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from charbench.syspath import drop_checkout_root

# ``python -m pytest`` from the repo root puts the root first on sys.path; drop it before any
# test module imports transformers (which imports the PyPI ``kernels`` package).
drop_checkout_root()


def _clear_probe_caches() -> None:
    from charbench import device

    for name in dir(device):
        fn = getattr(device, name)
        if callable(fn) and hasattr(fn, "cache_clear"):
            fn.cache_clear()


@pytest.fixture(autouse=True)
def _isolate_charbench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point CHARBENCH_HOME at tmp_path/home, clear debug mode and the probe caches."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHARBENCH_HOME", str(home))
    monkeypatch.delenv("CHARBENCH_DEBUG", raising=False)
    _clear_probe_caches()
    yield home
    _clear_probe_caches()


@pytest.fixture
def charbench_home(_isolate_charbench: Path) -> Path:
    """The isolated results root of this test (``$CHARBENCH_HOME``)."""
    return _isolate_charbench


@pytest.fixture(params=["measured", "not-measured"])
def meter_branch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Run the test twice: with a measuring fake meter and with no usable meter (``report_content.use_meter``), on any machine."""
    from report_content import use_meter

    use_meter(monkeypatch, request.param, tmp_path)
    return str(request.param)
