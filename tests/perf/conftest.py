"""tests/perf holds benchmarks, not tests: keep them out of every ``pytest`` run.

Benchmarks are scripts named ``bench_*.py`` run directly
(``.venv/bin/python tests/perf/bench_cli_startup.py``). pytest's default file pattern
(``test_*.py``) already skips them; ``collect_ignore_glob`` also skips them when named
on the command line, and any ``test_*.py`` placed here is marked ``perf`` so that the
default ``-m 'not gpu and not perf'`` deselects it (run with ``pytest tests/perf -m perf``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

collect_ignore_glob = ["bench_*.py"]

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/perf with ``perf``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.perf)
