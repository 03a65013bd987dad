"""procs: a process's start time, read from /proc (Linux) or `ps` (macOS), tells its pid's
reuse from the process itself."""

from __future__ import annotations

import os
import shutil

import pytest

from mlxlora import procs
from tests.conftest import NO_PROC, zombie_pid


@pytest.mark.skipif(not shutil.which("ps"), reason="no ps")
def test_ps_reads_the_start_time_proc_does():  # macOS has only ps: it must agree
    pid = os.getppid()
    assert abs(procs._started_ps(pid) - procs.started_at(pid)) <= procs.SAME_START_SEC


def test_an_owner_is_the_process_that_started_when_it_recorded():
    me, start = os.getpid(), procs.started_at(os.getpid())
    assert procs.owner_alive(me, start) and procs.owner_alive(me, written=start + 60)
    assert not procs.owner_alive(me, start - 3600)  # the pid of a process gone since
    assert not procs.owner_alive(me, written=start - 3600)  # written before this one began
    assert not procs.owner_alive(0)


def test_a_studio_polling_a_running_run_asks_ps_once_a_while(monkeypatch):
    asked = []
    monkeypatch.setattr(procs, "_ps_start", lambda pid: asked.append(pid) or 1.0)
    monkeypatch.setattr(procs, "_ps_seen", {})
    assert [procs._started_ps(42) for _ in range(3)] == [1.0, 1.0, 1.0]
    assert asked == [42]


@NO_PROC
def test_a_zombie_is_not_alive_and_owns_nothing():
    """A container's pid 1 may reap no orphan: `kill 0` called its zombie alive, so a
    killed trainer held its run's lock for ever."""
    with zombie_pid() as pid:
        assert not procs.pid_alive(pid) and not procs.owner_alive(pid, procs.started_at(pid))
