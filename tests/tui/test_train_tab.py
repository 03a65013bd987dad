"""The Train tab: a job on builtin:tiny typed into the form, validation by config.from_dict as
it is typed, the live memory verdict, presets, and Save as YAML round trips."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from run_fixtures import wait_for
from textual.widgets import Button, Checkbox, Input, Select, Static

from mlxlora import config, machine, memory, memory_weights
from mlxlora.data import store
from mlxlora.models import listing
from mlxlora.models.listing import builtin_tiny_info
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.train import TrainTab
from mlxlora.tui.screens.train.models import ModelField
from mlxlora.tui.screens.train.save_dialog import SaveYamlDialog
from mlxlora.tui.screens.train.stages import StageRow
from mlxlora.tui.widgets.field import FieldRow

REPO = Path(__file__).resolve().parents[2]
BUDGET = 16 * memory.GIB


@pytest.fixture
def workspace(home, quickstart_data, monkeypatch):
    """A workspace with the quick start dataset, on a pretend 16 GiB Linux box; the form
    sizes for records of data.max_length (no `train --dry-run` child counts the longest
    record but in the test of that)."""
    from mlxlora.tui.screens.train import tab as tab_module

    async def not_counted(cfg):
        return None

    monkeypatch.setattr(tab_module, "count_longest", not_counted)
    monkeypatch.setattr(machine, "memory_budget", lambda: BUDGET)
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    monkeypatch.chdir(REPO)  # presets are configs/*.yaml where mlxlora runs
    store.import_dataset(quickstart_data, "quickstart", "quick start Q&A")
    return home


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def problems(app) -> dict[str, str]:
    rows = app.query(FieldRow)
    return {
        r.key: str(r.query_one(".field-problem", Static).content)
        for r in rows
        if r.has_class("-invalid")
    }


async def settle(app, pilot):
    """Wait for this tab's workers (other tabs run watchers that never end)."""
    await pilot.pause()
    await app.workers.wait_for_complete(
        w for w in app.workers if isinstance(w.node, (TrainTab, ModelField, SaveYamlDialog))
    )
    await pilot.pause()


async def type_into(pilot, app, field: str | Input, value: str) -> None:
    """Focus an Input (or its selector), clear it and type `value` key by key."""
    field = app.query_one(field, Input) if isinstance(field, str) else field
    field.focus()
    field.value = ""
    await pilot.press(*value)
    await settle(app, pilot)


async def save(app, pilot, path: Path) -> None:
    await pilot.press("ctrl+s")
    assert isinstance(app.screen, SaveYamlDialog)
    app.screen.query_one("#save-path", Input).value = str(path)
    await pilot.click("#save-ok")
    await settle(app, pilot)


def test_job_on_tiny_typed_into_the_form(workspace, tmp_path):
    saved = tmp_path / "ジョブ.yaml"

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            tab = app.query_one(TrainTab)
            assert app.query_one("#f-dataset", Select).value == "quickstart"
            assert problems(app) == {}
            store.import_records([{"text": "x"}], "後から", "text")  # while the app is open
            await pilot.press("1", "2")
            await settle(app, pilot)
            options = app.query_one("#f-dataset", Select)._options
            assert [v for _, v in options if v is not Select.NULL] == ["quickstart", "後から"]
            # each with its records, as the tutorial picks `医療専門知識データセット (20)`
            labels = [str(label) for label, v in options if v is not Select.NULL]
            assert labels[1] == "後から (1)" and re.fullmatch(r"quickstart \(\d+\)", labels[0])
            assert app.query_one("#f-dataset", Select).value == "quickstart"
            await type_into(pilot, app, "#f-name", "医療テスト")
            assert app.query_one("#f-name", Input).value == "医療テスト"

            await type_into(pilot, app, "#f-lora-rank", "0")
            assert problems(app) == {"lora.rank": "lora.rank: 0 is not allowed (>= 1)"}
            assert text(app, "#train-status") == "1 problem to fix"  # not "1 problem(s)"
            assert text(app, "#train-memory").startswith("memory: fix the problems above")
            await type_into(pilot, app, "#f-lora-rank", "16")
            await type_into(pilot, app, "#f-data-max_length", "256")
            assert problems(app) == {}

            # The verdict is the engine's estimate for this form on this (pretend) machine.
            shape = memory.on_cpu(memory.TrainShape(lora_rank=16, max_length=256))
            est = run_estimate(builtin_tiny_info(), shape)
            expected = f"memory ~{memory.fmt_bytes(est.total)} of a 16.0 GiB budget: fits"
            verdict, parts = text(app, "#train-memory").split("\n")
            assert verdict == f"[green]{expected}[/]"
            # the breakdown, so a user sees what to cut
            assert f"loss chunks {memory.fmt_bytes(est.loss)}" in parts
            assert f"attention {memory.fmt_bytes(est.attention)}" in parts
            assert parts.startswith("[dim]records of 256 tokens: model weights ")  # assumed

            await type_into(pilot, app, "#f-training-batch_size", "256")
            await type_into(pilot, app, "#f-data-max_length", "8192")
            verdict = text(app, "#train-memory")
            assert "will not fit" in verdict and "try: training.batch_size=1" in verdict
            assert "training.fit=auto fits it: training.batch_size=" in verdict  # the offer
            fit = app.query_one("#f-fit", Checkbox)
            fit.scroll_visible(animate=False)  # below the fold at 80 x 24
            await pilot.pause()
            await pilot.click(fit)  # taken: the verdict is the configuration the run starts as
            await settle(app, pilot)
            assert fit.value and app.query_one(TrainTab).cfg.training.fit == "auto"
            verdict = text(app, "#train-memory")
            assert verdict.split("\n")[0].endswith(("fits[/]", "tight[/]"))
            assert "will not fit" not in verdict
            assert "fit: auto changes training.batch_size=" in verdict
            await pilot.click(fit)
            await settle(app, pilot)
            assert "will not fit" in text(app, "#train-memory")
            await type_into(pilot, app, "#f-training-batch_size", "4")
            await type_into(pilot, app, "#f-data-max_length", "256")
            # the run's own budget, as the CLI holds it to it (the form used the machine's)
            await type_into(pilot, app, "#f-training-memory_budget", "1MB")
            verdict = text(app, "#train-memory")
            assert f"of a {memory.fmt_bytes(10**6)} budget: will not fit" in verdict
            await type_into(pilot, app, "#f-training-memory_budget", "")
            assert "of a 16.0 GiB budget: fits" in text(app, "#train-memory")

            # the troubleshooting keys the tutorial changes "in the Train tab's form"
            checkpoint = app.query_one("#f-checkpoint", Checkbox)
            checkpoint.value = True
            await settle(app, pilot)
            shape = memory.on_cpu(
                memory.TrainShape(lora_rank=16, max_length=256, grad_checkpoint=True)
            )
            est = run_estimate(builtin_tiny_info(), shape)
            assert f"memory ~{memory.fmt_bytes(est.total)} of" in text(app, "#train-memory")
            for key, value in (
                ("training-grad_clip", "0.5"),
                ("training-weight_decay", "0.01"),
                ("data-val_split", "0.2"),
                ("training-max_steps", "40"),
                ("training-eval_every", "10"),
            ):
                await type_into(pilot, app, f"#f-{key}", value)
            t, d = app.query_one(TrainTab).cfg.training, app.query_one(TrainTab).cfg.data
            assert (t.grad_checkpoint, t.grad_clip, t.weight_decay) == (True, 0.5, 0.01)
            assert (d.val_split, t.max_steps, t.eval_every) == (0.2, 40, 10)
            checkpoint.value = False
            await settle(app, pilot)

            targets = {box.name: box for box in app.query("#train-targets Checkbox")}
            assert list(targets) == [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]  # builtin:tiny's real modules
            targets["down_proj"].value = True
            await settle(app, pilot)
            assert tab.cfg.lora.target_modules == ["q_proj", "v_proj", "down_proj"]
            await save(app, pilot, saved)
            assert f"saved {saved}" == text(app, "#train-status")
            return tab.cfg

    cfg = asyncio.run(go())
    assert cfg.name == "医療テスト" and cfg.lora.rank == 16 and cfg.data.dataset == "quickstart"
    assert config.load(saved) == cfg
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlxlora",
            "train",
            str(saved),
            "--set",
            "training.max_steps=2",
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    assert events[-1]["step"] == 2


def test_stages_validate_and_save(workspace, tmp_path):
    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            tab = app.query_one(TrainTab)
            assert not app.query_one("#train-stages").display
            app.query_one("#f-schedule", Select).value = "staged"
            await settle(app, pilot)
            assert app.query_one("#train-stages").display
            assert [r.stage() for r in app.query(StageRow)] == [("0.0001", "3")]
            ignored = ("#f-training-learning_rate", "#f-training-epochs")  # the stages set them
            assert all(app.query_one(box, Input).disabled for box in ignored)
            head = [str(label.content) for label in app.query("#stage-head Label")]
            assert head[1:3] == ["learning rate", "epochs"]
            app.query_one("#stage-add", Button).press()
            await settle(app, pilot)
            epochs = app.query(StageRow)[1].query_one(".stage-epochs", Input)
            await type_into(pilot, app, epochs, "0")
            assert problems(app) == {
                "training.stages": "training.stages[1].epochs: 0.0 is not allowed (> 0)"
            }
            await type_into(pilot, app, epochs, "1.5")
            assert problems(app) == {}
            assert [(s.learning_rate, s.epochs) for s in tab.cfg.training.stages] == [
                (1e-4, 3.0),
                (1e-4, 1.5),
            ]
            assert tab.cfg.training.epochs == 4.5
            # the fields the stages set show what they set (epochs said 3.0, saved as 4.5)
            shown = [app.query_one(box, Input).value for box in ignored]
            assert shown == ["0.0001", "4.5"]
            await save(app, pilot, tmp_path / "staged.yaml")
            return tab.cfg

    cfg = asyncio.run(go())
    assert config.load(tmp_path / "staged.yaml") == cfg


@pytest.mark.parametrize("preset", ["tiny.yaml", "level3_medical_staged.yaml"])
def test_a_preset_loads_and_saves_unchanged(workspace, tmp_path, preset):
    path = REPO / "configs" / preset
    expected = config.load(path)

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            app.query_one("#train-preset", Select).value = str(path)
            await settle(app, pilot)
            assert app.query_one("#f-name", Input).value == expected.name
            assert app.query_one("#f-lora-rank", Input).value == str(expected.lora.rank)
            checked = [box.name for box in app.query("#train-targets Checkbox") if box.value]
            assert sorted(checked) == sorted(expected.lora.target_modules)
            stages = [r.stage() for r in app.query(StageRow)]
            assert len(stages) == len(expected.training.stages)
            # whole numbers as the YAML has them (the fields showed 32.0, 5.0 and 2.0)
            assert app.query_one("#f-lora-alpha", Input).value == str(int(expected.lora.alpha))
            epochs = str(int(expected.training.epochs))
            assert app.query_one("#f-training-epochs", Input).value == epochs
            if expected.training.stages:
                assert stages == [("0.0001", "2"), ("5e-05", "2"), ("1e-05", "1")]
            assert problems(app) == {}
            await save(app, pilot, tmp_path / "again.yaml")

    asyncio.run(go())
    assert config.load(tmp_path / "again.yaml") == expected


def test_save_never_overwrites(workspace, tmp_path):
    taken = tmp_path / "taken.yaml"
    taken.write_text("keep me\n", "utf-8")

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await save(app, pilot, taken)
            assert isinstance(app.screen, SaveYamlDialog)
            assert text(app, "#save-error") == f"{taken} exists; choose another name"

    asyncio.run(go())
    assert taken.read_text("utf-8") == "keep me\n"


def test_a_config_saved_or_added_to_the_presets_folder_is_offered(workspace, tmp_path, monkeypatch):
    from mlxlora.tui.screens.train import form

    presets = tmp_path / "configs"
    presets.mkdir()
    (presets / "tiny.yaml").write_bytes((REPO / "configs" / "tiny.yaml").read_bytes())
    monkeypatch.setattr(form, "preset_dir", lambda: presets)

    def offered(app) -> list[str]:
        return [str(label) for label, _ in app.query_one("#train-preset", Select)._options]

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert offered(app) == ["custom", "tiny.yaml"]
            await save(app, pilot, presets / "実用知識-中級.yaml")
            assert offered(app) == ["custom", "tiny.yaml", "実用知識-中級.yaml"]
            (presets / "added.yaml").write_bytes((presets / "tiny.yaml").read_bytes())
            await pilot.press("1", "2")  # back on the tab: the folder is read again
            await settle(app, pilot)
            assert offered(app)[1:] == ["added.yaml", "tiny.yaml", "実用知識-中級.yaml"]
            assert app.query_one("#train-preset", Select).value == "custom"

    asyncio.run(go())


def test_the_form_picks_the_backend_a_job_trains_on(workspace, monkeypatch):
    """The form had no backend: a torch job (PyTorch + PEFT) could start from the Train tab
    only through a preset that said so. Now torch is picked in the form, and estimated and
    queued with it; a preset's backend shows in the field."""
    from mlxlora import queue, queue_runner

    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the job stays queued

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await load_tiny_preset(app, pilot)
            backend = app.query_one("#f-backend", Select)
            assert backend.value == "auto"
            await type_into(pilot, app, "#f-name", "医療モデル_torch")
            backend.value = "torch"
            await settle(app, pilot)
            assert app.query_one(TrainTab).cfg.backend == "torch"
            await pilot.press("ctrl+g")
            await pilot.pause(0.5)
            (job,) = queue.jobs()
            assert config.load(job.config).backend == "torch"
            await pilot.press("2")
            preset = {**config.load(REPO / "configs" / "tiny.yaml").to_dict(), "backend": "mlx"}
            await app.query_one(TrainTab).fill(preset)
            await settle(app, pilot)
            assert backend.value == "mlx" and app.query_one(TrainTab).cfg.backend == "mlx"

    asyncio.run(go())


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot(workspace, snap_compare, size):
    async def loaded(pilot):
        await settle(pilot.app, pilot)
        pilot.app.query_one("#f-name", Input).value = "医療テスト"  # wide characters
        await settle(pilot.app, pilot)

    assert snap_compare(MlxloraApp("train"), terminal_size=size, run_before=loaded)


def write_model(directory: Path, blocks: list[str]) -> Path:
    """A local model directory whose first block holds these linear layers (gpt2-like)."""
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir()
    arch = {
        "model_type": "gpt2",
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "vocab_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    (directory / "config.json").write_text(json.dumps(arch), "utf-8")
    tensors = {f"transformer.h.0.{b}.weight": np.zeros((8, 8), np.float32) for b in blocks}
    tensors["transformer.h.0.ln_1.weight"] = np.zeros(8, np.float32)  # not a linear layer
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_the_model_picker_and_the_models_own_modules(workspace, tmp_path):
    gpt2 = write_model(tmp_path / "gpt2", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            pick = app.query_one("#train-model-pick", Select)
            qwen = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
            label = next(str(label) for label, value in pick._options if value == qwen)
            assert label == f"{qwen}  494M  too big"  # batch 4 x 2048 in float32 on a CPU
            pick.value = qwen
            await settle(app, pilot)
            assert app.query_one("#f-model", Input).value == qwen
            assert text(app, "#train-model-info") == "494M params, 267.0 MiB (4-bit)"
            assert "will not fit" in text(app, "#train-memory")
            await type_into(pilot, app, "#f-data-max_length", "256")
            assert text(app, "#train-memory").startswith("[green]memory ~")

            await type_into(pilot, app, "#f-model", "someone/not-in-the-catalog")
            assert text(app, "#train-memory") == (
                "memory: unknown (size unknown until training fetches or converts it)"
            )

            await type_into(pilot, app, "#f-model", str(gpt2))
            names = [box.name for box in app.query("#train-targets Checkbox")]
            assert names == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
            assert problems(app) == {}

    asyncio.run(go())


# What `mlxlora doctor --json` says on a CUDA host with torch (an H100): the device's facts.
CUDA_REPORT = {
    "backend": "torch",
    "device": "gpu (CUDA, NVIDIA H100 80GB HBM3)",
    "dtype": "bfloat16",
    "attention": "fused",
    "device_budget_bytes": 84_974_239_744,
    "training_budget_bytes": BUDGET,
}


def test_on_a_cuda_host_the_form_estimates_for_the_gpu_doctor_names(workspace, monkeypatch):
    """No backend is imported in the app: where an NVIDIA driver is, the Train tab asks a
    doctor child which device `backend: auto` trains on, then estimates for it (half
    precision, fused attention, the card's memory), not for the CPU it guessed. The marks
    read before the doctor answered, for the CPU's budget, never land after the card's (in
    CI, with 16 GB free, the card's estimate against the CPU's budget said "tight")."""
    from mlxlora.tui.screens import system

    asked = []

    async def doctor_on_an_h100():
        asked.append(1)
        return CUDA_REPORT

    monkeypatch.setattr(machine, "maybe_cuda", lambda: True)
    monkeypatch.setattr(machine, "memory_budget", lambda: BUDGET)
    monkeypatch.setattr(system, "doctor_report", doctor_on_an_h100)
    read_rows, first, card_marks = listing.builtin_rows, [], threading.Event()

    def first_read_slowly(*args):
        if not first:  # the CPU's marks, read before the doctor answered
            first.append(args[1])
            card_marks.wait(timeout=60)  # a cancelled thread runs on: it ends after the card's
        return read_rows(*args)

    monkeypatch.setattr(listing, "builtin_rows", first_read_slowly)
    landed, set_options = [], ModelField._set_options  # the device of each marks' answer

    def set_options_seen(field, marks_for, options):
        landed.append(marks_for[2])
        card_marks.set()  # the first to land is a newer thread's: the first read still waits
        set_options(field, marks_for, options)

    monkeypatch.setattr(ModelField, "_set_options", set_options_seen)

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert asked == [1]
            qwen = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
            pick = app.query_one("#train-model-pick", Select)
            await wait_for(pilot, lambda: first[0] in landed[1:])  # the CPU's, after the card's
            assert _label(pick, qwen) == f"{qwen}  494M  fits"  # "too big" on the CPU
            await type_into(pilot, app, "#f-data-max_length", "256")
            cfg = app.query_one(TrainTab).cfg
            shape = memory.TrainShape.from_config(cfg)
            gpu = run_estimate(builtin_tiny_info(), replace(shape, attention="fused"))
            budget = memory.fmt_bytes(CUDA_REPORT["device_budget_bytes"])
            assert text(app, "#train-memory").split("\n")[0] == (
                f"[green]memory ~{memory.fmt_bytes(gpu.total)} of a {budget} budget: fits[/]"
            )
            cpu = run_estimate(builtin_tiny_info(), memory.on_cpu(shape))
            assert gpu.total < cpu.total  # bfloat16 weights and activations, not float32

    asyncio.run(go())


def test_the_form_follows_the_device_the_system_tab_learned(workspace, monkeypatch):
    """The System tab's doctor child names the CUDA card first: back on Train, the verdict
    is the card's (its budget too), not the CPU's it showed before."""
    from mlxlora.tui.screens import system

    async def doctor_on_an_h100():
        return CUDA_REPORT

    monkeypatch.setattr(system, "doctor_report", doctor_on_an_h100)

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert "of a 16.0 GiB budget" in text(app, "#train-memory")  # the CPU's guess
            await pilot.press("6")
            # the tab mounts, then its worker asks doctor: on two busy cores 0.5 s was not enough
            await wait_for(pilot, lambda: app.query_one("#system-tab").doctor is not None)
            assert machine.training_device().own_memory == CUDA_REPORT["device_budget_bytes"]
            await pilot.press("2")
            await settle(app, pilot)
            budget = memory.fmt_bytes(CUDA_REPORT["device_budget_bytes"])
            assert f"of a {budget} budget" in text(app, "#train-memory")

    asyncio.run(go())


def test_a_dataset_removed_meanwhile_leaves_the_form(workspace):
    """Removed from the Datasets tab, the form still chose it and said "ready"; the job then
    failed when it was started."""

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert app.query_one("#f-dataset", Select).value == "quickstart"
            store.remove_dataset("quickstart", force=True)
            await pilot.press("1", "2")
            await settle(app, pilot)
            assert app.query_one("#f-dataset", Select).value is Select.NULL
            assert "data.dataset" in problems(app)

    asyncio.run(go())


def test_without_a_dataset_the_form_says_where_to_get_one(workspace, tmp_path):
    """A first launch (no datasets) said "data.dataset: '' is not allowed (a dataset name or
    file)" under a picker that takes no file name: nothing said to import one first."""

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            store.remove_dataset("quickstart", force=True)
            await pilot.press("1", "2")
            await settle(app, pilot)
            want = "no datasets yet: import one on the Datasets tab (1, then i)"
            assert problems(app)["data.dataset"] == want
            store.import_dataset(REPO / "tutorial/data/quickstart.jsonl", "qs")
            await pilot.press("1", "2")
            await settle(app, pilot)
            assert problems(app)["data.dataset"] == "choose a dataset"

    asyncio.run(go())


def test_the_verdict_is_for_the_longest_record_a_child_counted(workspace, monkeypatch):
    """A child `train --dry-run --json` counts the records with the model's tokenizer (the
    app imports no transformers); the verdict then sizes for the longest record, as the run
    and the dry run do (the form said 5.5 GiB for a level-2 job that peaked at 1.7)."""
    from mlxlora.run_memory import longest_record
    from mlxlora.tui.screens.train import form
    from mlxlora.tui.screens.train import tab as tab_module
    from mlxlora.tui.screens.train.longest import count_longest

    monkeypatch.setattr(tab_module, "count_longest", count_longest)  # the real child

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            cfg = app.query_one(TrainTab).cfg
            deadline = time.monotonic() + 120
            while "the longest record" not in text(app, "#train-memory"):
                assert time.monotonic() < deadline, text(app, "#train-memory")
                await pilot.pause(0.2)
            return cfg, text(app, "#train-memory")

    cfg, shown = asyncio.run(go())
    from mlxlora.models.resolve import resolve_model

    longest = longest_record(cfg, resolve_model(cfg.model))
    assert longest < cfg.data.max_length
    assert f"the longest record, {longest} tokens: " in shown
    verdict = form.memory_verdict(cfg, builtin_tiny_info(), BUDGET, longest)
    assert shown.startswith(f"[green]{verdict.line()}[/]")
    assert verdict.total < form.memory_verdict(cfg, builtin_tiny_info(), BUDGET).total


def test_a_hub_model_not_downloaded_is_not_downloaded_to_count_records(
    workspace, tmp_path, monkeypatch
):
    """Picking a catalog model in the form must not start a download of its weights in a
    counting child: the child runs offline and the form sizes for data.max_length."""
    from mlxlora.tui.children import Child
    from mlxlora.tui.screens.train.longest import count_longest

    started, real = [], Child.start.__func__

    async def recorded(cls, *args, **kw):  # the real child, its environment noted
        started.append(kw.get("env") or {})
        return await real(cls, *args, **kw)

    monkeypatch.setattr(Child, "start", classmethod(recorded))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = config.from_dict(
        {"model": "mlx-community/SmolLM2-135M-Instruct", "data": {"dataset": "quickstart"}}
    )
    assert asyncio.run(count_longest(cfg)) is None
    assert started == [{"HF_HUB_OFFLINE": "1"}]  # this machine has no hub to fetch from
    assert not any((tmp_path / "hub").glob("models--*"))  # nothing fetched


def test_the_budget_is_read_again_when_the_tab_comes_back(workspace, monkeypatch):
    """Linux's budget is the memory free now: the form said 22.9 GiB long after the System
    tab said 22.1 (a QA finding)."""

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert "of a 16.0 GiB budget" in text(app, "#train-memory")
            monkeypatch.setattr(machine, "memory_budget", lambda: 12 * memory.GIB)
            await pilot.press("1", "2")
            await settle(app, pilot)
            assert "of a 12.0 GiB budget" in text(app, "#train-memory")

    asyncio.run(go())


def test_a_config_that_forces_another_backend_is_estimated_on_its_own_device(workspace):
    """auto trains on the learned CUDA card; `backend: mlx` there trains on the CPU (mlx[cpu]),
    with the machine's memory: the form's verdict says so, not the card's."""
    from mlxlora.tui.screens.train import form

    machine.learn_training_device(CUDA_REPORT)
    info = builtin_tiny_info()
    auto = config.from_dict({"data": {"dataset": "quickstart", "max_length": 256}})
    forced = config.from_dict({**auto.to_dict(), "backend": "mlx"})
    card = run_estimate(info, replace(memory.TrainShape.from_config(auto), attention="fused"))
    assert form.memory_verdict(auto, info, CUDA_REPORT["device_budget_bytes"]).total == card.total
    cpu = run_estimate(info, memory.on_cpu(memory.TrainShape.from_config(forced)))
    verdict = form.memory_verdict(forced, info, CUDA_REPORT["device_budget_bytes"])
    assert (verdict.total, verdict.budget) == (cpu.total, BUDGET)


def run_estimate(info: dict, shape: memory.TrainShape) -> memory.MemoryEstimate:
    """The estimate a run of `shape` starts with: the model's weights as loaded (builtin:tiny's
    are float), its LoRA layers' among them."""
    loaded = memory_weights.weight_bytes(
        info, shape.dtype_bytes
    ) + memory_weights.lora_weight_bytes(info, shape)
    return memory.estimate(info, shape, weights=loaded)


def _label(pick: Select, value: str) -> str | None:
    return next((str(label) for label, v in pick._options if v == value), None)


async def load_tiny_preset(app, pilot) -> None:
    await settle(app, pilot)
    app.query_one("#train-preset", Select).value = str(REPO / "configs" / "tiny.yaml")
    await settle(app, pilot)


def test_start_queues_the_job_and_the_runner_trains_it(workspace):
    from run_fixtures import write_run
    from textual.widgets import TabbedContent

    from mlxlora import queue

    write_run("前の実行")  # the Runs tab selected it: the new job's details were not shown

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("3")  # the Runs tab open on the earlier run
            await pilot.pause(0.5)
            await pilot.press("2")
            await load_tiny_preset(app, pilot)
            await type_into(pilot, app, "#f-name", "開始テスト")
            await type_into(pilot, app, "#f-training-epochs", "1")
            cfg = app.query_one(TrainTab).cfg
            await pilot.press("ctrl+g")
            await pilot.pause()
            assert app.query_one(TabbedContent).active == "runs"
            (job,) = queue.jobs()
            runs_tab = app.query_one("#runs-tab")
            deadline = time.monotonic() + 240
            while job.state != "done" and time.monotonic() < deadline:
                await pilot.pause(0.5)
                (job,) = queue.jobs()
                if runs_tab.selected_key() not in (f"job:{job.id}", job.run_dir):
                    raise AssertionError(f"the Runs tab selected {runs_tab.selected_key()}")
            await pilot.pause(1.0)
            assert runs_tab.selected_key() == job.run_dir  # the job, then the run it became
            return cfg

    cfg = asyncio.run(go())
    (job,) = queue.jobs()
    assert job.name == "開始テスト" and config.load(job.config) == cfg
    assert (job.state, job.exit_code, job.error) == ("done", 0, None)
    events = [json.loads(line) for line in Path(job.run_dir, "events.jsonl").open()]
    assert events[-1]["type"] == "run_finished"


def test_the_first_start_opens_the_runs_tab_on_the_job(workspace, monkeypatch):
    """The tutorial's first Start, the Runs tab never opened: the studio crashed (NoMatches:
    the tab, mounted that moment, was asked for its table before it had one)."""
    from textual.widgets import TabbedContent

    from mlxlora import queue, queue_runner

    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the job stays queued

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await load_tiny_preset(app, pilot)
            await type_into(pilot, app, "#f-name", "最初の実行")
            await pilot.press("ctrl+g")
            await pilot.pause(0.5)
            assert app.query_one(TabbedContent).active == "runs"
            (job,) = queue.jobs()
            assert app.query_one("#runs-tab").selected_key() == f"job:{job.id}"
            assert "job     " + queue.short_id(job.id) in str(app.query_one("#run-stats").render())

    asyncio.run(go())


def test_start_refuses_a_model_that_is_not_there_and_queues_nothing(workspace):
    from mlxlora import queue

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await load_tiny_preset(app, pilot)
            assert app.query_one("#f-dataset", Select).prompt == "choose a dataset"  # some stored
            await type_into(pilot, app, "#f-lora-num_layers", "999")  # builtin:tiny has 4
            await pilot.pause()
            assert problems(app) == {
                "lora.num_layers": "999 is more than the model's 4 layers (-1: all)"
            }
            await type_into(pilot, app, "#f-lora-num_layers", "-1")
            assert problems(app) == {}
            await type_into(pilot, app, "#f-model", "builtin:無い")
            await pilot.press("ctrl+g")
            await pilot.pause()
            return text(app, "#train-status")

    status = asyncio.run(go())
    assert status.startswith("builtin:無い: unknown builtin model")
    assert queue.jobs() == []


def test_sweep_dialog_checks_the_grid_and_queues_every_combination(workspace, monkeypatch):
    """ctrl+t: the form's job as a sweep's base; the grid validated as typed (nothing queued
    while a combination is invalid), then every combination queued as `mlxlora sweep` does."""
    from textual.widgets import TabbedContent

    from mlxlora import queue, queue_runner, sweep
    from mlxlora.tui.screens.train.sweep_dialog import SweepDialog

    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # queued, not trained

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await type_into(pilot, app, "#f-name", "医療")
            cfg = app.query_one(TrainTab).cfg
            await pilot.press("ctrl+t")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, SweepDialog)
            assert dialog.query_one("#sweep-name", Input).value == "医療-sweep"
            queue_button = dialog.query_one("#sweep-queue", Button)
            plan = dialog.query_one("#sweep-plan", Static)
            assert "type a grid" in str(plan.content) and queue_button.disabled
            await pilot.press(*"lora.rank=8,16")
            assert str(plan.content) == "2 runs: 医療-sweep-rank8, 医療-sweep-rank16"
            await pilot.press("enter", *"lora.dropout=0.05,2")
            error = str(plan.content)
            assert error.startswith("sweep 医療-sweep: 2 problems: 医療-sweep-rank8-dropout2:")
            assert "lora.dropout" in error and len(error.splitlines()) == 1
            assert plan.has_class("-failed") and queue_button.disabled
            await pilot.click("#sweep-queue")
            assert queue.jobs() == [] and app.screen is dialog  # nothing queued on an error
            await pilot.press("backspace", *"0.1")
            assert str(plan.content).startswith("4 runs: 医療-sweep-rank8-dropout0.05, ")
            grid = "model=builtin:nope"  # a valid config naming no model: refused on Queue
            await pilot.press("enter", *grid)
            assert not queue_button.disabled  # the live check reads no model or dataset
            await pilot.click("#sweep-queue")
            assert "builtin:nope: unknown builtin model" in str(plan.content)
            assert queue.jobs() == [] and app.screen is dialog
            assert not (sweep.root() / "医療-sweep.yaml").exists()  # no base written either
            dialog.query_one("#sweep-grid").focus()  # the click focused the button
            await pilot.press(*["backspace"] * (len(grid) + 1))
            await pilot.click("#sweep-queue")
            await pilot.pause()
            assert not isinstance(app.screen, SweepDialog)
            assert text(app, "#train-status") == "sweep 医療-sweep: 4 of 4 runs queued"
            assert app.query_one(TabbedContent).active == "runs"
            return cfg

    cfg = asyncio.run(go())
    jobs = {job.name: config.load(job.config) for job in queue.jobs()}
    assert sorted(jobs) == sorted(
        f"医療-sweep-rank{r}-dropout{d}" for r in (8, 16) for d in ("0.05", "0.1")
    )
    job = jobs["医療-sweep-rank16-dropout0.1"]
    assert (job.lora.rank, job.lora.dropout, job.sweep) == (16, 0.1, "医療-sweep")
    assert job.data.dataset == cfg.data.dataset == "quickstart"
    assert job.training == cfg.training  # the form's job, but for the grid's keys
    assert [m.state for m in sweep.status("医療-sweep")] == ["queued"] * 4
    assert (sweep.root() / "医療-sweep.yaml").read_text("utf-8") == cfg.to_yaml()


def test_a_sweep_queued_again_continues_and_another_base_is_refused(workspace, monkeypatch):
    from mlxlora import queue, queue_runner
    from mlxlora.tui.screens.train.sweep_dialog import SweepDialog

    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)

    async def sweep_form(app, pilot) -> str:
        """Open the dialog on the form, sweep lora.rank=4,8, queue; what the dialog said."""
        await pilot.press("ctrl+t")
        await pilot.pause()
        app.screen.query_one("#sweep-grid").text = "lora.rank=4,8"
        await pilot.pause()
        await pilot.click("#sweep-queue")
        await pilot.pause()
        if isinstance(app.screen, SweepDialog):
            said = str(app.screen.query_one("#sweep-plan", Static).content)
            await pilot.press("escape")
            return said
        return text(app, "#train-status")

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            first = await sweep_form(app, pilot)
            await pilot.press("2")
            again = await sweep_form(app, pilot)  # the same form: the sweep continues
            await type_into(pilot, app, "#f-training-epochs", "1")
            other = await sweep_form(app, pilot)
            return first, again, other

    first, again, other = asyncio.run(go())
    assert first == "sweep run-sweep: 2 of 2 runs queued"
    assert again == "sweep run-sweep: 0 of 2 runs queued"  # both still waiting in the queue
    assert other.startswith("sweep run-sweep exists with another base config")
    assert len(queue.jobs()) == 2
