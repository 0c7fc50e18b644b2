"""A tiny study for executor tests: CPU-only, no torch, points in well under a second."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from charbench.study import Study


class ToyStudy(Study):
    """``n`` points ``x = 0..n-1``; a point in ``die_at`` kills its worker process the first time (marker in ``marks``)."""

    name = "toy"

    def __init__(self, n: int = 4, work_s: float = 0.0, die_at: tuple[int, ...] = (), marks: str = "", group_by: tuple[str, ...] = ()) -> None:
        self.n, self.work_s, self.die_at, self.marks = n, work_s, die_at, marks
        self.resource_knobs = group_by
        self.cfg = {"n": n, "work_s": work_s}

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
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.work_s:  # CPU-bound, as a measured kernel is
            pass
        return {"y": x * x, "pid": os.getpid()}
