"""A run's memory before and while it trains: its shape on the backend, its budget, its weights
as loaded, training.fit's choice, its longest record, and the guard that stops a step that would
pass the budget. Backend-agnostic (the backend is passed in); the arithmetic is memory.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlxlora.config import Config
from mlxlora.data import batching
from mlxlora.errors import ModelError
from mlxlora.events import MemoryFit
from mlxlora.runs import RunPaths


@dataclass
class MemoryGuard:
    """The budget of a run (training.memory_budget or the machine's), and the estimate of a
    coming step."""

    budget: int
    info: dict
    config: Config
    backend: object
    outgrew: float = 1.0  # a resumed run's: how far its steps so far outgrew their estimate

    def __post_init__(self):
        # the loaded weights do not change while training: summed once, not before every step
        self.weights = self.backend.weight_bytes()

    def step_estimate(self, longest: int):
        """memory.MemoryEstimate of a micro-batch whose longest record has `longest` tokens."""
        from mlxlora import memory

        shape = train_shape(self.config, self.backend, longest)
        return memory.estimate(self.info, shape, weights=self.weights)

    def advice(self, longest: int) -> list[str]:
        from mlxlora import memory_fit

        shape = train_shape(self.config, self.backend, longest)
        return memory_fit.fit_advice(self.step_estimate(longest), self.budget, self.info, shape)


def memory_check(cfg: Config, model_dir: Path, backend, longest: int) -> tuple[float, list[str]]:
    """Estimated peak (GB) for the longest batch, and advice when it exceeds the budget."""
    from mlxlora import memory, memory_fit
    from mlxlora.models.info import model_info

    info = model_info(model_dir)
    shape = train_shape(cfg, backend, longest)
    est = memory.estimate(info, shape, weights=backend.weight_bytes())
    budget = training_budget(cfg, backend)
    if not budget or est.total <= budget:
        return est.total / 1e9, []
    given = "of training.memory_budget" if cfg.training.memory_budget else "this device can use"
    head = (
        f"estimated peak memory {memory.fmt_bytes(est.total)} exceeds the "
        f"{memory.fmt_bytes(budget)} {given}; try: "
    )
    return est.total / 1e9, [head + "; ".join(memory_fit.fit_advice(est, budget, info, shape))]


def train_shape(cfg: Config, backend, longest: int):
    """The memory.TrainShape of `cfg` as `backend` trains it, for batches up to `longest`."""
    from dataclasses import replace

    from mlxlora import memory

    shape = memory.TrainShape.from_config(cfg)
    if backend.info.device.startswith("cpu"):
        shape = memory.on_cpu(shape)
    length = min(longest, cfg.data.max_length)
    length += -length % backend.info.pad_multiple
    return replace(
        shape,
        max_length=length,
        attention=backend.info.attention,
        evaluation=backend.info.evaluation,
    )


def training_budget(cfg: Config, backend) -> int | None:
    """Bytes the run may use: training.memory_budget, else what the device or machine has."""
    from mlxlora.config import run_budget

    return run_budget(cfg, device_budget(backend))


def device_budget(backend) -> int | None:
    """Bytes training may use on the backend's device (a GPU's own memory), else the machine's."""
    from mlxlora import machine

    return backend.info.memory_budget_bytes or machine.memory_budget()


def planned_weights(cfg: Config, info: dict, backend) -> int:
    """Bytes the weights will take once loaded on `backend`, before loading
    (memory_weights.planned_weights)."""
    from mlxlora import memory_weights

    on_cpu = backend.info.device.startswith("cpu")
    return memory_weights.planned_weights(info, cfg.quantized_base, on_cpu, backend.info.name)


def loaded_weights(cfg: Config, info: dict, backend) -> int:
    """The model's parameters once loaded, as the run counts them: the planned base weights and
    the LoRA layers' (memory_weights.lora_weight_bytes). A dry run and a fit say what the run
    will."""
    from mlxlora import memory, memory_weights

    shape = memory.TrainShape.from_config(cfg)
    return planned_weights(cfg, info, backend) + memory_weights.lora_weight_bytes(info, shape)


def resumed_outgrowth(paths: RunPaths | None) -> float:
    """memory_fit.outgrowth of the run being resumed (1 for a new run)."""
    from mlxlora.events import read_events
    from mlxlora.memory_fit import outgrowth

    return outgrowth(read_events(paths.events)) if paths and paths.events.is_file() else 1.0


def fit_config(cfg: Config, model_dir: Path, backend, outgrew: float = 1.0):
    """`cfg` with the fastest micro-batch, accumulation, checkpointing and loss chunk that fit
    the budget (memory_fit.fit_shape) at data.max_length, and the event that says why.
    `outgrew`: how far a resumed run's steps outgrew their estimate; the estimates must fit
    the budget at that rate."""
    from mlxlora import memory_fit
    from mlxlora.config import from_dict
    from mlxlora.memory import fmt_bytes
    from mlxlora.models.info import model_info

    info = model_info(model_dir)
    budget = training_budget(cfg, backend)
    if not budget:
        return cfg, None
    shape = train_shape(cfg, backend, cfg.data.max_length)
    weights = loaded_weights(cfg, info, backend)
    fit = memory_fit.fit_shape(info, shape, int(budget / outgrew), weights=weights)
    reason = fit.reason
    if outgrew > 1.0:
        reason += (
            f" (its steps so far peaked at {outgrew:.2f}x their estimate: fitted to "
            f"{fmt_bytes(budget / outgrew)} of the {fmt_bytes(budget)} budget)"
        )
    changes = fit.changes(shape)
    data = cfg.to_dict()
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    event = MemoryFit(budget, int(fit.estimate.total * outgrew), changes, fit.fits, reason)
    return from_dict(data), event


def longest_record(cfg: Config, model_dir: Path) -> int:
    """Tokens of the longest record in the config's datasets as training encodes them (at most
    data.max_length), counted with the model's tokenizer without loading the model or storing
    a file; data.max_length when the tokenizer cannot be read."""
    from mlxlora.data import formats, refs
    from mlxlora.models.info import tokenizer_of

    d, encode = cfg.data, batching.encode
    try:
        tokenizer = tokenizer_of(model_dir, cfg.model)
    except ModelError:
        return d.max_length
    longest = 0
    for ref in filter(None, (d.dataset, d.validation)):
        kind, records = refs.peek(ref)
        for record in records:
            example = encode(formats.normalize(record, kind), tokenizer, d.completions_only)
            longest = max(longest, len(example.tokens))
    return min(longest, d.max_length) or d.max_length
