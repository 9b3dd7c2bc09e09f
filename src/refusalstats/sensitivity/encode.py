"""Encoding a table for the W2 estimators: the output, each input as a partition, the clusters.

Every estimator in :mod:`.estimators` works on integer codes: the output's support index per
row (or its sorted standardised values when continuous), the partition index of each row,
and the cluster index of each row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import _kernels as K
from ..table import SchemaError, its_columns

#: Largest number of distinct output values handled as a contingency table (1-d outputs).
MAX_TABLE_SUPPORT = 256
#: Largest number of distinct output rows for a multivariate output (dense OT problems).
MAX_MV_SUPPORT = 2000


def default_partitions(n: int) -> int:
    """Default number of equal-count partitions for a numeric input of ``n`` rows.

    The heuristic of Plischke, Borgonovo & Smith (2013), as in SALib's ``delta`` method:
    ``min(ceil(n ** (2 / (7 + tanh((1500 - n) / 500)))), 48)``.

    Parameters
    ----------
    n : int
        Number of rows (positive).

    Returns
    -------
    int
        Number of rank bins, at most 48.

    Examples
    --------
    >>> [default_partitions(n) for n in (100, 1_000, 10_000, 50_000, 200_000)]
    [4, 6, 22, 37, 48]
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of rows, got {n}")
    return int(min(math.ceil(n ** (2.0 / (7.0 + math.tanh((1500.0 - n) / 500.0)))), 48))



# ----------------------------------------------------------------------------------------
# encoding the output
# ----------------------------------------------------------------------------------------
@dataclass
class _Output:
    kind: str  # "ordinal" (1-d, few values), "continuous" (1-d), "nominal", "multivariate"
    name: str
    n: int
    codes: np.ndarray | None = None  # row -> support index (table kinds)
    support: np.ndarray | None = None  # (K,) or (K, d)
    ys: np.ndarray | None = None  # continuous: standardised sorted values
    order: np.ndarray | None = None  # continuous: argsort of the rows
    scale2: float = 1.0  # continuous: population variance (xi back to original units)
    cost: np.ndarray | None = None  # multivariate: squared Euclidean cost between support rows
    w: np.ndarray | None = None  # table kinds: rows per record (None: one record per row)

    @property
    def n_support(self) -> int:
        return 0 if self.support is None else len(self.support)


def _nan_error(name: str, col: pd.Series, role: str) -> None:
    n_na = int(col.isna().sum())
    if n_na:
        raise ValueError(
            f"{role} column {name!r} has {n_na:,} missing value(s) (NaN/None) out of {len(col):,} "
            f"rows; drop or impute them first, e.g. data.dropna(subset=[{name!r}])."
        )


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype)


def _factorize(col: pd.Series) -> tuple[np.ndarray, list]:
    """Integer codes of the levels that occur, in category order (categoricals) or sorted."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.asarray(col.cat.codes, dtype=np.int64)
        used = np.bincount(codes, minlength=len(col.cat.categories)) > 0
        remap = np.cumsum(used) - 1
        labels = [c for c, u in zip(col.cat.categories, used) if u]
        return remap[codes].astype(np.int64, copy=False), labels
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
        vals = np.asarray(col, dtype=np.int64)
        lo = int(vals.min())
        span = int(vals.max()) - lo + 1
        if span <= 4 * len(vals) + 1024:
            present = np.bincount(vals - lo, minlength=span) > 0
            remap = np.cumsum(present) - 1
            labels = (np.flatnonzero(present) + lo).tolist()
            if pd.api.types.is_bool_dtype(col):
                labels = [bool(v) for v in labels]
            return remap[vals - lo].astype(np.int64, copy=False), labels
    codes, uniques = pd.factorize(col, sort=True)
    return codes.astype(np.int64, copy=False), list(uniques)


def _encode_output(data: pd.DataFrame, output: str | Sequence[str]) -> _Output:
    names = [output] if isinstance(output, str) else list(output)
    if not names:
        raise ValueError("output must name at least one column, e.g. output='refusal'")
    for nm in names:
        if nm not in data.columns:
            raise SchemaError(
                f"w2_sensitivity: output column {nm!r} is not in the table; "
                f"{its_columns(data.columns, [nm])}"
            )
        _nan_error(nm, data[nm], "output")
    n = len(data)
    if len(names) > 1:
        bad = [nm for nm in names if not _is_numeric(data[nm])]
        if bad:
            raise TypeError(
                f"a multivariate output needs numeric columns; {bad} are not. One-hot encode a "
                "label column (pd.get_dummies) or pass it alone as output= (it is then treated "
                "as nominal)."
            )
        mat = np.column_stack([np.asarray(data[nm], dtype=np.float64) for nm in names])
        support, codes = np.unique(mat, axis=0, return_inverse=True)
        if len(support) < 2:
            raise ValueError(f"output columns {names} are constant: Var[Y] = 0, no index exists.")
        if len(support) > MAX_MV_SUPPORT:
            raise ValueError(
                f"multivariate output {names} has {len(support):,} distinct rows; exact optimal "
                f"transport is limited to {MAX_MV_SUPPORT:,} here. Round or discretise the output, "
                "or analyse its columns one at a time."
            )
        diff = support[:, None, :] - support[None, :, :]
        cost = np.einsum("ijk,ijk->ij", diff, diff)
        return _Output("multivariate", ", ".join(names), n, codes.ravel().astype(np.int64),
                       support, cost=cost)
    nm = names[0]
    col = data[nm]
    if _is_numeric(col) or pd.api.types.is_bool_dtype(col):
        vals = np.asarray(col, dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"output column {nm!r} has infinite values; remove them first.")
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
            codes, labels = _factorize(col)
            support = np.asarray(labels, dtype=np.float64)
        else:
            support, codes = np.unique(vals, return_inverse=True)
            codes = codes.astype(np.int64)
        if len(support) < 2:
            raise ValueError(
                f"output column {nm!r} is constant (every row is {support[0]!r}): Var[Y] = 0 and "
                "the index is undefined. Check the column, or the subset you passed."
            )
        if len(support) <= MAX_TABLE_SUPPORT:
            return _Output("ordinal", nm, n, codes, support)
        mu = vals.mean()
        sd = vals.std()
        order = np.argsort(vals, kind="stable")
        ys = (vals[order] - mu) / sd
        return _Output("continuous", nm, n, ys=np.ascontiguousarray(ys), order=order,
                       scale2=float(sd * sd))
    codes, labels = _factorize(col)
    if len(labels) < 2:
        raise ValueError(
            f"output column {nm!r} is constant (every row is {labels[0]!r}): the index is undefined."
        )
    if len(labels) > MAX_MV_SUPPORT:
        raise ValueError(
            f"output column {nm!r} is non-numeric with {len(labels):,} distinct values; that is "
            "not a label. Pass a numeric output or a column with fewer levels."
        )
    return _Output("nominal", nm, n, codes, np.asarray(labels, dtype=object))


# ----------------------------------------------------------------------------------------
# encoding an input as a partition
# ----------------------------------------------------------------------------------------
@dataclass
class _Partition:
    name: str
    codes: np.ndarray  # row -> partition index
    n_cells: int
    kind: str  # "levels" or "ranks"
    labels: list = field(default_factory=list)


def _encode_input(data: pd.DataFrame, name: str, spec, n: int) -> _Partition:
    col = data[name]
    _nan_error(name, col, "input")
    discrete = not _is_numeric(col) or pd.api.types.is_bool_dtype(col)
    if spec is None:
        if not discrete and pd.api.types.is_integer_dtype(col):
            discrete = col.nunique() <= default_partitions(n)
        spec = "levels" if discrete else default_partitions(n)
    if isinstance(spec, str):
        if spec != "levels":
            raise ValueError(
                f"partitions[{name!r}] must be 'levels' or an integer number of rank bins, "
                f"got {spec!r}"
            )
        codes, labels = _factorize(col)
        if len(labels) < 2:
            raise ValueError(
                f"input {name!r} has a single level ({labels[0]!r}) in these data: a sensitivity "
                "index compares partitions, so it needs at least two. Drop the input or pass data "
                "where it varies."
            )
        return _Partition(name, codes, len(labels), "levels", labels)
    if isinstance(spec, bool) or not isinstance(spec, (int, np.integer)):
        raise TypeError(f"partitions[{name!r}] must be 'levels' or an int, got {spec!r}")
    m = int(spec)
    if discrete and not pd.api.types.is_bool_dtype(col):
        raise TypeError(
            f"input {name!r} is categorical; it cannot be cut into {m} rank bins. Use "
            f"partitions={{{name!r}: 'levels'}} or convert it to numbers first."
        )
    if m < 2:
        raise ValueError(f"partitions[{name!r}] = {m}: need at least 2 rank bins")
    if m > n:
        raise ValueError(
            f"input {name!r}: {m} partitions requested but the data have only {n} rows; "
            f"use at most {n} (the default for {n} rows is {default_partitions(n)})."
        )
    vals = np.asarray(col, dtype=np.float64)
    order = np.argsort(vals, kind="stable")
    codes = K.rank_cells(order.astype(np.int64), m)
    svals = vals[order]
    n_distinct = 1 + int(np.count_nonzero(np.diff(svals)))
    if n_distinct < m:
        warnings.warn(
            f"input {name!r} has only {n_distinct} distinct values but {m} rank bins were asked "
            "for: equal values are split across bins by order of appearance. Use "
            f"partitions={{{name!r}: 'levels'}} to get one partition per value.",
            RuntimeWarning, stacklevel=5,  # _encode_input, listcomp, _encoded_inputs, w2_sensitivity
        )
    bounds = np.searchsorted(np.arange(n) * m // n, np.arange(m + 1), side="left")
    labels = [
        f"[{svals[bounds[i]]:.4g}, {svals[min(bounds[i + 1], n) - 1]:.4g}]" for i in range(m)
    ]
    return _Partition(name, codes, m, "ranks", labels)




# ----------------------------------------------------------------------------------------
# encoding the clusters
# ----------------------------------------------------------------------------------------
@dataclass
class _Clusters:
    """Rows grouped into clusters (items answered several times)."""

    name: str
    codes: np.ndarray  # row -> cluster index 0..n-1
    n: int


def _encode_clusters(data: pd.DataFrame, cluster: str | Sequence[str]) -> _Clusters:
    cols = [cluster] if isinstance(cluster, str) else list(cluster)
    for c in cols:
        _nan_error(c, data[c], "cluster")
    if len(cols) == 1:
        codes, labels = _factorize(data[cols[0]])
        n_g = len(labels)
    else:
        codes = data.groupby(cols, sort=True, observed=True).ngroup().to_numpy(np.int64)
        n_g = int(codes.max()) + 1
    name = ", ".join(cols)
    if n_g < 2:
        raise ValueError(
            f"cluster={cluster!r}: the data hold a single cluster, so whole clusters cannot be "
            "resampled or permuted. Pass cluster=None to treat rows as independent."
        )
    return _Clusters(name, codes.astype(np.int64, copy=False), n_g)


def _cluster_labels(codes: np.ndarray, clus: _Clusters) -> np.ndarray | None:
    """Each cluster's partition when the input is constant within every cluster, else None."""
    lab = np.empty(clus.n, dtype=np.int64)
    lab[clus.codes] = codes
    return lab if np.array_equal(lab[clus.codes], codes) else None
