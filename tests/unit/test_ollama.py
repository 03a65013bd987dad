"""Ollama's local store, laid out in tmp dirs exactly as `ollama pull` leaves it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlxlora.errors import ModelError
from mlxlora.models import ollama

FAKE_GGUF = b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 56  # magic, version 3; enough for find()
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}


def _blob(store: Path, content: bytes) -> dict:
    digest = hashlib.sha256(content).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(content)
    return {"digest": f"sha256:{digest}", "size": len(content)}


def add_model(
    store: Path,
    ref: str,
    gguf: bytes = FAKE_GGUF,
    template: str | None = TEMPLATE,
    params: dict | None = None,
    system: str | None = None,
    extra_layers: list[dict] = (),
    host: str = "registry.ollama.ai",
) -> Path:
    """Write blobs and a manifest for `name[:tag]` / `user/name[:tag]` as Ollama does."""
    path, _, tag = ref.partition(":")
    parts = path.split("/")
    namespace, name = ("library", parts[0]) if len(parts) == 1 else parts
    layers = [{"mediaType": "application/vnd.ollama.image.model", **_blob(store, gguf)}]
    if template is not None:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.template",
                **_blob(store, template.encode()),
            }
        )
    if system is not None:
        layers.append(
            {"mediaType": "application/vnd.ollama.image.system", **_blob(store, system.encode())}
        )
    if params is not None:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.params",
                **_blob(store, json.dumps(params).encode()),
            }
        )
    layers += list(extra_layers)
    config = _blob(store, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": layers,
    }
    file = store / "manifests" / host / namespace / name / (tag or "latest")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(manifest))
    return file


def test_store_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "x"))
    assert ollama.store_dir() == tmp_path / "x"
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.store_dir() == tmp_path / ".ollama" / "models"


@pytest.mark.parametrize(
    "ref, parsed",
    [
        ("llama2", ("registry.ollama.ai", "library", "llama2", "latest")),
        ("ollama:llama2:7b", ("registry.ollama.ai", "library", "llama2", "7b")),
        ("qwen2.5:0.5b", ("registry.ollama.ai", "library", "qwen2.5", "0.5b")),
        ("user/name", ("registry.ollama.ai", "user", "name", "latest")),
        ("user/name:q4", ("registry.ollama.ai", "user", "name", "q4")),
        ("hf.co/org/repo:Q4_K_M", ("hf.co", "org", "repo", "Q4_K_M")),
    ],
)
def test_parse_name(ref, parsed):
    assert ollama.parse_name(ref) == parsed


@pytest.mark.parametrize("ref", ["", "a/b/c/d", "../x", "name:", "a//b"])
def test_parse_name_rejects(ref):
    with pytest.raises(ModelError, match="not an Ollama model name"):
        ollama.parse_name(ref)


def test_find_library_model_with_template_params_system(store):
    add_model(store, "qwen2.5:0.5b", params=PARAMS, system="You are terse.")
    m = ollama.find("qwen2.5:0.5b")
    digest = hashlib.sha256(FAKE_GGUF).hexdigest()
    assert m.gguf_path == store / "blobs" / f"sha256-{digest}"
    assert (m.name, m.tag, m.ref, m.size) == ("qwen2.5", "0.5b", "qwen2.5:0.5b", len(FAKE_GGUF))
    assert m.template == TEMPLATE and m.params == PARAMS and m.system == "You are terse."
    assert m.adapter_paths == ()
    assert ollama.find("ollama:qwen2.5:0.5b") == m


def test_default_tag_namespaced_and_case(store):
    add_model(store, "llama2", template=None)
    add_model(store, "someone/tiny:v1", gguf=FAKE_GGUF + b"x")
    m = ollama.find("llama2")
    assert m.tag == "latest" and m.template is None and m.params == {} and m.system is None
    n = ollama.find("someone/tiny:v1")
    assert n.name == "someone/tiny" and n.size == len(FAKE_GGUF) + 1
    assert ollama.find("Someone/Tiny:V1").gguf_path == n.gguf_path  # names ignore case


def test_list_models(store):
    assert ollama.list_models() == []
    add_model(store, "qwen2.5:0.5b")
    add_model(store, "llama2:7b")
    add_model(store, "someone/tiny")
    add_model(store, "org/repo:Q4", host="hf.co")
    (store / "manifests" / "registry.ollama.ai" / "library" / "llama2" / ".7b.tmp").write_text("")
    assert ollama.list_models() == [
        "hf.co/org/repo:Q4",
        "llama2:7b",
        "qwen2.5:0.5b",
        "someone/tiny:latest",
    ]
    entry = next(e for e in ollama.entries() if e.ref == "llama2:7b")
    assert entry.size == len(FAKE_GGUF) and entry.gguf_path.is_file()


def test_missing_model_lists_what_is_there(store):
    add_model(store, "llama2:7b")
    add_model(store, "qwen2.5:0.5b")
    with pytest.raises(ModelError) as err:
        ollama.find("mistral")
    msg = str(err.value)
    assert "\n" not in msg
    assert "llama2:7b, qwen2.5:0.5b" in msg and str(store) in msg
    assert "`ollama pull mistral`" in msg
    with pytest.raises(ModelError, match=r"`ollama pull llama2:13b`"):
        ollama.find("llama2:13b")


def test_empty_and_missing_store(store, tmp_path, monkeypatch):
    with pytest.raises(ModelError) as err:
        ollama.find("llama2")
    assert "has no models" in str(err.value) and str(store) in str(err.value)
    assert "`ollama pull llama2`" in str(err.value)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError) as err:
        ollama.find("llama2")
    assert "no Ollama model store" in str(err.value) and "nowhere" in str(err.value)
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelError) as err:
        ollama.find("llama2")
    assert str(tmp_path / ".ollama" / "models") in str(err.value)
    assert "OLLAMA_MODELS" in str(err.value)


def test_broken_stores(store):
    file = add_model(store, "gone")
    digest = json.loads(file.read_text())["layers"][0]["digest"].split(":")[1]
    (store / "blobs" / f"sha256-{digest}").unlink()
    with pytest.raises(ModelError, match="missing from .*ollama pull gone:latest"):
        ollama.find("gone")
    add_model(store, "notgguf", gguf=b"\x00" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        ollama.find("notgguf")
    file = add_model(store, "nomodel")
    manifest = json.loads(file.read_text())
    manifest["layers"] = manifest["layers"][1:]
    file.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="no application/vnd.ollama.image.model layer"):
        ollama.find("nomodel")
    file = add_model(store, "badjson")
    file.write_text("{")
    with pytest.raises(ModelError, match="unreadable Ollama manifest"):
        ollama.find("badjson")
    assert "badjson:latest" not in ollama.list_models()  # listing skips what it cannot read


def test_adapter_layers_are_reported(store):
    adapter = {"mediaType": "application/vnd.ollama.image.adapter", **_blob(store, b"GGUFlora")}
    add_model(store, "tuned", extra_layers=[adapter])
    assert [p.name for p in ollama.find("tuned").adapter_paths] == [
        "sha256-" + adapter["digest"].split(":")[1]
    ]
