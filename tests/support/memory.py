"""A process's memory as /proc shows it: its resident set (VmRSS) and the peak of it (VmHWM), which can be started
again from the current RSS, so that a test measures the peak of what it did alone."""

from __future__ import annotations


def status_bytes(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure given in kB (``VmRSS``, ``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int) -> None:
    """Start VmHWM (the peak RSS) again from the RSS now (Linux: 5 written to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
