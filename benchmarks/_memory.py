"""Memory measures the benchmarks share (Linux): the RSS now, and the kernel's peak-RSS mark, reset and read."""

from __future__ import annotations

import os


def rss_now() -> int:
    """This process's resident set size now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """Peak RSS since the last reset (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
