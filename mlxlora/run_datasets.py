"""The stored datasets a run trains on: pinned at its start, held to when it resumes or is
evaluated, and the files they were imported from checked for edits since.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mlxlora.config import Config
from mlxlora.errors import DataError
from mlxlora.runs import RunPaths


def dataset_digests(data) -> dict[str, str]:
    """name -> sha256 of the stored datasets a config's data names (file paths, which a run
    recorded before it pinned its datasets, are left out)."""
    from mlxlora.data import store

    refs = (data.dataset, data.validation)
    return {n: store.get_meta(n).sha256 for n in refs if n and store.exists(n)}


def run_starts(paths: RunPaths | None) -> list:
    """The run_started events of an existing run (one per session; none for a new run)."""
    from mlxlora.events import RunStarted, read_events_of

    return read_events_of(paths.events, RunStarted) if paths and paths.events.is_file() else []


def as_run_started(cfg: Config, paths: RunPaths, starts: list | None = None) -> Config:
    """An existing run's config (to resume or evaluate it) held to the records it started
    with: a dataset file, named by a run from before configs were pinned, becomes the stored
    dataset its first start resolved (the file may have changed since); a stored dataset that
    was imported again with other records is refused (DataError). `starts`: its run_started
    events, when the caller read them already."""
    from mlxlora.data import refs, store

    starts = run_starts(paths) if starts is None else starts
    first = starts[0].dataset if starts else ""
    if first and refs.looks_like_file(cfg.data.dataset) and store.exists(first):
        cfg = replace(cfg, data=replace(cfg.data, dataset=first))
    now = dataset_digests(cfg.data)
    for start in starts:  # a run resumed since it began records them at each start
        for name, then in start.datasets.items():
            if now.get(name, then) != then:
                raise DataError(
                    f"dataset {name} holds other records than when run {paths.root.name} "
                    f"started (sha256 {then[:8]} then, {now[name][:8]} now): import the "
                    "original again under that name, or start a new run"
                )
    return cfg


DATA_FIELDS = ("data.dataset", "data.validation")


def _refs(data) -> dict[str, str]:
    """config field -> what `data` gives it (a stored name, a file, or "")."""
    return {"data.dataset": data.dataset, "data.validation": data.validation or ""}


def source_files(given) -> dict[str, str]:
    """config field -> the file the config named for it at this start (absolute)."""
    from mlxlora.data import refs

    return {
        key: str(Path(ref).expanduser().resolve())
        for key, ref in _refs(given).items()
        if ref and refs.looks_like_file(ref)
    }


def changed_sources(given, pinned, starts: list | None) -> list[str]:
    """A warning for each file whose records now differ from the stored dataset the run trains
    on from it: the files this start and the run's earlier starts (`starts`) named for each
    field (`RunStarted.sources`); for a field only ever given a stored name, the file that
    dataset was imported from. A run pinned to its stored records trains without the edit."""
    from mlxlora.data import refs, store

    named = {key: set() for key in DATA_FIELDS}
    for sources in [source_files(given), *(s.sources for s in starts or ())]:
        for key, file in sources.items():
            named[key].add(file)
    pairs = set()
    for key, name in _refs(pinned).items():
        if name:
            files = named[key] or {store.get_meta(name).source}
            pairs |= {(name, file) for file in files if file}
    return [w for name, file in sorted(pairs) if (w := refs.source_changed(name, file))]
