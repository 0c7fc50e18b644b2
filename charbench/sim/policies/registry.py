"""Where policies are registered (built-in ones on import of :mod:`charbench.sim.policies`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError

POLICIES: dict[str, type] = {}


def register_policy(cls: type) -> type:
    """Class decorator: make ``cls`` (a Policy subclass with a ``name``) selectable by name."""
    name = getattr(cls, "name", "")
    if not name or "," in name:
        raise ValueError(f"policy class {cls.__name__}: set `name` to a short name without commas")
    POLICIES[name] = cls
    return cls


def load_policy_file(path: Path) -> list[str]:
    """Import a user's policy file (it calls :func:`register_policy`); returns the names it added.

    Raises:
        ConfigError: the file is missing, fails to import, or registers no policy.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--policy-file: file not found: {path}")
    before = set(POLICIES)
    spec = importlib.util.spec_from_file_location(f"charbench_user_policy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--policy-file {path}: failed to import ({type(exc).__name__}: {exc})") from exc
    added = sorted(set(POLICIES) - before)
    if not added:
        raise ConfigError(f"--policy-file {path}: registers no policy; decorate a Policy subclass with @register_policy")
    return added


def policy_class(name: str) -> Any:
    """The registered class called ``name``.

    Raises:
        ConfigError: unknown name (lists the registered ones).
    """
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"--policies: unknown policy {name!r}; valid: {', '.join(sorted(POLICIES))} (add one with --policy-file)") from None
