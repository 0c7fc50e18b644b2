"""The README's two set-up commands are the ones CI runs, and they stay two."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI_RUN = ROOT / ".ci" / "run"


def _top_bash_blocks() -> list[str]:
    top = README[: README.index("## Commands")]
    return re.findall(r"^```bash\n(.*?)\n```$", top, flags=re.S | re.M)


def test_exactly_two_setup_commands_at_the_top() -> None:
    blocks = _top_bash_blocks()
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks)
    main_job, test_run = blocks
    assert main_job.endswith("&& .venv/bin/charbench gemm-power")
    assert test_run.endswith("&& .venv/bin/python -m pytest")
    for block in blocks:
        assert block.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ")


def test_ci_reads_the_same_commands_from_the_readme() -> None:
    """`.ci/run`'s own extractor finds exactly the README's blocks (so CI runs them verbatim)."""
    script = CI_RUN.read_text()
    extractor = re.search(r"^readme_command\(\) \{.*?^\}$", script, flags=re.S | re.M)
    assert extractor is not None
    for n, expected in enumerate(_top_bash_blocks(), start=1):
        out = subprocess.run(
            ["bash", "-c", f"{extractor.group(0)}\nreadme_command {n}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected
    assert 'bash -c "$main_job' in script and 'bash -c "$test_run' in script
    assert 'if [ "$rc" -eq 5 ]' in script


def test_torch_pin_is_not_described_as_selecting_a_cpu_wheel() -> None:
    assert "so a CPU-only machine gets the CPU wheel" not in README
    assert "does not choose a CPU or CUDA" in README


def test_every_dependency_has_an_upper_bound() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    unbounded = [r for r in requirements if "<" not in r.split(";")[0]]
    assert unbounded == []
