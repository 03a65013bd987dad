"""The Playground: the base and the tuned model answer one prompt, streamed from children."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from mlxlora.cli import main
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.playground import AnswerPane, PlaygroundTab

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def train_tiny_run(home, name="quick", backend="auto", model="builtin:tiny"):
    """A real 3-step run on builtin:tiny in the workspace: what the Playground offers. Trained
    by `mlxlora train` in this process: a child spent its seconds importing the frameworks,
    and the Playground's own children are what these tests watch."""
    run = home / "runs" / name
    assert main(
        ["train", str(REPO / "configs" / "tiny.yaml"), "--set", "training.max_steps=3", "--set",
         "training.learning_rate=0.01", "--set", f"backend={backend}", "--set", f"model={model}",
         "--run-dir", str(run), "--json"]
    ) == 0  # fmt: skip
    return run


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, built_tiny):
    """The 3-step MLX run trained once for the module, in a workspace of its own."""
    from mlxlora.models.resolve import builtin_dir

    workspace = tmp_path_factory.mktemp("playground-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLXLORA_HOME", str(workspace))
        shutil.copytree(built_tiny, builtin_dir())
        train_tiny_run(workspace, backend="mlx")
    return workspace


@pytest.fixture
def quick(home, trained_once):
    """A copy of that run (and the dataset it names) in the test's workspace: each test gets
    what `train_tiny_run(home, backend="mlx")` gives, and may spoil its copy."""
    shutil.copytree(trained_once / "datasets", home / "datasets", dirs_exist_ok=True)
    return shutil.copytree(trained_once / "runs" / "quick", home / "runs" / "quick")


async def until(pilot, condition, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


async def ask(pilot, prompt: str, max_tokens: str):
    app = pilot.app
    tab = app.query_one(PlaygroundTab)
    await until(pilot, lambda: tab.runs)
    app.query_one("#play-max-tokens").value = max_tokens
    app.query_one("#play-prompt").value = prompt
    app.query_one("#play-prompt").focus()
    await pilot.press("enter")
    return app.query_one("#play-base", AnswerPane), app.query_one("#play-tuned", AnswerPane)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_both_answers_stream_from_children(home, request, backend):
    """The tuned answer streams from the backend the run trained on (torch: torch_infer)."""
    if backend == "torch":
        pytest.importorskip("peft")
        run = train_tiny_run(home, backend=backend)
    else:
        run = request.getfixturevalue("quick")
    from mlxlora import evaluate

    prompt, system = "東京について教えて", "あなたは丁寧なアシスタントです。"
    expected_base = evaluate.generate("builtin:tiny", prompt, max_tokens=7, system=system)
    expected_tuned = evaluate.generate(None, prompt, adapter=str(run), max_tokens=7, system=system)
    *_, done = evaluate.generate_stream("builtin:tiny", prompt, max_tokens=7, system=system)
    *_, plain = evaluate.generate_stream("builtin:tiny", prompt, max_tokens=7)
    assert done["prompt_tokens"] > plain["prompt_tokens"]  # the system turn is in the prompt

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            app.query_one("#play-system").value = system  # the tutorial's step 6
            base, tuned = await ask(pilot, prompt, "7")
            assert base.border_subtitle == "builtin:tiny" and tuned.border_subtitle == run.name
            tab = app.query_one(PlaygroundTab)
            await until(pilot, lambda: base.over and tuned.over and tab.child is None)
            for pane, expected in ((base, expected_base), (tuned, expected_tuned)):
                status = str(pane.query_one(".status").render())
                assert pane.text == expected, status
                said = f"done · 7 tokens after a {done['prompt_tokens']}-token prompt · "
                assert status.startswith(said) and "tokens/s" in status

    asyncio.run(go())


def test_the_base_answers_on_the_backend_of_a_torch_run(home, tmp_path):
    """The base pane asked `generate --model` on backend auto (MLX here) beside the tuned pane
    on torch: a torch run's bitsandbytes base, which MLX refuses, failed with an error."""
    pytest.importorskip("bitsandbytes")
    from mlxlora import evaluate
    from tests.engine.test_torch_backend import bnb_4bit_tiny

    model = str(bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit"))
    train_tiny_run(home, name="量子化モデル_torch", backend="torch", model=model)
    expected = evaluate.generate(model, "こんにちは", max_tokens=3, backend="torch")

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            base, tuned = await ask(pilot, "こんにちは", "3")
            await until(pilot, lambda: base.over and tuned.over)
            status = str(base.query_one(".status").render())
            assert status.startswith("done · 3 tokens"), status
            assert base.text == expected

    asyncio.run(go())


def test_cancel_and_closing_the_app_stop_the_child(quick):
    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            tab = app.query_one(PlaygroundTab)
            base, tuned = await ask(pilot, "hi", "1000000")
            await until(pilot, lambda: base.text)  # streaming from the base model
            pid = tab.child.process.pid
            await pilot.press("escape")
            await until(pilot, lambda: base.over and tuned.over, seconds=10)
            await until(pilot, lambda: tab.child is None, seconds=10)
            for pane in (base, tuned):
                assert str(pane.query_one(".status").render()) == "cancelled"
            assert_gone(pid)

            await pilot.press("enter")  # again, then close the app while it streams
            await until(pilot, lambda: tab.child and base.text)
            return tab.child.process.pid

    assert_gone(asyncio.run(go()))  # closing the app stopped it too


def test_escape_leaves_the_prompt_when_nothing_is_answering(home):
    """Esc cancels answers; with none coming it leaves the field, and `3` switches tabs (it
    typed a 3 into the prompt)."""

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.query_one("#play-prompt").focus()
            await pilot.press("escape", "3")
            await pilot.pause()
            assert app.query_one("#play-prompt").value == ""
            assert app.query_one("TabbedContent").active == "runs"

    asyncio.run(go())


def test_with_no_run_picked_it_asks_for_one_rather_than_a_new_run(quick):
    """The picker's empty choice (its first line) said "No finished run to try: train one
    first" beside a list of finished runs."""
    from textual.widgets import Select

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.query_one(PlaygroundTab).runs)
            app.query_one("#play-run", Select).clear()
            app.query_one("#play-prompt").value = "イタリアの首都はどこですか？"
            app.query_one("#play-prompt").focus()
            await pilot.press("enter")
            await pilot.pause()
            assert [str(n.message) for n in app._notifications] == [
                "Pick a run first (the list above the prompt)."
            ]

    asyncio.run(go())


def assert_gone(pid: int, seconds: float = 5.0) -> None:
    """The child's process group has ended (within a few seconds: a signalled process is
    reaped by asyncio's watcher thread)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pid} still alive")


def test_a_failed_child_shows_its_error_in_its_pane(quick):
    (quick / "adapters" / "adapters.safetensors").write_bytes(b"not weights")

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            base, tuned = await ask(pilot, "hi", "3")
            await until(pilot, lambda: base.over and tuned.over)
            assert str(base.query_one(".status").render()).startswith("done · 3 tokens")
            status = str(tuned.query_one(".status").render())
            assert status.startswith("error: ") and "\n" not in status, status
            assert tuned.has_class("-failed") and not base.has_class("-failed")

    asyncio.run(go())


# --- snapshots ------------------------------------------------------------------------------

T0 = 1_764_000_000.0


def finished_run(name: str) -> None:
    """A finished run written by hand (fixed name and times): what the picker lists."""
    from mlxlora import runs
    from mlxlora.events import EventWriter, RunFinished, RunStarted

    path = runs.runs_root() / name
    (path / "adapters").mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\nmodel: builtin:tiny\n", encoding="utf-8")
    for f in runs.ADAPTER_FILES:
        (path / "adapters" / f).write_text("{}")
    with EventWriter(path / "events.jsonl") as events:
        events.emit(
            RunStarted(str(path), "builtin:tiny", "mlx", "cpu", 8, 2, 3, 3, 10, 99, 0.1, time=T0)
        )
        events.emit(RunFinished(3, 6.7, 6.9, 3, 1.0, time=T0 + 60))


def test_a_blank_answer_says_so_as_runs_show_does(home):
    """builtin:tiny answers line breaks only: the pane stayed empty under "done · 5 tokens"."""
    from mlxlora import fmt

    finished_run("quick")

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            base, _ = await ask(pilot, "hi", "5")
            await until(pilot, lambda: base.over)
            await pilot.pause(0.2)
            assert base.text and not base.text.strip()  # what the model said, kept
            assert str(base.query_one(".answer").render()) == fmt.BLANK_ANSWER

    asyncio.run(go())


def test_enter_in_the_system_prompt_sends_as_in_the_prompt(home):
    """A question typed into the system prompt's field and Enter: nothing, without a word."""
    finished_run("quick")

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.query_one(PlaygroundTab).runs)
            app.query_one("#play-system").focus()
            await pilot.press(*"医師", "enter")
            await pilot.pause()
            assert [str(n.message) for n in app._notifications] == ["Type a prompt first."]
            app.query_one("#play-max-tokens").value = "2"
            app.query_one("#play-prompt").value = "hi"
            await pilot.press("enter")
            base = app.query_one("#play-base", AnswerPane)
            await until(pilot, lambda: base.over)
            assert str(base.query_one(".status").render()).startswith("done · 2 tokens")

    asyncio.run(go())


async def answered(pilot) -> None:
    """Both panes filled through their own methods with fixed text: a generation's tokens/s
    differ from run to run, and what a snapshot tests is the layout."""
    app = pilot.app
    tab = app.query_one(PlaygroundTab)
    await until(pilot, lambda: tab.runs)
    app.query_one("#play-prompt").value = "東京について教えて"
    base, tuned = app.query_one("#play-base", AnswerPane), app.query_one("#play-tuned", AnswerPane)
    base.expect("builtin:tiny")
    for piece in ("東京は", "日本の", "首都です。", " Tokyo is the capital of Japan."):
        base.add(piece)
    base.finish({"generation_tokens": 12, "tokens_per_sec": 48.25, "finish_reason": "stop"})
    tuned.expect("医療専門知識モデル_v1-20261125-093000")
    tuned.fail("cannot load the adapter: adapters.safetensors is not a safetensors file")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_playground_snapshot(home, snap_compare, size):
    finished_run("医療専門知識モデル_v1-20261125-093000")
    assert snap_compare(MlxloraApp("playground"), terminal_size=size, run_before=answered)


def test_an_early_stopped_run_is_offered(home):
    """The tutorial's early-stopping run has a finished adapter: `runs list` now says
    early-stopped, as the Runs tab did, and the Playground still offers it to try."""
    assert main(
        ["train", str(REPO / "configs" / "tiny.yaml"), "--set", "name=早期停止_発動", "--set",
         "training.eval_every=2", "--set", "training.max_steps=12", "--set",
         "training.early_stopping.patience=2", "--set", "training.early_stopping.min_delta=100.0"]
    ) == 0  # in this process, as train_tiny_run trains  # fmt: skip

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            tab = app.query_one(PlaygroundTab)
            await until(pilot, lambda: tab.runs, seconds=20)
            (run,) = tab.runs.values()
            assert run.status == "early-stopped" and run.name.startswith("早期停止_発動-")

    asyncio.run(go())


def test_an_older_runs_list_does_not_land_after_a_newer_one(home, monkeypatch):
    """A thread worker a newer listing cancelled runs on: the list read before a run finished
    came after the one read since, and the picker lost the run until the tab was shown again
    (as the Train tab's model marks raced in CI)."""
    from mlxlora import runlist

    listed, calls, first_done = runlist.list_runs, [], []

    def first_listed_slowly():
        calls.append(None)
        found = listed()
        if len(calls) == 1:
            time.sleep(1.0)  # the run finishes and ctrl+r lists again meanwhile
            first_done.append(found)
        return found

    monkeypatch.setattr(runlist, "list_runs", first_listed_slowly)

    async def go():
        app = MlxloraApp("playground")
        async with app.run_test(size=(80, 24)) as pilot:
            tab = app.query_one(PlaygroundTab)
            finished_run("quick")
            await pilot.press("ctrl+r")
            await until(pilot, lambda: tab.runs, seconds=20)
            await until(pilot, lambda: first_done, seconds=20)
            await pilot.pause(0.3)
            assert first_done == [[]]  # the first list was read before the run finished
            assert [run.name for run in tab.runs.values()] == ["quick"]

    asyncio.run(go())
