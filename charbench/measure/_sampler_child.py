"""Child process of a process-backed :class:`~charbench.measure.sampler.Sampler`.

Not for direct use: ``python -m charbench.measure._sampler_child PARAMS_JSON ROWS_PATH``.
Writes ``{"type": "ready", "gpus": [...], "notes": [...]}`` on stdout once the first
sample is taken, appends one JSON row per sample to ROWS_PATH, stops when stdin
reaches EOF (the parent closed it, or died) and ends with
``{"type": "final", "notes": [...], "cpu_s": ...}``.
"""

from __future__ import annotations

import json
import select
import sys
from typing import Any


def main(argv: list[str]) -> int:
    """Sample until stdin closes."""
    from charbench.measure.sampler import Sampler

    params: dict[str, Any] = json.loads(argv[1])
    out = open(argv[2], "a", encoding="utf-8")  # noqa: SIM115 - open for the child's life

    def wait(timeout_s: float) -> bool:
        readable, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout_s))
        return bool(readable)  # stdin only becomes readable at EOF: stop

    def sink(row: dict[str, Any]) -> None:
        out.write(json.dumps(row) + "\n")
        out.flush()
        if not announced:
            announced.append(True)
            print(json.dumps({"type": "ready", "gpus": sampler.gpu_indices, "notes": sampler.notes}), flush=True)

    announced: list[bool] = []
    sampler = Sampler(params["interval_s"], gpus=params["gpus"], rapl_root=params["rapl_root"],
                      sources=params["sources"], wait=wait, backend="thread")
    sampler._sink = sink
    sampler._setup()  # NVML init and zone scan before the first sample (not counted in cpu_s)
    try:
        sampler._loop()
    finally:
        sampler.stop()
        out.close()
        print(json.dumps({"type": "final", "notes": sampler.notes, "cpu_s": sampler.cpu_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
