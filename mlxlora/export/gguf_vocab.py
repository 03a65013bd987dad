"""The `tokenizer.*` metadata of a GGUF file from an HF model directory's tokenizer files.

Two tokenizer families, as llama.cpp reads them:
- `gpt2`: byte-level BPE (Llama 3, Qwen2/3, SmolLM2, builtin:tiny): tokens, types, merges and a
  pre-tokenizer name llama.cpp knows, recognised from tokenizer.json's pre-tokenizer (llama.cpp
  splits text with its own regex per name, so an unknown pre-tokenizer is refused rather than
  written with a guess that would tokenize differently);
- `llama`: SentencePiece (Llama 2, Mistral, Gemma), from tokenizer.model: tokens, scores, types.

Special token ids, add-BOS/EOS flags, merges and the chat template come from gguf's
SpecialVocab. Token types are ours: gguf's BpeVocab types an added token that is also in the
base vocabulary (SmolLM2's `<|im_start|>`) as normal text, and llama.cpp only treats control and
user-defined tokens as special. Imports no mlx.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxlora.errors import ExportError
from mlxlora.models.gguf_tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT

# Tokens that close a chat turn (llama.cpp's end-of-turn, EOT), when the vocabulary has one.
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
SPM_SPACE = "\u2581"  # SentencePiece's visible space


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


def tokenizer_kind(model_dir: Path) -> str:
    """'gpt2' (byte-level BPE) or 'llama' (SentencePiece) for the model's tokenizer."""
    tok = _read_json(model_dir / "tokenizer.json")
    model = tok.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        return "gpt2"
    if (model_dir / "tokenizer.model").is_file():
        return "llama"
    raise ExportError(
        f"{model_dir}: GGUF export needs a byte-level BPE tokenizer.json or a SentencePiece "
        "tokenizer.model; found neither"
    )


def _pre_parts(pre) -> list[dict]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(tok: dict, where: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json."""
    parts = _pre_parts(tok.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        regex = parts[0].get("pattern", {}).get("Regex")
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == QWEN2_SPLIT:
            return "qwen2"
    raise ExportError(
        f"{where}: tokenizer.json's pre-tokenizer ({'+'.join(map(str, kinds)) or 'none'}) is "
        "not one llama.cpp knows (gpt-2, smollm, llama-bpe, qwen2); the GGUF would tokenize "
        "differently"
    )


def _added_types(model_dir: Path) -> dict[int, int]:
    """Token id -> GGUF token type for the tokenizer's added tokens."""
    import gguf

    tok = _read_json(model_dir / "tokenizer.json")
    added = tok.get("added_tokens") or [
        {"id": int(i), **entry}
        for i, entry in _read_json(model_dir / "tokenizer_config.json")
        .get("added_tokens_decoder", {})
        .items()
    ]
    control, user = gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED
    return {int(a["id"]): control if a.get("special") else user for a in added}


def _bpe_tokens(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], str]:
    import gguf

    tok = _read_json(model_dir / "tokenizer.json")
    vocab = {int(i): t for t, i in tok["model"]["vocab"].items()}
    vocab.update({int(a["id"]): a["content"] for a in tok.get("added_tokens", [])})
    n = max(n_vocab, max(vocab) + 1)
    # rows of the embedding no token uses (vocabularies padded to a multiple) get placeholders
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(n)]
    types = [gguf.TokenType.NORMAL if i in vocab else gguf.TokenType.UNUSED for i in range(n)]
    for i, kind in _added_types(model_dir).items():
        types[i] = kind
    return tokens, types, pre_tokenizer_name(tok, model_dir / "tokenizer.json")


def _spm_tokens(model_dir: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    import gguf

    vocab = gguf.SentencePieceVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    for i, kind in _added_types(model_dir).items():
        if i < len(types) and types[i] == gguf.TokenType.NORMAL:
            types[i] = kind  # Gemma's <start_of_turn>: a user-defined piece in tokenizer.model
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types


def _space_prefix(model_dir: Path) -> bool:
    """Whether SentencePiece puts a space before the text (Llama 2 does, Gemma does not)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    pieces = sp.encode("a", out_type=str)
    return bool(pieces) and pieces[0].startswith(SPM_SPACE)


def _adds(model_dir: Path, kind: str) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) when the HF tokenizer encodes plain text."""
    config = _read_json(model_dir / "tokenizer_config.json")
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        plain = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a").ids
        return full[:1] != plain[:1], full[-1:] != plain[-1:]
    return bool(config.get("add_bos_token", kind == "llama")), bool(config.get("add_eos_token"))


def add_vocab(writer, model_dir: Path, n_vocab: int, chat_template: str | None) -> str:
    """Write the tokenizer metadata of `model_dir` to `writer`; returns the tokenizer kind."""
    import gguf

    model_dir = Path(model_dir)
    kind = tokenizer_kind(model_dir)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        tokens, types, pre = _bpe_tokens(model_dir, n_vocab)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    else:
        tokens, scores, types = _spm_tokens(model_dir, n_vocab)
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_space_prefix(model_dir))
    special = gguf.SpecialVocab(model_dir, load_merges=kind == "gpt2", n_vocab=len(tokens))
    special.add_special_token["bos"], special.add_special_token["eos"] = _adds(model_dir, kind)
    if chat_template is not None:
        special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in tokens]
    turn_end = next((texts.index(t) for t in TURN_ENDS if t in texts), None)
    if turn_end is not None:
        writer.add_eot_token_id(turn_end)
    return kind
