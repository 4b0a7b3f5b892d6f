"""A grid's cells: finished (learning rate, epochs) results in cells*.jsonl, the selection rule,
and how shards split the learning rates. Shared by the grid runner and its finalizer."""

from __future__ import annotations

import math
from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import read_jsonl
from edgebus.core.tasks import get_task


def cell_key(c: dict) -> tuple:
    return (float(c["lr"]), int(c["epochs"]))


def cells_files(out: Path) -> list[Path]:
    return sorted(Path(out).glob("cells*.jsonl"))


def read_cells(out: str | Path) -> list[dict]:
    """Finished cells from every cells*.jsonl in the grid directory, first occurrence of each kept."""
    seen, cells = set(), []
    for f in cells_files(Path(out)):
        for c in read_jsonl(f, key=("lr", "epochs")):  # a cell written twice in one file: two grids at once
            if cell_key(c) not in seen:
                seen.add(cell_key(c))
                cells.append(c)
    return cells


def rank_key(c: dict, metric: str, task) -> tuple:
    """Larger is better: val metric, then the val tie-break metric, then fewer epochs, lower lr."""
    task = get_task(task)
    flat = {**task.flat(c["val"]), **{k: v for k, v in c["val"].items() if not isinstance(v, (dict, list))}}

    def val(name):
        v = flat.get(name)
        return -math.inf if v is None else float(v)

    return (val(metric), val(task.tiebreak(metric)), -int(c["epochs"]), -float(c["lr"]))


def select(cells: list[dict], metric: str, task: str) -> dict:
    return max(cells, key=lambda c: rank_key(c, metric, task))


def parse_shard(s: str | None) -> tuple[int, int]:
    if not s:
        return 1, 1
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise EdgebusError(f"{flag('shard')} '{s}': give i/n, e.g. 1/3 (shards are numbered 1..n)") from None
    if not 1 <= i <= n:
        raise EdgebusError(f"{flag('shard')} '{s}': need 1 <= i <= n (shards are numbered 1..n)")
    return i, n


def shard_lrs(lrs: list[float], shard: tuple[int, int]) -> list[float]:
    """Learning rates of shard i of n: every n-th of the sorted list, starting at the i-th."""
    i, n = shard
    return [lr for j, lr in enumerate(sorted(lrs)) if j % n == i - 1]


def _lr_tag(lr: float) -> str:
    return f"{lr:g}"


def _shard_tag(shard) -> str:
    return "all" if shard == (1, 1) else f"shard{shard[0]}of{shard[1]}"
