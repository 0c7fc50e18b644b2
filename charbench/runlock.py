"""Who is running a run folder: an exclusive lock, and whether a ``running`` run's process lives.

::

    with RunLock(run_dir):      # a second process gets RunStoreError naming the holder
        ...                     # measure, write results

    run_status(store.meta)      # "stale" for a "running" run whose process is gone

The lock is ``fcntl.flock`` on ``<run>/.lock``. The kernel drops it when the holder's
process dies, however it dies, so a crashed run never leaves a lock behind (a pid file
would). The file holds the holder's pid, host and start time, read by whoever is refused.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from charbench.errors import RunStoreError

LOCK_FILE = ".lock"
STALE = "stale"


def this_host() -> str:
    """The host name recorded with a run's pid (``socket.gethostname()``)."""
    return socket.gethostname()


def owner_fields() -> dict[str, Any]:
    """``pid`` and ``host`` of this process, as recorded in run.json and the lock file."""
    return {"pid": os.getpid(), "host": this_host()}


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists; it is just not ours to signal
        return True
    return True


def run_status(meta: dict[str, Any]) -> str:
    """The status to show for a run: run.json's, except ``stale`` for a ``running`` run whose process is gone.

    Only a run started on this host can be checked; one from another host (or one written
    before pids were recorded) keeps ``running``.
    """
    status = str(meta.get("status") or "")
    pid = meta.get("pid")
    if status != "running" or not isinstance(pid, int) or isinstance(pid, bool) or meta.get("host") != this_host():
        return status
    return status if pid_alive(pid) else STALE


class RunLock:
    """An exclusive lock on a run folder, held for a whole run (a new one or a resume).

    Raises:
        RunStoreError: on entering, when another process holds the folder (the message names it).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock without waiting.

        Raises:
            RunStoreError: the folder is in use by another process, or the lock file cannot be made.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunStoreError(f"{self.run_dir}: cannot create the lock file {self.path} ({exc.strerror or exc}); the run folder must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunStoreError(f"{self.run_dir}: cannot lock {self.path} ({exc.strerror or exc})") from None
            raise RunStoreError(
                f"{self.run_dir} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"(started {holder.get('started', '?')}); wait for it to finish or stop that process, then --resume {self.run_dir} again"
            ) from None
        record = {**owner_fields(), "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock); the file stays, emptied."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it now: leave no stale holder behind
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder record in a lock file ({} while the holder has not written it yet)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
