"""Nested Laplace approximation of the hierarchical posterior (``method="laplace"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import HierarchicalModel

# --------------------------------------------------------------------------- Laplace
class _Laplace:
    """Nested Laplace approximation of the hierarchical posterior (INLA-like, labelled approximate).

    Given the log group sd's ``theta``, the latent vector ``x = (fixed effects, group
    effects)`` has a log-concave conditional posterior; its mode and the Hessian ``H``
    there give a Gaussian ``N(x_hat, H^-1)`` and the Laplace marginal
    ``log p(y, theta) ~ log p(y, x_hat, theta) - log det(H) / 2 + dim(x) log(2 pi) / 2``.
    The random term with the most levels (e.g. ``item_id``) forms a diagonal block ``D``
    of ``H``; everything else (fixed effects and the smaller terms) a dense block ``A``,
    so every solve and determinant goes through the small Schur complement
    ``S = A - B D^-1 B'``. Cost per Newton step: one pass over the collapsed patterns.
    """

    def __init__(self, m: HierarchicalModel):
        from scipy import sparse

        self.m = m
        self.s = m.patterns["successes"].to_numpy(dtype=float)
        self.n = m.patterns["trials"].to_numpy(dtype=float)
        n_pat = len(self.s)
        sizes = [len(g.levels) for g in m.groups]
        self.big = int(np.argmax(sizes))
        self.p = len(m.fixed_names)
        blocks = [sparse.csr_matrix(m.X)]
        self.slices: dict[int, slice] = {}
        start = self.p
        for t, g in enumerate(m.groups):
            if t == self.big:
                continue
            L = len(g.levels)
            blocks.append(sparse.csr_matrix((np.ones(n_pat), (np.arange(n_pat), g.index)), shape=(n_pat, L)))
            self.slices[t] = slice(start, start + L)
            start += L
        self.J = sparse.hstack(blocks, format="csr")
        self.JT = self.J.T.tocsr()
        self.nd = start
        self.bidx = m.groups[self.big].index
        self.nb = sizes[self.big]
        self.E = sparse.csr_matrix((np.ones(n_pat), (np.arange(n_pat), self.bidx)), shape=(n_pat, self.nb))
        # fixed-effect priors: normal (exact) or Student-t
        self.fx_prior = [m.priors[name] for name in m.fixed_names]
        self.x_d = np.zeros(self.nd)
        self.x_b = np.zeros(self.nb)
        rate = np.clip(self.s.sum() / self.n.sum(), 1e-6, 1 - 1e-6)
        if "Intercept" in m.fixed_names:
            self.x_d[m.fixed_names.index("Intercept")] = np.log(rate / (1 - rate))

    # latent prior pieces -------------------------------------------------
    def _fixed_prior(self, beta):
        lp = np.zeros(self.p)
        g = np.zeros(self.p)
        h = np.zeros(self.p)
        for j, (dist, q) in enumerate(self.fx_prior):
            r = beta[j] - q["mu"]
            if dist == "normal":
                lp[j] = -0.5 * (r / q["sigma"]) ** 2
                g[j] = -r / q["sigma"] ** 2
                h[j] = 1 / q["sigma"] ** 2
            else:
                nu, s2 = q["nu"], q["sigma"] ** 2
                lp[j] = -(nu + 1) / 2 * np.log1p(r * r / (nu * s2))
                g[j] = -(nu + 1) * r / (nu * s2 + r * r)
                h[j] = (nu + 1) / (nu * s2 + r * r)  # Fisher-type (positive) curvature
        return lp.sum(), g, h

    def _prec(self, theta):
        """Prior precision of the dense latent block (0 for fixed effects, set separately)."""
        prec = np.zeros(self.nd)
        for t, sl in self.slices.items():
            prec[sl] = np.exp(-2 * theta[t])
        return prec

    def _objective(self, x_d, x_b, theta):
        from scipy.special import log_expit

        eta = self.J @ x_d + x_b[self.bidx]
        ll = float(np.sum(self.s * log_expit(eta) + (self.n - self.s) * log_expit(-eta)))
        lpf, _, _ = self._fixed_prior(x_d[: self.p])
        prec = self._prec(theta)
        lpr = -0.5 * float(np.sum(prec * x_d**2)) - 0.5 * float(np.sum(x_b**2)) * np.exp(-2 * theta[self.big])
        return ll + lpf + lpr, eta

    def mode(self, theta, tol=1e-9, max_iter=100):
        """Conditional mode and Hessian blocks at ``theta`` (log sd's, one per term)."""
        from scipy.special import expit

        x_d, x_b = self.x_d.copy(), self.x_b.copy()
        f, eta = self._objective(x_d, x_b, theta)
        prec_b = np.exp(-2 * theta[self.big])
        for it in range(max_iter):
            q = expit(eta)
            w = self.n * q * (1 - q)
            r = self.s - self.n * q
            _, gf, hf = self._fixed_prior(x_d[: self.p])
            prec = self._prec(theta)
            prec[: self.p] = hf
            g_d = self.JT @ r - prec * x_d
            g_d[: self.p] = (self.JT @ r)[: self.p] + gf
            g_b = np.bincount(self.bidx, weights=r, minlength=self.nb) - prec_b * x_b
            Jw = self.J.multiply(w[:, None]).tocsr()
            A = (self.JT @ Jw).toarray() + np.diag(prec)
            B = (Jw.T @ self.E).toarray()
            D = np.bincount(self.bidx, weights=w, minlength=self.nb) + prec_b
            BDi = B / D[None, :]
            S = A - BDi @ B.T
            S = (S + S.T) / 2
            cho = np.linalg.cholesky(S + 1e-10 * np.eye(self.nd))
            rhs = g_d - BDi @ g_b
            dx_d = np.linalg.solve(cho.T, np.linalg.solve(cho, rhs))
            dx_b = (g_b - B.T @ dx_d) / D
            step = 1.0
            while True:
                f_new, eta_new = self._objective(x_d + step * dx_d, x_b + step * dx_b, theta)
                if f_new >= f - 1e-10 * abs(f) or step < 1e-6:
                    break
                step /= 2
            x_d, x_b = x_d + step * dx_d, x_b + step * dx_b
            decrement = float(g_d @ dx_d + g_b @ dx_b)  # Newton decrement: 2x the predicted gain
            done = step == 1.0 and decrement < tol
            f, eta = f_new, eta_new
            if done:
                break
        # Hessian at the final point
        q = expit(eta)
        w = self.n * q * (1 - q)
        _, _, hf = self._fixed_prior(x_d[: self.p])
        prec = self._prec(theta)
        prec[: self.p] = hf
        Jw = self.J.multiply(w[:, None]).tocsr()
        A = (self.JT @ Jw).toarray() + np.diag(prec)
        B = (Jw.T @ self.E).toarray()
        D = np.bincount(self.bidx, weights=w, minlength=self.nb) + prec_b
        S = A - (B / D[None, :]) @ B.T
        S = (S + S.T) / 2
        cho = np.linalg.cholesky(S + 1e-10 * np.eye(self.nd))
        self.x_d, self.x_b = x_d, x_b  # warm start for the next theta
        logdet = 2 * float(np.sum(np.log(np.diag(cho)))) + float(np.sum(np.log(D)))
        return {"x_d": x_d, "x_b": x_b, "f": f, "cho": cho, "B": B, "D": D, "logdet": logdet,
                "w": w, "iterations": it + 1}

    def log_post_theta(self, theta):
        """Laplace approximation of log p(theta | y) + const (theta = log sd's)."""
        from scipy import stats

        md = self.mode(theta)
        out = md["f"] - 0.5 * md["logdet"]
        # the normalising constants of the group-effect priors: -L_t log sd_t
        for t, g in enumerate(self.m.groups):
            out -= len(g.levels) * theta[t]
        for t, g in enumerate(self.m.groups):
            dist, q = self.m.priors[f"sd({g.name})"]
            sd = np.exp(theta[t])
            if dist == "halfnormal":
                lp = stats.halfnorm(scale=q["sigma"]).logpdf(sd)
            elif dist == "exponential":
                lp = stats.expon(scale=1 / q["lam"]).logpdf(sd)
            elif dist == "halfstudent_t":
                lp = stats.t(q["nu"], scale=q["sigma"]).logpdf(sd) + np.log(2)
            else:
                lp = stats.halfcauchy(scale=q["beta"]).logpdf(sd)
            out += lp + theta[t]  # Jacobian of sd = exp(theta)
        return float(out), md

    def fit_theta(self, tol=1e-3):
        """Posterior mode of theta and the curvature-based sd of each log sd."""
        from scipy.optimize import minimize

        T = len(self.m.groups)
        theta0 = np.full(T, np.log(0.5))
        cache = {}

        def neg(th):
            key = tuple(np.round(th, 10))
            if key not in cache:
                cache[key] = -self.log_post_theta(np.asarray(th))[0]
            return cache[key]

        def grad(th):  # central differences (the inner modes are solved to ~1e-9)
            h = 1e-3
            return np.array([(neg(th + h * e) - neg(th - h * e)) / (2 * h) for e in np.eye(T)])

        res = minimize(neg, theta0, jac=grad, method="L-BFGS-B", bounds=[(-12.0, 5.0)] * T,
                       options={"gtol": tol, "maxiter": 100})
        theta = np.asarray(res.x)
        f0 = neg(theta)
        h = 0.2
        sds = np.empty(T)
        for t in range(T):
            e = np.zeros(T)
            e[t] = h
            curv = (neg(theta + e) - 2 * f0 + neg(theta - e)) / h**2
            sds[t] = 1 / np.sqrt(curv) if curv > 1e-8 else 2.0
        return theta, np.minimum(sds, 2.0), len(cache)


