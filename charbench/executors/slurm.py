"""SLURM through submitit: one job per unit, results staged in the run folder, re-attachable.

``--executor slurm`` submits with sbatch (submitit's SLURM executor); ``--executor
slurm-local`` runs the very same jobs as local processes (submitit's local executor), for
tests and laptops. Each job's batches are staged under ``<run>/executor/stage/`` as its
points finish, and the jobs are listed in ``<run>/executor/jobs.json``, so a driver that
detached (``--detach``) or died can be re-attached with ``--resume RUN_DIR``: finished jobs
are collected, running ones awaited, lost ones' unfinished points submitted again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError
from charbench.executors.base import Lost, RemoteExecutor, Unit
from charbench.executors.staging import NodeInfo, node_name
from charbench.executors.worker import GroupResult, GroupTask, run_staged_task, staged_batches

EXTRA_HINT = "pip install 'charbench[slurm]'"


def import_submitit() -> Any:
    """submitit, or a ConfigError naming the extra that installs it."""
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError(f"--executor slurm/slurm-local needs submitit, which is not installed ({exc}); {EXTRA_HINT}") from None
    return submitit


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` still runs (submitit cannot tell for a re-attached local job); a zombie has ended."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that ended: reaped now
            return False
    except ChildProcessError:
        pass  # another process's child (an earlier driver's job)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is


class SlurmExecutor(RemoteExecutor):
    """Units as SLURM jobs (``local=True``: submitit's local executor, jobs as processes here)."""

    def __init__(self, *, local: bool, partition: str | None = None, time_min: int = 60, gpus: int = 0, max_retries: int = 1,
                 detach: bool = False, extra: dict[str, Any] | None = None) -> None:
        super().__init__(max_retries=max_retries, detach=detach)
        self.local = local
        self.name = "slurm-local" if local else "slurm"
        self.partition = partition
        self.time_min = time_min
        self.gpus = gpus
        self.extra = dict(extra or {})
        self._ex: Any = None
        self._folder: Path | None = None
        self._ledger: dict[str, Any] = {}
        self._store: Any = None

    def check(self, study: Any) -> None:
        """Refuse ``slurm`` without sbatch, and a missing submitit, before a run folder exists."""
        super().check(study)
        if not self.local and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: sbatch is not on PATH (this machine is not a SLURM submit node); "
                              "run from a login node, or use --executor slurm-local to run the same jobs as local processes")
        submitit = import_submitit()
        valid = submitit.SlurmExecutor._valid_parameters()
        unknown = sorted(k for k in self.extra if k not in valid)
        if unknown:
            raise ConfigError(f"--slurm-option {unknown[0]}: not an sbatch setting submitit knows; use one of "
                              f"{', '.join(sorted(valid))}, or additional_parameters for the rest")

    def start(self, store: Any, log: Any) -> None:
        """Make submitit's executor with its folder in the run folder."""
        submitit = import_submitit()
        self._store = store
        self._folder = Path(store.path) / "executor"
        self._ledger = self._read_ledger()
        if self.local:
            ex = submitit.LocalExecutor(folder=self._folder / "jobs" / "%j")
            ex.update_parameters(timeout_min=self.time_min)
            if self.extra:
                log(f"note: --slurm-option {', '.join(sorted(self.extra))}: not applied by slurm-local (local processes have no sbatch)")
        else:
            ex = submitit.SlurmExecutor(folder=self._folder / "jobs" / "%j")
            params: dict[str, Any] = {"time": self.time_min, "ntasks_per_node": 1}
            if self.partition:
                params["partition"] = self.partition
            if self.gpus:
                params["gpus_per_node"] = self.gpus
            ex.update_parameters(**params, **self.extra)
        ex._throttling = 0  # submitit sleeps 0.2 s per submit by default; charbench submits a few units, not thousands
        self._ex = ex

    def slots(self) -> int:
        """Local jobs run at once with no cap of their own: at most one per CPU core. SLURM queues the rest itself."""
        return max(1, os.cpu_count() or 1) if self.local else 1 << 30

    @property
    def _stage(self) -> Path:
        assert self._folder is not None
        return self._folder / "stage"

    def submit(self, task: GroupTask) -> Any:
        """Submit one job running :func:`~charbench.executors.worker.run_staged_task`."""
        self._stage.mkdir(parents=True, exist_ok=True)
        return self._ex.submit(run_staged_task, task, self._stage)

    def submitted(self, handle: Any, unit: Unit) -> None:
        """List the job in ``executor/jobs.json`` (what ``--resume`` re-attaches to)."""
        self._ledger[unit.unit] = {"job_id": str(handle.job_id), "executor": self.name, "attempt": unit.attempt, "group": unit.group,
                                   "members": [[i, k, p] for i, k, p in unit.members]}
        self._store.write_json("executor/jobs.json", self._ledger)

    def _read_ledger(self) -> dict[str, Any]:
        assert self._folder is not None
        p = self._folder / "jobs.json"
        if not p.is_file():
            return {}
        try:
            return dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}  # an unreadable ledger: every unfinished point is submitted again (staged batches are still collected)

    def reattach(self, store: Any, units: list[Unit], log: Any) -> dict[Any, Unit]:
        """Jobs listed in the ledger that hold points of ``units``: collected, awaited or salvaged by :meth:`poll`."""
        submitit = import_submitit()
        wanted = {k for u in units for _, k, _ in u.members}
        out: dict[Any, Unit] = {}
        for uid, entry in self._ledger.items():
            members = [(int(i), str(k), dict(p)) for i, k, p in entry.get("members", [])]
            left = [m for m in members if m[1] in wanted]
            if not left:
                continue
            job_id = str(entry["job_id"])
            folder = self._folder / "jobs" / job_id  # type: ignore[operator]
            local = entry.get("executor") == "slurm-local"
            job = submitit.local.local.LocalJob(folder, job_id) if local else submitit.SlurmJob(folder, job_id)
            job._charbench_reattached = True
            out[job] = Unit(uid, dict(entry.get("group") or {}), left, int(entry.get("attempt", 0)))
        if out:
            log(f"re-attached to {len(out)} job(s) of an earlier driver")
        return out

    def _finished(self, job: Any) -> bool:
        if job.paths.result_pickle.exists():
            return True
        if getattr(job, "_charbench_reattached", False) and isinstance(job, self._local_job_type()):
            return not _pid_running(int(job.job_id))  # a re-attached local job's id is its controller's pid
        return bool(job.done())

    @staticmethod
    def _local_job_type() -> type:
        return import_submitit().local.local.LocalJob

    def poll(self, handles: list[Any], timeout_s: float) -> list[tuple[Any, GroupResult | Lost]]:
        """Jobs that ended: their result, or how they were lost (no result file, a failed job)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            ended = [j for j in handles if self._finished(j)]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return [(j, self._outcome(j)) for j in ended]

    def _outcome(self, job: Any) -> GroupResult | Lost:
        where = node_name() if self.local else None
        if not job.paths.result_pickle.exists():
            code = getattr(getattr(job, "_process", None), "returncode", None)
            return Lost(f"job {job.job_id} ended without a result" + (f" (controller exit status {code})" if code is not None else ""), where)
        try:
            result = job.result()
        except Exception as exc:  # FailedJobError (the worker raised, or hit --slurm-time), UncompletedJobError
            first = str(exc).strip().splitlines()
            return Lost(f"job {job.job_id} failed: {type(exc).__name__}: {first[-1] if first else ''}", where)
        return result if isinstance(result, GroupResult) else Lost(f"job {job.job_id} returned {type(result).__name__}", where)

    def salvage(self, handle: Any, unit: Unit) -> list[tuple[Any, NodeInfo]]:
        """The batches the lost job staged before it ended (its completed points)."""
        return staged_batches(self._stage, unit.unit)

    #: seconds the driver waits, after Ctrl-C, for cancelled jobs to restore their clocks and end
    cancel_wait_s = 15.0

    def cancel(self, handles: list[Any]) -> None:
        """Cancel the pending jobs and wait (bounded) for them to end; their workers restore clocks on the way out.

        A local job gets SIGINT (submitit's controller passes it on as KeyboardInterrupt, then
        SIGKILL a second later); a re-attached local job has no process handle here, so its
        controller (the job id is its pid) is signalled directly. ``scancel`` sends SIGTERM,
        which the worker turns into KeyboardInterrupt (see
        :func:`~charbench.executors.worker.run_staged_task`).
        """
        import signal
        import time

        for job in handles:
            try:
                if self.local and getattr(job, "_process", None) is None:
                    os.kill(int(job.job_id), signal.SIGINT)
                else:
                    job.cancel(check=False)
            except Exception:  # a job that already ended; nothing to stop
                pass
        if not self.local:
            return  # scancel returns at once; SLURM's KillWait gives the job its time to clean up
        deadline = time.monotonic() + self.cancel_wait_s
        while time.monotonic() < deadline and any(_pid_running(int(j.job_id)) for j in handles):
            time.sleep(0.05)
