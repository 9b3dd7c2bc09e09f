"""Compatibility names for the old streaming module.

Collapsing to counts lives in :mod:`refusalstats.counts` (``collapse``, the
``cluster="auto"`` rule ``resolve_cluster``), reading sources in
:mod:`refusalstats.sources` (``source_of``, ``open_dataset``, ``scan_columns``). The names
below keep old imports working; new code imports from those modules. The streamed CR1
covariance (``cluster_robust_cov``) lives in :mod:`refusalstats.regression.covariance`.
"""

from __future__ import annotations

from .counts import (  # noqa: F401 - compatibility re-exports
    _BATCH_ROWS,
    _COMPACT_ROWS,
    N_COLUMN,
    REFUSALS_COLUMN,
    _Accumulator,
    _cluster_columns,
    _id_dtype,
    _Levels,
    _local_codes,
    _missing_columns,
    _reduce,
    _refusal_values,
    _where,
    collapse,
)
from .regression.covariance import (  # noqa: F401 - compatibility re-exports (#23)
    _cluster_robust_cov,
    _PatternLines,
    _row_batches,
    _ScoreSums,
    _stream_cluster_meats,
    cluster_robust_cov,
)
from .sources import (  # noqa: F401 - compatibility re-exports
    _SHARD_METADATA_KEY,
    _dataset,
    _is_run_dir,
    _run_dir_files,
    is_dataset,
    open_dataset,
    scan_columns,
)
from .sources import parquet_files as _parquet_files  # noqa: F401
from .sources import scan_pool as _scan_pool  # noqa: F401

__all__ = ["cluster_robust_cov", "collapse", "scan_columns"]
