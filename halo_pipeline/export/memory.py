"""The peak memory of a conversion: the converting process's own, not its parent's."""

from __future__ import annotations

import resource
import sys


def own_peak_rss_mb() -> float:
    """This process's own peak resident memory (MB) since it started its program.

    On Linux that is `VmHWM` in /proc/self/status: the high-water mark of the process's own address space.
    Not `getrusage(RUSAGE_SELF).ru_maxrss`: a process started with fork + exec (any `subprocess`) keeps its
    parent's peak there, since the kernel carries the pre-exec high-water mark over — a converter started from
    a pipeline holding 5 GB reported 5 GB for converting a 135M model. Elsewhere ru_maxrss is what there is
    (kilobytes, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)
