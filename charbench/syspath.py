"""Keep a source checkout's root off ``sys.path`` so that its folders cannot shadow PyPI packages.

The repo's top-level ``kernels/`` folder installs as ``charbench.kernels``, but the folder
name is also a PyPI package (``kernels``, imported by transformers 5). ``python -m pytest``
and ``python -m charbench`` put the current directory first on ``sys.path``; run from the
repo root, that makes ``import kernels`` find our folder instead of the installed package.

Importing :mod:`charbench` calls :func:`drop_checkout_root`, and so does ``tests/conftest.py``
before any test module is imported::

    from charbench.syspath import drop_checkout_root
    drop_checkout_root()

Only the root of *this* checkout is removed (a folder holding ``charbench/__init__.py``,
``kernels/__init__.py`` and ``pyproject.toml``); the installed package is still found through
its own import hook (editable install) or ``site-packages``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The top-level folders of the repo that install under ``charbench.`` and whose bare names
# could collide with other distributions.
MAPPED_FOLDERS = ("kernels", "workloads", "reports")


def checkout_root() -> Path | None:
    """The source checkout this ``charbench`` was imported from, or None for a wheel install."""
    root = Path(__file__).resolve().parent.parent
    markers = (root / "pyproject.toml", root / "kernels" / "__init__.py", root / "charbench" / "__init__.py")
    return root if all(m.is_file() for m in markers) else None


def _resolves_to(entry: str, root: Path) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == root
    except OSError:
        return False


def drop_checkout_root() -> list[str]:
    """Remove this checkout's root from ``sys.path`` and forget modules imported from it.

    Returns:
        The ``sys.path`` entries that were removed (empty when none pointed at the checkout).
    """
    root = checkout_root()
    if root is None:
        return []
    removed = [entry for entry in sys.path if _resolves_to(entry, root)]
    sys.path[:] = [entry for entry in sys.path if entry not in removed]
    for name in MAPPED_FOLDERS:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or ""
        if module is not None and origin and Path(origin).resolve().is_relative_to(root / name):
            # A bare ``kernels`` imported from the checkout before the guard ran: drop it so the
            # next import finds the installed distribution.
            del sys.modules[name]
    return removed
