"""benchmarks/torch_vs_trainer.py runs end to end at its tiny shape on the CPU: both sides
train the same sequences and report throughput, peak memory and their ratios."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("peft")

from tests.conftest import REPO  # noqa: E402


@pytest.mark.slow
def test_tiny_benchmark_reports_both_sides(home, tmp_path):
    out = tmp_path / "bench.json"
    script = REPO / "benchmarks" / "torch_vs_trainer.py"
    command = [sys.executable, str(script), "--tiny", "--steps", "2", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x speed" in proc.stdout and "x peak memory" in proc.stdout
    (result,) = json.loads(out.read_text())
    stock, ours = result["stock"], result["mlxlora"]
    assert stock["tokens"] == ours["tokens"] > 16 * 2 * 8  # the same sequences on both sides
    assert stock["tokens_per_sec"] > 0 and ours["tokens_per_sec"] > 0
    assert ours["padding_fraction"] == 0.0  # packed
    assert result["speed_ratio"] == pytest.approx(ours["tokens_per_sec"] / stock["tokens_per_sec"])
