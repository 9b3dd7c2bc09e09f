"""Maximum likelihood by IRLS, step for step as R's ``glm.fit``, and its profile intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .likelihood import _loglik
from .linalg import _solve_spd, _xtwx


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

def _mle_profile(d, beta, se, ll_hat, j, q, sep=False):
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
