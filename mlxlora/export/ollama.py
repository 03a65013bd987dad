"""The `ollama` binary: create a model from a Modelfile and check that Ollama lists it.

Ollama's own CLI is the supported way to add a model to its store (it hashes the files into
blobs and writes the manifest); without it on PATH we print the exact command instead.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mlxlora.errors import ExportError


def binary() -> str | None:
    """The `ollama` executable on PATH, or None."""
    return shutil.which("ollama")


def create_command(name: str, modelfile: Path) -> list[str]:
    return ["ollama", "create", name, "-f", str(modelfile)]


def shell_command(name: str, modelfile: Path) -> str:
    """The command a user runs (copy and paste) to create the model."""
    return shlex.join(create_command(name, modelfile))


def create(name: str, modelfile: Path, ollama: str) -> None:
    """`ollama create NAME -f MODELFILE`, then check `ollama list` shows NAME (ExportError if
    either fails). Ollama's progress goes to our stderr: our stdout may be a JSON stream."""
    command = [ollama, *create_command(name, modelfile)[1:]]
    done = subprocess.run(
        command, cwd=modelfile.parent, stdout=sys.stderr, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise ExportError(f"`{shell_command(name, modelfile)}` failed: {_last_line(done.stderr)}")
    if not listed(name, ollama):
        raise ExportError(f"`ollama create` succeeded but `ollama list` does not show {name}")


def listed(name: str, ollama: str) -> bool:
    """Whether `ollama list` shows `name` (`name:latest` when it has no tag)."""
    done = subprocess.run([ollama, "list"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"`ollama list` failed: {_last_line(done.stderr)}")
    wanted = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    shown = {line.split()[0].lower() for line in done.stdout.splitlines()[1:] if line.split()}
    return wanted.lower() in shown


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
