"""Typed configs: presets, TOML overrides, common options.

A study declares a dataclass config and a dict of named presets; the CLI picks a preset,
applies ``--config FILE.toml`` on top, then explicit options::

    cfg = select_preset(PRESETS, "quick", option="--preset")
    cfg = apply_overrides(cfg, load_toml(path), source=f"--config {path}")
"""

from __future__ import annotations

import copy
import dataclasses
import math
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


#: longest wait a duration option may ask for (a day): beyond it ``time.sleep`` overflows, and a
#: measurement that long is a typo
MAX_WAIT_S = 86_400.0


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts, declared once per field (see :func:`check`).

    Every float is refused when it is NaN or infinite; ``allow_inf`` admits ``+inf`` for a
    field that documents a meaning for it (serve-sweep's ``request_rate``: all at once).

    Attributes:
        gt, ge, lt, le: exclusive/inclusive bounds (None = unbounded).
        allow_inf: accept ``+inf`` (the bounds then apply to the finite values).
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allow_inf: bool = False

    def describe(self, integer: bool = False) -> str:
        """What the field accepts, e.g. ``a finite number > 0 and <= 86400``."""
        kind = "an integer" if integer else ("a number" if self.allow_inf else "a finite number")
        bounds = [f"{op} {_fmt_num(v)}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)) if v is not None]
        return kind + "".join(f" {b}" if i == 0 else f" and {b}" for i, b in enumerate(bounds)) + (" or inf" if self.allow_inf else "")

    def accepts(self, value: Any) -> bool:
        """True when ``value`` (an int or float, not a bool) meets the constraint."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return self.allow_inf and value == math.inf
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


#: the constraint of a float field that declares none: finite, any sign
FINITE = Range()


def check(option: str | None = None, **bounds: Any) -> dict[str, Any]:
    """Field metadata: the CLI option that sets the field and the range it accepts.

    Example: ``duration_s: float = field(default=5.0, metadata=check("--duration", gt=0, le=MAX_WAIT_S))``.

    Args:
        option: the option as the user types it (``--duration``); None for a field that has
            no option (errors then name the field).
        bounds: keyword arguments of :class:`Range` (``gt``, ``ge``, ``lt``, ``le``, ``allow_inf``).
    """
    return {"option": option, "range": Range(**bounds) if bounds else None}


def field_label(f: dataclasses.Field[Any], source: str | None) -> str:
    """How an error names a field: ``--config x.toml: duration_s`` from a file, else its option."""
    if source is not None:
        return f"{source}: {f.name}"
    return f.metadata.get("option") or f.name


def _numeric_kinds(hint: Any) -> tuple[bool, bool]:
    """(has float, has int) among the number types in ``hint`` (``float | None``, ``list[int]``...)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType, list, tuple):
        kinds = [_numeric_kinds(h) for h in typing.get_args(hint) if h is not Ellipsis]
        return any(k[0] for k in kinds), any(k[1] for k in kinds)
    return hint is float, hint is int


def check_value(value: Any, rule: Range, name: str, *, integer: bool = False) -> None:
    """Refuse a number (or each number of a list) outside ``rule``; None passes.

    Raises:
        ConfigError: ``<name> must be a finite number > 0 (got inf)``.
    """
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            if not rule.accepts(v):
                raise ConfigError(f"{name}: every value must be {rule.describe(integer)} (got {v!r})")
    elif not rule.accepts(value):
        raise ConfigError(f"{name} must be {rule.describe(integer)} (got {value!r})")


def validate_fields(obj: Any, source: str | None = None, names: typing.Iterable[str] | None = None) -> None:
    """Check the numeric fields of a dataclass against their declared :class:`Range`.

    Float fields without a declaration must still be finite. Used by :func:`apply_overrides`
    for every value from a TOML file or an option, and by configs' own ``validate``.

    Args:
        obj: a dataclass instance.
        source: where the values came from (``--config x.toml``); None names each field by
            its CLI option.
        names: only these fields (default: all).

    Raises:
        ConfigError: the first value out of range, naming the option (or file and key).
    """
    _check_values(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, source, names)


def _check_values(cls: type, values: dict[str, Any], source: str | None, names: typing.Iterable[str] | None = None) -> None:
    """:func:`validate_fields` on field values of the dataclass ``cls`` (before an instance exists)."""
    hints = typing.get_type_hints(cls)
    wanted = set(names) if names is not None else None
    for f in dataclasses.fields(cls):
        if f.name not in values or (wanted is not None and f.name not in wanted):
            continue
        has_float, has_int = _numeric_kinds(hints[f.name])
        rule = f.metadata.get("range") or (FINITE if has_float else None)
        if rule is not None:
            check_value(values[f.name], rule, field_label(f, source), integer=has_int and not has_float)


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
        executor: where resource groups run: ``local``, ``ray``, ``slurm`` or ``slurm-local``
            (see :mod:`charbench.executors`); not part of the sweep, so ``--resume`` may change it.
        ray_address: ``auto`` or ``HOST:PORT`` of a Ray cluster (None: a private local instance).
        slurm_partition: the SLURM partition jobs are submitted to (None: the cluster's default).
        slurm_time_min: each job's time limit in minutes.
        slurm_gpus: GPUs per SLURM job.
        max_retries: how often a unit whose worker or node was lost is sent again.
        detach: submit the SLURM jobs and return; ``--resume`` collects them.
        ray_resources: custom Ray resources each unit asks for (``--ray-resource A100=1``).
        slurm_options: further sbatch settings by submitit's names (``--slurm-option account=proj42``).
        settings: runner settings given as options (``--idle-baseline``, ``--cooldown``,
            ``--shuffle``: :class:`charbench.settings.RunSettings` field -> value), checked
            when the options are read; the run's resolved settings add the study's defaults
            and ``[settings]`` of ``--config`` (:func:`charbench.cli_common.study_inputs`).
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
    executor: str = "local"
    ray_address: str | None = None
    slurm_partition: str | None = None
    slurm_time_min: int = field(default=60, metadata=check("--slurm-time", ge=1, le=60 * 24 * 30))
    slurm_gpus: int = field(default=0, metadata=check("--slurm-gpus", ge=0, le=64))
    max_retries: int = field(default=1, metadata=check("--max-retries", ge=0, le=100))
    detach: bool = False
    ray_resources: dict[str, float] = field(default_factory=dict)
    slurm_options: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the executor options have declared ranges like every other numeric option
        validate_fields(self)


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


def apply_overrides(cfg: T, overrides: dict[str, Any], source: str | None) -> T:
    """Return ``cfg`` with ``overrides`` applied, type- and range-checked field by field.

    Both a ``--config`` file and a command's options go through here, so a value is checked
    the same way whichever way it came (see :func:`validate_fields`).

    Args:
        cfg: a dataclass instance.
        overrides: field name -> value (from a TOML file, or from the command's options).
        source: how the user gave them, used in error messages (``--config x.toml``); None
            for options: errors then name the option (``--duration``) declared on the field.

    Raises:
        ConfigError: unknown key, a value of the wrong type, or a value out of range.
    """
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    names = list(fields)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        k = key.replace("-", "_")
        if k not in names:
            raise ConfigError(f"{source or 'options'}: unknown key {key!r}; valid: {', '.join(names)}")
        hint = hints[k]
        if not _check_type(value, hint):
            what = f"{source}: {key} = {value!r}" if source is not None else f"{field_label(fields[k], None)}: {value!r}"
            raise ConfigError(f"{what} has the wrong type; expected {_hint_name(hint)}")
        if isinstance(value, list) and _origin_in(hint, tuple):
            value = tuple(value)
        if isinstance(value, int) and not isinstance(value, bool) and _accepts_float_not_int(hint):
            value = float(value)  # TOML `power = 300` for a float field stays a float
        if hint is Path or (isinstance(value, str) and Path in typing.get_args(hint)):
            value = Path(value)
        changes[k] = value
    # checked before the new instance exists: a config that validates itself in __post_init__
    # would otherwise name the option, not the file and key the value came from
    _check_values(type(cfg), changes, source)
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

    Permission bits are not enough (root ignores them; a read-only mount or /proc does
    not): a probe file is really created, and removed, in the nearest existing folder,
    and an existing file is opened for appending (its content is left as it is).

    Raises:
        ConfigError: the path is a folder, or its nearest existing parent is not a
            writable folder (naming ``option`` and the fix).
    """
    import tempfile

    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file path (a name inside it)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    refused = f"{option} {path}: cannot write there ({parent} is not a writable folder"
    if not parent.is_dir():
        raise ConfigError(f"{refused}); pick another path")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".charbench-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{refused}: {exc.strerror or exc}); pick another path") from None
    if target.exists():
        try:
            with open(target, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot write the file ({exc.strerror or exc}); pick another path") from None


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
