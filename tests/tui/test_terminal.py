"""End to end in a real terminal: tmux runs `mlxlora` alone, keys are sent, and the pane
shows a queued run training and finishing (the app starts the runner; training happens in its
child process, never in the app)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlxlora import config, queue

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt tmux)")


def tmux(*args: str) -> str:
    out = subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)
    return out.stdout


def wait_for(session: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pane = tmux("capture-pane", "-p", "-t", session)
        if text in pane:
            return pane
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{pane}")


def test_mlxlora_alone_opens_the_studio_and_shows_a_run_finishing(home, tmp_path):
    cfg = config.load(REPO / "configs" / "tiny.yaml", ["name=端末テスト", "training.max_steps=20"])
    queue.add_train(cfg.to_yaml(), cfg.name)
    session = f"mlxlora-{uuid.uuid4().hex[:8]}"
    command = (
        f"cd {shlex.quote(str(tmp_path))} && MLXLORA_HOME={shlex.quote(str(home))} "
        f"{shlex.quote(sys.executable)} -m mlxlora"
    )
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        wait_for(session, "Datasets", 30)  # the studio, not the help text
        tmux("send-keys", "-t", session, "3")
        pane = wait_for(session, "finished", 180)
        assert "端末テスト" in pane
        tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 10
        while session in tmux("list-sessions") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session not in tmux("list-sessions")  # the app quit on ctrl+q
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    deadline = time.monotonic() + 30  # the runner records the job once its child has exited
    while [j.state for j in queue.jobs()] != ["done"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [j.state for j in queue.jobs()] == ["done"]
    assert os.environ.get("MLXLORA_HOME") == str(home)


def test_mlxlora_alone_without_a_terminal_prints_its_help(home):
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: mlxlora")
    assert "tui" in out.stdout and "textual" not in out.stderr
