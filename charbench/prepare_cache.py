"""Content-addressed cache for a study's ``prepare`` phase.

A study that needs something built before it measures (a trained model pair, a fitted
predictor, a converted dataset) declares what that depends on in ``prepare_inputs()`` and
builds it in ``prepare(cache_dir, ctx)``. The runner calls it once, before any meter,
sampler or idle baseline starts, and never again for the same inputs::

    entry = PrepareCache.for_study("cache-reuse").entry({"pair": "tiny", "steps": 200})
    if not entry.hit:
        with entry.building() as tmp:
            train_pair(tmp)          # writes into tmp; renamed into place only on success
    entry.path                       # $CHARBENCH_HOME/cache/cache-reuse/<sha256[:16]>

The key is the SHA-256 of the study name, its ``prepare_version`` and the canonical JSON
of the inputs, so changing any of them builds a new entry and an old one is never reused
by mistake. ``config.json`` records the key, the inputs and the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from charbench.config import default_out_dir

#: marker written last into a finished entry (a crash mid-build leaves no marker)
COMPLETE = ".complete.json"


def cache_root() -> Path:
    """``$CHARBENCH_HOME/cache`` (or ``./charbench-runs/cache`` without the variable)."""
    return Path(default_out_dir()) / "cache"


def cache_key(study: str, version: str, inputs: Any) -> str:
    """SHA-256 (first 16 hex digits) of the study, its prepare version and the canonical inputs."""
    blob = json.dumps({"study": study, "version": version, "inputs": inputs}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class CacheEntry:
    """One prepared artifact folder."""

    study: str
    key: str
    inputs: Any
    path: Path

    @property
    def hit(self) -> bool:
        """True when a complete entry for these inputs is already on disk."""
        return (self.path / COMPLETE).is_file()

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """A temporary folder to build into; it becomes :attr:`path` only if the block succeeds."""
        tmp = self.path.with_name(f".{self.key}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / COMPLETE).write_text(json.dumps({"study": self.study, "key": self.key, "inputs": self.inputs}, default=str))
            shutil.rmtree(self.path, ignore_errors=True)  # an incomplete leftover of a crashed build
            os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def record(self, hit: bool) -> dict[str, Any]:
        """What config.json keeps about the entry."""
        return {"key": self.key, "path": str(self.path), "inputs": self.inputs, "cache_hit": hit}


@dataclass
class PrepareCache:
    """The cache folder of one study."""

    study: str
    root: Path

    @classmethod
    def for_study(cls, study: str, root: Path | None = None) -> PrepareCache:
        """The cache of ``study`` under ``root`` (default :func:`cache_root`)."""
        return cls(study, (root or cache_root()) / study)

    def entry(self, inputs: Any, version: str = "1") -> CacheEntry:
        """The entry for ``inputs`` (it may not exist yet: see :attr:`CacheEntry.hit`)."""
        key = cache_key(self.study, version, inputs)
        return CacheEntry(self.study, key, inputs, self.root / key)
