"""Energy and CO2e of a block of work: measured from RAPL where it can be read, else estimated.

RAPL (``/sys/class/powercap/intel-rapl:N``) counts the energy of each CPU
package in microjoules, for every process on it. Where no package counter can
be read (another vendor, a container, no permission), the energy is estimated
as the process's CPU time times the ``watts_per_core`` setting (10 W unless
set). CO2e follows the paper (after Strubell et al., ACL 2019):
``lbs = 0.954 x kWh x PUE 1.58``.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import config

__all__ = ["EnergyMeter", "co2e_lbs", "POWERCAP", "PUE", "LBS_PER_KWH"]

POWERCAP = Path("/sys/class/powercap")
PUE = 1.58
LBS_PER_KWH = 0.954


def co2e_lbs(joules):
    """Pounds of CO2e of ``joules`` of energy, by the paper's formula.

    Parameters
    ----------
    joules : float
    """
    return LBS_PER_KWH * (joules / 3.6e6) * PUE


class EnergyMeter:
    """A ``with`` block's wall time, CPU time and energy.

    Parameters
    ----------
    root : Path
        Where the powercap counters are (for tests; default :data:`POWERCAP`).

    Examples
    --------
    >>> with EnergyMeter() as meter:
    ...     modules = fd.decompose(model, train)
    >>> meter.result["joules"], meter.result["source"]
    """

    def __init__(self, root=POWERCAP):
        self.root = Path(root)
        self.result = None

    def __enter__(self):
        self._packages = _package_counters(self.root)
        self._energy = {path: _read_int(path / "energy_uj") for path in self._packages}
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        seconds, cpu_seconds = time.perf_counter() - self._wall, time.process_time() - self._cpu
        joules = self._rapl_joules()
        if joules is None:
            watts = float(config.get("watts_per_core"))
            joules, source = cpu_seconds * watts, f"estimated: CPU time x {watts:g} W per core"
        else:
            source = f"RAPL, {len(self._packages)} package(s), every process on them"
        self.result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "joules": joules, "source": source,
                       "kwh": joules / 3.6e6, "co2e_lbs": co2e_lbs(joules)}
        return False

    def _rapl_joules(self):
        if not self._packages or None in self._energy.values():
            return None
        total = 0
        for path, before in self._energy.items():
            after = _read_int(path / "energy_uj")
            wrap = _read_int(path / "max_energy_range_uj")
            if after is None or wrap is None:
                return None
            total += after - before if after >= before else after + wrap + 1 - before
        return total / 1e6


def _package_counters(root):
    """The package-level RAPL domains under ``root`` (not their core/uncore/dram subdomains)."""
    try:
        domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    except OSError:
        return []
    return [p for p in domains if (p / "energy_uj").exists()]


def _read_int(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
