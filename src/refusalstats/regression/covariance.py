"""Cluster-robust uncertainty: the CR1 sandwich, its Wald F test, and the cluster bootstrap."""

from __future__ import annotations

import warnings

import numpy as np
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


def _cr1(X: np.ndarray, cl: _Cluster, beta: np.ndarray, bread: np.ndarray, n_obs: int) -> np.ndarray:
    """CR1 sandwich: cluster score sums from (cluster x pattern) counts, no row-level X."""
    p = expit(X @ beta)
    r = cl.s - cl.n * p[cl.j]
    M = sparse.csr_matrix((r, (cl.g, cl.j)), shape=(cl.n_clusters, X.shape[0]))
    S = M @ sparse.csr_matrix(X)
    S = S.toarray()
    meat = S.T @ S
    G = cl.n_clusters
    N = n_obs
    k = X.shape[1]
    c = (G / (G - 1.0)) * ((N - 1.0) / (N - k))
    return c * bread @ meat @ bread


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
