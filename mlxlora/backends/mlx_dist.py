"""Data parallelism for the MLX backend under `mlx.launch` (ring or MPI backend, several Macs
or local processes): every process reads the same batches in the same order, takes its share of
each batch's rows, and the gradients are summed with mx.distributed.all_sum before each update,
as mlx-lm's trainer averages them. Each share's loss is divided by the whole batch's label
count, so the sum equals one process training on the whole batch (as backends/torch_dist.py).
"""

from __future__ import annotations

import os

import mlx.core as mx
from mlx.utils import tree_map


def group():
    """The process group mlx.launch describes (MLX_RANK is set), else None: one process."""
    if "MLX_RANK" not in os.environ:
        return None
    found = mx.distributed.init()
    return found if found.size() > 1 else None


def my_rows(grp, batch_rows: int) -> slice:
    if grp is None:
        return slice(0, batch_rows)
    return slice(grp.rank(), batch_rows, grp.size())


def sum_over_ranks(grp, tree):
    """Every array of `tree` summed across processes (unchanged for one process)."""
    if grp is None:
        return tree
    return tree_map(lambda a: mx.distributed.all_sum(a, group=grp), tree)


def describe(grp) -> str:
    return "" if grp is None else f", {grp.size()} processes (mx.distributed)"
