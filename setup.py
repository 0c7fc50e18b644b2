"""Package discovery for the folder -> import-name mapping of ARCHITECTURE.md.

The top-level folders ``workloads/``, ``kernels/`` and ``reports/`` install as
``charbench.workloads``, ``charbench.kernels`` and ``charbench.reports``; their
sub-packages are found here so that a new study needs no edit to packaging.
"""

from setuptools import find_packages, setup

MAPPED = {"workloads": "charbench.workloads", "kernels": "charbench.kernels", "reports": "charbench.reports"}


def _packages() -> list[str]:
    names = ["charbench"] + [f"charbench.{p}" for p in find_packages("charbench")]
    for folder, import_name in MAPPED.items():
        names.append(import_name)
        names += [f"{import_name}.{p}" for p in find_packages(folder)]
    return names


setup(packages=_packages())
