"""Options every study command shares, as reusable ``Annotated`` types.

A study command declares them in its signature and hands them to :func:`common_options`::

    @app.command()
    def gemm_power(..., out: OutOpt = None, label: LabelOpt = "", meta: MetaOpt = None,
                   device: DeviceOpt = "auto", seed: SeedOpt = 0, config: ConfigOpt = None,
                   resume: ResumeOpt = None, continue_on_error: ContinueOpt = False, json_out: JsonOpt = False):
        common = common_options(out, label, meta, device, seed, config, resume, continue_on_error, json_out)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

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
ContinueOpt = Annotated[bool, typer.Option("--continue-on-error", help="Record a failed point and go on.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
IdleOpt = Annotated[Optional[float], typer.Option("--idle-baseline", help="Seconds of idle power to measure before the sweep (0 = skip).")]
CooldownOpt = Annotated[Optional[float], typer.Option("--cooldown", help="Seconds to sleep between points.")]
ShuffleOpt = Annotated[bool, typer.Option("--shuffle", help="Run points in a seeded random order.")]


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
) -> CommonOptions:
    """Validate the shared options and build :class:`CommonOptions`.

    Raises:
        ConfigError: a bad ``--meta``, a missing ``--config`` file or ``--resume`` folder.
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
    )


def emit_result(result: Any, json_out: bool) -> None:
    """Print the run summary: JSON on stdout with ``--json``, else a short human line on stderr."""
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
    result = run_study(study, common, settings, argv=["charbench", *sys.argv[1:]])
    emit_result(result, common.json)
