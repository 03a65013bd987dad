"""Files and directories written so that a reader never sees them half-done: replaced in one
rename, on the disk before it. What a killed writer leaves beside them (a temporary sibling
named after its process, a directory moved aside) is put back (restore_aside) or swept
(sweep_temps) once that process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from mlxlora import procs


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of `name`: it names the process writing it, so a
    later sweep (sweep_temps) tells a killed writer's leftover from a live one's work."""
    return f".{name}.{os.getpid()}-"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A replaced `final` goes aside for a moment into `.NAME.old.*/NAME`: a process killed
    right then leaves it there, and restore_aside puts it back. The files reach the disk
    before the rename, and the rename before this returns: after a power loss `final` is the
    old or the new directory whole, never a new name over empty files."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final.name)))
    try:
        yield tmp
        _sync_tree(tmp)
        if final.exists():  # aside into a fresh folder: never over a sibling of the user's
            aside = Path(
                tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(f"{final.name}.old"))
            )
            os.replace(final, aside / final.name)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _sync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their directories
        _sync(path)
    _sync(root)


def _sync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync records the names in it; some
    file systems refuse it for directories, which then record them on their own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _temps(parent: Path, name_pattern: str) -> list[tuple[Path, int | None, bool]]:
    """(path, writer pid or None for a name written before temps carried one, is an aside)
    of the temporary siblings of the names `name_pattern` matches, as atomic_dir names them
    (`.NAME.PID-xxxxxxxx`, `.NAME.old.PID-xxxxxxxx`)."""
    shape = re.compile(rf"\.(?:{name_pattern})(?P<old>\.old)?\.(?:(?P<pid>\d+)-)?[a-z0-9_]{{8}}")
    found = []
    for path in parent.iterdir() if parent.is_dir() else ():
        match = shape.fullmatch(path.name)
        if match:
            pid = int(match["pid"]) if match["pid"] else None
            found.append((path, pid, bool(match["old"])))
    return found


def restore_aside(final: Path, *, held: bool = False) -> bool:
    """Put back a `final` directory that atomic_dir had moved aside when its process was
    killed: `final` missing, its last complete version in `.NAME.old.*/NAME` of a writer that
    is gone (or any writer's, where the caller holds the lock every writer holds). True when
    it restored one."""
    if final.exists():
        return False
    asides = [
        path / final.name
        for path, pid, old in _temps(final.parent, re.escape(final.name))
        if old and _left_behind(path, pid, held) and (path / final.name).is_dir()
    ]
    if not asides:
        return False
    newest = max(asides, key=lambda p: p.parent.stat().st_mtime)  # the one moved aside last
    try:
        os.replace(newest, final)
    except OSError:  # another reader restored it first
        return final.exists()
    with suppress(OSError):  # the aside directory, empty now
        newest.parent.rmdir()
    return True


def _left_behind(path: Path, pid: int | None, held: bool) -> bool:
    """Whether the temporary `path` written by `pid` (None: by a version that did not name
    its writer) is no live process's work: its writer is gone, or the pid names a process
    started after it was written."""
    if held:
        return True
    try:
        written = path.lstat().st_mtime
    except FileNotFoundError:  # another sweep took it
        return False
    return pid is not None and not procs.owner_alive(pid, written=written)


def sweep_temps(parent: Path, name_pattern: str, *, held: bool = False) -> None:
    """Remove the temporary siblings (atomic_dir's, an import's) that a killed process left
    in `parent` for the names `name_pattern` matches: those whose writer is gone, or all of
    them where the caller holds the lock every writer of them holds (`held`: a resumed run
    for its own adapters)."""
    for path, pid, _ in _temps(parent, name_pattern):
        if _left_behind(path, pid, held):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
