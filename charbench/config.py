"""Typed configs: presets, TOML overrides, common options.

A study declares a dataclass config and a dict of named presets; the CLI picks a preset,
applies ``--config FILE.toml`` on top, then explicit options::

    cfg = select_preset(PRESETS, "quick", option="--preset")
    cfg = apply_overrides(cfg, load_toml(path), source=f"--config {path}")
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from charbench.errors import ConfigError

T = TypeVar("T")

HOME_ENV = "CHARBENCH_HOME"
DEFAULT_OUT = "charbench-runs"


def default_out_dir() -> Path:
    """Results root: ``$CHARBENCH_HOME`` when set, else ``./charbench-runs``."""
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path.cwd() / DEFAULT_OUT


@dataclass
class CommonOptions:
    """Options every study command takes (see README, "Common options").

    Attributes:
        out: results root; runs go to ``<out>/<study>/<stamp>-<label>/``.
        label: free-form run label (part of the folder name, sanitized).
        meta: ``--meta KEY=VALUE`` pairs stored with the run.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:i``.
        seed: base seed for everything random in the run.
        config_file: TOML file whose keys override the preset.
        resume: an existing run folder to continue (completed points are skipped).
        continue_on_error: record a failed point and go on instead of stopping.
        json: print a machine-readable summary on stdout.
    """

    out: Path = field(default_factory=default_out_dir)
    label: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    config_file: Path | None = None
    resume: Path | None = None
    continue_on_error: bool = False
    json: bool = False


def parse_meta(items: list[str] | None) -> dict[str, str]:
    """Parse repeated ``--meta KEY=VALUE`` options.

    Raises:
        ConfigError: an item lacks ``=`` or has an empty key.
    """
    meta: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--meta: expected KEY=VALUE, got {item!r}; e.g. --meta driver=550.54")
        meta[key.strip()] = value
    return meta


def load_toml(path: Path) -> dict[str, Any]:
    """Read a ``--config`` TOML file.

    Raises:
        ConfigError: the file is missing or not valid TOML.
    """
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read the file ({exc}); pass a UTF-8 TOML file") from exc


def select_preset(presets: dict[str, T], name: str, option: str = "--preset") -> T:
    """Return a copy of the named preset.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in presets:
        raise ConfigError(f"{option}: unknown preset {name!r}; valid: {', '.join(presets)}")
    # A deep copy: later overrides must never change the preset table itself.
    return copy.deepcopy(presets[name])


def _check_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(_check_type(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def apply_overrides(cfg: T, overrides: dict[str, Any], source: str) -> T:
    """Return ``cfg`` with ``overrides`` applied, type-checked field by field.

    Args:
        cfg: a dataclass instance.
        overrides: field name -> value (e.g. from a TOML file).
        source: how the user gave them, used in error messages (``--config x.toml``).

    Raises:
        ConfigError: unknown key or a value of the wrong type.
    """
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        k = key.replace("-", "_")
        if k not in names:
            raise ConfigError(f"{source}: unknown key {key!r}; valid: {', '.join(names)}")
        hint = hints[k]
        if not _check_type(value, hint):
            raise ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected {_hint_name(hint)}")
        if isinstance(value, list) and _origin_in(hint, tuple):
            value = tuple(value)
        if isinstance(value, int) and not isinstance(value, bool) and _accepts_float_not_int(hint):
            value = float(value)  # TOML `power = 300` for a float field stays a float
        if hint is Path or (isinstance(value, str) and Path in typing.get_args(hint)):
            value = Path(value)
        changes[k] = value
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def _origin_in(hint: Any, origin: type) -> bool:
    if typing.get_origin(hint) is origin:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(typing.get_origin(h) is origin for h in typing.get_args(hint))


def _accepts_float_not_int(hint: Any) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return float in options and int not in options


def _hint_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``int | None``, ``Literal['a', 'b']`` (what a user can read)."""
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_hint_name(h) for h in typing.get_args(hint))
    return str(hint).replace("typing.", "").replace("pathlib.", "")


def check_writable_file(path: str | Path, option: str) -> None:
    """Refuse an output file path that cannot be written, before any work is done.

    Raises:
        ConfigError: the path is a folder, or its nearest existing parent is not a
            writable folder (naming ``option`` and the fix).
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file path (a name inside it)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write there ({parent} is not a writable folder); pick another path")


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths and tuples to JSON-friendly values (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_csv_list(text: str, option: str, valid: list[str] | None = None, *, allow_all: bool = True) -> list[str]:
    """Split ``a,b,c`` (or ``all``) and check each name against ``valid``.

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{option}: empty list; valid: {', '.join(valid or [])}")
    if valid is not None:
        if allow_all and items == ["all"]:
            return list(valid)
        bad = [i for i in items if i not in valid]
        if bad:
            raise ConfigError(f"{option}: unknown {'name' if len(bad) == 1 else 'names'} {', '.join(repr(b) for b in bad)}; valid: {', '.join(valid)}" + (" or all" if allow_all else ""))
    return items
