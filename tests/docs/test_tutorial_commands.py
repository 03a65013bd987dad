"""The tutorials cannot rot: every `mlxlora ...` command in their code blocks runs, in order,
with builtin:tiny in place of the model, two optimizer steps per training run and three
questions per evaluation; the English and Japanese texts run the same commands; every
tutorial dataset imports with its type."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from mlxlora import queue_runner
from mlxlora.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "tutorial"
LEVELS = ("level1_basic", "level2_intermediate", "level3_advanced")
DATASETS = {  # file -> (type, records)
    "level1_basic.json": ("instruction", 30),
    "level2_intermediate.json": ("chat", 24),
    "level3_advanced_medical.json": ("instruction", 20),
}
CAUTION = "専門家に相談してください。"
# What turns a tutorial job into a test job: the tiny model, two steps, no sample answers.
TINY_TRAINING = ["--set", "model=builtin:tiny", "--set", "training.max_steps=2"]
TINY_TRAINING += ["--set", "samples=[]"]
TRAINS = {("train",), ("queue", "add"), ("sweep",)}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def commands(md: Path) -> list[list[str]]:
    """The argv of each `mlxlora ...` line in the file's bash code blocks (`\\` lines joined)."""
    found = []
    for lang, body in FENCE.findall(md.read_text(encoding="utf-8")):
        if lang not in ("bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if len(argv) > 1 and argv[0] == "mlxlora":
                found.append(argv)
    return found


def tutorial(lang: str) -> list[list[str]]:
    return [argv for level in LEVELS for argv in commands(TUTORIAL / lang / f"{level}.md")]


def unknown_word(argv: list[str]) -> str | None:
    """The subcommand or option of `argv` that this build's CLI does not have, or None."""
    parser = build_parser()
    for word in argv[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if word not in subs[0].choices:
            return word
        parser = subs[0].choices[word]
    options = {s for action in parser._actions for s in action.option_strings}
    return next((w for w in argv if w.startswith("--") and w.split("=")[0] not in options), None)


def for_tiny(argv: list[str]) -> list[str]:
    """The command as the test runs it: builtin:tiny, short training, few tokens, no runner."""
    out = list(argv)
    axes = 0
    for i, word in enumerate(out[:-1]):
        if word == "--model":
            out[i + 1] = "builtin:tiny"
        if word == "--grid":  # two values on the first axis, one on the others: two runs
            key, values = out[i + 1].split("=", 1)
            out[i + 1] = f"{key}={','.join(values.split(',')[: 2 if axes == 0 else 1])}"
            axes += 1
    words = tuple(out[1:3])
    if words[:1] in TRAINS or words in TRAINS:
        out += TINY_TRAINING
    if words == ("queue", "add") or words[:1] == ("sweep",):
        out.append("--no-start")  # the test drains the queue itself, no detached runner
    if words[:1] in (("generate",), ("eval",)):  # eval answers each question 1 + 3 times
        out += ["--max-tokens", "8"]
    if words[:1] == ("eval",):  # a whole dataset (20 questions) as many as a run's held-out 3
        out += ["--max-records", "3"]
    return out


def test_english_and_japanese_tutorials_run_the_same_commands():
    for level in LEVELS:
        en, ja = (commands(TUTORIAL / lang / f"{level}.md") for lang in ("en", "ja"))
        assert len(en) >= 5, f"{level}: too few commands ({len(en)})"
        assert en == ja, f"{level}: the en and ja tutorials differ in their commands"


def test_the_tiny_substitution():
    argv = ["mlxlora", "generate", "--model", "builtin:smollm2-135m", "--prompt", "x"]
    assert for_tiny(argv) == [
        *["mlxlora", "generate", "--model", "builtin:tiny", "--prompt", "x", "--max-tokens", "8"]
    ]
    sweep = for_tiny(["mlxlora", "sweep", "c.yaml", "--grid", "lora.rank=8,12,16"])
    assert sweep[:5] == ["mlxlora", "sweep", "c.yaml", "--grid", "lora.rank=8,12"]
    assert for_tiny(["mlxlora", "queue", "add", "c.yaml"])[-1] == "--no-start"
    assert unknown_word(["mlxlora", "runs", "show", "x"]) is None
    assert unknown_word(["mlxlora", "runs", "shw", "x"]) == "shw"
    assert unknown_word(["mlxlora", "train", "c.yaml", "--bogus"]) == "--bogus"


def test_every_tutorial_command_exists():
    """Fails, naming them, while commands the tutorials teach are not in the CLI yet."""
    missing = {w if w == a[1] else f"{a[1]} {w}" for a in tutorial("en") if (w := unknown_word(a))}
    missing = sorted(missing)
    assert not missing, f"tutorial commands this CLI lacks: {missing}"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_imports_with_its_type(home, name, capsys):
    kind, count = DATASETS[name]
    path = TUTORIAL / "datasets" / name
    assert main(["data", "import", str(path), "--type", kind]) == 0
    assert f"{count} {kind} records" in capsys.readouterr().out
    records = json.loads(path.read_text(encoding="utf-8"))
    if name.startswith("level3"):
        assert all(r["output"].rstrip().endswith(CAUTION) for r in records)


@pytest.mark.slow
def test_the_tutorials_commands_run_in_order(home, tmp_path, monkeypatch, capsys):
    """Levels 1, 2 and 3 in one workspace (level 3 compares against the runs of 1 and 2)."""
    # The tutorials name configs/ and tutorial/ from the repo root; what they write (a report,
    # a merged adapter) goes to a scratch directory, not into the checkout.
    for folder in ("configs", "tutorial"):
        (tmp_path / folder).symlink_to(REPO / folder)
    monkeypatch.chdir(tmp_path)
    ran, pending = 0, []
    for argv in tutorial("en"):
        if unknown_word(argv):
            pending.append(shlex.join(argv))
            continue
        command = for_tiny(argv)
        try:
            code = main(command[1:])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(command)} -> exit {code}\n{err[-2000:]}"
        if command[1:3] == ["queue", "add"]:
            assert queue_runner.work(idle_exit=0) == 1
        if command[1] == "sweep":  # every combination trained, one at a time
            assert queue_runner.work(idle_exit=0) >= 2
        ran += 1
    print(f"ran {ran} tutorial commands; awaiting the CLI: {pending}")
    assert ran >= 15
    from mlxlora.data import store

    stored = [m.name for m in store.list_datasets()]  # the presets name the imported file
    assert "医療専門知識データセット" in stored and "level3_advanced_medical" not in stored
