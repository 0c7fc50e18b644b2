"""A tiny study for executor tests: CPU-only, no torch, points in well under a second."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from charbench.study import Study


def node_id() -> str:
    """The Ray node id inside a Ray worker, else the host name (what a test uses to find the node to kill)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def _mark(path: Path, text: str) -> None:
    """Write a marker whole (temp file + rename): a test that sees it can read it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FakeControl:
    """Stands in for GpuControl on a CPU node: its exit (the runner's clock restore) leaves ``restored-<pid>`` naming the node."""

    def __init__(self, marks: str) -> None:
        self.marks = marks

    def restore(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        _mark(Path(self.marks, f"restored-{os.getpid()}"), node_id())


class ToyStudy(Study):
    """``n`` points ``x = 0..n-1``; a point in ``die_at`` kills its worker process the first time (marker in ``marks``).

    A point in ``hang_at`` leaves ``running-<x>`` (its node id and pid) and then blocks for up to
    ``hang_s`` the first time (a node to kill, a run to interrupt); ``fake_control`` puts a
    :class:`FakeControl` on each worker's Context as if clocks had been set.
    """

    name = "toy"

    def __init__(self, n: int = 4, work_s: float = 0.0, die_at: tuple[int, ...] = (), marks: str = "", group_by: tuple[str, ...] = (),
                 hang_at: tuple[int, ...] = (), hang_s: float = 60.0, fake_control: bool = False) -> None:
        self.n, self.work_s, self.die_at, self.marks = n, work_s, die_at, marks
        self.hang_at, self.hang_s, self.fake_control = hang_at, hang_s, fake_control
        self.resource_knobs = group_by
        self.cfg = {"n": n, "work_s": work_s}

    def setup(self, ctx: Any) -> None:
        if self.fake_control:
            ctx._control = FakeControl(self.marks)
            Path(self.marks, f"clocks-set-{os.getpid()}").write_text(node_id())

    def config_dict(self) -> dict[str, Any]:
        return dict(self.cfg)

    def points(self) -> list[dict[str, Any]]:
        return [{"x": i, "pair": i // 2} for i in range(self.n)]

    def acquire(self, group: dict[str, Any], ctx: Any) -> Any:
        if self.marks:  # one file per acquisition: which node built the group's resource
            Path(self.marks, f"acquire-{os.getpid()}-{time.monotonic_ns()}").write_text(str(group))
        return group

    def run_point(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        x = params["x"]
        if x in self.die_at:
            mark = Path(self.marks, f"died-{x}")
            if not mark.exists():
                mark.write_text("1")
                os._exit(9)  # the worker vanishes mid-point, as a killed job or a lost node does
        if x in self.hang_at and not Path(self.marks, f"hung-{x}").exists():
            Path(self.marks, f"hung-{x}").write_text("1")
            _mark(Path(self.marks, f"running-{x}"), f"{node_id()} {os.getpid()}")
            t0 = time.monotonic()
            while time.monotonic() - t0 < self.hang_s:
                time.sleep(0.01)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.work_s:  # CPU-bound, as a measured kernel is
            pass
        return {"y": x * x, "pid": os.getpid(), "spin_time_s": time.perf_counter() - t0}


def _load_serving_fakes() -> Any:
    """serve-sweep's test fakes, loaded as a module of their own so that they can travel to workers by value."""
    import importlib.util
    import sys

    name = "executor_serving_fakes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "workloads" / "serving" / "fakes.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


serving_fakes = _load_serving_fakes()


class EngineFactory:
    """serve-sweep's target factory for executor tests: a fake engine, and ``engine-<max_num_seqs>-<pid>`` naming the node per build."""

    def __init__(self, marks: str) -> None:
        self.marks = marks

    def __call__(self, knobs: dict[str, Any], device: str) -> Any:
        _mark(Path(self.marks, f"engine-{knobs['max_num_seqs']}-{os.getpid()}-{time.monotonic_ns()}"), node_id())
        return serving_fakes.FakeTarget(max_num_seqs=knobs["max_num_seqs"])


def kill_driver_after(args: list[str], out: Path, done_at_least: int, timeout_s: float = 90.0) -> Path:
    """Start ``driver_main.py args`` and SIGKILL it once its run folder holds ``done_at_least`` points; returns the run folder."""
    import subprocess
    import sys

    from charbench.results import RunStore

    script = Path(__file__).resolve().parent / "driver_main.py"
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert proc.poll() is None, f"the driver ended on its own: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"the driver stored fewer than {done_at_least} points in {timeout_s} s"
            runs = list((out / "toy").glob("*/run.json")) if (out / "toy").is_dir() else []
            if runs:
                try:
                    if len(RunStore.open(runs[0].parent).completed_keys()) >= done_at_least:
                        break
                except Exception:  # a part being written right now: look again
                    pass
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no finally block of the driver runs
        proc.wait()
    return runs[0].parent
