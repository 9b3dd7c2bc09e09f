"""Cluster-robust uncertainty: the CR1 sandwich, its Wald F test, and the cluster bootstrap."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats
from scipy.special import expit

from .._validation import check_random_state
from .design_matrix import _Cluster, _Design
from .firth import _firth
from .irls import _irls
from .linalg import _colabs
from .penalized import _enet


def _wald_f(b: np.ndarray, V: np.ndarray, G: int, rtol: float = 1e-10) -> dict:
    """Cluster-robust Wald test of ``b = 0`` with covariance ``V`` (CR1) and ``G`` clusters.

    ``W = b' V^+ b`` and ``F = W / q`` on ``(q, G - 1)`` degrees of freedom (Cameron &
    Miller 2015, sec. VI; Stata's ``test`` after ``regress, vce(cluster)``), ``q`` the rank
    of ``V`` (judged on its correlation matrix: eigenvalues below ``rtol`` times the
    largest are dropped, and the pseudo-inverse used, with a note). With more
    coefficients than ``G - 1`` the CR1 matrix cannot estimate their covariance: NaN.
    """
    m = len(b)
    out = {"df": float(m), "df_resid": float(G - 1), "F": np.nan, "p_value": np.nan, "note": ""}
    if not (np.isfinite(b).all() and np.isfinite(V).all()):
        out["note"] = "covariance not finite: no test"
        return out
    if m > G - 1:
        out["note"] = (f"not available: {m} coefficients but only G - 1 = {G - 1} cluster degrees of "
                       "freedom (the CR1 covariance has rank at most G - 1)")
        return out
    sd = np.sqrt(np.clip(np.diag(V), 0.0, None))
    if not (sd > 0).any():
        out["note"] = "the CR1 covariance of the term is zero: no test"
        return out
    live = sd > 0
    bs = b[live] / sd[live]
    R = V[np.ix_(live, live)] / np.outer(sd[live], sd[live])
    ev, U = np.linalg.eigh(0.5 * (R + R.T))
    keep = ev > rtol * ev.max()
    q = int(keep.sum())
    proj = U[:, keep].T @ bs
    W = float(np.sum(proj ** 2 / ev[keep]))
    if q < m:
        out["note"] = (f"CR1 covariance of the {m} coefficients has rank {q} (e.g. a separated or "
                       f"all-zero-score level): pseudo-inverse, tested on {q} df")
    out["df"] = float(q)
    out["F"] = W / q
    out["p_value"] = float(stats.f.sf(W / q, q, G - 1))
    return out


@dataclass
class _StreamedCluster:
    """Clusters of rows that stay on disk: a Parquet source streamed once per CR1 request.

    ``logit(path, cluster=...)`` fits the counts per covariate pattern and keeps this in
    place of :class:`_Cluster` (counts per cluster x pattern, as many lines as rows in a
    Monte Carlo design). :func:`_cr1_many` streams the rows once and accumulates each
    cluster's score sums for every fit it is given (memory: clusters x coefficients).
    """

    name: str
    source: object             # a Parquet file, folder, glob or list of them
    variables: list[str]       # the formula's columns (pattern keys)
    refusal: str               # the 0/1 response column of the rows
    patterns: pd.DataFrame | None = None   # the design's patterns (set by the fit)
    n_clusters: int = 0        # known after the first pass
    n_rows: int = 0
    auto: bool = False         # chosen by cluster="auto": no clustering if no item repeats
    batch_rows: int | None = None


def _cr1_factor(G: int, N: int, k: int) -> float:
    return (G / (G - 1.0)) * ((N - 1.0) / (N - k))


def _cr1(X: np.ndarray, cl: _Cluster | _StreamedCluster, beta: np.ndarray, bread: np.ndarray, n_obs: int) -> np.ndarray:
    """CR1 sandwich: cluster score sums from (cluster x pattern) counts, no row-level X
    (or, for a :class:`_StreamedCluster`, from one streaming pass over the rows)."""
    return _cr1_many(X, cl, [(beta, bread, None)], n_obs)[0]


def _cr1_many(X: np.ndarray, cl: _Cluster | _StreamedCluster, fits: list[tuple[np.ndarray, np.ndarray, list[int] | None]],
              n_obs: int) -> list[np.ndarray]:
    """CR1 covariances of several fits on the columns ``cols`` of ``X`` (None: all).

    Each fit is ``(beta, bread, cols)``. With a :class:`_StreamedCluster` all the meats
    come from one pass over the rows (anova's sub-models cost one pass, not one each).
    """
    if isinstance(cl, _StreamedCluster):
        from ..scan import _BATCH_ROWS, _stream_cluster_meats

        models = [(expit((X if cols is None else X[:, cols]) @ beta), cols) for beta, _, cols in fits]
        meats, G, n_rows = _stream_cluster_meats(
            cl.source, cl.patterns, cl.variables, cl.name, cl.refusal, X, models,
            batch_rows=cl.batch_rows or _BATCH_ROWS, where="logit")
        if n_rows != n_obs:
            raise ValueError(f"logit: the dataset now has {n_rows:,} rows, {n_obs:,} when it was "
                             "collapsed; it changed between the two passes")
        cl.n_clusters, cl.n_rows = G, n_rows
        out = []
        for (_, bread, cols), meat in zip(fits, meats):
            k = X.shape[1] if cols is None else len(cols)
            out.append(_cr1_factor(G, n_obs, k) * bread @ meat @ bread)
        return out
    out = []
    for beta, bread, cols in fits:
        Xs = X if cols is None else X[:, cols]
        p = expit(Xs @ beta)
        r = cl.s - cl.n * p[cl.j]
        M = sparse.csr_matrix((r, (cl.g, cl.j)), shape=(cl.n_clusters, Xs.shape[0]))
        S = (M @ sparse.csr_matrix(Xs)).toarray()
        out.append(_cr1_factor(cl.n_clusters, n_obs, Xs.shape[1]) * bread @ (S.T @ S) @ bread)
    return out


def _bootstrap(d: _Design, beta, penalty, alpha, l1_ratio, pen_mask, n_boot, seed, progress):
    """Bootstrap replicates of the coefficients: resample clusters (or rows) as counts."""
    from tqdm.auto import tqdm

    rng = check_random_state(seed)
    X, s, n = d.Xf, d.s, d.n
    K = len(s)
    out = np.full((n_boot, len(beta)), np.nan)
    if d.cluster is not None:
        cl = d.cluster
        G = cl.n_clusters
        Ms = sparse.csr_matrix((cl.s, (cl.j, cl.g)), shape=(K, G))
        Mn = sparse.csr_matrix((cl.n, (cl.j, cl.g)), shape=(K, G))
    else:
        total = round(n.sum())
        cells = np.concatenate([s, n - s])
    for b in tqdm(range(n_boot), desc="bootstrap", disable=not progress, leave=False):
        if d.cluster is not None:
            m = rng.multinomial(G, np.full(G, 1.0 / G)).astype(float)
            sb, nb = Ms @ m, Mn @ m
        else:
            draw = rng.multinomial(total, cells / cells.sum()).astype(float)
            sb = draw[:K]
            nb = draw[:K] + draw[K:]
        keep = nb > 0
        Xb = X[keep]
        if (_colabs(Xb) == 0).any():
            continue  # a level drawn no rows: that coefficient is undefined in this replicate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if penalty is None:
                bb, _, _ = _irls(Xb, sb[keep], nb[keep], beta0=beta, eps=1e-10, maxit=50)
            elif penalty == "firth":
                bb, _, _, _ = _firth(Xb, sb[keep], nb[keep], beta0=beta)
            else:
                bb, _, _ = _enet(Xb, sb[keep], nb[keep], alpha, l1_ratio, pen_mask, beta0=beta)
        out[b] = bb
    return out
