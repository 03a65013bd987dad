"""`export_ollama`: a finished run as a model Ollama serves (GGUF + Modelfile + `ollama create`).

Full export: the adapter fused into the base (as `fuse.fuse_run` does), one GGUF (`write_gguf`),
a Modelfile `FROM ./model.gguf`. Adapter-only (the default for a run trained on an `ollama:` base):
a llama.cpp LoRA GGUF and `FROM <that Ollama model> / ADAPTER ./adapter.gguf`, a few MB; for
any other base the base GGUF is written next to it. Everything is checked before any work
(the run, the name, the output place, the architecture, the chat template, the SYSTEM text)
and written into a temporary directory renamed into place: a failed or interrupted export leaves
nothing behind. A name Ollama cannot take is made valid and the one used is said.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlxlora.errors import ExportError
from mlxlora.export import ollama, templates
from mlxlora.export.fuse import ExportSource, export_source
from mlxlora.export.gguf_writer import QUANTIZATIONS, check_quantization, check_supported
from mlxlora.export.modelfile import Modelfile, name_is_hashed, ollama_model_name
from mlxlora.outputs import OUTPUT_MARKER, check_output_dir, output_dir

EXPORT_DIR = "export"  # default output: <run>/export/<ollama name>
# The files of an export (besides its marker), one set per kind: full, adapter + base, adapter
LAYOUTS = (
    {"Modelfile", "model.gguf"},
    {"Modelfile", "adapter.gguf", "base.gguf"},
    {"Modelfile", "adapter.gguf"},
)
Report = Callable[[str, str], None]  # (stage, message)


@dataclass(frozen=True)
class ExportRequest:
    run: Path
    name: str  # as the user typed it; made a valid Ollama name
    quantize: str = "f16"
    system: str | None = None
    adapter_only: bool | None = None  # None: adapter-only when the base is an Ollama model
    out: Path | None = None


@dataclass
class ExportResult:
    name: str  # the Ollama model name
    out: Path
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    command: str = ""  # the `ollama create` command
    created: bool = False  # ollama create ran and `ollama list` shows the model


def export_ollama(request: ExportRequest, report: Report = lambda stage, text: None):
    """Export `request.run` for Ollama; returns what was written and whether Ollama has it.

    A name Ollama cannot take as given is made valid and said (stage "name"); an existing
    `request.out` is replaced only when it is an earlier export (outputs.check_output_dir)."""
    name = ollama_model_name(request.name)
    if name != request.name:
        report("name", name_notice(request.name, name))
    source = export_source(request.run)
    if request.quantize not in QUANTIZATIONS:
        raise ExportError(
            f"--quantize {request.quantize}: choose one of {', '.join(QUANTIZATIONS)}"
        )
    base_ollama = source.model_ref.removeprefix("ollama:") if _is_ollama(source.model_ref) else None
    adapter_only = request.adapter_only if request.adapter_only is not None else bool(base_ollama)
    if not (adapter_only and base_ollama):  # the weights go into a GGUF of this quantization
        check_quantization(request.quantize)  # before the fuse: llama.cpp missing for q4_k_m
    from mlxlora.models.resolve import resolve_model

    default = source.run / EXPORT_DIR / _folder(name)
    out = Path(request.out) if request.out else default
    check_output_dir(out, "export", default=default, earlier=_earlier_export, error=ExportError)
    report("check", f"base model {source.model_ref}")
    model_dir = resolve_model(source.model_ref, progress=False)
    check_supported(model_dir)
    modelfile = modelfile_for(model_dir, request.system, adapter_only, base_ollama, report)
    text = modelfile.render()  # refuses a SYSTEM text a Modelfile cannot hold, before any work
    try:
        with output_dir(out, "export") as tmp:
            _write_weights(source, request.quantize, modelfile, model_dir, tmp, report)
            (tmp / "Modelfile").write_text(text, encoding="utf-8")
    except OSError as exc:  # a full disk, a read-only folder: the temporary files are gone
        raise ExportError(f"{out}: {exc.strerror or exc}; nothing was written") from None
    result = ExportResult(name, out, _sizes(out), ollama.shell_command(name, out / "Modelfile"))
    _create(result, report)
    return result


def name_notice(given: str, name: str) -> str:
    """One line saying that `name` stands for the name the user gave, and why."""
    why = "Ollama names hold only lowercase ASCII letters, digits, '_', '-' and '.'"
    if name_is_hashed(given):
        why += " (a short hash of the name stands for the letters that had to go)"
    return f"using the Ollama name {name!r} for {given!r}: {why}"


def _earlier_export(folder: Path) -> bool:
    """Whether `folder`, without the marker exports now carry, is clearly one written by an
    export: only a Modelfile and the GGUF files of one of its layouts, the Modelfile quoting
    them as ours does."""
    names = {p.name for p in folder.iterdir()}
    if names not in LAYOUTS or not all((folder / n).is_file() for n in names):
        return False
    text = (folder / "Modelfile").read_text("utf-8", errors="replace")
    ggufs = names - {"Modelfile"}
    return (
        text.startswith('FROM "')
        and all(f'"./{n}"' in text for n in ggufs)
        and all(_starts_with(folder / n, b"GGUF") for n in ggufs)
    )


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _is_ollama(ref: str) -> bool:
    return ref.startswith("ollama:")


def modelfile_for(model_dir: Path, system, adapter_only: bool, base_ollama, report: Report):
    """The Modelfile of an export of a run on the model in `model_dir`."""
    if not (adapter_only and base_ollama):
        chat = templates.chat_format(model_dir)
        if not adapter_only:
            return Modelfile("./model.gguf", chat, system)
        return Modelfile("./base.gguf", chat, system, adapter="./adapter.gguf")
    return Modelfile(base_ollama, _ollama_base_chat(model_dir, base_ollama, report), system,
                     adapter="./adapter.gguf")  # fmt: skip


def _ollama_base_chat(model_dir: Path, base: str, report: Report):
    """The chat format for an adapter on Ollama model `base`: translated from the chat template
    the run trained with; when the GGUF carries none we know, `base`'s own TEMPLATE applies."""
    try:
        chat = templates.chat_format(model_dir)
    except ExportError as exc:
        chat = None
        report("template", f"{exc}; using {base}'s own TEMPLATE")
    return None if chat is None or chat.family == "plain" else chat


def _write_weights(
    source: ExportSource,
    quantize: str,
    modelfile: Modelfile,
    model_dir: Path,
    tmp: Path,
    report: Report,
):
    from mlxlora.backends.mlx_fuse import fuse_adapter
    from mlxlora.export.gguf_writer import write_gguf, write_lora_gguf

    jinja, _ = templates.read_chat_template(model_dir)
    if modelfile.adapter:
        report("adapter", "writing the LoRA adapter as GGUF")
        write_lora_gguf(source.run, model_dir, tmp / "adapter.gguf")
        if modelfile.source == "./base.gguf":
            report("gguf", f"writing the base model as GGUF ({quantize})")
            _say_stored_types(
                write_gguf(model_dir, tmp / "base.gguf", quantize, jinja), quantize, report
            )
        return
    report("fuse", "merging the adapter into the base model")
    fused = tmp / "fused"  # an intermediate inside the export's temporary directory
    fuse_adapter(model_dir, source.adapter, fused, dequantize=True)
    report("gguf", f"writing GGUF ({quantize})")
    written = write_gguf(fused, tmp / "model.gguf", quantize, jinja)
    shutil.rmtree(fused)  # the GGUF holds everything Ollama needs
    _say_stored_types(written, quantize, report)


def _say_stored_types(path: Path, quantize: str, report: Report) -> None:
    from mlxlora.export.stored_types import quantization_notice

    if notice := quantization_notice(path, quantize):
        report("gguf", notice)


def _create(result: ExportResult, report: Report) -> None:
    binary = ollama.binary()
    if binary is None:
        return  # the caller prints result.command for the user to run
    report("ollama", f"ollama create {result.name}")
    try:
        ollama.create(result.name, result.out / "Modelfile", binary)
    except ExportError as exc:
        raise ExportError(f"{exc} (the export in {result.out} is complete)") from None
    result.created = True


def _folder(name: str) -> str:
    """A directory name for an Ollama name (`user/model:tag` -> `user--model-tag`)."""
    return name.replace("/", "--").replace(":", "-")


def _sizes(folder: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != OUTPUT_MARKER
    }
