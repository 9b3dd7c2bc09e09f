"""Ridge / lasso / elastic net (glmnet's objective) by proximal Newton, and alpha by cross-validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from .._validation import check_random_state
from .likelihood import _loglik
from .linalg import _solve_spd, _xtwx


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


def _cv_alpha(d, l1_ratio, pen_mask, n_folds, seed, progress):
    """Choose alpha by K-fold cross-validated deviance; folds group whole clusters."""
    from tqdm.auto import tqdm

    rng = check_random_state(seed)
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
