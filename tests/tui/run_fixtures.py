"""Run directories written by hand, with fixed times and numbers, for screen tests and snapshots."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from mlxlora import config, runs
from mlxlora.events import (
    Checkpoint,
    EarlyStop,
    EpochEnd,
    Eval,
    EventWriter,
    RunFailed,
    RunFinished,
    RunStarted,
    Sample,
    Step,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0  # every run starts here: screens show times relative to it
STEPS_PER_EPOCH = 10


def write_run(
    name: str,
    *,
    steps: int = 30,
    total: int = 30,
    end: str = "finished",  # finished | stopped | failed | early_stop | running
    overrides: tuple[str, ...] = (),
    lr: float = 5e-4,
    loss_scale: float = 1.0,
    started: float = T0,
) -> Path:
    """A run directory in the workspace whose events say it got to `steps` of `total` and
    ended as `end` ("running": no ending, and the lock held by this live test process)."""
    cfg = config.load(REPO / "configs" / "tiny.yaml", [f"name={name}", *overrides])
    path = runs.runs_root() / f"{name}-20250615-000000"
    paths = runs.RunPaths(path)
    path.mkdir(parents=True)
    paths.config.write_text(cfg.to_yaml(), encoding="utf-8")
    with EventWriter(paths.events) as w:
        _write_events(w, path, steps, total, end, lr, loss_scale, started)
    if end == "running":
        paths.lock.write_text(str(os.getpid()))
    if end in ("stopped", "failed"):
        (paths.checkpoint(steps) / "adapter_config.json").parent.mkdir(parents=True)
    if end != "running" and end != "failed":
        summary = {"outcome": end, "steps": steps, "total_steps": total, "elapsed_sec": steps * 2.0}
        summary |= {"best_val_loss": _val(steps, loss_scale), "peak_memory_gb": 0.5}
        paths.summary.write_text(json.dumps(summary), encoding="utf-8")
    return path


def _loss(step: int, scale: float) -> float:
    return scale * (3.0 * math.exp(-step / 12) + 0.5 + 0.1 * math.sin(step))


def _val(step: int, scale: float) -> float:
    return scale * (3.0 * math.exp(-step / 12) + 0.7)


def _write_events(w, path, steps, total, end, lr, scale, t0) -> None:
    w.emit(
        RunStarted(
            run_dir=str(path),
            model="builtin:tiny",
            backend="mlx",
            device="cpu",
            train_records=40,
            val_records=4,
            total_steps=total,
            steps_per_epoch=STEPS_PER_EPOCH,
            trainable_params=20480,
            total_params=1_000_000,
            estimated_peak_gb=0.4,
            time=t0,
        )
    )
    w.emit(Sample(step=0, when="before", prompt="What is 2+2?", answer="blue", time=t0 + 1))
    w.emit(Eval(step=0, epoch=0, val_loss=_val(0, scale), perplexity=40.0, time=t0 + 1))
    for s in range(1, steps + 1):
        at = t0 + 2 + 2 * s
        loss = _loss(s, scale)
        w.emit(Step(s, s / STEPS_PER_EPOCH, loss, lr, 400, 200.0, 0.25 + s / 1000, time=at))
        if s % STEPS_PER_EPOCH == 0:
            w.emit(EpochEnd(epoch=s // STEPS_PER_EPOCH, step=s, train_loss=loss, time=at))
            w.emit(
                Eval(
                    s, s / STEPS_PER_EPOCH, _val(s, scale), math.exp(_val(s, scale)), True, time=at
                )
            )
            w.emit(Checkpoint(step=s, path=str(path / "adapters"), time=at))
    at = t0 + 3 + 2 * steps
    if end == "failed":
        w.emit(
            RunFailed(
                reason="loss became nan at step 13; lower training.learning_rate",
                step=steps,
                time=at,
            )
        )
    elif end == "early_stop":
        w.emit(
            EarlyStop(
                step=steps, best_step=steps, best_val_loss=_val(steps, scale), patience=2, time=at
            )
        )
    if end in ("finished", "early_stop"):
        w.emit(Sample(step=steps, when="after", prompt="What is 2+2?", answer="4", time=at))
    if end in ("finished", "stopped", "early_stop"):
        w.emit(_finished(steps, _loss(steps, scale), _val(steps, scale), end == "stopped", at))


def _finished(step: int, loss: float, val: float, stopped: bool, at: float) -> RunFinished:
    """RunFinished with whichever train-loss fields this version of it has (they are changing)."""
    names = {f.name for f in dataclasses.fields(RunFinished)}
    losses = {"final_train_loss", "train_loss_last_epoch", "train_loss_ema"} & names
    return RunFinished(
        step=step,
        best_val_loss=val,
        best_step=step,
        elapsed_sec=step * 2.0,
        stopped=stopped,
        time=at,
        **dict.fromkeys(losses, loss),
    )


def screen_text(app) -> str:
    """What the terminal shows now, as plain text lines."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot, condition, timeout: float = 10.0, step: float = 0.1) -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    waited = 0.0
    while not condition():
        assert waited < timeout, f"timed out after {timeout}s"
        await pilot.pause(step)
        waited += step
