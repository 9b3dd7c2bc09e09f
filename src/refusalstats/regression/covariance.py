"""Cluster-robust uncertainty: the CR1 sandwich, its Wald F test, and the cluster bootstrap."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, stats
from scipy.special import expit

from .._validation import check_random_state
from ..counts import (
    _BATCH_ROWS,
    N_COLUMN,
    _Levels,
    _local_codes,
    _missing_columns,
    _reduce,
    _refusal_values,
    _where,
)
from ..sources import _dataset
from .design_matrix import _Cluster, _Design
from .firth import _firth
from .irls import _irls
from .linalg import _colabs, _inv_spd, _single_blas
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

    ``logit(path, cluster=...)`` on a source with more (cluster, pattern) pairs than CR2
    holds (``regression.model._CR2_MAX_PAIRS``) fits the counts per covariate pattern and
    keeps this in place of :class:`_Cluster`. :func:`_cr1_many` streams the rows once and accumulates each
    cluster's score sums for every fit it is given (memory: clusters x coefficients).
    """

    name: str
    source: object             # a Parquet file, folder, glob or list of them
    variables: list[str]       # the formula's columns (pattern keys)
    refusal: str               # the 0/1 response column of the rows
    patterns: pd.DataFrame | None = None   # the design's patterns (set by the fit)
    n_clusters: int = 0        # known after the first pass
    n_rows: int = 0
    batch_rows: int | None = None
    note: str = ""             # why the source is streamed (too many (cluster, pattern) pairs for CR2)


def _t_quantile(conf: float, df: np.ndarray) -> np.ndarray:
    """The two-sided ``conf`` quantile of t on ``df`` (the normal one where df is infinite)."""
    df = np.asarray(df, float)
    out = np.full(df.shape, stats.norm.ppf(0.5 + conf / 2))
    fin = np.isfinite(df) & (df > 0)
    out[fin] = stats.t.ppf(0.5 + conf / 2, df[fin])
    out[np.isnan(df)] = np.nan
    return out


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


# ============================================================================ CR2 (bias-reduced)
#: relative size below which an eigenvalue of a cluster's I - H_jj counts as zero (clubSandwich's
#: ``matrix_power`` drops eigenvalues <= 1e-12)
_EIG_TOL = 1e-12
#: the adjustment ``A_j = (I - H_jj)^(-power)`` of each bias-reduced sandwich (clubSandwich's CR2, CR3)
_ADJUSTMENT_POWER = {"CR2": 0.5, "CR3": 1.0}
#: the bias-reduced sandwiches (t tests with Satterthwaite df, HTZ Wald tests)
_BIAS_REDUCED = ("CR2", "CR3", "CR2-glm")
#: the default (vcov=None) is CR3 when the Kish effective number of clusters is below both this
#: number and _CR3_BELOW_SHARE of the clusters (sizes very unequal), CR2 otherwise: measured in
#: benchmarks/calibration_logit.py, SHAPES (f)-(k) (CR2 alone fell short on (g), (i) and (k), CR3
#: alone over-covered (f) and the balanced few-cluster shape (j); with the threshold at 20, 25 or 30
#: the rule met the targets on all six, at 10 or 15 it did not on (g) or (k))
_CR3_BELOW_EFFECTIVE = 20.0
_CR3_BELOW_SHARE = 0.5
#: below this Kish effective number of clusters the summary says that the default was at the
#: conservative edge of the targets in the calibration (shape (i))
_FEW_EFFECTIVE = 8.0
#: the per-cluster eigen-decompositions (J p^3 flops, J p^2 memory) are used while they stay
#: below these sizes; larger designs take the series / first-order path (see _CR2Engine)
_EXACT_MEMORY = 4_000_000
_EXACT_FLOPS = 200_000_000
#: clusters x coefficients^2 floats per chunk of the large path
_CHUNK_FLOATS = 250_000  # small chunks: the bincount scatter stays in cache


def _sorted_pairs(cl: _Cluster) -> _Cluster:
    """The (cluster, pattern) pairs ordered by cluster (the design builds them so)."""
    if len(cl.g) > 1 and (np.diff(cl.g) < 0).any():
        o = np.argsort(cl.g, kind="stable")
        return _Cluster(name=cl.name, labels=cl.labels, g=cl.g[o], j=cl.j[o], s=cl.s[o], n=cl.n[o])
    return cl


def _cluster_info(X: np.ndarray, Xf, wts: np.ndarray, cl: _Cluster, lo: int, hi: int,
                  starts: np.ndarray) -> np.ndarray:
    """``F_j = sum over the cluster's pairs of n w x x'`` for clusters ``lo .. hi - 1`` ((hi-lo) x p x p).

    ``wts`` is the per-pattern weight ``w = mu (1 - mu)``; pairs are ordered by cluster and
    ``starts[g]`` is the first pair of cluster ``g``. Dummy-coded designs (:class:`_Ell`) sum
    the products of each row's few nonzeros with one bincount; others, dense outer products.
    """
    from .linalg import _Ell

    a, b = starts[lo], starts[hi]
    g = cl.g[a:b] - lo
    j = cl.j[a:b]
    v = cl.n[a:b] * wts[j]
    p = X.shape[1]
    c = hi - lo
    if isinstance(Xf, _Ell) and _dummy_layout(Xf) is not None:
        # 0/1 dummies after an intercept: the products among the dummies only (r (r - 1) / 2 per
        # row, weight n w each); the intercept's row is the diagonal, its corner the total
        up = _dummy_layout(Xf)
        P = p + 1
        flat = up[j]
        flat += (g * (P * P))[:, None]
        wv = np.broadcast_to(v[:, None], flat.shape)
        F = np.bincount(flat.ravel(), weights=wv.ravel(), minlength=c * P * P).reshape(c, P, P)[:, :p, :p]
        out = F + F.transpose(0, 2, 1)
        d = np.arange(p)
        out[:, d, d] = F[:, d, d]
        out[:, 0, :] = out[:, d, d]
        out[:, :, 0] = out[:, d, d]
        out[:, 0, 0] = np.bincount(g, weights=v, minlength=c)
        return out
    if isinstance(Xf, _Ell):
        # the upper triangle of each row's products of nonzeros (r (r + 1) / 2 per row), one bincount
        P = p + 1
        flat = Xf._upairs.reshape(len(Xf.idx), -1)[j]
        flat += (g * (P * P))[:, None]
        wv = Xf._uvv[j] * v[:, None]
        up = np.bincount(flat.ravel(), weights=wv.ravel(), minlength=c * P * P).reshape(c, P, P)[:, :p, :p]
        out = up + up.transpose(0, 2, 1)
        d = np.arange(p)
        out[:, d, d] = up[:, d, d]
        return out
    Xp = X[j]
    seg = starts[lo:hi] - a  # every cluster has at least one pair
    return np.add.reduceat(Xp[:, :, None] * (Xp * v[:, None])[:, None, :], seg, axis=0)


def _dummy_layout(Xf) -> np.ndarray | None:
    """For a dummy-coded design (column 0 the intercept in every row, every other nonzero a
    1): the flat (column, column) index of the upper triangle of the products among each
    row's dummies (K x r(r-1)/2, into a (p+1) x (p+1) grid; cached). Else None."""
    cached = getattr(Xf, "_dummy_up", False)
    if cached is not False:
        return cached
    idx, val, P = Xf.idx, Xf.val, Xf.p + 1
    out = None
    if idx.shape[1] >= 2 and (idx[:, 0] == 0).all() and ((val == 1.0) | ((val == 0.0) & (idx == Xf.p))).all():
        a, b = np.triu_indices(idx.shape[1] - 1)
        rest = idx[:, 1:]
        lo, hi = np.minimum(rest[:, a], rest[:, b]), np.maximum(rest[:, a], rest[:, b])
        out = lo * P + hi
    Xf._dummy_up = out
    return out


def _cluster_scores(X: np.ndarray, cl: _Cluster, mu: np.ndarray) -> np.ndarray:
    """Each cluster's score sum ``sum (y - n mu) x`` (clusters x p), from the pairs."""
    r = cl.s - cl.n * mu[cl.j]
    M = sparse.csr_matrix((r, (cl.g, cl.j)), shape=(cl.n_clusters, X.shape[0]))
    return np.asarray(M @ X)


def _inv_sqrt_psd(A: np.ndarray, tol: float = _EIG_TOL) -> np.ndarray:
    """Symmetric ``A^(-1/2)`` with eigenvalues ``<= tol`` dropped (clubSandwich's matrix_power)."""
    ev, U = np.linalg.eigh(0.5 * (A + A.T))
    f = np.where(ev > tol, 1.0 / np.sqrt(np.where(ev > tol, ev, 1.0)), 0.0)
    return (U * f) @ U.T


class _CR2Engine:
    """Bias-reduced linearization (Bell & McCaffrey 2002) for a logistic fit, in parameter space.

    The GLM's last IRLS step is the weighted least-squares fit of the working response
    on ``X`` with weights ``w = mu (1 - mu)``; written as OLS on ``X~ = W^(1/2) X``, CR2
    adjusts each cluster's standardized residuals by ``A_j = (I - H_jj)^(-1/2)``, ``H_jj =
    X~_j M X~_j'`` and ``M = (X'WX)^-1`` (the working model: independent rows with the
    binomial variance; clubSandwich's ``vcovCR(type = "CR2")`` on that OLS, see
    ``docs/methods_logit.md``). Rows of a cluster that share a covariate pattern enter as
    one line with weight ``n w`` (their within-pattern contrasts have zero leverage and
    zero weight in the score), so the work is per (cluster, pattern) pair, never per row.

    With ``M = L L'`` and the cluster's information ``F_j = X~_j' X~_j``, the p x p matrix
    ``Lambda_j = L' F_j L`` has the nonzero eigenvalues of ``H_jj``; every quantity is a
    function of it:

    * the adjusted score ``X~_j' A_j e~_j = L^-T g(Lambda_j) L' r_j`` with ``g(l) =
      (1 - l)^(-1/2)`` and ``r_j`` the cluster's score sum; ``V = M sum_j (...)(...)' M``;
    * for a contrast ``c`` (``u = L' c``) Satterthwaite's df (Pustejovsky & Tipton 2018,
      clubSandwich's ``get_GH``/``get_P_array``) uses ``h_j = phi(Lambda_j) u`` and
      ``|g_j|^2 = u' psi(Lambda_j) u`` with ``phi(l) = l g(l)``, ``psi(l) = l g(l)^2``:
      ``E = sum_j (|g_j|^2 - |h_j|^2)``, ``Var = 2 sum_jk P_jk^2`` with ``P_jk = -h_j.h_k +
      [j = k] |g_j|^2``, ``df = 2 E^2 / Var``; the double sum is ``|sum_j h_j h_j'|_F^2``
      (p x p), so nothing is J x J;
    * HTZ (Hotelling's T^2 with Zhang's df) for ``C b = 0`` from the same pieces.

    While ``J p^2`` and ``J p^3`` stay small the eigen-decompositions of all ``Lambda_j``
    are kept (``exact``). Larger designs (P1's: 12,701 items x 40 coefficients) take the
    adjusted scores from the power series of ``g`` (matrix-vector products only, to 1e-13,
    exact clusters where the series would converge slowly) and the degrees of freedom to
    first order in the cluster leverages (``psi ~ Lambda``, the cross-cluster terms, which are
    of relative order max_j |Lambda_j|, dropped); ``approx_note`` says so with that bound.
    """

    def _setup(self, X: np.ndarray, Xf, cl: _Cluster, beta: np.ndarray, M: np.ndarray):
        """What both parametrizations share: the clusters' pairs in cluster order, the
        working weights, M and a square root L of it, each cluster's first pair.
        Returns the sorted clusters and the fitted means."""
        cl = _sorted_pairs(cl)
        self.X, self.Xf, self.cl = X, Xf, cl
        self.p, self.J = X.shape[1], cl.n_clusters
        mu = expit(X @ beta)
        self.wts = mu * (1.0 - mu)
        self.M = 0.5 * (M + M.T)
        ev, U = np.linalg.eigh(self.M)
        # a square root of M (Cholesky when it is definite; symmetric root otherwise)
        try:
            self.L = np.linalg.cholesky(self.M)
        except np.linalg.LinAlgError:
            self.L = (U * np.sqrt(np.clip(ev, 0.0, None))) @ U.T
        self.starts = np.searchsorted(cl.g, np.arange(self.J + 1))
        return cl, mu

    def __init__(self, X: np.ndarray, Xf, cl: _Cluster, beta: np.ndarray, M: np.ndarray, *,
                 exact: bool | None = None, kind: str = "CR2"):
        if kind not in _ADJUSTMENT_POWER:
            raise ValueError(f"kind must be one of {list(_ADJUSTMENT_POWER)}, got {kind!r}")
        self.kind = kind
        self.power = _ADJUSTMENT_POWER[kind]
        cl, mu = self._setup(X, Xf, cl, beta, M)
        p = self.p
        # the (cluster x pattern) pairs as CSR rows directly (they are ordered by cluster)
        r = np.asarray(self._pairs_matrix(cl.s - cl.n * mu[cl.j]) @ X)
        # cluster leverage bound: tr(Lambda_j) = sum over its pairs of n w x' M x
        lev = self.wts * np.einsum("ka,ab,kb->k", X, self.M, X)
        self.trace = np.bincount(cl.g, weights=cl.n * lev[cl.j], minlength=self.J)
        if exact is None:
            exact = self.J * p * p <= _EXACT_MEMORY and self.J * p ** 3 <= _EXACT_FLOPS
        self.exact = exact
        self.approx_note = ""
        if exact:
            lam, Q = self._eigen(0, self.J)
            self.lam, self.Q = lam, Q
            s = self._adjusted(lam, Q, r @ self.L)
        else:
            c = self._adjusted_series(r)                 # adjusted scores in the original coordinates
            s = c @ self.L                               # = L' c: V = L s's L' = M c'c M
            self.approx_note = (
                f"degrees of freedom to first order in the cluster leverages (largest "
                f"{float(self.trace.max()):.2g}; {self.J:,} clusters x {p} coefficients is past the "
                "exact per-cluster decomposition)")
        self.V = self.L @ (s.T @ s) @ self.L.T

    # -------------------------------------------------------------- per-cluster pieces
    def _eigen(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        F = _cluster_info(self.X, self.Xf, self.wts, self.cl, lo, hi, self.starts)
        lam, Q = np.linalg.eigh(np.einsum("ai,jab,bk->jik", self.L, F, self.L, optimize=True))
        return np.clip(lam, 0.0, 1.0), Q

    def _g(self, lam: np.ndarray) -> np.ndarray:
        """The adjustment ``g(l) = (1 - l)^(-power)``: power 1/2 for CR2, 1 for CR3 (0 where
        ``1 - l`` is numerically zero, as clubSandwich's ``matrix_power`` / a pseudo-inverse)."""
        one = 1.0 - lam
        safe = np.where(one > _EIG_TOL, one, 1.0)
        return np.where(one > _EIG_TOL, 1.0 / (np.sqrt(safe) if self.power == 0.5 else safe ** self.power), 0.0)

    def _adjusted(self, lam, Q, rl) -> np.ndarray:
        """``g(Lambda_j) L' r_j`` for each cluster (rows)."""
        t = np.einsum("jab,ja->jb", Q, rl) * self._g(lam)
        return np.einsum("jab,jb->ja", Q, t)

    def _adjusted_series(self, r: np.ndarray) -> np.ndarray:
        """The adjusted scores ``c_j = r_j + F_j sum_k a_(k+1) (M F_j)^k M r_j`` (the binomial
        series of ``(1 - l)^(-power)``; matrix-vector products with ``F_j`` only) where the
        cluster's leverage bound ``tr(Lambda_j)`` is below 1/2, by the eigen-decomposition of
        ``Lambda_j`` elsewhere."""
        from .linalg import _Ell

        p, J = self.p, self.J
        out = np.empty((J, p))
        M = self.M
        per_pair = (self.Xf.idx.shape[1] ** 2) if isinstance(self.Xf, _Ell) else p * p
        for lo, hi in self._chunks(per_pair):
            F = _cluster_info(self.X, self.Xf, self.wts, self.cl, lo, hi, self.starts)
            tr = self.trace[lo:hi]
            slow = tr > 0.5
            y = r[lo:hi] @ M
            coef, k = self.power, 0              # the series of (1 - l)^(-power): a_1 = power
            acc = coef * y
            bound = float(tr[~slow].max()) if (~slow).any() else 0.0
            while bound > 0 and k < 400:
                k += 1
                coef *= (k + self.power) / (k + 1.0)   # a_(k+1) = a_k (k + power) / (k + 1)
                y = np.matmul(F, y[:, :, None])[:, :, 0] @ M   # batched F_j y_j (3x einsum's speed)
                acc += coef * y
                if coef * bound ** (k + 1) / (1.0 - bound) < 1e-14:
                    break
            c = r[lo:hi] + np.matmul(F, acc[:, :, None])[:, :, 0]
            if slow.any():
                Lam = np.einsum("ai,jab,bk->jik", self.L, F[slow], self.L, optimize=True)
                lam, Q = np.linalg.eigh(Lam)
                sl = self._adjusted(np.clip(lam, 0.0, 1.0), Q, r[lo:hi][slow] @ self.L)
                c[slow] = np.linalg.solve(self.L.T, sl.T).T
            out[lo:hi] = c
        return out

    # -------------------------------------------------------------- contrasts
    def _pieces(self, U: np.ndarray):
        """``h_j`` (J x p x q) and ``gamma_j = U' psi(Lambda_j) U`` (J x q x q) for ``U`` (p x q)."""
        T = np.einsum("jab,aq->jbq", self.Q, U)           # Q_j' U
        g = self._g(self.lam)
        phi, psi = self.lam * g, self.lam * g * g
        H = np.einsum("jab,jbq->jaq", self.Q, T * phi[:, :, None])
        Gm = np.einsum("jbs,jb,jbt->jst", T, psi, T)
        return H, Gm

    def _pieces_C(self, C: np.ndarray):
        """``h_j`` (J x p x q) and ``gamma_j`` (J x q x q) for the rows of ``C``."""
        return self._pieces(self.L.T @ C.T)

    def _pieces_diag(self, C: np.ndarray):
        """``h_j`` (J x p x q) for the rows of ``C`` and the diagonal ``|g_j|^2`` (J x q) only."""
        U = self.L.T @ C.T                                   # p x q
        T = np.einsum("jab,aq->jbq", self.Q, U)
        g = self._g(self.lam)
        H = np.einsum("jab,jbq->jaq", self.Q, T * (self.lam * g)[:, :, None])
        return H, np.einsum("jbq,jb->jq", T * T, self.lam * g * g)

    def _first_order_gamma(self, C: np.ndarray) -> np.ndarray:
        """``gamma_j ~ C M F_j M C'`` (J x q x q) from the pairs, in chunks of clusters."""
        cl = self.cl
        Y = self.X @ (self.M @ C.T)                          # K x q
        q = C.shape[0]
        out = np.empty((self.J, q, q))
        for lo, hi in self._chunks(q * q):
            a, b = self.starts[lo], self.starts[hi]
            z = Y[cl.j[a:b]] * np.sqrt(cl.n[a:b] * self.wts[cl.j[a:b]])[:, None]
            out[lo:hi] = np.add.reduceat(z[:, :, None] * z[:, None, :], self.starts[lo:hi] - a, axis=0)
        return out

    def _chunks(self, per_pair: int):
        """Ranges of clusters whose pairs x ``per_pair`` floats stay near _CHUNK_FLOATS."""
        target = max(1, _CHUNK_FLOATS // max(per_pair, 1))
        lo = 0
        while lo < self.J:
            hi = int(np.searchsorted(self.starts, self.starts[lo] + target, side="right")) - 1
            hi = min(max(hi, lo + 1), self.J)
            yield lo, hi
            lo = hi

    def df(self, C: np.ndarray) -> np.ndarray:
        """Satterthwaite degrees of freedom of each row of ``C`` (clubSandwich's ``coef_test`` /
        ``linear_contrast`` with ``test = "Satterthwaite"``), in blocks of rows."""
        C = np.atleast_2d(np.asarray(C, float))
        block = max(1, _EXACT_MEMORY // max(self.J * self.p, 1))
        if self.exact and len(C) > block:  # the exact path holds J x p x rows; the other J x rows
            return np.concatenate([self.df(C[i:i + block]) for i in range(0, len(C), block)])
        E = np.einsum("qa,ab,qb->q", C, self.M, C)
        if not self.exact:
            gd = self._first_order_diag(C)
            Var = 2.0 * (gd ** 2).sum(0)
        else:
            H, gd = self._pieces_diag(C)                         # h_j (J x p x q), |g_j|^2 (J x q)
            hh = np.einsum("jas,jas->js", H, H)                  # |h_j|^2
            E = (gd - hh).sum(0)
            S = np.einsum("jas,jbs->sab", H, H)                  # sum_j h_j h_j'
            Var = 2.0 * ((S ** 2).sum((1, 2)) - 2.0 * (gd * hh).sum(0) + (gd ** 2).sum(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(Var > 0, 2.0 * E ** 2 / Var, np.nan)

    def _first_order_diag(self, C: np.ndarray) -> np.ndarray:
        """``c' M F_j M c`` for each cluster and row of ``C`` (J x q): the cluster x pattern
        weights ``n w`` (sparse) times the patterns' ``(x' M c)^2``."""
        cl = self.cl
        Y = self.X @ (self.M @ C.T)
        if getattr(self, "_Nw", None) is None:
            self._Nw = self._pairs_matrix(cl.n * self.wts[cl.j])
        return np.asarray(self._Nw @ (Y * Y))

    def _pairs_matrix(self, values: np.ndarray):
        """A clusters x patterns CSR matrix holding ``values`` at the pairs."""
        return sparse.csr_matrix((values, self.cl.j, self.starts), shape=(self.J, len(self.X)))

    def htz(self, C: np.ndarray, b: np.ndarray, V: np.ndarray, *, gram: bool | None = None) -> dict:
        """HTZ Wald test of ``C beta = 0`` (clubSandwich's ``Wald_test(test = "HTZ")``); the
        double sums over clusters through the J x J Gram matrices (``gram``; default when
        J <= p q) or through the p x p sums ``S_st``."""
        C = np.atleast_2d(np.asarray(C, float))
        q = C.shape[0]
        out = {"df": float(q), "df_resid": np.nan, "F": np.nan, "p_value": np.nan, "note": ""}
        cb = C @ b
        CVC = C @ V @ C.T
        if not (np.isfinite(cb).all() and np.isfinite(CVC).all()):
            out["note"] = "covariance not finite: no test"
            return out
        ev, Uq = np.linalg.eigh(0.5 * (CVC + CVC.T))
        keep = ev > 1e-10 * max(ev.max(), 0.0)
        if not keep.any():
            out["note"] = "the cluster-robust covariance of the term is zero: no test"
            return out
        if keep.sum() < q:  # test the identified combinations only
            C = (Uq[:, keep].T @ C)
            cb = C @ b
            CVC = C @ V @ C.T
            out["note"] = (f"CR2 covariance of the {q} coefficients has rank {int(keep.sum())}: tested on "
                           f"{int(keep.sum())} df")
            q = C.shape[0]
            out["df"] = float(q)
        Qstat = float(cb @ np.linalg.solve(CVC, cb))
        if self.exact:
            H, Gm = self._pieces_C(C)
            Omega = (Gm - np.einsum("jas,jat->jst", H, H)).sum(0)
            On = _inv_sqrt_psd(Omega)
            H = np.einsum("jas,st->jat", H, On)
            Gm = np.einsum("su,jst,tv->juv", On, Gm, On)
            alpha = np.einsum("jas,jat->jst", H, H)           # h_sj . h_tj
            if (self.J <= self.p * q) if gram is None else gram:  # J x J Gram route
                Gr = np.einsum("jas,kat->stjk", H, H)         # h_sj . h_tk
                t1 = np.einsum("stjk,tsjk->st", Gr, Gr)       # tr(S_ts S_ts)
                t2 = np.einsum("ssjk,ttjk->st", Gr, Gr)       # tr(S_ts S_st)
            else:                                             # p x p route
                S = np.einsum("jas,jbt->stab", H, H)          # S_st = sum_j h_sj h_tj'
                t1 = np.einsum("tsab,tsba->st", S, S)
                t2 = np.einsum("tsab,stba->st", S, S)
            ag = np.einsum("jst,jts->st", alpha, Gm)
            ga = np.einsum("jst,jts->st", Gm, alpha)
            gg = np.einsum("jst,jts->st", Gm, Gm)
            ad = np.einsum("jss->js", alpha)
            gd = np.einsum("jss->js", Gm)
            T1 = t1 - ag - ga + gg
            T2 = t2 - np.einsum("js,jt->st", ad, gd) - np.einsum("js,jt->st", gd, ad) \
                + np.einsum("js,jt->st", gd, gd)
            total = float((T1 + T2).sum())
        else:
            Omega = C @ self.M @ C.T
            On = _inv_sqrt_psd(Omega)
            Gm = self._first_order_gamma(On @ C)
            gd = np.einsum("jss->js", Gm)
            total = float(np.einsum("jst,jts->", Gm, Gm) + (gd.sum(1) ** 2).sum())
        nu = q * (q + 1) / total if total > 0 else np.nan
        delta = max((nu - q + 1) / nu, 0.0)
        df2 = nu - q + 1
        F = delta * Qstat / q
        out.update({"df_resid": float(df2), "F": float(F),
                    "p_value": float(stats.f.sf(F, q, df2)) if df2 > 0 else np.nan})
        return out


class _CR2GlmEngine(_CR2Engine):
    """CR2 in clubSandwich's form for a GLM (``vcovCR(glm_fit, type = "CR2")``, ``vcov="CR2-glm"``).

    clubSandwich treats the logistic fit as weighted least squares of ``y`` on the mean
    function: design ``X_glm = V X`` (``V = diag(mu (1 - mu))``), weights ``W = V^-1``,
    target ``Theta = V`` and response residuals ``y - mu``. Its adjustment is
    ``A_j = Theta_j^(1/2) [Theta_j^(1/2) (I - V X M X' W)_jj Theta_j Theta_j^(1/2)]^(-1/2) Theta_j^(1/2)``
    = ``V^(1/2) [V (I - H_jj) V]^(-1/2) V^(1/2)`` with ``H = V^(1/2) X M X' V^(1/2)``, against the
    working-OLS form's ``V^(1/2) (I - H_jj)^(-1/2) V^(-1/2)`` (:class:`_CR2Engine`). Both make the
    sandwich unbiased under the working model and agree when ``mu`` is constant within each
    cluster; they differ otherwise (about 0.1% on the test fixture). The square root of
    ``V (I - H_jj) V`` has no p x p form, so this works per cluster in the span of its
    (cluster, pattern) pairs (``e_k = 1_k / sqrt(n_k)``; the rows' within-pattern contrasts
    have zero leverage and zero score and are left out exactly): a ``K_j x K_j`` matrix per
    cluster, ``K_j`` its patterns. Satterthwaite df and HTZ follow clubSandwich's ``get_GH``
    (``inverse_var = TRUE``): ``h_j = (M E_j U_j L)' c`` and ``|g_j|^2 = c' M E_j Theta_j E_j' M c``
    with ``E_j = X_j' A_j`` and ``U_j = V X_j``. CR3 needs no such form: its ``(I - H_jj)^-1`` is
    the same in both parametrizations, so ``vcov="CR3"`` equals ``vcovCR(glm_fit, type = "CR3")``.
    """

    def __init__(self, X: np.ndarray, Xf, cl: _Cluster, beta: np.ndarray, M: np.ndarray):
        self.kind, self.power = "CR2-glm", 0.5
        cl, mu = self._setup(X, Xf, cl, beta, M)
        p = self.p
        self.exact, self.approx_note = True, ""
        J, Mm, L = self.J, self.M, self.L
        size = np.diff(self.starts)
        S = np.zeros((J, p))
        self.HmT = np.zeros((J, p, p))   # (M E_j U_j L)'
        self.Gm = np.zeros((J, p, p))    # M E_j Theta_j E_j' M
        for k in np.unique(size):
            js = np.flatnonzero(size == k)
            pair = self.starts[js][:, None] + np.arange(k)[None, :]       # (clusters, k) pair index
            pat, n = cl.j[pair], cl.n[pair]
            v = self.wts[pat]
            Xr = X[pat] * np.sqrt(n)[:, :, None]                         # rows sqrt(n_k) x_k
            rr = (cl.s[pair] - n * mu[pat]) / np.sqrt(n)                # e_k' (y - mu)
            sv = np.sqrt(v)
            Hs = np.einsum("cka,ab,clb->ckl", Xr, Mm, Xr) * sv[:, :, None] * sv[:, None, :]
            G = v[:, :, None] * (np.eye(k)[None] - Hs) * v[:, None, :]
            lam, Q = np.linalg.eigh(0.5 * (G + G.transpose(0, 2, 1)))
            f = np.where(lam > _EIG_TOL, 1.0 / np.sqrt(np.where(lam > _EIG_TOL, lam, 1.0)), 0.0)
            A = sv[:, :, None] * np.einsum("ckm,cm,clm->ckl", Q, f, Q) * sv[:, None, :]
            E = np.einsum("cka,ckl->cal", Xr, A)                         # X_j' A_j (clusters, p, k)
            S[js] = np.einsum("cal,cl->ca", E, rr)
            ME = np.einsum("ab,cbl->cal", Mm, E)
            self.HmT[js] = np.einsum("cal,clb,bd->cda", ME, Xr * v[:, :, None], L)
            self.Gm[js] = np.einsum("cal,cl,cbl->cab", ME, v, ME)
        self.V = Mm @ (S.T @ S) @ Mm

    def _pieces_C(self, C: np.ndarray):
        H = np.einsum("jab,qb->jaq", self.HmT, C)
        return H, np.einsum("qa,jab,sb->jqs", C, self.Gm, C)

    def _pieces_diag(self, C: np.ndarray):
        H = np.einsum("jab,qb->jaq", self.HmT, C)
        return H, np.einsum("qa,jab,qb->jq", C, self.Gm, C)


# ============================================================================ two-way (CGM 2011)
@dataclass
class _TwoWay:
    """Clusters that are the cells of two crossed columns (``cluster=["item_id", "persona"]``):
    the intersection key is ``first_code * n_second + second_code``."""

    names: list[str]
    n_second: int
    sizes: tuple[int, int]


def _sum_rows(S: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniq = pd.factorize(groups, sort=True)
    out = np.zeros((len(uniq), S.shape[1]))
    np.add.at(out, codes, S)
    return out, len(uniq)


def _cr1_two_way(X: np.ndarray, cl: _Cluster, beta: np.ndarray, bread: np.ndarray, n_obs: int
                 ) -> tuple[np.ndarray, int, int, str]:
    """Two-way cluster-robust covariance (Cameron, Gelbach & Miller 2011, eq. 2.11):
    ``V = V_1 + V_2 - V_12`` with each term the CR1 sandwich of one clustering (its own
    factor ``G/(G-1) (N-1)/(N-k)``), as R's ``sandwich::vcovCL(cluster = ~ a + b, type =
    "HC1")``; negative eigenvalues, possible in finite samples, are set to zero (CGM sec.
    2.3) with a note. Returns ``(V, G_1, G_2, note)``."""
    tw = cl.two_way
    k = X.shape[1]
    S12 = _cluster_scores(X, cl, expit(X @ beta))
    labels = np.asarray(cl.labels, dtype=np.int64)
    S1, G1 = _sum_rows(S12, labels // tw.n_second)
    S2, G2 = _sum_rows(S12, labels % tw.n_second)
    meat = np.zeros((k, k))
    for S, G, sign in ((S1, G1, 1.0), (S2, G2, 1.0), (S12, len(labels), -1.0)):
        if G > 1:
            meat += sign * _cr1_factor(G, n_obs, k) * (S.T @ S)
    V = bread @ meat @ bread
    V = 0.5 * (V + V.T)
    note = ""
    ev, U = np.linalg.eigh(V)
    if (ev < -1e-12 * max(abs(ev).max(), 1e-300)).any():
        V = (U * np.clip(ev, 0.0, None)) @ U.T
        note = (f"the two-way covariance had {int((ev < 0).sum())} negative eigenvalue(s), set to zero "
                "(Cameron, Gelbach & Miller 2011, sec. 2.3)")
    return V, G1, G2, note


# ============================================================================ one object per fit
class _ClusterCov:
    """A fit's cluster-robust covariance and the degrees of freedom of its tests.

    ``kind`` is "CR2" or "CR3" (t tests with Satterthwaite df, HTZ Wald tests), "CR1" (z
    tests, Wald F on ``(q, G - 1)``), "CR1-2way" (t and F on ``min(G_1, G_2) - 1``) or
    "GEE-MD" (t and F on ``G - p``). ``reason`` says why the default chose CR2 or CR3.
    """

    def __init__(self, kind: str, V: np.ndarray, n_clusters: int, *, engine: _CR2Engine | None = None,
                 note: str = "", sizes: tuple[int, ...] = (), df_resid: float | None = None,
                 rho: float | None = None, reason: str = ""):
        self.kind, self.V, self.n_clusters, self.engine, self.note = kind, V, n_clusters, engine, note
        self.reason = reason
        self.sizes, self.df_resid, self.rho = sizes, df_resid, rho

    @property
    def t_tests(self) -> bool:
        return self.kind in (*_BIAS_REDUCED, "CR1-2way", "GEE-MD")

    def df(self, C: np.ndarray) -> np.ndarray:
        """Degrees of freedom of the t statistic of each row of ``C`` (inf: z)."""
        C = np.atleast_2d(C)
        if self.kind in _BIAS_REDUCED:
            return self.engine.df(C)
        if self.kind == "CR1-2way":
            return np.full(len(C), float(min(self.sizes) - 1))
        if self.kind == "GEE-MD":
            return np.full(len(C), float(self.df_resid))
        return np.full(len(C), np.inf)

    def wald(self, C: np.ndarray, b: np.ndarray, V: np.ndarray | None = None) -> dict:
        """Test of ``C b = 0``: HTZ for CR2 and CR3, the Wald F on ``(q, G - 1)`` otherwise."""
        V = self.V if V is None else V
        C = np.atleast_2d(C)
        if self.kind in _BIAS_REDUCED:
            return self.engine.htz(C, b, V)
        if self.kind == "GEE-MD":
            return _wald_f(C @ b, C @ V @ C.T, int(self.df_resid) + 1)
        G = self.n_clusters if self.kind == "CR1" else min(self.sizes)
        return _wald_f(C @ b, C @ V @ C.T, G)

    def label(self, name: str) -> str:
        if self.kind == "CR2":
            out = (f"cluster-robust CR2 (bias-reduced linearization, Bell & McCaffrey 2002) by '{name}' "
                   f"({self.n_clusters:,} clusters)")
        elif self.kind == "CR2-glm":
            out = (f"cluster-robust CR2 in clubSandwich's GLM form (vcovCR(glm, type = 'CR2')) by '{name}' "
                   f"({self.n_clusters:,} clusters)")
        elif self.kind == "CR3":
            out = (f"cluster-robust CR3 (jackknife-type bias reduction, A_j = (I - H_jj)^-1) by '{name}' "
                   f"({self.n_clusters:,} clusters)")
        elif self.kind == "CR1":
            out = f"cluster-robust CR1 by '{name}' ({self.n_clusters:,} clusters)"
        elif self.kind == "GEE-MD":
            out = (f"robust GEE covariance (exchangeable working correlation within '{name}', rho = "
                   f"{self.rho:.3f}) with the Mancl-DeRouen correction ({self.n_clusters:,} clusters)")
        else:
            out = (f"two-way cluster-robust CR1 (Cameron, Gelbach & Miller 2011) by {name} "
                   f"({self.sizes[0]:,} x {self.sizes[1]:,} clusters)")
        return out

    def test_label(self) -> str:
        if self.kind in _BIAS_REDUCED:
            return f"t with Satterthwaite degrees of freedom ({self.kind})"
        if self.kind == "CR1-2way":
            return f"t on min(G_1, G_2) - 1 = {min(self.sizes) - 1} df (two-way CR1)"
        if self.kind == "GEE-MD":
            return f"t on G - p = {int(self.df_resid)} df (GEE, Mancl-DeRouen)"
        return "Wald z with the CR1 covariance"


def _cluster_cov(X: np.ndarray, Xf, cl, beta: np.ndarray, bread: np.ndarray, n_obs: int,
                 penalty: str | None, vcov: str | None) -> tuple[_ClusterCov, list[str]]:
    """The covariance ``vcov`` asks for, or the one that applies (with notes saying why)."""
    notes: list[str] = []
    if isinstance(cl, _Cluster) and cl.two_way is not None:
        if vcov == "CR2":
            notes.append("CR2 is one-way: the two-way clustering uses CGM's CR1 sandwich")
        V, G1, G2, note = _cr1_two_way(X, cl, beta, bread, n_obs)
        if note:
            notes.append(note)
        return _ClusterCov("CR1-2way", V, min(G1, G2), sizes=(G1, G2)), notes
    kind = vcov or "CR2"
    if kind in _BIAS_REDUCED and isinstance(cl, _StreamedCluster):
        kind = "CR1"
        notes.append(cl.note or f"{vcov or 'CR2'} needs each cluster's counts by pattern; a streamed Parquet "
                     "source gives CR1 (collapse with cluster= into a DataFrame for CR2)")
    if kind in _BIAS_REDUCED and penalty in ("l2", "l1", "elasticnet"):
        kind = "CR1"
        if vcov in _BIAS_REDUCED:
            notes.append(f"{vcov} is defined for the unpenalized fit's hat matrix: ridge uses CR1")
    if kind == "CR1":
        V = _cr1(X, cl, beta, bread, n_obs)
        return _ClusterCov("CR1", V, cl.n_clusters), notes
    g_eff = _kish_clusters(cl)
    reason = ""
    if vcov is None:
        kind, reason = _default_kind(cl.n_clusters, g_eff)
    elif vcov == "CR2" and _default_kind(cl.n_clusters, g_eff)[0] == "CR3":
        notes.append(f"vcov='CR2' on {cl.n_clusters:,} clusters of very unequal sizes (Kish effective number "
                     f"{g_eff:.1f}): on such tables CR2 intervals and tests of cluster-level terms fell short in "
                     "the calibration (0.86 coverage, 0.085 false positives) and the default (CR3) did not "
                     "(benchmarks/calibration_logit.py, shape (g))")
    if g_eff < _FEW_EFFECTIVE:
        notes.append(_few_effective_note(g_eff))
    if kind == "CR2-glm":
        sizes = np.bincount(cl.g, minlength=cl.n_clusters)
        if cl.n_clusters * X.shape[1] ** 2 <= _EXACT_MEMORY and float(np.sum(sizes.astype(float) ** 3)) \
                <= _EXACT_FLOPS:
            engine = _CR2GlmEngine(X, Xf, cl, beta, bread)
            return _ClusterCov(kind, engine.V, cl.n_clusters, engine=engine), notes
        kind = "CR2"
        notes.append(f"vcov='CR2-glm' needs a decomposition per cluster of its patterns; {cl.n_clusters:,} "
                     f"clusters x {X.shape[1]} coefficients is past it: CR2 (working-OLS form) used")
    engine = _CR2Engine(X, Xf, cl, beta, bread, kind=kind)
    if engine.approx_note:
        notes.append(engine.approx_note)
    return _ClusterCov(kind, engine.V, cl.n_clusters, engine=engine, reason=reason), notes


def _kish_clusters(cl) -> float:
    """Kish's effective number of clusters ``(sum m_g)^2 / sum m_g^2`` (``m_g`` its rows)."""
    m = np.bincount(cl.g, weights=cl.n, minlength=cl.n_clusters)
    return float(m.sum() ** 2 / np.sum(m * m))


def _default_kind(n_clusters: int, g_eff: float) -> tuple[str, str]:
    """The default bias-reduced sandwich for ``n_clusters`` clusters whose Kish effective number
    is ``g_eff``, and a sentence saying why (printed in ``summary()``)."""
    limit = min(_CR3_BELOW_EFFECTIVE, _CR3_BELOW_SHARE * n_clusters)
    if g_eff < limit:
        return "CR3", (
            f"vcov: CR3 because the {n_clusters:,} clusters have very unequal sizes (Kish effective number "
            f"{g_eff:.1f}, below {_CR3_BELOW_EFFECTIVE:g} and half the clusters): on such tables CR2 "
            "under-covered cluster-level contrasts (0.86 for 0.95, 0.085 false positives) and CR3 met the "
            "targets (benchmarks/calibration_logit.py, shape (g)); vcov='CR2' or 'CR1' by name")
    return "CR2", (
        f"vcov: CR2 (Kish effective number of clusters {g_eff:.1f} of {n_clusters:,}; CR3 is the default "
        f"below {_CR3_BELOW_EFFECTIVE:g} when that is under half the clusters, benchmarks/calibration_logit.py)")


def _few_effective_note(g_eff: float) -> str:
    return (f"only {g_eff:.1f} effective clusters (Kish): below {_FEW_EFFECTIVE:g} the default CR3 was on the "
            "conservative edge in the calibration (shape (i), about 6 effective clusters: 0.970 coverage for "
            "0.95, no false positive in 400 null tests of a row-level term, so little power there), and CR2 "
            "fell short (0.912 coverage, 0.080 false positives for a cluster-level term); "
            "benchmarks/calibration_logit.py")


# ============================================================================ streamed CR1
# (moved from refusalstats.scan, issue #23: one home for the cluster-robust covariance; the
# sandwich's factor, bread and one-BLAS-thread rule are the ones above)
def _row_batches(data, columns: list[str], batch_rows: int):
    """(record batch, source) pairs of ``columns`` from a DataFrame or a Parquet source.

    Read by :func:`refusalstats.sources.source_batches`, so error rows (``refusal_source
    == "error"``) are left out here as :func:`refusalstats.collapse` leaves them out.
    """
    from ..sources import source_batches, source_of

    src = source_of(data, where="cluster_robust_cov")
    if src.frame is None:
        _missing_columns(columns, list(_dataset(list(src.files)).schema.names),
                         f"the dataset '{data}'")
    yield from source_batches(src, columns, batch_rows, where="cluster_robust_cov")


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

    from ..formula import fixed_design, parse_formula, prepare_factors

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
    bread = _inv_spd(X.T @ (X * w[:, None]))
    V = _cr1_factor(G, n_rows, k) * bread @ meat @ bread
    separated = [list(fit.params.index).index(t) for t in getattr(fit, "separated_terms", []) or []]
    V[separated, :] = np.nan  # not estimable: no interval, as logit reports them
    V[:, separated] = np.nan
    out = pd.DataFrame(V, index=fit.params.index, columns=fit.params.index)
    out.attrs["cluster_robust_cov"] = {"cluster": cluster, "n_clusters": G, "rows": n_rows}
    return out


cluster_robust_cov = _single_blas(_cluster_robust_cov)
cluster_robust_cov.__name__ = cluster_robust_cov.__qualname__ = "cluster_robust_cov"
