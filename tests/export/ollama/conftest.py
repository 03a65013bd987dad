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


FAKE_OLLAMA = """#!{python}
# A stand-in for `ollama` that records each call (argv and working directory) as a JSON
# line, checks that a Modelfile's FROM/ADAPTER files exist, and lists what it created.
import json, os, pathlib, sys
state = pathlib.Path(__file__).parent
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if os.environ.get("FAKE_OLLAMA_FAIL"):
    sys.exit("Error: could not connect to ollama app, is it running?")
models = state / "models.txt"
if sys.argv[1] == "create":
    modelfile = pathlib.Path(sys.argv[4])
    for line in modelfile.read_text().splitlines():
        word, _, value = line.partition(" ")
        path = modelfile.parent / value.strip('"')
        if word in ("FROM", "ADAPTER") and value.startswith('"./') and not path.is_file():
            sys.exit(f"Error: no such file {{path}}")
    with open(models, "a") as f:
        f.write(sys.argv[2] + "\\n")
elif sys.argv[1] == "list":
    print("NAME                ID              SIZE      MODIFIED")
    for name in (models.read_text().split() if models.exists() else []):
        print(f"{{name if ':' in name else name + ':latest'}}    0123456789ab    1.0 MB    now")
"""


class FakeOllama:
    def __init__(self, folder: Path):
        self.folder = folder

    def calls(self) -> list[dict]:
        import json

        log = self.folder / "calls.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines]


@pytest.fixture
def fake_ollama(tmp_path, monkeypatch):
    """An `ollama` executable first on PATH that records the commands it was given."""
    import os
    import sys

    folder = tmp_path / "fake-ollama"
    folder.mkdir()
    script = folder / "ollama"
    script.write_text(FAKE_OLLAMA.format(python=sys.executable), "utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return FakeOllama(folder)


@pytest.fixture
def no_ollama(monkeypatch, tmp_path):
    """PATH without any `ollama` (the Python and system tools stay reachable)."""
    import os
    import sys

    keep = [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))
    import shutil

    assert shutil.which("ollama") is None
