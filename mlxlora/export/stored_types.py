"""What a written GGUF holds its weights as, against what its quantization asked for.

llama.cpp's K-quants (q4_k_m) take rows of whole 256-value blocks; a tensor whose rows are not
(SmolLM2's 576, builtin:tiny's 128) it stores as Q5_0 or Q8_0 instead, and the file comes out
larger than a user who chose 4 bits expects. The export says so, read back from the file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# The types each quantization is made of by design (q4_0 keeps the embedding and output at
# Q8_0; q4_k_m's mix gives some tensors Q6_K)
INTENDED = {
    "f16": {"F16"},
    "q8_0": {"Q8_0"},
    "q4_0": {"Q4_0", "Q8_0"},
    "q4_k_m": {"Q4_K", "Q6_K"},
}


def quantization_notice(path: Path, quantize: str) -> str | None:
    """One line saying what share of the weights in the GGUF at `path` is stored otherwise
    than `quantize` intends, as which types, and the row lengths that caused it; None when
    every weight is as intended."""
    import gguf

    weights: Counter[str] = Counter()
    rows: Counter[int] = Counter()
    for tensor in gguf.GGUFReader(str(path)).tensors:
        if len(tensor.shape) < 2:  # norms and biases stay F32 in every quantization
            continue
        kind = tensor.tensor_type.name
        weights[kind] += int(tensor.n_elements)
        if kind not in INTENDED[quantize]:
            rows[int(tensor.shape[0])] += int(tensor.n_elements)  # shape[0]: a row's length
    other = {kind: n for kind, n in weights.items() if kind not in INTENDED[quantize]}
    if not other:
        return None
    share = sum(other.values()) / sum(weights.values())
    kinds = "/".join(sorted(other))
    lengths = ", ".join(str(n) for n, _ in rows.most_common())
    block = "256-value blocks" if quantize == "q4_k_m" else "32-value blocks"
    advice = ""
    if quantize == "q4_k_m" and all(n % 32 == 0 for n in rows):
        advice = " (q4_0 keeps them at 4 bits: its blocks hold 32 values)"
    return (
        f"{quantize}: {share:.0%} of the weights are stored as {kinds} instead, since"
        f" {quantize} takes rows of whole {block} and theirs hold {lengths} values; the file"
        f" is larger than {quantize} would make it{advice}"
    )
