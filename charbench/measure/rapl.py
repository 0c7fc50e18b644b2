"""Linux powercap/RAPL zones: discovery, readability and wrap-corrected counters.

RAPL zones nest: ``psys`` (platform) contains the packages, and a package contains
its ``core`` and ``uncore`` sub-zones. Only the **package** zones and their **dram**
sub-zones are disjoint, so only those get a charbench domain (``cpu_package0``,
``cpu_dram0``); the others are listed with the reason they are left out.

Use::

    from charbench.measure.rapl import rapl_available, rapl_zones, RaplCounter

    ok, reason = rapl_available()
    for zone in rapl_zones():
        print(zone.name, zone.domain, zone.readable, zone.reason or zone.note)
    counter = RaplCounter(zone)        # a zone with zone.readable
    start_uj = counter.update()        # ... later ...
    joules = (counter.update() - start_uj) / 1e6
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from charbench.errors import RaplError

DEFAULT_ROOT = "/sys/class/powercap"

# intel-rapl:<zone>[:<subzone>]; the kernel uses these names on AMD too (since 5.8)
_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_MMIO_RE = re.compile(r"^intel-rapl-mmio:\d+(?::\d+)?$")
_PACKAGE_RE = re.compile(r"^package-(\d+)$")


@dataclass(frozen=True)
class RaplZone:
    """One powercap RAPL zone.

    Attributes:
        name: the zone's ``name`` file (``package-0``, ``dram``, ``core``, ``psys``).
        path: the zone folder (``/sys/class/powercap/intel-rapl:0``).
        max_energy_range_uj: where ``energy_uj`` wraps to 0, None when unreadable.
        readable: whether ``energy_uj`` could be read.
        reason: why it could not be read (with the fix), None when readable.
        domain: charbench domain (``cpu_package0``, ``cpu_dram0``) for zones that are
            summed; None for zones nested in another (core, uncore, psys, MMIO copies).
        note: why a zone has no domain.
    """

    name: str
    path: Path
    max_energy_range_uj: int | None
    readable: bool
    reason: str | None
    domain: str | None = None
    note: str | None = None

    @property
    def energy_path(self) -> Path:
        """Path of the zone's ``energy_uj`` counter."""
        return self.path / "energy_uj"


def _read_text(path: Path) -> str:
    """Read a sysfs file (one seam for tests that simulate permission errors)."""
    with open(path, encoding="ascii") as fh:
        return fh.read()


REAL_READ_TEXT = _read_text  # tests replace _read_text; the sampler checks for that


def permission_message(path: Path, root: str | Path = DEFAULT_ROOT) -> str:
    """The error text for an ``energy_uj`` that only root may read, with the fixes."""
    return (
        f"cannot read {path}: permission denied. Since Linux 5.10 energy_uj is readable only "
        f"by root (CVE-2020-8694). Fix: run as root, or `sudo chmod a+r {root}/intel-rapl:*/energy_uj` "
        "(lasts until reboot), or make it permanent with a udev rule or a sysfs.conf line "
        "`mode class/powercap/intel-rapl:0/energy_uj = 0444`"
    )


def read_energy_uj(zone: RaplZone, root: str | Path = DEFAULT_ROOT) -> int:
    """Read a zone's raw ``energy_uj``.

    Raises:
        RaplError: unreadable (the permission message names the fix) or malformed.
    """
    try:
        return int(_read_text(zone.energy_path).strip())
    except PermissionError as exc:
        raise RaplError(permission_message(zone.energy_path, root)) from exc
    except (OSError, ValueError) as exc:
        raise RaplError(f"cannot read {zone.energy_path}: {exc}") from exc


def rapl_zones(root: str | Path = DEFAULT_ROOT) -> list[RaplZone]:
    """List the RAPL zones under ``root`` (the powercap class folder), sorted by path.

    Never raises: a missing root gives ``[]``; unreadable counters give
    ``readable=False`` with the reason.
    """
    base = Path(root)
    try:
        entries = sorted(p for p in base.iterdir() if _ZONE_RE.match(p.name) or _MMIO_RE.match(p.name))
    except OSError:
        return []
    names = {p.name: _zone_name(p) for p in entries}
    zones = []
    for path in entries:
        domain, note = _domain_of(path.name, names)
        zones.append(_probe(path, names[path.name], domain, note, root))
    return zones


def _zone_name(path: Path) -> str:
    try:
        return _read_text(path / "name").strip()
    except OSError:
        return path.name


def _domain_of(dirname: str, names: dict[str, str]) -> tuple[str | None, str | None]:
    name = names[dirname]
    if _MMIO_RE.match(dirname):
        return None, f"{dirname} is the MMIO copy of a package zone; excluded to avoid double counting"
    m = _ZONE_RE.match(dirname)
    assert m is not None  # filtered by the caller
    parent_dir = f"intel-rapl:{m.group(1)}"
    if m.group(2) is None:
        pkg = _PACKAGE_RE.match(name)
        if pkg:
            return f"cpu_package{pkg.group(1)}", None
        if name == "psys":
            return None, "psys (platform) contains the packages; excluded to avoid double counting"
        return None, f"top-level zone '{name}' is not a package; excluded"
    pkg = _PACKAGE_RE.match(names.get(parent_dir, ""))
    if name == "dram" and pkg:
        return f"cpu_dram{pkg.group(1)}", None
    parent_name = names.get(parent_dir, parent_dir)
    return None, f"{name} is inside {parent_name}; excluded to avoid double counting"


def _probe(path: Path, name: str, domain: str | None, note: str | None, root: str | Path) -> RaplZone:
    try:
        max_range: int | None = int(_read_text(path / "max_energy_range_uj").strip())
    except (OSError, ValueError):
        max_range = None
    zone = RaplZone(name, path, max_range, True, None, domain, note)
    try:
        read_energy_uj(zone, root)
    except RaplError as exc:
        return RaplZone(name, path, max_range, False, str(exc), domain, note)
    return zone


def rapl_available(root: str | Path = DEFAULT_ROOT) -> tuple[bool, str]:
    """Whether at least one RAPL package zone is readable; else why not (never raises)."""
    zones = [z for z in rapl_zones(root) if z.domain and z.domain.startswith("cpu_package")]
    if not zones:
        return False, (
            f"no RAPL package zones under {root} (not a Linux host with Intel/AMD RAPL, or the "
            "container masks /sys/devices/virtual/powercap)"
        )
    unreadable = [z for z in zones if not z.readable]
    if len(unreadable) == len(zones):
        return False, unreadable[0].reason or "RAPL counters unreadable"
    return True, ""


class RaplCounter:
    """A zone's energy as a monotonic, wrap-corrected count in µJ.

    Each :meth:`update` reads ``energy_uj``; a value below the previous one means the
    counter wrapped at ``max_energy_range_uj`` and the range is added back. Two
    reads further apart than one wrap period undercount, so owners poll often enough
    (see :meth:`safe_poll_interval_s`). A wrap that cannot be corrected (unknown range)
    bumps :attr:`epoch`; spans crossing an epoch change are invalid.
    """

    def __init__(self, zone: RaplZone, root: str | Path = DEFAULT_ROOT) -> None:
        self.zone = zone
        self._root = root
        self._lock = threading.Lock()
        self._last_raw: int | None = None
        self._total_uj = 0
        self.wraps = 0
        self.epoch = 0

    def update(self) -> int:
        """Read the counter and return the unwrapped total in µJ.

        Raises:
            RaplError: the counter could not be read.
        """
        raw = read_energy_uj(self.zone, self._root)
        with self._lock:
            if self._last_raw is not None:
                delta = raw - self._last_raw
                if delta < 0:
                    if self.zone.max_energy_range_uj is None:
                        self.epoch += 1  # uncorrectable: spans across this read are invalid
                        delta = 0
                    else:
                        delta += self.zone.max_energy_range_uj
                        self.wraps += 1
                self._total_uj += delta
            self._last_raw = raw
            return self._total_uj

    def safe_poll_interval_s(self, max_power_w: float = 1000.0) -> float:
        """Longest gap between reads that cannot miss a wrap at ``max_power_w``."""
        if self.zone.max_energy_range_uj is None:
            return 1.0
        return max(0.05, self.zone.max_energy_range_uj / 1e6 / max_power_w / 2)
