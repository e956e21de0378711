"""Peak host memory of a benchmark case: the kernel's peak-RSS mark, reset at the start of the case.

On Linux the mark is reset through /proc/self/clear_refs, so an earlier transient peak (imports,
building the model) cannot hide the case's own; elsewhere `ru_maxrss` (which cannot be reset) is used.
"""

from __future__ import annotations

import resource
import sys

_KIB = 1 if sys.platform == "darwin" else 1024  # ru_maxrss unit: bytes on macOS, KiB on Linux


def _proc_status_mb(field: str) -> float:
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def start_rss_peak() -> tuple[float, str]:
    """Reset the kernel's peak-RSS mark to the current RSS; (RSS now in MB, how peaks will be read)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: VmHWM := VmRSS
        return _proc_status_mb("VmRSS"), "VmHWM"
    except OSError:  # not Linux: a high-water mark that cannot be reset, so the baseline is the peak so far
        return peak_rss_mb("ru_maxrss"), "ru_maxrss"


def peak_rss_mb(method: str) -> float:
    if method == "VmHWM":
        return _proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB / 2**20
