"""Formula logistic regression: MLE, ridge / lasso / elastic net, Firth; R-style results.

:func:`logit` fits ``refusal ~ persona + task + prompt + model`` (any R/Wilkinson
formula formulaic understands) to a tidy response table. Rows are collapsed to unique
covariate patterns with binomial counts (refusals, n) before fitting: the binomial
likelihood equals the Bernoulli one, so the paper's 2,032,160 rows cost ~6,500
patterns. Estimators:

* ``penalty=None``: maximum likelihood by iteratively reweighted least squares, step
  for step as R's ``glm.fit`` (same start, same convergence rule on the deviance,
  epsilon 1e-8, at most 25 iterations), Cholesky solves;
* ``penalty="firth"``: Jeffreys-prior (Firth 1993) bias reduction, finite under
  separation, with profile penalized-likelihood intervals and penalized
  likelihood-ratio p-values as R's ``logistf``;
* ``penalty="l2" | "l1" | "elasticnet"``: the glmnet objective
  ``-loglik/N + alpha * ((1 - l1_ratio)/2 * ||b||^2 + l1_ratio * ||b||_1)`` (intercept
  unpenalized) by proximal Newton with coordinate descent on the collapsed patterns;
  ``alpha="cv"`` picks alpha by K-fold cross-validation with folds grouped by
  ``cluster``.

Standard errors are model based, or cluster-robust (CR1) by ``cluster=`` (default
``"auto"``: ``item_id`` when items repeat); with clusters, ``anova()`` / ``drop1()`` are
CR1 Wald F tests on (q, G - 1) df instead of likelihood-ratio tests, which assume
independent rows. ``ci="bootstrap"`` resamples clusters (or rows). The maths is in
``docs/methods_logit.md``; ``benchmarks/calibration_logit.py`` measures the tests' level
and the intervals' coverage.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg, sparse, stats
from scipy.linalg import lapack
from scipy.special import expit, gammaln

from ..formula import (
    FormulaError,
    check_columns,
    collapse,
    fixed_design,
    new_design,
    parse_formula,
    prepare_factors,
)

__all__ = ["LogitResults", "SeparationWarning", "adjust_pvalues", "logit"]

_PENALTIES = (None, "l2", "l1", "elasticnet", "firth")


class SeparationWarning(UserWarning):
    """Complete or quasi-complete separation: some MLE coefficients diverge."""


# ============================================================================ numerics
def _log_p(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p and log(1 - p) for p = expit(eta), stable for large |eta|."""
    return -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta)


def _loglik(eta: np.ndarray, s: np.ndarray, n: np.ndarray) -> float:
    """Bernoulli log-likelihood of ``s`` successes out of ``n`` at linear predictor ``eta``."""
    lp, lq = _log_p(eta)
    f = n - s
    return float(np.sum(np.where(s > 0, s * lp, 0.0)) + np.sum(np.where(f > 0, f * lq, 0.0)))


def _chol(A: np.ndarray):
    """Cholesky factor of a symmetric positive definite matrix, or None."""
    try:
        return linalg.cho_factor(A, lower=True, check_finite=False)
    except (linalg.LinAlgError, ValueError):
        return None


def _solve_spd(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    c = _chol(A)
    if c is not None:
        return linalg.cho_solve(c, b, check_finite=False)
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _inv_chol(c) -> np.ndarray:
    """Inverse of a matrix from its (lower) Cholesky factor (LAPACK potri)."""
    inv, info = lapack.dpotri(c[0], lower=1)
    if info != 0:  # pragma: no cover - potri failing after a successful potrf
        return linalg.cho_solve(c, np.eye(len(c[0])), check_finite=False)
    return np.tril(inv) + np.tril(inv, -1).T


def _inv_spd(A: np.ndarray) -> np.ndarray:
    c = _chol(A)
    if c is not None:
        return _inv_chol(c)
    return np.linalg.pinv(A, hermitian=True)


def _single_blas(fn):
    """Run ``fn`` with one BLAS thread: the matrices here are small (p x p, K x p) and
    OpenBLAS threading costs far more than it saves on them (100x on a busy machine)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """One threadpoolctl controller for the process: finding the BLAS libraries reads
    /proc and costs ~10 ms, more than a whole small fit."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class _Ell:
    """A design matrix stored by its nonzeros per row (ELLPACK): ``idx``/``val`` (K x r).

    Dummy-coded designs have r = 1 + (number of factors) nonzeros per row, so
    ``X'WX``, ``Xb``, ``X'v`` and the hat diagonal cost O(K r^2) with plain NumPy
    gathers and bincounts instead of O(K p^2). Padding entries point at column p with
    value 0.
    """

    def __init__(self, idx: np.ndarray, val: np.ndarray, p: int):
        self.idx, self.val, self.p = idx, val, p
        r = idx.shape[1]
        self._pairs = (idx[:, :, None] * (p + 1) + idx[:, None, :]).reshape(len(idx), r * r)
        self._vv = (val[:, :, None] * val[:, None, :]).reshape(len(idx), r * r)

    @classmethod
    def from_dense(cls, X: np.ndarray) -> _Ell:
        _K, p = X.shape
        nz = X != 0
        r = max(int(nz.sum(1).max()), 1)
        order = np.argsort(~nz, axis=1, kind="stable")[:, :r]
        val = np.take_along_axis(X, order, axis=1)
        idx = np.where(val != 0, order, p)
        return cls(idx.astype(np.int64), np.where(val != 0, val, 0.0), p)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.idx), self.p)

    def __matmul__(self, b: np.ndarray) -> np.ndarray:
        bp = np.append(np.asarray(b, float), 0.0)
        return np.einsum("kr,kr->k", self.val, bp[self.idx])

    @property
    def T(self) -> _EllT:
        return _EllT(self)

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.idx.ravel(), weights=(self.val * v[:, None]).ravel(),
                           minlength=self.p + 1)[: self.p]

    def xtwx(self, w: np.ndarray) -> np.ndarray:
        vv = self._vv * w[:, None]
        P = self.p + 1
        out = np.bincount(self._pairs.ravel(), weights=vv.ravel(), minlength=P * P).reshape(P, P)
        return out[: self.p, : self.p]

    def quad(self, V: np.ndarray) -> np.ndarray:
        """diag(X V X') without forming X V."""
        P = self.p + 1
        Vp = np.zeros((P, P))
        Vp[: self.p, : self.p] = V
        g = Vp.ravel()[self._pairs].reshape(len(self.idx), self.idx.shape[1], -1)
        return np.einsum("kr,krs,ks->k", self.val, g, self.val)

    def colabs(self) -> np.ndarray:
        return np.bincount(self.idx.ravel(), weights=np.abs(self.val).ravel(), minlength=self.p + 1)[: self.p]

    def toarray(self) -> np.ndarray:
        out = np.zeros((len(self.idx), self.p + 1))
        np.put_along_axis(out, self.idx, self.val, axis=1)
        return out[:, : self.p]

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (rows, columns)
            rows, cols = key
            sub = self if (isinstance(rows, slice) and rows == slice(None)) else self[rows]
            cols = list(cols)
            remap = np.full(self.p + 1, len(cols), dtype=np.int64)
            remap[cols] = np.arange(len(cols))
            idx = remap[sub.idx]
            val = np.where(idx < len(cols), sub.val, 0.0)
            return _Ell(idx, val, len(cols))
        return _Ell(self.idx[key], self.val[key], self.p)


class _EllT:
    def __init__(self, X: _Ell):
        self.X = X

    def __matmul__(self, v: np.ndarray) -> np.ndarray:
        return self.X.rmatvec(np.asarray(v, float))


def _xtwx(X, w: np.ndarray) -> np.ndarray:
    """X' diag(w) X."""
    if isinstance(X, _Ell):
        return X.xtwx(w)
    return (X * w[:, None]).T @ X


def _fast(X: np.ndarray):
    """The nonzeros-per-row form of a mostly-zero design (dummy coding), else X itself."""
    if X.size > 5_000 and np.count_nonzero(X, axis=1).max() <= X.shape[1] // 3:
        return _Ell.from_dense(X)
    return X


def _colabs(X) -> np.ndarray:
    return X.colabs() if isinstance(X, _Ell) else np.abs(X).sum(0)


@dataclass
class _Start:
    """R's ``glm.fit`` starting point, summed to patterns (see :func:`_irls`)."""

    w: np.ndarray      # sum over rows of prior * mu0 (1 - mu0)
    wz: np.ndarray     # sum over rows of that weight times the working response
    dev: float         # deviance at mustart


def _irls(X, s, n, dev_sat=0.0, start: _Start | None = None, beta0=None, eps=1e-8, maxit=25,
          offset=None):
    """Maximum likelihood by IRLS, step for step as R's ``glm.fit`` (binomial, logit link).

    The first step starts from R's ``mustart`` (``start``: summed from the input rows;
    otherwise from the patterns) or from ``beta0``. Convergence:
    ``|dev - dev_old| / (|dev| + 0.1) < eps``. Returns ``(beta, iterations, converged)``.
    """
    K, _p = X.shape
    off = np.zeros(K) if offset is None else offset
    y = s / np.maximum(n, 1e-300)

    def dev_of(e):
        return 2.0 * (dev_sat - _loglik(e, s, n))

    def working(e):
        mu = expit(e)
        v = mu * (1 - mu)
        w = n * v
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (e - off) + np.where(v > 0, (y - mu) / np.where(v > 0, v, 1.0), 0.0)
        return w, w * z

    if beta0 is not None:
        eta = X @ np.asarray(beta0, float) + off
        dev_old = dev_of(eta)
        w, wz = working(eta)
    elif start is not None and offset is None:
        w, wz, dev_old = start.w, start.wz, start.dev
    else:
        mu0 = (s + 0.5) / (n + 1.0)
        eta0 = np.log(mu0 / (1 - mu0))
        v0 = mu0 * (1 - mu0)
        w = n * v0
        wz = w * (eta0 - off + (y - mu0) / v0)
        dev_old = dev_of(eta0)
    beta = None if beta0 is None else np.asarray(beta0, float).copy()
    converged = False
    it = 0
    for it in range(1, maxit + 1):
        if it > 1:
            w, wz = working(eta)
        beta_new = _solve_spd(_xtwx(X, w), X.T @ wz)
        eta_new = X @ beta_new + off
        dev = dev_of(eta_new)
        halvings = 0  # R halves the step while the deviance is not finite
        while not np.isfinite(dev) and beta is not None and halvings < 30:
            beta_new = 0.5 * (beta_new + beta)
            eta_new = X @ beta_new + off
            dev = dev_of(eta_new)
            halvings += 1
        beta, eta = beta_new, eta_new
        if abs(dev - dev_old) / (abs(dev) + 0.1) < eps:
            converged = True
            break
        dev_old = dev
    return beta, it, converged


def _firth_parts(X, s, n, beta):
    """Penalized log-likelihood, modified score and Fisher information at ``beta``."""
    eta = X @ beta
    p = expit(eta)
    w = n * p * (1 - p)
    info = _xtwx(X, w)
    c = _chol(info)
    jitter = 1e-12
    while c is None and jitter < 1.0:
        c = _chol(info + jitter * np.eye(len(info)) * max(1.0, float(np.abs(info).max())))
        jitter *= 100
    logdet = 2.0 * float(np.sum(np.log(np.diag(c[0]))))
    V = _inv_chol(c)
    if isinstance(X, _Ell):
        h = w * X.quad(V)
    else:
        h = w * np.einsum("ij,ij->i", X @ V, X)
    score = X.T @ (s - n * p + h * (0.5 - p))
    pll = _loglik(eta, s, n) + 0.5 * logdet
    return pll, score, info, c


def _firth(X, s, n, beta0=None, fixed: Mapping[int, float] | None = None, maxit=200, tol=1e-9,
           maxstep=5.0):
    """Firth-penalized MLE; coordinates in ``fixed`` are held at their values.

    Newton steps with the Fisher information on the free coordinates, step length
    capped at ``maxstep`` and halved until the penalized log-likelihood does not
    decrease (as logistf). Returns ``(beta, iterations, converged, penalized_loglik)``.
    """
    _K, p = X.shape
    fixed = dict(fixed or {})
    free = np.array([j for j in range(p) if j not in fixed], dtype=int)
    if beta0 is None:
        beta = np.zeros(p)
        if p:
            tot = float(np.sum(n))
            ybar = min(max(float(np.sum(s)) / tot, 1e-6), 1 - 1e-6)
            if np.allclose(X @ np.eye(p)[0], 1.0):
                beta[0] = np.log(ybar / (1 - ybar))
    else:
        beta = np.asarray(beta0, float).copy()
    for j, v in fixed.items():
        beta[j] = v
    pll, score, info, _ = _firth_parts(X, s, n, beta)
    converged = False
    it = 0
    for it in range(1, maxit + 1):
        if len(free) == 0:
            converged = True
            break
        g = score[free]
        delta = _solve_spd(info[np.ix_(free, free)], g)
        mx = float(np.max(np.abs(delta)))
        if mx > maxstep:
            delta *= maxstep / mx
        step = 1.0
        for _ in range(30):
            cand = beta.copy()
            cand[free] += step * delta
            pll_c, score_c, info_c, _ = _firth_parts(X, s, n, cand)
            if pll_c >= pll - 1e-10 * (1 + abs(pll)):
                break
            step *= 0.5
        beta, pll, score, info = cand, pll_c, score_c, info_c
        if float(np.max(np.abs(step * delta))) < tol or float(np.max(np.abs(score[free]))) < tol:
            converged = True
            break
    return beta, it, converged, pll


def _firth_profile_bound(X, s, n, beta_hat, pll_hat, j, q, upper, maxit=100, tol=1e-7):
    """One end of the profile penalized-likelihood interval for coefficient ``j``.

    Venzon & Moolgavkar (1988) iteration, as logistf: find ``beta`` with
    ``pll(beta) = pll_hat - q/2`` and the modified score zero in every coordinate but
    ``j``, then ``beta[j]`` is the bound. Returns ``(bound, converged)``.
    """
    target = pll_hat - q / 2.0
    beta = beta_hat.copy()
    sign = 1.0 if upper else -1.0
    e = np.zeros(len(beta))
    e[j] = 1.0
    others = np.arange(len(beta)) != j
    for _ in range(maxit):
        pll, score, _info, c = _firth_parts(X, s, n, beta)
        if abs(pll - target) < tol and (not others.any() or float(np.max(np.abs(score[others]))) < 1e-6):
            return float(beta[j]), True
        V = _inv_chol(c)
        uvu = float(score @ V @ score)
        lam2 = 2.0 * ((pll - target) + 0.5 * uvu) / V[j, j]
        lam = sign * np.sqrt(max(lam2, 0.0))
        delta = V @ (score + lam * e)
        mx = float(np.max(np.abs(delta)))
        if mx > 5.0:
            delta *= 5.0 / mx
        beta = beta + delta
    pll, score, _info, c = _firth_parts(X, s, n, beta)
    return float(beta[j]), abs(pll - target) < 1e-4


def _enet(X, s, n, lam, l1_ratio, penalized, beta0=None, maxit=100, tol=1e-10):
    """Minimise ``-loglik/N + lam * ((1-a)/2 ||b||^2 + a ||b||_1)`` (penalized coords only).

    Proximal Newton: a quadratic model of the log-likelihood at the current point
    (gradient and Fisher information of the collapsed binomial), minimised exactly
    (ridge: a linear solve) or by coordinate descent on its p x p Gram matrix (lasso /
    elastic net), with step halving on the objective. Returns ``(beta, iterations, converged)``.
    """
    _K, p = X.shape
    N = float(np.sum(n))
    pen = np.asarray(penalized, bool)
    l2 = N * lam * (1 - l1_ratio)
    l1 = N * lam * l1_ratio

    def objective(b, eta):
        return -_loglik(eta, s, n) + 0.5 * l2 * float(np.sum(b[pen] ** 2)) + l1 * float(np.sum(np.abs(b[pen])))

    if beta0 is None:
        beta = np.zeros(p)
        if not pen.all():
            ybar = min(max(float(np.sum(s)) / N, 1e-6), 1 - 1e-6)
            beta[np.flatnonzero(~pen)[0]] = np.log(ybar / (1 - ybar))
    else:
        beta = np.asarray(beta0, float).copy()
    eta = X @ beta
    obj = objective(beta, eta)
    converged = False
    it = 0
    P = np.diag(pen.astype(float)) * l2
    for it in range(1, maxit + 1):
        mu = expit(eta)
        H = _xtwx(X, n * mu * (1 - mu))
        g = X.T @ (s - n * mu)
        if l1 == 0:
            target = _solve_spd(H + P, H @ beta + g)
        else:
            bvec = H @ beta + g  # quadratic model: 0.5 b'Hb - bvec'b + penalties
            target = beta.copy()
            diagH = np.diag(H) + np.where(pen, l2, 0.0)
            for _sweep in range(10000):
                max_change = 0.0
                for k in range(p):
                    r = bvec[k] - H[k] @ target + H[k, k] * target[k]
                    if pen[k]:
                        new = np.sign(r) * max(abs(r) - l1, 0.0) / diagH[k] if diagH[k] > 0 else 0.0
                    else:
                        new = r / H[k, k] if H[k, k] > 0 else target[k]
                    ch = abs(new - target[k])
                    max_change = max(max_change, ch)
                    target[k] = new
                if max_change < 1e-13 * (1 + float(np.max(np.abs(target)))):
                    break
        delta = target - beta
        step = 1.0
        for _ in range(40):
            cand = beta + step * delta
            eta_c = X @ cand
            obj_c = objective(cand, eta_c)
            if obj_c <= obj + 1e-12 * (1 + abs(obj)):
                break
            step *= 0.5
        change = float(np.max(np.abs(cand - beta)))
        beta, eta, rel = cand, eta_c, (obj - obj_c) / (abs(obj_c) + 0.1)
        obj = obj_c
        if change < tol or (rel < 1e-15 and it > 1):
            converged = True
            break
    return beta, it, converged


# ============================================================================ p-values
def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple testing (Holm or Benjamini–Hochberg).

    NaN entries are left out of the family and stay NaN.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.02, 0.03], "holm").round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q)
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    elif method in ("bh", "fdr_bh"):
        adj = np.minimum.accumulate((m / np.arange(m, 0, -1)) * q[order][::-1])[::-1]
    else:
        raise ValueError(f"adjust must be 'holm' or 'bh', got {method!r}")
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def _signif(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, code in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return code
    return ""


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "NA"
    if p < 2e-16:
        return "<2e-16"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"


class _Text(str):
    """A string that prints as itself in a REPL (the R-style summary)."""

    def __repr__(self) -> str:  # pragma: no cover - display only
        return str(self)


# ============================================================================ data
@dataclass
class _Cluster:
    name: str
    labels: np.ndarray     # cluster label per cluster index
    g: np.ndarray          # cluster index per (cluster, pattern) pair
    j: np.ndarray          # pattern index per pair
    s: np.ndarray          # successes per pair
    n: np.ndarray          # trials per pair

    @property
    def n_clusters(self) -> int:
        return len(self.labels)


@dataclass
class _Design:
    X: np.ndarray              # dense design on the patterns
    Xf: object                 # the same, sparse when mostly zeros (for the solvers)
    s: np.ndarray
    n: np.ndarray
    names: list[str]
    spec: object
    patterns: pd.DataFrame
    variables: list[str]
    factors: dict[str, list]
    n_obs: int
    dev_sat: float
    ll_const: float
    start: _Start | None
    cluster: _Cluster | None = None
    inverse: np.ndarray | None = None
    row_pair: np.ndarray | None = None     # (cluster, pattern) pair of each input row (plain 0/1 rows)
    term_columns: dict[str, list[int]] = field(default_factory=dict)
    term_factors: dict[str, list[str]] = field(default_factory=dict)


def _check_response(y: pd.Series, name: str, trials: pd.Series | None) -> None:
    if trials is None:
        if pd.api.types.is_bool_dtype(y):
            return
        if not pd.api.types.is_numeric_dtype(y):
            raise ValueError(
                f"response '{name}' must be 0/1 (or True/False); it has dtype {y.dtype} with values "
                f"like {pd.unique(y)[:5].tolist()}. For aggregated counts pass trials='<column of n>'"
            )
        bad = ~y.isin([0, 1])
        if bad.any():
            raise ValueError(
                f"response '{name}' must hold only 0 and 1; found {int(bad.sum())} other value(s), e.g. "
                f"{pd.unique(y[bad])[:5].tolist()}. For counts of refusals out of n pass trials='n'"
            )
    else:
        yv = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        tv = pd.to_numeric(trials, errors="coerce").to_numpy(dtype=float)
        if np.isnan(yv).any() or np.isnan(tv).any():
            raise ValueError(f"response '{name}' and trials '{trials.name}' must be numeric without NaN")
        if (tv <= 0).any():
            raise ValueError(f"trials column '{trials.name}' must be positive; {int((tv <= 0).sum())} row(s) are not")
        if (yv < 0).any() or (yv > tv).any():
            raise ValueError(
                f"response '{name}' counts successes out of '{trials.name}': it must satisfy "
                f"0 <= {name} <= {trials.name}; {int(((yv < 0) | (yv > tv)).sum())} row(s) do not"
            )


def _build(formula: str, data: pd.DataFrame, reference, trials, weights, cluster, collapse_rows: bool
           ) -> tuple[_Design, object]:
    from ..table import SchemaError, validate

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    data = data.copy(deep=False)
    data.attrs = {}  # pandas deep-copies attrs on every operation; the simulator's are large
    parsed = parse_formula(formula)
    if parsed.random:
        raise FormulaError(
            f"logit() fits fixed effects only; the formula has random terms "
            f"{[str(t) for t in parsed.random]}. Use refusalstats.hierarchical() for those, or write "
            "the grouping as a fixed factor"
        )
    extra = [c for c in (trials, cluster) if c is not None]
    if isinstance(weights, str):
        extra.append(weights)
    check_columns(parsed, data, extra=extra)
    variables = [v for v in parsed.fixed_variables if v in data.columns]
    resp = parsed.response
    if resp in variables:
        raise FormulaError(f"the response '{resp}' also appears on the right-hand side of {formula!r}")
    # the input boundary: every problem at once (NaNs, one-level factors, bad 0/1 response)
    cols = list(dict.fromkeys([resp, *variables, *extra]))
    sub = data[cols]
    if trials is not None and resp == "refusal":
        sub = sub.rename(columns={resp: "__successes__"})
    levels_needed = [v for v in variables
                     if not pd.api.types.is_numeric_dtype(data[v]) or isinstance(data[v].dtype, pd.CategoricalDtype)
                     or v in (reference or {})]
    try:
        validate(sub, required=[c if not (trials is not None and c == "refusal") else "__successes__"
                                for c in cols],
                 predictors=[*variables, *([cluster] if cluster else [])], needs_levels=levels_needed)
    except SchemaError as exc:
        raise SchemaError([f"{p} (formula {formula!r})" for p in exc.problems]) from None
    _check_response(data[resp], resp, None if trials is None else data[trials])
    if isinstance(weights, str):
        w = data[weights].to_numpy(dtype=float)
    elif weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(data),):
            raise ValueError(f"weights must have one value per row ({len(data)}), got shape {w.shape}")
    else:
        w = None
    if w is not None and (np.isnan(w).any() or (w < 0).any()):
        raise ValueError("weights must be non-negative numbers without NaN")

    reference = dict(reference or {})
    unknown = [k for k in reference if k not in data.columns]
    if unknown:
        raise FormulaError(f"reference given for column(s) {unknown}, which are not in the data; "
                           f"columns: {list(data.columns)}")
    # a reference for a column the formula does not use has no effect (e.g. the paper's four)
    reference = {k: v for k, v in reference.items() if k in variables}
    frame = prepare_factors(data[[c for c in dict.fromkeys([resp, *variables, *extra])]],
                            variables, reference)
    yv = frame[resp].to_numpy(dtype=float)
    tv = np.ones(len(frame)) if trials is None else frame[trials].to_numpy(dtype=float)
    prior = tv if w is None else tv * w
    n_obs = int(len(frame) if w is None else np.count_nonzero(w))
    succ_total = float(np.sum(yv * (1 if w is None else w)))
    tot = float(np.sum(prior))
    if succ_total == 0 or succ_total == tot:
        raise ValueError(
            f"response '{resp}' is {'0' if succ_total == 0 else '1'} in every row ({tot:,.0f} rows): "
            "there is nothing to model. Check the response column and the rows you selected"
        )
    # saturated log-likelihood and the binomial-coefficient constant of the input rows
    if trials is None:
        dev_sat, ll_const = 0.0, 0.0
    else:
        ww = 1.0 if w is None else w
        sv, fv = yv, tv - yv
        with np.errstate(divide="ignore", invalid="ignore"):
            sat = np.where(sv > 0, sv * np.log(sv / tv), 0.0) + np.where(fv > 0, fv * np.log(fv / tv), 0.0)
        dev_sat = float(np.sum(ww * sat))
        ll_const = float(np.sum(ww * (gammaln(tv + 1) - gammaln(yv + 1) - gammaln(tv - yv + 1))))

    if collapse_rows:
        col = collapse(frame, variables, resp, trials=trials, weights=w)
        inverse = col.inverse
        patterns = col.patterns
    else:
        inverse = np.arange(len(frame))
        patterns = frame[variables].reset_index(drop=True).copy()
        patterns["successes"] = yv * (1 if w is None else w)
        patterns["trials"] = prior
    s = patterns["successes"].to_numpy(dtype=float)
    n = patterns["trials"].to_numpy(dtype=float)
    keep = n > 0
    if not keep.all():  # patterns whose rows all have weight 0
        patterns = patterns[keep].reset_index(drop=True)
        remap = np.cumsum(keep) - 1
        inverse = np.where(keep[inverse], remap[inverse], -1)
        s, n = s[keep], n[keep]
    # R's glm.fit start (mustart = (m y + 0.5)/(m + 1) per input row), summed to patterns
    ok = inverse >= 0
    K = len(patterns)
    succ_rows = yv * (1 if w is None else w)
    if trials is None and w is None:  # plain 0/1 rows: mustart is 3/4 or 1/4, in closed form
        z1 = np.log(3.0) + 4.0 / 3.0
        start_w = 0.1875 * n
        start_wz = 0.1875 * z1 * (2.0 * s - n)
        dev0 = -2.0 * len(yv) * np.log(0.75)
    else:
        m = prior
        ybar = np.where(prior > 0, yv / np.maximum(tv, 1e-300), 0.0)
        mu0 = (m * ybar + 0.5) / (m + 1.0)
        v0 = mu0 * (1 - mu0)
        w0 = prior * v0
        z0 = np.log(mu0 / (1 - mu0)) + (ybar - mu0) / v0
        start_w = np.bincount(inverse[ok], weights=w0[ok], minlength=K)
        start_wz = np.bincount(inverse[ok], weights=(w0 * z0)[ok], minlength=K)
        fail_rows = prior - succ_rows
        dev0 = 2.0 * (dev_sat - float(np.sum(succ_rows * np.log(mu0) + fail_rows * np.log1p(-mu0))))
    start = _Start(start_w, start_wz, dev0)

    X, names, spec = fixed_design(parsed.fixed, patterns[variables] if variables else patterns)
    if X.shape[0] != K:
        raise FormulaError(f"the design of {formula!r} lost rows ({X.shape[0]} of {K})")
    factors = {v: list(patterns[v].cat.categories) for v in variables
               if isinstance(patterns[v].dtype, pd.CategoricalDtype)}
    p = X.shape[1]
    if p > K:
        raise ValueError(
            f"the model has {p} coefficients but the data have only {K} distinct covariate pattern(s): "
            "the coefficients are not identifiable. Use fewer terms (e.g. drop an interaction) or more data"
        )
    gram = _xtwx(_fast(X), n / n.max())
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    gram = gram / scale[:, None] / scale[None, :]
    rank = np.linalg.matrix_rank(gram, tol=1e-10, hermitian=True)
    if rank < p:
        _, _, piv = linalg.qr(gram, pivoting=True)
        aliased = [names[i] for i in piv[rank:]]
        raise ValueError(
            f"the design of {formula!r} is rank deficient ({rank} of {p} columns independent): "
            f"coefficient(s) {aliased} are aliased with others (a constant numeric column, a "
            "level combination with no rows in an interaction, or collinear covariates). "
            "Remove or recode those terms"
        )
    term_columns: dict[str, list[int]] = {}
    term_factors: dict[str, list[str]] = {}
    for term, idx in spec.term_indices.items():
        key = str(term)
        term_columns[key] = list(idx)
        term_factors[key] = [str(f) for f in term.factors if str(f) != "1"]
    cl = None
    row_pair = None
    if cluster is not None:
        codes, uniq = pd.factorize(frame[cluster], sort=True)
        codes = codes.astype(np.int64)
        sel = ok & (prior > 0)
        key = codes[sel] * K + inverse[sel]
        ukey, pinv = np.unique(key, return_inverse=True)
        pinv = pinv.ravel()
        cl = _Cluster(
            name=cluster, labels=np.asarray(uniq),
            g=(ukey // K).astype(np.int64), j=(ukey % K).astype(np.int64),
            s=np.bincount(pinv, weights=succ_rows[sel], minlength=len(ukey)),
            n=np.bincount(pinv, weights=prior[sel], minlength=len(ukey)),
        )
        if cl.n_clusters < 2:
            raise ValueError(f"cluster column '{cluster}' has a single cluster; cluster-robust SEs need many")
        if trials is None and w is None and sel.all():
            row_pair = pinv.astype(np.int32 if len(ukey) < 2**31 else np.int64)
    design = _Design(X=X, Xf=_fast(X), s=s, n=n, names=names, spec=spec, patterns=patterns, variables=variables,
                     factors=factors, n_obs=n_obs, dev_sat=dev_sat, ll_const=ll_const, start=start,
                     cluster=cl, inverse=inverse, row_pair=row_pair, term_columns=term_columns, term_factors=term_factors)
    return design, parsed


# ============================================================================ separation
def _separation(d: _Design, beta: np.ndarray | None = None, bse: np.ndarray | None = None
                ) -> tuple[list[str], list[str]]:
    """Detect (quasi-)complete separation; returns (descriptions, separated term names).

    A linear program looks for a direction ``b != 0`` with ``x'b >= 0`` on patterns
    that are all refusals, ``x'b <= 0`` on patterns with none and ``x'b = 0`` on mixed
    ones (Konis 2007): one exists exactly when the MLE does not. The patterns the
    direction moves are described by the factor levels (or two-factor cells) whose
    rows they contain, with their row counts.
    """
    from scipy.optimize import linprog

    X, s, n = d.X, d.s, d.n
    K, p = X.shape
    succ = s >= n - 1e-9
    fail = s <= 1e-9
    mixed = ~(succ | fail)
    direction = None
    if K <= 100_000:
        c = -(X[succ].sum(0) - X[fail].sum(0))
        A_ub = np.vstack([-X[succ], X[fail]]) if (succ.any() or fail.any()) else None
        b_ub = np.zeros(A_ub.shape[0]) if A_ub is not None else None
        A_eq = X[mixed] if mixed.any() else None
        b_eq = np.zeros(int(mixed.sum())) if mixed.any() else None
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=[(-1, 1)] * p,
                      method="highs")
        if res.status == 0 and -res.fun > 1e-7:
            direction = res.x
        elif res.status != 0:
            direction = None
    sep_terms: list[str] = []
    if direction is not None:
        moved = np.abs(X @ direction) > 1e-7
        sep_terms = [nm for nm, v in zip(d.names, direction) if abs(v) > 1e-7]
    elif beta is not None and bse is not None:  # heuristic for very large designs
        big = (np.abs(beta) > 10) & ((bse > 100) | ~np.isfinite(bse))
        if not big.any():
            return [], []
        sep_terms = [nm for nm, b in zip(d.names, big) if b]
        moved = np.abs(d.X[:, big]).sum(1) > 0
        moved &= (succ | fail)
    else:
        return [], []
    pats = d.patterns
    desc: list[str] = []
    covered = np.zeros(K, bool)
    facs = list(d.factors)

    def describe(mask_rows, label):
        rows = float(n[mask_rows].sum())
        ref = float(s[mask_rows].sum())
        if ref == 0:
            return f"{label} has 0 refusals in {rows:,.0f} rows"
        return f"{label} has only refusals ({rows:,.0f} of {rows:,.0f} rows)"

    for f in facs:
        codes = pats[f].cat.codes.to_numpy()
        for li, lv in enumerate(d.factors[f]):
            m = codes == li
            if m.any() and moved[m].all() and (fail[m].all() or succ[m].all()):
                desc.append(describe(m, f"{f}={lv}"))
                covered |= m
    pairs = set()
    for fs in d.term_factors.values():
        fs = [x for x in fs if x in d.factors]
        for a in range(len(fs)):
            for b in range(a + 1, len(fs)):
                pairs.add((fs[a], fs[b]))
    for f1, f2 in sorted(pairs):
        c1 = pats[f1].cat.codes.to_numpy()
        c2 = pats[f2].cat.codes.to_numpy()
        for li in np.unique(c1[moved & ~covered]):
            for lj in np.unique(c2[moved & ~covered & (c1 == li)]):
                m = (c1 == li) & (c2 == lj)
                if moved[m].all() and (fail[m].all() or succ[m].all()):
                    desc.append(describe(m, f"{f1}={d.factors[f1][li]} & {f2}={d.factors[f2][lj]}"))
                    covered |= m
    rest = moved & ~covered
    if rest.any():
        desc.append(
            f"{int(rest.sum())} further covariate pattern(s) ({float(n[rest].sum()):,.0f} rows) are "
            f"separated along term(s) {sep_terms[:8]}{' ...' if len(sep_terms) > 8 else ''}"
        )
    return desc, sep_terms


# ============================================================================ results
class LogitResults:
    """A fitted logistic regression: estimates, uncertainty and tests, R style.

    Attributes
    ----------
    params, bse, zvalues, pvalues : Series
        Estimates, standard errors, Wald z statistics and p-values by term name
        (``statistic`` is the one behind the p-value: z, or Firth's penalized LR
        chi-square; ridge / lasso / elastic net have no p-values).
    p_method : str
        "wald", "plr" (penalized likelihood ratio) or "none".
    loglik, loglik_null, deviance, null_deviance, aic, bic : float
        Log-likelihood (unpenalized; R's, with binomial constants for ``trials=``
        input), of the null model, deviances and information criteria as R.
    pseudo_r2 : float
        McFadden's ``1 - l(b) / l_0`` on the row-level Bernoulli log-likelihood
        (unpenalized, at the fitted coefficients; ``l_0`` intercept-only): the same for
        rows and ``trials=`` input, in [0, 1] (a Firth fit below the null reports 0 and a note).
    iterations : int
        Newton / Fisher scoring iterations of the fit.
    separation : list of str
        Separated levels or cells found after the fit (empty when none).
    reference : dict
        Reference level of every factor (treatment coding).
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    # -------------------------------------------------------------- basics
    def __repr__(self) -> str:
        return (f"<LogitResults {self.formula!r}: {len(self.params)} coefficients, "
                f"penalty={self.penalty}, {self.n_obs:,} rows in {self.n_patterns:,} patterns>")

    @property
    def zvalues(self) -> pd.Series:
        """Wald z = estimate / SE (NaN for ridge / lasso / elastic net: no test holds there)."""
        if self.p_method == "none":
            return pd.Series(np.nan, index=self.params.index, name="z")
        return (self.params / self.bse).rename("z")

    @property
    def statistic(self) -> pd.Series:
        """The statistic behind each p-value: Wald z (``p_method="wald"``), the penalized
        likelihood-ratio chi-square on 1 df (``"plr"``, Firth without clusters), or NaN."""
        return pd.Series(self._stat, index=self.params.index, name=self._stat_column or "statistic")

    @property
    def _stat_column(self) -> str | None:
        return {"wald": "z", "plr": "chisq"}.get(self.p_method)

    @property
    def _p_test(self) -> str:
        if self.p_method == "plr":
            return "penalized likelihood-ratio chi-square (1 df), as logistf"
        if self.p_method == "wald":
            return "Wald z" + (f" with the CR1 covariance by '{self.cluster}'" if self.cluster else "")
        return "none (penalized estimates have no frequentist test)"

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the estimates (model based or cluster-robust)."""
        return pd.DataFrame(self._cov, index=self.params.index, columns=self.params.index)

    def conf_int(self) -> pd.DataFrame:
        """Intervals at level ``conf`` (columns ``ci_low``, ``ci_high``); ``ci_method`` says
        what they are (confidence, posterior, bootstrap)."""
        return self._ci.copy()

    def _no_tests(self, what: str) -> ValueError:
        name = {"l2": "ridge", "l1": "lasso", "elasticnet": "elastic net"}.get(self.penalty, self.penalty)
        return ValueError(
            f"{what}: penalty={self.penalty!r} ({name}) gives no p-values or tests — a penalized estimate "
            "is biased toward 0 and has no valid frequentist null distribution. Refit with penalty=None "
            "or penalty='firth' for tests; the intervals here are "
            + ("posterior / sandwich intervals of the shrunken estimate" if self.penalty == "l2"
               else "bootstrap intervals (ci='bootstrap') or none")
        )

    def coef_table(self, adjust: str | None = None, family: str = "term") -> pd.DataFrame:
        """Coefficient table with CIs and odds ratios.

        Columns ``term, estimate, std_error``, the test statistic (``z`` for Wald tests,
        ``chisq`` for Firth's penalized likelihood-ratio tests), ``p``, ``ci_low``,
        ``ci_high``, odds ratios and ``separated``; ``attrs["test"]`` names the test.
        Ridge / lasso / elastic-net fits have no statistic or p-value columns.

        Parameters
        ----------
        adjust : {"holm", "bh"}, optional
            Adjust p-values within families of coefficients (column ``p_adj``).
        family : {"term", "all"}
            A family is each formula term's coefficients (e.g. all persona levels), or
            all coefficients but the intercept.

        Examples
        --------
        >>> fit.coef_table(adjust="holm")  # doctest: +SKIP
        """
        if family not in ("term", "all"):
            raise ValueError(f"family must be 'term' or 'all', got {family!r}")
        if adjust is not None and self.p_method == "none":
            raise self._no_tests("coef_table(adjust=...)")
        ci = self._ci
        cols = {"term": self.params.index, "estimate": self.params.to_numpy(),
                "std_error": self.bse.to_numpy()}
        if self._stat_column is not None:
            cols[self._stat_column] = np.asarray(self._stat, float)
            cols["p"] = self.pvalues.to_numpy()
        cols.update({"ci_low": ci["ci_low"].to_numpy(), "ci_high": ci["ci_high"].to_numpy()})
        tab = pd.DataFrame(cols)
        tab["odds_ratio"] = np.exp(tab["estimate"])
        tab["or_ci_low"] = np.exp(tab["ci_low"])
        tab["or_ci_high"] = np.exp(tab["ci_high"])
        tab["separated"] = tab["term"].isin(self.separated_terms)
        if adjust is not None:
            padj = np.full(len(tab), np.nan)
            groups = self._term_of if family == "term" else {nm: "all" for nm in tab["term"]}
            fam = tab["term"].map(groups)
            for key in fam.dropna().unique():
                if key == "1":
                    continue
                m = (fam == key).to_numpy() & (tab["term"] != "Intercept").to_numpy()
                padj[m] = adjust_pvalues(tab["p"].to_numpy()[m], adjust)
            tab["p_adj"] = padj
        tab.attrs["test"] = self._p_test
        tab.attrs["intervals"] = self.ci_method
        return tab

    @property
    def odds_ratios(self) -> pd.Series:
        return np.exp(self.params)

    # -------------------------------------------------------------- summary
    def summary(self) -> str:
        """The fit printed like R's ``summary(glm(..., family = binomial))``.

        The statistic column is the one behind the p-value: ``z value`` for Wald tests,
        ``Chisq`` (with ``Pr(>Chisq)``) for Firth's penalized likelihood-ratio tests, as
        logistf prints them; ridge / lasso / elastic net show neither (nor stars).
        """
        tab = self.coef_table()
        testing = self._stat_column is not None

        def num(v, f):
            return "NA" if not np.isfinite(v) else format(v, f)

        pct = f"{100 * self.conf:g}%"
        cols = [("", list(tab["term"]), "l"), ("Estimate", [f"{v:.5g}" for v in tab["estimate"]], "r"),
                ("Std. Error", [num(v, ".5g") for v in tab["std_error"]], "r")]
        if testing:
            if self.p_method == "plr":
                cols += [("Chisq", [num(v, ".3f") for v in tab["chisq"]], "r"),
                         ("Pr(>Chisq)", [_fmt_p(v) for v in tab["p"]], "r")]
            else:
                cols += [("z value", [num(v, ".3f") for v in tab["z"]], "r"),
                         ("Pr(>|z|)", [_fmt_p(v) for v in tab["p"]], "r")]
            codes = [_signif(v) + (" (sep)" if sep else "") for v, sep in zip(tab["p"], tab["separated"])]
        else:
            codes = [("(sep)" if sep else "") for sep in tab["separated"]]
        cols.append(("", codes, "l"))
        cols += [(f"{pct} low", [num(v, ".4g") for v in tab["ci_low"]], "r"),
                 (f"{pct} high", [num(v, ".4g") for v in tab["ci_high"]], "r")]
        widths = [max(len(h), *(len(str(x)) for x in vals)) for h, vals, _ in cols]

        def fmt(cells):
            return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                             for c, w, (_, _, a) in zip(cells, widths, cols)).rstrip()

        lines = ["", "Call:", f"logit(formula = {self.formula!r}{self._call_extra})", ""]
        if self.penalty is None:
            pen = "none (maximum likelihood)"
        elif self.penalty == "firth":
            pen = "Firth (Jeffreys prior)"
        else:
            pen = {"l2": "ridge", "l1": "lasso", "elasticnet": "elastic net"}[self.penalty]
            pen += f", alpha = {self.alpha:.4g}" + (f", l1_ratio = {self.l1_ratio:g}"
                                                    if self.penalty == "elasticnet" else "")
        lines.append(f"Penalty: {pen}")
        lines.append(f"Standard errors: {self.cov_type}; intervals: {self.ci_method}")
        lines.append(f"Tests: {self._p_test}")
        lines += ["", "Coefficients:", fmt([h for h, _, _ in cols])]
        lines += [fmt([vals[i] for _, vals, _ in cols]) for i in range(len(tab))]
        if testing:
            lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
        else:
            lines += ["---", ("No p-values: a penalized estimate is biased toward 0 and has no valid "
                              "frequentist test (refit with penalty=None or 'firth' for tests).")]
        lines += ["", "(Dispersion parameter for binomial family taken to be 1)", "",
                  f"    Null deviance: {self.null_deviance:.{_dp(self.null_deviance)}f}  on {self.df_null}  degrees of freedom",
                  f"Residual deviance: {self.deviance:.{_dp(self.deviance)}f}  on {self.df_resid}  degrees of freedom",
                  (f"AIC: {self.aic:.{_dp(self.aic)}f}   BIC: {self.bic:.{_dp(self.bic)}f}   "
                  f"McFadden pseudo-R2: {self.pseudo_r2:.4f}")]
        if self.penalty == "firth":
            lines.append(f"Penalized log-likelihood: {self.penalized_loglik:.4f} (deviance/AIC use the "
                         "unpenalized log-likelihood)")
        lines += ["", (f"Number of {'Fisher Scoring' if self.penalty is None else 'Newton'} iterations: "
                  f"{self.iterations}{'' if self.converged else ' (did NOT converge)'}"),
                  f"{self.n_obs:,} rows in {self.n_patterns:,} covariate patterns"
                  + (f"; {self.n_clusters:,} clusters of '{self.cluster}'" if self.cluster else "")]
        if self.separation:
            lines += ["", "Separation (the maximum likelihood estimate does not exist for the terms "
                      "marked 'sep'):" if self.penalty is None else
                      "Separation in the data (the penalty keeps the estimates finite):"]
            lines += [f"  - {t}" for t in self.separation]
            if self.penalty is None:
                lines.append("  Their estimates are where the fit stopped, not estimates; refit with "
                             "penalty='firth' (or 'l2') for finite values.")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return _Text("\n".join(lines) + "\n")

    # -------------------------------------------------------------- tests
    def _refit_dropping(self, cols: list[int]) -> tuple[float, int]:
        """Log-likelihood (penalized for Firth) with columns ``cols`` removed/fixed at 0."""
        d = self._design
        if self.penalty == "firth":
            beta0 = self.params.to_numpy().copy()
            beta0[cols] = 0.0
            _, _, _, pll = _firth(d.Xf, d.s, d.n, beta0=beta0, fixed={c: 0.0 for c in cols})
            return pll, len(cols)
        keep = [j for j in range(d.X.shape[1]) if j not in set(cols)]
        Xr = d.Xf[:, keep]
        if Xr.shape[1] == 0:
            return _loglik(np.zeros(len(d.s)), d.s, d.n), len(cols)
        beta, _, _ = _irls(Xr, d.s, d.n, dev_sat=d.dev_sat, start=d.start)
        return _loglik(Xr @ beta, d.s, d.n), len(cols)

    def _check_tests(self, what: str):
        if self.penalty not in (None, "firth"):
            raise self._no_tests(what)

    def _wald_label(self) -> str:
        G = self._design.cluster.n_clusters
        return (f"cluster-robust Wald F by '{self.cluster}' (CR1 covariance, F = W/q on (q, G-1) = "
                f"(q, {G - 1}) df, G = {G} clusters)")

    def _cluster_test(self, term: str, cols: list[int], beta: np.ndarray, V: np.ndarray,
                      separated: bool) -> dict:
        G = self._design.cluster.n_clusters
        if separated:
            return {"term": term, "df": float(len(cols)), "df_resid": float(G - 1), "F": np.nan,
                    "p_value": np.nan, "note": "separated coefficient(s): the maximum likelihood estimate "
                    "does not exist, so no Wald test; refit with penalty='firth'"}
        return {"term": term, **_wald_f(beta, V, G)}

    def _cluster_frame(self, rows: list[dict]) -> pd.DataFrame:
        out = pd.DataFrame(rows, columns=["term", "df", "df_resid", "F", "p_value", "note"])
        out.attrs["test"] = self._wald_label()
        return out

    @_single_blas
    def drop1(self) -> pd.DataFrame:
        """Test of each term as a whole, dropped from the full model (marginality respected).

        * Unclustered maximum likelihood: R's ``drop1(fit, test = "LRT")``; columns
          ``term, df, deviance, lr, p_value``.
        * Unclustered Firth: the penalized likelihood ratio with the full model's penalty
          (logistf's ``drop1``); same columns (``deviance`` NaN).
        * Clustered (``cluster=``): the likelihood ratio assumes independent rows and is
          not shown. Each term gets the cluster-robust Wald test
          ``W = b' V_CR1^-1 b`` with ``F = W / q`` on ``(q, G - 1)`` df (Cameron & Miller
          2015; Stata's ``test`` after ``vce(cluster)``); columns
          ``term, df, df_resid, F, p_value, note``. A singular CR1 block is inverted by
          pseudo-inverse with ``q`` its rank (noted); with ``q > G - 1`` the test is not
          available (NaN, noted).

        ``attrs["test"]`` names the test. Ridge / lasso / elastic net: no tests (error).

        Examples
        --------
        >>> fit.drop1()  # doctest: +SKIP
        """
        self._check_tests("drop1()")
        d = self._design
        terms = [t for t in d.term_columns if t != "1"]
        kept = [t for t in terms if not any(u != t and set(d.term_factors[t]) < set(d.term_factors[u])
                                            for u in terms)]
        if self.cluster is not None:
            beta = self.params.to_numpy()
            V = self._cov_cluster
            sep = {self.params.index.get_loc(nm) for nm in self.separated_terms} if self.penalty is None \
                else set()
            return self._cluster_frame([
                self._cluster_test(t, d.term_columns[t], beta[d.term_columns[t]],
                                   V[np.ix_(d.term_columns[t], d.term_columns[t])],
                                   bool(sep & set(d.term_columns[t])))
                for t in kept])
        full = self.penalized_loglik if self.penalty == "firth" else self.loglik - self._ll_const
        out = []
        for t in kept:
            ll, df_ = self._refit_dropping(d.term_columns[t])
            lr = max(2.0 * (full - ll), 0.0)
            out.append({"term": t, "df": df_, "deviance": 2.0 * (d.dev_sat - ll) if self.penalty is None else np.nan,
                        "lr": lr, "p_value": float(stats.chi2.sf(lr, df_))})
        res = pd.DataFrame(out, columns=["term", "df", "deviance", "lr", "p_value"])
        res.attrs["test"] = ("penalized likelihood ratio (chi-square), full model's penalty" if self.penalty
                             == "firth" else "likelihood ratio (chi-square), as R's drop1(test = 'LRT')")
        return res

    @_single_blas
    def anova(self) -> pd.DataFrame:
        """Sequential tests: terms added in formula order, each given those before it.

        * Unclustered maximum likelihood: R's ``anova(fit, test = "Chisq")``; columns
          ``term, df, deviance, resid_df, resid_dev, p_value`` with a ``NULL`` first row.
        * Unclustered Firth: each row is the penalized likelihood ratio of fixing that
          term's coefficients (and those of later terms) at zero.
        * Clustered: row ``k`` fits the model with the first ``k`` terms (same estimator)
          and gives the cluster-robust Wald F test of term ``k`` in it, as :meth:`drop1`
          (columns ``term, df, df_resid, F, p_value, note``). No likelihood ratio is shown.

        ``attrs["test"]`` names the test. Ridge / lasso / elastic net: no tests (error).
        """
        self._check_tests("anova()")
        d = self._design
        terms = list(d.term_columns)
        has_int = "1" in terms
        order = [t for t in terms if t != "1"]
        if self.cluster is not None:
            return self._cluster_frame(self._sequential_wald(order, has_int))
        rows = []
        prev_ll = None
        prev_df = None
        for k in range(len(order) + 1):
            incl = (["1"] if has_int else []) + order[:k]
            cols = [c for t in incl for c in d.term_columns[t]]
            drop = [j for j in range(d.X.shape[1]) if j not in set(cols)]
            if drop:
                ll, _ = self._refit_dropping(drop)
            else:
                ll = self.penalized_loglik if self.penalty == "firth" else self.loglik - self._ll_const
            dev = 2.0 * (d.dev_sat - ll)
            df_resid = self.n_obs - len(cols)
            if k == 0:
                rows.append({"term": "NULL", "df": np.nan, "deviance": np.nan, "resid_df": df_resid,
                             "resid_dev": dev, "p_value": np.nan})
            else:
                lr = max(2.0 * (ll - prev_ll), 0.0)
                dfk = prev_df - df_resid
                rows.append({"term": order[k - 1], "df": dfk, "deviance": lr, "resid_df": df_resid,
                             "resid_dev": dev, "p_value": float(stats.chi2.sf(lr, dfk))})
            prev_ll, prev_df = ll, df_resid
        res = pd.DataFrame(rows)
        res.attrs["test"] = ("penalized likelihood ratio (chi-square), full model's penalty" if self.penalty
                             == "firth" else "likelihood ratio (chi-square), as R's anova(test = 'Chisq')")
        return res

    def _sequential_wald(self, order: list[str], has_int: bool) -> list[dict]:
        """Cluster-robust Wald F of each term in the model of the terms up to it."""
        d = self._design
        cl = d.cluster
        sep_full = {self.params.index.get_loc(nm) for nm in self.separated_terms} if self.penalty is None \
            else set()
        rows = []
        beta_prev = None
        for k in range(1, len(order) + 1):
            incl = (["1"] if has_int else []) + order[:k]
            cols = [c for t in incl for c in d.term_columns[t]]
            tested = d.term_columns[order[k - 1]]
            pos = [cols.index(c) for c in tested]
            if k == len(order):
                beta, V = self.params.to_numpy(), self._cov_cluster
                b_t, V_t = beta[tested], V[np.ix_(tested, tested)]
            else:
                Xs = d.X[:, cols]
                Xsf = d.Xf[:, cols]
                start = None if beta_prev is None else np.append(beta_prev, np.zeros(len(cols) - len(beta_prev)))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if self.penalty == "firth":
                        bs, _, _, _ = _firth(Xsf, d.s, d.n, beta0=start)
                    else:
                        bs, _, _ = _irls(Xsf, d.s, d.n, dev_sat=d.dev_sat, start=d.start)
                beta_prev = bs
                mu = expit(Xs @ bs)
                bread = _inv_spd(_xtwx(Xsf, d.n * mu * (1 - mu)))
                Vs = _cr1(Xs, cl, bs, bread, d.n_obs)
                b_t, V_t = bs[pos], Vs[np.ix_(pos, pos)]
            rows.append(self._cluster_test(order[k - 1], tested, b_t, V_t, bool(sep_full & set(tested))))
        return rows

    # -------------------------------------------------------------- prediction
    def _new_X(self, newdata: pd.DataFrame) -> np.ndarray:
        d = self._design
        missing = [v for v in d.variables if v not in newdata.columns]
        if missing:
            raise FormulaError(f"newdata lacks column(s) {missing} used by {self.formula!r}")
        nd = newdata[d.variables].copy()
        for v, levels in d.factors.items():
            vals = nd[v]
            known = pd.Index(levels)
            as_str = {str(x): x for x in levels}
            mapped = vals.map(lambda x, _k=known, _s=as_str: x if x in _k else _s.get(str(x), x))
            bad = ~mapped.isin(known)
            if bad.any():
                raise ValueError(
                    f"column '{v}' of newdata has level(s) {pd.unique(mapped[bad]).tolist()[:5]} the model "
                    f"was not fitted on; fitted levels: {levels}"
                )
            nd[v] = pd.Categorical(mapped, categories=levels)
        if nd.isna().any().any():
            raise ValueError("newdata has missing values in the model's columns")
        return new_design(d.spec, nd)

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "response") -> np.ndarray:
        """Predicted refusal probability (``type="response"``) or log-odds (``"link"``).

        New data reuse the fitted factor levels; an unknown level is an error.

        Examples
        --------
        >>> fit.predict(pd.DataFrame({"persona": ["Man"], "task": ["nli"], ...}))  # doctest: +SKIP
        """
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        X = self._design.X if newdata is None else self._new_X(newdata)
        eta = X @ self.params.to_numpy()
        if newdata is None:  # one value per input row (NaN for rows with weight 0)
            inv = self._design.inverse
            eta = np.where(inv >= 0, eta[np.maximum(inv, 0)], np.nan)
        return expit(eta) if type == "response" else eta

    @_single_blas
    def marginal_means(self, factor: str, by: str | None = None, conf: float | None = None) -> pd.DataFrame:
        """Average predicted refusal probability per level of ``factor`` (emmeans style).

        For each level, every observed row is set to that level and the predicted
        probabilities are averaged over the observed distribution of the other
        predictors (within each level of ``by``). Intervals by the delta method on the
        logit of the mean, with the fit's covariance (model based or CR1).

        Examples
        --------
        >>> fit.marginal_means("persona")  # doctest: +SKIP
        """
        d = self._design
        if factor not in d.factors:
            raise ValueError(f"'{factor}' is not a factor of the model; factors: {list(d.factors)}")
        if by is not None and by not in d.factors:
            raise ValueError(f"by='{by}' is not a factor of the model; factors: {list(d.factors)}")
        conf = self.conf if conf is None else conf
        zq = stats.norm.ppf(0.5 + conf / 2)
        beta = self.params.to_numpy()
        V = self._cov
        pats = d.patterns
        groups = [(None, np.ones(len(pats), bool))] if by is None else [
            (lv, (pats[by].cat.codes == i).to_numpy()) for i, lv in enumerate(d.factors[by])]
        out = []
        for lv in d.factors[factor]:
            newp = pats[d.variables].copy()
            newp[factor] = pd.Categorical([lv] * len(newp), categories=d.factors[factor])
            Xl = new_design(d.spec, newp)
            pr = expit(Xl @ beta)
            for g, m in groups:
                if factor == by and g != lv:
                    continue
                wts = d.n[m] / d.n[m].sum()
                mean = float(wts @ pr[m])
                grad = (wts * pr[m] * (1 - pr[m])) @ Xl[m]
                se = float(np.sqrt(max(grad @ V @ grad, 0.0)))
                lg = np.log(mean / (1 - mean))
                se_l = se / (mean * (1 - mean))
                row = {factor: lv}
                if by is not None:
                    row[by] = g
                row.update({"prob": mean, "std_error": se, "ci_low": float(expit(lg - zq * se_l)),
                            "ci_high": float(expit(lg + zq * se_l))})
                out.append(row)
        return pd.DataFrame(out)


def _dp(x: float) -> int:
    return 2 if abs(x) >= 100 else 4


# ============================================================================ main entry
def logit(
    formula: str,
    data: pd.DataFrame,
    reference: Mapping[str, object] | None = None,
    penalty: str | None = None,
    alpha: float | str | None = None,
    l1_ratio: float | None = None,
    cluster: str | None = "auto",
    weights: str | np.ndarray | None = None,
    ci: str | None = None,
    conf: float = 0.95,
    *,
    trials: str | None = None,
    n_boot: int = 999,
    n_folds: int = 5,
    seed: int = 0,
    collapse: bool = True,
    maxit: int = 25,
    epsilon: float = 1e-8,
    progress: bool = True,
) -> LogitResults:
    """Fit a logistic regression from an R formula, on collapsed covariate patterns.

    Parameters
    ----------
    formula : str
        ``"refusal ~ persona + task + prompt + model"``; interactions (``persona:model``,
        ``persona*task``), ``C()`` and numeric covariates as in R / formulaic.
    data : DataFrame
        The tidy response table (or any table with the formula's columns).
    reference : mapping, optional
        Treatment-coding reference level per factor, e.g. the paper's
        ``{"persona": "Atheist", "prompt": "p1", "task": "nli", "model": "Llama2-13B"}``
        (``refusalstats.simulate.PAPER_REFERENCE``). Default: first level of a
        categorical, else the alphabetically first (R's default).
    penalty : {None, "firth", "l2", "l1", "elasticnet"}
        None: maximum likelihood. "firth": Jeffreys-prior bias reduction (finite under
        separation; profile penalized-likelihood CIs). "l2"/"l1"/"elasticnet": glmnet's
        objective with strength ``alpha`` (intercept unpenalized).
    alpha : float or "cv"
        Penalty strength for "l2"/"l1"/"elasticnet"; "cv" chooses it by K-fold
        cross-validation (folds grouped by ``cluster`` when given).
    l1_ratio : float, optional
        Elastic-net mixing in (0, 1) (default 0.5 for "elasticnet").
    cluster : "auto", str or None
        Column of clusters (e.g. ``"item_id"``): CR1 cluster-robust covariance,
        cluster-robust Wald F tests in ``anova()`` / ``drop1()``, the unit resampled by
        ``ci="bootstrap"`` and grouped by cross-validation. ``"auto"`` (default): by
        ``item_id`` when the table has it and items repeat (a one-line
        :class:`~refusalstats.ClusterNote` says so), else none. ``None``: rows are
        independent (R's ``glm`` tests).
    weights : str or array, optional
        Frequency weights per row (a column name or an array).
    ci : {"wald", "profile", "bootstrap", "none"}, optional
        Interval method. Default: "profile" for Firth without ``cluster``, "wald" for
        MLE (and for Firth with ``cluster``: CR1 Wald), "none" for lasso / elastic net
        (no Wald interval holds there; use "bootstrap").
    conf : float
        Confidence level (default 0.95).
    trials : str, optional
        The response counts refusals out of ``data[trials]`` (aggregated input).
    n_boot, seed : int
        Bootstrap replicates and seed (``ci="bootstrap"``; ``seed`` also sets CV folds).
    n_folds : int
        Cross-validation folds for ``alpha="cv"``.
    collapse : bool
        Fit on unique covariate patterns (default). False fits on the rows (same
        result; for checking).
    maxit, epsilon : int, float
        IRLS iteration limit and convergence tolerance on the deviance (R's defaults).
    progress : bool
        Show a progress bar for the bootstrap and cross-validation.

    Returns
    -------
    LogitResults

    Examples
    --------
    >>> import refusalstats as rs
    >>> from refusalstats.simulate import PAPER_REFERENCE
    >>> df = rs.simulate_paper(scale=0.02, calibrate="table7", item_sd=0)
    >>> fit = rs.logit("refusal ~ persona + task + prompt + model", df,
    ...                reference=PAPER_REFERENCE, penalty="firth", ci="wald")
    >>> round(float(fit.params["task[T.offensiveness]"]), 1)  # doctest: +SKIP
    4.2
    """
    from .._validation import resolve_cluster

    cluster = _one_cluster(resolve_cluster(data, cluster, where="logit"))  # its note points at the caller
    return _fit(formula, data, reference, penalty, alpha, l1_ratio, cluster, weights, ci, conf,
                trials=trials, n_boot=n_boot, n_folds=n_folds, seed=seed, collapse=collapse, maxit=maxit,
                epsilon=epsilon, progress=progress)


def _one_cluster(resolved) -> str | None:
    """The resolved ``cluster=``: logit clusters by one column."""
    if resolved is None or isinstance(resolved, str):
        return resolved
    if len(resolved) == 1:
        return resolved[0]
    raise ValueError(
        f"logit: cluster-robust covariance by one column only, got {list(resolved)}; for nested "
        "clusters pass the outer one (e.g. 'item_id'), for crossed ones combine them into one key column"
    )


@_single_blas
def _fit(formula, data, reference, penalty, alpha, l1_ratio, cluster, weights, ci, conf, *, trials, n_boot,
         n_folds, seed, collapse, maxit, epsilon, progress) -> LogitResults:
    """The body of :func:`logit`, with ``cluster`` resolved (one BLAS thread)."""
    if penalty not in _PENALTIES:
        raise ValueError(f"penalty must be one of {list(_PENALTIES)}, got {penalty!r}")
    if not (0 < conf < 1):
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    if penalty in ("l2", "l1", "elasticnet"):
        if alpha is None:
            raise ValueError(f"penalty={penalty!r} needs alpha=<strength> (glmnet's lambda) or alpha='cv'")
        if not (alpha == "cv" or (isinstance(alpha, (int, float)) and alpha >= 0)):
            raise ValueError(f"alpha must be a non-negative number or 'cv', got {alpha!r}")
        if penalty == "l2":
            if l1_ratio not in (None, 0, 0.0):
                raise ValueError("penalty='l2' has l1_ratio 0; use penalty='elasticnet' to mix")
            l1_ratio = 0.0
        elif penalty == "l1":
            l1_ratio = 1.0
        else:
            l1_ratio = 0.5 if l1_ratio is None else float(l1_ratio)
            if not (0 < l1_ratio < 1):
                raise ValueError(f"l1_ratio must be in (0, 1) for elastic net, got {l1_ratio}")
    elif alpha is not None or l1_ratio is not None:
        raise ValueError(f"alpha / l1_ratio apply to penalty 'l2', 'l1' or 'elasticnet', not {penalty!r}")
    if ci is None:
        if penalty == "firth":
            ci = "wald" if cluster else "profile"
        elif penalty in ("l1", "elasticnet"):
            ci = "none"
        else:
            ci = "wald"
    if ci not in ("wald", "profile", "bootstrap", "none"):
        raise ValueError(f"ci must be 'wald', 'profile', 'bootstrap' or 'none', got {ci!r}")
    if ci == "wald" and penalty in ("l1", "elasticnet"):
        raise ValueError(
            f"no Wald interval holds for penalty={penalty!r} (the estimator is not asymptotically normal "
            "around the truth); use ci='bootstrap' or ci='none'"
        )
    if ci == "profile" and penalty not in (None, "firth"):
        raise ValueError("profile intervals are available for penalty=None or 'firth'")
    d, _parsed = _build(formula, data, reference, trials, weights, cluster, collapse)
    opts = {"formula": formula, "reference": reference, "penalty": penalty, "alpha": alpha,
            "l1_ratio": l1_ratio, "cluster": cluster, "ci": ci, "conf": conf, "n_boot": n_boot,
            "n_folds": n_folds, "seed": seed, "maxit": maxit, "epsilon": epsilon, "progress": progress}
    return _estimate(d, **opts)


def _estimate(d: _Design, *, formula, reference, penalty, alpha, l1_ratio, cluster, ci, conf, n_boot, n_folds,
              seed, maxit, epsilon, progress) -> LogitResults:
    """Fit, covariance, tests and intervals on a built design (``_fit`` after ``_build``)."""
    notes: list[str] = []
    X, s, n = d.Xf, d.s, d.n
    K, p = X.shape
    names = d.names
    N = float(np.sum(n))
    pen_mask = np.array([nm != "Intercept" for nm in names])

    # ---------------------------------------------------------------- fit
    penalized_ll = np.nan
    cv_table = None
    if penalty is None:
        beta, iters, conv = _irls(X, s, n, dev_sat=d.dev_sat, start=d.start, eps=epsilon, maxit=maxit)
    elif penalty == "firth":
        beta0, _, _ = _irls(X, s, n, dev_sat=d.dev_sat, start=d.start, maxit=4)
        beta0 = np.clip(beta0, -10, 10)
        beta, iters, conv, penalized_ll = _firth(X, s, n, beta0=beta0)
    else:
        if alpha == "cv":
            alpha, cv_table = _cv_alpha(d, l1_ratio, pen_mask, n_folds, seed, progress)
        beta, iters, conv = _enet(X, s, n, float(alpha), l1_ratio, pen_mask)
    if not conv:
        warnings.warn(f"logit({formula!r}) did not converge in {iters} iterations; the estimates are "
                      "unreliable (raise maxit, or check for separation)", RuntimeWarning, stacklevel=4)
        notes.append(f"the fit did not converge in {iters} iterations")
    eta = X @ beta
    mu = expit(eta)
    w = n * mu * (1 - mu)
    info = _xtwx(X, w)
    if penalty in ("l2", "l1", "elasticnet"):
        bread = _inv_spd(info + np.diag(np.where(pen_mask, N * float(alpha) * (1 - l1_ratio), 0.0)))
    else:
        bread = _inv_spd(info)
    cov = bread
    cov_cluster = None
    cov_type = "model-based (inverse Fisher information)"
    if cluster is not None:
        cov = cov_cluster = _cr1(d.X, d.cluster, beta, bread, d.n_obs)
        cov_type = f"cluster-robust CR1 by '{cluster}' ({d.cluster.n_clusters:,} clusters)"
    if penalty == "l2":
        cov_type = ("posterior covariance under the Gaussian prior the ridge penalty implies (Laplace "
                    "approximation, (X'WX + N alpha I)^-1)" if cluster is None else
                    cov_type + " sandwich around the shrunken ridge estimate")
    bse = np.sqrt(np.maximum(np.diag(cov), 0.0))

    # ---------------------------------------------------------------- separation
    sep_desc, sep_terms = _separation(d, beta, bse)
    if sep_desc and penalty is None:
        warnings.warn(
            "separation: the maximum likelihood estimate does not exist — "
            + "; ".join(sep_desc[:5]) + (" ..." if len(sep_desc) > 5 else "")
            + f". Terms {sep_terms[:6]} diverge; their estimates, SEs and intervals are not reported as "
            "valid. Refit with penalty='firth' (finite estimates, profile intervals) or penalty='l2'",
            SeparationWarning, stacklevel=4)
    sep_idx = [names.index(t) for t in sep_terms] if penalty is None else []

    # ---------------------------------------------------------------- tests and intervals
    zq = stats.norm.ppf(0.5 + conf / 2)
    z = beta / bse
    p_method = "wald"
    stat = z.copy()  # the statistic behind each p-value: Wald z, or the penalized LR chi-square
    pvals = 2 * stats.norm.sf(np.abs(z))
    ci_low, ci_high = beta - zq * bse, beta + zq * bse
    ci_method = f"Wald {100 * conf:g}%"
    if penalty in ("l2", "l1", "elasticnet"):
        # a penalized estimate is biased toward 0: no frequentist test holds, so none is given
        stat = np.full(p, np.nan)
        pvals = np.full(p, np.nan)
        p_method = "none"
    if penalty == "l2":
        ci_method = (
            f"{100 * conf:g}% posterior intervals under the Gaussian prior N(0, 1/(N alpha)) the ridge "
            "penalty implies (Laplace approximation; not confidence intervals)" if cluster is None else
            f"{100 * conf:g}% intervals from the CR1 sandwich around the shrunken ridge estimate (not "
            "confidence intervals: ridge is biased toward 0)")
    if penalty in ("l1", "elasticnet"):
        bse = np.full(p, np.nan)
        pvals = np.full(p, np.nan)
        ci_low = ci_high = np.full(p, np.nan)
        ci_method = "none (no valid Wald interval for lasso / elastic net; use ci='bootstrap')"
        cov = np.full((p, p), np.nan)
    if penalty == "firth" and cluster is None:
        # penalized likelihood-ratio p-values (as logistf)
        pvals = np.empty(p)
        for j in range(p):
            b0 = beta.copy()
            b0[j] = 0.0
            _, _, _, pll0 = _firth(X, s, n, beta0=b0, fixed={j: 0.0})
            stat[j] = max(2 * (penalized_ll - pll0), 0.0)
            pvals[j] = float(stats.chi2.sf(stat[j], 1))
        p_method = "plr"
    elif penalty == "firth":
        notes.append("p-values are CR1 Wald tests (penalized likelihood-ratio tests assume independent rows)")
        firth_sep = [names.index(t) for t in sep_terms]
        if firth_sep and ci == "wald":
            # CR1 is degenerate along a separating direction (rows that never refuse carry almost
            # no score): use the model-based SE, the profile penalized-likelihood interval and the
            # penalized LR test there, and say so.
            q = float(stats.chi2.ppf(conf, 1))
            for j in firth_sep:
                bse[j] = np.sqrt(bread[j, j])
                cov[j, :] = bread[j, :]
                cov[:, j] = bread[:, j]
                ci_low[j], _ = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=False)
                ci_high[j], _ = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=True)
                b0 = beta.copy()
                b0[j] = 0.0
                _, _, _, pll0 = _firth(X, s, n, beta0=b0, fixed={j: 0.0})
                pvals[j] = float(stats.chi2.sf(max(2 * (penalized_ll - pll0), 0.0), 1))
                stat[j] = np.nan  # the p-value is not from a z: no z is shown beside it
            notes.append(
                f"separated term(s) {[names[j] for j in firth_sep]}: CR1 is degenerate along a separating "
                "direction, so their SE is model based, their interval the profile penalized likelihood "
                "and their p-value the penalized LR test (no z value shown)"
            )
    if ci == "none":
        ci_low = ci_high = np.full(p, np.nan)
        if penalty not in ("l1", "elasticnet"):
            ci_method = "none (ci='none')"
    if ci == "profile":
        q = float(stats.chi2.ppf(conf, 1))
        ci_low, ci_high = np.empty(p), np.empty(p)
        bad = []
        if penalty == "firth":
            for j in range(p):
                ci_low[j], ok1 = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=False)
                ci_high[j], ok2 = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=True)
                if not (ok1 and ok2):
                    bad.append(names[j])
        else:
            ll_hat = _loglik(eta, s, n)
            for j in range(p):
                lo, hi, ok = _mle_profile(d, beta, bse[j], ll_hat, j, q, sep=j in sep_idx)
                ci_low[j], ci_high[j] = lo, hi
                if not ok:
                    bad.append(names[j])
        if bad:
            notes.append(f"profile interval search did not converge for {bad}")
        ci_method = f"profile {'penalized ' if penalty == 'firth' else ''}likelihood {100 * conf:g}%"
        if cluster is not None:
            notes.append("profile intervals assume independent rows; with clustered rows use ci='bootstrap'")
    boot = None
    if ci == "bootstrap":
        boot = _bootstrap(d, beta, penalty, float(alpha) if penalty in ("l2", "l1", "elasticnet") else 0.0,
                          l1_ratio, pen_mask, n_boot, seed, progress)
        ok_b = np.isfinite(boot).all(1)
        bb = boot[ok_b]
        ci_low = np.quantile(bb, (1 - conf) / 2, axis=0)
        ci_high = np.quantile(bb, 1 - (1 - conf) / 2, axis=0)
        ci_method = (f"{'cluster ' if cluster else ''}bootstrap percentile {100 * conf:g}% "
                     f"({len(bb)} replicates{', by ' + repr(cluster) if cluster else ''})")
        if penalty in ("l2", "l1", "elasticnet"):
            ci_method += (" of the penalized estimator (its sampling spread around a shrunken centre; not "
                          "confidence intervals for the unpenalized coefficients)")
        if penalty in ("l1", "elasticnet"):
            bse = bb.std(0, ddof=1)
    if sep_idx:
        bse[sep_idx] = np.nan
        pvals[sep_idx] = np.nan
        stat[sep_idx] = np.nan
        ci_low = np.asarray(ci_low, float).copy()
        ci_high = np.asarray(ci_high, float).copy()
        ci_low[sep_idx] = np.nan
        ci_high[sep_idx] = np.nan
        cov = cov.copy()
        cov[sep_idx, :] = np.nan
        cov[:, sep_idx] = np.nan

    # ---------------------------------------------------------------- fit statistics
    ll_b = _loglik(eta, s, n)
    loglik = ll_b + d.ll_const
    has_int = "Intercept" in names
    if has_int:
        pbar = float(np.sum(s)) / N
        ll0_b = _loglik(np.full(K, np.log(pbar / (1 - pbar))), s, n)
    else:
        ll0_b = _loglik(np.zeros(K), s, n)
    loglik_null = ll0_b + d.ll_const
    pseudo_r2 = _mcfadden(ll_b, float(np.sum(s)), N, penalty, notes)
    deviance = 2.0 * (d.dev_sat - ll_b)
    null_dev = 2.0 * (d.dev_sat - ll0_b)
    k_eff = p
    aic = -2 * loglik + 2 * k_eff
    bic = -2 * loglik + np.log(d.n_obs) * k_eff
    call_extra = ""
    if reference:
        call_extra += f", reference={dict(reference)!r}"
    if penalty:
        call_extra += f", penalty={penalty!r}"
    if cluster:
        call_extra += f", cluster={cluster!r}"
    term_of = {}
    for t, cols in d.term_columns.items():
        for c in cols:
            term_of[names[c]] = t
    if penalty in ("l2", "l1", "elasticnet"):
        notes.append("AIC/BIC count every coefficient; they are not the penalized model's effective df")
    idx = pd.Index(names, name="term")
    return LogitResults(
        formula=formula, penalty=penalty, alpha=None if alpha is None else float(alpha),
        l1_ratio=l1_ratio, cluster=cluster, conf=conf,
        params=pd.Series(beta, index=idx, name="estimate"),
        bse=pd.Series(bse, index=idx, name="std_error"),
        pvalues=pd.Series(pvals, index=idx, name="p"),
        _ci=pd.DataFrame({"ci_low": ci_low, "ci_high": ci_high}, index=idx),
        _cov=cov, _cov_cluster=cov_cluster, cov_type=cov_type, ci_method=ci_method, p_method=p_method,
        _stat=stat,
        loglik=loglik, loglik_null=loglik_null, deviance=deviance, null_deviance=null_dev,
        penalized_loglik=penalized_ll + d.ll_const if penalty == "firth" else np.nan,
        df_resid=d.n_obs - p, df_null=d.n_obs - (1 if has_int else 0),
        aic=aic, bic=bic, pseudo_r2=pseudo_r2,
        iterations=iters, converged=conv, n_obs=d.n_obs, n_patterns=K,
        n_clusters=d.cluster.n_clusters if d.cluster else 0,
        separation=sep_desc, separated_terms=sep_terms,
        reference={v: lv[0] for v, lv in d.factors.items()}, levels=dict(d.factors),
        notes=notes, cv=cv_table, boot=boot,
        _design=d, _term_of=term_of, _ll_const=d.ll_const, _call_extra=call_extra,
        _opts={"formula": formula, "reference": reference, "penalty": penalty,
               "alpha": alpha if penalty in ("l2", "l1", "elasticnet") else None, "l1_ratio": l1_ratio,
               "cluster": cluster, "ci": ci, "conf": conf, "n_boot": n_boot, "n_folds": n_folds, "seed": seed,
               "maxit": maxit, "epsilon": epsilon, "progress": progress},
    )


@_single_blas
def _refit_responses(fit: LogitResults, y: np.ndarray) -> LogitResults:
    """The same model refitted to new 0/1 responses on the same rows (for simulation studies).

    Only the counts change: the formula, factors, patterns and clusters are the fit's, so
    a replicate costs the estimation alone (no parsing, validation or collapsing). For
    plain 0/1 row input (no ``trials=``, no weights).
    """
    d = fit._design
    y = np.asarray(y, dtype=float)
    if d.ll_const != 0.0 or d.row_pair is None and d.cluster is not None or len(y) != len(d.inverse):
        raise ValueError("_refit_responses needs a fit to plain 0/1 rows and one response per row")
    if (d.start is None or not np.allclose(d.start.w, 0.1875 * d.n) or not np.isin(y, (0.0, 1.0)).all()
            or (d.inverse < 0).any()):
        raise ValueError("_refit_responses needs 0/1 responses and no weights")
    if y.sum() in (0.0, len(y)):
        raise ValueError("the new responses are constant: nothing to model")
    K = len(d.s)
    s = np.bincount(d.inverse, weights=y, minlength=K)
    start = _Start(d.start.w, 0.1875 * (np.log(3.0) + 4.0 / 3.0) * (2.0 * s - d.n), d.start.dev)
    cl = d.cluster
    if cl is not None:
        cl = _Cluster(name=cl.name, labels=cl.labels, g=cl.g, j=cl.j, n=cl.n,
                      s=np.bincount(d.row_pair, weights=y, minlength=len(cl.n)))
    patterns = d.patterns.copy()
    patterns["successes"] = s
    nd = _Design(**{**d.__dict__, "s": s, "start": start, "cluster": cl, "patterns": patterns})
    opts = dict(fit._opts)
    if opts["penalty"] in ("l2", "l1", "elasticnet") and opts["alpha"] is None:
        opts["alpha"] = fit.alpha
    return _estimate(nd, **opts)


# ============================================================================ helpers
def _mcfadden(ll: float, successes: float, total: float, penalty, notes: list[str]) -> float:
    """McFadden's pseudo-R², ``1 - l(b) / l_0``, on the row-level Bernoulli log-likelihood.

    ``ll`` is the unpenalized Bernoulli log-likelihood at the fitted coefficients (no
    binomial coefficients, so rows and aggregated ``trials=`` input agree) and ``l_0``
    that of the intercept-only model (closed form). ``l(b) <= 0`` makes it at most 1. It
    is at least 0 for the MLE of any model containing the constant and, with an
    unpenalized intercept, for ridge / lasso / elastic net (their objective at ``b`` is at
    most its value at the intercept-only point). A Firth estimate (or a model without the
    constant in its span) can fall below the null: then 0 is reported and a note gives
    the raw value.
    """
    pbar = successes / total
    ll0 = successes * np.log(pbar) + (total - successes) * np.log1p(-pbar)
    r2 = 1.0 - ll / ll0
    if r2 >= 0.0:
        return float(min(r2, 1.0))
    if r2 > -1e-9:  # rounding of two equal log-likelihoods
        return 0.0
    what = {"firth": "Firth", None: "maximum-likelihood"}.get(penalty, "penalized")
    notes.append(
        f"McFadden pseudo-R2 reported as 0: the unpenalized log-likelihood at the {what} estimate "
        f"({ll:.6g}) is below the intercept-only model's ({ll0:.6g}); raw value {r2:.3g}")
    return 0.0


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


def _mle_profile(d: _Design, beta, se, ll_hat, j, q, sep=False):
    """Profile-likelihood interval of coefficient ``j`` (ordinary MLE), by root finding."""
    from scipy.optimize import brentq

    if sep or not np.isfinite(se):
        return np.nan, np.nan, True
    X, s, n = d.X, d.s, d.n
    Xr = d.Xf[:, [k for k in range(X.shape[1]) if k != j]]
    br = np.delete(beta, j)

    def dev_at(b):
        nonlocal br
        bb, _, _ = _irls(Xr, s, n, beta0=br, offset=X[:, j] * b, eps=1e-12, maxit=100)
        br = bb
        return 2.0 * (ll_hat - _loglik(Xr @ bb + X[:, j] * b, s, n)) - q

    out = []
    ok = True
    for sign in (-1, 1):
        br = np.delete(beta, j)
        step = max(se, 1e-8)
        lo_b, hi_b = beta[j], beta[j] + sign * 2 * step
        f_hi = dev_at(hi_b)
        k = 0
        while f_hi < 0 and k < 30:
            lo_b, hi_b = hi_b, hi_b + sign * 2 * step
            f_hi = dev_at(hi_b)
            k += 1
        if f_hi < 0:
            out.append(np.nan)
            ok = False
            continue
        a, b = sorted((lo_b, hi_b))
        out.append(brentq(dev_at, a, b, xtol=1e-10))
    return out[0], out[1], ok


def _cv_alpha(d: _Design, l1_ratio, pen_mask, n_folds, seed, progress):
    """Choose alpha by K-fold cross-validated deviance; folds group whole clusters."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    X, s, n = d.Xf, d.s, d.n
    K = len(s)
    N = float(n.sum())
    if d.cluster is not None:
        cl = d.cluster
        perm = rng.permutation(cl.n_clusters)
        fold_of_cluster = np.empty(cl.n_clusters, dtype=np.int64)
        fold_of_cluster[perm] = np.arange(cl.n_clusters) % n_folds
        f = fold_of_cluster[cl.g]
        Sf = np.zeros((n_folds, K))
        Nf = np.zeros((n_folds, K))
        np.add.at(Sf, (f, cl.j), cl.s)
        np.add.at(Nf, (f, cl.j), cl.n)
    else:
        # rows split at random: per pattern, a multivariate hypergeometric split of successes and failures
        Sf = np.zeros((n_folds, K))
        Nf = np.zeros((n_folds, K))
        for i in range(K):
            for cnt, arr in ((round(s[i]), Sf), (round(n[i] - s[i]), None)):
                alloc = rng.multinomial(cnt, np.full(n_folds, 1.0 / n_folds))
                if arr is not None:
                    Sf[:, i] += alloc
                Nf[:, i] += alloc
    mu0 = float(s.sum()) / N
    g0 = X.T @ (s - n * mu0)
    lam_max = float(np.max(np.abs(g0[pen_mask]))) / (N * max(l1_ratio, 1e-3))
    grid = lam_max * np.logspace(0, -4, 30)
    dev = np.zeros((len(grid), n_folds))
    bar = tqdm(total=len(grid) * n_folds, desc="cross-validating alpha", disable=not progress, leave=False)
    for k in range(n_folds):
        st, nt = s - Sf[k], n - Nf[k]
        keep = nt > 0
        b = None
        for i, lam in enumerate(grid):
            b, _, _ = _enet(X[keep], st[keep], nt[keep], lam, l1_ratio, pen_mask, beta0=b)
            dev[i, k] = -2.0 * _loglik(X @ b, Sf[k], Nf[k])
            bar.update(1)
    bar.close()
    mean = dev.sum(1) / N
    best = int(np.argmin(mean))
    table = pd.DataFrame({"alpha": grid, "cv_deviance": mean,
                          "cv_se": dev.std(1, ddof=1) * n_folds / N / np.sqrt(n_folds)})
    return float(grid[best]), table


def _bootstrap(d: _Design, beta, penalty, alpha, l1_ratio, pen_mask, n_boot, seed, progress):
    """Bootstrap replicates of the coefficients: resample clusters (or rows) as counts."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
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
