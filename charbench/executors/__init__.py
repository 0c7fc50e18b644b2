"""Where a sweep's resource groups run: here, on a Ray cluster, or as SLURM jobs.

``--executor local`` (the default) is the in-process loop. ``ray``, ``slurm`` and
``slurm-local`` send each unit of work (a resource group; one point for a study without
resource knobs) to a worker that measures on its own node, and replay what it wrote into the
run folder, whose only writer stays the driver (see :mod:`charbench.executors.base`)::

    from charbench.executors import make_executor
    run_study(study, common, settings, executor=make_executor(common))

Ray and submitit are optional (``pip install 'charbench[ray]'`` / ``'charbench[slurm]'``)
and imported only when their executor starts.
"""

from __future__ import annotations

from charbench.config import CommonOptions
from charbench.errors import ConfigError
from charbench.executors.base import Executor, LocalExecutor, RemoteExecutor

#: the ``--executor`` values
EXECUTORS = ("local", "ray", "slurm", "slurm-local")


def make_executor(common: CommonOptions) -> Executor:
    """The executor ``common.executor`` names, configured from the common options.

    Raises:
        ConfigError: an unknown ``--executor``, or options that belong to another executor.
    """
    name = common.executor
    if name not in EXECUTORS:
        raise ConfigError(f"--executor: {name!r} is not one of {', '.join(EXECUTORS)}")
    if common.ray_address is not None and name != "ray":
        raise ConfigError(f"--ray-address: only --executor ray connects to Ray (this run uses --executor {name}); drop --ray-address or add --executor ray")
    if common.detach and not name.startswith("slurm"):
        raise ConfigError(f"--detach: only --executor slurm/slurm-local jobs outlive the driver (this run uses --executor {name})")
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from charbench.executors.ray_exec import RayExecutor

        return RayExecutor(address=common.ray_address, max_retries=common.max_retries)
    from charbench.executors.slurm import SlurmExecutor

    return SlurmExecutor(local=name == "slurm-local", partition=common.slurm_partition, time_min=common.slurm_time_min,
                         gpus=common.slurm_gpus, max_retries=common.max_retries, detach=common.detach)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RemoteExecutor", "make_executor"]
