"""The torch backend: transformers models with PEFT's LoRA layers, driven one micro-batch at a
time behind the same interface as the MLX backend (backends/base.py).

It computes what the MLX backend computes: the summed cross-entropy over labelled positions
divided by their count per micro-batch, gradients averaged over micro-batches, clipped by global
norm, and MLX's AdamW (no bias correction, see MLXAdamW). bf16 on CUDA, float32 on a CPU.
Under torchrun each process trains its share of every batch (backends/torch_dist.py).
"""

from __future__ import annotations

import platform
import re
import resource
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mlxlora.adapters_convert import MLX_WEIGHTS
from mlxlora.backends import torch_dist, torch_fused, torch_loss, torch_peft
from mlxlora.backends.base import (
    CHUNKABLE_TYPES,
    BackendInfo,
    Batch,
    package_version,
    prompt_tokens,
)
from mlxlora.errors import CheckpointUnreadable
from mlxlora.memory import loss_chunk_rows
from mlxlora.models.info import gguf_source

# torch.compile's code generator. The CI test swaps in "aot_eager" (the same graph capture,
# dynamic shapes and AOT backward, run with eager kernels): Inductor's C++ kernels take ~4 min
# to build on 2 CPU cores.
COMPILE_BACKEND = "inductor"


class DeviceScalar:
    """A scalar a CUDA step computes, copied into pinned host memory behind the step's
    kernels: float() waits for those kernels only, where `.item()` on the tensor would also
    wait for everything queued after them (the next step). A backends/base.py Reading."""

    def __init__(self, scalar: torch.Tensor, divisor: int = 1):
        self._host = torch.empty((), dtype=scalar.dtype, pin_memory=True)
        self._host.copy_(scalar, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(scalar.device))  # the copy's stream
        self._divisor = divisor

    def __float__(self) -> float:
        self._copied.synchronize()
        return self._host.item() / self._divisor


class MLXAdamW(torch.optim.Optimizer):
    """AdamW computed as mlx.optimizers.AdamW does: decay `p *= 1 - lr * wd`, then
    `p -= lr * m / (sqrt(v) + eps)` with no bias correction (MLX's default). torch's AdamW
    always corrects the bias, which makes the first steps ~3x smaller; this keeps one config
    training the same on both backends."""

    def __init__(self, params, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(
            params, {"lr": 0.0, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        )

    @torch.no_grad()
    def step(self, closure=None):
        # torch's multi-tensor (_foreach) kernels, as its own optimizers use them: a handful
        # of launches for all LoRA matrices instead of a handful per matrix (~200 on a 1B model)
        for group in self.param_groups:
            lr, wd, (b1, b2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p].update(m=torch.zeros_like(p), v=torch.zeros_like(p))
            grads = [p.grad for p in params]
            ms, vs = [self.state[p]["m"] for p in params], [self.state[p]["v"] for p in params]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, grads, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            denominators = torch._foreach_sqrt(vs)
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(params, ms, denominators, value=-lr)


def describe() -> BackendInfo:
    device, dtype = torch_peft.select_device()
    budget = (
        torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    )
    return BackendInfo(
        name="torch",
        device=(f"gpu (CUDA, {torch.cuda.get_device_name(device)})" if budget else "cpu")
        + torch_dist.describe(),
        dtype=str(dtype).removeprefix("torch."),
        blas="CUDA kernels" if budget else f"torch CPU ({torch.get_num_threads()} threads)",
        versions={
            "torch": torch.__version__,
            "transformers": package_version("transformers"),
            "peft": package_version("peft"),
            "python": platform.python_version(),
        },
        memory_budget_bytes=budget,
        # On CUDA what torch keeps live: SDPA's flash kernels keep no probabilities, and a loss
        # chunk is freed before the next (memory.EVALUATIONS). On a Linux CPU glibc's heap keeps
        # the step's freed tensors in the process: its resident peak ran 1.5-1.75x the live
        # one (SmolLM2 2 x 512 and 4 x 1024), about what MLX's CPU rules count (1.01-1.02x;
        # benchmarks/README.md, memory_matrix.py --torch).
        attention="fused" if budget else "blocked",
        evaluation="eager" if budget else "depth-first",
    )


class TorchBackend:
    """Backend implementation for transformers + PEFT (see backends/base.py for the contract)."""

    def __init__(self, pack: bool = False):
        """pack: each micro-batch as one row of its sequences back to back, no padding, each
        attending only to itself (position ids restart per sequence; transformers turns that
        into a block-diagonal mask for SDPA, varlen for flash-attention). Same loss."""
        self.pack = pack
        torch_dist.init()
        self.info = describe()
        self.device, self.dtype = torch_peft.select_device()
        self.model = None
        self.tokenizer = None
        self.optimizer = None
        self._labelled = 0  # labelled tokens in the gradients accumulated so far

    # --- setup ------------------------------------------------------------------------

    def load(self, model_dir: Path, config) -> None:
        self.model_dir = Path(model_dir)
        base, self.tokenizer = torch_peft.load_base(self.model_dir, self.device, self.dtype)
        torch_peft.keep_4bit_layers_trainable(base)
        lora = config.lora
        n_blocks = len(torch_peft.blocks(base))
        self.num_layers = n_blocks if lora.num_layers == -1 else lora.num_layers
        self.lora_targets, paths = torch_peft.lora_targets(
            base, self.num_layers, lora.target_modules
        )
        self.lora_parameters = {
            "rank": lora.rank,
            "scale": lora.alpha / lora.rank,
            "dropout": lora.dropout,
            "keys": self.lora_targets.keys,
        }
        torch.manual_seed(config.training.seed)
        self.model = torch_peft.add_lora(base, paths, lora.rank, lora.alpha, lora.dropout)
        torch_fused.fuse_rms_norms(self.model)
        self._precision = torch_peft.half_precision_forward(self.model, self.device, self.dtype)
        if config.training.grad_checkpoint:  # transformers 5.2x renamed it (the old name warns)
            enable = getattr(base, "activation_checkpointing_enable", None)
            (enable or base.gradient_checkpointing_enable)({"use_reentrant": False})
        # auto: off (on an H200 the compiled 1B step ran 0.25x the eager one, not understood)
        if config.training.compile is True:
            # block by block (LoRA layers included): the blocks share their code, so dynamo
            # traces one and reuses its graph for the rest (a whole 1B decoder did not finish
            # compiling in 2 min on an H200); dynamic: one graph serves batches of any length
            for block in torch_peft.blocks(base):
                block.compile(dynamic=True, backend=COMPILE_BACKEND)
        self.model.train()
        self.model_type = base.config.model_type
        self._chunk_rows = loss_chunk_rows(base.config.vocab_size)
        self._softcap = getattr(base.config, "final_logit_softcapping", None)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = MLXAdamW(self._trainable, config.training.weight_decay)
        # what the process held besides the model's weights once loaded: see peak_memory_bytes
        _reset_resident_peak()
        self._resident_before = psutil.Process().memory_info().rss - self.weight_bytes()

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def param_counts(self) -> tuple[int, int]:
        return sum(p.numel() for p in self._trainable), sum(
            p.numel() for p in self.model.parameters()
        )

    # --- loss -------------------------------------------------------------------------

    def _causal_lm(self):
        return self.model.base_model.model

    def _loss(self, inputs, position_ids, positions, targets) -> torch.Tensor:
        """Summed cross-entropy over the labelled positions only; only those rows go through
        the output projection, a chunk at a time, each chunk's gradient made in its forward
        pass instead of keeping its (rows x vocab) logits (torch_loss, as the MLX backend)."""
        lm = self._causal_lm()
        if self.model_type not in CHUNKABLE_TYPES:
            logits = lm(input_ids=inputs, position_ids=position_ids, use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1])[positions].float()
            return F.cross_entropy(logits, targets, reduction="sum")
        decoder = lm.get_decoder()
        hidden = decoder(input_ids=inputs, position_ids=position_ids, use_cache=False)
        hidden = hidden.last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
        head = lm.get_output_embeddings()
        return torch_loss.chunked_cross_entropy(
            head, hidden, targets, self._chunk_rows, self._softcap
        )

    def _labels(self, batch: Batch, rows: slice):
        """(inputs, position ids or None, labelled positions in the flattened inputs, targets)
        for `rows` of the batch, padded as given or packed."""
        tokens, mask = batch.tokens[rows], batch.loss_mask[rows]
        if self.pack:
            inputs, position_ids, positions, targets = packed(tokens, mask)
        else:
            positions = np.flatnonzero(mask.reshape(-1))
            inputs, position_ids = tokens[:, :-1], None
            targets = tokens[:, 1:].reshape(-1)[positions]
        return tuple(
            None if a is None else self._on_device(a)
            for a in (inputs, position_ids, positions, targets)
        )

    def _on_device(self, array) -> torch.Tensor:
        """`array` as int64 on the training device. On CUDA through pinned memory without
        blocking: a copy from ordinary memory synchronizes the stream, waiting for the GPU to
        finish every kernel queued before it, so the host could not queue a step's work while
        the GPU still computes the last one."""
        tensor = torch.from_numpy(np.ascontiguousarray(array, np.int64))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    # --- steps ------------------------------------------------------------------------

    def accumulate(self, batch: Batch, seed: int) -> float:
        """Adds the gradient of the summed loss: the update divides by every labelled token of
        the step, so batch 4 and batch 2 x accumulation 2 take the same step (as on MLX)."""
        torch.manual_seed(seed)  # dropout masks depend on the step only: resume is exact
        n = batch.label_tokens  # over the whole batch, on every rank
        rows = torch_dist.my_rows(len(batch.tokens))
        loss_sum = torch.zeros((), device=self.device)
        if len(batch.tokens[rows]):
            # backward too: gradient checkpointing runs the forward again in it
            with torch_peft.varying_length_attention(), torch_peft.known_packing(self.pack):
                with self._precision():  # the forward only, as autocast asks
                    loss_sum = self._loss(*self._labels(batch, rows))
                loss_sum.backward()
        self._labelled += n
        return self._read(torch_dist.sum_over_ranks(loss_sum.detach()), divisor=n)

    def update(self, lr: float, grad_clip: float) -> float:
        params = self._trainable
        torch_dist.sum_gradients(params)
        grads = [p.grad for p in params]
        torch._foreach_div_(grads, self._labelled)  # a few launches for ~200 matrices, not 200
        self._labelled = 0
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._read(norm)

    def _read(self, scalar: torch.Tensor, divisor: int = 1):
        """`scalar / divisor` as a float, or on CUDA a DeviceScalar the engine reads once it
        has queued the next step: reading it here would wait for the GPU to finish this
        step, leaving it idle while the host prepares and queues the next."""
        if self.device.type != "cuda":
            return scalar.item() / divisor
        return DeviceScalar(scalar, divisor)

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        self.model.eval()
        rows = torch_dist.my_rows(len(batch.tokens))
        loss_sum = torch.zeros((), device=self.device)
        attention = torch_peft.varying_length_attention()
        with torch.no_grad(), attention, torch_peft.known_packing(self.pack), self._precision():
            if len(batch.tokens[rows]):
                loss_sum = self._loss(*self._labels(batch, rows))
        self.model.train()
        return torch_dist.sum_over_ranks(loss_sum).item(), batch.label_tokens

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        """Greedy answer of the model as it is now (adapter included), dropout off: the torch
        generator's loop, so the run's samples read as `mlxlora generate` would answer. Eager
        even when training.compile is on: a few short answers would wait for a second graph
        (the KV-cached decode) to compile."""
        from mlxlora.backends.torch_infer import stream_text

        self.model.eval()
        try:
            prompt = prompt_tokens(self.tokenizer, messages)
            with torch.compiler.set_stance("force_eager"), self._precision():
                pieces = stream_text(self.model, self.tokenizer, prompt, max_tokens)
                return "".join(piece for piece, _ in pieces)
        finally:
            self.model.train()

    # --- files ------------------------------------------------------------------------

    def adapter_config(self) -> dict:
        return {
            "model": str(self.model_dir),
            **gguf_source(self.model_dir),
            "fine_tune_type": "lora",
            "num_layers": self.num_layers,
            "lora_parameters": self.lora_parameters,
            "model_type": self.model_type,
        }

    def save_adapter(self, directory: Path) -> None:
        """PEFT's files (PeftModel.from_pretrained) and mlx-lm's (mlx_lm --adapter-path)."""
        torch_peft.save_adapter(self.model, directory, self.adapter_config())

    def save_state(self, directory: Path) -> None:
        self.save_adapter(directory)
        names = {id(p): n for n, p in self.model.named_parameters()}
        state = {"rng": torch.get_rng_state()}
        for p, s in self.optimizer.state.items():
            state[f"{names[id(p)]}.m"], state[f"{names[id(p)]}.v"] = s["m"], s["v"]
        save_file(
            {k: v.contiguous().cpu() for k, v in state.items()}, directory / "optimizer.safetensors"
        )

    def load_state(self, directory: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file as load_numpy

        try:  # the loaders raise these for a file cut short or missing
            torch_peft.load_mlx_weights(self.model, load_numpy(str(directory / MLX_WEIGHTS)))
            state = load_file(directory / "optimizer.safetensors")
            torch.set_rng_state(state.pop("rng"))
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise CheckpointUnreadable(str(exc)) from exc
        params = dict(self.model.named_parameters())
        for key, value in state.items():
            name, moment = key.rsplit(".", 1)
            if name not in params:
                raise CheckpointUnreadable(f"optimizer state for unknown parameter {name}")
            self.optimizer.state[params[name]][moment] = value.to(self.device)

    def limit_memory(self, budget: int) -> None:
        """On CUDA, the caching allocator's cap (an allocation past it raises out-of-memory in
        this process instead of starving others on the GPU); a CPU has no such cap."""
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), self.device)

    def peak_memory_bytes(self) -> int:
        """CUDA: the allocator's peak. CPU: the process's peak resident size less what it held
        besides the weights once the model loaded (torch keeps no CPU allocator statistics;
        the interpreter and the libraries transformers imports to load a model, 250-450 MiB,
        are not the job's, and the estimate and the budget do not count them: a CPU run
        failed its budget at step 1)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return max(0, _resident_peak() - self._resident_before)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)


def _reset_resident_peak() -> None:
    """Linux: the peak resident size counts from now (what loading the model or earlier work
    in this process peaked at is not this run's; a test process had trained other runs)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _resident_peak() -> int:
    """The process's peak resident size in bytes: since _reset_resident_peak on Linux
    (/proc's VmHWM), since it started elsewhere (macOS: a run is a process of its own)."""
    with suppress(OSError, TypeError):
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) * 1024
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes vs KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def packed(tokens: np.ndarray, mask: np.ndarray):
    """A right-padded batch as one row: each sequence's inputs back to back (its padding and
    its last token, which is only a target, left out), position ids restarting at each, and
    the labelled positions and targets in that row."""
    lengths = [int(np.flatnonzero(m)[-1]) + 2 for m in mask]  # the last target ends a sequence
    inputs = np.concatenate([row[: n - 1] for row, n in zip(tokens, lengths, strict=True)])
    position_ids = np.concatenate([np.arange(n - 1) for n in lengths])
    starts = np.cumsum([0, *(n - 1 for n in lengths[:-1])])
    rows = list(zip(starts, tokens, mask, lengths, strict=True))
    positions = np.concatenate([start + np.flatnonzero(m[: n - 1]) for start, _, m, n in rows])
    targets = np.concatenate([row[1:n][m[: n - 1]] for _, row, m, n in rows])
    return inputs[None], position_ids[None], positions, targets
