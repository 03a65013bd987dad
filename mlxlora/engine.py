"""A training job from start to end: check and prepare everything, create the run directory,
run the loop (trainer.py), stop on a signal with a checkpoint, write the summary, resume.
It talks to the world only through events (events.jsonl) and the files of the run directory.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from mlxlora import config as config_mod
from mlxlora.atomic import atomic_write_text
from mlxlora.config import Config
from mlxlora.errors import DISK_REFUSED, CheckpointUnreadable, RunError, TrainingFailed
from mlxlora.events import (
    EventWriter,
    RunFailed,
    RunFinished,
    RunStarted,
)
from mlxlora.models.info import gguf_source
from mlxlora.prepare import Prepared, prepare
from mlxlora.run_memory import training_budget
from mlxlora.runs import (
    RunPaths,
    check_new_run_dir,
    check_resumable,
    new_run_dir,
    recover_run,
    resume_command,
    run_lock,
)
from mlxlora.trainer import Trainer, TrainerState


def _disk_failure(exc: OSError, paths: RunPaths, step: int, events: EventWriter):
    """The TrainingFailed for a write the disk refused, recorded as the run's failure where
    the disk still takes it; every checkpoint is whole (atomic_dir), so the last one is good."""
    last = paths.latest_checkpoint()
    where = f" ({exc.filename})" if exc.filename else ""
    reason = f"cannot write the run at step {step}: {exc.strerror}{where}"
    try:
        events.emit(
            RunFailed(reason=reason, step=step, last_checkpoint=str(last) if last else None)
        )
    except OSError:
        pass  # the same full disk: the error below still tells the user
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space" if full else "make the run directory writable"
    kept = f"; last good checkpoint: {last}" if last else "; no checkpoint was written yet"
    return TrainingFailed(f"{reason}; {fix}, then `{resume_command(paths.root)}`{kept}")


def _load_last_good_checkpoint(paths: RunPaths, backend) -> tuple[TrainerState, list[str]]:
    """The state of the newest checkpoint that loads (into `backend` too), and a warning for
    each newer one that did not: a file cut short (copied in part, a full disk) or removed.
    A run keeps two checkpoints, so it resumes from the one before rather than not at all.
    The unreadable ones move to checkpoints/unreadable/: left among the two the run keeps, they
    pushed the good checkpoint it resumed from out at its next checkpoint."""
    unreadable = []
    for ckpt in sorted(paths.checkpoints.glob("step-*"), reverse=True):
        try:
            state = _trainer_state(ckpt)
            backend.load_state(ckpt)
        except CheckpointUnreadable as exc:
            unreadable.append((ckpt, f"checkpoint {ckpt.name} cannot be read ({exc})"))
            continue
        aside = paths.checkpoints / "unreadable"
        for bad, _ in unreadable:
            aside.mkdir(exist_ok=True)
            shutil.rmtree(aside / bad.name, ignore_errors=True)  # set aside by an earlier resume
            bad.rename(aside / bad.name)
        warnings = [
            f"{why}; resumed from {ckpt.name}, the checkpoint before ({bad.name} moved to {aside})"
            for bad, why in unreadable
        ]
        return state, warnings
    whys = "; ".join(why for _, why in unreadable)
    raise RunError(f"{paths.root}: no checkpoint can be read: {whys}")


def _trainer_state(ckpt: Path) -> TrainerState:
    try:
        return TrainerState(**json.loads((ckpt / "trainer_state.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:  # cut short, missing, or another shape
        raise CheckpointUnreadable(str(exc)) from exc


def _install_stop_handlers(handler) -> dict:
    """Ctrl-C / SIGTERM finish the current step, checkpoint and stop (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _budget_gb(cfg: Config, backend) -> float | None:
    """What the run may use, in GB: training.memory_budget, else what the backend's device
    has (None when unknown): the budget its guard and diagnosis hold it to."""
    budget = training_budget(cfg, backend)
    return round(budget / 1e9, 3) if budget else None


def write_summary(prep: Prepared, state: TrainerState, outcome: str) -> dict:
    summary = {
        "outcome": outcome,
        "steps": state.step,
        "total_steps": prep.total_steps,
        "train_loss_last_epoch": state.train_loss_last_epoch(),
        "train_loss_ema": state.loss_ema,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "elapsed_sec": round(state.elapsed, 2),
        "peak_memory_gb": round(prep.backend.peak_memory_bytes() / 1e9, 3),
        "model": prep.config.model,
        "model_dir": str(prep.model_dir),
        **gguf_source(prep.model_dir),
        "adapter": str(prep.paths.adapters),
        "best_adapter": str(prep.paths.best) if prep.paths.best.exists() else None,
    }
    atomic_write_text(prep.paths.summary, json.dumps(summary, indent=2))
    return summary


def train(
    cfg: Config | None,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    listeners: list | None = None,
    backend=None,
) -> dict:
    """Run (or resume) a training job; returns the summary dict.

    Everything that can fail before the first step (dataset, model, backend, tokenizing) is
    checked before the run directory is created, so a directory exists only for a run that
    started.

    Args:
        cfg: The job; with `resume`, None (the run's own config is read back) or the run's
            config with memory settings changed (`train --resume RUN --fit`).
        run_dir: Where the run lives. None: a new directory in the workspace named after
            `cfg.name`. A new run refuses a directory that already holds anything.
        resume: Continue the run in `run_dir` from its latest checkpoint, with the optimizer
            state, schedule position and data order it had. A finished run is refused.
        listeners: Callables that receive every event as it is written.
        backend: A backend instance; default the one `cfg.backend` selects.
    """
    from mlxlora.backends import select

    if select.process_rank() > 0:
        return _train_secondary(cfg, run_dir, resume, backend)
    if resume:
        paths = RunPaths(Path(run_dir))
        with _training_lock(paths):
            recover_run(paths)
            check_resumable(paths)
            cfg = cfg or config_mod.load(paths.config)
            prep = prepare(cfg, paths, backend or select.create(cfg.backend))
            atomic_write_text(paths.config, prep.config.to_yaml())  # refitted: resume it so
            return _start(prep, listeners, resume=True)
    if run_dir is not None:
        check_new_run_dir(Path(run_dir))
    prep = prepare(cfg, None, backend or select.create(cfg.backend))
    if run_dir is None:
        paths = RunPaths(new_run_dir(cfg.name))
    else:
        paths = RunPaths(Path(run_dir))
        paths.root.mkdir(parents=True, exist_ok=True)
    with _training_lock(paths):
        atomic_write_text(paths.config, prep.config.to_yaml())  # as fitted
        return _start(replace(prep, paths=paths), listeners, resume=False)


@contextmanager
def _training_lock(paths: RunPaths):
    """The run's lock, with a stop asked before it cleared (stale): one asked from here on,
    while the model loads too, is honoured at the first step's end."""
    with run_lock(paths):
        paths.stop_request.unlink(missing_ok=True)
        yield


def _train_secondary(cfg: Config | None, run_dir: Path | None, resume: bool, backend) -> dict:
    """A data-parallel process other than the first (torchrun): it trains its share of every
    batch in lockstep with the first, which alone writes the run; this process's own run
    directory is scratch, a copy of the run when resuming, deleted at the end."""
    from mlxlora.backends import select

    with tempfile.TemporaryDirectory(prefix="mlxlora-rank-") as scratch:
        mine = Path(scratch) / "run"
        if resume:
            shutil.copytree(Path(run_dir), mine)
            RunPaths(mine).stop_request.unlink(missing_ok=True)  # the first process stops all
            cfg = config_mod.load(RunPaths(mine).config)
        paths = RunPaths(mine)
        prep = prepare(cfg, paths if resume else None, backend or select.create(cfg.backend))
        if not resume:
            mine.mkdir()
            atomic_write_text(paths.config, cfg.to_yaml())
        return _start(replace(prep, paths=paths), None, resume=resume)


def _start(prep: Prepared, listeners: list | None, resume: bool) -> dict:
    with EventWriter(prep.paths.events, listeners) as events:
        return _run(prep, events, resume)


def _run(prep: Prepared, events: EventWriter, resume: bool) -> dict:
    from mlxlora.errors import MlxloraError

    cfg, paths, backend = prep.config, prep.paths, prep.backend
    state = TrainerState()
    unreadable: list[str] = []
    try:
        if resume:
            state, unreadable = _load_last_good_checkpoint(paths, backend)
        trainable, total = backend.param_counts()
        events.emit(
            RunStarted(
                run_dir=str(paths.root),
                dataset=cfg.data.dataset,  # the workspace name it was pinned to
                datasets=prep.datasets,
                sources=prep.sources,
                model=cfg.model,
                backend=backend.info.name,
                device=backend.info.device,
                train_records=len(prep.train),
                val_records=len(prep.val),
                total_steps=prep.total_steps,
                steps_per_epoch=prep.steps_per_epoch,
                trainable_params=trainable,
                total_params=total,
                estimated_peak_gb=prep.estimated_peak_gb,
                truncated_records=prep.truncated,
                resumed_from_step=state.step,
                warnings=prep.warnings + unreadable,
                memory_budget_gb=_budget_gb(cfg, backend),
            )
        )
        if prep.fit is not None:
            events.emit(prep.fit)
        trainer = Trainer(prep, events, state)
        if state.step == 0:
            trainer.checkpoint(None)  # resumable from here on, killed before any other one
            trainer.answer_samples("before")
        previous = _install_stop_handlers(trainer.stop)
        try:
            outcome = trainer.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if outcome != "stopped":  # a stopped run answers them when it finishes
            trainer.answer_samples("after")
        state.elapsed = trainer.elapsed()
    except TrainingFailed:
        raise
    except MlxloraError as exc:
        events.emit(RunFailed(reason=str(exc), step=state.step))
        raise
    except OSError as exc:
        if exc.errno not in DISK_REFUSED:
            events.emit(RunFailed(reason=f"internal error: {exc!r}", step=state.step))
            raise
        raise _disk_failure(exc, paths, state.step, events) from None
    except Exception as exc:  # our bug: the faces still learn the run ended; traceback kept
        events.emit(RunFailed(reason=f"internal error: {exc!r}", step=state.step))
        raise
    summary = write_summary(prep, state, outcome)
    events.emit(
        RunFinished(
            step=state.step,
            train_loss_last_epoch=state.train_loss_last_epoch(),
            train_loss_ema=state.loss_ema,
            best_val_loss=state.best_val_loss,
            best_step=state.best_step,
            elapsed_sec=state.elapsed,
            stopped=outcome == "stopped",
            signal=trainer.stop.signal if outcome == "stopped" else None,
        )
    )
    paths.stop_request.unlink(missing_ok=True)
    return summary
