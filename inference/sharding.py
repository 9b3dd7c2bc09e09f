"""Split a prompts table into N disjoint shards, one per GPU, node or array task.

The split is by **item**: every variation (persona x template, persona-free rows) of one
item lands in the same shard, so a shard that is missing removes whole items and the
others keep complete blocks. Items (``task`` + ``item_id``; each row on its own when the
table has no ``item_id``) are ordered by a SHA-256 hash of their key — stable across
machines, Python versions and processes — and that order is cut into N contiguous
blocks of nearly equal row counts. Hashing mixes the tasks, so each shard gets a similar
mix of prompt lengths and finishes in about the same time.

Shard ``I`` of ``N`` (0-based) comes from, in this order:

1. the explicit ``--shard I/N`` (``shard=`` in Python); ``0/1`` means "not sharded";
2. a SLURM job array: ``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN`` (default 0),
   ``SLURM_ARRAY_TASK_STEP`` (default 1) and ``SLURM_ARRAY_TASK_COUNT``:
   ``I = (ID - MIN) / STEP``, so ``--array=1-8`` and ``--array=0-14:2`` both work;
3. torchrun-style ``RANK`` and ``WORLD_SIZE`` (when ``WORLD_SIZE`` > 1).

Shard ``I`` of ``N`` writes the run directory ``OUT/shard-I-of-N`` (its own lock,
``run.json``, prompts and shards); ``refusalstats collect OUT`` merges them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from refusalstats.rundir import shard_run_dir

__all__ = ["ShardSpec", "resolve_shard", "shard_dir_name", "shard_mask"]

SPLIT_METHOD = "item-hash-blocks-v1"


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0-based), and where that came from.

    Examples
    --------
    >>> ShardSpec.parse("2/8")
    ShardSpec(index=2, count=8, source='--shard')
    """

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} (from {self.source}) is out of "
                             f"range: need 0 <= I < N, e.g. --shard 0/{max(self.count, 1)}")

    @classmethod
    def parse(cls, text: str, source: str = "--shard") -> ShardSpec:
        """Parse ``"I/N"`` (0-based ``I``)."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. --shard 0/4), "
                             f"got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), source)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(shard: str | ShardSpec | tuple[int, int] | None = None,
                  env: Mapping[str, str] | None = None) -> ShardSpec | None:
    """The shard this process runs: explicit, else SLURM array, else torchrun; None if none.

    Examples
    --------
    >>> resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
    ...                      "SLURM_ARRAY_TASK_COUNT": "4"})
    ShardSpec(index=2, count=4, source='SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT')
    >>> resolve_shard("0/1", {"RANK": "1", "WORLD_SIZE": "2"}) is None
    True
    """
    env = os.environ if env is None else env
    if isinstance(shard, ShardSpec):
        spec = shard
    elif isinstance(shard, tuple):
        spec = ShardSpec(int(shard[0]), int(shard[1]), "shard=")
    elif shard is not None:
        spec = ShardSpec.parse(shard)
    elif env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
        source = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
        if env.get("SLURM_ARRAY_TASK_COUNT") in (None, ""):
            raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; "
                             "pass --shard I/N")
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        low = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1)
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        if step < 1 or (task - low) % step:
            raise ValueError(f"SLURM array task {task} is not on the range {low}:{step}; "
                             "use an evenly spaced --array (e.g. 0-7) or pass --shard I/N")
        spec = ShardSpec((task - low) // step, count, source)
    elif env.get("WORLD_SIZE") not in (None, "") and _env_int(env, "WORLD_SIZE") > 1:
        spec = ShardSpec(_env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    else:
        return None
    return spec if spec.sharded else None


def shard_dir_name(spec: ShardSpec) -> str:
    """The sub-directory of a shard's run: ``shard-I-of-N``.

    Examples
    --------
    >>> shard_dir_name(ShardSpec(2, 8))
    'shard-2-of-8'
    """
    return shard_run_dir(spec.index, spec.count)


def _item_keys(prompts: pd.DataFrame) -> pd.Series:
    if "item_id" in prompts.columns:
        task = (prompts["task"].astype(str) if "task" in prompts.columns
                else pd.Series("", index=prompts.index))
        return task + "\x1f" + prompts["item_id"].astype(str)
    return "row\x1f" + pd.Series(np.arange(len(prompts)), index=prompts.index).astype(str)


def shard_assignment(prompts: pd.DataFrame, count: int) -> np.ndarray:
    """The shard (0..count-1) of every row: whole items, hash order, balanced blocks.

    Examples
    --------
    >>> df = pd.DataFrame({"task": "nli", "item_id": ["a", "a", "b", "c", "c", "d"]})
    >>> a = shard_assignment(df, 2)
    >>> bool((a[0] == a[1]) and (a[3] == a[4])), sorted(np.bincount(a, minlength=2).tolist())
    (True, [2, 4])
    """
    count = int(count)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    n = len(prompts)
    if count == 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    keys = _item_keys(prompts).to_numpy()
    codes, uniques = pd.factorize(keys)
    hashes = np.array([hashlib.sha256(str(k).encode()).hexdigest() for k in uniques])
    order = np.argsort(hashes, kind="stable")  # items in hash order
    sizes = np.bincount(codes, minlength=len(uniques))[order]
    # an item goes to the block in which its first row falls, cutting the rows evenly
    starts = np.cumsum(sizes) - sizes
    block = np.minimum((starts * count) // max(n, 1), count - 1)
    item_shard = np.empty(len(uniques), dtype=np.int64)
    item_shard[order] = block
    return item_shard[codes]


def shard_mask(prompts: pd.DataFrame, spec: ShardSpec) -> np.ndarray:
    """Boolean mask of the rows of ``prompts`` that belong to shard ``spec``."""
    return shard_assignment(prompts, spec.count) == spec.index
