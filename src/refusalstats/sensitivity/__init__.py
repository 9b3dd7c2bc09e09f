"""Wasserstein-2 global sensitivity indices with bootstrap CIs and a permutation null.

The index of Borgonovo, Figalli, Plischke & Savaré (2024),

    xi(Y; X)  = E_X[ W2^2(P_Y, P_{Y|X}) ],
    iota(Y; X) = xi / (2 Var[Y])  in [0, 1],

estimated from the given sample by partitioning X (one partition per level of a
categorical input, equal-count rank bins for a numeric one) and averaging the exact W2^2
between each partition's empirical distribution of Y and the unconditional one, weighted
by partition size. ``Var`` is the *population* variance (divisor N), so a Y that is a
function of a discrete X scores exactly 1 and the 0/1 closed form is exact. See
``docs/methods_w2.md`` for the maths, the bias and the permutation null.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numba import njit, prange
from scipy.stats import norm
from tqdm.auto import tqdm

from . import _kernels as K
from ._summary import Summary
from ._validation import AUTO_CLUSTER_COLUMN, check_conf, check_random_state, resolve_cluster
from .table import SchemaError

__all__ = ["W2SensitivityResult", "default_partitions", "w2_sensitivity"]

#: Largest number of distinct output values handled as a contingency table (1-d outputs).
MAX_TABLE_SUPPORT = 256
#: Largest number of distinct output rows for a multivariate output (dense OT problems).
MAX_MV_SUPPORT = 2000
#: Largest clusters x partitions x values array stored dense (else scipy.sparse).
DENSE_CLUSTER_TABLE = 25_000_000
#: Jackknife groups for the BCa acceleration of a continuous output with many rows.
JACKKNIFE_GROUPS = 100

TABLE_COLUMNS = [
    "input", "n_partitions", "xi", "iota", "ci_low", "ci_high",
    "null_mean", "null_q95", "iota_corrected", "p_value", "distinguishable", "note",
]
#: Level of the permutation test behind ``distinguishable``.
NULL_LEVEL = 0.05
#: Bootstrap schemes; the default is chosen by measured coverage (docs/methods_w2.md).
BOOTSTRAPS = ("auto", "unstratified", "stratified")


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
                f"w2_sensitivity: output column {nm!r} is not in the table; its columns are "
                f"{list(map(str, data.columns))}"
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
            RuntimeWarning, stacklevel=5,  # _encode_input, listcomp, impl, w2_sensitivity
        )
    bounds = np.searchsorted(np.arange(n) * m // n, np.arange(m + 1), side="left")
    labels = [
        f"[{svals[bounds[i]]:.4g}, {svals[min(bounds[i + 1], n) - 1]:.4g}]" for i in range(m)
    ]
    return _Partition(name, codes, m, "ranks", labels)


# ----------------------------------------------------------------------------------------
# estimators: contingency tables (discrete outputs) and sorted rows (continuous outputs)
# ----------------------------------------------------------------------------------------
def _count(key: np.ndarray, w: np.ndarray | None, size: int) -> np.ndarray:
    """Rows per key (int64): ``bincount`` of records, weighted by their row counts ``w``
    when the records are lines of a counts table (the same integers as counting rows)."""
    if w is None:
        return np.bincount(key, minlength=size).astype(np.int64)
    return np.rint(np.bincount(key, weights=w, minlength=size)).astype(np.int64)


def _mv_xi_batch(counts: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import ot

    n_rep, n_cells, _ = counts.shape
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in range(n_rep):
        g = counts[b].sum(axis=0).astype(np.float64)
        n = g.sum()
        p = g / n
        # E||Y - EY||^2 = (1/2) E||Y - Y'||^2 = (1/2) p' C p for squared Euclidean C
        var[b] = 0.5 * p @ cost @ p
        acc = 0.0
        for c in range(n_cells):
            nc = counts[b, c].sum()
            if nc == 0:
                continue
            q = counts[b, c] / nc
            acc += (nc / n) * float(ot.emd2(p, q, cost))
        xi[b] = acc
    return xi, var


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


def _strata(lab: np.ndarray | None, n_clusters: int, stratified: bool):
    """Cluster groups to resample within: one per level of an item-level input when the
    bootstrap is stratified, else one group of all clusters."""
    if stratified and lab is not None:
        order = np.argsort(lab, kind="stable").astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(np.bincount(lab))]).astype(np.int64)
        return order, starts
    return np.arange(n_clusters, dtype=np.int64), np.array([0, n_clusters], dtype=np.int64)


@njit(cache=True)
def _within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m, state):
    tab = base.copy()
    cap = np.empty(max_m, dtype=np.int64)
    k_sup = hmin.shape[1]
    for a in range(kmaj.shape[0]):
        s0 = pstart[a]
        m = pstart[a + 1] - s0
        free = 0
        for j in range(m):
            cap[j] = psize[s0 + j]
            free += cap[j]
        km = kmaj[a]
        for k in range(k_sup):
            for _ in range(hmin[a, k]):
                state, u = K._randint(state, free)
                j = 0
                while u >= cap[j]:
                    u -= cap[j]
                    j += 1
                cap[j] -= 1
                free -= 1
                c = pcell[s0 + j]
                tab[c, k] += 1
                tab[c, km] -= 1
    return tab


@njit(cache=True)
def _within_counts(pstart, pcell, psize, kmaj, hmin, base, seeds):
    """Within-item null tables from per-(item, cell) counts (``_TableEstimator._perm_within``);
    serial (small problems: no thread start-up)."""
    n_rep = seeds.shape[0]
    max_m = max(1, np.max(np.diff(pstart))) if pstart.shape[0] > 1 else 1
    out = np.empty((n_rep, base.shape[0], base.shape[1]), dtype=np.int64)
    for b in range(n_rep):
        out[b] = _within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m,
                                    np.uint64(seeds[b]))
    return out


@njit(cache=True, parallel=True)
def _within_counts_par(pstart, pcell, psize, kmaj, hmin, base, seeds):
    """``_within_counts`` with replicates over threads (same numbers)."""
    n_rep = seeds.shape[0]
    max_m = max(1, np.max(np.diff(pstart))) if pstart.shape[0] > 1 else 1
    out = np.empty((n_rep, base.shape[0], base.shape[1]), dtype=np.int64)
    for b in prange(n_rep):
        out[b] = _within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m,
                                    np.uint64(seeds[b]))
    return out


class _TableEstimator:
    """A categorical (or binned) input with a discrete output: counts[partition, value].

    Without clusters the bootstrap draws multinomial counts (per partition when stratified,
    over the whole table otherwise) and the null multivariate hypergeometric tables. With
    clusters, ``A[g, c * K + k]`` holds cluster g's counts: a bootstrap replicate is the
    cluster multiplicities times ``A`` (one matrix product for a chunk of replicates) and
    the null permutes the clusters' labels (input constant within cluster, numba kernel) or
    shuffles each cluster's answers among its own rows, drawn from the cluster's per-cell
    counts (``_perm_within``; memory independent of the rows).
    """

    def __init__(self, out: _Output, part: _Partition, clus: _Clusters | None = None,
                 stratified: bool = True):
        self.out = out
        self.clus = clus
        self.stratified = stratified
        k_sup = out.n_support
        n_cells = part.n_cells
        self.w = out.w  # records are rows (None) or lines of a counts table (weights)
        flat = _count(part.codes * k_sup + out.codes, self.w, n_cells * k_sup)
        self.counts = flat.reshape(n_cells, k_sup)
        self.sizes = self.counts.sum(axis=1)
        self.scheme = "rows"
        self.boot_scheme = "rows within partitions" if stratified else "rows"
        if clus is None:
            return
        self.part_codes = part.codes
        n_g = clus.n
        self.lab = _cluster_labels(part.codes, clus)
        self.scheme = "items" if self.lab is not None else "within items"
        self.sgroups, self.sstarts = _strata(self.lab, n_g, stratified)
        self.boot_scheme = "items within levels" if len(self.sstarts) > 2 else "items"
        key = clus.codes * n_cells  # (cluster, cell, value) of each record, built in place
        key += part.codes
        key *= k_sup
        key += out.codes
        width = n_cells * k_sup
        if n_g * width <= DENSE_CLUSTER_TABLE:
            # the rows per key as floats (whole numbers): one G x width array, no int64
            # round trip (the same values as _count(...).astype(float))
            a = np.bincount(key, weights=self.w, minlength=n_g * width)
            if self.w is not None:
                np.rint(a, out=a)
            self.A = a.astype(float, copy=False).reshape(n_g, width)
            del a
            self.sparse = False
        else:
            from scipy import sparse

            if self.w is None:
                uk, cnt = np.unique(key, return_counts=True)
            else:
                uk, inv = np.unique(key, return_inverse=True)
                cnt = _count(inv.ravel(), self.w, len(uk))
            self.A = sparse.csc_matrix((cnt.astype(float), (uk // width, uk % width)),
                                       shape=(n_g, width)).T.tocsr()  # (width, G)
            self.sparse = True
        del key
        self.h = _count(clus.codes * k_sup + out.codes, self.w, n_g * k_sup).reshape(n_g, k_sup)
        self.base = None  # within-cluster permutation arrays: built on first use

    def _within_setup(self) -> None:
        """Per-(item, cell) sizes for the within-item null: only the (item, cell) pairs that
        occur, from the per-cluster counts ``A`` (memory O(pairs), never O(rows))."""
        n_g = self.clus.n
        n_cells, k_sup = self.counts.shape
        h = self.h
        moves = (h > 0).sum(axis=1) >= 2  # the item's output is not constant
        if self.sparse:
            coo = self.A.tocoo()  # (width, G)
            g, col, val = coo.col.astype(np.int64), coo.row.astype(np.int64), coo.data
            pair = g * n_cells + col // k_sup
            del g, col
            upair, inv = np.unique(pair, return_inverse=True)  # sorted by (item, cell)
            psize = np.rint(np.bincount(inv.ravel(), weights=val, minlength=len(upair)))
            pg, pc = upair // n_cells, upair % n_cells
            del coo, val, pair, upair, inv
            # an item's answers move when it spans two cells and its output is not constant
            is_act = (np.bincount(pg, minlength=n_g) >= 2) & moves
            keep = is_act[pg]
            pg, pc, psize = pg[keep], pc[keep], psize[keep].astype(np.int64)
            pstart = np.searchsorted(pg, np.r_[np.flatnonzero(is_act), n_g]).astype(np.int64)
            del pg, keep
        else:
            # rows per (item, cell) as a G x cells array: the pairs that occur are its
            # nonzeros, already in (item, cell) order; only the active items' pairs are
            # taken out (no index arrays per nonzero of A, no filtered copies: #15)
            per = self.A.reshape(n_g, n_cells, k_sup).sum(axis=2)
            occupied = per > 0
            n_occ = occupied.sum(axis=1)
            is_act = (n_occ >= 2) & moves
            occupied &= is_act[:, None]
            pstart = np.r_[0, np.cumsum(n_occ[is_act])].astype(np.int64)
            flat = np.flatnonzero(occupied)
            del occupied
            pc = flat % n_cells
            psize = np.rint(per.ravel()[flat]).astype(np.int64)
            del per, flat
        self.active = np.flatnonzero(is_act).astype(np.int64)
        self.pcell, self.psize = pc.astype(np.int64, copy=False), psize
        self.pstart = pstart
        # every active item starts at its most frequent value; the others are placed
        h_act = h[is_act].astype(np.int64)
        self.kmaj = np.argmax(h_act, axis=1).astype(np.int64)
        self.hmin = h_act.copy()
        self.hmin[np.arange(len(self.active)), self.kmaj] = 0
        base = self.counts.copy()
        if self.sparse:
            act_counts = (self.A @ is_act.astype(float)).reshape(n_cells, k_sup)
        else:
            act_counts = (is_act.astype(float) @ self.A).reshape(n_cells, k_sup)
        base -= np.rint(act_counts).astype(np.int64)
        np.add.at(base, (pc, np.repeat(self.kmaj, np.diff(self.pstart))), psize)
        self.base = base
        self.work = int(self.hmin.sum())

    def _perm_within(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """(b, cells, values) tables of the within-item null from per-(item, cell) counts.

        Shuffling an item's answers among its rows, with the input's cell sizes fixed, gives
        the item a (cell x value) table with both margins fixed (multivariate
        hypergeometric). It is drawn from the item's cell sizes alone: each answer other
        than the item's most frequent value in turn takes one of the item's free rows
        uniformly at random, i.e. cell c with probability (free rows of c) / (free rows);
        O(minority answers x cells of the item) per replicate, memory O((item, cell) pairs),
        never O(rows). Same law as shuffling the rows (not the same draws as the row-slot
        kernel of earlier versions); the in-memory and streamed paths hold the same counts,
        so they give the same tables for a seed (one splitmix64 stream per replicate).
        """
        kern = _within_counts_par if self.work * b > 2_000_000 else _within_counts
        return kern(self.pstart, self.pcell, self.psize, self.kmaj, self.hmin, self.base,
                    self._seeds(b, rng))

    def xi_var(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.out.kind == "ordinal":
            return K.table_xi_1d_batch(counts, self.out.support)
        if self.out.kind == "nominal":
            return K.table_xi_nominal_batch(counts)
        return _mv_xi_batch(counts, self.out.cost)

    def point(self) -> tuple[float, float]:
        xi, var = self.xi_var(self.counts[None])
        return float(xi[0]), float(var[0])

    def chunk(self) -> int:
        per = self.counts.size if self.clus is None else max(self.clus.n, self.counts.size)
        return int(max(1, min(1000, 2_000_000 // max(per, 1))))

    def cluster_weights(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """(b, G) multiplicities of the clusters (float): each stratum's clusters drawn with
        replacement at the stratum's size (numba, one splitmix64 stream per replicate)."""
        return K.cluster_weights(self.sgroups, self.sstarts, self.clus.n, self._seeds(b, rng))

    def boot(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n_cells, k_sup = self.counts.shape
        if self.clus is not None:
            w = self.cluster_weights(b, rng)
            tabs = (self.A @ w.T).T if self.sparse else w @ self.A
            draws = np.rint(tabs).astype(np.int64).reshape(b, n_cells, k_sup)
            return self.xi_var(draws)
        if not self.stratified:
            n = int(self.counts.sum())
            flat = rng.multinomial(n, self.counts.ravel() / n, size=b)
            return self.xi_var(flat.reshape(b, n_cells, k_sup).astype(np.int64))
        draws = np.empty((b, n_cells, k_sup), dtype=np.int64)
        for c in range(n_cells):
            nc = int(self.sizes[c])
            draws[:, c, :] = rng.multinomial(nc, self.counts[c] / nc, size=b)
        return self.xi_var(draws)

    @staticmethod
    def _seeds(b: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, np.iinfo(np.uint64).max, size=b, dtype=np.uint64, endpoint=True)

    def perm(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Tables under the null. Without clusters: both margins fixed, a multivariate
        hypergeometric draw per row. With clusters: labels permuted across clusters (input
        constant within cluster) or within each cluster (``_perm_within``: each cluster's
        table drawn from its per-cell counts, the law of shuffling its rows)."""
        n_cells, k_sup = self.counts.shape
        if self.clus is not None:
            if self.lab is not None:
                draws = K.perm_clusters_table(self.lab, self.h, n_cells, self._seeds(b, rng))
            else:
                if self.base is None:
                    self._within_setup()
                draws = self._perm_within(b, rng)
            return self.xi_var(draws)
        remaining = np.repeat(self.counts.sum(axis=0)[None, :], b, axis=0)
        draws = np.empty((b, n_cells, k_sup), dtype=np.int64)
        for c in range(n_cells):
            if c == n_cells - 1:
                draws[:, c, :] = remaining
                break
            need = np.full(b, int(self.sizes[c]), dtype=np.int64)
            left = remaining.sum(axis=1)
            for k in range(k_sup - 1):
                left = left - remaining[:, k]
                x = rng.hypergeometric(remaining[:, k], left, need)
                draws[:, c, k] = x
                need = need - x
            draws[:, c, k_sup - 1] = need
            remaining = remaining - draws[:, c, :]
        return self.xi_var(draws)

    def jackknife(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact leave-one-out: deleting any row of cell (c, k) gives the same table. With
        clusters: delete-a-group of clusters (at most ``JACKKNIFE_GROUPS`` groups)."""
        if self.clus is not None:
            n_g = self.clus.n
            g = min(n_g, JACKKNIFE_GROUPS)
            grp = (rng.permutation(n_g) % g)[self.clus.codes]
            n_cells, k_sup = self.counts.shape
            width = n_cells * k_sup
            cell = self.part_codes * k_sup + self.out.codes
            drop = _count(grp * width + cell, self.w, g * width).reshape(g, n_cells, k_sup)
            xi, var = self.xi_var(self.counts[None] - drop)
            return xi, var, np.ones(g, dtype=np.int64)
        cells, ks = np.nonzero(self.counts)
        mult = self.counts[cells, ks]
        xi_all = np.empty(len(cells))
        var_all = np.empty(len(cells))
        step = max(1, 4_000_000 // max(self.counts.size, 1))
        for s in range(0, len(cells), step):
            sl = slice(s, s + step)
            tabs = np.repeat(self.counts[None], len(cells[sl]), axis=0)
            tabs[np.arange(len(cells[sl])), cells[sl], ks[sl]] -= 1
            xi_all[sl], var_all[sl] = self.xi_var(tabs)
        return xi_all, var_all, mult


class _RowEstimator:
    """A continuous 1-d output: the sorted sample with integer weights, in numba."""

    def __init__(self, out: _Output, part: _Partition, clus: _Clusters | None = None,
                 stratified: bool = True):
        self.out = out
        self.clus = clus
        self.stratified = stratified
        self.n_cells = part.n_cells
        self.cells_sorted = np.ascontiguousarray(part.codes[out.order]).astype(np.int64)
        self.members, self.starts = K.group_sorted(self.cells_sorted, part.n_cells)
        self.scheme = "rows"
        self.lab = None
        if clus is not None:
            self.clus_sorted = np.ascontiguousarray(clus.codes[out.order]).astype(np.int64)
            self.n_clusters = clus.n
            self.lab = _cluster_labels(part.codes, clus)
            self.scheme = "items" if self.lab is not None else "within items"
            self.cmembers, self.cstarts = K.group_sorted(self.clus_sorted, clus.n)
        elif not stratified:  # the ordinary bootstrap: every row its own cluster
            self.clus_sorted = np.arange(out.n, dtype=np.int64)
            self.n_clusters = out.n
        self.boot_scheme = "rows within partitions" if stratified else "rows"
        if clus is not None or not stratified:
            self.sgroups, self.sstarts = _strata(self.lab, self.n_clusters, stratified)
        if clus is not None:
            self.boot_scheme = "items within levels" if len(self.sstarts) > 2 else "items"

    def point(self) -> tuple[float, float]:
        w = np.ones(self.out.n, dtype=np.int64)
        return K.cells_xi_weighted(self.out.ys, self.members, self.starts, w)

    def chunk(self) -> int:
        return int(max(8, min(250, 20_000_000 // self.out.n)))

    @staticmethod
    def _seeds(b: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, np.iinfo(np.uint64).max, size=b, dtype=np.uint64, endpoint=True)

    def boot(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.clus is None and self.stratified:
            return K.boot_continuous(self.out.ys, self.members, self.starts, self._seeds(b, rng))
        return K.boot_clusters_continuous(self.out.ys, self.members, self.starts,
                                          self.clus_sorted, self.n_clusters, self.sgroups,
                                          self.sstarts, self._seeds(b, rng))

    def perm(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.clus is None:
            return K.perm_continuous(self.out.ys, self.cells_sorted, self.n_cells,
                                     self._seeds(b, rng))
        if self.lab is not None:
            return K.perm_clusters_continuous(self.out.ys, self.clus_sorted, self.lab,
                                              self.n_cells, self._seeds(b, rng))
        return K.perm_within_continuous(self.out.ys, self.cells_sorted, self.cmembers,
                                        self.cstarts, self.n_cells, self._seeds(b, rng))

    def jackknife(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.out.n
        if self.clus is not None:
            g = min(self.clus.n, JACKKNIFE_GROUPS)
            groups = (rng.permutation(self.clus.n) % g).astype(np.int64)[self.clus_sorted]
        else:
            g = n if n <= 1000 else JACKKNIFE_GROUPS
            groups = (rng.permutation(n) % g).astype(np.int64)
        xi, var = K.jack_continuous(self.out.ys, self.members, self.starts, groups, g)
        return xi, var, np.ones(g, dtype=np.int64)


def _distinguishable(tab: pd.DataFrame) -> np.ndarray:
    """Bool per row: the ``distinguishable`` column (missing = True), else from p_value."""
    if "distinguishable" in tab.columns:
        return tab["distinguishable"].astype("boolean").fillna(True).to_numpy(bool)
    if "p_value" in tab.columns:
        p = tab["p_value"].to_numpy(float)
        return ~(np.isfinite(p) & (p > NULL_LEVEL))
    return np.ones(len(tab), dtype=bool)


_SCHEME_WORDS = {
    "rows": "",
    "items": "; labels permuted across items",
    "within items": "; labels permuted within items",
}


def _iota(xi: np.ndarray, var: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, xi / (2.0 * var), np.nan)


def _replicates(fn, total: int, step: int, rng: np.random.Generator, bar) -> np.ndarray:
    """Run ``total`` replicates of ``fn`` in chunks of ``step`` (progress per chunk)."""
    vals = []
    for s in range(0, total, step):
        b = min(step, total - s)
        x, v = fn(b, rng)
        vals.append(_iota(x, v))
        bar.update(b)
    return np.concatenate(vals) if vals else np.empty(0)


def _bca_interval(theta: float, boot: np.ndarray, jack: np.ndarray, mult: np.ndarray,
                  conf: float, name: str, fallback: list) -> tuple[float, float]:
    """BCa interval (Efron 1987); falls back to percentile when z0 is infinite."""
    alpha = (1.0 - conf) / 2.0
    below = np.mean(boot < theta) + 0.5 * np.mean(boot == theta)
    if below <= 0.0 or below >= 1.0:
        fallback.append(name)
        return tuple(np.quantile(boot, [alpha, 1.0 - alpha]))
    z0 = norm.ppf(below)
    ok = np.isfinite(jack)
    jack, mult = jack[ok], mult[ok]
    mean_j = np.sum(mult * jack) / np.sum(mult)
    u = mean_j - jack
    den = np.sum(mult * u ** 2)
    a = np.sum(mult * u ** 3) / (6.0 * den ** 1.5) if den > 0 else 0.0
    zs = norm.ppf([alpha, 1.0 - alpha])
    adj = norm.cdf(z0 + (z0 + zs) / (1.0 - a * (z0 + zs)))
    return tuple(np.quantile(boot, adj))


# ----------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------
@dataclass
class W2SensitivityResult:
    """Result of :func:`w2_sensitivity`.

    Attributes
    ----------
    table : DataFrame
        One row per input: ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean,
        null_q95, iota_corrected, p_value, distinguishable, note``.
    output, output_kind : str
        The output column(s) and how they were treated (``binary``: two values; ``ordinal``: a
        1-d output with at most 256 distinct values; both handled as a contingency table;
        ``continuous``: sorted rows; ``nominal``: one-hot labels; ``multivariate``).
    n : int
        Rows used (all of them).
    conf, ci_method : float, str
        Confidence level and interval type of ``ci_low``/``ci_high``.
    boot, null : dict of str -> ndarray
        Bootstrap and permutation replicates of iota, per input.
    partitions : dict of str -> list
        The partition labels per input (levels, or value ranges of rank bins).
    cluster, n_clusters : str or None, int or None
        The clustering used (``None``: rows independent) and the number of clusters.
    bootstrap : str
        The ``bootstrap=`` argument; ``boot_scheme`` says per input what was resampled
        (``rows``, ``rows within partitions``, ``items``, ``items within levels``).
    null_scheme : dict of str -> str
        Per input, what the permutation null permuted: ``rows``, ``items`` (labels moved
        across items) or ``within items``.
    notes : list of str
        One line per input that is not distinguishable from its permutation null or whose
        estimate lies outside its own CI.
    """

    table: pd.DataFrame
    output: str
    output_kind: str
    n: int
    conf: float
    ci_method: str
    boot: dict[str, np.ndarray]
    null: dict[str, np.ndarray]
    partitions: dict[str, list]
    cluster: str | None = None
    n_clusters: int | None = None
    bootstrap: str = "auto"
    boot_scheme: dict[str, str] = field(default_factory=dict)
    null_scheme: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _header(self) -> str:
        by = (f", clustered by {self.cluster!r} ({self.n_clusters:,} clusters)"
              if self.cluster else ", rows independent")
        return (f"W2SensitivityResult(output={self.output!r} [{self.output_kind}], n={self.n:,}, "
                f"{self.conf:.0%} {self.ci_method} CIs, bootstrap={self.bootstrap!r}{by})")

    def __repr__(self) -> str:
        # a few lines: the header and iota per input (the full table is .to_frame())
        tab = self.table
        per = ", ".join(f"{r.input} {r.iota:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]"
                        for r in tab.head(6).itertuples())
        more = f", ... ({len(tab)} inputs)" if len(tab) > 6 else ""
        return f"{self._header()}\n  iota: {per}{more}"

    def to_frame(self) -> pd.DataFrame:
        """The tidy table, one row per input (a copy of :attr:`table`).

        Returns
        -------
        DataFrame
            ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean, null_q95,
            iota_corrected, p_value, distinguishable, note``.
        """
        return self.table.copy()

    def conf_int(self, conf: float | None = None) -> pd.DataFrame:
        """Intervals for iota per input (``ci_low``, ``ci_high``, index ``input``).

        Parameters
        ----------
        conf : float, optional
            Interval level; default the fit's ``conf``. Percentile intervals at another
            level are read from the stored bootstrap replicates; BCa intervals only at the
            fitted level (rerun :func:`w2_sensitivity` with ``conf=``).

        Returns
        -------
        DataFrame
            ``attrs["interval"]`` names the interval (e.g. ``"95% percentile bootstrap"``).
        """
        conf = self.conf if conf is None else check_conf(conf)
        if conf == self.conf:
            out = self.table.set_index("input")[["ci_low", "ci_high"]].copy()
        elif self.ci_method == "percentile":
            rows = {}
            for name in self.table["input"]:
                b = np.asarray(self.boot.get(name, []), float)
                b = b[np.isfinite(b)]
                rows[name] = ((np.quantile(b, (1 - conf) / 2), np.quantile(b, (1 + conf) / 2))
                              if b.size else (np.nan, np.nan))
            out = pd.DataFrame.from_dict(rows, orient="index", columns=["ci_low", "ci_high"])
            out.index.name = "input"
        else:
            raise ValueError(f"conf_int(conf={conf}): {self.ci_method} intervals are available at the "
                             f"fitted level {self.conf} only; rerun w2_sensitivity(..., conf={conf})")
        out.attrs["interval"] = f"{100 * conf:g}% {self.ci_method} bootstrap"
        return out

    def summary(self) -> Summary:
        """The result as text (header, table, notes) and, in notebooks, an HTML table.

        Returns
        -------
        Summary
            A string that prints as text and renders as HTML (``_repr_html_``).
        """
        tab = self.table.drop(columns="note")
        text = self._header() + "\n" + tab.to_string(index=False) + "".join(
            f"\nnote: {t}" for t in self.notes)
        return Summary(f"W2 sensitivity of {self.output!r}", text, tab, notes=self.notes)

    def plot(self, ax=None, sort: bool = False):
        """Bar chart of iota per input with CI whiskers and the permutation-null band.

        Draws with :func:`refusalstats.plot.w2` (the one home of the figures): an input not
        distinguishable from its permutation null (``distinguishable`` False) gets a grey,
        hatched bar marked "~ null"; an estimate outside its own CI is marked with a
        dagger, explained under the axes; the legend names this result's interval.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw into this axes; a new Figure is created otherwise.
        sort : bool
            Order the bars by decreasing iota (default: the order of ``inputs``).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from .plot import w2

        return w2(self, ax=ax, sort=sort,
                  title=f"W2 sensitivity of {self.output} (N = {self.n:,})")


# ----------------------------------------------------------------------------------------
# Parquet sources: counts per cluster x input level, never rows
# ----------------------------------------------------------------------------------------
def _source_schema(data):
    """The Arrow schema of a Parquet file, shard folder, glob or list (read from metadata)."""
    from .scan import open_dataset

    return open_dataset(data).schema


def _resolve_cluster_stream(data, cluster, columns: list[str], output: str, needed: list[str],
                            exclude: dict | None = None):
    """``resolve_cluster`` for a Parquet source: ``"auto"`` clusters by ``item_id`` when some
    item id repeats (counted by :func:`~refusalstats.collapse`, one line per item)."""
    from ._validation import AUTO_CLUSTER_COLUMN, ClusterNote

    if cluster is None:
        return None
    if isinstance(cluster, str) and cluster == "auto":
        if AUTO_CLUSTER_COLUMN not in columns:
            return None
        per_item = _collapse(data, [], [AUTO_CLUSTER_COLUMN], output, needed, exclude)
        per_item = per_item["n"].to_numpy()
        if not (per_item > 1).any():
            return None
        warnings.warn(
            f"w2_sensitivity: clustering by '{AUTO_CLUSTER_COLUMN}' ({len(per_item):,} items "
            f"answered {per_item.sum() / len(per_item):.3g} times on average); pass cluster=None "
            "for independent rows", ClusterNote, stacklevel=4)
        return AUTO_CLUSTER_COLUMN
    names = [cluster] if isinstance(cluster, str) else (
        list(cluster) if isinstance(cluster, (list, tuple)) else None)
    if not names or not all(isinstance(c, str) for c in names):
        raise TypeError("w2_sensitivity: cluster must be 'auto', None, a column name or a list of "
                        f"column names; got {cluster!r}")
    missing = [c for c in names if c not in columns]
    if missing:
        raise SchemaError(f"w2_sensitivity: cluster column(s) {missing} not in the table; its "
                          f"columns are {columns}")
    return cluster


class RowsNeeded(ValueError):
    """w2_sensitivity on a Parquet source cannot stream this analysis: it needs the rows.

    ``what`` says what needs the rows; ``columns`` names the columns the analysis uses, so
    a caller can read just those into memory.
    """

    def __init__(self, message: str, what: str, columns: list[str]):
        super().__init__(message)
        self.what = what
        self.columns = list(columns)


def _rows_needed(data, what: str, columns: list[str]) -> RowsNeeded:
    """The error for an analysis that needs rows, with the way to get them."""
    src = repr(str(data)) if not isinstance(data, (list, tuple)) else "paths"
    return RowsNeeded(
        f"w2_sensitivity on a Parquet source streams counts per input level, which needs a 0/1 "
        f"output and categorical inputs; {what} needs the rows. Pass partitions={{name: 'levels'}} "
        "for a numeric input with few values, or read just the columns it uses into memory: "
        f"w2_sensitivity(pd.read_parquet({src}, columns={columns}), ...)",
        what,
        columns,
    )


def _collapse(data, by: list[str], cl_cols: list[str] | None, output: str, needed: list[str],
              exclude: dict | None = None):
    """``collapse`` with the output as the 0/1 response; other outputs need rows (say so).

    ``exclude`` ({column: values}): the columns are collapsed too, their lines holding
    those values dropped and the rest summed back, so the counts are those of the other
    rows (each line's rows share the column's value)."""
    from .scan import collapse

    extra = [c for c in (exclude or {}) if c not in by and c not in (cl_cols or [])]
    try:
        counts = collapse(data, by=[*by, *extra], cluster=cl_cols or None, refusal=output)
    except SchemaError as exc:
        if "must hold 0/1" in str(exc):
            raise _rows_needed(data, f"an output {output!r} with values other than 0/1 "
                               "(ordinal or continuous)", needed) from None
        raise
    if not exclude:
        return counts
    keep = np.ones(len(counts), dtype=bool)
    for col, values in exclude.items():
        keep &= ~counts[col].astype(str).isin(values).to_numpy()
    counts = counts[keep]
    if counts.empty:
        raise ValueError(f"w2_sensitivity: no rows are left after leaving out {exclude}")
    keys = [*by, *(cl_cols or [])]
    for c in keys:
        if isinstance(counts[c].dtype, pd.CategoricalDtype):
            counts = counts.assign(**{c: counts[c].cat.remove_unused_categories()})
    if not keys:
        return pd.DataFrame({"n": [int(counts["n"].sum())],
                             "refusals": [int(counts["refusals"].sum())]})
    return (counts.groupby(keys, observed=True, sort=True)[["n", "refusals"]].sum()
            .reset_index())


def _check_stream(data, out_names: list[str], inputs: list[str], partitions: dict,
                  columns: list[str], needed: list[str]) -> None:
    """What a Parquet source can stream: a 0/1 output and inputs cut into levels."""
    import pyarrow as pa

    if len(out_names) != 1:
        raise _rows_needed(data, f"a multivariate output {out_names}", needed)
    name = out_names[0]
    if name not in columns:
        raise SchemaError(f"w2_sensitivity: output column {name!r} is not in the table; its "
                          f"columns are {columns}")
    schema = _source_schema(data)

    def value_type(col):
        t = schema.field(col).type
        return t.value_type if pa.types.is_dictionary(t) else t

    ot = value_type(name)
    if not (pa.types.is_integer(ot) or pa.types.is_floating(ot) or pa.types.is_boolean(ot)):
        raise _rows_needed(data, f"a non-numeric (nominal) output {name!r} of type {ot}", needed)
    for inp in inputs:
        t = value_type(inp)
        spec = partitions.get(inp)
        if isinstance(spec, str) and spec != "levels":
            raise ValueError(f"partitions[{inp!r}] must be 'levels' or an integer number of rank "
                             f"bins, got {spec!r}")
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            raise _rows_needed(data, f"cutting input {inp!r} into {int(spec)} rank bins", needed)
        if pa.types.is_floating(t) and spec != "levels":
            raise _rows_needed(data, f"the numeric input {inp!r} (equal-count rank bins)", needed)


def _encode_stream(data, name: str, inputs: list[str], partitions: dict, cl,
                   needed: list[str], exclude: dict | None = None):
    """Per input, the estimator's arrays from ``collapse(data, by=[input], cluster=cl)``.

    Each line of the counts table (input level x cluster) becomes two weighted records,
    output 0 (``n - refusals`` rows) and output 1 (``refusals`` rows); the levels and cluster
    ids are ordered as the in-memory path orders them (``_factorize`` on the counts
    columns), so the tables, the cluster matrix and hence every random draw are the same.
    One pass over the source per input: memory is clusters x levels, not rows.

    A generator of ``(_Output, _Partition, _Clusters | None)``, one input at a time: an
    input's counts and records are built when the caller asks for them and are freed once
    it moves on, so the peak holds one input's records, not all of them (issue #15).
    """
    cl_cols = [] if cl is None else ([cl] if isinstance(cl, str) else list(cl))
    state: dict = {}  # the first input's row count, for the others
    for inp in inputs:
        # yielded straight from the call: no local of this frame keeps the records alive
        yield _encode_stream_input(data, name, inp, partitions, cl, cl_cols, needed, exclude,
                                   state)


def _encode_stream_input(data, name: str, inp: str, partitions: dict, cl, cl_cols: list[str],
                         needed: list[str], exclude: dict | None, state: dict
                         ) -> tuple[_Output, _Partition, _Clusters | None]:
    """One input of :func:`_encode_stream` (its temporaries die with this frame);
    ``state["n_total"]``: the rows, set by the first input."""
    counts = _collapse(data, [inp], cl_cols, name, needed, exclude)
    n_lines = counts["n"].to_numpy(np.int64)
    r_lines = counts["refusals"].to_numpy(np.int64)
    n_total = state.get("n_total")
    if n_total is None:
        n_total = state["n_total"] = int(n_lines.sum())
        n_ref = int(r_lines.sum())
        if n_ref in (0, n_total):
            raise ValueError(
                f"output column {name!r} is constant (every row is {int(n_ref > 0)}): "
                "Var[Y] = 0 and the index is undefined. Check the column, or the subset "
                "you passed.")
    # records: every line twice (output 0, output 1), lines without such rows dropped;
    # the lines with answers 0, then those with answers 1 (no 2 x lines temporaries)
    n0_lines = n_lines - r_lines
    del n_lines
    k0, k1 = np.flatnonzero(n0_lines > 0), np.flatnonzero(r_lines > 0)
    line = np.concatenate([k0, k1])  # record -> its counts line
    out = _Output("ordinal", name, n_total,
                  np.repeat(np.array([0, 1], dtype=np.int64), [len(k0), len(k1)]),
                  np.array([0.0, 1.0]),
                  w=np.concatenate([n0_lines[k0], r_lines[k1]], dtype=np.float64))
    del n0_lines, r_lines, k0, k1
    col = counts[inp]
    spec = partitions.get(inp)
    if spec is None and _is_numeric(col) and not pd.api.types.is_bool_dtype(col) \
            and col.nunique() > default_partitions(n_total):
        raise _rows_needed(data, f"the integer input {inp!r} with {col.nunique():,} values "
                           f"(more than {default_partitions(n_total)}: equal-count rank bins)",
                           needed)
    codes, labels = _factorize(col)
    if len(labels) < 2:
        raise ValueError(
            f"input {inp!r} has a single level ({labels[0]!r}) in these data: a sensitivity "
            "index compares partitions, so it needs at least two. Drop the input or pass data "
            "where it varies.")
    part = _Partition(inp, codes[line], len(labels), "levels", labels)
    del codes, col
    clus = None
    if cl_cols:
        c = _encode_clusters(counts[cl_cols], cl)
        clus = _Clusters(c.name, c.codes[line], c.n)
    return out, part, clus


# ----------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------
def w2_sensitivity(
    data: pd.DataFrame | str | os.PathLike | Sequence[str | os.PathLike],
    output: str | Sequence[str] = "refusal",
    inputs: Sequence[str] = ("model", "task", "persona", "prompt"),
    partitions: Mapping[str, int | str] | None = None,
    n_boot: int = 1000,
    conf: float = 0.95,
    n_perm: int = 200,
    seed: int | np.random.Generator | None = 0,
    ci: str = "percentile",
    progress: bool = True,
    cluster: str | Sequence[str] | None = "auto",
    bootstrap: str = "auto",
) -> W2SensitivityResult:
    r"""Wasserstein-2 sensitivity index of each input, with bootstrap CI and permutation null.

    For every input X the given-data estimate

    .. math:: \hat\iota = \frac{\sum_m (n_m/N)\, W_2^2(\hat P_Y, \hat P_{Y|m})}{2\,\widehat{Var}[Y]}

    is computed over the partitions m of X, with the *exact* W2^2 between the empirical
    distributions (merged quantile breakpoints) and the *population* variance (divisor N),
    so iota is in [0, 1], equals 1 when Y is a function of a discrete X, and for a 0/1
    output equals ``sum_m (n_m/N) |p - p_m| / (2 p (1 - p))`` exactly.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        One row per observation. No column may contain NaN (rows are never dropped silently).
        A Parquet file, a folder of Parquet shards, a glob or a list of them is streamed:
        per input, :func:`refusalstats.collapse` counts rows and refusals per input level
        (and per cluster x level), reading only those columns, so memory grows with
        clusters x levels, never with rows; the result equals the in-memory one with the
        same seed (estimates, CIs, p-values, replicates). This needs a 0/1 (or bool) output
        and inputs cut into levels; a continuous, ordinal, nominal or multivariate output
        and numeric inputs cut into rank bins need the rows and raise a ValueError that
        says how to read just the needed columns.
    output : str or list of str
        The output column. 0/1, bool or numeric with at most 256 distinct values: a 1-d
        discrete output, analysed as a partition x value contingency table. Numeric with more
        values: continuous (sorted rows, numba kernels). Non-numeric (labels): nominal, i.e.
        one-hot with squared Euclidean cost (W2^2 = sum_k ``|p_k - q_k|``). Several numeric
        columns: multivariate, exact OT with ``ot.emd2`` on the distinct rows (at most 2,000).
    inputs : list of str
        Input columns. Categorical/string/bool columns and integer columns with few values
        get one partition per observed level; other numeric columns get equal-count rank bins
        (ties split by order of appearance), by default ``default_partitions(N)`` of them.
    partitions : dict, optional
        Per input, ``"levels"`` or an int number of rank bins, overriding the default.
    n_boot : int
        Bootstrap replicates (0: no CI); how they are drawn is set by ``cluster`` and
        ``bootstrap``.
    conf : float
        Confidence level of the interval.
    n_perm : int
        Permutations of the input for the null (0: none). Without clusters the rows' labels
        are permuted (partition sizes kept; for tables a multivariate hypergeometric draw
        with both margins). With clusters, an input constant within every cluster (an
        item-level input such as ``task``) has its labels permuted across clusters, so an
        item's answers move together; any other input is permuted within each cluster (a
        stratified permutation: every item keeps its own answers and its own mix of levels).
    seed : int, None or numpy.random.Generator
        Seed; each input's random streams derive from it and the input's name (a Generator
        or None first draws an int seed).
    ci : {"percentile", "bca"}
        Interval type. Percentile is the default: in the tests' simulation (a 0/1 output with
        a known index of 0.505, random partition sizes, 1,000 data sets) its 95% intervals
        covered 95.3% (N = 6,400) and 94.3% (N = 1,600) with the default unstratified
        bootstrap, BCa's 94.8% and 93.0%; the estimator is not smooth (an absolute value),
        which BCa's theory assumes. BCa uses an exact leave-one-out jackknife for tables, a
        delete-a-group jackknife (100 groups) for continuous outputs with more than 1,000
        rows, and delete-a-group of clusters (at most 100 groups) with clusters.
    progress : bool
        Show a tqdm progress bar.
    cluster : "auto", str, list of str or None
        Rows that belong together (answers to the same item). ``"auto"`` (default) clusters
        by ``item_id`` when the table has it and item ids repeat, with a one-line
        :class:`~refusalstats.ClusterNote`; ``None`` treats rows as independent. With
        clusters the bootstrap resamples whole clusters and the permutation null respects
        them (see ``n_perm``). With an item random intercept of sd 1 (logit scale), treating
        rows as independent rejected a null item-level input 27% of the time at 5% and its
        95% CIs covered 80% (audit: 28-32% and 72%); clustered: 4.1% and 94.6%
        (2,000 data sets each, ``benchmarks/calibration_w2.py``, docs/methods_w2.md).
    bootstrap : {"auto", "unstratified", "stratified"}
        ``"unstratified"``: rows (or clusters) drawn with replacement from all of them, so
        partition sizes vary between replicates as they do between samples when each row's
        level is random. ``"stratified"``: each partition resampled at its own size (rows),
        or the clusters of each level of an item-level input resampled within that level
        (a row-level input with clusters: whole clusters, nothing to stratify).
        ``"auto"`` (default): unstratified without clusters (random partition sizes,
        iota = 0.505, N = 6,400: 95.3-95.9% coverage vs 92.9-93.3% stratified), stratified
        with clusters (items per task are fixed by the design: 94.6% vs 97.3% for the
        plain item bootstrap, whose sd overstated the sampling sd, 0.0278 vs 0.0249). Pass ``"unstratified"``
        when an item-level input's levels are themselves random draws, ``"stratified"``
        when row partitions have sizes fixed by the design.

    Returns
    -------
    W2SensitivityResult
        ``.table`` with columns ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean,
        null_q95, iota_corrected, p_value, distinguishable, note``: ``xi`` in units of Y^2,
        ``null_mean``/``null_q95`` the mean and 95% quantile of iota under permutation (the
        finite-sample bias and a significance threshold), ``iota_corrected = max(iota -
        null_mean, 0)``, ``p_value`` the permutation p-value ``(1 + #{null >= iota}) /
        (n_perm + 1)``, ``distinguishable`` whether ``p_value <= 0.05`` (NA without
        permutations) and ``note`` a plain-words remark when an input is not distinguishable
        from its null or its estimate lies outside its own CI (also in ``.notes``).
        ``.boot_scheme`` / ``.null_scheme`` name how each input was resampled and permuted.
        ``.plot()`` draws it (grey hatched bars for inputs like their null, a dagger for an
        estimate outside its CI).

    Raises
    ------
    SchemaError
        A missing column (the message lists the table's columns).
    TypeError, ValueError
        NaNs, constant output, an input with a single level, more partitions
        than rows, bad arguments; the message names the column and the fix.

    References
    ----------
    Borgonovo, Figalli, Plischke & Savaré (2024), "Global sensitivity analysis via optimal
    transport", Management Science. Estimator as in the R package gsaot (``ot_indices_1d``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> g = rng.choice(["a", "b", "c", "d"], size=4000)
    >>> p = pd.Series(g).map({"a": 0.1, "b": 0.3, "c": 0.5, "d": 0.9}).to_numpy()
    >>> df = pd.DataFrame({"g": g, "noise": rng.choice(["x", "y"], size=4000),
    ...                    "refusal": (rng.random(4000) < p).astype(int)})
    >>> res = w2_sensitivity(df, inputs=["g", "noise"], n_boot=200, n_perm=100,
    ...                      progress=False)
    >>> cols = ["input", "iota", "ci_low", "ci_high", "null_q95", "p_value", "distinguishable"]
    >>> res.table[cols].round(3)
       input   iota  ci_low  ci_high  null_q95  p_value  distinguishable
    0      g  0.500   0.479    0.529     0.035    0.010             True
    1  noise  0.008   0.001    0.037     0.036    0.683            False
    >>> res.notes[0]
    'noise: not distinguishable from its permutation null (p = 0.683; null 95% quantile 0.0363)'

    The truth for ``g`` is 0.25 / (2 * 0.45 * 0.55) = 0.505; ``noise`` is irrelevant and its
    estimate lies below the permutation null's 95% quantile. The table has no ``item_id``,
    so rows are independent and the bootstrap is unstratified.
    """
    return _w2_sensitivity(data, output, inputs, partitions, n_boot, conf, n_perm, seed, ci,
                           progress, cluster, bootstrap)


def _w2_sensitivity(data, output, inputs, partitions, n_boot, conf, n_perm, seed, ci, progress,
                    cluster, bootstrap, exclude: Mapping[str, Sequence] | None = None
                    ) -> W2SensitivityResult:
    """:func:`w2_sensitivity`; ``exclude`` ({column: values}, Parquet sources only) leaves
    out the rows holding those values, as ``data[~data[col].isin(values)]`` would (the
    report uses it for the rows with a persona)."""
    from .scan import is_dataset, scan_columns

    streamed = is_dataset(data)
    if not streamed and not isinstance(data, pd.DataFrame):
        raise TypeError("data must be a pandas DataFrame or a Parquet file, folder of shards, glob "
                        f"or list of them, got {type(data).__name__}")
    if not streamed and len(data) == 0:
        raise ValueError("data has no rows")
    columns = scan_columns(data) if streamed else list(map(str, data.columns))
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs is empty; name at least one column, e.g. inputs=['model']")
    missing = [c for c in inputs if c not in columns]
    if missing:
        raise SchemaError(f"w2_sensitivity: input column(s) {missing} not in the table; its columns are "
                          f"{columns}")
    dup = sorted({c for c in inputs if inputs.count(c) > 1})
    if dup:
        raise ValueError(f"input(s) {dup} listed more than once")
    out_names = [output] if isinstance(output, str) else list(output)
    clash = [c for c in inputs if c in out_names]
    if clash:
        raise ValueError(f"column(s) {clash} are both output and input")
    partitions = dict(partitions or {})
    unknown = [k for k in partitions if k not in inputs]
    if unknown:
        raise ValueError(f"partitions names {unknown}, which are not among inputs={inputs}")
    for nm, val, lo in (("n_boot", n_boot, 0), ("n_perm", n_perm, 0)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValueError(f"{nm} must be a non-negative integer, got {val!r}")
    conf = check_conf(conf)
    if ci not in ("bca", "percentile"):
        raise ValueError(f"ci must be 'bca' or 'percentile', got {ci!r}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}")
    # an int seeds every input's streams directly (reproducible per input name); a Generator
    # or None first draws that int
    seed_int = (int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                and seed >= 0 else int(check_random_state(seed).integers(2**63 - 1)))
    if streamed:
        if cluster is None:
            cl_given = []
        elif isinstance(cluster, str) and cluster == "auto":  # rows read back keep the column
            cl_given = [AUTO_CLUSTER_COLUMN] if AUTO_CLUSTER_COLUMN in columns else []
        else:
            cl_given = [cluster] if isinstance(cluster, str) else list(cluster)
        needed = list(dict.fromkeys([*inputs, *out_names, *cl_given]))
        _check_stream(data, out_names, inputs, partitions, columns, needed)
        exclude = {str(k): [str(v) for v in vals] for k, vals in dict(exclude or {}).items()
                   if k in columns}
        cl = _resolve_cluster_stream(data, cluster, columns, out_names[0], needed, exclude)
    else:
        with warnings.catch_warnings(record=True) as caught:  # the note names the caller's
            warnings.simplefilter("always")                   # line, not w2_sensitivity's
            cl = resolve_cluster(data, cluster, where="w2_sensitivity")
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=3)
    if cl is not None:
        both = [c for c in ([cl] if isinstance(cl, str) else cl) if c in out_names]
        if both:
            raise ValueError(f"column(s) {both} are both output and cluster")

    if streamed:
        # one input at a time: the chain drops the first input's records once the loop
        # asks for the second, and each later input is collapsed only when its turn comes
        stream = _encode_stream(data, out_names[0], inputs, partitions, cl, needed, exclude)
        first = next(stream)
        out, clus = first[0], first[2]
        encoded = itertools.chain([first], stream)
        del first
    else:
        out = _encode_output(data, output)
        clus = None if cl is None else _encode_clusters(data, cl)
        encoded = [(out, _encode_input(data, name, partitions.get(name), out.n), clus)
                   for name in inputs]
    n = out.n
    out_name, out_kind, out_support = out.name, out.kind, out.n_support
    clus_name, clus_n = (None, None) if clus is None else (clus.name, clus.n)
    labels: dict[str, list] = {}
    # "auto": rows independent -> unstratified (partition sizes vary, as they do between
    # samples when each row's level is random); clustered -> items resampled within the
    # levels of an item-level input (items per level are fixed by the design) and whole
    # items otherwise. Measured coverage behind the choice: docs/methods_w2.md.
    stratified = bootstrap == "stratified" or (bootstrap == "auto" and clus is not None)

    rows = []
    boots: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    alpha = (1.0 - conf) / 2.0
    fallback: list[str] = []
    notes: list[str] = []
    schemes: dict[str, str] = {}
    boot_schemes: dict[str, str] = {}
    bar = tqdm(total=len(inputs) * (n_boot + n_perm), desc="W2 sensitivity", unit="rep",
               disable=not progress or (n_boot + n_perm) == 0, leave=False)
    try:
        for out, part, clus in encoded:
            est = (_RowEstimator if out.kind == "continuous" else _TableEstimator)(
                out, part, clus, stratified)
            schemes[part.name] = est.scheme
            boot_schemes[part.name] = est.boot_scheme
            xi, var = est.point()
            iota = float(xi / (2.0 * var))
            ss = np.random.SeedSequence([seed_int, zlib.crc32(part.name.encode())])
            rng_boot, rng_perm, rng_jack = (np.random.default_rng(s) for s in ss.spawn(3))
            step = est.chunk()
            boot = _replicates(est.boot, n_boot, step, rng_boot, bar)
            null = _replicates(est.perm, n_perm, step, rng_perm, bar)
            ci_low = ci_high = np.nan
            if n_boot:
                ok = np.isfinite(boot)
                if not ok.all():
                    warnings.warn(
                        f"input {part.name!r}: {int((~ok).sum())} of {n_boot} bootstrap replicates "
                        "had a constant output (Var = 0) and were left out of the CI.",
                        RuntimeWarning, stacklevel=3,  # the caller of w2_sensitivity
                    )
                bt = boot[ok]
                if ci == "percentile":
                    ci_low, ci_high = np.quantile(bt, [alpha, 1.0 - alpha])
                else:
                    jx, jv, mult = est.jackknife(rng_jack)
                    ci_low, ci_high = _bca_interval(iota, bt, _iota(jx, jv), mult, conf,
                                                    part.name, fallback)
            null_mean = null_q95 = p_value = corrected = np.nan
            if n_perm:
                nl = null[np.isfinite(null)]
                null_mean = float(nl.mean())
                null_q95 = float(np.quantile(nl, 0.95))
                corrected = max(iota - null_mean, 0.0)
                p_value = (1.0 + np.sum(nl >= iota - 1e-12)) / (len(nl) + 1.0)
            boots[part.name] = boot
            nulls[part.name] = null
            distinguishable = bool(p_value <= NULL_LEVEL) if n_perm else pd.NA
            row_notes = []
            if n_perm and not distinguishable:
                row_notes.append(
                    f"not distinguishable from its permutation null (p = {p_value:.3g}; null "
                    f"95% quantile {null_q95:.3g}{_SCHEME_WORDS[est.scheme]})")
            if n_boot and np.isfinite(ci_low) and not ci_low <= iota <= ci_high:
                row_notes.append(
                    f"estimate {iota:.3g} outside its own {conf:.0%} CI [{ci_low:.3g}, "
                    f"{ci_high:.3g}]: the estimator's bias is large relative to its spread; "
                    "read iota_corrected and p_value")
            for txt in row_notes:
                notes.append(f"{part.name}: {txt}")
            rows.append({
                "input": part.name, "n_partitions": part.n_cells,
                "xi": float(xi) * out.scale2, "iota": iota,
                "ci_low": float(ci_low), "ci_high": float(ci_high),
                "null_mean": null_mean, "null_q95": null_q95,
                "iota_corrected": corrected, "p_value": p_value,
                "distinguishable": distinguishable, "note": "; ".join(row_notes),
            })
            labels[part.name] = part.labels
            # let go of this input's records and estimator before the next is built
            est = out = part = clus = None
    finally:
        bar.close()
    if fallback:
        warnings.warn(
            f"BCa: for input(s) {fallback} every bootstrap replicate of iota lies above (or below) "
            "the estimate, so the bias correction is infinite; their ci_low/ci_high are percentile "
            "intervals. This is typical of an input whose estimate is mostly finite-sample bias: "
            "compare iota with null_mean/null_q95 and p_value.",
            RuntimeWarning, stacklevel=3,  # the caller of w2_sensitivity
        )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["n_partitions"] = table["n_partitions"].astype(int)
    table["distinguishable"] = table["distinguishable"].astype("boolean")
    return W2SensitivityResult(
        table=table, output=out_name,
        output_kind="binary" if out_kind == "ordinal" and out_support == 2 else out_kind,
        n=n, conf=conf,
        ci_method=ci if n_boot else "none", boot=boots, null=nulls,
        partitions=labels,
        cluster=clus_name,
        n_clusters=clus_n,
        bootstrap=bootstrap, boot_scheme=boot_schemes, null_scheme=schemes, notes=notes,
    )
