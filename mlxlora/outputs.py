"""The directories and files mlxlora writes where a user points it (fuse, export and merge
`--out`, the compare report): never in place of something that is not an earlier output of the
same command, never in or over a run or the workspace's folders, and with the permissions the
user's umask gives (tempfile's are private)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from mlxlora.atomic import atomic_dir, restore_aside, sweep_temps
from mlxlora.errors import MlxloraError, RunError
from mlxlora.runs import is_run_dir, read_json, runs_root

# Written into every directory that fuse, export and merge make for the user: it tells a later
# run of the same command that it may replace the directory (and nothing else).
OUTPUT_MARKER = ".mlxlora-output.json"
# What a file manager writes into a folder it shows (Finder, Explorer): not the user's data,
# so an earlier output holding them is still replaced.
FILE_MANAGER_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def check_output_dir(
    out: Path,
    command: str,
    *,
    default: Path | None = None,
    replace: bool = True,
    earlier: Callable[[Path], bool] | None = None,
    error: type[MlxloraError] = RunError,
) -> None:
    """Refuse an output directory (`--out`) that `command` must not replace, on one line.

    Refused: a file; a path that is, holds or lies inside a run directory, or the workspace's
    runs or datasets folder (`default`, the command's own place inside its run, is allowed);
    an existing non-empty directory unless `replace` and it is an earlier output of `command`:
    it holds that command's OUTPUT_MARKER, or (written before the marker) it is `default` or
    `earlier(out)` recognises it; and one holding a file that the command did not write, or
    that changed since (a user's notes, an edited Modelfile). atomic_dir replaces whatever it
    is given, so each user-facing command calls this first.
    """
    out = Path(out)
    restore_aside(out)  # an earlier output that a killed command had moved aside: judged too
    where = out.resolve()  # links followed: a link into a run is that run

    def refuse(why: str) -> None:
        raise error(f"{out}: {why}; choose another --out directory")

    if out.is_symlink():
        refuse("is a symbolic link")
    if out.exists() and not out.is_dir():
        refuse("is a file, not a directory")
    here = Path.cwd().resolve()
    if where == here or where in here.parents:  # "." cannot be renamed aside or into
        refuse("is or holds the working directory")
    is_default = default is not None and where == Path(default).resolve()
    if not is_default:
        from mlxlora.data.store import datasets_root

        for what, root in (("runs", runs_root()), ("datasets", datasets_root())):
            root = root.resolve()
            if where == root or root in where.parents:
                refuse(f"is in the workspace's {what} folder {root}")
            if where in root.parents:
                refuse(f"contains the workspace's {what} folder {root}")
        run = next((p for p in (where, *where.parents) if is_run_dir(p)), None)
        if run == where:
            refuse("is a run directory")
        if run is not None:
            refuse(f"is inside the run directory {run}")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not replace:
        refuse("exists and is not empty")
    marker = read_json(out / OUTPUT_MARKER)
    if marker:
        ours = marker.get("command") == command
    else:  # written before outputs had a marker: only where it is clearly one
        ours = is_default or bool(earlier and earlier(out))
    if not ours:
        refuse(f"exists and is not an earlier `mlxlora {command}` output")
    # Markers written before they listed the files carry no list: nothing to compare.
    changed = _changed_since(out, marker["files"]) if "files" in marker else None
    if changed:
        refuse(f"{changed} in it was added or changed after `mlxlora {command}` wrote it")
    inner = next((p.parent for p in out.rglob("config.yaml") if is_run_dir(p.parent)), None)
    if inner is not None:
        refuse(f"contains the run directory {inner}")


@contextmanager
def output_dir(out: Path, command: str):
    """atomic_dir for a directory the user asked for (fuse, export, merge): it also gets
    OUTPUT_MARKER and the permissions the user's umask gives (tempfile's are private: 0700)."""
    from mlxlora import __version__

    sweep_temps(out.parent, re.escape(out.name))  # what killed runs of a command left
    with atomic_dir(out) as tmp:
        yield tmp
        marker = {"command": command, "mlxlora": __version__, "files": _file_stamps(tmp)}
        (tmp / OUTPUT_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        permissions_from_umask(tmp)


def _file_stamps(folder: Path) -> dict[str, list[int]]:
    """Each file under `folder` but the marker, with its size and modification time (which
    the rename into place and chmod keep): what tells a later run of the command that a user
    added or edited something there."""
    stamps = {}
    for path in sorted(folder.rglob("*")):
        if path.name in FILE_MANAGER_FILES or path.name.startswith("._"):  # macOS AppleDouble
            continue
        if path.is_file() and path.name != OUTPUT_MARKER:
            stat = path.stat()
            stamps[path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _changed_since(folder: Path, written: dict) -> str | None:
    """The first file in `folder` that is not as its command wrote it (`written`, from the
    marker), or None."""
    return next(
        (name for name, stamp in _file_stamps(folder).items() if written.get(name) != stamp),
        None,
    )


def current_umask() -> int:
    """The process's umask; read from /proc where there is one (Linux), as changing it for a
    moment would affect files other threads create meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # the strictest value while it is swapped out
    os.umask(mask)
    return mask


def permissions_from_umask(path: Path) -> None:
    """Give `path` and everything under it the mode a plain mkdir or open would have given
    (0777 or 0666, less the umask; executables keep their x bits)."""
    mask = current_umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if p.is_symlink():
            continue
        full = 0o777 if p.is_dir() or p.stat().st_mode & 0o111 else 0o666
        os.chmod(p, full & ~mask)
