"""Models in Ollama's local store, read straight from its files (no `ollama` binary needed).

The store is `$OLLAMA_MODELS`, else `~/.ollama/models`:

    manifests/<host>/<namespace>/<name>/<tag>   JSON: {"layers": [{mediaType, digest, size}]}
    blobs/sha256-<hex>                          content-addressed layers

A reference `llama2` means `registry.ollama.ai/library/llama2:latest`; `user/name:tag` a
namespaced model on the same registry; `host/namespace/name:tag` (e.g. `hf.co/...`) a model
pulled from another host. The layer of media type `application/vnd.ollama.image.model` is the
GGUF file; `template`, `params` and `system` layers hold the chat template (Go template syntax),
the default parameters (JSON) and the system prompt. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlxlora.errors import ModelError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MEDIA = "application/vnd.ollama.image."
MODEL_MEDIA = MEDIA + "model"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class OllamaModel:
    name: str  # as the user writes it: `llama2`, `user/name`, `hf.co/org/repo`
    tag: str
    gguf_path: Path
    template: str | None = None
    params: dict = field(default_factory=dict)
    system: str | None = None
    size: int = 0  # bytes of the GGUF layer
    manifest: Path | None = None
    adapter_paths: tuple[Path, ...] = ()  # GGUF LoRA layers an Ollama Modelfile ADAPTER added

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def store_dir() -> Path:
    """Ollama's model store as the environment says now."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def parse_name(ref: str) -> tuple[str, str, str, str]:
    """(host, namespace, name, tag) of `name`, `ns/name`, `host/ns/name`, each with `:tag`."""
    ref = ref.strip()
    if ref.startswith("ollama:"):
        ref = ref[len("ollama:") :]
    path, tag = ref, DEFAULT_TAG
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = ref.rsplit(":", 1)
    parts = [p for p in path.split("/")]
    if not tag or any(not p or p in (".", "..") for p in parts) or len(parts) > 3:
        raise ModelError(
            f"ollama:{ref}: not an Ollama model name (expected NAME[:TAG], USER/NAME[:TAG] "
            "or HOST/NAMESPACE/NAME[:TAG], e.g. ollama:qwen2.5:0.5b)"
        )
    if len(parts) == 1:
        return DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0], tag
    if len(parts) == 2:
        return DEFAULT_HOST, parts[0], parts[1], tag
    return parts[0], parts[1], parts[2], tag


def display_name(host: str, namespace: str, name: str) -> str:
    """The short form Ollama itself prints: `llama2`, `user/name`, `hf.co/org/name`."""
    if host == DEFAULT_HOST:
        return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"
    return f"{host}/{namespace}/{name}"


def _manifests(store: Path) -> list[tuple[Path, str, str]]:
    """(manifest file, display name, tag) for every manifest in the store."""
    root = store / "manifests"
    if not root.is_dir():
        return []
    out = []
    for file in sorted(root.glob("*/*/*/*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        rel = file.relative_to(root).parts
        out.append((file, display_name(rel[0], rel[1], rel[2]), rel[3]))
    return out


def _blob(store: Path, digest: str) -> Path:
    hexpart = digest.split(":", 1)[-1]
    path = store / "blobs" / f"sha256-{hexpart}"
    if not path.exists():  # stores written by very old versions kept the colon
        legacy = store / "blobs" / f"sha256:{hexpart}"
        if legacy.exists():
            return legacy
    return path


def _read_manifest(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file}: unreadable Ollama manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ModelError(f"{file}: not an Ollama manifest (no layers list)")
    return data


def _model_layer(manifest: dict) -> dict | None:
    return next(
        (
            layer
            for layer in manifest["layers"]
            if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA
        ),
        None,
    )


@dataclass(frozen=True)
class StoreEntry:
    """One model in the store as `mlxlora models` lists it."""

    name: str
    tag: str
    size: int
    gguf_path: Path | None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def entries(store: Path | None = None) -> list[StoreEntry]:
    """Every model in the store that has a GGUF layer, sorted by name:tag."""
    store = store or store_dir()
    out = []
    for file, name, tag in _manifests(store):
        try:
            layer = _model_layer(_read_manifest(file))
        except ModelError:
            continue
        if layer is None or "digest" not in layer:
            continue
        blob = _blob(store, str(layer["digest"]))
        out.append(StoreEntry(name, tag, int(layer.get("size") or 0), blob))
    return sorted(out, key=lambda e: e.ref)


def list_models(store: Path | None = None) -> list[str]:
    """`name:tag` of every GGUF model in the store, e.g. ['llama2:7b', 'qwen2.5:0.5b']."""
    return [e.ref for e in entries(store)]


def _text_layer(store: Path, layer: dict) -> str | None:
    try:
        return _blob(store, str(layer["digest"])).read_text(encoding="utf-8")
    except (OSError, KeyError, UnicodeDecodeError):
        return None


def _not_found(ref: str, name: str, store: Path) -> ModelError:
    fix = f"fix: `ollama pull {name}`"
    if not store.is_dir():
        where = (
            f"OLLAMA_MODELS={os.environ['OLLAMA_MODELS']}"
            if os.environ.get("OLLAMA_MODELS")
            else f"{store} (set OLLAMA_MODELS if your store is elsewhere)"
        )
        return ModelError(f"ollama:{ref}: no Ollama model store at {where}; {fix}")
    available = list_models(store)
    if not available:
        return ModelError(f"ollama:{ref}: Ollama's store at {store} has no models; {fix}")
    shown = ", ".join(available[:12]) + (
        f", ... ({len(available)} in all)" if len(available) > 12 else ""
    )
    return ModelError(f"ollama:{ref}: not in Ollama's store at {store} (it has: {shown}); {fix}")


def find(ref: str, store: Path | None = None) -> OllamaModel:
    """The model `ref` (`NAME[:TAG]`, with or without `ollama:`) in Ollama's store."""
    store = store or store_dir()
    host, namespace, name, tag = parse_name(ref)
    short = display_name(host, namespace, name)
    shown = f"{short}:{tag}"
    manifest = store / "manifests" / host / namespace / name / tag
    if not manifest.is_file():
        # Ollama treats names case-insensitively; the files keep the case they were pulled with
        wanted = (host, namespace, name, tag)
        for file, _, _ in _manifests(store):
            parts = file.relative_to(store / "manifests").parts
            if tuple(p.lower() for p in parts) == tuple(p.lower() for p in wanted):
                manifest = file
                break
        else:
            raise _not_found(shown, short if tag == DEFAULT_TAG else shown, store)
    data = _read_manifest(manifest)
    layer = _model_layer(data)
    if layer is None:
        kinds = sorted({str(x.get("mediaType")) for x in data["layers"] if isinstance(x, dict)})
        raise ModelError(
            f"ollama:{shown}: its manifest has no {MODEL_MEDIA} layer "
            f"(layers: {', '.join(kinds) or 'none'}); not a GGUF model"
        )
    gguf_path = _blob(store, str(layer.get("digest", "")))
    if not gguf_path.is_file():
        raise ModelError(
            f"ollama:{shown}: the model blob {gguf_path.name} is missing from {store / 'blobs'}; "
            f"fix: `ollama pull {shown}`"
        )
    with open(gguf_path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"ollama:{shown}: {gguf_path} is not a GGUF file")
    template = system = None
    params: dict = {}
    adapters = []
    for x in data["layers"]:
        if not isinstance(x, dict):
            continue
        media = x.get("mediaType")
        if media == MEDIA + "template":
            template = _text_layer(store, x)
        elif media == MEDIA + "system":
            system = _text_layer(store, x)
        elif media == MEDIA + "params":
            try:
                loaded = json.loads(_text_layer(store, x) or "{}")
                params = loaded if isinstance(loaded, dict) else {}
            except json.JSONDecodeError:
                params = {}
        elif media == MEDIA + "adapter":
            adapters.append(_blob(store, str(x.get("digest", ""))))
    return OllamaModel(
        name=short,
        tag=manifest.name,
        gguf_path=gguf_path,
        template=template,
        params=params,
        system=system,
        size=int(layer.get("size") or gguf_path.stat().st_size),
        manifest=manifest,
        adapter_paths=tuple(adapters),
    )
