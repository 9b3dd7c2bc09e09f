"""GEE with an exchangeable working correlation for clustered 0/1 rows, from counts.

``logit(..., cluster="item_id", working="exchangeable")`` solves the generalized
estimating equations of Liang & Zeger (1986) for the logistic mean model with, inside
each cluster, the working correlation ``R = (1 - rho) I + rho 1 1'``, and reports the
robust covariance with the Mancl & DeRouen (2001) small-sample correction and ``t`` /
``F`` references on ``G - p`` degrees of freedom.

Everything is computed from the (cluster, pattern) counts ``(s_gk, n_gk)``: with
``A = diag(mu (1 - mu))`` and ``m_g`` the rows of cluster ``g``, Sherman-Morrison gives
``R^-1 = (I - kappa_g 1 1') / (1 - rho)``, ``kappa_g = rho / (1 - rho + m_g rho)``, so the
cluster's estimating function and information are

    U_g   = r_g - kappa_g t_g q_g,      r_g = sum x (y - mu),  t_g = sum (y - mu) / sqrt(a),
    Phi_g = F_g - kappa_g q_g q_g',     q_g = sum sqrt(a) x,   F_g = sum a x x'

(times ``1 / (1 - rho)``, which cancels). ``rho`` is the moment estimator on Pearson
residuals. Mancl-DeRouen replaces ``U_g`` by ``(I - Phi_g B^-1)^-1 U_g`` (``B = sum Phi_g``),
the parameter-space form of ``(I - H_gg)^-1`` applied to the cluster's residuals.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.special import expit

from .design_matrix import _Cluster
from .linalg import _inv_spd


def _gee_exchangeable(X: np.ndarray, Xf, cl: _Cluster, beta0: np.ndarray, *, maxit: int = 50,
                      tol: float = 1e-10) -> dict:
    """Exchangeable GEE for the logistic model on (cluster, pattern) pairs.

    Returns ``beta``, ``cov`` (Mancl-DeRouen robust), ``rho``, ``iterations``,
    ``converged`` and ``n_clusters``.
    """
    from .covariance import _cluster_info, _sorted_pairs

    cl = _sorted_pairs(cl)
    K, p = X.shape
    J = cl.n_clusters
    starts = np.searchsorted(cl.g, np.arange(J + 1))
    m = np.bincount(cl.g, weights=cl.n, minlength=J)
    N = float(m.sum())

    def pieces(beta):
        mu = expit(X @ beta)
        a = np.clip(mu * (1 - mu), 1e-12, None)
        sa = np.sqrt(a)
        res = cl.s - cl.n * mu[cl.j]
        R = sparse.csr_matrix((res, (cl.g, cl.j)), shape=(J, K))
        r = np.asarray(R @ X)
        t = np.bincount(cl.g, weights=res / sa[cl.j], minlength=J)
        Q = sparse.csr_matrix((cl.n * sa[cl.j], (cl.g, cl.j)), shape=(J, K))
        q = np.asarray(Q @ X)
        ss = np.bincount(cl.g, weights=(cl.s * (1 - mu[cl.j]) ** 2 + (cl.n - cl.s) * mu[cl.j] ** 2) / a[cl.j],
                         minlength=J)
        nk = np.bincount(cl.j, weights=cl.n, minlength=K)
        F = (X * (nk * a)[:, None]).T @ X
        return mu, a, r, t, q, ss, F

    beta = np.asarray(beta0, float).copy()
    rho = 0.0
    conv = False
    it = 0
    pairs_within = float(np.sum(m * (m - 1)))
    for it in range(1, maxit + 1):
        _, a, r, t, q, ss, F = pieces(beta)
        phi = ss.sum() / max(N - p, 1.0)
        rho = float((t * t - ss).sum() / phi / max(pairs_within - p, 1.0)) if pairs_within > p else 0.0
        rho = min(max(rho, 0.0), 0.98)
        kappa = rho / (1.0 - rho + m * rho)
        U = (r - (kappa * t)[:, None] * q).sum(0)
        B = F - (q * kappa[:, None]).T @ q
        step = np.linalg.lstsq(B, U, rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < tol * (1 + np.max(np.abs(beta))):
            conv = True
            break
    _, a, r, t, q, ss, F = pieces(beta)
    kappa = rho / (1.0 - rho + m * rho)
    U = r - (kappa * t)[:, None] * q               # J x p
    B = F - (q * kappa[:, None]).T @ q
    Binv = _inv_spd(B)
    # Mancl-DeRouen: (I - Phi_g B^-1)^-1 U_g, with Phi_g = F_g - kappa_g q_g q_g', in chunks
    wts = a
    Umd = np.empty_like(U)
    step = max(1, 2_000_000 // (p * p))
    for lo in range(0, J, step):
        hi = min(J, lo + step)
        Fg = _cluster_info(X, Xf, wts, cl, lo, hi, starts)
        Phi = Fg - kappa[lo:hi, None, None] * q[lo:hi, :, None] * q[lo:hi, None, :]
        Mx = np.eye(p)[None] - Phi @ Binv
        try:
            Umd[lo:hi] = np.linalg.solve(Mx, U[lo:hi][:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            Umd[lo:hi] = np.einsum("jab,jb->ja", np.linalg.pinv(Mx), U[lo:hi])
    cov = Binv @ (Umd.T @ Umd) @ Binv
    return {"beta": beta, "cov": 0.5 * (cov + cov.T), "rho": rho, "iterations": it, "converged": conv,
            "n_clusters": J}
