"""Loaders for published response dumps: reanalyse other papers' answers with refusalstats.

Three loaders turn a published dump into the tidy response table
(:mod:`refusalstats.table`), so every analysis in the package runs on it:

:func:`persona_behavior`
    The public repository of de Araujo & Roth (2024), ``peluz/persona-behavior``:
    persona x item refusal matrices (``results/zero/<model>/<dataset>_refusals.csv``,
    control personas under ``results/control/zero/``), or the raw generations
    (``results/zero/<model>/<folder>/<persona>.json``) re-classified with any
    refusalstats detector.
:func:`xstest`
    XSTest completion files (Röttger et al., 2024): ``id, type, prompt, completion``
    and optionally the human labels ``annotation_1, annotation_2, final_label``.
:func:`read_generic`
    Any CSV / TSV / JSONL / JSON / Parquet file, with a column mapping onto the schema
    and an optional detector run on a text column.

Every loader accepts a local path or an ``http(s)`` URL (for example a raw GitHub
address). URLs are downloaded on first use with a progress bar into a cache folder
(:func:`cache_dir`: ``$REFUSALSTATS_CACHE``, else the platform's user cache folder,
``~/.cache/refusalstats`` on Linux) and read from there afterwards; nothing is
downloaded at import time. A file can be pinned to its SHA-256 (``sha256=`` of
:func:`fetch`, :func:`read_generic` and :func:`xstest`, ``checksums=`` of
:func:`persona_behavior`); every table records the digests of the files it was read
from in ``attrs["metadata"]["sha256"]``, ready to pin the next run.

The rooms: :mod:`~refusalstats.dumps.download` (fetching, caching, checksums),
:mod:`~refusalstats.dumps.matrix` (the persona x item CSV parser),
:mod:`~refusalstats.dumps.persona_behavior_repo`,
:mod:`~refusalstats.dumps.xstest_completions`, :mod:`~refusalstats.dumps.generic`,
:mod:`~refusalstats.dumps.errors`. Every file is read by
:func:`refusalstats.table.read_table`.

Examples
--------
>>> from refusalstats import dumps
>>> table = dumps.persona_behavior("persona-behavior/", datasets=["off", "rac"],
...                                control=True)  # doctest: +SKIP
>>> xs = dumps.xstest("xstest_v2_completions_gpt4.csv")  # doctest: +SKIP
>>> mine = dumps.read_generic("runs.jsonl", mapping={"model": "llm", "response": "output"},
...                           constants={"task": "qa", "persona": "none", "prompt": "p1"},
...                           detector="paper")  # doctest: +SKIP
"""

from __future__ import annotations

from .download import cache_dir, fetch, sha256_of, verify
from .errors import ChecksumError, DumpError, DumpNotFound
from .generic import read_generic
from .matrix import parse_matrix
from .persona_behavior_repo import (
    CONTROL_CATEGORY,
    P2_CATEGORY_FILE,
    P2_DATASETS,
    P2_MODELS,
    P2_PROMPT,
    display_persona,
    persona_behavior,
)
from .xstest_completions import XSTEST_LABELS, xstest

__all__ = [
    "CONTROL_CATEGORY",
    "P2_CATEGORY_FILE",
    "P2_DATASETS",
    "P2_MODELS",
    "P2_PROMPT",
    "XSTEST_LABELS",
    "ChecksumError",
    "DumpError",
    "DumpNotFound",
    "cache_dir",
    "display_persona",
    "fetch",
    "parse_matrix",
    "persona_behavior",
    "read_generic",
    "sha256_of",
    "verify",
    "xstest",
]
