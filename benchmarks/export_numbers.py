"""Export time, peak memory and file sizes for SmolLM2-135M, against mlx-lm's fuse --export-gguf.

    python benchmarks/export_numbers.py [--run RUN] [--out DIR]

Without --run, trains builtin:smollm2-135m for 3 steps on the quickstart data (LoRA r8 on
q/k/v/o/gate/up). Each export runs in its own process, so its peak resident memory
(ru_maxrss of that child alone, via os.wait4) and wall time are its own:

* mlxlora fuse (HF-format directory, base kept at 4 bits) and fuse --dequantize;
* full GGUF f16 and q8_0: fuse --dequantize + write_gguf (the fused directory is the input);
* adapter-only: write_lora_gguf (the base GGUF is the user's own model);
* mlx-lm: `python -m mlx_lm fuse --export-gguf` on the same run, plain and with --dequantize
  (it writes f16 only, for llama/mistral/mixtral; a failure is reported with its last line).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def run_child(label: str, code: str | list[str]) -> dict:
    """Run python code (or argv) in a child: wall seconds, the peak RSS of that child alone
    (os.wait4's rusage), whether it succeeded and its last stderr line."""
    argv = [sys.executable, "-c", code] if isinstance(code, str) else code
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        ])  # fmt: skip
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    return {
        "label": label,
        "seconds": seconds,
        "peak_mb": usage.ru_maxrss * 1024 / MB,
        "ok": os.waitstatus_to_exitcode(status) == 0,
        "error": lines[-1] if lines else "",
    }


def train(home: Path) -> Path:
    code = f"""
from pathlib import Path
from mlxlora import config, engine
cfg = config.from_dict({{
    "name": "export-bench", "model": "builtin:smollm2-135m",
    "data": {{"dataset": "{ROOT / "tutorial" / "data" / "quickstart.jsonl"}", "max_length": 128}},
    "lora": {{"rank": 8, "alpha": 16,
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]}},
    "training": {{"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3}},
}})
engine.train(cfg, Path("{home / "run"}"))
"""
    result = run_child("train", code)
    if not result["ok"]:
        raise SystemExit(f"training failed: {result['error']}")
    return home / "run"


def size(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MB
    return path.stat().st_size / MB if path.exists() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing SmolLM2 run (default: train one)")
    parser.add_argument("--out", type=Path, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="export-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLXLORA_HOME", str(out / "home"))
    run = args.run or train(out)
    model_dir_code = (
        "from mlxlora import config; from mlxlora.models.resolve import resolve_model; "
        f"print(resolve_model(config.load('{run / 'config.yaml'}').model, progress=False))"
    )
    model_dir = subprocess.run(
        [sys.executable, "-c", model_dir_code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.strip()  # fmt: skip
    fuse = "from mlxlora.export.fuse import fuse_run; "
    gguf = "from mlxlora.export.gguf_writer import write_gguf, write_lora_gguf; "
    cases = [
        ("fuse (4-bit kept)", fuse + f"fuse_run('{run}', '{out / 'fused-q4'}')", out / "fused-q4"),
        ("fuse --dequantize", fuse + f"fuse_run('{run}', '{out / 'fused'}', True)", out / "fused"),
        ("GGUF f16 (from fused)", gguf + f"write_gguf('{out / 'fused'}', '{out / 'f16.gguf'}')",
         out / "f16.gguf"),
        ("GGUF q8_0 (from fused)",
         gguf + f"write_gguf('{out / 'fused'}', '{out / 'q8_0.gguf'}', 'q8_0')", out / "q8_0.gguf"),
        ("GGUF LoRA adapter",
         gguf + f"write_lora_gguf('{run}', '{model_dir}', '{out / 'lora.gguf'}')",
         out / "lora.gguf"),
        ("mlx_lm fuse --export-gguf",
         [sys.executable, "-m", "mlx_lm", "fuse", "--model", model_dir, "--adapter-path",
          str(run / "adapters"), "--save-path", str(out / "mlx-lm"), "--export-gguf"],
         out / "mlx-lm" / "ggml-model-f16.gguf"),
        ("mlx_lm fuse --export-gguf --dequantize",
         [sys.executable, "-m", "mlx_lm", "fuse", "--model", model_dir, "--adapter-path",
          str(run / "adapters"), "--save-path", str(out / "mlx-lm-dq"), "--export-gguf",
          "--dequantize"],
         out / "mlx-lm-dq" / "ggml-model-f16.gguf"),
    ]  # fmt: skip
    print(f"run {run}\nmodel {model_dir}\n")
    print(f"{'export':40} {'time s':>7} {'peak MB':>8} {'size MB':>8}")
    for label, code, product in cases:
        r = run_child(label, code)
        shown = f"{size(product):8.1f}" if r["ok"] else f"  failed: {r['error'][:90]}"
        print(f"{label:40} {r['seconds']:7.1f} {r['peak_mb']:8.0f} {shown}", flush=True)


if __name__ == "__main__":
    main()
