"""SIGTERM ends a run the way Ctrl-C does: marked ``interrupted``, completed points kept.

::

    with sigterm_as_interrupt():
        ...   # a SIGTERM here raises Terminated (a KeyboardInterrupt)

Batch schedulers (SLURM, Kubernetes, systemd) stop a job with SIGTERM; Python's default
for it kills the process without running ``finally`` blocks, which would leave run.json
at ``running`` and GPU clocks or power limits changed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every ``finally`` of the run runs."""

    #: the shell's code for a process ended by SIGTERM (128 + 15)
    exit_code = 128 + int(signal.SIGTERM)

    def __init__(self, signum: int = int(signal.SIGTERM)) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` inside the block; the previous handler is restored after.

    Only the first SIGTERM raises: a second one while the run is being closed must not cut
    the cleanup short. Off the main thread (where Python cannot set handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler set outside Python; the default is the closest we can restore.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
