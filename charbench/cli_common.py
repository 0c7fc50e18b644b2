"""Options every study command shares, and the path from options to a run.

A study command declares only its own options; :func:`with_common_options` adds the shared
ones (``--out`` ... ``--detach``, and the runner settings ``--idle-baseline``, ``--cooldown``,
``--shuffle``) and :func:`study_inputs` builds its config and :class:`~charbench.settings.RunSettings`::

    charbench gemm-power --dtypes fp16 --cooldown 2 --config sweep.toml

    @app.command("gemm-power")
    @with_common_options
    def gemm_power(ctx: typer.Context, dtypes: DtypesOpt = None, *, common: CommonOptions) -> None:
        inputs = study_inputs(PRESETS, preset, common, changes, study="gemm-power", given=given_options(ctx))
        run_and_emit(GemmPowerStudy(inputs.cfg), inputs)
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
from charbench.settings import RunSettings

OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Results root (default ./charbench-runs or $CHARBENCH_HOME).")]
LabelOpt = Annotated[str, typer.Option("--label", help="Run label, part of the run folder's name.")]
MetaOpt = Annotated[Optional[list[str]], typer.Option("--meta", help="KEY=VALUE stored with the run (repeatable).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (a visible index).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed for everything random.")]
CpuThreadsOpt = Annotated[Optional[int], typer.Option("--cpu-threads", help="Torch threads on a CPU device (the quick presets use 1; others torch's default, one per core).")]
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
RayResourceOpt = Annotated[Optional[list[str]], typer.Option("--ray-resource", help="Ray: NAME=AMOUNT of a custom resource each unit needs, e.g. A100=1 (repeatable).")]
SlurmOptionOpt = Annotated[Optional[list[str]], typer.Option("--slurm-option", help="SLURM: KEY=VALUE sbatch setting by submitit's name, e.g. account=proj42 (repeatable).")]
DetachOpt = Annotated[bool, typer.Option("--detach", metavar=FLAG, help="SLURM: submit the jobs and return; --resume RUN_DIR collects them.")]
IdleOpt = Annotated[Optional[float], typer.Option("--idle-baseline", help="Seconds of idle power to measure before the sweep (0 = skip; default: the study's for the preset and device).")]
CooldownOpt = Annotated[Optional[float], typer.Option("--cooldown", help="Seconds to sleep between points (default: the study's for the preset and device).")]
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
    *,
    settings: dict[str, Any] | None = None,
    **dispatch: Any,
) -> CommonOptions:
    """Validate the shared options and build :class:`CommonOptions`.

    ``settings`` holds the runner settings given as options (``idle_baseline_s``,
    ``cooldown_s``, ``shuffle``; None values are left out), checked here by the typed
    validation every config value gets, so ``--cooldown nan`` fails before anything runs.

    ``dispatch`` holds ``--executor`` and its options (``executor``, ``ray_address``,
    ``slurm_partition``, ``slurm_time_min``, ``slurm_gpus``, ``max_retries``, ``detach``);
    they say where the sweep runs, not what it is, so ``--resume`` takes them as given (a run
    started on Ray can finish locally). Their ranges are declared on :class:`CommonOptions`.

    Raises:
        ConfigError: a bad ``--meta``, a missing ``--config`` file or ``--resume`` folder, a bad executor
            option or runner setting.
    """
    from charbench.config import apply_overrides
    from charbench.executors import parse_ray_resources, parse_slurm_options

    # repeatable NAME=VALUE options arrive as lists (from the CLI) or already parsed
    if not isinstance(dispatch.get("ray_resources"), dict):
        dispatch["ray_resources"] = parse_ray_resources(dispatch.get("ray_resources"))
    if not isinstance(dispatch.get("slurm_options"), dict):
        dispatch["slurm_options"] = parse_slurm_options(dispatch.get("slurm_options"))
    given_settings = {k: v for k, v in (settings or {}).items() if v is not None}
    apply_overrides(RunSettings(), given_settings, source=None)  # errors name the option (--cooldown)
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
        settings=given_settings,
        **dispatch,
    )


#: (parameter, annotation, default) of the options every study command takes, in --help order
COMMON_PARAMETERS: tuple[tuple[str, Any, Any], ...] = (
    ("out", OutOpt, None), ("label", LabelOpt, ""), ("meta", MetaOpt, None), ("device", DeviceOpt, "auto"),
    ("seed", SeedOpt, 0), ("config", ConfigOpt, None), ("resume", ResumeOpt, None),
    ("continue_on_error", ContinueOpt, False), ("json_out", JsonOpt, False),
    ("idle_baseline", IdleOpt, None), ("cooldown", CooldownOpt, None), ("shuffle", ShuffleOpt, False),
    ("executor", ExecutorOpt, "local"), ("ray_address", RayAddressOpt, None), ("slurm_partition", SlurmPartitionOpt, None),
    ("slurm_time", SlurmTimeOpt, 60), ("slurm_gpus", SlurmGpusOpt, 0), ("max_retries", MaxRetriesOpt, 1), ("detach", DetachOpt, False),
    ("ray_resource", RayResourceOpt, None), ("slurm_option", SlurmOptionOpt, None),
)
#: the dispatch parameters -> their CommonOptions field
_DISPATCH = {"executor": "executor", "ray_address": "ray_address", "slurm_partition": "slurm_partition",
             "slurm_time": "slurm_time_min", "slurm_gpus": "slurm_gpus", "max_retries": "max_retries", "detach": "detach",
             "ray_resource": "ray_resources", "slurm_option": "slurm_options"}
#: the runner-setting parameters -> their RunSettings field
_SETTINGS = {"idle_baseline": "idle_baseline_s", "cooldown": "cooldown_s", "shuffle": "shuffle"}


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
        # a flag left off is not a given setting (the study's default or the saved run's applies)
        settings = {name: given[param] for param, name in _SETTINGS.items() if given[param] is not None and given[param] is not False}
        kwargs["common"] = common_options(given["out"], given["label"], given["meta"], given["device"], given["seed"], given["config"],
                                          given["resume"], given["continue_on_error"], given["json_out"], settings=settings, **dispatch)
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

    The file's ``[settings]`` table is the runner's (:func:`config_file_settings`), not the study's.

    Raises:
        ConfigError: an unknown preset, or a bad key or value in the TOML file.
    """
    from charbench.config import apply_overrides, select_preset

    cfg = select_preset(presets, preset, option="--preset")
    if common.config_file is not None:
        study_keys, _ = _config_file(common)
        cfg = apply_overrides(cfg, study_keys, source=f"--config {common.config_file}")
    return cfg


def _config_file(common: CommonOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--config``'s (study keys, ``[settings]`` table); both empty without a file."""
    from charbench.config import load_toml
    from charbench.settings import split_settings_table

    if common.config_file is None:
        return {}, {}
    return split_settings_table(load_toml(common.config_file), f"--config {common.config_file}")


def config_file_settings(common: CommonOptions) -> dict[str, Any]:
    """The ``[settings]`` table of ``--config FILE.toml``, checked like any setting ({} without a file).

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range (file and key named).
    """
    from charbench.config import apply_overrides
    from charbench.settings import table_source

    _, table = _config_file(common)
    apply_overrides(RunSettings(), table, source=table_source(f"--config {common.config_file}"))
    return table


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
    """What a study command runs: its config, the common options and the runner settings."""

    cfg: T
    common: CommonOptions
    settings: RunSettings

    @property
    def shuffle(self) -> bool:
        """Whether the points run in a seeded random order (``settings.shuffle``)."""
        return self.settings.shuffle


def study_inputs(
    presets: dict[str, T],
    preset: str,
    common: CommonOptions,
    changes: dict[str, Any],
    *,
    study: str,
    given: set[str] = frozenset(),  # type: ignore[assignment]
    finish: Callable[[T, CommonOptions], T] | None = None,
    fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None = None,
    from_saved: Callable[[dict[str, Any]], T] | None = None,
) -> StudyInputs[T]:
    """The config and runner settings of a new run, or with ``--resume`` the run's saved ones, checked against the options given.

    A new run: the preset, ``--config`` on top, ``fill_preset`` (defaults that depend on the
    options), the options in ``changes``, then ``finish`` (device-dependent defaults). Its
    :class:`~charbench.settings.RunSettings`: the study's defaults for the preset and device
    (:attr:`charbench.studies.StudySpec.settings`), ``[settings]`` of ``--config``, then
    ``--idle-baseline``/``--cooldown``/``--shuffle`` (``common.settings``).

    ``--resume`` continues the saved sweep exactly: config.json must exist, and every option
    given with it (``changes``, ``--config`` and its ``[settings]``, ``--preset``, ``--seed``,
    ``--device``, the runner settings) must agree with what the run was made with; options
    not given take the saved values.

    Args:
        presets: the study's named configs.
        preset: the ``--preset`` value.
        common: the shared options (:func:`common_options`).
        changes: config field -> value, only for options given on the command line.
        study: the study's command name (its :class:`~charbench.studies.StudySpec` gives the
            default settings; the resume folder must be one of its runs).
        given: the parameter names given on the command line (:func:`given_options`); with
            ``--resume``, ``preset``, ``seed`` and ``device`` are checked only when given.
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
        return StudyInputs(cfg, common, _new_settings(study, preset, common))
    return _resume_inputs(presets, preset, common, changes, study, given, finish, fill_preset, from_saved)


def _defaults_table(study: str) -> Any:
    """The study's settings table (:attr:`StudySpec.settings`; {} for a study the registry does not know)."""
    from charbench.studies import find_study

    spec = find_study(study)
    return spec.settings if spec is not None else {}


def _new_settings(study: str, preset: str | None, common: CommonOptions) -> RunSettings:
    """A new run's settings: the study's defaults for ``preset`` and the device, ``[settings]``, the options."""
    from charbench.device import resolve_device
    from charbench.settings import resolve_settings

    return resolve_settings(_defaults_table(study), preset, resolve_device(common.device), config_file_settings(common), common.settings,
                            source=f"--config {common.config_file}")


def _build(base: T, changes: dict[str, Any], common: CommonOptions, finish: Callable[[T, CommonOptions], T] | None,
           fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None) -> T:
    """``base`` with the options applied (and the preset-only defaults when ``fill_preset`` is given), then ``finish``."""
    from charbench.config import apply_overrides

    more = fill_preset(base, dict(changes)) if fill_preset is not None else changes
    cfg = apply_overrides(base, more, source=None)  # options get the same type and range checks as --config
    return finish(cfg, common) if finish is not None else cfg


def _resume_inputs(presets: dict[str, T], preset: str, common: CommonOptions, changes: dict[str, Any], study: str, given: set[str],
                   finish: Callable[[T, CommonOptions], T] | None, fill_preset: Callable[[T, dict[str, Any]], dict[str, Any]] | None,
                   from_saved: Callable[[dict[str, Any]], T] | None) -> StudyInputs[T]:
    """:func:`study_inputs` for ``--resume``: the saved config and settings, after checking the given options against them."""
    from charbench.config import apply_overrides, select_preset, to_jsonable
    from charbench.device import resolve_device
    from charbench.results import RunStore
    from charbench.settings import settings_from_saved, study_defaults
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
    common = dataclasses.replace(common, **adopted)
    # The saved settings; a folder that saved none (or not all) takes the study's defaults for them.
    device = str(store.meta.get("device") or resolve_device(common.device))
    saved_settings_dict = saved_all["settings"] if isinstance(saved_all.get("settings"), dict) else {}
    settings = settings_from_saved({**study_defaults(_defaults_table(study), saved_dict.get("preset"), device), **saved_settings_dict},
                                   f"--resume {store.path}: config.json [settings]")
    # What the given options would make, built on the saved config (or on the preset when one is given).
    if "preset" in given:
        candidate = _build(preset_config(presets, preset, common), changes, common, finish, fill_preset)
        candidate_settings = _new_settings(study, preset, common)
    else:
        base = saved
        study_keys, _ = _config_file(common)
        if study_keys:
            base = apply_overrides(base, study_keys, source=f"--config {common.config_file}")
        candidate = _build(base, changes, common, finish, None)
        candidate_settings = apply_overrides(apply_overrides(settings, config_file_settings(common), source=None), common.settings, source=None)
    conflicts.update(differing_keys(to_jsonable(saved), to_jsonable(candidate)))
    conflicts.update(differing_keys(to_jsonable(settings), to_jsonable(candidate_settings)))
    if conflicts:
        raise ConfigError(
            f"--resume {store.path}: the options given differ from the run's (in: {', '.join(sorted(conflicts))}); "
            f"drop them to continue with the saved ones (see {store.path / 'config.json'}), or start a new run without --resume"
        )
    return StudyInputs(saved, common, settings)


def run_and_emit(study: Any, inputs: StudyInputs[Any]) -> None:
    """Run ``study`` with the inputs' common options and runner settings, then print the summary."""
    from charbench.executors import make_executor
    from charbench.study import run_study

    result = run_study(study, inputs.common, inputs.settings, argv=["charbench", *sys.argv[1:]], executor=make_executor(inputs.common))
    emit_result(result, inputs.common.json)
