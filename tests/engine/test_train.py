"""The real engine on the real builtin:tiny model: loss falls, files load, resume is exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mlxlora import config, engine, metrics, runs
from mlxlora.errors import RunError, TrainingFailed
from mlxlora.events import (
    Checkpoint,
    EarlyStop,
    EpochEnd,
    Eval,
    RunFailed,
    RunFinished,
    RunStarted,
    Step,
    read_events,
)
from mlxlora.runs import RunPaths


def make_config(data, *overrides):
    base = {
        "name": "t",
        "model": "builtin:tiny",
        "data": {"dataset": str(data), "val_split": 0.1, "max_length": 128},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"learning_rate": 5e-3, "epochs": 1, "batch_size": 4, "seed": 3},
    }
    return config.from_dict(config.apply_overrides(base, list(overrides)))


def steps(run_dir):
    return {e.step: e.loss for e in read_events(RunPaths(run_dir).events) if isinstance(e, Step)}


def stop_at(run_dir, at: int):
    """A listener that asks the run at `run_dir` to stop once step `at` is done."""

    def listener(event):
        if isinstance(event, Step) and event.step == at:
            RunPaths(run_dir).stop_request.touch()

    return listener


def test_loss_falls_and_adapter_loads_in_mlx_lm(home, quickstart_data, tmp_path):
    cfg = make_config(quickstart_data, "training.epochs=3")
    summary = engine.train(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    losses = [e.loss for e in events if isinstance(e, Step)]
    evals = [e.val_loss for e in events if isinstance(e, Eval)]
    assert len(losses) == summary["steps"] == 81
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2
    assert evals[-1] < evals[0]
    assert summary["best_val_loss"] == min(evals)
    assert isinstance(events[-1], RunFinished) and not events[-1].stopped

    paths = RunPaths(tmp_path / "run")
    for d in (paths.adapters, paths.best):
        assert (d / "adapters.safetensors").exists() and (d / "adapter_config.json").exists()
    assert paths.config.exists() and paths.summary.exists()

    import mlx.core as mx
    from mlx_lm.utils import load

    # only what adapter_config.json says, as `mlx_lm.generate --model M --adapter-path A` would
    model_dir = json.loads((paths.adapters / "adapter_config.json").read_text())["model"]
    assert summary["model"] == "builtin:tiny" and summary["model_dir"] == model_dir
    base, tok = load(model_dir)
    tuned, _ = load(model_dir, adapter_path=str(paths.adapters))
    ids = mx.array([tok.encode("What is the capital of France?")])
    diff = mx.abs(tuned(ids) - base(ids)).max().item()
    assert diff > 1e-3  # the adapter changes the model


def test_resume_after_stop_matches_uninterrupted_run(home, quickstart_data, tmp_path):
    overrides = (
        "training.max_steps=10",
        "training.eval_every=3",
        "lora.dropout=0.1",
        "training.grad_accumulation=2",
        "training.schedule=cosine",
        "training.warmup_steps=2",
    )
    full = tmp_path / "full"
    engine.train(make_config(quickstart_data, *overrides), full)

    part = tmp_path / "part"
    paths = RunPaths(part)

    summary = engine.train(
        make_config(quickstart_data, *overrides), part, listeners=[stop_at(paths.root, 5)]
    )
    assert summary["outcome"] == "stopped" and summary["steps"] == 5
    assert paths.latest_checkpoint().name == "step-0000005"

    resumed = engine.train(None, part, resume=True)
    expected, got = steps(full), steps(part)
    assert sorted(got) == list(range(1, 11))
    np.testing.assert_allclose(
        [got[s] for s in range(1, 11)], [expected[s] for s in range(1, 11)], rtol=1e-5
    )
    assert json.loads(paths.summary.read_text())["steps"] == 10
    # the smoothed loss and the epoch mean carry over the stop exactly (TrainerState)
    full_summary = json.loads(RunPaths(full).summary.read_text())
    for key in ("train_loss_last_epoch", "train_loss_ema", "best_val_loss", "best_step"):
        assert resumed[key] == pytest.approx(full_summary[key], rel=1e-5), key
    smoothed = [e.loss_ema for e in read_events(paths.events) if isinstance(e, Step)]
    full_smoothed = [e.loss_ema for e in read_events(RunPaths(full).events) if isinstance(e, Step)]
    np.testing.assert_allclose(smoothed, full_smoothed, rtol=1e-5)
    # 10 steps are less than an epoch: the last epoch is the partial one
    assert resumed["train_loss_last_epoch"] == pytest.approx(np.mean(list(got.values())))


def test_a_run_keeps_the_records_it_trained_on_when_its_file_changes(
    home, quickstart_data, tmp_path
):
    """The run's config names the workspace copy of its dataset file: resuming after the file
    was edited, and evaluating after it was deleted, use the records the run trained on. The
    records were stored first from another file under a Japanese name, so the run trains on
    that dataset and it is the file the config named that is watched for edits."""
    from mlxlora.data import store

    store.import_dataset(quickstart_data, "メモ")
    data = tmp_path / "notes.jsonl"  # a user's copy, edited while the run waits
    data.write_bytes(quickstart_data.read_bytes())
    overrides = ("training.max_steps=6", "training.eval_every=3")
    full = tmp_path / "full"
    engine.train(make_config(data, *overrides), full)
    part = tmp_path / "part"

    engine.train(make_config(data, *overrides), part, listeners=[stop_at(part, 3)])
    assert config.load(RunPaths(part).config).data.dataset == "メモ"
    with pytest.raises(RunError, match=r"already holds a run; continue it with `mlxlora train"):
        runs.check_new_run_dir(part)  # stopped: resumable, so the error says how
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[len(lines) // 2 :]) + "\n", encoding="utf-8")  # half gone
    from mlxlora.run_datasets import as_run_started

    old_style = make_config(data, *overrides)  # a run from before pinning names its file
    assert as_run_started(old_style, RunPaths(part)).data.dataset == "メモ"
    engine.train(None, part, resume=True)
    expected, got = steps(full), steps(part)
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [expected[s] for s in range(1, 7)])
    first, resumed = [e for e in read_events(RunPaths(part).events) if isinstance(e, RunStarted)]
    said = f"{data} no longer holds the records of dataset メモ, which this run trains on"
    assert not any("no longer holds" in w for w in first.warnings)
    (changed,) = [w for w in resumed.warnings if "no longer holds" in w]  # one line, not one a path
    assert changed.startswith(said)
    assert first.sources == {"data.dataset": str(data.resolve())} and first.dataset == "メモ"

    data.unlink()
    from mlxlora.evaluate import held_out_records

    records, split, name = held_out_records(config.load(RunPaths(part).config), None)
    assert (split, name, len(records)) == ("validation", "メモ", first.val_records)
    assert first.dataset == "メモ"


def test_a_dataset_two_runs_use_is_refused_naming_both_as_runs(home, quickstart_data):
    """It said "is used by run 実験1-..., 実験2-..." for two."""
    from mlxlora.data import store
    from mlxlora.errors import DataError

    store.import_dataset(quickstart_data, "医療QA")
    for name in ("実験1", "実験2"):
        engine.train(make_config("医療QA", "training.max_steps=1", f"name={name}"), None)
    with pytest.raises(DataError) as err:
        store.remove_dataset("医療QA")
    assert str(err.value).startswith("dataset 医療QA is used by runs 実験")
    assert str(err.value).count("実験") == 2


def test_a_run_refuses_a_dataset_imported_again_with_other_records(home, quickstart_data, tmp_path):
    from mlxlora.data import store
    from mlxlora.errors import DataError
    from mlxlora.evaluate import evaluate_run

    store.import_dataset(quickstart_data, "ノート")
    started = []

    def stop_after_two(event):
        started.extend([Path(event.run_dir)] if isinstance(event, RunStarted) else [])
        if isinstance(event, Step) and event.step == 2:
            RunPaths(started[0]).stop_request.touch()

    cfg = make_config("ノート", "training.max_steps=6", "training.eval_every=3", "name=記録")
    engine.train(cfg, None, listeners=[stop_after_two])  # a workspace run
    part = started[0]
    with pytest.raises(DataError, match=f"dataset ノート is used by run {part.name} .*--force"):
        store.remove_dataset("ノート")
    store.remove_dataset("ノート", force=True)
    half = tmp_path / "half.jsonl"
    half.write_text("".join(quickstart_data.read_text("utf-8").splitlines(True)[:20]), "utf-8")
    store.import_dataset(half, "ノート")  # the same name, other records
    said = f"dataset ノート holds other records than when run {part.name} started"
    with pytest.raises(DataError, match=said):
        engine.train(None, part, resume=True)
    with pytest.raises(DataError, match=said):
        evaluate_run(str(part), max_records=1, max_tokens=2)
    assert steps(part) == {1: steps(part)[1], 2: steps(part)[2]}  # nothing trained on them


def test_train_loss_is_the_last_epoch_mean_and_a_smoothed_loss(home, quickstart_data, tmp_path):
    summary = engine.train(make_config(quickstart_data, "training.epochs=2"), tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    step_events = [e for e in events if isinstance(e, Step)]
    ema = None
    for e in step_events:  # raw loss in the events, the smoothed one beside it
        ema = metrics.ema(ema, e.loss)
        assert e.loss_ema == pytest.approx(ema)
    last_epoch = [e for e in events if isinstance(e, EpochEnd)][-1]
    second = [e.loss for e in step_events if e.step > summary["total_steps"] // 2]
    assert last_epoch.train_loss == pytest.approx(np.mean(second))
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert summary["train_loss_last_epoch"] == finished.train_loss_last_epoch
    assert finished.train_loss_last_epoch == pytest.approx(last_epoch.train_loss)
    assert summary["train_loss_ema"] == finished.train_loss_ema == step_events[-1].loss_ema
    assert summary["train_loss_ema"] != step_events[-1].loss
    assert "final_train_loss" not in summary


def test_best_is_the_lowest_validation_loss_whatever_min_delta(home, quickstart_data, tmp_path):
    # early stopping off: min_delta only counts for patience, the best adapter is the lowest
    cfg = make_config(
        quickstart_data,
        "training.eval_every=2",
        "training.max_steps=12",
        "training.early_stopping.min_delta=100.0",
    )
    saved = {}

    def keep_checkpoint(event):  # rolling checkpoints are deleted: keep each one's weights
        if isinstance(event, Checkpoint):
            saved[event.step] = load_file(str(Path(event.path) / "adapters.safetensors"))

    summary = engine.train(cfg, tmp_path / "run", listeners=[keep_checkpoint])
    events = read_events(tmp_path / "run" / "events.jsonl")
    evals = {e.step: e.val_loss for e in events if isinstance(e, Eval) and e.step}
    lowest = min(evals, key=evals.get)
    assert lowest != min(evals)  # the first evaluation is not the best one: the test can tell
    assert summary["best_step"] == lowest and summary["best_val_loss"] == evals[lowest]
    best = load_file(str(RunPaths(tmp_path / "run").best / "adapters.safetensors"))
    assert best.keys() == saved[lowest].keys()
    assert all(np.array_equal(best[k], saved[lowest][k]) for k in best)


def test_settings_that_cannot_work_warn(home, quickstart_data, tmp_path):
    no_val = make_config(
        quickstart_data,
        "data.val_split=0",
        "training.early_stopping.patience=2",
        "training.max_steps=1",
        "backend=mlx",
    )
    engine.train(no_val, tmp_path / "no-val")
    started = read_events(tmp_path / "no-val" / "events.jsonl")[0]
    assert isinstance(started, RunStarted) and started.val_records == 0
    assert started.warnings == [
        "no validation set (data.val_split is 0): training.early_stopping.patience=2 does "
        "nothing; set data.val_split or data.validation",
    ]

    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "What is 2 plus 2?", "completion": "4"}) + "\n")
    cfg = make_config(one, "training.early_stopping.patience=1", "training.max_steps=1")
    engine.train(cfg, tmp_path / "one")
    started = read_events(tmp_path / "one" / "events.jsonl")[0]
    assert started.warnings == [
        "no validation set (no validation record is left): training.early_stopping.patience=1 "
        "does nothing; set data.val_split or data.validation",
        "training.batch_size=4 is larger than the 1 training records: every batch holds 1",
    ]


def test_nan_loss_fails_cleanly_and_keeps_last_good_checkpoint(home, quickstart_data, tmp_path):
    good = make_config(quickstart_data, "training.max_steps=6", "training.eval_every=1")
    run = tmp_path / "run"
    paths = RunPaths(run)

    engine.train(good, run, listeners=[stop_at(paths.root, 2)])
    # resume the stopped run with an absurd learning rate: it must fail, not save
    bad = paths.config.read_text().replace("learning_rate: 0.005", "learning_rate: 1.0e+30")
    bad = bad.replace("grad_clip: 1.0", "grad_clip: 0.0")
    paths.config.write_text(bad)
    with pytest.raises(TrainingFailed, match="nan|inf"):
        engine.train(None, run, resume=True)
    *_, diagnosis, last = read_events(paths.events)
    assert isinstance(last, RunFailed) and last.last_checkpoint.endswith("step-0000002")
    # the diagnosis goes first (a reader following the run stops at run_failed)
    assert (diagnosis.type, diagnosis.kind, diagnosis.severity) == (
        "diagnosis",
        "lr_too_high",
        "critical",
    )
    assert "training.learning_rate" in diagnosis.remedy[0]
    assert paths.latest_checkpoint().name == "step-0000002"
    assert (paths.latest_checkpoint() / "adapters.safetensors").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_fails_the_run_on_one_line_and_it_resumes(home, quickstart_data, tmp_path):
    """A write refused with ENOSPC ended the run in an OSError traceback, its run_failed
    naming no checkpoint; /dev/full refuses every write as a full disk does."""
    cfg = make_config(quickstart_data, "training.max_steps=6", "training.eval_every=3")
    run = tmp_path / "run"
    paths = RunPaths(run)
    publishing = paths.adapters / ".adapters.safetensors.tmp"  # written at each checkpoint

    def fill_the_disk(event):
        if isinstance(event, Step) and event.step == 2:
            publishing.symlink_to("/dev/full")

    with pytest.raises(TrainingFailed) as failed:
        engine.train(cfg, run, listeners=[fill_the_disk])
    last = paths.checkpoints / "step-0000003"
    assert str(failed.value) == (
        "cannot write the run at step 3: No space left on device; free space, then "
        f"`mlxlora train --resume {run}`; last good checkpoint: {last}"
    )
    failure = read_events(paths.events)[-1]
    assert isinstance(failure, RunFailed) and failure.last_checkpoint == str(last)
    assert not publishing.is_symlink()  # a half-written file gives its space back

    summary = engine.train(None, run, resume=True)
    assert summary["steps"] == 6 and sorted(steps(run)) == list(range(1, 7))


def test_an_event_line_cut_short_leaves_the_resumed_runs_events_whole(
    home, quickstart_data, tmp_path
):
    """A full disk cuts the last event line short; the resume's run_started was appended to
    that half line and lost with it, so the views took the resumed steps for new ones."""
    cfg = make_config(quickstart_data, "training.max_steps=6", "training.eval_every=3")
    run = tmp_path / "run"
    paths = RunPaths(run)

    engine.train(cfg, run, listeners=[stop_at(paths.root, 4)])
    text = paths.events.read_text()
    paths.events.write_text(text[: len(text) - 40])  # the run's last line, cut short
    engine.train(None, run, resume=True)
    started = [e for e in read_events(paths.events) if isinstance(e, RunStarted)]
    assert [e.resumed_from_step for e in started] == [0, 4]
    assert sorted(steps(run)) == list(range(1, 7))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_checkpoint_cut_short_is_passed_over_for_the_one_before(
    home, quickstart_data, tmp_path, backend
):
    """A checkpoint file cut short (copied in part, written to a full disk) made resume fail
    with mlx's RuntimeError traceback although the checkpoint before it was whole."""
    if backend == "torch":
        pytest.importorskip("peft")
    cfg = make_config(
        quickstart_data, "training.max_steps=6", "training.eval_every=3", f"backend={backend}"
    )
    run = tmp_path / "run"
    paths = RunPaths(run)

    engine.train(cfg, run, listeners=[stop_at(paths.root, 4)])
    ruined = tmp_path / "ruined"
    shutil.copytree(run, ruined)
    optimizer = paths.checkpoints / "step-0000004" / "optimizer.safetensors"
    optimizer_head = optimizer.read_bytes()[:100]
    optimizer.write_bytes(optimizer_head)
    summary = engine.train(None, run, resume=True)
    resumed = [e for e in read_events(paths.events) if isinstance(e, RunStarted)][-1]
    assert resumed.resumed_from_step == 3 and summary["steps"] == 6
    (warning,) = [w for w in resumed.warnings if "step-0000004" in w]
    said = "[load_safetensors]" if backend == "mlx" else "Error while deserializing"
    assert warning.startswith(f"checkpoint step-0000004 cannot be read ({said}"), warning
    aside = paths.checkpoints / "unreadable"
    assert warning.endswith(
        f"; resumed from step-0000003, the checkpoint before (step-0000004 moved to {aside})"
    )
    # out of the two checkpoints a run keeps: left there, the damaged step 4 outlived the good
    # step 3 (the run's last checkpoints were 4, unreadable, and 6), its optimizer file kept
    assert [c.name for c in sorted(paths.checkpoints.glob("step-*"))] == [
        "step-0000003",
        "step-0000006",
    ]
    assert (aside / "step-0000004" / "optimizer.safetensors").read_bytes() == optimizer_head

    for checkpoint in RunPaths(ruined).checkpoints.glob("step-*"):
        (checkpoint / "trainer_state.json").write_text('{"step": ')
    with pytest.raises(RunError, match="no checkpoint can be read: checkpoint step-0000004"):
        engine.train(None, ruined, resume=True)


def test_a_bug_in_loading_a_checkpoint_is_not_taken_for_a_damaged_file(
    home, quickstart_data, tmp_path, monkeypatch
):
    """Whatever load_state raised was read as a damaged checkpoint: a bug in it resumed from
    the checkpoint before, or said no checkpoint could be read. It now shows as a bug."""
    from mlxlora.backends.mlx import MLXBackend

    run = tmp_path / "run"
    cfg = make_config(quickstart_data, "training.max_steps=6", "training.eval_every=3")
    engine.train(cfg, run, listeners=[stop_at(run, 4)])

    def load_state_with_a_bug(self, directory):
        raise AttributeError("a stand-in bug")

    monkeypatch.setattr(MLXBackend, "load_state", load_state_with_a_bug)
    with pytest.raises(AttributeError, match="a stand-in bug"):
        engine.train(None, run, resume=True)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_checkpoint_file_the_disk_refuses_raises_no_space_left(home, quickstart_data, tmp_path):
    """mlx's own writer, given a path, returned without a word when /dev/full refused every
    byte: a checkpoint cut short, taken for whole. Written through a Python file, the disk's
    ENOSPC reaches the engine, which fails the run on one line (test above)."""
    import errno

    from mlxlora.backends.mlx import MLXBackend
    from mlxlora.models.resolve import resolve_model

    cfg = make_config(quickstart_data)
    backend = MLXBackend()
    backend.load(resolve_model(cfg.model), cfg)
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        checkpoint = tmp_path / name
        checkpoint.mkdir()
        (checkpoint / name).symlink_to("/dev/full")
        with pytest.raises(OSError) as refused:
            backend.save_state(checkpoint)
        assert refused.value.errno == errno.ENOSPC


def test_early_stopping_keeps_best(home, quickstart_data, tmp_path):
    # min_delta larger than any possible drop: patience runs out two evaluations after the
    # first, while the best adapter still follows the lowest loss
    cfg = make_config(
        quickstart_data,
        "training.eval_every=2",
        "training.epochs=2",
        "training.early_stopping.patience=2",
        "training.early_stopping.min_delta=100.0",
    )
    summary = engine.train(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    stop = [e for e in events if isinstance(e, EarlyStop)]
    assert summary["outcome"] == "early_stop" and len(stop) == 1
    evals = {e.step: e.val_loss for e in events if isinstance(e, Eval) and e.step}
    lowest = min(evals, key=evals.get)
    assert stop[0].step == 6 and stop[0].best_step == lowest == summary["best_step"]
    lows = [s for s in evals if evals[s] == min(v for t, v in evals.items() if t <= s)]
    assert [c.step for c in events if isinstance(c, Checkpoint) and c.best] == lows

    # an early-stopped run has finished: resuming it is refused and changes nothing
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="has finished"):
        engine.train(None, tmp_path / "run", resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_a_new_run_is_named_after_the_job_in_the_workspace(home, quickstart_data):
    cfg = make_config(quickstart_data, "training.max_steps=1", "name=医療専門知識モデル_v1")
    summary = engine.train(cfg)
    (run,) = runs.runs_root().iterdir()
    assert run.name.startswith("医療専門知識モデル_v1-") and summary["outcome"] == "completed"
    assert runs.find_run("医療専門知識モデル_v1") == run
    assert read_events(RunPaths(run).events)[0].run_dir == str(run)


def test_truncation_is_reported(home, tmp_path):
    data = tmp_path / "long.jsonl"
    long = " ".join(["word"] * 400)
    rows = [{"prompt": f"q{i}", "completion": long if i % 2 else "short"} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = make_config(data, "data.max_length=64", "training.max_steps=1", "data.val_split=0")
    engine.train(cfg, tmp_path / "run")
    started = read_events(tmp_path / "run" / "events.jsonl")[0]
    assert started.truncated_records == 4
    assert any("truncated" in w for w in started.warnings)


def test_over_the_machines_budget_a_run_warns_with_advice_and_stops_before_its_first_step(
    home, quickstart_data, tmp_path, monkeypatch
):
    """No training.memory_budget: the machine's budget is watched all the same."""
    from mlxlora import machine

    cfg = make_config(quickstart_data, "training.max_steps=1", "data.max_length=2048")
    monkeypatch.setattr(machine, "memory_budget", lambda: 2 * 1024**2)  # a 2 MB device
    with pytest.raises(TrainingFailed, match=r"step 1 .* over the budget of 2\.0 MiB"):
        engine.train(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    started = events[0]
    assert started.estimated_peak_gb > 0.002
    (warning,) = [w for w in started.warnings if "exceeds" in w]
    assert "training.batch_size=1 training.grad_accumulation=4" in warning
    assert not [e for e in events if isinstance(e, Step)]


def test_the_dry_run_estimates_what_the_run_starts_with(home, quickstart_data, tmp_path):
    """The records are far shorter than data.max_length: the dry run sizes for the longest
    one, as the run does (it sized for max_length: ~3x a QA user's real peak)."""
    from mlxlora.backends import select
    from mlxlora.prepare import memory_plan

    cfg = make_config(quickstart_data, "data.max_length=1024", "training.max_steps=1")
    plan = memory_plan(cfg, select.create(cfg.backend))
    assert plan["length"] < 200  # the quick start's records
    assert not (home / "datasets").exists()  # the dry run stored nothing
    engine.train(cfg, tmp_path / "run")
    (started,) = [
        e for e in read_events(RunPaths(tmp_path / "run").events) if isinstance(e, RunStarted)
    ]
    # the same shape and the same weights: planned before loading (the base's parameters x 4
    # bytes and its LoRA layers'), as loaded in the run; the LoRA weights count in both the
    # weights and the LoRA + optimizer row, as the memory factors were measured
    assert plan["estimate"].total / 1e9 == started.estimated_peak_gb


def test_gradient_checkpointing_gives_the_same_losses(home, quickstart_data, tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    engine.train(make_config(quickstart_data, "training.max_steps=4"), plain)
    engine.train(
        make_config(quickstart_data, "training.max_steps=4", "training.grad_checkpoint=true"), ckpt
    )
    a, b = steps(plain), steps(ckpt)
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5)


@pytest.mark.parametrize("policy", ["keep", "auto"])
def test_4bit_base_trains_as_qlora_or_dequantized_on_cpu(home, quickstart_data, tmp_path, policy):
    import mlx.nn as nn
    from mlx_lm.convert import convert

    from mlxlora.backends.mlx import MLXBackend
    from mlxlora.models.resolve import resolve_model

    q4 = tmp_path / "tiny-4bit"
    convert(
        str(resolve_model("builtin:tiny")),
        mlx_path=str(q4),
        quantize=True,
        q_group_size=32,
        q_bits=4,
    )
    assert json.loads((q4 / "config.json").read_text())["quantization"]["bits"] == 4
    cfg = make_config(quickstart_data, "training.epochs=2", f"quantized_base={policy}")
    cfg.model = str(q4)
    backend = MLXBackend()
    summary = engine.train(cfg, tmp_path / "run", backend=backend)
    losses = list(steps(tmp_path / "run").values())
    assert summary["outcome"] == "completed"
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    q_proj = backend.model.layers[0].self_attn.q_proj
    # keep: LoRA around the 4-bit layer (QLoRA); auto on a CPU: dequantized to float32 first
    assert isinstance(q_proj.linear, nn.QuantizedLinear) == (policy == "keep")
    weights = __import__("safetensors.numpy", fromlist=["load_file"]).load_file(
        str(tmp_path / "run" / "adapters" / "adapters.safetensors")
    )
    assert weights and all("lora_" in k for k in weights)


def test_samples_are_answered_before_and_after(home, quickstart_data, tmp_path):
    cfg = make_config(
        quickstart_data, "training.max_steps=3", "samples=['What is the capital of Chile?']"
    )
    engine.train(cfg, tmp_path / "run")
    samples = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e.type == "sample"]
    assert [(s.when, s.step) for s in samples] == [("before", 0), ("after", 3)]
    assert all(s.prompt == "What is the capital of Chile?" and s.answer for s in samples)


def test_samples_are_asked_with_the_system_prompt_every_record_opens_with(
    home, tmp_path, monkeypatch
):
    """The level-2 tutorial's records all open with one system prompt: the run's samples are
    asked with it (what the backend's generator was asked is recorded on the way through;
    builtin:tiny answers the same newlines either way). Records without one: no system."""
    from mlxlora.backends.mlx import MLXBackend

    asked = []
    real = MLXBackend.generate
    monkeypatch.setattr(
        MLXBackend, "generate", lambda self, m, n: asked.append(m) or real(self, m, n)
    )
    system, prompt = "あなたは丁寧な医療アシスタントです。", "What is the capital of Chile?"
    for name, opening in (("with", [{"role": "system", "content": system}]), ("without", [])):
        data = tmp_path / f"{name}.jsonl"
        turns = [[*opening, {"role": "user", "content": f"q{i}"},
                  {"role": "assistant", "content": f"answer {i}"}] for i in range(12)]  # fmt: skip
        data.write_text("\n".join(json.dumps({"messages": t}, ensure_ascii=False) for t in turns))
        cfg = make_config(data, "training.max_steps=1", f"samples=['{prompt}']")
        engine.train(cfg, tmp_path / name)
    user = {"role": "user", "content": prompt}
    assert asked == [[{"role": "system", "content": system}, user]] * 2 + [[user]] * 2


def test_a_stop_asked_while_a_resume_prepares_is_honoured(
    home, quickstart_data, tmp_path, monkeypatch
):
    """The run is locked while a resume loads its model; a stop asked then (the Runs tab's s,
    `queue stop RUN`) was reported as stopping, and the resume deleted it as it started."""
    cfg = make_config(quickstart_data, "training.max_steps=8")
    paths = RunPaths(tmp_path / "run")

    assert engine.train(cfg, paths.root, listeners=[stop_at(paths.root, 2)])["steps"] == 2
    paths.stop_request.touch()  # a stale request a crash left: the resume clears it
    real_prepare = engine.prepare

    def stop_asked_while_preparing(*args, **kwargs):
        assert not paths.stop_request.exists()
        paths.stop_request.touch()
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(engine, "prepare", stop_asked_while_preparing)
    summary = engine.train(None, paths.root, resume=True)
    assert (summary["outcome"], summary["steps"]) == ("stopped", 3)  # its first step's end
