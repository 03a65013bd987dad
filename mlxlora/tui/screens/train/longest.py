"""The tokens of a job's longest record, for the Train tab's memory verdict.

Counting needs the model's tokenizer (transformers), which the app never imports: a child
`mlxlora train CONFIG --dry-run --json` counts them as the run will (`run_memory.longest_record`)
and the form sizes its estimate for that record instead of a record of data.max_length (a
level-2 preset said 5.5 GiB at 1024 tokens; its longest record is 294: 1.7 GiB).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from mlxlora.config import Config
from mlxlora.runs import home
from mlxlora.tui.children import Child

UNCUT = 2**20  # a max_length no record reaches: the child reports the longest whole
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def records_key(cfg: Config) -> tuple:
    """What the longest record depends on (not data.max_length: the form cuts it there)."""
    d = cfg.data
    return cfg.model, d.dataset, d.validation, d.completions_only


async def count_longest(cfg: Config) -> int | None:
    """Tokens of `cfg`'s longest record, or None when the child cannot tell (a dataset or
    model that is not there, or a hub model not downloaded yet: the form says so on its
    own, or sizes for data.max_length)."""
    uncut = replace(
        cfg,
        data=replace(cfg.data, max_length=UNCUT),
        training=replace(cfg.training, fit="off", memory_budget=""),
    )
    scratch = home() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=scratch, delete=False) as f:
        f.write(uncut.to_yaml())
    # offline: a hub model not in the cache is not downloaded for a count (GBs, unasked)
    child = await Child.start("train", f.name, "--dry-run", "--json", env=OFFLINE)
    try:
        plan = await child.json()
    except ValueError:
        plan = None
    finally:
        await child.stop()
        Path(f.name).unlink(missing_ok=True)
    length = plan.get("length") if isinstance(plan, dict) else None
    return int(length) if isinstance(length, int) and length > 0 else None
