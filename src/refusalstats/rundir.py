"""The layout of a generation run directory: one home for the names both sides use.

``refusalstats generate`` (:mod:`refusalstats.inference.runner`) writes a run directory
and the core's sources (:mod:`refusalstats.sources`) read it, finished or not::

    <run>/run.json                          RUN_FILE: models, revisions, decoding, times
    <run>/prompts.parquet                   PROMPTS_FILE: the prompts table as run
    <run>/shards/<model>/part-*.parquet     SHARDS_DIR, SHARD_GLOB: generated rows
    <run>/responses.parquet                 RESPONSES_FILE: the collected tidy table
    <run>/.lock                             LOCK_FILE: held while a session writes
    <folder>/shard-I-of-N/                  shard_run_dir(I, N): one shard of a sharded run

A labelled shard names, in its Parquet key-value metadata under
:data:`SHARD_METADATA_KEY`, the columns added to the raw rows and the detector.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "PROMPTS_FILE",
    "RESPONSES_FILE",
    "RUN_FILE",
    "SHARDS_DIR",
    "SHARD_GLOB",
    "SHARD_METADATA_KEY",
    "SHARD_RUN_GLOB",
    "is_run_dir",
    "shard_run_dir",
]

RUN_FILE = "run.json"
PROMPTS_FILE = "prompts.parquet"
RESPONSES_FILE = "responses.parquet"
SHARDS_DIR = "shards"
SHARD_GLOB = "part-*.parquet"
LOCK_FILE = ".lock"
#: Parquet key-value metadata key of a labelled shard (JSON: model, detector, added columns).
SHARD_METADATA_KEY = b"refusalstats.shard"
#: The run directories of a sharded run, inside its folder.
SHARD_RUN_GLOB = "shard-*-of-*"


def shard_run_dir(index: int, count: int) -> str:
    """The sub-directory of shard ``index`` of ``count`` of a run: ``shard-I-of-N``.

    Parameters
    ----------
    index, count : int
        The shard (0-based) and the number of shards.

    Returns
    -------
    str

    Examples
    --------
    >>> shard_run_dir(2, 8)
    'shard-2-of-8'
    """
    return f"shard-{index}-of-{count}"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a generation run directory (``run.json`` with ``shards/`` or
    ``prompts.parquet``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool

    Examples
    --------
    >>> is_run_dir("/nonexistent")
    False
    """
    p = Path(path)
    return (p / RUN_FILE).is_file() and ((p / SHARDS_DIR).is_dir()
                                         or (p / PROMPTS_FILE).is_file())
