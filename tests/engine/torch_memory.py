"""What the chunked torch loss holds, measured, beside what the estimate says: a module of
its own so that a child measuring it imports torch and little else."""


def torch_loss_peak(device: str, dtype, tokens=1024, hidden=256, vocab=151936, rows=220):
    """Bytes the chunked loss with its backward holds over what was allocated before it
    (`device` "cpu": the process's resident peak, Linux; "cuda": the allocator's), and what
    memory.loss_bytes says torch holds ("eager")."""
    import torch

    from mlxlora import memory
    from mlxlora.backends import torch as torch_backend
    from mlxlora.backends import torch_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
    head.requires_grad_(False)
    states = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        torch_backend._reset_resident_peak()
        before = torch_backend._resident_peak()
    torch_loss.chunked_cross_entropy(head, states, targets, rows).backward()
    if device == "cuda":
        measured = torch.cuda.max_memory_allocated() - before
    else:
        measured = torch_backend._resident_peak() - before
    row_bytes = hidden * head.weight.element_size()
    return measured, memory.loss_bytes(tokens, rows, vocab, "eager", hidden_row_bytes=row_bytes)
