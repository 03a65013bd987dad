"""What a config's `data.dataset` / `data.validation` names: a stored dataset, or a .json/.jsonl
file that is stored on first use (the records a run trains on never change afterwards).

A file is matched to the store by its records (`store.records_sha256`, the same for the same
records however the file spaces or arrays them): a file whose records are already stored, under
any name, reuses that dataset, so `data import notes.jsonl --name 医療QA` followed by a config
that names `notes.jsonl` trains on `医療QA` and stores nothing twice.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlxlora import names
from mlxlora.data.formats import detect_format, load_records
from mlxlora.data.store import (
    RECORDS_FILE,
    DatasetMeta,
    dataset_dir,
    exists,
    fit_bytes,
    get_meta,
    import_records,
    list_datasets,
    load_dataset,
    records_sha256,
    stem_name,
    unknown_dataset,
)
from mlxlora.data.validation import validate
from mlxlora.errors import DataError


def looks_like_file(ref: str) -> bool:
    return ref.lower().endswith((".json", ".jsonl")) or os.sep in ref or "/" in ref


def resolve(ref: str, kind: str | None = None) -> tuple[DatasetMeta, list[dict]]:
    """A workspace dataset by name, or a .json/.jsonl file imported on first use.

    A file whose records are stored already (same sha256 and type) reuses that dataset: the
    one under the file's stem if it is one of them, else the oldest. Otherwise the file is
    stored under its stem, or under `<stem>-<first 8 hex of sha256>` when the stem holds other
    records.
    """
    path = _locate(str(ref))
    return load_dataset(str(ref)) if path is None else _resolve_file(path, kind)


def peek(ref: str) -> tuple[str, list[dict]]:
    """(type, records) that resolve would give for `ref`, without storing a file's records:
    the DataError it would raise (an unknown name, a missing file, a bad record) is found
    before a job is queued."""
    path = _locate(str(ref))
    if path is None:
        meta, records = load_dataset(str(ref))
        return meta.type, records
    return _read_file(path)


def _read_file(path: Path, kind: str | None = None) -> tuple[str, list[dict]]:
    """(type, records) of a dataset file, every record validated (DataError naming it)."""
    records = load_records(path)
    kind = kind or detect_format(records, str(path))
    validate(records, kind, str(path))
    return kind, records


def _locate(ref: str) -> Path | None:
    """The file `ref` names, None for a stored dataset of that name, else DataError."""
    p = Path(ref).expanduser()
    if looks_like_file(ref) and p.is_file():
        return p
    if exists(ref):
        return None
    if p.is_file():
        return p
    if looks_like_file(ref):
        raise missing_file(ref)
    raise unknown_dataset(ref)


def missing_file(ref: str) -> DataError:
    """Why the file `ref` names cannot be read: a folder named like a file is not "not found"."""
    if Path(ref).expanduser().is_dir():
        return DataError(f"{ref}: is a directory, expected a .json or .jsonl file")
    return DataError(f"{ref}: file not found (and no dataset of that name)")


def stored_as(digest: str, kind: str, prefer: str) -> str | None:
    """The stored dataset holding exactly these records as `kind`: `prefer` if it does, else
    the oldest that does (None when none does)."""
    same = [m for m in list_datasets() if m.sha256 == digest and m.type == kind]
    if any(m.name == prefer for m in same):
        return prefer

    def age(meta: DatasetMeta) -> tuple:  # `created` has whole seconds: then the folder's time
        try:
            return meta.created, dataset_dir(meta.name).stat().st_mtime_ns
        except OSError:  # removed meanwhile
            return meta.created, 0

    return min(same, key=age).name if same else None


def _resolve_file(path: Path, kind: str | None) -> tuple[DatasetMeta, list[dict]]:
    kind, records = _read_file(path, kind)
    digest = records_sha256(records)
    base = stem_name(path)
    if stored := stored_as(digest, kind, base):
        return load_dataset(stored)
    hashed = f"{fit_bytes(base, names.MAX_NAME_BYTES - 9)}-{digest[:8]}"
    for name in (base, hashed):
        for _ in range(2):  # a second pass when another process imported `name` meanwhile
            if exists(name):
                break
            try:
                meta = import_records(
                    records, name, kind, f"imported from {path.name}", source=str(path.resolve())
                )
            except DataError:
                if not exists(name):
                    raise
                continue
            return meta, load_records(dataset_dir(name) / RECORDS_FILE)
        if (meta := get_meta(name)).sha256 == digest and meta.type == kind:
            return load_dataset(name)
    raise DataError(
        f"{path}: datasets {base!r} and {hashed!r} both exist with other records; "
        "import the file with an explicit --name"
    )


def source_changed(name: str, path: str | Path | None = None) -> str | None:
    """A line saying the file `path` (by default the one dataset `name` was imported from) now
    holds other records than the stored dataset (None when it holds the same, is gone,
    unreadable or there is no file): a run that trains on the stored dataset keeps its
    records."""
    meta = get_meta(name)
    path = Path(path or meta.source) if (path or meta.source) else None
    if path is None or not path.is_file():
        return None
    try:
        current = records_sha256(load_records(path))
    except (DataError, OSError):  # a file mid-edit: nothing to compare yet
        return None
    if current == meta.sha256:
        return None
    return (
        f"{path} no longer holds the records of dataset {name}, which this run trains on "
        "(a new run on the file trains on what it holds now)"
    )
