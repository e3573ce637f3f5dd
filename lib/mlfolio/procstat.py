"""What a process used so far, read from Linux's /proc: its peak resident memory and the
CPU seconds of its process tree. None where /proc cannot tell (no such process, not Linux)."""

from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mb(pid: int | None) -> float | None:
    """A process's peak resident memory so far (``VmHWM`` in ``/proc/<pid>/status``), in
    MB; None where it cannot be read (no such process, no /proc)."""
    if not pid:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of a process and its descendants so far: each live one's
    own and that of the children it reaped (``/proc/<pid>/stat``); None without /proc."""
    if not pid or _stat_fields(str(pid)) is None:
        return None
    children: dict[str, list[str]] = {}
    stats: dict[str, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) is not None:
            stats[entry.name] = fields
            children.setdefault(fields[1], []).append(entry.name)
    ticks, todo = 0, [str(pid)]
    while todo:
        one = todo.pop()
        if one in stats:  # utime, stime, cutime, cstime: fields 14-17 of stat(5)
            ticks += sum(int(v) for v in stats[one][11:15])
        todo.extend(children.get(one, ()))
    return round(ticks / os.sysconf("SC_CLK_TCK"), 2)
