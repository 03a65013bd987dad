"""Live machine figures: memory as `free` counts it, workspace disk use as `du` counts it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mlxlora import machine
from mlxlora.memory import GIB

# `vm_stat` on a 16 GB Apple Silicon Mac (pages of 16 KiB).
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               12000.
Pages active:                            400000.
Pages inactive:                          300000.
Pages speculative:                         8000.
Pages throttled:                              0.
Pages wired down:                        200000.
Pages purgeable:                           5000.
"Translation faults":                 123456789.
Pages stored in compressor:              100000.
"""


@pytest.mark.skipif(not shutil.which("free"), reason="needs procps free")
def test_memory_matches_free():
    usage = machine.memory_usage()
    mem = subprocess.run(["free", "-b"], capture_output=True, text=True).stdout.splitlines()[1]
    total, available = int(mem.split()[1]), int(mem.split()[-1])
    assert usage.total == total
    assert abs(usage.available - available) < 256 * 2**20  # other processes come and go
    assert usage.used == usage.total - usage.available and 0 < usage.used < usage.total


def test_vm_stat_free_inactive_and_speculative_pages_are_available():
    usage = machine.parse_vm_stat(16 * 2**30, VM_STAT)
    assert usage.available == (12000 + 300000 + 8000) * 16384
    assert usage.used == 16 * 2**30 - usage.available


def test_meminfo_without_available_is_no_figure(monkeypatch, tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       16000000 kB\nMemFree:        100 kB\n")
    monkeypatch.setattr(machine, "MEMINFO", fake)
    monkeypatch.setattr(machine.sys, "platform", "linux")
    assert machine.memory_usage() is None


def workspace_tree(root):
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "weights").write_bytes(os.urandom(300_000))
    (root / "runs" / "東京-1").mkdir(parents=True)
    (root / "runs" / "東京-1" / "events.jsonl").write_text("x" * 5000)
    os.link(root / "models" / "tiny" / "weights", root / "runs" / "東京-1" / "linked")
    (root / "runs" / "loop").symlink_to(root)  # never followed
    (root / "small").write_text("a")


@pytest.mark.skipif(not shutil.which("du"), reason="needs du")
def test_disk_use_counts_like_du(tmp_path):
    workspace_tree(tmp_path / "ws")
    du = subprocess.run(["du", "-s", "--block-size=1", tmp_path / "ws"], capture_output=True)
    found = machine.disk_use(tmp_path / "ws")
    assert found.complete and found.bytes == int(du.stdout.split()[0])
    assert found.bytes > 300_000


def test_disk_use_is_bounded(tmp_path):
    workspace_tree(tmp_path / "ws")
    partial = machine.disk_use(tmp_path / "ws", max_entries=2)
    assert not partial.complete and partial.bytes < machine.disk_use(tmp_path / "ws").bytes
    assert machine.disk_use(tmp_path / "missing") == machine.DiskUse(0, complete=True)


def test_disk_free_of_a_workspace_not_made_yet(tmp_path):
    expected = shutil.disk_usage(tmp_path).free
    assert abs(machine.disk_free(tmp_path / "not" / "yet") - expected) < 64 * 2**20


# --- the training budget ---------------------------------------------------------------------


def test_budget_on_apple_silicon(monkeypatch):
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(machine, "total_memory", lambda: 16 * GIB)
    assert machine.memory_budget() == 12 * GIB


def test_budget_on_linux_is_the_memory_available_now(monkeypatch):
    """All of the RAM was the budget: a fit planned 23.3 of 23.5 GiB on a machine without
    swap, with the system and other programs in the rest (a QA finding)."""
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(machine, "memory_usage", lambda: machine.MemoryUsage(64 * GIB, 40 * GIB))
    monkeypatch.setattr(machine, "cgroup_room", lambda: None)
    assert machine.memory_budget() == 40 * GIB
    monkeypatch.setattr(machine, "cgroup_room", lambda: 8 * GIB)
    assert machine.memory_budget() == 8 * GIB
    monkeypatch.setattr(machine, "memory_usage", lambda: None)  # unknown: the RAM
    monkeypatch.setattr(machine, "total_memory", lambda: 16 * GIB)
    assert machine.memory_budget() == 8 * GIB
    monkeypatch.setattr(machine, "total_memory", lambda: None)
    assert machine.memory_budget() is None


def group(folder, limit, usage, inactive=0, v1=False):
    """A memory cgroup's files as the kernel writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
        if v1
        else ("memory.max", "memory.current")
    )
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{usage}\n")
    key = "total_inactive_file" if v1 else "inactive_file"
    (folder / "memory.stat").write_text(f"active_file 5\n{key} {inactive}\nunevictable 0\n")


def test_a_containers_cgroup_v2_limit_leaves_its_room(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    group(tmp_path / "fs", 4 * GIB, 3 * GIB, inactive=GIB)  # its file cache is reclaimed first
    assert machine.cgroup_room(tmp_path / "fs", proc) == 2 * GIB
    (tmp_path / "fs" / "memory.max").write_text("max\n")
    assert machine.cgroup_room(tmp_path / "fs", proc) is None


def test_a_cgroup_v1_limit_is_read_and_the_tightest_group_above_counts(tmp_path):
    """Only v2's memory.max was read: in a v1 container (an older host; this machine is one)
    the budget was MemAvailable, the whole host's."""
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/docker/abc\n1:cpu:/\n0::/\n")
    root = tmp_path / "fs"
    group(root / "memory", 9223372036854771712, 9 * GIB, v1=True)  # v1's "no limit"
    group(root / "memory" / "docker", 9223372036854771712, 5 * GIB, v1=True)
    group(root / "memory" / "docker" / "abc", 8 * GIB, 2 * GIB, v1=True)
    assert machine.cgroup_room(root, proc) == 6 * GIB
    group(root / "memory" / "docker", 7 * GIB, 6 * GIB, v1=True)  # every container's limit
    assert machine.cgroup_room(root, proc) == GIB
    seen_inside = tmp_path / "inside"  # the container's own view: its group is the root
    group(seen_inside / "memory", 8 * GIB, 2 * GIB, inactive=GIB, v1=True)
    assert machine.cgroup_room(seen_inside, proc) == 7 * GIB
    assert machine.cgroup_room(tmp_path / "none", proc) is None
    (seen_inside / "memory" / "memory.stat").unlink()  # the limit holds without the cache
    proc.write_text("\ngarbage\n4:memory:/docker/abc\n")  # lines not id:controllers:path
    assert machine.cgroup_room(seen_inside, proc) == 6 * GIB


def test_a_full_cgroup_leaves_a_budget_of_one_byte_not_none(monkeypatch):
    """Room 0 (or less) was a budget of 0, which every guard reads as "no budget"."""
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(machine, "memory_usage", lambda: machine.MemoryUsage(64 * GIB, 40 * GIB))
    for room in (0, -GIB):
        monkeypatch.setattr(machine, "cgroup_room", lambda room=room: room)
        assert machine.memory_budget() == 1


def test_this_machine_has_memory():
    assert machine.total_memory() > 256 * 1024**2


def test_the_training_device_is_guessed_then_learned_from_doctor(monkeypatch):
    """The platform's guess imports no backend; doctor's report (a CUDA card) replaces it,
    and the card's own memory becomes the budget (a Mac's stays its unified memory's)."""
    from mlxlora import memory, memory_weights

    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(machine, "memory_budget", lambda: 20 * GIB)
    guess = machine.training_device()
    cpu = machine.TrainingDevice("cpu", "blocked", evaluation="depth-first")
    assert guess == cpu and guess.budget == 20 * GIB
    shape = memory.TrainShape()
    assert memory.shape_here(shape) == memory.on_cpu(shape)
    assert machine.learn_training_device({"device": None, "attention": None}) is False  # no backend
    cuda = {
        "device": "gpu (CUDA, NVIDIA H100)",
        "attention": "fused",
        "evaluation": "eager",
        "device_budget_bytes": 80 * GIB,
    }
    assert machine.learn_training_device({**cuda, "backend": "torch"}) is True
    assert machine.training_device().budget == 80 * GIB and not machine.training_device().on_cpu
    # bf16, as on a GPU, evaluated as torch does
    assert memory.shape_here(shape) == memory.TrainShape(attention="fused", evaluation="eager")
    info = {"params": 1000, "weight_bytes": 500, "quantization": None}
    assert memory_weights.weights_here(info) == 500  # what the files hold, not float32
    assert machine.learn_training_device({**cuda, "backend": "torch"}) is False  # nothing new
    assert machine.training_device("torch") == machine.training_device()
    assert machine.training_device("mlx") == guess  # a config forcing another backend: its own

    monkeypatch.setattr(machine, "is_apple_silicon", lambda: True)
    metal = {"device": "gpu", "attention": "unfused", "device_budget_bytes": 11 * GIB}
    assert machine.learn_training_device(metal) is True
    assert machine.training_device().budget == 20 * GIB  # unified: the machine's budget
