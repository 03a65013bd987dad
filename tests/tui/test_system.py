"""The System tab: live memory, the running job's peak, disk use, doctor's facts."""

from __future__ import annotations

import asyncio
import os
import time
from importlib import metadata
from pathlib import Path

import pytest

from mlxlora import machine, runs
from mlxlora.events import EventWriter, RunStarted, Step
from mlxlora.memory import fmt_bytes
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens import system
from mlxlora.tui.screens.system import Facts

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
T0 = 1_764_000_000.0  # fixed event times: nothing on screen depends on the clock


def as_bytes(shown: str) -> float:
    number, unit = shown.split()[:2]
    return float(number) * UNITS[unit]


def meminfo_kib() -> dict[str, int]:
    fields = (line.split() for line in Path("/proc/meminfo").read_text().splitlines())
    return {f[0].rstrip(":"): int(f[1]) for f in fields if len(f) == 3}


def running_run(name: str, peak_gb: float) -> Path:
    """A run that a live process (this one) is training: lock, config, started and one step."""
    path = runs.runs_root() / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\nmodel: builtin:tiny\n", encoding="utf-8")
    (path / ".lock").write_text(str(os.getpid()))
    with EventWriter(path / "events.jsonl") as events:
        events.emit(
            RunStarted(str(path), "builtin:tiny", "mlx", "cpu", 8, 2, 40, 4, 10, 99, 0.5, time=T0)
        )
        step(events, 7, peak_gb)
    return path


def step(events: EventWriter, n: int, peak_gb: float) -> None:
    events.emit(Step(n, 0.5, 2.0, 1e-4, 100, 900.0, peak_gb, time=T0 + n))


async def until(pilot, condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="Linux figures")
def test_memory_doctor_disk_and_the_running_job(home):
    run = running_run("日本語-run-20261125-093000", 1.25)
    disk = machine.disk_use(home)

    async def go():
        app = MlxloraApp("system")
        async with app.run_test(size=(80, 24)) as pilot:
            memory, machine_box = (
                app.query_one("#sys-memory", Facts),
                app.query_one("#sys-machine", Facts),
            )
            await until(
                pilot, lambda: "device" in machine_box.rows and "training budget" in memory.rows
            )
            shown, kib = memory.rows, meminfo_kib()
            assert shown["total"] == fmt_bytes(kib["MemTotal"] * 1024)
            # read moments apart, while another test (xdist's other worker) may take a GB
            assert abs(as_bytes(shown["available"]) - kib["MemAvailable"] * 1024) < 2**31
            used = (kib["MemTotal"] - kib["MemAvailable"]) * 1024
            assert abs(as_bytes(shown["used"]) - used) < 2**31
            assert shown["GPU may use"] == "- (no GPU in use)"  # the CPU trains here
            assert (
                machine_box.rows["device"] == "cpu" and machine_box.rows["backend (auto)"] == "mlx"
            )
            assert machine_box.rows["mlx"] == metadata.version("mlx")
            assert shown["running job"] == run.name
            assert shown["its peak"] == "1.2 GiB at step 7, estimated 476.8 MiB"
            disk_rows = app.query_one("#sys-disk", Facts).rows
            assert disk_rows["path"] == str(home) and disk_rows["disk use"] == fmt_bytes(disk.bytes)

            with EventWriter(run / "events.jsonl") as events:
                step(events, 8, 2.5)  # the tail reads it at the next refresh
            await until(pilot, lambda: "step 8" in memory.rows["its peak"], seconds=10)
            assert memory.rows["its peak"].startswith("2.3 GiB at step 8")
            (run / ".lock").unlink()  # training ended
            await until(pilot, lambda: memory.rows["running job"] == "none", seconds=10)

    asyncio.run(go())


def test_a_failing_doctor_is_shown_not_raised(home, monkeypatch):
    async def broken() -> dict:
        raise RuntimeError("error: no backend")

    monkeypatch.setattr(system, "doctor_report", broken)

    async def go():
        app = MlxloraApp("system")
        async with app.run_test(size=(80, 24)) as pilot:
            machine_box = app.query_one("#sys-machine", Facts)
            await until(pilot, lambda: "failed" in machine_box.rows.get("doctor", ""))
            assert machine_box.rows == {"doctor": "failed: error: no backend"}
            memory = app.query_one("#sys-memory", Facts)
            await until(pilot, lambda: memory.rows.get("GPU may use") == "unknown")
            assert "total" in memory.rows  # the live figures do not need doctor

    asyncio.run(go())


def test_a_workspace_that_is_a_file_is_flagged_as_doctor_flags_it(tmp_path, monkeypatch):
    """MLXLORA_HOME naming a file: `mlxlora doctor` said so, the System tab showed the path
    with 0 B used as if all were well."""
    workspace = tmp_path / "mlxlora-home"
    workspace.write_text("", encoding="utf-8")
    monkeypatch.setenv("MLXLORA_HOME", str(workspace))

    async def go():
        app = MlxloraApp("system")
        async with app.run_test(size=(80, 24)) as pilot:
            disk = app.query_one("#sys-disk", Facts)
            await until(pilot, lambda: "path" in disk.rows)
            assert disk.rows["path"] == (
                f"{workspace} (it is a file, not a directory: set MLXLORA_HOME to a directory)"
            )

    asyncio.run(go())


# --- snapshots ------------------------------------------------------------------------------

DOCTOR = {
    "mlxlora": "0.1.0",
    "python": "3.12.4 (/Users/me/.venv/bin/python)",
    "platform": "Darwin 24.1.0 arm64",
    "backend": "mlx",
    "device": "gpu",
    "dtype": "model dtype",
    "blas": "Metal/CUDA kernels",
    "versions": {"mlx": "0.29.0", "mlx-lm": "0.28.0", "textual": "8.2.8"},
    "memory_total_bytes": 16 * 2**30,
    "training_budget_bytes": 12 * 2**30,
    "device_budget_bytes": 11 * 2**30 + 2**29,
    "workspace": "/Users/me/.mlxlora",
    "workspace_disk_free_bytes": 120 * 2**30,
    "hf_cache": "/Users/me/.cache/huggingface/hub",
    "hf_offline": False,
}


@pytest.fixture
def fixed_machine(home, monkeypatch):
    """Live figures replaced by fixed ones. Allowed here: what a snapshot tests is the layout,
    and the real figures (memory, disk, this machine's doctor) change from run to run."""

    async def doctor() -> dict:
        return DOCTOR

    monkeypatch.setattr(system, "doctor_report", doctor)
    monkeypatch.setattr(machine, "memory_usage", lambda: machine.MemoryUsage(16 * 2**30, 5 * 2**30))
    monkeypatch.setattr(machine, "disk_use", lambda root: machine.DiskUse(3 * 2**30 + 2**28, True))
    monkeypatch.setattr(machine, "disk_free", lambda root: 120 * 2**30)
    monkeypatch.setattr(system, "home", lambda: Path("/Users/me/.mlxlora"))
    running_run("医療専門知識モデル_v1-20261125-093000", 2.75)


async def settled(pilot) -> None:
    box = pilot.app.query_one("#sys-machine", Facts)
    await until(pilot, lambda: "device" in box.rows)
    await until(pilot, lambda: "training budget" in pilot.app.query_one("#sys-memory", Facts).rows)
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_system_snapshot(fixed_machine, snap_compare, size):
    assert snap_compare(MlxloraApp("system"), terminal_size=size, run_before=settled)


def test_an_older_memory_sample_does_not_land_after_a_newer_one(home, monkeypatch):
    """A thread worker a newer sample cancelled runs on: a sample slow to read (`vm_stat` on a
    busy Mac) came after the one taken since, and the box showed figures 2 s old."""
    calls, first_done = [], []

    def first_read_slowly() -> machine.MemoryUsage:
        calls.append(None)
        if len(calls) == 1:
            usage = machine.MemoryUsage(16 * 2**30, 1 * 2**30)  # read before memory was freed
            time.sleep(1.0)  # ctrl+r samples again meanwhile
            first_done.append(usage)
            return usage
        return machine.MemoryUsage(16 * 2**30, 5 * 2**30)

    monkeypatch.setattr(machine, "memory_usage", first_read_slowly)
    monkeypatch.setattr(system, "MEMORY_SECONDS", 600.0)  # no timer's sample in between

    async def go():
        app = MlxloraApp("system")
        async with app.run_test(size=(80, 24)) as pilot:
            memory = app.query_one("#sys-memory", Facts)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: memory.rows.get("available") == fmt_bytes(5 * 2**30))
            await until(pilot, lambda: first_done)
            await pilot.pause(0.3)
            assert memory.rows["available"] == fmt_bytes(5 * 2**30)

    asyncio.run(go())
