"""What a diagnosis of a run finds (diagnosis.py does the finding): a `Finding` of one kind,
its evidence and the remedies for its kind in mlxlora's config keys, and a run's findings
summed up in a word or two for a list. Pure; imports no mlx, torch or textual.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mlxlora.events import Diagnosis

REMEDIES = {
    "overfitting": [
        "training.early_stopping.patience: 2 (keeps adapters/best at the lowest val loss)",
        "fewer training.epochs",
        "lora.dropout: 0.1-0.15",
        "more training data",
    ],
    "oscillation": [
        "more records a step: training.grad_accumulation 2-4 (a few short records scatter)",
        "lower training.learning_rate (down to 1e-5)",
        "longer training.warmup_steps",
        "training.grad_clip: 1.0 (or lower)",
    ],
    "lr_too_high": [
        "lower training.learning_rate (down to 1e-5)",
        "longer training.warmup_steps",
        "training.grad_clip: 1.0 (or lower)",
    ],
    "plateau": [
        "lora.rank: 20-24 (more capacity for domain terms)",
        "more or better training data (check term density: mlxlora data show --terms)",
        "a larger or different base model",
    ],
    "slow_convergence": [
        "a larger or different base model",
        "more training data",
        "training.learning_rate higher if it is 1e-5 or below",
    ],
    "truncation": [
        "data.max_length higher if memory allows (mlxlora doctor), or shorter records",
    ],
    # No fixed numbers: a finding reads no config, and "data.max_length: 1024" told a run of
    # 256 to raise it. training.fit chooses from the run's own config.
    "memory": [
        "training.fit: auto (or --fit): a batch, accumulation and checkpointing that fit, "
        "the effective batch kept",
        "a lower training.batch_size with training.grad_accumulation raised by as much",
        "training.grad_checkpoint: true",
        "a lower data.max_length (the longest records set the peak), or shorter records",
    ],
}
SEVERITIES = ("info", "warning", "critical")


def severity_rank(severity: str) -> int:
    """0 for info up to 2 for critical (an unknown severity ranks as info)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def flag(diagnoses: Iterable[Diagnosis]) -> str:
    """A run's diagnosis in a word or two for a list (the TUI's Runs tab, `runs list`): the
    worst finding's kind (the first finding of each kind counts), with how many other kinds
    there are; "" when none."""
    first: dict[str, Diagnosis] = {}
    for d in diagnoses:
        first.setdefault(d.kind, d)
    if not first:
        return ""
    worst = max(first.values(), key=lambda d: severity_rank(d.severity))
    more = len(first) - 1
    return worst.kind + (f" +{more}" if more else "")


@dataclass
class Finding:
    kind: str
    severity: str  # info | warning | critical
    step: int  # where it was first seen
    message: str
    evidence: dict = field(default_factory=dict)
    remedy: list[str] = field(default_factory=list)

    def event(self) -> Diagnosis:
        return Diagnosis(
            step=self.step,
            kind=self.kind,
            severity=self.severity,
            message=self.message,
            evidence=self.evidence,
            remedy=self.remedy,
        )
