"""The example GitHub Actions workflow parses and uses charbench the way the CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "charbench-gpu.yml"
DOC = ROOT / "README.md"
#: options every study command shares (charbench.cli_common) plus --preset
STUDY_OPTIONS = {"--out", "--label", "--meta", "--device", "--seed", "--config", "--resume", "--continue-on-error", "--json", "--preset"}


@pytest.fixture(scope="module")
def wf() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(wf: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return wf["jobs"][job]["steps"]


def _scripts(wf: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(job, s.get("name", "?"), s["run"]) for job in wf["jobs"] for s in _steps(wf, job) if "run" in s]


def test_workflow_structure(wf: dict[str, Any]) -> None:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert {"workflow_dispatch", "pull_request", "push"} <= set(on)
    assert set(on["workflow_dispatch"]["inputs"]) == {"study", "preset", "threshold"}
    gpu, cpu = wf["jobs"]["gpu"], wf["jobs"]["cpu-fallback"]
    assert "self-hosted" in gpu["runs-on"] and "gpu" in gpu["runs-on"]
    assert "CHARBENCH_GPU_RUNNER" in gpu["if"] and "head.repo.full_name == github.repository" in gpu["if"]
    assert gpu["env"]["CHARBENCH_DEVICE"] == "cuda" and cpu["env"]["CHARBENCH_DEVICE"] == "cpu"
    assert cpu["needs"] == "gpu" and "needs.gpu.result == 'skipped'" in cpu["if"] and "always()" in cpu["if"]
    assert str(cpu["runs-on"]).startswith("ubuntu-")
    assert wf["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("job", ["gpu", "cpu-fallback"])
def test_job_runs_compares_uploads_and_gates(wf: dict[str, Any], job: str) -> None:
    steps = _steps(wf, job)
    names = [s.get("name", s.get("uses", "")) for s in steps]
    idx = {n: i for i, n in enumerate(names)}
    assert steps[0]["uses"].startswith("actions/checkout@v")
    run = steps[idx["Run preset"]]["run"]
    assert 'charbench "$CHARBENCH_STUDY" --preset "$CHARBENCH_PRESET"' in run and "--json" in run
    cmp = steps[idx["Compare with the baseline"]]
    assert "charbench compare" in cmp["run"] and "PIPESTATUS[0]" in cmp["run"] and cmp["id"] == "compare"
    up = steps[idx["Upload reports"]]
    assert up["uses"].startswith("actions/upload-artifact@v") and up["if"] == "${{ always() }}"
    assert up["with"]["path"].rstrip("/") == "charbench-runs"
    hist = steps[idx["History index"]]
    assert "charbench report --history" in hist["run"]
    fail = steps[idx["Fail on regression"]]
    assert fail["if"] == "${{ steps.compare.outputs.rc == '3' }}" and "exit 1" in fail["run"]
    # the reports are uploaded before the regression fails the job
    assert idx["Compare with the baseline"] < idx["History index"] < idx["Upload reports"] < idx["Fail on regression"]
    assert wf["jobs"][job]["env"]["CHARBENCH_HOME"].endswith("/charbench-runs")


def test_actions_are_pinned(wf: dict[str, Any]) -> None:
    uses = [s["uses"] for job in wf["jobs"] for s in _steps(wf, job) if "uses" in s]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u) for u in uses), uses


def _charbench_calls(script: str) -> list[list[str]]:
    """Arguments of every command line of a step script that starts with ``charbench``."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("charbench "):
            line = re.sub(r"\$\(dirname [^)]*\)", "BASE", line).split(" | ")[0]
            calls.append(shlex.split(line)[1:])
    return calls


def _options_of(command: str) -> set[str] | None:
    """Options a charbench command accepts, or None when its module is not importable here."""
    import importlib

    import typer.main

    from charbench.cli import command_table

    try:
        module = importlib.import_module(command_table()[command][0])
    except ImportError:
        return None
    cmd = typer.main.get_command(module.app)
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def test_charbench_invocations_match_the_cli(wf: dict[str, Any]) -> None:
    from charbench.cli import command_table

    COMMANDS = command_table()

    calls = [c for _, _, s in _scripts(wf) for c in _charbench_calls(s)]
    assert len(calls) >= 8  # env, study, compare, report in each job
    for call in calls:
        cmd, opts = call[0], {a.split("=")[0] for a in call[1:] if a.startswith("--")}
        if cmd == "$CHARBENCH_STUDY":  # a study command: the shared options, and those of the studies built here
            assert opts <= STUDY_OPTIONS, opts - STUDY_OPTIONS
            for study in ("gemm-power", "serve-sweep"):
                assert study in COMMANDS, study
                known = _options_of(study)
                assert known is not None, f"charbench {study} not importable"  # both studies are built here
                assert opts <= known, f"charbench {study}: unknown options {opts - known}"
            continue
        assert cmd in COMMANDS, cmd
        known = _options_of(cmd)
        assert known is not None, f"charbench {cmd} not importable"
        assert opts <= known, f"charbench {cmd}: unknown options {opts - known}"


def test_default_study_exists_in_the_cli(wf: dict[str, Any]) -> None:
    from charbench.cli import command_table

    COMMANDS = command_table()

    default = re.search(r"inputs\.study \|\| '([^']+)'", wf["env"]["CHARBENCH_STUDY"]).group(1)  # type: ignore[union-attr]
    assert default in COMMANDS


def test_run_scripts_are_valid_bash(wf: dict[str, Any], tmp_path: Path) -> None:
    for job, name, script in _scripts(wf):
        body = re.sub(r"\$\{\{.*?\}\}", "X", script, flags=re.S)
        f = tmp_path / "step.sh"
        f.write_text(body)
        res = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert res.returncode == 0, f"{job}/{name}: {res.stderr}"
        if shutil.which("shellcheck"):
            res = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", str(f)], capture_output=True, text=True)
            assert res.returncode == 0, f"{job}/{name}: {res.stdout}"


def test_doc_explains_the_workflow() -> None:
    text = DOC.read_text()
    for needle in (".github/workflows/charbench-gpu.yml", "CHARBENCH_GPU_RUNNER", ".charbench/baselines/gpu",
                   ".charbench/baselines/cpu", "--threshold", "exit code", "3", "self-hosted", "charbench report --history"):
        assert needle in text, needle


def _fakeruns():
    import importlib.util

    spec = importlib.util.spec_from_file_location("charbench_test_fakeruns", Path(__file__).parent / "browser" / "fakeruns.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("case", ["regression", "no-baseline"])
def test_compare_step_records_the_exit_code(wf: dict[str, Any], tmp_path: Path, case: str) -> None:
    """Run the compare step's script as Actions does (bash -eo pipefail) on fake runs."""
    import datetime as dt
    import os
    import sys

    from charbench.sweep import expand

    bindir = Path(sys.executable).parent
    if not (bindir / "charbench").exists():
        pytest.skip("the charbench console script is not installed next to this Python")
    make_run = _fakeruns().make_run
    pts = expand({"size": [1, 2]})
    base_root = tmp_path / "repo" / ".charbench" / "baselines" / "cpu"
    make_run(base_root, "gemm-power", pts, lambda p: {"energy_per_gemm_j": 1.0 * p["size"], "mean_power_w": 10.0}, now=dt.datetime(2026, 1, 1))
    cand = make_run(tmp_path / "runs", "gemm-power", pts, lambda p: {"energy_per_gemm_j": 1.5 * p["size"], "mean_power_w": 10.0}, now=dt.datetime(2026, 1, 2))
    out, summary = tmp_path / "github_output", tmp_path / "summary.md"
    out.touch()
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", CHARBENCH_STUDY="gemm-power", CHARBENCH_THRESHOLD="5",
               CHARBENCH_BASELINE=".charbench/baselines/cpu" if case == "regression" else ".charbench/none",
               CHARBENCH_HOME=str(tmp_path / "runs"), RUN_DIR=str(cand), GITHUB_OUTPUT=str(out), GITHUB_STEP_SUMMARY=str(summary))
    step = next(s for s in _steps(wf, "cpu-fallback") if s.get("name") == "Compare with the baseline")
    res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path / "repo", env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr  # a regression is failed by the last step, after the upload
    if case == "regression":
        assert out.read_text().strip() == "rc=3"
        assert "REGRESSION" in summary.read_text() and (tmp_path / "runs" / "compare.html").is_file()
    else:
        assert out.read_text().strip() == "rc=0" and "::notice::no baseline run" in res.stdout
