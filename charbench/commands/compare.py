"""``charbench compare``: a candidate run against a baseline run, with a regression gate.

::

    charbench compare runs/gemm-power/20261129-101500-main runs/gemm-power/20261130-090000-pr42
    charbench compare BASE CAND --metric energy_j --metric tflops_per_s:higher --threshold 3 --out cmp.html

Exit codes: 0 no gated metric regressed; 3 a gated metric regressed beyond the threshold
(outside the noise band); 1 an error (bad run folder, runs of different studies, no
matching points, unknown metric); 2 command-line usage. The rules are in
:mod:`charbench.compare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from charbench.compare import DEFAULT_THRESHOLD_PCT, EXIT_REGRESSION
from charbench.errors import ConfigError

app = typer.Typer(add_completion=False)


@app.command(epilog="Exit codes: 0 no gated regression; 3 a gated metric regressed beyond the threshold; 1 error; 2 usage.")
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline run folder (the reference).")],
    candidate: Annotated[Path, typer.Argument(help="Candidate run folder (the run under test).")],
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Gated metric NAME[:higher|lower] (repeatable; default: the study's headline metrics).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Percent a gated metric may worsen before it counts as a regression.")] = DEFAULT_THRESHOLD_PCT,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML page to write (default CANDIDATE/compare.html).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout instead of the table.")] = False,
) -> None:
    """Compare a candidate run with a baseline; exit 3 when a gated metric regresses."""
    from charbench.compare import compare_runs, summary_text
    from charbench.compare_page import render_comparison
    from charbench.config import check_writable_file

    if out is not None:
        check_writable_file(out, "--out")
    cmp = compare_runs(baseline, candidate, metric or None, threshold)
    target = out if out is not None else candidate / "compare.html"
    try:
        page = render_comparison([baseline, candidate], target, comparisons=[cmp])
    except OSError as exc:  # e.g. a read-only candidate folder for the default page
        raise ConfigError(f"compare: cannot write {exc.filename or target} ({exc.strerror or exc}); pass --out FILE in a writable folder") from None
    if json_out:
        typer.echo(json.dumps({**cmp.to_json(), "page": str(page)}, indent=2, default=str))
    else:
        typer.echo(summary_text(cmp))
        typer.echo(f"page: {page}")
    if cmp.exit_code == EXIT_REGRESSION:
        # the verdict line above is the one message; exit 3 without a second "Error: ..." line
        raise typer.Exit(EXIT_REGRESSION)
