"""Runner settings owned by the spine: defaults by study/preset/device, [settings] in --config, options, resume, migration."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from charbench import studies
from charbench.cli import SPINE_COMMANDS, main
from charbench.cli_common import given_options, run_and_emit, study_inputs, with_common_options
from charbench.config import CommonOptions
from charbench.errors import ConfigError
from charbench.migrations import FORMAT_VERSION, move_settings_003
from charbench.results import RunStore
from charbench.settings import RunSettings, resolve_settings, study_defaults
from charbench.studies import StudySpec
from charbench.study import Context, Study, run_study
from charbench.sweep import expand

RANGE = "a finite number >= 0 and <= 86400"
VALID = "idle_baseline_s, cooldown_s, shuffle, sample_interval_s"


@dataclass
class KnobConfig:
    preset: str = "quick"
    n: int = 3


PRESETS = {"quick": KnobConfig(), "paper": KnobConfig(preset="paper", n=2)}
#: the toy study's defaults: every layer of the selector order is visible in the resolved settings
TABLE = {"*": {"sample_interval_s": 0.0, "cooldown_s": 0.001}, "cpu": {"cooldown_s": 0.002},
         "paper": {"cooldown_s": 0.003}, "paper/cuda": {"idle_baseline_s": 30.0}}
SPEC = StudySpec(command="knob", help="Toy study.", cli_module="cb_test_knob", settings=TABLE)


class Knob(Study):
    name = "knob"

    def __init__(self, cfg: KnobConfig) -> None:
        self.cfg = cfg

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": list(range(self.cfg.n))})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        # what the study reads: the spine's settings, not a field of its own config
        return {"i_count": params["i"], "seen_cooldown_s": ctx.settings.cooldown_s}


def _module() -> types.ModuleType:
    app = typer.Typer(add_completion=False)

    @app.command("knob")
    @with_common_options
    def knob(ctx: typer.Context, n: int | None = typer.Option(None, "--n"), preset: str = typer.Option("quick", "--preset"), *,
             common: CommonOptions) -> None:
        changes = {"n": n} if n is not None else {}
        inputs = study_inputs(PRESETS, preset, common, changes, study="knob", given=given_options(ctx))
        run_and_emit(Knob(inputs.cfg), inputs)

    mod = types.ModuleType("cb_test_knob")
    mod.app = app  # type: ignore[attr-defined]
    return mod


@pytest.fixture(autouse=True)
def knob_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cb_test_knob", _module())
    monkeypatch.setitem(SPINE_COMMANDS, "knob", ("cb_test_knob", "Toy study."))
    real = studies.find_study
    monkeypatch.setattr(studies, "find_study", lambda command: SPEC if command == "knob" else real(command))


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["knob", "--device", "cpu", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _settings(run: Path) -> dict[str, Any]:
    return json.loads((run / "config.json").read_text())["settings"]


# -- defaults, [settings], options ---------------------------------------------------------


def test_defaults_apply_most_specific_selector_last() -> None:
    assert study_defaults(TABLE, "quick", "cpu") == {"sample_interval_s": 0.0, "cooldown_s": 0.002}
    assert study_defaults(TABLE, "paper", "cpu") == {"sample_interval_s": 0.0, "cooldown_s": 0.003}
    assert study_defaults(TABLE, "paper", "cuda:1") == {"sample_interval_s": 0.0, "cooldown_s": 0.003, "idle_baseline_s": 30.0}
    assert study_defaults({}, None, "cuda") == {}
    # [settings] beats the study's defaults; an option beats both
    s = resolve_settings(TABLE, "paper", "cpu", {"cooldown_s": 0.5, "shuffle": True}, {"cooldown_s": 0.0}, source="--config x.toml")
    assert s == RunSettings(idle_baseline_s=0.0, cooldown_s=0.0, shuffle=True, sample_interval_s=0.0)


def test_built_in_studies_declare_their_defaults() -> None:
    by_name = {s.command: s for s in studies.discover()}
    assert study_defaults(by_name["gemm-power"].settings, "quick", "cuda:0") == {"idle_baseline_s": 30.0, "cooldown_s": 1.0}
    assert study_defaults(by_name["gemm-power"].settings, "paper", "cuda:0") == {"idle_baseline_s": 30.0, "cooldown_s": 2.0}
    assert study_defaults(by_name["gemm-power"].settings, "paper", "cpu") == {}
    assert study_defaults(by_name["serve-sweep"].settings, "greener-llms", "cuda") == {"idle_baseline_s": 10.0, "cooldown_s": 5.0}
    assert study_defaults(by_name["serve-sweep"].settings, "quick", "cpu") == {"idle_baseline_s": 1.0}
    assert study_defaults(by_name["cluster-sim"].settings, "quick", "cuda") == {"sample_interval_s": 0.0}


def test_a_study_spec_with_a_bad_setting_is_refused() -> None:
    with pytest.raises(ValueError) as ei:
        StudySpec(command="x", help="h", cli_module="a.b", settings={"cuda": {"cooldown": 1.0}})
    assert str(ei.value) == f"StudySpec 'x' settings['cuda']: unknown key 'cooldown'; valid: {VALID}"
    with pytest.raises(ValueError) as ei:
        StudySpec(command="x", help="h", cli_module="a.b", settings={"*": {"cooldown_s": -1.0}})
    assert str(ei.value) == f"StudySpec 'x' settings['*']: cooldown_s must be {RANGE} (got -1.0)"


def test_layers_reach_config_json_and_the_study(charbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["--preset", "paper", "--json"], capsys)
    run = Path(json.loads(out)["run_dir"])
    assert rc == 0 and _settings(run) == {"idle_baseline_s": 0.0, "cooldown_s": 0.003, "shuffle": False, "sample_interval_s": 0.0}
    assert "cooldown_s" not in json.loads((run / "config.json").read_text())["study_config"]
    assert [r["seen_cooldown_s"] for r in RunStore.open(run).records()] == [0.003, 0.003]
    toml = tmp_path / "s.toml"
    toml.write_text("n = 1\n[settings]\ncooldown_s = 0.25\nshuffle = true\n")
    rc, out, _ = _run(["--config", str(toml), "--json"], capsys)
    assert rc == 0 and _settings(Path(json.loads(out)["run_dir"])) == {"idle_baseline_s": 0.0, "cooldown_s": 0.25, "shuffle": True,
                                                                        "sample_interval_s": 0.0}
    rc, out, _ = _run(["--config", str(toml), "--cooldown", "0", "--json"], capsys)
    assert rc == 0 and _settings(Path(json.loads(out)["run_dir"]))["cooldown_s"] == 0.0


@pytest.mark.parametrize(("args", "message"), [
    (["--cooldown", "-1"], f"--cooldown must be {RANGE} (got -1.0)"),
    (["--cooldown", "nan"], f"--cooldown must be {RANGE} (got nan)"),
    (["--idle-baseline", "inf"], f"--idle-baseline must be {RANGE} (got inf)"),
    (["--idle-baseline", "90000"], f"--idle-baseline must be {RANGE} (got 90000.0)"),
])
def test_bad_option_values_name_the_option(args: list[str], message: str, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(args, capsys)
    assert (rc, err) == (1, f"Error: {message}\n")
    assert not (charbench_home / "knob").exists()  # refused before a run folder exists


@pytest.mark.parametrize(("toml", "message"), [
    ("[settings]\ncooldown_s = -1.0\n", f"[settings]: cooldown_s must be {RANGE} (got -1.0)"),
    ("[settings]\nsample_interval_s = nan\n", f"[settings]: sample_interval_s must be {RANGE} (got nan)"),
    ("[settings]\ncooldown = 1.0\n", f"[settings]: unknown key 'cooldown'; valid: {VALID}"),
    ('[settings]\nshuffle = "yes"\n', "[settings]: shuffle = 'yes' has the wrong type; expected bool"),
    ("settings = 3\n", ": settings = 3 must be a table; write [settings] and its keys below it"),
    ("idle_baseline_s = 5.0\n", ": idle_baseline_s is a runner setting; put it under [settings] (idle_baseline_s = ...)"),
])
def test_bad_settings_table_names_the_file_and_key(toml: str, message: str, tmp_path: Path, charbench_home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    rc, _, err = _run(["--config", str(path)], capsys)
    sep = " " if message.startswith("[") else ""
    assert (rc, err) == (1, f"Error: --config {path}{sep}{message}\n")


# -- resume ---------------------------------------------------------------------------------


def test_resume_reloads_the_settings_and_refuses_different_ones(charbench_home: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["--cooldown", "0.01", "--json"], capsys)
    run = Path(json.loads(out)["run_dir"])
    refused = (f"Error: --resume {run}: the options given differ from the run's (in: {{}}); drop them to continue with the saved ones "
               f"(see {run / 'config.json'}), or start a new run without --resume\n")
    rc, _, err = _run(["--resume", str(run), "--cooldown", "0.5", "--shuffle"], capsys)
    assert (rc, err) == (1, refused.format("cooldown_s, shuffle"))
    toml = tmp_path / "s.toml"
    toml.write_text("[settings]\nidle_baseline_s = 1.0\n")
    rc, _, err = _run(["--resume", str(run), "--config", str(toml)], capsys)
    assert (rc, err) == (1, refused.format("idle_baseline_s"))
    rc, _, err = _run(["--resume", str(run), "--preset", "paper"], capsys)  # the preset's defaults differ too
    assert (rc, err) == (1, refused.format("cooldown_s, n, preset"))
    # the same value again, or none: the saved settings go on
    rc, out, _ = _run(["--resume", str(run), "--cooldown", "0.01", "--json"], capsys)
    assert rc == 0 and json.loads(out)["run_dir"] == str(run) and _settings(run)["cooldown_s"] == 0.01


def test_the_runner_refuses_other_settings_on_resume(charbench_home: Path) -> None:
    common = CommonOptions(out=charbench_home, device="cpu")
    first = run_study(Knob(KnobConfig(n=1)), common, RunSettings(sample_interval_s=0, cooldown_s=0.0))
    again = CommonOptions(out=charbench_home, device="cpu", resume=first.run_dir)
    with pytest.raises(ConfigError) as ei:
        run_study(Knob(KnobConfig(n=1)), again, RunSettings(sample_interval_s=0.5, cooldown_s=0.0))
    assert str(ei.value) == (f"--resume {first.run_dir}: the run was made with other runner settings (differs in: sample_interval_s); "
                             f"run it with the saved ones (see {first.run_dir / 'config.json'}) or start a new run without --resume")


# -- old folders ----------------------------------------------------------------------------


def _old_folder(root: Path, study: str, study_config: dict[str, Any], settings: dict[str, Any] | None) -> Path:
    """A run folder written before the spine owned the settings: they sit in study_config (format 2)."""
    run = root / study / "20260101-000000-old"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"study": study, "label": "old", "run_id": run.name, "meta": {}, "status": "interrupted",
                                              "started": None, "finished": None, "points_total": 3, "points_done": 0, "points_failed": 0,
                                              "report_hook": None, "device": "cpu", "pid": None, "host": None, "tables": {},
                                              "format_version": 2}))
    config: dict[str, Any] = {"study": study, "common": {"seed": 0, "device": "cpu"}, "study_config": study_config}
    if settings is not None:
        config["settings"] = settings
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_migration_3_moves_old_settings_out_of_the_study_config(tmp_path: Path, charbench_home: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    old = {"preset": "quick", "n": 2, "cooldown_s": 0.004, "idle_baseline_s": 0.0, "sample_interval_s": 0.0}
    run = _old_folder(charbench_home, "knob", old, settings=None)
    store = RunStore.open(run)
    assert store.meta["format_version"] == FORMAT_VERSION == 3 and store.meta["config_reshapes"] == ["003-runner-settings"]
    assert store.config()["study_config"] == {"preset": "quick", "n": 2}
    assert store.config()["settings"] == {"cooldown_s": 0.004, "idle_baseline_s": 0.0, "sample_interval_s": 0.0}
    assert json.loads((run / "config.json").read_text())["study_config"] == old  # how the run was made stays on disk
    rc, out, err = _run(["--resume", str(run), "--json"], capsys)
    assert rc == 0, err
    assert [r["seen_cooldown_s"] for r in RunStore.open(run).records()] == [0.004, 0.004]
    assert json.loads(out)["report"] == str(run / "report.html"), out


def test_saved_settings_win_and_nulls_are_dropped() -> None:
    config = {"settings": {"cooldown_s": 2.0, "shuffle": False},
              "study_config": {"size": [8], "cooldown_s": None, "idle_baseline_s": 30.0, "shuffle": True}}
    assert move_settings_003(config) == {"settings": {"cooldown_s": 2.0, "shuffle": False, "idle_baseline_s": 30.0},
                                         "study_config": {"size": [8]}}
    assert move_settings_003({"study_config": {"size": [8]}}) == {"study_config": {"size": [8]}}


def test_old_serve_sweep_folder_rebuilds_its_config(tmp_path: Path) -> None:
    from charbench.workloads.serving.config import ServeSweepConfig

    run = _old_folder(tmp_path, "serve-sweep", {"request_rate": [None], "num_requests": 8, "idle_baseline_s": 1.0, "cooldown_s": 0.0,
                                                "sample_interval_s": 0.1, "shuffle": False}, settings={"idle_baseline_s": 1.0})
    saved = RunStore.open(run).resume_config()
    cfg = ServeSweepConfig.from_dict(saved["study_config"])
    assert cfg.num_requests == 8 and cfg.request_rate_rps == [float("inf")]
    assert saved["settings"] == {"idle_baseline_s": 1.0, "cooldown_s": 0.0, "sample_interval_s": 0.1, "shuffle": False}


# -- every study's command ------------------------------------------------------------------


STUDY_COMMANDS = sorted(s.command for s in studies.discover())


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_every_study_command_takes_the_runner_settings(command: str, charbench_home: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main([command, "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(opt in help_text for opt in ("--idle-baseline", "--cooldown", "--shuffle"))
    assert main([command, "--device", "cpu", "--cooldown", "-2"]) == 1
    assert capsys.readouterr().err == f"Error: --cooldown must be {RANGE} (got -2.0)\n"
    assert main([command, "--device", "cpu", "--idle-baseline", "nan"]) == 1
    assert capsys.readouterr().err == f"Error: --idle-baseline must be {RANGE} (got nan)\n"


def test_study_configs_carry_no_runner_setting() -> None:
    import dataclasses
    import importlib

    from charbench.settings import SETTING_NAMES

    for package, name in (("gemm_power", "GemmPowerConfig"), ("serving", "ServeSweepConfig"), ("cluster", "ClusterSimConfig"),
                          ("pruned_training", "PruneTrainConfig"), ("cache_reuse", "CacheReuseConfig"), ("long_context", "LongContextConfig")):
        cls = getattr(importlib.import_module(f"charbench.workloads.{package}.config"), name)
        assert not {f.name for f in dataclasses.fields(cls)} & set(SETTING_NAMES), name
