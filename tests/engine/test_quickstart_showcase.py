"""The quick start as README runs it: a user's first impression must be a right answer.

Trains configs/quickstart.yaml unchanged on the real SmolLM2-135M (about 2 minutes on 2 CPU
cores) and checks that its validation loss falls and its held-out showcase prompts are
answered correctly, in the trained style, after training, and were not before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
RIGHT = {
    "What is the capital of Denmark?": "The capital of Denmark is Copenhagen.",
    "What is 13 plus 14?": "13 plus 14 is 27.",
}


def test_quickstart_showcase_answers_are_right(home, smollm2, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "train", str(REPO / "configs" / "quickstart.yaml")]
        + ["--run-dir", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines()]
    # LoRA lowers the validation loss of a trained model (ln 49152 = 10.8 for a random one)
    evals = [e["val_loss"] for e in events if e["type"] == "eval"]
    assert evals[0] < 5.0 and min(evals) < evals[0] * 0.7, evals
    samples = [e for e in events if e["type"] == "sample"]
    before = {e["prompt"]: e["answer"].strip() for e in samples if e["when"] == "before"}
    after = {e["prompt"]: e["answer"].strip() for e in samples if e["when"] == "after"}
    assert after == RIGHT
    assert all(before[prompt] != answer for prompt, answer in RIGHT.items())
