"""The backend-agnostic training loop: epochs, schedule, accumulation, evaluation, early
stopping and checkpoints. It talks to a backend through backends/base.py and to the world only
through events and the files of the run directory; engine.py runs it as a job.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlxlora import metrics
from mlxlora.atomic import atomic_dir, atomic_write_text
from mlxlora.data import batching
from mlxlora.diagnosis import MEMORY_STOP, Diagnoser
from mlxlora.errors import TrainingFailed
from mlxlora.evaluate import messages_for
from mlxlora.events import (
    Checkpoint,
    EarlyStop,
    EpochEnd,
    Eval,
    EventWriter,
    RunFailed,
    Sample,
    Step,
    read_events,
)
from mlxlora.prepare import Prepared
from mlxlora.runs import ADAPTER_FILES, PEFT_ADAPTER_FILE, RunPaths

KEEP_CHECKPOINTS = 2  # rolling step checkpoints kept besides best/
SAMPLE_MAX_TOKENS = 64


@dataclass
class TrainerState:
    """Where the loop stands; saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # steps (effective batches) of this epoch already trained on
    best_val_loss: float | None = None  # the lowest validation loss so far
    best_step: int | None = None
    # Patience counts evaluations since the loss last fell by more than min_delta below
    # patience_val_loss (the loss of that evaluation); best ignores min_delta.
    evals_since_best: int = 0
    patience_val_loss: float | None = None
    elapsed: float = 0.0
    last_train_loss: float | None = None  # the last step's raw loss
    loss_ema: float | None = None  # metrics.ema over every step's loss
    completed_epoch_loss: float | None = None  # mean train loss of the last completed epoch
    epoch_losses: list[float] = field(default_factory=list)

    def train_loss_last_epoch(self) -> float | None:
        """Mean train loss of the epoch in progress, or of the last completed one if none is."""
        if self.epoch_losses:
            return sum(self.epoch_losses) / len(self.epoch_losses)
        return self.completed_epoch_loss


@dataclass
class QueuedStep:
    """A step the backend was given, with its numbers as the backend returned them: floats,
    or values a GPU still computes (backends/base.py: Reading), read by finish_pending once
    the next step is queued, so that the device has work while the host waits for them."""

    step: int
    lr: float
    losses: list = field(default_factory=list)
    norm: object = 0.0
    real: int = 0  # real tokens
    padded: int = 0  # token slots, padding included
    peak: int = 0  # the backend's peak memory once this step was queued, not the next one
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def deferred(self) -> bool:
        return not all(isinstance(x, float) for x in (*self.losses, self.norm))


class StopFlag:
    """Set by SIGINT/SIGTERM or by a STOP file in the run directory (how the TUI asks)."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.signal: str | None = None  # "SIGINT" or "SIGTERM" once one asked to stop

    def __call__(self, signum: int, _frame=None):
        self.signal = signal.Signals(signum).name

    def is_set(self) -> bool:
        return self.signal is not None or self.paths.stop_request.exists()


class Trainer:
    def __init__(self, prep: Prepared, events: EventWriter, state: TrainerState):
        self.p, self.events, self.state = prep, events, state
        self.cfg = prep.config
        self.t = prep.config.training
        self.stop = StopFlag(prep.paths)
        self._started = time.perf_counter() - state.elapsed
        # fed every event, the earlier sessions' too (a resumed run keeps its history)
        self.diagnoser = Diagnoser().add(read_events(prep.paths.events))
        events.listeners.append(lambda event: self.diagnoser.add([event]))
        self._trained_estimate = 0  # the largest estimate of a step this session trained
        self._pending: QueuedStep | None = None  # queued, its numbers not yet read
        self._last_read = 0.0  # when finish_pending last read a step's numbers

    # --- evaluation and checkpoints --------------------------------------------------

    def evaluate(self) -> float | None:
        if not self.p.val:
            return None
        # Shuffled with a fixed seed: the same batches every evaluation, and a val_batches
        # limit samples all lengths instead of taking the shortest records.
        batches = batching.batch_order(self.p.val, self.t.batch_size, self.t.seed, 0)
        if self.t.val_batches > 0:
            batches = batches[: self.t.val_batches]
        total, tokens = 0.0, 0
        for idx in batches:
            loss, n = self.p.backend.eval_loss(batching.collate([self.p.val[i] for i in idx]))
            total, tokens = total + loss, tokens + n
        return total / max(tokens, 1)

    def evaluate_and_checkpoint(self) -> None:
        self.finish_pending()  # first: the step's time (tokens/s) is its own, not the eval's
        self.checkpoint(self.evaluate())

    def baseline_eval(self) -> None:
        """Validation loss of the untouched model: the number every later eval is read against.
        Reported only; it is not a checkpoint and does not count for early stopping."""
        val_loss = self.evaluate()
        if val_loss is not None:
            ppl = metrics.perplexity(val_loss)
            self.events.emit(Eval(step=0, epoch=0.0, val_loss=val_loss, perplexity=ppl))

    def checkpoint(self, val_loss: float | None) -> None:
        self.finish_pending()  # the state it saves holds the last step's numbers
        s, paths, backend = self.state, self.p.paths, self.p.backend
        if val_loss is not None and not math.isfinite(val_loss):
            self.fail(
                f"validation loss became {val_loss} at step {s.step}; lower the learning rate"
            )
        improved = val_loss is not None and self._record_eval(val_loss)
        if val_loss is not None:
            self.events.emit(
                Eval(
                    step=s.step,
                    epoch=self._epoch_float(),
                    val_loss=val_loss,
                    perplexity=metrics.perplexity(val_loss),
                    best=improved,
                )
            )
        s.elapsed = self.elapsed()
        # best/ before the checkpoint that records it: a process killed between the two
        # resumes from the checkpoint before, re-runs to this one and writes the same best/
        if improved:
            with atomic_dir(paths.best) as tmp:
                backend.save_adapter(tmp)
        target = paths.checkpoint(s.step)
        with atomic_dir(target) as tmp:
            backend.save_state(tmp)
            atomic_write_text(tmp / "trainer_state.json", json.dumps(asdict(s), indent=2))
        for old in sorted(paths.checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        trained = s.step > 0  # step 0's checkpoint: no adapter to publish, nothing to diagnose
        if trained:
            self._publish_latest_adapter(target)
        self.events.emit(Checkpoint(step=s.step, path=str(target), best=improved))
        for finding in self.diagnoser.new_findings() if trained else ():
            self.events.emit(finding.event())

    def _record_eval(self, val_loss: float) -> bool:
        """Update best and patience with a validation loss; True when it is the lowest yet."""
        s, min_delta = self.state, self.t.early_stopping.min_delta
        lowest = s.best_val_loss is None or val_loss < s.best_val_loss
        if lowest:
            s.best_val_loss, s.best_step = val_loss, s.step
        if s.patience_val_loss is None or val_loss < s.patience_val_loss - min_delta:
            s.patience_val_loss, s.evals_since_best = val_loss, 0
        else:
            s.evals_since_best += 1
        return lowest

    def _publish_latest_adapter(self, checkpoint: Path) -> None:
        """adapters/adapters.safetensors + adapter_config.json always hold the latest weights
        (and adapter_model.safetensors, PEFT's copy, where the backend writes one)."""
        peft = [PEFT_ADAPTER_FILE] if (checkpoint / PEFT_ADAPTER_FILE).exists() else []
        for name in (*ADAPTER_FILES, *peft):
            tmp = self.p.paths.adapters / f".{name}.tmp"
            try:
                tmp.write_bytes((checkpoint / name).read_bytes())
            except OSError:
                tmp.unlink(missing_ok=True)  # half a file on a full disk: give its space back
                raise
            os.replace(tmp, self.p.paths.adapters / name)

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return time.perf_counter() - self._started

    def _epoch_float(self) -> float:
        return self.state.step / self.p.steps_per_epoch

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> str:
        """Train to the end, an early stop, or a stop request. Returns how it ended."""
        outcome = self._train()
        self.finish_pending()
        return outcome

    def _train(self) -> str:
        s, t = self.state, self.t
        last_eval_step = s.step  # a checkpoint holds it: a fresh run's step 0 too (engine.py)
        if s.step == 0:
            self.baseline_eval()
        while s.step < self.p.total_steps:
            # A step's records are chosen by the effective batch, then split into
            # micro-batches: a fitted micro-batch size trains on the same records per step.
            effective = t.batch_size * t.grad_accumulation
            order = batching.batch_order(self.p.train, effective, t.seed, s.epoch)
            while s.batch_in_epoch < len(order) and s.step < self.p.total_steps:
                records = order[s.batch_in_epoch]
                self.check_memory(records, last_eval_step)
                group = [
                    records[i : i + t.batch_size] for i in range(0, len(records), t.batch_size)
                ]
                self.train_step(group)
                s.batch_in_epoch += 1
                if t.eval_every and s.step % t.eval_every == 0:
                    self.evaluate_and_checkpoint()
                    last_eval_step = s.step
                    if self.should_stop_early():
                        return "early_stop"
                if self.stop.is_set():
                    if last_eval_step != s.step:
                        self.checkpoint(None)
                    return "stopped"
            if s.batch_in_epoch >= len(order):
                self.finish_pending()
                loss = sum(s.epoch_losses) / max(len(s.epoch_losses), 1)
                self.events.emit(EpochEnd(epoch=s.epoch + 1, step=s.step, train_loss=loss))
                s.epoch, s.batch_in_epoch, s.epoch_losses = s.epoch + 1, 0, []
                s.completed_epoch_loss = loss
                if not t.eval_every:
                    self.evaluate_and_checkpoint()
                    last_eval_step = s.step
                    if self.should_stop_early():
                        return "early_stop"
        if last_eval_step != s.step:
            self.evaluate_and_checkpoint()
        return "completed"

    def train_step(self, group: list[list[int]]) -> None:
        """Queues a step, then reads the numbers of the step before it (finish_pending): by
        then the device has this one to compute. Plain floats are read at once."""
        try:
            queued = self.queue_step(group)
        except Exception:
            self._record_pending_after_failure()
            raise
        self.finish_pending()
        self._pending = queued
        if not queued.deferred:
            self.finish_pending()

    def queue_step(self, group: list[list[int]]) -> QueuedStep:
        """Gives the backend a step's micro-batches and its update."""
        s, t, backend = self.state, self.t, self.p.backend
        queued = QueuedStep(step=s.step + 1, lr=self.p.schedule(s.step + 1))
        for i, idx in enumerate(group):
            batch = batching.collate([self.p.train[j] for j in idx])
            queued.losses.append(
                backend.accumulate(batch, seed=(t.seed * 1_000_003 + s.step) * 64 + i)
            )
            queued.real += batch.real_tokens
            queued.padded += batch.tokens.size
        queued.norm = backend.update(queued.lr, t.grad_clip)
        # a GPU's allocator counts a step's memory as it is queued: read now, before the next
        if self._reported(queued.step):  # a CPU's is a /proc read: only for the steps logged
            queued.peak = backend.peak_memory_bytes()
        s.step += 1
        return queued

    def _reported(self, step: int) -> bool:
        """Whether `step` is one the run emits as a Step event."""
        return step % self.t.log_every == 0 or step == self.p.total_steps

    def _record_pending_after_failure(self) -> None:
        """A step failed to queue (a GPU out of memory): the step before it is done, so its
        numbers are recorded, unless the device that failed cannot give them back either. A
        non-finite one fails the run first: it came first."""
        try:
            self.finish_pending()
        except TrainingFailed:
            raise
        except Exception:
            pass

    def finish_pending(self) -> None:
        """Reads the numbers of the step queued last, if not yet read (waiting for the device
        to compute them), stops on a non-finite one, and records and reports them."""
        queued, self._pending = self._pending, None
        if queued is None:
            return
        s = self.state
        done = queued.step - 1  # the steps a failure leaves done
        losses = [float(loss) for loss in queued.losses]
        for loss in losses:
            if not math.isfinite(loss):
                self.fail(
                    f"loss became {loss} at step {queued.step}; lower training.learning_rate", done
                )
        norm = float(queued.norm)
        if not math.isfinite(norm):
            self.fail(
                f"gradient norm became {norm} at step {queued.step}; lower training.learning_rate",
                done,
            )
        loss = sum(losses) / len(losses)
        s.last_train_loss = loss
        s.loss_ema = metrics.ema(s.loss_ema, loss)
        s.epoch_losses.append(loss)
        now = time.perf_counter()
        # the time since the step before was read: with steps queued ahead, a step's own
        # queueing overlaps the one before it
        seconds, self._last_read = now - max(queued.queued_at, self._last_read), now
        if self._reported(queued.step):
            self.events.emit(
                Step(
                    step=queued.step,
                    epoch=round(queued.step / self.p.steps_per_epoch, 4),
                    loss=loss,
                    loss_ema=s.loss_ema,
                    lr=queued.lr,
                    tokens=queued.real,
                    tokens_per_sec=queued.real / seconds,
                    grad_norm=norm,
                    peak_memory_gb=queued.peak / 1e9,
                    padding_fraction=1 - queued.real / queued.padded,
                )
            )

    def check_memory(self, records: list[int], last_checkpoint_step: int) -> None:
        """Stop with a checkpoint before a step whose estimate (from its longest record, scaled
        by how far the steps so far outgrew theirs) would pass the run's memory budget, or
        after one whose measured peak did."""
        guard = self.p.guard
        if guard is None:
            return
        from mlxlora.memory import calibrated_need

        longest = max(len(self.p.train[i].tokens) for i in records)
        peak = self.p.backend.peak_memory_bytes()
        estimate = guard.step_estimate(longest).total
        need = calibrated_need(estimate, peak, self._trained_estimate, guard.outgrew)
        if need <= guard.budget and peak <= guard.budget:
            self._trained_estimate = max(self._trained_estimate, estimate)
            return
        from mlxlora.memory import fmt_bytes
        from mlxlora.runs import resume_command

        if last_checkpoint_step != self.state.step:
            self.checkpoint(None)
        what = (
            f"needs ~{fmt_bytes(need)}"
            if need > guard.budget
            else f"the run's peak reached {fmt_bytes(peak)}"
        )
        advice = "; ".join(guard.advice(longest)) or "a smaller batch"
        self.fail(
            f"{MEMORY_STOP}step {self.state.step + 1} (records up to {longest} tokens) {what},"
            f" over the budget of {fmt_bytes(guard.budget)}; resume fitted with "
            f"`{resume_command(self.p.paths.root)} --fit` or change: {advice}"
        )

    def answer_samples(self, when: str) -> None:
        for prompt in self.cfg.samples:
            messages = messages_for(prompt, self.p.system_prompt)  # as the records ask
            answer = self.p.backend.generate(messages, SAMPLE_MAX_TOKENS)
            self.events.emit(Sample(step=self.state.step, when=when, prompt=prompt, answer=answer))

    def should_stop_early(self) -> bool:
        es, s = self.t.early_stopping, self.state
        if es.patience and s.best_val_loss is not None and s.evals_since_best >= es.patience:
            self.events.emit(
                EarlyStop(
                    step=s.step,
                    best_step=s.best_step,
                    best_val_loss=s.best_val_loss,
                    patience=es.patience,
                )
            )
            return True
        return False

    def fail(self, reason: str, step: int | None = None) -> None:
        """Ends the run with `reason`; `step`: the steps done, if not the state's."""
        last = self.p.paths.latest_checkpoint()
        step = self.state.step if step is None else step
        failed = RunFailed(reason=reason, step=step, last_checkpoint=str(last) if last else None)
        # what the failure shows (a NaN: the learning rate) goes first: a reader stops at it
        self.diagnoser.add([failed])
        for finding in self.diagnoser.new_findings():
            self.events.emit(finding.event())
        self.events.emit(failed)
        kept = f"; last good checkpoint: {last}" if last else "; no checkpoint was written yet"
        raise TrainingFailed(reason + kept)
