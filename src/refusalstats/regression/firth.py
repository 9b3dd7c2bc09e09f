"""Firth's (Jeffreys-prior) penalized likelihood: the estimate and profile interval bounds, as logistf."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.special import expit

from .likelihood import _loglik
from .linalg import _chol, _Ell, _inv_chol, _solve_spd, _xtwx


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
