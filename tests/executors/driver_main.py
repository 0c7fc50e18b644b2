"""A driver process for the driver-kill tests: ``python driver_main.py EXECUTOR OUT N WORK_S [RAY_ADDRESS]``.

It runs the toy study into OUT with ``--executor EXECUTOR`` until the test SIGKILLs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})

import conftest  # noqa: E402,F401  (registers the toy study for pickling by value)
from executor_toy import ToyStudy  # noqa: E402

from charbench.config import CommonOptions  # noqa: E402
from charbench.study import RunSettings, run_study  # noqa: E402


def main(argv: list[str]) -> None:
    executor, out, n, work_s = argv[0], Path(argv[1]), int(argv[2]), float(argv[3])
    if executor == "ray":
        from charbench.executors.ray_exec import RayExecutor

        ex = RayExecutor(address=argv[4])
    else:
        from charbench.executors.slurm import SlurmExecutor

        ex = SlurmExecutor(local=True)
    run_study(ToyStudy(n, work_s=work_s), CommonOptions(out=out, device="cpu", executor=executor, json=True), RunSettings(sample_interval_s=0),
              executor=ex)


if __name__ == "__main__":
    main(sys.argv[1:])
