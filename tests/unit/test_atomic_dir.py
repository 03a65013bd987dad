"""atomic.atomic_dir: a directory replaced in one rename, nothing beside it touched; what a
killed writer leaves is put back (restore_aside) or swept (sweep_temps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlxlora.atomic import atomic_dir, restore_aside, sweep_temps
from mlxlora.errors import RunError
from mlxlora.outputs import OUTPUT_MARKER, check_output_dir, output_dir

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_a_replaced_directory_leaves_its_siblings_alone(tmp_path):
    final, sibling = tmp_path / "out", tmp_path / ".out.old"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("the user's")  # a name the old code used for its aside
    for text in ("first", "second"):
        with atomic_dir(final) as tmp:
            (tmp / "v.txt").write_text(text)
    assert (final / "v.txt").read_text() == "second"
    assert (sibling / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_a_failed_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "v.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "v.txt").write_text("half")
        raise RuntimeError("killed")
    assert (final / "v.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILL_IN_SWAP = """
import os, signal, sys
from pathlib import Path
from mlxlora.atomic import atomic_dir

real = os.replace
def replace(src, dst):  # killed (-9) once the old directory is aside, before the new lands
    real(src, dst)
    if ".old." in Path(dst).parent.name:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "v.txt").write_text("new")
"""


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_swap_killed_half_way_is_restored_and_its_leftovers_swept(tmp_path):
    final = tmp_path / "best"
    with atomic_dir(final) as tmp:
        (tmp / "v.txt").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILL_IN_SWAP, str(final)], env=ENV)
    assert killed.returncode == -signal.SIGKILL
    assert not final.exists()  # the old one aside, the new one in its temporary directory
    assert len(list(tmp_path.iterdir())) == 2

    assert restore_aside(final)
    assert (final / "v.txt").read_text() == "old"  # the last complete one
    assert len(list(tmp_path.iterdir())) == 2  # the emptied aside directory is gone too
    sweep_temps(tmp_path, "best")
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_a_sweep_spares_a_live_writers_directory_and_the_users_own(tmp_path):
    leftover = tmp_path / f".out.{dead_pid()}-abcdefgh"
    theirs = [
        tmp_path / ".out.old",
        tmp_path / ".out.keep",
        tmp_path / f".other.{dead_pid()}-abcdefgh",
    ]
    for path in (leftover, *theirs):
        path.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        sweep_temps(tmp_path, "out")  # another process's sweep while this one writes
        assert tmp.is_dir()
    assert not leftover.exists()
    assert all(p.is_dir() for p in theirs)
    assert not restore_aside(tmp_path / "missing")  # nothing aside: nothing made up


def test_an_output_moved_aside_by_a_killed_export_comes_back_and_its_leftovers_go(tmp_path):
    out, pid = tmp_path / "export" / "model", dead_pid()
    aside, half = (tmp_path / "export" / f".model{old}.{pid}-abcdefgh" for old in (".old", ""))
    (aside / "model").mkdir(parents=True)  # the previous export, moved aside by the killed one
    (aside / "model" / "Modelfile").write_text("FROM ./model.gguf\n")
    (aside / "model" / OUTPUT_MARKER).write_text('{"command": "export"}')
    half.mkdir()  # the killed export's half-written files
    check_output_dir(out, "export")  # as every command that writes one does first
    with pytest.raises(RuntimeError), output_dir(out, "export"):
        raise RuntimeError("this export fails too")
    assert (out / "Modelfile").read_text() == "FROM ./model.gguf\n"
    assert [p.name for p in out.parent.iterdir()] == ["model"]


def test_a_directory_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    """A power loss after the rename could leave the new name over empty files."""
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"w")
        (tmp / "state.json").write_text("{}")
        assert synced == []
    names = [os.path.basename(p) for p in synced]
    assert {"weights.bin", "state.json", "sub"} <= set(names)  # in the temporary directory
    assert names[-1] == tmp_path.name  # the rename itself, last


@pytest.mark.parametrize("out", [".", "", "..", "sub/.."])
def test_the_working_directory_is_no_output_directory(tmp_path, monkeypatch, out):
    """`merge A B --out .` in an empty folder ended in a traceback (the rename of "." into a
    `..old.*` folder: Device or resource busy) and left that folder behind."""
    (tmp_path / "cwd" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(RunError, match=r"the working directory; choose another --out directory"):
        check_output_dir(Path(out), "merge", replace=False)
    assert sorted(os.listdir()) == ["sub"]
