"""CLI start-up time: ``charbench --help`` and ``charbench env`` as a user runs them.

Targets (CPU-only machine): ``--help`` < 1.5 s, ``env`` < 3 s. Each command runs in a
fresh process (the console script), a few times; the median and min are reported with
the ratio median/target (< 1 meets the target). Also lists which heavy modules each
command imports.

::

    .venv/bin/python tests/perf/bench_cli_startup.py
    .venv/bin/python tests/perf/bench_cli_startup.py --repeats 5 --json-out startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"help": 1.5, "env": 3.0}
COMMANDS = {"help": ["--help"], "env": ["env"]}
HEAVY = ("torch", "plotly", "pandas", "numpy", "pyarrow", "triton", "typer", "rich")


def console_script() -> list[str]:
    """The installed ``charbench`` next to this interpreter, else ``python -m charbench``."""
    script = Path(sys.executable).parent / "charbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "charbench"]


def time_command(args: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of ``repeats`` fresh runs (one discarded warm-up run fills the OS file cache)."""
    cmd = console_script() + args
    subprocess.run(cmd, capture_output=True, env=env, check=True, timeout=120)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return times


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    """Heavy modules loaded by ``charbench ARGS`` (run in-process in a child interpreter)."""
    code = (
        "import sys, io, contextlib\n"
        "from charbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({args!r})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> int:
    """Run the benchmark and print one line per command."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    env = {**os.environ, "CHARBENCH_HOME": tempfile.mkdtemp(prefix="cb-bench-")}
    results = {}
    for name, cmd_args in COMMANDS.items():
        times = time_command(cmd_args, args.repeats, env)
        med = statistics.median(times)
        results[name] = {
            "command": "charbench " + " ".join(cmd_args),
            "median_s": round(med, 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
            "repeats": args.repeats,
            "target_s": TARGETS_S[name],
            "ratio_to_target": round(med / TARGETS_S[name], 3),
            "meets_target": med < TARGETS_S[name],
            "heavy_imports": heavy_imports(cmd_args, env),
        }
        r = results[name]
        print(f"{r['command']:<18} median {r['median_s']:.3f} s  min {r['min_s']:.3f} s  max {r['max_s']:.3f} s  "
              f"target {r['target_s']} s  ratio {r['ratio_to_target']:.2f}  {'OK' if r['meets_target'] else 'SLOW'}  "
              f"imports: {', '.join(r['heavy_imports']) or 'none of ' + '/'.join(HEAVY)}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "results": results}, indent=2) + "\n")
    return 0 if all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
