"""The study registry: built-in studies and plugins are discovered; the spine names no study."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest

import charbench
from charbench import compare as cm
from charbench import studies
from charbench.cli import SPINE_COMMANDS, command_table, main
from charbench.compare import metric_direction
from charbench.record import parse_metric
from charbench.studies import StudySpec

SPINE = Path(charbench.__file__).resolve().parent

PLUGIN = StudySpec(
    command="toy-study",
    help="A plugin study that only exists in this test.",
    cli_module="cb_toy_study.cli",
    gates=("latency_ms", "energy_per_item_j"),
)


class _EntryPoint:
    """The part of importlib.metadata.EntryPoint that discovery uses."""

    def __init__(self, name: str, value: str, obj: object) -> None:
        self.name, self.value, self.group, self._obj = name, value, studies.ENTRY_POINT_GROUP, obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from charbench import cli

    monkeypatch.setattr(cli, "_CLASHES_WARNED", set())
    studies.discover.cache_clear()
    yield
    studies.discover.cache_clear()


def _plugins(monkeypatch: pytest.MonkeyPatch, *eps: _EntryPoint) -> None:
    real = importlib.metadata.entry_points

    def entry_points(**kw: str) -> object:
        if kw.get("group") == studies.ENTRY_POINT_GROUP:
            return list(eps)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def _toy_cli() -> types.ModuleType:
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def toy() -> None:
        typer.echo("toy ran")

    mod = types.ModuleType("cb_toy_study.cli")
    mod.app = app  # type: ignore[attr-defined]
    return mod


def _builtin_commands() -> list[str]:
    """Commands of the study packages on disk (``workloads/<pkg>/__init__.py`` declaring ``STUDY``), in package order."""
    root = Path(__file__).resolve().parent.parent / "workloads"
    found = []
    for init in sorted(root.glob("*/__init__.py")):
        m = re.search(r'STUDY = StudySpec\(\s*command="([^"]+)"', init.read_text())
        if m:
            found.append(m.group(1))
    return found


BUILTIN = _builtin_commands()


def test_builtin_studies_declare_themselves(fresh_registry: None) -> None:
    found = {s.command: s for s in studies.discover()}
    assert {"gemm-power", "serve-sweep"} <= set(BUILTIN)
    assert list(found) == BUILTIN
    assert found["gemm-power"].cli_module == "charbench.workloads.gemm_power.cli"
    assert found["gemm-power"].report_hook == "charbench.workloads.gemm_power.figures:report_sections"
    assert found["serve-sweep"].gates == ("p99_ttft_ms", "p99_tpot_ms", "energy_per_output_token_j")
    assert found["gemm-power"].gates == ("energy_per_gemm_j", "mean_power_w")
    # the study classes take their name and report hook from the spec (one source)
    from charbench.workloads.gemm_power.run import GemmPowerStudy

    assert (GemmPowerStudy.name, GemmPowerStudy.report_hook) == (found["gemm-power"].command, found["gemm-power"].report_hook)


def test_a_gate_has_one_name() -> None:
    with pytest.raises(ValueError, match=r"StudySpec.gates \('p99_ttft_ms', 'ttft_p99_ms'\): give one metric name per gate"):
        StudySpec(command="x", help="x", cli_module="x.cli", gates=(("p99_ttft_ms", "ttft_p99_ms"),))  # type: ignore[arg-type]


def test_owned_metrics_follow_the_naming_rule(fresh_registry: None) -> None:
    """Every declared metric parses under the naming rule; one concept keeps one name across studies

    (serve-sweep measures ``p99_ttft_ms`` and cluster-sim simulates it under the same name), so a
    name may be declared by several studies, but not twice by one.
    """
    for spec in studies.discover():
        assert len(set(spec.metrics)) == len(spec.metrics), f"{spec.command} declares a metric twice"
        for m in (*spec.metrics, *spec.gates):
            assert metric_direction(m) is not None, f"{spec.command}: metric {m} has no unit suffix"
            parse_metric(m)  # raises on a name off the naming rule


def test_plugin_study_appears_in_help_runs_and_gates_compare(fresh_registry: None, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _plugins(monkeypatch, _EntryPoint("toy-study", "cb_toy_study:STUDY", PLUGIN))
    monkeypatch.setitem(sys.modules, "cb_toy_study", types.ModuleType("cb_toy_study"))
    monkeypatch.setitem(sys.modules, "cb_toy_study.cli", _toy_cli())
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    # the help column is as wide as the longest command name
    assert re.search(r"toy-study +A plugin study that only exists in this test\.", out)
    assert list(command_table())[: len(BUILTIN) + 1] == [*BUILTIN, "toy-study"]
    assert main(["toy-study"]) == 0
    assert capsys.readouterr().out == "toy ran\n"
    cols = ["latency_ms", "energy_j", "mean_power_w"]
    assert cm.default_gates("toy-study", cols) == ["latency_ms"]
    assert cm.default_gates("toy-study", [*cols, "energy_per_item_j"]) == ["latency_ms", "energy_per_item_j"]
    assert cm.default_gates("unknown-study", cols) == ["energy_j", "mean_power_w"]


def test_broken_or_clashing_plugins_are_skipped_with_a_warning(fresh_registry: None, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    clash = StudySpec(command="gemm-power", help="Impostor.", cli_module="cb_other.cli")
    spine = StudySpec(command="report", help="Impostor.", cli_module="cb_other.cli")
    _plugins(monkeypatch, _EntryPoint("a-broken", "cb_missing:STUDY", ModuleNotFoundError("No module named 'cb_missing'")),
             _EntryPoint("b-not-spec", "cb_x:STUDY", "text"), _EntryPoint("c-clash", "cb_other:STUDY", clash),
             _EntryPoint("d-spine", "cb_other:SPINE", spine))
    assert [s.command for s in studies.discover()] == [*BUILTIN, "report"]
    err = capsys.readouterr().err
    assert err == (
        "[charbench] warning: study plugin a-broken (cb_missing:STUDY) failed to load (ModuleNotFoundError: No module named 'cb_missing'); skipped\n"
        "[charbench] warning: study plugin b-not-spec (cb_x:STUDY) is a str, not a charbench.studies.StudySpec; skipped\n"
        "[charbench] warning: study command 'gemm-power' from cb_other.cli is already taken; skipped\n"
    )
    table = command_table()
    assert table["report"] == SPINE_COMMANDS["report"] and table["gemm-power"][0] == "charbench.workloads.gemm_power.cli"
    assert capsys.readouterr().err == "[charbench] warning: study command 'report' from cb_other.cli is a charbench command; skipped\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"command": "my study"}, r"StudySpec.command 'my study': give a command name without spaces, e.g. 'my-study'"),
    ({"cli_module": "pkg.cli:app"}, r"StudySpec.cli_module 'pkg.cli:app': give a dotted module name exposing `app`, e.g. 'my_pkg.cli'"),
    ({"report_hook": "pkg.figures"}, r"StudySpec.report_hook 'pkg.figures': give 'module:function'"),
])
def test_spec_refuses_malformed_fields(kwargs: dict[str, str], message: str) -> None:
    base = {"command": "ok", "help": "h", "cli_module": "pkg.cli"}
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        StudySpec(**(base | kwargs))


# -- the spine names no study -------------------------------------------------------------
def _docstring_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _identifiers(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Names that reach into the study packages: imports of ``charbench.workloads...`` and ``workloads.<x>`` attributes.

    Plain identifiers are not checked: a study's package name may be an ordinary word
    (``serving``, ``cluster``) that the spine uses for its own things.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "workloads" in node.module.split("."):
            for part in node.module.split(".")[node.module.split(".").index("workloads") + 1:]:
                yield node.lineno, part
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if "workloads" in parts:
                    for part in parts[parts.index("workloads") + 1:]:
                        yield node.lineno, part
        elif isinstance(node, ast.Attribute):
            value = node.value
            last = value.attr if isinstance(value, ast.Attribute) else value.id if isinstance(value, ast.Name) else None
            if last == "workloads":
                yield node.lineno, node.attr


def study_mentions(source: str, commands: list[str], packages: list[str]) -> list[str]:
    """Where code (not docstrings or comments) names a study.

    The rule: a string constant that is not a docstring must not contain a study's command
    (``gemm-power``) or module path (``workloads.gemm_power``, ``workloads/gemm_power``), and no
    import or ``workloads.<x>`` attribute may reach a study's package (``from charbench.workloads
    import gemm_power``).
    """
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    hits: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.lower()
            for needle in [*commands, *(f"workloads{sep}{p}" for p in packages for sep in "./")]:
                if needle in text:
                    hits.append(f"line {node.lineno}: string {node.value!r} names {needle!r}")
    for line, ident in _identifiers(tree):
        words = ident.lower().split("_")
        for p in packages:
            pw = p.split("_")
            if any(words[i:i + len(pw)] == pw for i in range(len(words))):
                hits.append(f"line {line}: identifier {ident!r} names {p!r}")
    return hits


def test_study_mention_rule() -> None:
    src = '''"""Docstrings may say charbench gemm-power and charbench.workloads.gemm_power."""
# comments may too: gemm-power
def f(serving_rate: int) -> str:
    """So may function docstrings: serve-sweep."""
    from charbench.workloads import gemm_power
    x = "see charbench.workloads.serving.run"
    return f"run gemm-power first" + "a serving sweep" + observing_rate
'''
    assert study_mentions(src, ["gemm-power", "serve-sweep"], ["gemm_power", "serving"]) == [
        "line 6: string 'see charbench.workloads.serving.run' names 'workloads.serving'",
        "line 7: string 'run gemm-power first' names 'gemm-power'",
        "line 5: identifier 'gemm_power' names 'gemm_power'",
    ]


def test_no_spine_module_names_a_study(fresh_registry: None) -> None:
    specs = studies.discover()
    commands = [s.command for s in specs]
    packages = sorted({s.cli_module.split(".")[2] for s in specs if s.cli_module.startswith("charbench.workloads.")})
    assert commands == BUILTIN and {"gemm_power", "serving"} <= set(packages)
    hits = {str(p.relative_to(SPINE)): study_mentions(p.read_text(), commands, packages) for p in sorted(SPINE.rglob("*.py"))}
    assert {k: v for k, v in hits.items() if v} == {}
