"""Finding a run by what users type: names in any language, prefixes, paths that are no run."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata

import pytest

from mlxlora import procs, runlist, runs
from mlxlora.cli import main
from mlxlora.errors import RunError
from mlxlora.events import EventWriter, RunStarted


def make_runs(*dir_names: str) -> list:
    """Workspace runs as `runs list` sees them: directories holding a config.yaml."""
    made = []
    for name in dir_names:
        path = runs.runs_root() / name
        path.mkdir(parents=True)
        (path / "config.yaml").write_text(f"name: {name}\n", encoding="utf-8")
        made.append(path)
    return made


def test_japanese_name_finds_its_run_before_longer_names_that_start_with_it(home):
    v1, v10 = make_runs(
        "医療専門知識モデル_v1-20261125-093000", "医療専門知識モデル_v10-20261125-093100"
    )
    assert runs.find_run("医療専門知識モデル_v1") == v1
    assert runs.find_run("医療専門知識モデル_v10") == v10
    assert runs.find_run("医療専門知識モデル_v1-20261125") == v1  # a unique prefix
    with pytest.raises(RunError, match="2 runs match") as err:
        runs.find_run("医療")
    assert v1.name in str(err.value) and v10.name in str(err.value)


def test_a_name_typed_in_full_width_points_to_the_run_meant(home, capsys):
    """`runs show 実験２` (an IME's full-width digit) said only `no such run` beside 実験2."""
    make_runs("実験2-20261127-133141", "実験10-20261127-140000")
    assert main(["runs", "show", "実験２"]) == 5
    assert capsys.readouterr().err == (
        "mlxlora: error: 実験２: no such run (did you mean 実験2? see `mlxlora runs list`)\n"
    )
    with pytest.raises(RunError, match=r"no such run \(see"):
        runs.find_run("実験3")  # nothing reads alike: nothing offered


@pytest.mark.parametrize("blank", [" ", "\u3000"])  # a space; an IME's full-width one
def test_a_blank_name_points_to_no_run(home, capsys, blank):
    """`runs show " "` asked `did you mean 実験1-20261127-133141?`: a run picked at random;
    then it said `mlxlora: error: : no such run`, naming nothing."""
    make_runs("実験1-20261127-133141")
    assert main(["runs", "show", blank]) == 5
    err = capsys.readouterr().err
    assert err == "mlxlora: error: the run name is blank (see `mlxlora runs list`)\n"


def test_an_empty_name_is_not_the_working_directory(home, tmp_path, monkeypatch, capsys):
    """`train --resume "$RUN"` with RUN unset resumed a run in the working directory."""
    (tmp_path / "config.yaml").write_text("model: builtin:tiny\n")
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "show", ""]) == 5
    assert "the run name is blank" in capsys.readouterr().err


def test_an_empty_resume_is_refused_not_a_fresh_run(home, capsys):
    """`train CONFIG --resume "$RUN"` with RUN unset trained a new run from CONFIG, and
    `train --resume ""` asked for a CONFIG file or --resume: an empty --resume read as none."""
    tiny = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.yaml")
    assert main(["train", tiny, "--resume", "", "--dry-run"]) == 2
    assert "--resume takes the run's own config" in capsys.readouterr().err
    assert main(["train", "--resume", ""]) == 5
    assert "the run name is blank" in capsys.readouterr().err
    assert not runs.runs_root().exists() or not any(runs.runs_root().iterdir())


def test_an_empty_adapter_is_refused_not_the_base_model(home, tmp_path, monkeypatch, capsys):
    """`generate --model M --adapter "$RUN"` with RUN unset answered from the base model, and
    in an adapter directory `--adapter ""` loaded that directory's adapter."""
    (tmp_path / "adapters.safetensors").write_bytes(b"")
    (tmp_path / "adapter_config.json").write_text("{}")
    from mlxlora.evaluate import resolve_adapter

    monkeypatch.chdir(tmp_path)
    for adapter in ("", " "):  # the CLI refuses them first; the studio's faces call this
        with pytest.raises(RunError, match="the run name is blank"):
            resolve_adapter(adapter)


def test_runs_sharing_a_name_are_listed(home):
    first, second = make_runs("llama3 日本語-20261125-093000", "llama3 日本語-20261125-093000-1")
    with pytest.raises(RunError) as err:
        runs.find_run("llama3 日本語")
    assert "2 runs match" in str(err.value)
    assert first.name in str(err.value) and second.name in str(err.value)
    assert runs.find_run(second.name) == second  # the full directory name is exact


def test_accented_name_typed_decomposed_finds_the_composed_run(home):
    (run,) = make_runs("données-été-20261125-093000")
    typed = unicodedata.normalize("NFD", "données-été")  # how macOS hands it over
    assert runs.find_run(typed) == run


def test_pattern_characters_in_a_reference_are_plain_text(home):
    make_runs("alpha-20261125-093000", "beta-20261125-093000")
    for ref in ("a*", "[ab]lpha", "?lpha", "*"):
        with pytest.raises(RunError, match="no such run"):
            runs.find_run(ref)


def test_new_run_directory_keeps_the_users_name(home):
    path = runs.new_run_dir(unicodedata.normalize("NFD", "Ärzte Modell 2"))
    assert path.parent == runs.runs_root()
    assert path.name.startswith("Ärzte Modell 2-") and runs.given_name(path) == "Ärzte Modell 2"
    with pytest.raises(RunError, match="starts with a dot"):
        runs.new_run_dir("../x")


@pytest.mark.parametrize(
    "args, says",
    [
        (["runs", "show", "{missing}"], "no such directory"),
        (["runs", "show", "{plain_dir}"], "not a run directory"),
        (["train", "--resume", "{missing}"], "no such directory"),
        (["train", "--resume", "{plain_dir}"], "not a run directory"),
        (["generate", "--adapter", "{missing}", "--prompt", "hi"], "no such directory"),
        (["generate", "--adapter", "{plain_dir}", "--prompt", "hi"], "neither a run nor"),
    ],
)
def test_a_path_that_is_not_a_run_is_one_line(home, tmp_path, capsys, args, says):
    make_runs("alpha-20261125-093000")
    plain = tmp_path / "plain"
    plain.mkdir()
    where = {"missing": str(tmp_path / "no" / "such-run"), "plain_dir": str(plain)}
    assert main([a.format(**where) for a in args]) == RunError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mlxlora: error: ")
    assert says in err


def test_running_runs_are_those_a_live_process_holds(home):
    live, dead, empty, free = make_runs("live-1", "dead-1", "empty-1", "free-1")
    (live / ".lock").write_text(str(os.getpid()))
    (dead / ".lock").write_text("999999999")
    (empty / ".lock").write_text("")  # a lock being written: pid 0 is no process
    assert runs.running_runs() == [live]
    for run in (live, empty):
        with EventWriter(runs.RunPaths(run).events) as events:
            events.emit(RunStarted(str(run), "builtin:tiny", "mlx", "cpu", 8, 2, 4, 4, 10, 99, 0.1))
    assert runlist.run_info(live).status == "running"
    assert runlist.run_info(empty).status == "interrupted"


def test_a_lock_whose_pid_names_another_process_now_is_stale(home):
    """After a reboot a killed run's pid soon names some other process: the run reads
    interrupted and can be resumed, not in use for ever; a live owner still holds its run."""
    reused, owned, old_lock = make_runs("reused-1", "owned-1", "old-lock-1")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = procs.started_at(sleeper.pid)
        (reused / ".lock").write_text(f"{sleeper.pid} {start - 3600:.2f}")  # an hour before
        (owned / ".lock").write_text(f"{sleeper.pid} {start:.2f}")
        (old_lock / ".lock").write_text(str(sleeper.pid))  # a lock that records no start
        os.utime(old_lock / ".lock", (start - 3600, start - 3600))  # written before it started
        for run in (reused, owned):
            with EventWriter(runs.RunPaths(run).events) as events:
                events.emit(
                    RunStarted(str(run), "builtin:tiny", "mlx", "cpu", 8, 2, 4, 4, 10, 9, 0.1)
                )
        assert runs.running_runs() == [owned]
        assert runlist.run_info(reused).status == "interrupted"
        assert runlist.run_info(owned).status == "running"
        with runs.run_lock(runs.RunPaths(reused)):  # what a resume takes
            assert (reused / ".lock").read_text() == procs.stamp()
        with pytest.raises(RunError, match=f"run is in use by process {sleeper.pid}$"):
            with runs.run_lock(runs.RunPaths(owned)):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
