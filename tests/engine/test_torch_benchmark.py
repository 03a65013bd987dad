"""benchmarks/torch_vs_trainer.py runs end to end at its tiny shape on the CPU: every side
trains the same sequences and reports throughput, peak memory and its ratios to stock."""

from __future__ import annotations

import json
import re
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
    # the sides gpu_figures.sh runs (compiled: its own test); cudnn, fp32lora and plainnorm
    # are switches of the same step, left to the GPU (each side here costs a process's start)
    sides = "stock,mlxlora,mlxlora-packed,mlxlora-unsynced,mlxlora-profiled"
    command += ["--sides", sides]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x speed" in proc.stdout and "x peak memory" in proc.stdout
    (result,) = json.loads(out.read_text())
    stock, ours, packed = result["stock"], result["mlxlora"], result["mlxlora-packed"]
    assert stock["tokens"] == ours["tokens"] == packed["tokens"] > 16 * 2 * 8  # same sequences
    assert min(r["tokens_per_sec"] for r in (stock, ours, packed)) > 0
    assert 0 < ours["padding_fraction"] < 0.5  # padded, to the longest of similar lengths
    assert packed["padding_fraction"] == 0.0
    assert len(ours["step_seconds"]) == 2 and sum(ours["step_seconds"]) <= ours["seconds"]
    assert ours["graphs_compiled_while_timed"] == 0  # eager: no graph at all
    assert "step median" in proc.stdout
    busy = re.search(
        r"cpu busy ([0-9.]+) s of ([0-9.]+) s profiled wall .*, ([0-9.]+) s a step", proc.stdout
    )
    assert busy and 0 < float(busy[1]) <= 1.05 * float(busy[2])  # no time counted twice
    assert result["mlxlora-unsynced"]["tokens"] == ours["tokens"]  # same work
    assert result["speed_ratio"] == pytest.approx(ours["tokens_per_sec"] / stock["tokens_per_sec"])
    assert result["packed_speed_ratio"] == pytest.approx(
        packed["tokens_per_sec"] / stock["tokens_per_sec"]
    )
