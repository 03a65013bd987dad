"""The dataset store: validated datasets kept in the workspace by name.

Layout: ``home()/datasets/<name>/records.jsonl`` (the validated original records, one JSON
object per line, UTF-8) and ``meta.json`` (see `DatasetMeta`). An import is validated in full
first, written into a temporary sibling directory and renamed into place, so a failed import
stores nothing.

``sha256`` is the hash of ``records.jsonl``, whose bytes are a canonical serialization of the
records (`serialize_records`); so the same records imported from a JSON array file or from a
JSONL file with different spacing hash the same, which is what `refs.resolve` compares.

Dataset names follow `mlxlora.names` (letters and digits of any language, never a path) and are
stored and looked up in their NFC form, so a name typed decomposed finds the stored dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from mlxlora import names
from mlxlora.atomic import sweep_temps, temp_prefix
from mlxlora.data.formats import (
    detect_format,
    full_text,
    load_records,
    normalize,
    where,
)
from mlxlora.data.validation import check_kind, validate
from mlxlora.errors import DataError
from mlxlora.runs import home

RECORDS_FILE = "records.jsonl"
META_FILE = "meta.json"
# Far beyond any useful max_length (~100k chars is ~25k tokens): worth a warning at import.
LONG_RECORD_CHARS = 100_000
MAX_LONG_WARNINGS = 5


@dataclass
class DatasetMeta:
    """What `meta.json` holds about a stored dataset."""

    name: str
    description: str
    type: str
    records: int
    sha256: str
    source: str
    created: str  # ISO 8601, UTC

    @property
    def path(self) -> Path:
        return dataset_dir(self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def datasets_root() -> Path:
    return home() / "datasets"


def dataset_dir(name: str) -> Path:
    return datasets_root() / name


def check_name(name: str) -> str:
    """The stored (NFC) form of a dataset name; DataError saying why when it cannot be one."""
    problem = names.name_problem(name)
    if problem:
        raise DataError(f"invalid dataset name {name!r}: {problem}")
    return names.normalize(name)


def serialize_records(records: list[dict]) -> bytes:
    """The canonical bytes of records.jsonl: one compact-ish JSON object per line, UTF-8."""
    lines = (json.dumps(r, ensure_ascii=False) for r in records)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def records_sha256(records: list[dict]) -> str:
    return hashlib.sha256(serialize_records(records)).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_meta(directory: Path) -> DatasetMeta | None:
    try:
        return DatasetMeta.from_dict(json.loads((directory / META_FILE).read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def list_datasets() -> list[DatasetMeta]:
    """Stored datasets, sorted by name. Half-written or foreign directories are skipped."""
    root = datasets_root()
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        meta = _read_meta(d)
        if meta is not None:
            found.append(meta)
    return found


def exists(name: str) -> bool:
    """Whether `name` (in any Unicode normal form) names a stored dataset."""
    if names.name_problem(name) is not None:
        return False
    return (dataset_dir(names.normalize(name)) / META_FILE).is_file()


def unknown_dataset(name: str) -> DataError:
    available = [m.name for m in list_datasets()]
    if available:
        # 医療ＱＡ (an IME's full-width letters) or 医療qa typed for 医療QA: they read alike
        alike = [n for n in available if names.folded(n) == names.folded(name)]
        hint = f"did you mean {alike[0]}? " if alike else ""  # as runs and config keys say it
        return DataError(f"unknown dataset {name!r} ({hint}available: {', '.join(available)})")
    return DataError(
        f"unknown dataset {name!r} (no datasets yet; add one with "
        "`mlxlora data import FILE --name NAME`)"
    )


def get_meta(name: str) -> DatasetMeta:
    """A stored dataset's meta; DataError for an invalid or unknown name."""
    name = check_name(name)
    if not exists(name):
        raise unknown_dataset(name)
    meta = _read_meta(dataset_dir(name))
    if meta is None:
        raise DataError(f"dataset {name!r}: {META_FILE} is unreadable; remove and re-import it")
    return meta


def load_dataset(name: str) -> tuple[DatasetMeta, list[dict]]:
    """A stored dataset's meta and its records (checked against the stored sha256)."""
    name = check_name(name)
    meta = get_meta(name)
    path = dataset_dir(name) / RECORDS_FILE
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"dataset {name!r}: cannot read {path}: {exc.strerror or exc}") from None
    if digest != meta.sha256:
        raise DataError(
            f"dataset {name!r}: {path} changed since it was imported (sha256 mismatch); "
            f"remove it with `mlxlora data rm {shlex.quote(name)}` and import the file again"
        )
    return meta, load_records(path)


def runs_using(name: str) -> list[str]:
    """The workspace runs (directory names) whose config trains or validates on dataset
    `name`: they resume and evaluate on its stored records."""
    from mlxlora.runs import runs_root
    from mlxlora.runview import read_config

    def names_in(config: Path) -> set[str]:
        data = read_config(config).get("data") or {}
        refs = (data.get(k) for k in ("dataset", "validation"))
        return {names.normalize(r) for r in refs if isinstance(r, str)}  # NFD as typed on macOS

    root = runs_root()
    configs = sorted(root.glob("*/config.yaml")) if root.exists() else []
    return [c.parent.name for c in configs if names.normalize(name) in names_in(c)]


def remove_dataset(name: str, force: bool = False) -> DatasetMeta:
    """Remove a stored dataset; returns the meta it had. One that runs use is refused unless
    `force`: they could no longer resume or be evaluated."""
    name = check_name(name)
    meta = get_meta(name)
    users = runs_using(name)
    if users and not force:
        more = f" and {len(users) - 3} more" if len(users) > 3 else ""
        raise DataError(
            f"dataset {name} is used by {'run' if len(users) == 1 else 'runs'} "
            f"{', '.join(users[:3])}{more} (resume and eval read "
            f"it); `mlxlora data rm {shlex.quote(name)} --force` removes it anyway"
        )
    target = dataset_dir(name)
    trash = Path(tempfile.mkdtemp(dir=datasets_root(), prefix=f".rm-{name}."))
    os.replace(target, trash / name)
    shutil.rmtree(trash, ignore_errors=True)
    return meta


def import_records(
    records: list[dict], name: str, kind: str, description: str = "", source: str = ""
) -> DatasetMeta:
    """Store already-validated records under `name` (atomic; DataError if the name is taken)."""
    name = check_name(name)
    if exists(name):
        raise _duplicate(name)
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    data = serialize_records(records)
    meta = DatasetMeta(
        name=name,
        description=description,
        type=kind,
        records=len(records),
        sha256=hashlib.sha256(data).hexdigest(),
        source=source,
        created=_now(),
    )
    sweep_temps(root, "import-.+")  # what killed imports left
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=temp_prefix(f"import-{name}")))
    try:
        (tmp / RECORDS_FILE).write_bytes(data)
        (tmp / META_FILE).write_text(
            json.dumps(meta.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        final = dataset_dir(name)
        try:
            os.rename(tmp, final)  # fails if another import created a non-empty `final` meanwhile
        except OSError as exc:
            if exists(name):
                raise _duplicate(name) from None
            if final.exists():
                raise DataError(
                    f"cannot store dataset {name!r}: {final} exists and is not a dataset; "
                    "move it away or choose another --name"
                ) from None
            raise DataError(f"cannot store dataset {name!r}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _duplicate(name: str) -> DataError:
    return DataError(
        f"dataset {name!r} already exists; choose another --name or remove it first "
        f"(`mlxlora data rm {shlex.quote(name)}`)"
    )


def import_dataset(
    path: str | Path, name: str, description: str = "", kind: str | None = None
) -> tuple[DatasetMeta, list[str]]:
    """Validate every record of a JSON/JSONL file, then store it under `name`.

    Returns the stored meta and warnings about records far longer than training ever uses.
    """
    name = check_name(name)
    if kind is not None:
        check_kind(kind, str(path))
    if exists(name):
        raise _duplicate(name)
    source = str(path)
    records = load_records(path)
    kind = kind or detect_format(records, source)
    validate(records, kind, source)
    meta = import_records(
        records, name, kind, description, source=str(Path(path).expanduser().resolve())
    )
    return meta, same_records(meta, source) + long_records(records, kind, source)


def same_records(meta: DatasetMeta, source: str) -> list[str]:
    """A warning when the records just stored as `meta` were stored already under other names
    (a config that names the file trains on one of them: see refs.stored_as)."""
    twins = [
        repr(m.name)
        for m in list_datasets()
        if m.sha256 == meta.sha256 and m.type == meta.type and m.name != meta.name
    ]
    if not twins:
        return []
    return [f"{source}: the same records are stored already as dataset {', '.join(twins)}"]


def long_records(records: list[dict], kind: str, source: str = "data") -> list[str]:
    """Warnings for records of more than `LONG_RECORD_CHARS` characters (kept, not refused).

    Training reads at most data.max_length tokens of a record, so the rest is never learned.
    """
    long = [
        (i, n)
        for i, r in enumerate(records)
        if (n := len(full_text(normalize(r, kind)))) > LONG_RECORD_CHARS
    ]
    found = [
        f"{source}: {where(records, i)} is {n:,} characters; training truncates it to "
        "data.max_length tokens"
        for i, n in long[:MAX_LONG_WARNINGS]
    ]
    if len(long) > MAX_LONG_WARNINGS:
        found.append(
            f"{source}: {len(long) - MAX_LONG_WARNINGS:,} more records are over "
            f"{LONG_RECORD_CHARS:,} characters"
        )
    return found


def stem_name(path: str | Path) -> str:
    """A valid dataset name from a file name: `my data.jsonl` -> `my-data`, `医療.json` -> `医療`.

    Spaces and characters a name cannot hold become `-`; the result is NFC and fits in
    `names.MAX_NAME_BYTES`.
    """
    stem = names.normalize(Path(path).name)
    for suffix in (".jsonl", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    slug = "".join(c if c != " " and names.is_name_char(c) else "-" for c in stem)
    slug = re.sub("-{2,}", "-", slug).lstrip("._-").rstrip("-")
    return check_name(fit_bytes(slug or "dataset", names.MAX_NAME_BYTES))


def fit_bytes(name: str, max_bytes: int) -> str:
    """`name` cut to at most `max_bytes` of UTF-8, never inside a character."""
    return names.normalize(name.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"))


def broken_datasets() -> list[tuple[str, str]]:
    """(directory name, problem) for each directory of the store that `list_datasets` skips
    because its meta.json is missing or unreadable, so a listing can show it, not hide it."""
    root = datasets_root()
    if not root.is_dir():
        return []
    return [
        (d.name, f"{META_FILE} is missing or unreadable; remove {d} and import the file again")
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and _read_meta(d) is None
    ]
