"""Sweeps and A/B tests: every combination of a grid (and of configs) as its own named run,
queued in the job queue the TUI uses, resumable, then ranked.

A sweep is a record, `home()/sweeps/<name>.json` (its configs, grid, overrides and members),
and runs whose config says `sweep: <name>`: a run tells which sweep it belongs to from its own
directory, so the TUI groups runs without reading records. Running the same sweep again
continues it: finished members are skipped, queued or running ones left alone, stopped or
interrupted ones resumed, missing ones queued. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from mlxlora import config, names, queue, runlist, runs
from mlxlora.atomic import atomic_write_text
from mlxlora.errors import ConfigError, MlxloraError, RunError
from mlxlora.runview import read_config

DONE = ("finished", "early-stopped")


def root() -> Path:
    return runs.home() / "sweeps"


def record_path(name: str) -> Path:
    return root() / f"{names.normalize(name)}.json"


def default_name(config_name: str) -> str:
    """A sweep's name when none is given: its base config's name + `-sweep`, unless that name
    already says sweep (`level3_medical_sweep` stays itself, not `..._sweep-sweep`)."""
    if config_name.lower().removesuffix("sweep")[-1:] in ("-", "_"):
        return config_name
    return f"{config_name}-sweep"


def parse_grid(text: str) -> tuple[str, list[str]]:
    """`lora.rank=8,12,16` -> ("lora.rank", ["8", "12", "16"]): values as typed (each is read
    as YAML when it becomes an override, as `--set` reads it)."""
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in _top_level_split(raw) if v.strip()]
    if not sep or not key.strip() or not values:
        raise ConfigError([f"--grid {text!r}: expected key.sub=value1,value2,..."], "sweep")
    if len(set(values)) != len(values):
        raise ConfigError([f"--grid {text!r}: a value is repeated"], "sweep")
    return key.strip(), values


def _top_level_split(raw: str) -> list[str]:
    """`[q_proj,v_proj],[q_proj]` -> ["[q_proj,v_proj]", "[q_proj]"]: commas inside brackets
    belong to a list value (lora.target_modules), not between values."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(raw):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(c, 0)
        if c in names.COMMAS and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    return [*parts, raw[start:]]


@dataclass
class Member:
    """One combination: the run it becomes."""

    name: str  # the run's name: the sweep's and the values that vary
    config: str  # its config file (an A/B test has several)
    values: dict[str, str]  # grid key -> value as typed
    overrides: list[str]  # --set overrides, then the grid's, then name and sweep


def plan(sweep: str, configs: list[str], grids: list[str], sets: list[str]) -> list[Member]:
    """Every combination of configs and grid values, named after what varies."""
    grid = [parse_grid(g) for g in grids]
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError(["--grid: the same key is given twice"], "sweep")
    short = _short_keys(keys)
    members, labelled = [], {}  # labelled: a config's part of its runs' names -> the config
    for path in configs:
        label = _name_part(Path(path).stem)
        key = names.normalize(label)  # one name as macOS spells it (NFD: ガ as カ and ゙) or not
        if len(configs) > 1 and key in labelled:  # its runs would be another's, by name
            raise ConfigError(
                [
                    f"{path}: its runs would be named as those of {labelled[key]} "
                    f"({sweep}-{key}); give each config a file name of its own"
                ],
                "sweep",
            )
        labelled[key] = path
        for combo in itertools.product(*(values for _, values in grid)):
            values = dict(zip(keys, combo, strict=True))
            parts = [label] if len(configs) > 1 else []
            parts += [_name_part(f"{short[k]}{v}") for k, v in values.items()]
            name = "-".join([sweep, *parts]) if parts else sweep
            grid_sets = [f"{k}={v}" for k, v in values.items()]
            overrides = [*sets, *grid_sets, f"name={name}", f"sweep={sweep}"]
            members.append(Member(name, str(Path(path).resolve()), values, overrides))
    return members


def _short_keys(keys: list[str]) -> dict[str, str]:
    """`lora.rank` -> `rank` where no other key ends the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: p if last.count(p) == 1 else k for k, p in zip(keys, last, strict=True)}


def _name_part(text: str) -> str:
    """Text made fit for a run name: other characters become '_' (`[8, 16]` -> `_8_16_`)."""
    return "".join(c if names.is_name_char(c) else "_" for c in text)


def validate(
    sweep: str, members: list[Member], load=config.load, references: bool = True
) -> list[config.Config]:
    """Every member's config, or one ConfigError naming each bad member: nothing is queued
    unless every combination is valid.

    Args:
        load: (config file, overrides) -> Config; the TUI's sweep dialog passes one that puts
            the overrides on the form's config, before that config is written anywhere.
        references: Also check that each member's datasets and model exist and load
            (prepare.check_references, once per distinct set); the dialog's live preview
            leaves it to its Queue button.
    """
    from mlxlora.prepare import check_references

    problem = names.name_problem(sweep)
    if problem:
        raise ConfigError([f"sweep name {sweep!r}: {problem}"], "sweep")
    loaded, found, checked = [], [], {}  # found: (member's name, problem)
    for m in members:
        try:
            cfg = load(m.config, m.overrides)
        except ConfigError as exc:
            found += [(m.name, p) for p in exc.problems]
            continue
        loaded.append(cfg)
        # what check_references reads: a grid over val_split or num_layers checks each value
        refs = (cfg.data.dataset, cfg.data.validation, cfg.model)
        refs += (cfg.data.val_split, cfg.lora.num_layers)
        if references and refs not in checked:
            checked[refs] = _problem(check_references, cfg)
        if checked.get(refs):
            found.append((m.name, checked[refs]))
    problems = _each_once(found, len(members))
    problems += _same_training(members, loaded) if len(loaded) == len(members) else []
    if problems:
        raise ConfigError(problems, f"sweep {sweep}")
    return loaded


def _each_once(found: list[tuple[str, str]], members: int) -> list[str]:
    """`member: problem`, and a problem every member has (a key mistyped in --grid or --set,
    a missing dataset) once as `every run: problem`: a 3x3 grid said it nine times."""
    everywhere = {p for p, n in Counter(p for _, p in set(found)).items() if n == members > 1}
    said, out = set(), []
    for name, problem in found:
        if problem not in everywhere:
            out.append(f"{name}: {problem}")
        elif problem not in said:
            said.add(problem)
            out.append(f"every run: {problem}")
    return out


# Settings a staged schedule replaces with its stages' own (StageConfig).
STAGED_SETS = ("training.learning_rate", "training.epochs")


def _same_training(members: list[Member], loaded: list[config.Config]) -> list[str]:
    """A problem for each member that would train exactly as an earlier one (a grid key the
    config ignores: under schedule staged, the stages set the learning rate and epochs)."""
    seen: dict[str, str] = {}
    problems = []
    for m, cfg in zip(members, loaded, strict=True):
        data = cfg.to_dict()
        for ignored in ("name", "sweep"):
            data.pop(ignored, None)
        if cfg.training.schedule == "staged":  # the stages set these (epochs: their sum)
            for ignored in STAGED_SETS:
                data["training"].pop(ignored.split(".")[1], None)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = m.name
            continue
        ignored = [k for k in m.values if k in STAGED_SETS and cfg.training.schedule == "staged"]
        why = f": under schedule staged the stages set {', '.join(ignored)}" if ignored else ""
        problems.append(f"{m.name}: trains exactly as {seen[key]}{why}")
    return problems


def _problem(check, *args) -> str | None:
    """What `check(*args)` refuses (its error's message), or None."""
    try:
        check(*args)
    except ConfigError as exc:  # its source is the member's name: said once, before it
        return "; ".join(exc.problems)
    except MlxloraError as exc:
        return str(exc)
    return None


def _definition(configs: list[str], grids: list[str], sets: list[str]) -> dict:
    return {
        "configs": [str(Path(c).resolve()) for c in configs],
        "grid": [list(parse_grid(g)) for g in grids],
        "sets": list(sets),
    }


def save_base(sweep: str, text: str) -> Path:
    """Write a config made elsewhere (the TUI's form) as the sweep's base, `sweeps/<name>.yaml`:
    one path per sweep, so queueing it again continues it; refused when that sweep exists with
    another base config."""
    problem = names.name_problem(sweep)
    if problem:
        raise ConfigError([f"sweep name {sweep!r}: {problem}"], "sweep")
    path = root() / f"{names.normalize(sweep)}.yaml"
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        raise RunError(
            f"sweep {names.normalize(sweep)} exists with another base config ({path}); "
            "choose another name"
        )
    atomic_write_text(path, text)
    return path


def read_record(name: str) -> dict:
    return runs.read_json(record_path(name))


def start(
    sweep: str, configs: list[str], grids: list[str], sets: list[str], references: bool = True
) -> list[tuple[Member, str]]:
    """Create or continue a sweep; returns each member with what was done for it now:
    queued, resume queued, or skipped (its state: queued, running, finished, failed...).
    `references`: check the datasets and models too (validate); False where they just were."""
    sweep = names.normalize(sweep)
    members = plan(sweep, configs, grids, sets)
    loaded = validate(sweep, members, references=references)
    definition = _definition(configs, grids, sets)
    record = read_record(sweep)
    if record and {k: record.get(k) for k in definition} != definition:
        raise RunError(
            f"sweep {sweep} exists with other configs, grid or --set values "
            f"({record_path(sweep)}); run it as it was, or choose another --name"
        )
    if not record:
        record = {"name": sweep, "created": time.time(), **definition}
        record["members"] = [asdict(m) for m in members]
        atomic_write_text(record_path(sweep), json.dumps(record, indent=2, ensure_ascii=False))
    known = _Known(sweep)
    return [(m, _advance(m, cfg, known)) for m, cfg in zip(members, loaded, strict=True)]


def _advance(member: Member, cfg: config.Config, known: _Known) -> str:
    state, run = known.state(member.name)
    if state == "new":
        queue.add_train(cfg.to_yaml(), member.name)
        return "queued"
    if state in ("stopped", "interrupted") and run is not None:
        queue.add_resume(run)
        return "resume queued"
    return f"skipped ({state})"


class _Known:
    """The queue's waiting jobs and a sweep's runs, read once for all its members."""

    def __init__(self, sweep: str):
        self.waiting = [j for j in queue.jobs() if j.state in queue.LIVE]
        self.runs = _member_runs(sweep)

    def state(self, name: str) -> tuple[str, Path | None]:
        """(state, run directory) of a member: queued or running in the queue, else its
        run's status (finished, early-stopped, stopped, interrupted, failed), else new."""
        from mlxlora.experiments import load_view

        run = self.runs.get(name)  # its train job has its name; a resume, its run's
        jobs = [j for j in self.waiting if j.name == name and j.kind == "train"]
        jobs += queue.jobs_of(run, self.waiting) if run else []
        if jobs:
            return jobs[-1].state, run
        if run is None:
            return "new", None
        return load_view(run).status(runs.is_locked(runs.RunPaths(run))), run


def _member_runs(sweep: str) -> dict[str, Path]:
    """The sweep's runs by name (the newest where a name has two)."""
    found: dict[str, Path] = {}
    for info in sorted(runlist.list_runs(), key=lambda i: i.started or 0):
        cfg = read_config(runs.RunPaths(info.path).config)
        if cfg.get("sweep") == sweep and isinstance(cfg.get("name"), str):
            found[cfg["name"]] = info.path
    return found


@dataclass
class MemberStatus:
    member: Member
    state: str
    run: Path | None


def status(sweep: str) -> list[MemberStatus]:
    """Each member of a recorded sweep with its state and run."""
    sweep = names.normalize(sweep)
    record = read_record(sweep)
    if not record:
        known = ", ".join(sorted(p.stem for p in root().glob("*.json"))) or "none yet"
        raise RunError(f"no sweep named {sweep!r} (sweeps: {known})")
    members = [Member(**m) for m in record.get("members", [])]
    known = _Known(sweep)
    return [MemberStatus(m, *known.state(m.name)) for m in members]


def sweep_names() -> list[str]:
    return sorted(p.stem for p in root().glob("*.json")) if root().is_dir() else []


def run_sweep(run: Path) -> str | None:
    """The sweep a run belongs to (its config's `sweep`), or None."""
    value = read_config(runs.RunPaths(run).config).get("sweep")
    return value if isinstance(value, str) and value else None
