"""Fixtures of the Ollama export tests: Go's renderer of TEMPLATEs, built once a session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GO_PROGRAM = Path(__file__).parent / "gotemplate" / "main.go"


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """A function rendering (Go TEMPLATE, messages) with Go's text/template like Ollama."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go (Debian: apt-get install golang-go; ./install.sh dev does)")
    folder = tmp_path_factory.mktemp("gotemplate")
    binary = folder / "render"
    env = {
        "GOCACHE": str(folder / "cache"),
        "GOPATH": str(folder / "path"),
        "HOME": str(folder),
        "PATH": "/usr/bin:/bin",
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
    }
    subprocess.run([go, "build", "-o", str(binary), str(GO_PROGRAM)], check=True, env=env)

    def render(template: str, messages: list[dict]) -> str:
        import json

        request = json.dumps({"template": template, "messages": messages})
        done = subprocess.run([binary], input=request, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render
