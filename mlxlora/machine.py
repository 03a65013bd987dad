"""What this machine has right now: memory in use and available (what `free -h` and Activity
Monitor show), the disk a workspace uses and the space left. Imports no mlx or torch.

It also gives the budget training plans against (`memory_budget`: about Metal's working set
on Apple Silicon, the memory available now elsewhere), which `mlxlora.memory` estimates fit,
and where `backend: auto` trains (`training_device`): guessed from the platform, or as a
`doctor` child process, which imports the backend, reported it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # what backends.select looks for first
# Metal's recommendedMaxWorkingSetSize, what MLX may keep resident on the GPU, is about
# 2/3 to 3/4 of unified memory depending on the machine; we plan with 3/4 of it.
UNIFIED_BUDGET_FRACTION = 0.75
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_UNLIMITED_ABOVE = 1 << 62  # v1 writes "no limit" as 2**63 - 1 rounded down to a page


@dataclass(frozen=True)
class MemoryUsage:
    """Bytes of physical (on Apple Silicon: unified) memory."""

    total: int
    available: int  # what programs can still get without swapping (MemAvailable)

    @property
    def used(self) -> int:
        """In use by programs: total less available, as `free` counts it."""
        return self.total - self.available


def memory_usage() -> MemoryUsage | None:
    """Total and available memory now, or None where this system does not say."""
    try:
        if sys.platform == "darwin":
            return _darwin_usage()
        return parse_meminfo(MEMINFO.read_text())
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None


def parse_meminfo(text: str) -> MemoryUsage:
    """MemTotal and MemAvailable of Linux's /proc/meminfo (given in KiB)."""
    kib = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            kib[key] = int(value.split()[0])
    return MemoryUsage(total=kib["MemTotal"] * 1024, available=kib["MemAvailable"] * 1024)


def _darwin_usage() -> MemoryUsage:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout

    return parse_vm_stat(int(run("sysctl", "-n", "hw.memsize")), run("vm_stat"))


def parse_vm_stat(total: int, text: str) -> MemoryUsage:
    """macOS: free, inactive and speculative pages of `vm_stat` are what programs can still get
    (file cache the system drops on demand), as Activity Monitor's "Memory Used" implies."""
    page = int(re.search(r"page size of (\d+) bytes", text)[1])
    pages = {
        key.strip(): int(value.strip().rstrip("."))
        for key, _, value in (line.partition(":") for line in text.splitlines()[1:])
        if value.strip().rstrip(".").isdigit()
    }
    free = sum(pages.get(f"Pages {kind}", 0) for kind in ("free", "inactive", "speculative"))
    return MemoryUsage(total=total, available=min(total, free * page))


def disk_free(path: Path) -> int | None:
    """Free bytes on the disk that holds `path` (or would: its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


@dataclass(frozen=True)
class DiskUse:
    bytes: int
    complete: bool  # False: the walk hit its bounds and `bytes` is a lower bound


def disk_use(root: Path, max_entries: int = 200_000, max_seconds: float = 10.0) -> DiskUse:
    """Bytes `root` takes on disk, as `du -s` counts them (allocated blocks, a hard-linked file
    once, symlinks not followed), walking at most `max_entries` entries or `max_seconds`."""
    deadline = time.monotonic() + max_seconds
    seen: set[tuple[int, int]] = set()
    try:
        total = _blocks(root.lstat())  # the directory itself, as du counts it
    except OSError:
        return DiskUse(0, complete=True)
    entries, stack = 0, [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as found:
                for entry in found:
                    entries += 1
                    if entries > max_entries or time.monotonic() > deadline:
                        return DiskUse(total, complete=False)
                    total += _allocated(entry, seen)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:  # vanished or unreadable while we walked: count the rest
            continue
    return DiskUse(total, complete=True)


def _allocated(entry: os.DirEntry, seen: set[tuple[int, int]]) -> int:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return 0
    if st.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
        if (st.st_dev, st.st_ino) in seen:
            return 0
        seen.add((st.st_dev, st.st_ino))
    return _blocks(st)


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def total_memory() -> int | None:
    """Physical memory in bytes (unified memory on Apple Silicon), or None if unknown."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.memsize"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return int(out.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cgroup_room(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> int | None:
    """Bytes this process's memory cgroup, and each group above it, leaves before its limit:
    the limit less what the group uses, its inactive file cache aside (reclaimed first, as
    `docker stats` counts it; the active cache is counted as used: on the safe side); None
    where no group sets one. cgroup v2, or v1 (a container on an older host, or this
    process's group seen from the host)."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        if line.count(":") < 2:  # not "id:controllers:path"
            continue
        _, controllers, path = line.split(":", 2)
        if not controllers:  # v2's unified hierarchy
            rooms += _rooms(root, path, "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            rooms += _rooms(root / "memory", path, *files)
    return min(rooms) if rooms else None


def _rooms(mount: Path, path: str, limit_file: str, usage_file: str, inactive_key: str):
    """The room under each limit from the group at `path` up to the mount's root (in a
    container the host's path is not there: its root is the container's group)."""
    group = mount / path.strip("/")
    group = group if group.is_dir() else mount
    for folder in (group, *group.parents):
        try:
            limit = int((folder / limit_file).read_text())
            usage = int((folder / usage_file).read_text())
        except (OSError, ValueError):  # v2 writes "max" for no limit
            limit = None
        if limit is not None and limit < CGROUP_UNLIMITED_ABOVE:
            yield limit - max(0, usage - _inactive_file(folder, inactive_key))
        if folder == mount:
            return


def _inactive_file(folder: Path, key: str) -> int:
    """The group's inactive file cache (memory.stat), 0 where it does not say."""
    try:
        lines = (folder / "memory.stat").read_text().splitlines()
    except OSError:
        return 0
    found = [line.split()[1] for line in lines if line.startswith(f"{key} ")]
    return int(found[0]) if found and found[0].isdigit() else 0


def is_apple_silicon() -> bool:
    import platform

    return sys.platform == "darwin" and platform.machine() == "arm64"


def unified_budget(total_bytes: int) -> int:
    """What training may use of a Mac with this much unified memory."""
    return int(total_bytes * UNIFIED_BUDGET_FRACTION)


def memory_budget() -> int | None:
    """Bytes training may use here: 3/4 of unified memory on Apple Silicon (about Metal's
    recommended working set, the GPU's share), else the memory available now (MemAvailable:
    what the system and other programs leave; all of the RAM let a fit plan 23.3 of 23.5 GiB
    on a machine without swap), capped by the room a cgroup limit leaves (a container's)."""
    if is_apple_silicon():
        total = total_memory()
        return unified_budget(total) if total else None
    usage = memory_usage()
    free = usage.available if usage else total_memory()
    if free is None:
        return None
    room = cgroup_room()
    return free if room is None else min(free, max(1, room))  # 0 would read as "no budget"


@dataclass(frozen=True)
class TrainingDevice:
    """Where a backend trains on this machine, as the memory estimate needs it."""

    device: str  # a BackendInfo's: "cpu", "gpu" (Metal), "gpu (CUDA, NVIDIA H100 ...)"
    attention: str  # how training keeps attention there (memory.ATTENTION_MODES)
    own_memory: int | None = None  # a discrete GPU's budget; None: the machine's memory
    # the backend doctor found there ("": the platform's guess); not what the estimate needs
    backend: str = field(default="", compare=False)
    evaluation: str = "gpu"  # how that backend evaluates a step there (memory.EVALUATIONS)

    @property
    def on_cpu(self) -> bool:
        return self.device.startswith("cpu")

    @property
    def budget(self) -> int | None:
        """Bytes training may use there: the GPU's own memory, else `memory_budget()` now."""
        return self.own_memory or memory_budget()


_reported: TrainingDevice | None = None


def training_device(backend: str = "auto") -> TrainingDevice:
    """Where a config's `backend` trains: what `doctor` reported for `auto`
    (`learn_training_device`), else the platform's guess, which imports no backend: a Mac
    trains on its GPU, anything else on the CPU. The guess is wrong only where an NVIDIA
    driver is (`maybe_cuda`): there torch may train on the GPU."""
    if _reported is not None and backend in ("auto", _reported.backend):
        return _reported
    if is_apple_silicon():
        return TrainingDevice("gpu", "unfused")
    return TrainingDevice("cpu", "blocked", evaluation="depth-first")


def maybe_cuda() -> bool:
    return NVIDIA_DRIVER.exists() and not is_apple_silicon()


def learn_training_device(report: dict) -> bool:
    """Take the device `mlxlora doctor --json` reported for `backend: auto`; True when it
    differs from what this process assumed (a CUDA GPU where the guess was the CPU)."""
    global _reported
    before = training_device()
    device, attention = report.get("device"), report.get("attention")
    if not device or not attention:  # no backend installed, or a doctor from before attention
        return False
    gpu_memory = not device.startswith("cpu") and not is_apple_silicon()  # a Mac's is unified
    own = report.get("device_budget_bytes") if gpu_memory else None
    evaluation = report.get("evaluation") or ("depth-first" if device.startswith("cpu") else "gpu")
    _reported = TrainingDevice(device, attention, own, report.get("backend", ""), evaluation)
    return _reported != before
