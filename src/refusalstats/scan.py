"""Compatibility names for the old streaming module, and (for now) the streamed CR1.

Collapsing to counts lives in :mod:`refusalstats.counts` (``collapse``, the
``cluster="auto"`` rule ``resolve_cluster``), reading sources in
:mod:`refusalstats.sources` (``source_of``, ``open_dataset``, ``scan_columns``). The names
below keep old imports working; new code imports from those modules. The streamed CR1
covariance below moves to :mod:`refusalstats.regression.covariance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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
from .sources import (  # noqa: F401 - compatibility re-exports
    _SHARD_METADATA_KEY,
    _dataset,
    _is_run_dir,
    _run_dir_files,
    is_dataset,
    open_dataset,
    scan_columns,
)
from .sources import parquet_files as _parquet_files
from .sources import scan_pool as _scan_pool

__all__ = ["cluster_robust_cov", "collapse", "scan_columns"]


# --------------------------------------------------------------------------- streamed CR1
def _row_batches(data, columns: list[str], batch_rows: int):
    """(record batch, source) pairs of ``columns`` from a DataFrame or a Parquet source."""
    import pyarrow as pa

    if isinstance(data, pd.DataFrame):
        for start in range(0, len(data), int(batch_rows)):
            chunk = data.iloc[start:start + int(batch_rows)][columns]
            for batch in pa.Table.from_pandas(chunk, preserve_index=False).to_batches():
                yield batch, None
        return
    files = _parquet_files(data)
    dataset = _dataset(files)
    _missing_columns(columns, list(dataset.schema.names), f"the dataset '{data}'")
    for fragment in dataset.get_fragments():
        path = getattr(fragment, "path", None)
        try:
            for batch in fragment.to_batches(schema=dataset.schema, columns=columns,
                                             batch_size=int(batch_rows), batch_readahead=1,
                                             fragment_readahead=1, memory_pool=_scan_pool()):
                yield batch, path
        except pa.ArrowException as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cluster_robust_cov: could not read '{path}': {detail}") from None


class _ScoreSums:
    """Per-cluster score sums (clusters x coefficients) in fixed blocks: growing with new
    clusters never copies what is there."""

    BLOCK = 1 << 14

    def __init__(self, p: int):
        self.p = p
        self.blocks: list[np.ndarray] = []

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        if len(ids) == 0:
            return
        need = int(ids.max()) // self.BLOCK + 1
        while len(self.blocks) < need:
            self.blocks.append(np.zeros((self.BLOCK, self.p)))
        distinct = len(np.unique(ids)) == len(ids)  # dictionary values are, as a rule
        which = ids // self.BLOCK
        for b in np.unique(which):
            sel = which == b
            if distinct:
                self.blocks[b][ids[sel] % self.BLOCK] += rows[sel]
            else:
                np.add.at(self.blocks[b], ids[sel] % self.BLOCK, rows[sel])

    def meat(self) -> np.ndarray:
        """Sum over clusters of the outer products of their score sums (S' S)."""
        out = np.zeros((self.p, self.p))
        for block in self.blocks:
            out += block.T @ block
        return out


class _PatternLines:
    """Maps the rows of a record batch to lines of a patterns table (one line per
    distinct combination of ``variables``), through per-column level lookups: only the
    combinations present in a batch (few) are translated, never row by row."""

    def __init__(self, patterns: pd.DataFrame, variables: list[str], where: str):
        self.variables = list(variables)
        self.where = where
        self.lookups, self.sizes = [], []
        for v in self.variables:
            col = patterns[v]
            levels = pd.Index(col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype)
                              else pd.unique(col))
            self.lookups.append(levels)
            self.sizes.append(max(len(levels), 1))
        line_codes = [lv.get_indexer(patterns[v] if isinstance(patterns[v].dtype, pd.CategoricalDtype)
                                     else patterns[v].astype(object))
                      for v, lv in zip(self.variables, self.lookups)]
        line_key = (np.ravel_multi_index(line_codes, self.sizes) if self.variables
                    else np.zeros(len(patterns), dtype=np.int64))
        self.order = np.argsort(line_key, kind="stable")
        self.sorted_key = line_key[self.order]
        if len(self.sorted_key) > 1 and (np.diff(self.sorted_key) == 0).any():
            raise ValueError(f"{where}: counts has repeated patterns; collapse by exactly the "
                             f"formula's variables {self.variables}")
        self.seen = [_Levels(v) for v in self.variables]  # global ids of the values met so far

    def lines(self, batch, source) -> np.ndarray:
        m = batch.num_rows
        if not self.variables:
            return np.zeros(m, dtype=np.int64)
        local = [_local_codes(batch.column(v), lv, source) for v, lv in zip(self.variables, self.seen)]
        local_sizes = [max(len(lut), 1) for _, lut in local]
        groups, _ = _reduce([idx for idx, _ in local], local_sizes, m, [None])
        codes = []
        for v, g, (_, lut), levels, seen in zip(self.variables, groups, local, self.lookups, self.seen):
            rank = levels.get_indexer(seen.index[lut[g]])
            if (rank < 0).any():
                new = list(seen.index[lut[g][rank < 0]].unique()[:3])
                raise ValueError(f"{self.where}: column '{v}' has value(s) {new}{_where(source)} that "
                                 "are not in counts; counts must come from the same data")
            codes.append(rank)
        key = np.ravel_multi_index(codes, self.sizes)
        pos = np.minimum(np.searchsorted(self.sorted_key, key), len(self.sorted_key) - 1)
        if (self.sorted_key[pos] != key).any():
            raise ValueError(f"{self.where}: rows{_where(source)} have covariate patterns that are "
                             "not in counts; counts must come from the same data")
        group_line = self.order[pos]
        row_key = np.ravel_multi_index([idx for idx, _ in local], local_sizes)
        present = np.ravel_multi_index(groups, local_sizes)
        n_local = int(np.prod(local_sizes))
        if n_local <= max(4 * m, 1 << 16):
            table = np.empty(n_local, dtype=np.int64)
            table[present] = group_line
            return table[row_key]
        return group_line[np.searchsorted(present, row_key)]  # groups come out sorted


def _stream_cluster_meats(data, patterns: pd.DataFrame, variables: list[str], cluster: str,
                          refusal: str, X: np.ndarray, models: list[tuple[np.ndarray, list[int] | None]],
                          *, batch_rows: int = _BATCH_ROWS, where: str = "logit"
                          ) -> tuple[list[np.ndarray], int, int]:
    """The CR1 meats ``S'S`` of several fits in one streaming pass over the rows.

    ``patterns`` (one line per covariate pattern, with the ``variables`` columns) and
    ``X`` (its design) describe the fits; each model is ``(prob, cols)``: the fitted
    probability per line and the design columns it uses (None: all). A row's score is
    ``x[cols] (y - prob[line])``; per cluster these are summed, in memory of clusters x
    coefficients. Returns the meats, the number of clusters and of rows.
    """
    from scipy import sparse

    mapper = _PatternLines(patterns, variables, where)
    K = X.shape[0]
    Xs = [X if cols is None else X[:, cols] for _, cols in models]
    sums = [_ScoreSums(x.shape[1]) for x in Xs]
    clusters = _Levels(cluster, hint=" (the cluster column)")
    n_rows = 0
    for batch, source in _row_batches(data, list(dict.fromkeys([*variables, cluster, refusal])),
                                      batch_rows):
        m = batch.num_rows
        if m == 0:
            continue
        y = _refusal_values(batch.column(refusal), refusal, source)
        line = mapper.lines(batch, source)
        g_idx, g_lut = _local_codes(batch.column(cluster), clusters, source)
        used = np.bincount(g_idx, minlength=len(g_lut)) > 0
        slot = (np.cumsum(used) - 1)[g_idx]
        n_used = int(used.sum())
        ids = g_lut[used]
        # each cluster's score sum is (rows of the cluster) x (their residuals) @ x: a sparse
        # (clusters x lines) matrix in COO form, whose product with x sums repeated
        # (cluster, line) entries itself (no grouping, no sort); in dense pieces of at most
        # BLOCK clusters so the product stays small
        B = _ScoreSums.BLOCK
        if n_used <= B:
            pieces = [(0, n_used, None)]
        else:
            blk = (slot // B).astype(np.int32)
            by_blk = np.argsort(blk, kind="stable")
            cuts = np.searchsorted(blk[by_blk], np.arange(0, n_used // B + 2))
            pieces = [(b * B, min(n_used, (b + 1) * B), by_blk[cuts[b]:cuts[b + 1]])
                      for b in range(len(cuts) - 1) if b * B < n_used]
        for (prob, _), x, S in zip(models, Xs, sums):
            r = y - prob[line]
            for lo, hi, rows in pieces:
                if rows is None:
                    M = sparse.coo_matrix((r, (slot, line)), shape=(hi - lo, K))
                else:
                    M = sparse.coo_matrix((r[rows], (slot[rows] - lo, line[rows])), shape=(hi - lo, K))
                S.add(ids[lo:hi], M @ x)
        n_rows += m
    G = len(clusters.index) if clusters.index is not None else 0
    if G < 2:
        raise ValueError(f"{where}: cluster column '{cluster}' has {G} cluster(s); "
                         "cluster-robust SEs need many")
    return [S.meat() for S in sums], G, n_rows


def _cluster_robust_cov(
    fit,
    counts: pd.DataFrame,
    data: pd.DataFrame | str | Path | Sequence[str | Path],
    cluster: str = "item_id",
    refusal: str = "refusal",
    *,
    batch_rows: int = _BATCH_ROWS,
) -> pd.DataFrame:
    """CR1 cluster-robust covariance of a fit from counts, streaming the rows once more.

    ``rs.logit(path, cluster=...)`` does this itself (the fit, then this pass, also for
    ``anova()`` / ``drop1()``); this function is for counts computed elsewhere (DuckDB,
    Spark) with the rows still on disk. A clustered counts table
    (``collapse(..., cluster="item_id")``) has one line per item x pattern, which in a
    Monte Carlo design is one line per row. This computes the same
    covariance as ``rs.logit(formula, rows, cluster=cluster).cov_params()`` without it:
    fit the (small) unclustered counts, then stream the rows and accumulate each
    cluster's score sum ``sum_i x_i (y_i - p_i)``. Memory: clusters x coefficients, not rows.

    Parameters
    ----------
    fit : LogitResults
        ``rs.logit("refusals ~ ...", counts, trials="n", cluster=None)`` (maximum likelihood).
    counts : DataFrame
        The table ``fit`` was fitted on, from ``collapse(data, by=<the formula's variables>)``.
    data : DataFrame, path, glob or list of paths
        The rows ``counts`` was collapsed from.
    cluster : str
        The cluster column of ``data``.
    refusal : str
        The 0/1 response column of ``data``.
    batch_rows : int
        Rows per record batch of the streaming pass.

    Returns
    -------
    DataFrame
        The covariance (coefficients x coefficients); ``np.sqrt(np.diag(V))`` are the
        CR1 standard errors. Small-sample factor ``G/(G-1) (N-1)/(N-k)`` with N the rows.
        Rows and columns of terms the fit found separated are NaN.

    Examples
    --------
    >>> counts = rs.collapse("runs/big/", by=["persona", "task"])  # doctest: +SKIP
    >>> fit = rs.logit("refusals ~ persona + task", counts, trials="n", cluster=None)  # doctest: +SKIP
    >>> V = cluster_robust_cov(fit, counts, "runs/big/", cluster="item_id")  # doctest: +SKIP
    """
    from scipy.special import expit

    from .formula import fixed_design, parse_formula, prepare_factors

    if getattr(fit, "penalty", None) is not None or getattr(fit, "cluster", None) is not None:
        raise ValueError("cluster_robust_cov: give an unpenalized fit with cluster=None (the "
                         "sandwich's bread is its model-based covariance)")
    if not isinstance(cluster, str):
        raise TypeError(f"cluster must be one column name, got {cluster!r}")
    if not isinstance(counts, pd.DataFrame):
        raise TypeError(f"counts must be the DataFrame the fit used, got {type(counts).__name__}")
    parsed = parse_formula(fit.formula)
    variables = [v for v in parsed.fixed_variables if v in counts.columns]
    missing = [v for v in parsed.fixed_variables if v not in counts.columns]
    if missing:
        raise ValueError(f"cluster_robust_cov: the formula's column(s) {missing} are not in counts")
    if cluster in variables:
        raise ValueError(f"cluster_robust_cov: '{cluster}' is a predictor of the fit, not a cluster")
    reference = {k: v for k, v in dict(fit.reference or {}).items() if k in variables}
    frame = prepare_factors(counts[variables], variables, reference)
    X, names, _ = fixed_design(parsed.fixed, frame if variables else counts)
    if list(names) != list(map(str, fit.params.index)) or X.shape[0] != len(counts):
        raise ValueError("cluster_robust_cov: counts is not the table the fit was fitted on "
                         f"(its design has columns {names[:4]}..., the fit {list(fit.params.index)[:4]}...)")
    beta = fit.params.to_numpy(dtype=float)
    prob = expit(X @ beta)
    (meat,), G, n_rows = _stream_cluster_meats(
        data, frame, variables, cluster, refusal, X, [(prob, None)], batch_rows=batch_rows,
        where="cluster_robust_cov")
    total = int(counts[N_COLUMN].sum()) if N_COLUMN in counts.columns else None
    if total is not None and total != n_rows:
        raise ValueError(f"cluster_robust_cov: data has {n_rows:,} rows but counts sums to {total:,} "
                         "in 'n'; counts must come from the same data")
    k = X.shape[1]
    # bread: the inverse Fisher information at the fit, (X' W X)^-1 with W = n p (1 - p), as
    # logit computes it (its cov_params() hides separated terms, which the sandwich needs)
    w = counts[N_COLUMN].to_numpy(dtype=float) * prob * (1.0 - prob)
    info = X.T @ (X * w[:, None])
    try:
        chol = np.linalg.cholesky(info)
        inv_l = np.linalg.solve(chol, np.eye(k))
        bread = inv_l.T @ inv_l
    except np.linalg.LinAlgError:
        bread = np.linalg.pinv(info, hermitian=True)
    c = (G / (G - 1.0)) * ((n_rows - 1.0) / (n_rows - k))
    V = c * bread @ meat @ bread
    separated = [list(fit.params.index).index(t) for t in getattr(fit, "separated_terms", []) or []]
    V[separated, :] = np.nan  # not estimable: no interval, as logit reports them
    V[:, separated] = np.nan
    out = pd.DataFrame(V, index=fit.params.index, columns=fit.params.index)
    out.attrs["cluster_robust_cov"] = {"cluster": cluster, "n_clusters": G, "rows": n_rows}
    return out


def _one_blas_thread(fn):
    """Run ``fn`` with one BLAS thread: its matrices are small and many, and OpenBLAS
    threads cost more than they save (far more on a shared machine), as in regression."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


cluster_robust_cov = _one_blas_thread(_cluster_robust_cov)
cluster_robust_cov.__name__ = cluster_robust_cov.__qualname__ = "cluster_robust_cov"
