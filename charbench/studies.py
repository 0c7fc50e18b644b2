"""The study registry: studies declare themselves; the spine discovers them.

A study package declares a :class:`StudySpec` named ``STUDY`` in its ``__init__.py``::

    # workloads/my_study/__init__.py  (keep it light: no torch, plotly, pandas, numpy)
    from charbench.studies import StudySpec

    STUDY = StudySpec(
        command="my-study",
        help="What my study measures, in one line.",
        cli_module="charbench.workloads.my_study.cli",       # exposes a Typer ``app``
        gates=("energy_per_item_j", "p99_latency_ms"),
        report_hook="charbench.workloads.my_study.figures:report_sections",
        metrics=("energy_per_item_j", "p99_latency_ms"),
        settings={"cuda": {"idle_baseline_s": 30.0, "cooldown_s": 1.0}, "paper/cuda": {"cooldown_s": 2.0}},
    )

Built-in studies are the sub-packages of ``charbench.workloads`` that define ``STUDY``.
Third-party packages add theirs through the ``charbench.studies`` entry-point group, the
way llm plugins do::

    [project.entry-points."charbench.studies"]
    my-study = "my_package.study:STUDY"

Discovery imports only the packages' ``__init__`` modules, so ``charbench --help`` stays
fast. A plugin that fails to load, or whose command is already taken, is skipped with a
warning on stderr rather than breaking every command.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

#: entry-point group third-party studies register under
ENTRY_POINT_GROUP = "charbench.studies"
#: the package whose sub-packages are the built-in studies
BUILTIN_PACKAGE = "charbench.workloads"


@dataclass(frozen=True)
class StudySpec:
    """What a study is, as far as the spine needs to know.

    Attributes:
        command: the CLI command and the study name stored in every run folder.
        help: the one line ``charbench --help`` shows.
        cli_module: dotted module exposing ``app``, a one-command ``typer.Typer``.
        gates: the metrics ``charbench compare`` gates on by default, one name per gate
            (old runs' spellings are renamed on read by :mod:`charbench.migrations`).
        fallback_gates: time/throughput metrics that gate in place of the :attr:`gates`
            that were not measured (energy and power are null without a meter, e.g. on a
            CPU without RAPL), so a CI job on any machine can still fail.
        report_hook: ``module:function`` returning the study's report sections, or None.
        metrics: the metric columns the study's records add to the spine's window fields.
        settings: the study's default runner settings (:class:`charbench.settings.RunSettings`
            fields) by selector: ``"*"``, a device kind (``"cpu"``, ``"cuda"``), a preset
            (``"paper"``) or both (``"paper/cuda"``), most specific applied last (see
            :func:`charbench.settings.study_defaults`); ``[settings]`` in ``--config`` and the
            options ``--idle-baseline``/``--cooldown``/``--shuffle`` override them.
    """

    command: str
    help: str
    cli_module: str
    gates: tuple[str, ...] = ()
    fallback_gates: tuple[str, ...] = ()
    report_hook: str | None = None
    metrics: tuple[str, ...] = field(default_factory=tuple)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.command or self.command.startswith("-") or any(c.isspace() for c in self.command):
            raise ValueError(f"StudySpec.command {self.command!r}: give a command name without spaces, e.g. 'my-study'")
        if not self.cli_module or ":" in self.cli_module:
            raise ValueError(f"StudySpec.cli_module {self.cli_module!r}: give a dotted module name exposing `app`, e.g. 'my_pkg.cli'")
        spelled = [g for g in self.gates if not isinstance(g, str)]
        if spelled:
            raise ValueError(f"StudySpec.gates {spelled[0]!r}: give one metric name per gate (e.g. 'p99_ttft_ms'); "
                             "older spellings are renamed on read by a migration in charbench.migrations")
        if self.report_hook is not None and self.report_hook.count(":") != 1:
            raise ValueError(f"StudySpec.report_hook {self.report_hook!r}: give 'module:function'")
        from charbench.settings import check_defaults_table

        check_defaults_table(self.settings, f"StudySpec {self.command!r}")

    @property
    def gate_alternatives(self) -> tuple[tuple[str, ...], ...]:
        """:attr:`gates`, each as a one-name tuple (the form :mod:`charbench.compare.gates` reads)."""
        return tuple((g,) for g in self.gates)


def _warn(msg: str) -> None:
    print(f"[charbench] warning: {msg}", file=sys.stderr, flush=True)


def builtin_studies() -> list[StudySpec]:
    """The ``STUDY`` of every sub-package of ``charbench.workloads``, in name order."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    out: list[StudySpec] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
        spec = getattr(module, "STUDY", None)
        if isinstance(spec, StudySpec):
            out.append(spec)
    return out


def plugin_studies() -> list[StudySpec]:
    """The studies registered under the ``charbench.studies`` entry-point group."""
    out: list[StudySpec] = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            _warn(f"study plugin {ep.name} ({ep.value}) failed to load ({type(exc).__name__}: {exc}); skipped")
            continue
        if not isinstance(spec, StudySpec):
            _warn(f"study plugin {ep.name} ({ep.value}) is a {type(spec).__name__}, not a charbench.studies.StudySpec; skipped")
            continue
        out.append(spec)
    return out


@functools.lru_cache(maxsize=1)
def discover() -> tuple[StudySpec, ...]:
    """Every known study: built-in ones first, then plugins (cached; ``discover.cache_clear()``).

    A plugin whose command a built-in study (or an earlier plugin) already has is skipped.
    """
    out: list[StudySpec] = []
    taken: set[str] = set()
    for spec in [*builtin_studies(), *plugin_studies()]:
        if spec.command in taken:
            _warn(f"study command {spec.command!r} from {spec.cli_module} is already taken; skipped")
            continue
        taken.add(spec.command)
        out.append(spec)
    return tuple(out)


def find_study(command: str) -> StudySpec | None:
    """The registered study whose command (= run-folder study name) is ``command``, or None."""
    return next((s for s in discover() if s.command == command), None)
