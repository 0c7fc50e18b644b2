"""Runner settings: how the runner measures a sweep, owned by the spine (not by a study's config).

One typed :class:`RunSettings` per run, resolved in layers, each checked by the same
typed validation (:func:`charbench.config.apply_overrides`)::

    RunSettings()                               the spine's defaults
      <- StudySpec.settings for (preset, device) a study's (and its presets') defaults
      <- [settings] of --config FILE.toml       sample_interval_s = 0.5
      <- --idle-baseline / --cooldown / --shuffle

    settings = resolve_settings(STUDY.settings, "quick", "cuda:0", toml_table, given, source="--config x.toml")

A run saves them in config.json (``"settings"``); ``--resume`` reloads them, and a setting
given again must agree with the saved one (see :func:`charbench.cli_common.study_inputs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from charbench.config import MAX_WAIT_S, apply_overrides, check, validate_fields
from charbench.errors import ConfigError

#: the ``--config FILE.toml`` table that holds runner settings
SETTINGS_TABLE = "settings"


@dataclass
class RunSettings:
    """How the runner measures a sweep (shared by every study).

    Attributes:
        idle_baseline_s: seconds of idle power measured before the first point (0 = skip).
        cooldown_s: sleep between points (lets temperature settle).
        shuffle: run points in a seeded random order (decorrelates thermal drift).
        sample_interval_s: background sampler period; 0 disables the sampler.
    """

    idle_baseline_s: float = field(default=0.0, metadata=check("--idle-baseline", ge=0, le=MAX_WAIT_S))
    cooldown_s: float = field(default=0.0, metadata=check("--cooldown", ge=0, le=MAX_WAIT_S))
    shuffle: bool = False
    sample_interval_s: float = field(default=0.1, metadata=check(ge=0, le=MAX_WAIT_S))

    def __post_init__(self) -> None:
        # refused here, before a run folder exists (time.sleep(inf) overflows mid-run)
        validate_fields(self)


#: the names of the runner settings (config.json ``settings`` keys, ``[settings]`` TOML keys)
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunSettings))


def device_kind(device: str) -> str:
    """``cuda`` for a CUDA device (``cuda``, ``cuda:1``), else ``cpu``."""
    return "cuda" if device.startswith("cuda") else "cpu"


def check_defaults_table(table: Mapping[str, Mapping[str, Any]], owner: str) -> None:
    """Refuse a study's settings table with a key that is not a runner setting, or a bad value.

    Raises:
        ValueError: naming the selector and the key (a study author's mistake, not a user's).
    """
    for selector, values in table.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"{owner} settings[{selector!r}]: give a dict of runner settings, e.g. {{'cooldown_s': 1.0}}")
        try:
            apply_overrides(RunSettings(), dict(values), source=f"{owner} settings[{selector!r}]")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def study_defaults(table: Mapping[str, Mapping[str, Any]], preset: str | None, device: str) -> dict[str, Any]:
    """A study's default settings for a preset on a device, most specific selector last.

    Selectors, in the order they apply: ``"*"`` (every run), the device kind (``"cpu"``,
    ``"cuda"``), the preset (``"paper"``), then preset and kind (``"paper/cuda"``).

    Args:
        table: :attr:`charbench.studies.StudySpec.settings`.
        preset: the ``--preset`` name (None: no preset-specific entries).
        device: the resolved device (``cpu``, ``cuda:0``).
    """
    kind = device_kind(device)
    out: dict[str, Any] = {}
    for selector in ("*", kind, preset, f"{preset}/{kind}" if preset is not None else None):
        if selector is not None:
            out.update(table.get(selector, {}))
    return out


def split_settings_table(doc: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``--config`` TOML document into (study keys, ``[settings]`` table).

    A runner setting at the top level is refused with a pointer to ``[settings]`` (it used
    to live in each study's config).

    Raises:
        ConfigError: ``settings`` is not a table, or a setting outside it (file and key named).
    """
    study = dict(doc)
    table = study.pop(SETTINGS_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {SETTINGS_TABLE} = {table!r} must be a table; write [{SETTINGS_TABLE}] and its keys below it")
    misplaced = [k for k in study if k.replace("-", "_") in SETTING_NAMES]
    if misplaced:
        raise ConfigError(f"{source}: {misplaced[0]} is a runner setting; put it under [{SETTINGS_TABLE}] ({misplaced[0]} = ...)")
    return study, table


def table_source(source: str) -> str:
    """How errors name a TOML ``[settings]`` table: ``--config x.toml [settings]``."""
    return f"{source} [{SETTINGS_TABLE}]"


def resolve_settings(table: Mapping[str, Mapping[str, Any]], preset: str | None, device: str, toml_settings: Mapping[str, Any],
                     given: Mapping[str, Any], *, source: str | None = None) -> RunSettings:
    """The run's settings: the spine's defaults, the study's, the ``[settings]`` table, then the options.

    Args:
        table: the study's :attr:`~charbench.studies.StudySpec.settings`.
        preset: the ``--preset`` name.
        device: the resolved device.
        toml_settings: the ``[settings]`` table of ``--config`` ({} without one).
        given: settings given as options (field -> value), from :class:`~charbench.config.CommonOptions`.
        source: how the user gave ``toml_settings`` (``--config x.toml``).

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range (file and key, or option, named).
    """
    settings = apply_overrides(RunSettings(), study_defaults(table, preset, device), source="study defaults")
    if toml_settings:
        settings = apply_overrides(settings, dict(toml_settings), source=table_source(source or "--config"))
    return apply_overrides(settings, dict(given), source=None)


def settings_from_saved(saved: Mapping[str, Any], source: str) -> RunSettings:
    """The settings a run saved in config.json (keys it lacks take the spine's defaults).

    Raises:
        ConfigError: a key this charbench does not know, or a bad value.
    """
    return apply_overrides(RunSettings(), dict(saved), source=source)
