"""The repo's ``kernels/`` folder must never be importable as top-level ``kernels``.

transformers 5 imports the PyPI package ``kernels``; when the checkout root is on
``sys.path`` (``python -m pytest``, ``python -m charbench`` from the root) our folder used to
shadow it and every transformers test failed with ``cannot import name 'CUDAProperties'``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from charbench import syspath

REPO = Path(__file__).resolve().parent.parent


def _is_inside_repo(origin: str | None) -> bool:
    """Whether ``origin`` lies in one of the checkout's mapped folders (a venv may live in the repo)."""
    return bool(origin) and any(Path(origin).resolve().is_relative_to(REPO / f) for f in syspath.MAPPED_FOLDERS)


def test_checkout_root_is_this_repo() -> None:
    assert syspath.checkout_root() == REPO


def test_repo_root_is_not_on_sys_path_while_tests_run() -> None:
    assert [e for e in sys.path if Path(e or ".").resolve() == REPO] == []


@pytest.mark.parametrize("name", syspath.MAPPED_FOLDERS)
def test_mapped_folder_is_not_importable_top_level(name: str) -> None:
    spec = importlib.util.find_spec(name)
    # Either the name is not importable at all, or it is some installed distribution.
    assert spec is None or not _is_inside_repo(spec.origin), f"{name} resolves to the checkout: {spec.origin}"
    for location in (spec.submodule_search_locations or []) if spec else []:
        assert not _is_inside_repo(location)


def test_charbench_kernels_is_still_the_repo_folder() -> None:
    import charbench.kernels

    assert Path(charbench.kernels.__file__).resolve() == REPO / "kernels" / "__init__.py"


def test_drop_checkout_root_removes_root_and_forgets_shadowing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("kernels")
    fake.__file__ = str(REPO / "kernels" / "__init__.py")
    monkeypatch.setitem(sys.modules, "kernels", fake)
    monkeypatch.setattr(sys, "path", ["", str(REPO), "/nonexistent-elsewhere", *sys.path])
    monkeypatch.chdir(REPO)
    removed = syspath.drop_checkout_root()
    assert removed == ["", str(REPO)]
    assert sys.path[0] == "/nonexistent-elsewhere"
    assert "kernels" not in sys.modules


def test_drop_checkout_root_keeps_other_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "path", ["", str(tmp_path)])
    monkeypatch.chdir(tmp_path)
    assert syspath.drop_checkout_root() == []
    assert sys.path == ["", str(tmp_path)]


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import charbench, importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else None)"],
        ["-m", "charbench", "--version"],
    ],
    ids=["python -c", "python -m charbench"],
)
def test_repo_root_as_cwd_cannot_shadow(argv: list[str]) -> None:
    """Run from the repo root, where ``sys.path[0]`` is the checkout."""
    out = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if argv[0] == "-c":
        origin = out.stdout.strip()
        assert origin == "None" or not _is_inside_repo(origin), origin
