"""Options every study command shares, as reusable ``Annotated`` types.

A study command declares them in its signature and hands them to :func:`common_options`::

    @app.command()
    def gemm_power(..., out: OutOpt = None, label: LabelOpt = "", meta: MetaOpt = None,
                   device: DeviceOpt = "auto", seed: SeedOpt = 0, config: ConfigOpt = None,
                   resume: ResumeOpt = None, continue_on_error: ContinueOpt = False, json_out: JsonOpt = False):
        common = common_options(out, label, meta, device, seed, config, resume, continue_on_error, json_out)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, Optional, TypeVar

import typer

from charbench.config import CommonOptions, default_out_dir, parse_meta
from charbench.errors import ConfigError

OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Results root (default ./charbench-runs or $CHARBENCH_HOME).")]
LabelOpt = Annotated[str, typer.Option("--label", help="Run label, part of the run folder's name.")]
MetaOpt = Annotated[Optional[list[str]], typer.Option("--meta", help="KEY=VALUE stored with the run (repeatable).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (a visible index).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed for everything random.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML file whose keys override the preset.")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue this run folder; completed points are skipped.")]
#: metavar of an on/off flag: typer's help would show ``<bool>``, which reads as if ``--shuffle true``
#: were accepted (it is a usage error: the flag takes no value)
FLAG = ""

ContinueOpt = Annotated[bool, typer.Option("--continue-on-error", metavar=FLAG, help="Record a failed point and go on.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar=FLAG, help="Print a machine-readable summary on stdout.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="Where resource groups run: local, ray, slurm or slurm-local (submitit's local processes).")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster: auto or HOST:PORT (default: a private local instance).")]
SlurmPartitionOpt = Annotated[Optional[str], typer.Option("--slurm-partition", help="SLURM partition for the jobs (default: the cluster's).")]
SlurmTimeOpt = Annotated[int, typer.Option("--slurm-time", help="Time limit of each SLURM job, minutes.")]
SlurmGpusOpt = Annotated[int, typer.Option("--slurm-gpus", help="GPUs per SLURM job.")]
MaxRetriesOpt = Annotated[int, typer.Option("--max-retries", help="Send a unit again this often when its worker or node is lost.")]
DetachOpt = Annotated[bool, typer.Option("--detach", metavar=FLAG, help="SLURM: submit the jobs and return; --resume RUN_DIR collects them.")]
IdleOpt = Annotated[Optional[float], typer.Option("--idle-baseline", help="Seconds of idle power to measure before the sweep (0 = skip).")]
CooldownOpt = Annotated[Optional[float], typer.Option("--cooldown", help="Seconds to sleep between points.")]
ShuffleOpt = Annotated[bool, typer.Option("--shuffle", metavar=FLAG, help="Run points in a seeded random order.")]


def common_options(
    out: Path | None,
    label: str,
    meta: list[str] | None,
    device: str,
    seed: int,
    config: Path | None,
    resume: Path | None,
    continue_on_error: bool,
    json_out: bool,
    **dispatch: Any,
) -> CommonOptions:
    """Validate the shared options and build :class:`CommonOptions`.

    ``dispatch`` holds ``--executor`` and its options (``executor``, ``ray_address``,
    ``slurm_partition``, ``slurm_time_min``, ``slurm_gpus``, ``max_retries``, ``detach``);
    they say where the sweep runs, not what it is, so ``--resume`` takes them as given (a run
    started on Ray can finish locally). Their ranges are declared on :class:`CommonOptions`.

    Raises:
        ConfigError: a bad ``--meta``, a missing ``--config`` file or ``--resume`` folder, a bad executor option.
    """
    if config is not None and not config.is_file():
        raise ConfigError(f"--config: file not found: {config}")
    if resume is not None and not (resume / "run.json").is_file():
        raise ConfigError(f"--resume: {resume} is not a charbench run folder (no run.json); pass a folder under {default_out_dir()}")
    return CommonOptions(
        out=out if out is not None else default_out_dir(),
        label=label,
        meta=parse_meta(meta),
        device=device,
        seed=seed,
        config_file=config,
        resume=resume,
        continue_on_error=continue_on_error,
        json=json_out,
        **dispatch,
    )


#: (parameter, annotation, default) of the options every study command takes, in --help order
COMMON_PARAMETERS: tuple[tuple[str, Any, Any], ...] = (
    ("out", OutOpt, None), ("label", LabelOpt, ""), ("meta", MetaOpt, None), ("device", DeviceOpt, "auto"),
    ("seed", SeedOpt, 0), ("config", ConfigOpt, None), ("resume", ResumeOpt, None),
    ("continue_on_error", ContinueOpt, False), ("json_out", JsonOpt, False),
    ("executor", ExecutorOpt, "local"), ("ray_address", RayAddressOpt, None), ("slurm_partition", SlurmPartitionOpt, None),
    ("slurm_time", SlurmTimeOpt, 60), ("slurm_gpus", SlurmGpusOpt, 0), ("max_retries", MaxRetriesOpt, 1), ("detach", DetachOpt, False),
)
#: the dispatch parameters -> their CommonOptions field
_DISPATCH = {"executor": "executor", "ray_address": "ray_address", "slurm_partition": "slurm_partition",
             "slurm_time": "slurm_time_min", "slurm_gpus": "slurm_gpus", "max_retries": "max_retries", "detach": "detach"}


def with_common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a study command every common option; it receives them as ``common: CommonOptions``.

    The study declares only its own options (and ``common: CommonOptions`` last)::

        @app.command("my-study")
        @with_common_options
        def my_study(ctx: typer.Context, size: SizeOpt = None, *, common: CommonOptions) -> None: ...

    Typer reads the combined signature, so ``--help`` lists the study's options, then the
    common ones; the values are validated by :func:`common_options`.
    """
    import functools
    import inspect
    import typing

    sig = inspect.signature(command)
    # resolved now, in the study module's namespace (its annotations may be strings)
    hints = typing.get_type_hints(command, localns={"CommonOptions": CommonOptions}, include_extras=True)
    own = [p.replace(annotation=hints.get(name, p.annotation)) for name, p in sig.parameters.items() if name != "common"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
             for name, ann, default in COMMON_PARAMETERS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name, _, _ in COMMON_PARAMETERS}
        dispatch = {field_name: given[param] for param, field_name in _DISPATCH.items()}
        kwargs["common"] = common_options(given["out"], given["label"], given["meta"], given["device"], given["seed"], given["config"],
                                          given["resume"], given["continue_on_error"], given["json_out"], **dispatch)
        return command(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra, return_annotation=hints.get("return", sig.return_annotation))  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{k: v for k, v in hints.items() if k != "common"}, **{name: ann for name, ann, _ in COMMON_PARAMETERS}}
    return wrapper


def emit_result(result: Any, json_out: bool) -> None:
    """Print the run summary: JSON on stdout with ``--json`` (unchanged), else a per-point table and a short line on stderr."""
    payload = {
        "run_dir": str(result.run_dir),
        "status": result.status,
        "points_done": result.points_done,
        "points_failed": result.points_failed,
        "report": str(result.report) if result.report else None,
        "summary": result.summary,
    }
    if json_out:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        if result.points_done and (Path(result.run_dir) / "run.json").is_file():
            from charbench.run_summary import print_summary

            print_summary(Path(result.run_dir), sys.stderr)
        typer.echo(f"{result.status}: {result.points_done} point(s), {result.points_failed} failed -> {result.run_dir}", err=True)
        if result.report:
            typer.echo(f"report: {result.report}", err=True)


def preset_config(presets: dict[str, Any], preset: str, common: CommonOptions) -> Any:
    """The named preset with ``--config FILE.toml`` applied on top (options come after).

    Raises:
        ConfigError: an unknown preset, or a bad key or value in the TOML file.
    """
    from charbench.config import apply_overrides, load_toml, select_preset

    cfg = select_preset(presets, preset, option="--preset")
    if common.config_file is not None:
        cfg = apply_overrides(cfg, load_toml(common.config_file), source=f"--config {common.config_file}")
    return cfg


def given_options(ctx: Any) -> set[str]:
    """Parameters of a command given on the command line (or environment), not left at their default.

    Args:
        ctx: the command's ``typer.Context`` (declare ``ctx: typer.Context`` in the command).
    """
    # Compared by name: typer's click (vendored) and click have distinct ParameterSource enums.
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


T = TypeVar("T")


@dataclass
class StudyInputs(Generic[T]):
    """What a study command runs: its config, the common options and whether points are shuffled."""

    cfg: T
    common: CommonOptions
    shuffle: bool


def study_inputs(
    presets: dict[str, T],
    preset: str,
    common: CommonOptions,
    changes: dict[str, Any],
    *,
    study: str,
    given: set[str] = frozenset(),  # type: ignore[assignment]
    shuffle: bool = False,
    finish: Callable[[T, CommonOptions], T] | None = None,
    fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None = None,
    from_saved: Callable[[dict[str, Any]], T] | None = None,
) -> StudyInputs[T]:
    """The config of a new run, or with ``--resume`` the run's saved one, checked against the options given.

    A new run: the preset, ``--config`` on top, ``fill_preset`` (defaults that depend on the
    options), the options in ``changes``, then ``finish`` (device-dependent defaults).

    ``--resume`` continues the saved sweep exactly: config.json must exist, and every option
    given with it (``changes``, ``--config``, ``--preset``, ``--seed``, ``--device``,
    ``--shuffle``) must agree with what the run was made with; options not given take the
    saved values.

    Args:
        presets: the study's named configs.
        preset: the ``--preset`` value.
        common: the shared options (:func:`common_options`).
        changes: config field -> value, only for options given on the command line.
        study: the study's command name (the resume folder must be one of its runs).
        given: the parameter names given on the command line (:func:`given_options`); with
            ``--resume``, ``preset``, ``seed``, ``device`` and ``shuffle`` are checked only when given.
        shuffle: the ``--shuffle`` flag (a study whose config has ``shuffle`` may ignore it).
        finish: applied last to a built config, given the common options (e.g. resolve per device).
        fill_preset: returns ``changes`` completed with defaults for a config built from a preset.
        from_saved: rebuilds a config from config.json's ``study_config`` (default: the first
            preset with the saved values applied).

    Raises:
        ConfigError: a bad option, or options that differ from the resumed run's (named).
        RunStoreError: the resume folder has no config.json, a damaged one, or is another study's.
    """
    if common.resume is None:
        cfg = _build(preset_config(presets, preset, common), changes, common, finish, fill_preset)
        return StudyInputs(cfg, common, bool(getattr(cfg, "shuffle", shuffle)))
    return _resume_inputs(presets, preset, common, changes, study, given, shuffle, finish, fill_preset, from_saved)


def _build(base: T, changes: dict[str, Any], common: CommonOptions, finish: Callable[[T, CommonOptions], T] | None,
           fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None) -> T:
    """``base`` with the options applied (and the preset-only defaults when ``fill_preset`` is given), then ``finish``."""
    from charbench.config import apply_overrides

    more = fill_preset(base, dict(changes)) if fill_preset is not None else changes
    cfg = apply_overrides(base, more, source=None)  # options get the same type and range checks as --config
    return finish(cfg, common) if finish is not None else cfg


def _resume_inputs(presets: dict[str, T], preset: str, common: CommonOptions, changes: dict[str, Any], study: str, given: set[str], shuffle: bool,
                   finish: Callable[[T, CommonOptions], T] | None, fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None,
                   from_saved: Callable[[dict[str, Any]], T] | None) -> StudyInputs[T]:
    """:func:`study_inputs` for ``--resume``: the saved config, after checking the given options against it."""
    from charbench.config import apply_overrides, load_toml, select_preset, to_jsonable
    from charbench.device import resolve_device
    from charbench.results import RunStore
    from charbench.study import differing_keys

    assert common.resume is not None
    store = RunStore.open(common.resume, study=study)
    saved_all = store.resume_config()
    saved_dict = saved_all["study_config"]
    if from_saved is not None:
        saved = from_saved(saved_dict)
    else:
        saved = apply_overrides(select_preset(presets, next(iter(presets))), saved_dict, source=f"--resume {store.path}: config.json")
    saved_common = saved_all["common"] if isinstance(saved_all.get("common"), dict) else {}
    saved_settings = saved_all["settings"] if isinstance(saved_all.get("settings"), dict) else {}
    conflicts: set[str] = set()
    adopted: dict[str, Any] = {}
    if "seed" not in given:
        adopted["seed"] = int(saved_common.get("seed", common.seed))
    elif common.seed != saved_common.get("seed", common.seed):
        conflicts.add("seed")
    if "device" not in given:
        adopted["device"] = str(saved_common.get("device", common.device))
    elif store.meta.get("device") not in (None, resolve_device(common.device)):
        conflicts.add("device")
    saved_shuffle = bool(saved_settings.get("shuffle", getattr(saved, "shuffle", False)))
    if "shuffle" in given and shuffle != saved_shuffle:
        conflicts.add("shuffle")
    common = dataclasses.replace(common, **adopted)
    # What the given options would make, built on the saved config (or on the preset when one is given).
    if "preset" in given:
        candidate = _build(preset_config(presets, preset, common), changes, common, finish, fill_preset)
    else:
        base = saved
        if common.config_file is not None:
            base = apply_overrides(base, load_toml(common.config_file), source=f"--config {common.config_file}")
        candidate = _build(base, changes, common, finish, None)
    conflicts.update(differing_keys(to_jsonable(saved), to_jsonable(candidate)))
    if conflicts:
        raise ConfigError(
            f"--resume {store.path}: the options given differ from the run's (in: {', '.join(sorted(conflicts))}); "
            f"drop them to continue with the saved ones (see {store.path / 'config.json'}), or start a new run without --resume"
        )
    return StudyInputs(saved, common, saved_shuffle)


def run_and_emit(study: Any, cfg: Any, common: CommonOptions, shuffle: bool) -> None:
    """Run ``study`` with the runner settings its config carries, then print the summary.

    ``cfg`` needs ``idle_baseline_s``, ``cooldown_s`` (None = 0) and ``sample_interval_s``.
    """
    from charbench.study import RunSettings, run_study

    settings = RunSettings(
        idle_baseline_s=float(cfg.idle_baseline_s or 0.0),
        cooldown_s=float(cfg.cooldown_s or 0.0),
        shuffle=shuffle,
        sample_interval_s=cfg.sample_interval_s,
    )
    from charbench.executors import make_executor

    result = run_study(study, common, settings, argv=["charbench", *sys.argv[1:]], executor=make_executor(common))
    emit_result(result, common.json)
