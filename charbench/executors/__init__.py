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
#: sbatch settings charbench sets itself (``--slurm-time``, ``--slurm-gpus``, ``--slurm-partition``; one task per job)
OWN_SLURM_KEYS = ("time", "gpus_per_node", "partition", "ntasks_per_node")


def parse_ray_resources(items: list[str] | None) -> dict[str, float]:
    """``--ray-resource NAME=AMOUNT`` (repeatable): custom Ray resources every unit asks for, e.g. a GPU model's tag.

    Raises:
        ConfigError: an item is not NAME=AMOUNT with a finite amount > 0.
    """
    import math

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--ray-resource: expected NAME=AMOUNT with an amount > 0, got {item!r}; e.g. --ray-resource A100=1 "
                              "(start each A100 node with ray start --resources '{\"A100\": 1}')")
        out[name.strip()] = value
    return out


def parse_slurm_options(items: list[str] | None) -> dict[str, str]:
    """``--slurm-option KEY=VALUE`` (repeatable): further sbatch settings, by submitit's names (``account``, ``constraint``, ``qos``, ``mem`` ...).

    Raises:
        ConfigError: an item is not KEY=VALUE, or names a setting charbench sets from its own option.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--slurm-option: expected KEY=VALUE, got {item!r}; e.g. --slurm-option account=proj42 --slurm-option constraint=a100")
        if key in OWN_SLURM_KEYS:
            own = {"time": "--slurm-time", "gpus_per_node": "--slurm-gpus", "partition": "--slurm-partition"}.get(key)
            fix = f"use {own}" if own else "charbench runs one task per job"
            raise ConfigError(f"--slurm-option {key}: set by charbench itself; {fix}")
        out[key] = value
    return out


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
    if common.ray_resources and name != "ray":
        raise ConfigError(f"--ray-resource: only --executor ray schedules on Ray resources (this run uses --executor {name}); drop it or add --executor ray")
    if common.slurm_options and not name.startswith("slurm"):
        raise ConfigError(f"--slurm-option: only --executor slurm/slurm-local submit jobs (this run uses --executor {name}); drop it")
    if common.detach and not name.startswith("slurm"):
        raise ConfigError(f"--detach: only --executor slurm/slurm-local jobs outlive the driver (this run uses --executor {name})")
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from charbench.executors.ray_exec import RayExecutor

        return RayExecutor(address=common.ray_address, max_retries=common.max_retries, resources=common.ray_resources)
    from charbench.executors.slurm import SlurmExecutor

    return SlurmExecutor(local=name == "slurm-local", partition=common.slurm_partition, time_min=common.slurm_time_min,
                         gpus=common.slurm_gpus, max_retries=common.max_retries, detach=common.detach, extra=common.slurm_options)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RemoteExecutor", "make_executor", "parse_ray_resources", "parse_slurm_options"]
