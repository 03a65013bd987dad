"""Whether the process that wrote a run's lock or a temporary directory still runs.

A pid alone cannot say: after a reboot or a power loss, when runs get killed, the pid of a
run's trainer soon names some other process. A process's start time can: the owner's is the
one recorded with its pid (or, where none was, no later than what it wrote). Read from /proc
on Linux, from `ps` elsewhere (macOS). Imports no mlx, torch or textual.
"""

from __future__ import annotations

import os
import subprocess
import time
from functools import cache
from pathlib import Path

# Two readings of one process's start time differ by up to this: `ps` gives whole seconds,
# and Linux's boot time (/proc/stat btime) may move by a second.
SAME_START_SEC = 2.0
PS_REUSE_SEC = 5.0  # a pid's start time read with `ps` is taken as known for this long
_ps_seen: dict[int, tuple[float, float]] = {}  # pid -> (when read, its start time)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs: a zombie does not (a container's pid 1 may reap no
    orphan, and a killed runner's training child is one); `kill 0` alone counts it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:  # the state is the first field after the command name (which may hold spaces)
        return _stat_fields(pid)[0] == "Z"
    except (OSError, IndexError):  # no /proc (macOS, whose launchd reaps every orphan)
        return False


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (in parentheses: it may hold
    spaces), from the state on."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when it cannot be told."""
    try:
        return _started_linux(pid)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return _started_ps(pid)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _started_linux(pid: int) -> float:
    ticks = int(_stat_fields(pid)[19])  # field 22: the start in clock ticks since boot
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


@cache
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _started_ps(pid: int) -> float:
    # a studio asks about each running run at every poll: one `ps` a pid per PS_REUSE_SEC
    checked, start = _ps_seen.get(pid, (0.0, 0.0))
    if time.monotonic() - checked > PS_REUSE_SEC:
        start = _ps_start(pid)
        _ps_seen[pid] = (time.monotonic(), start)
    return start


def _ps_start(pid: int) -> float:
    out = subprocess.run(
        ["ps", "-o", "lstart=", "-p", str(pid)],
        capture_output=True,
        text=True,
        timeout=5,
        env={**os.environ, "LC_ALL": "C"},  # English day and month names
    ).stdout.strip()
    return time.mktime(time.strptime(out, "%a %b %d %H:%M:%S %Y"))


def stamp() -> str:
    """This process as a lock records it: `PID START` (`PID` where the start is unknown)."""
    pid = os.getpid()
    start = started_at(pid)
    return f"{pid} {start:.2f}" if start is not None else str(pid)


def owner_alive(pid: int, started: float | None = None, written: float | None = None) -> bool:
    """Whether process `pid` that wrote something still runs: alive, and the same process,
    started when it recorded (`started`), or, where it recorded nothing, no later than
    `written` (the time of what it wrote). Alive where the start cannot be read."""
    if pid <= 0 or not pid_alive(pid):
        return False
    now = started_at(pid)
    if now is None:
        return True
    if started is not None:
        return abs(now - started) <= SAME_START_SEC
    return written is None or now <= written + SAME_START_SEC
