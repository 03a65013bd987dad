"""`mlxlora export --ollama` on a real trained builtin:tiny run: the files, the Modelfile, the
GGUF's chat template, the commands a (fake) `ollama` receives, and every way it must refuse or
clean up. The `tiny_run` fixture (tests/export/conftest.py) trains the run once a session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import gguf
import pytest
import yaml

from mlxlora.errors import ExportError
from mlxlora.export import to_ollama
from mlxlora.export.to_ollama import ExportRequest, export_ollama
from mlxlora.models.builtin import CHATML_TEMPLATE


@pytest.fixture
def run(tiny_run, tmp_path, monkeypatch):
    """A copy of the trained run (exports write into it), its workspace as MLXLORA_HOME."""
    home, trained = tiny_run
    monkeypatch.setenv("MLXLORA_HOME", str(home))
    copy = tmp_path / "runs" / "医療 run"
    shutil.copytree(trained, copy)
    return copy


def leftovers(folder) -> list[str]:
    """Hidden temporary files or directories an export may have left (its marker is no
    leftover: it says the folder is an export that a later one may replace)."""
    from mlxlora.outputs import OUTPUT_MARKER

    found = folder.rglob(".*") if folder.exists() else []
    return sorted(p.name for p in found if p.name != OUTPUT_MARKER)


def test_full_export_creates_the_model_in_ollama(run, fake_ollama):
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "export", str(run), "--ollama", "医療 Model v1",
         "--system", "あなたは医者です。", "--json"],
        capture_output=True, text=True, env=os.environ, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    stages = [line["stage"] for line in lines[:-1]]
    done = lines[-1]
    assert stages == ["name", "check", "fuse", "gguf", "ollama"]
    name = done["name"]
    assert name.startswith("model-v1-") and done["created"] is True
    folder = run / "export" / name
    assert done["out"] == str(folder) and sorted(done["files"]) == ["Modelfile", "model.gguf"]
    assert done["files"]["model.gguf"] == (folder / "model.gguf").stat().st_size > 100_000
    modelfile = (folder / "Modelfile").read_text("utf-8")
    assert modelfile.startswith('FROM "./model.gguf"\nTEMPLATE """')
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'SYSTEM "あなたは医者です。"' in modelfile
    assert fake_ollama.calls() == [
        {"argv": ["create", name, "-f", str(folder / "Modelfile")], "cwd": str(folder)},
        {"argv": ["list"], "cwd": os.getcwd()},
    ]
    field = gguf.GGUFReader(folder / "model.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == CHATML_TEMPLATE  # builtin:tiny's own
    assert leftovers(run / "export") == []


def test_without_ollama_the_command_is_given(run, no_ollama):
    result = export_ollama(ExportRequest(run, "tiny", quantize="q8_0"))
    assert result.created is False
    assert result.command == f"ollama create tiny -f '{run}/export/tiny/Modelfile'"
    assert sorted(result.files) == ["Modelfile", "model.gguf"]


def test_adapter_only_writes_a_lora_gguf_next_to_the_base(run, fake_ollama):
    result = export_ollama(ExportRequest(run, "tiny-lora", adapter_only=True))
    assert sorted(result.files) == ["Modelfile", "adapter.gguf", "base.gguf"]
    assert result.files["adapter.gguf"] < result.files["base.gguf"]
    text = (result.out / "Modelfile").read_text("utf-8")
    assert text.startswith('FROM "./base.gguf"\nADAPTER "./adapter.gguf"\nTEMPLATE')
    assert [c["argv"][0] for c in fake_ollama.calls()] == ["create", "list"]


def test_a_run_on_an_ollama_base_exports_an_adapter_from_that_model(run, store, fake_ollama):
    base = export_ollama(ExportRequest(run, "tiny-base", adapter_only=True)).out / "base.gguf"
    add_ollama_model(store, "tiny-base", base)
    cfg = yaml.safe_load((run / "config.yaml").read_text("utf-8"))
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": "ollama:tiny-base"}))
    result = export_ollama(ExportRequest(run, "tiny-tuned"))  # adapter-only by default
    assert sorted(result.files) == ["Modelfile", "adapter.gguf"]
    text = (result.out / "Modelfile").read_text("utf-8")
    assert text.startswith('FROM "tiny-base"\nADAPTER "./adapter.gguf"\n')
    full = export_ollama(ExportRequest(run, "tiny-full", adapter_only=False))  # --full
    assert sorted(full.files) == ["Modelfile", "model.gguf"]


@pytest.mark.parametrize(
    "template", [None, "{% for m in messages %}### {{ m.content }}{% endfor %}"]
)
def test_an_adapter_on_an_ollama_base_keeps_its_template_when_ours_is_unknown(tmp_path, template):
    config = {"chat_template": template} if template else {}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    said = []
    modelfile = to_ollama.modelfile_for(tmp_path, None, True, "llama3.2", lambda *a: said.append(a))
    assert modelfile.render() == 'FROM "llama3.2"\nADAPTER "./adapter.gguf"\n'
    assert [stage for stage, _ in said] == (["template"] if template else [])


def add_ollama_model(store, name: str, gguf_file) -> None:
    """`name` in Ollama's store as `ollama create` leaves it: a blob and a manifest."""
    import hashlib

    digest = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    (store / "blobs").mkdir(exist_ok=True)
    shutil.copy(gguf_file, store / "blobs" / f"sha256-{digest}")
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
             "size": gguf_file.stat().st_size}  # fmt: skip
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))


def test_bad_input_is_refused_on_one_line_before_any_work(run, tmp_path, fake_ollama, monkeypatch):
    from mlxlora.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "_has_llama_cpp", lambda: False)
    cases = {"a name Ollama cannot take": ExportRequest(run, "!!!")}
    cases["q4_k_m without llama.cpp"] = ExportRequest(run, "ok", quantize="q4_k_m")
    cases["an unquotable system"] = ExportRequest(run, "ok", system='a\n"""\nb')
    no_adapter = shutil.copytree(run, tmp_path / "no-adapter")
    for file in (no_adapter / "adapters").glob("adapters.safetensors"):
        file.unlink()
    cases["no adapter"] = ExportRequest(no_adapter, "ok")
    cases["an unsupported architecture"] = ExportRequest(unsupported_run(run, tmp_path), "ok")
    expected = {"a name Ollama cannot take": "Ollama model name", "no adapter": "no adapter",
                "an unsupported architecture": "does not support model_type 'gpt2'",
                "an unquotable system": "SYSTEM: a Modelfile cannot hold",
                "q4_k_m without llama.cpp": r"pip install 'mlxlora\[export\]'"}  # fmt: skip
    for case, request in cases.items():
        with pytest.raises(ExportError, match=expected[case]) as caught:
            export_ollama(request)
        assert "\n" not in str(caught.value), case
        assert not (request.run / "export").exists(), case
    assert fake_ollama.calls() == []


def unsupported_run(run, tmp_path):
    """A copy of `run` whose base model says it is a GPT-2 (not a GGUF export architecture)."""
    from mlxlora.models.resolve import builtin_dir

    model = shutil.copytree(builtin_dir(), tmp_path / "gpt2-model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    copy = shutil.copytree(run, tmp_path / "gpt2-run")
    cfg = yaml.safe_load((copy / "config.yaml").read_text("utf-8"))
    (copy / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": str(model)}))
    return copy


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupted_or_failed_export_leaves_nothing(run, monkeypatch, failure, fake_ollama):
    import mlxlora.export.gguf_writer as writer

    def write_half_then_fail(model_dir, out, *args, **kwargs):
        out.write_bytes(b"GGUF half")
        raise failure

    monkeypatch.setattr(writer, "write_gguf", write_half_then_fail)
    with pytest.raises(ExportError if isinstance(failure, OSError) else KeyboardInterrupt) as e:
        export_ollama(ExportRequest(run, "tiny"))
    if isinstance(failure, OSError):
        assert str(e.value).endswith("No space left on device; nothing was written")
    assert list((run / "export").iterdir()) == []  # no model, no temporary directory
    assert fake_ollama.calls() == []


def test_ollama_failing_is_one_line_and_keeps_the_finished_export(run, fake_ollama, monkeypatch):
    monkeypatch.setenv("FAKE_OLLAMA_FAIL", "1")
    with pytest.raises(ExportError, match="could not connect to ollama app.*is complete"):
        export_ollama(ExportRequest(run, "tiny", quantize="q4_0"))
    assert sorted(p.name for p in (run / "export" / "tiny").iterdir()) == [
        ".mlxlora-output.json",
        "Modelfile",
        "model.gguf",
    ]


def test_cli_error_is_one_line_with_the_export_exit_code(run, no_ollama):
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "export", str(run), "--ollama", "a/b/c"],
        capture_output=True, text=True, env=os.environ, timeout=120,
    )  # fmt: skip
    assert out.returncode == ExportError.exit_code
    assert out.stderr.splitlines() == [
        "mlxlora: error: Ollama model name 'a/b/c': expected NAME, NAME:TAG or NAMESPACE/NAME[:TAG]"
    ]


def test_sigterm_mid_export_removes_the_temporary_files(run, fake_ollama):
    """What the studio's Cancel sends: the export unwinds, exits 130 and leaves nothing."""
    child = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", "export", str(run), "--ollama", "tiny", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    for line in child.stdout:
        if json.loads(line).get("stage") == "fuse":
            break
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 130, child.stderr.read()
    assert child.stderr.read().splitlines()[-1] == "mlxlora: interrupted"
    assert list((run / "export").iterdir()) == []  # the temporary directory is gone
    assert fake_ollama.calls() == []


def _state(folder) -> dict:
    """Every path under `folder` (hidden ones included) with its bytes, to see nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def test_an_out_that_is_not_an_earlier_export_is_refused_on_one_line(run, tmp_path, no_ollama):
    from mlxlora.outputs import OUTPUT_MARKER

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "keep me"}\n')
    fused = tmp_path / "fused"  # another command's output
    fused.mkdir()
    (fused / "config.json").write_text("{}")
    (fused / OUTPUT_MARKER).write_text(json.dumps({"command": "fuse"}))
    cases = {
        mine: "exists and is not an earlier `mlxlora export` output",
        data: "is a file, not a directory",
        fused: "exists and is not an earlier `mlxlora export` output",
        run: "is a run directory",
        run / "adapters" / "ollama": f"is inside the run directory {run}",
    }
    before = _state(tmp_path)
    for out, words in cases.items():
        with pytest.raises(ExportError) as err:
            export_ollama(ExportRequest(run, "tiny", out=out))
        assert words in str(err.value) and "\n" not in str(err.value), out
    assert _state(tmp_path) == before


def test_an_earlier_export_is_replaced_marker_or_not(run, tmp_path, no_ollama):
    from mlxlora.outputs import OUTPUT_MARKER

    out = tmp_path / "ollama-model"
    first = export_ollama(ExportRequest(run, "tiny", adapter_only=True, out=out))
    assert sorted(first.files) == ["Modelfile", "adapter.gguf", "base.gguf"]  # no marker listed
    again = export_ollama(ExportRequest(run, "tiny", out=out))
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "Modelfile", "model.gguf"]
    assert sorted(again.files) == ["Modelfile", "model.gguf"]
    (out / OUTPUT_MARKER).unlink()  # written before exports had a marker: known by its files
    export_ollama(ExportRequest(run, "tiny", out=out))
    (out / OUTPUT_MARKER).unlink()
    (out / "notes.txt").write_text("mine")  # then it is not only an export any more
    with pytest.raises(ExportError, match="not an earlier `mlxlora export` output"):
        export_ollama(ExportRequest(run, "tiny", out=out))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_name_made_valid_is_said_on_one_line(run, no_ollama):
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "export", str(run), "--ollama", "医療モデル",
         "--adapter-only"],
        capture_output=True, text=True, env=os.environ, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("name: ")]
    assert said == [
        "name: using the Ollama name 'mlxlora-36e9d8' for '医療モデル': Ollama names hold only "
        "lowercase ASCII letters, digits, '_', '-' and '.' (a short hash of the name stands "
        "for the letters that had to go)"
    ]
    stages = []
    export_ollama(ExportRequest(run, "tiny", adapter_only=True), lambda s, m: stages.append(s))
    assert "name" not in stages  # a valid name is used as given, silently
    upper = []
    result = export_ollama(
        ExportRequest(run, "Tiny", adapter_only=True), lambda *a: upper.append(a)
    )
    assert result.name == "tiny" and upper[0] == (
        "name",
        "using the Ollama name 'tiny' for 'Tiny': Ollama names hold only lowercase ASCII "
        "letters, digits, '_', '-' and '.'",
    )


def test_the_export_has_the_permissions_the_umask_gives(run, tmp_path, no_ollama):
    import stat

    old = os.umask(0o027)
    try:
        result = export_ollama(ExportRequest(run, "tiny", adapter_only=True, out=tmp_path / "o"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.out.stat().st_mode) == 0o750  # not tempfile's 0700
    for path in result.out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
