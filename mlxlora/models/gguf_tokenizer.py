"""Rebuild a Hugging Face tokenizer directory from the `tokenizer.*` metadata of a GGUF file.

GGUF keeps the vocabulary (`tokenizer.ggml.tokens`, `.token_type`, `.scores`, `.merges`), the
name of the tokenizer family (`tokenizer.ggml.model`: "gpt2" for byte-level BPE, "llama" for
SentencePiece), the name of the pre-tokenizer (`tokenizer.ggml.pre`), the special token ids and
the chat template. From these we write tokenizer.json (built with `tokenizers`),
tokenizer_config.json, special_tokens_map.json and generation_config.json, the files
transformers and mlx-lm read.

Imports no mlx or torch; `tokenizers` only when a tokenizer is built.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxlora.errors import ModelError

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

TOKENIZER_MODELS = ("gpt2", "llama")

# The split regexes of the HF tokenizer.json files of each family, keyed by llama.cpp's
# `tokenizer.ggml.pre` names (llama-vocab.cpp lists the same regexes per pre-tokenizer type).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_DIGITS = ("smollm", "starcoder", "refact", "codeshell")  # Digits + GPT-2 byte-level regex
PRE_LLAMA3 = ("llama-bpe", "llama3", "smaug-bpe", "dbrx")
PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen", "qwen35")
PRE_GPT2 = ("gpt-2", "gpt2", "default", "", None)
KNOWN_PRE = PRE_DIGITS + PRE_LLAMA3 + PRE_QWEN2 + PRE_GPT2


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in PRE_DIGITS:
        return None, pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in PRE_LLAMA3:
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
        return None, pre_tokenizers.Sequence([split, byte_level])
    if pre in PRE_QWEN2:
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False)
        return normalizers.NFC(), pre_tokenizers.Sequence([split, byte_level])
    # GPT-2's own regex: the default of ByteLevel, and the fallback for pre-tokenizers we do
    # not know (their split regex may differ a little: describe() reports the name).
    return None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _split_merge(merge: str) -> tuple[str, str]:
    pos = merge.find(" ", 1)  # as llama.cpp does: a token may start with a space
    if pos < 0:
        raise ModelError(f"malformed tokenizer merge {merge!r} in the GGUF metadata")
    return merge[:pos], merge[pos + 1 :]


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-ordered bigram merging.

    llama.cpp (and SentencePiece BPE) repeatedly joins the adjacent pair whose joined piece has
    the highest score; a BPE model does the same when its merges are ranked by that score.
    Every split of every normal piece into two normal pieces is a merge.
    """
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    found = []
    for piece, pid in vocab.items():
        if len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                found.append((-scores[pid], pid, vocab[left], vocab[right], left, right))
    found.sort()
    return [(f[4], f[5]) for f in found]


def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's; `meta` holds the tokenizer.* keys."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a repeated name keeps its first id, as llama.cpp does
    merges_raw = meta.get("tokenizer.ggml.merges")
    if kind == "gpt2":
        merges = [_split_merge(m) for m in merges_raw or []]
        pre = meta.get("tokenizer.ggml.pre")
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre in PRE_LLAMA3, fuse_unk=False))
        normalizer, pre_tok = _pre_tokenizer(pre)
        if normalizer is not None:
            tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tok
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        if merges_raw:
            merges = [_split_merge(m) for m in merges_raw]
        else:
            merges = spm_merges(tokens, scores, types)
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None
        if unk is None and UNKNOWN in types:
            unk = tokens[types.index(UNKNOWN)]
        tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        # SentencePiece always prepends "▁" (even before leading spaces) and turns every space
        # into "▁": HF's Llama tokenizer.json does it as a normalizer, so do we.
        steps = [normalizers.Replace(" ", "▁")]
        if prefix:
            steps.insert(0, normalizers.Prepend("▁"))
        tok.normalizer = normalizers.Sequence(steps)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(steps)
    else:
        raise ModelError(
            f"tokenizer model {kind!r} is not supported (supported: {', '.join(TOKENIZER_MODELS)})"
        )
    added = []
    for i, t in enumerate(tokens):
        if types[i] in (CONTROL, UNKNOWN, USER_DEFINED) and vocab.get(t) == i:
            special = types[i] != USER_DEFINED
            added.append(AddedToken(t, special=special, normalized=False))
    tok.add_tokens(added)
    _post_processor(tok, meta)
    return tok


def _token(meta: dict, key: str) -> str | None:
    tokens = meta["tokenizer.ggml.tokens"]
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[i] if i is not None and 0 <= i < len(tokens) else None


def add_bos(meta: dict) -> bool:
    default = meta.get("tokenizer.ggml.model") == "llama"  # SentencePiece models add BOS
    return bool(meta.get("tokenizer.ggml.add_bos_token", default))


def _post_processor(tok, meta: dict) -> None:
    from tokenizers import processors

    bos, eos = _token(meta, "bos"), _token(meta, "eos")
    want_bos = add_bos(meta) and bos is not None
    want_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if not (want_bos or want_eos):
        if meta.get("tokenizer.ggml.model") == "gpt2":
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return
    head = f"{bos}:0 " if want_bos else ""
    tail = f" {eos}:0" if want_eos else ""
    specials = {
        t: tok.token_to_id(t) for t in (bos if want_bos else None, eos if want_eos else None) if t
    }
    tok.post_processor = processors.TemplateProcessing(
        single=f"{head}$A:0{tail}",
        pair=f"{head}$A:0{tail} {head}$B:1{tail}".replace("  ", " ").strip(),
        special_tokens=list(specials.items()),
    )


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def eos_ids(meta: dict) -> list[int]:
    """The ids that end a generation: eos, then end-of-turn / end-of-message when different."""
    out: list[int] = []
    for key in ("eos", "eot", "eom"):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and i not in out:
            out.append(int(i))
    return out


def write_tokenizer(dest: Path, meta: dict, context_length: int | None = None) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json."""
    tok = build_tokenizer(meta)
    (dest / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    names = {k: _token(meta, k) for k in ("bos", "eos", "unknown", "padding")}
    special_map = {
        f"{k}_token": names[g]
        for k, g in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
        if names[g] is not None
    }
    decoder = {}
    for i, ty in enumerate(types):
        if ty in (CONTROL, UNKNOWN, USER_DEFINED):
            decoder[str(i)] = {
                "content": tokens[i],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": ty != USER_DEFINED,
            }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": names["bos"],
        "eos_token": names["eos"],
        "unk_token": names["unknown"],
        "pad_token": names["padding"],
        "add_bos_token": add_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(context_length or 4096),
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    _dump(dest / "tokenizer_config.json", config)
    _dump(dest / "special_tokens_map.json", special_map)
    gen = {"do_sample": False}
    bos_id, pad_id = (meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "padding"))
    if bos_id is not None:
        gen["bos_token_id"] = int(bos_id)
    ids = eos_ids(meta)
    if ids:
        gen["eos_token_id"] = ids if len(ids) > 1 else ids[0]
    if pad_id is not None:
        gen["pad_token_id"] = int(pad_id)
    _dump(dest / "generation_config.json", gen)
