"""Nested Laplace approximation of the hierarchical posterior (``method="laplace"``).

The engine behind ``HierarchicalModel.fit(method="laplace")`` (and ``method="auto"`` on
large designs, e.g. ``(1|item_id)`` on P1's full table). Labelled APPROXIMATE everywhere it
is reported. The maths, the checks against NUTS and lme4 and the calibration are in
``docs/methods_hierarchical.md`` ("Nested Laplace").

Structure used for speed: every collapsed pattern ``k`` has a linear predictor

    eta_k = a_{c(k)}' x_d + u_{i(k)},

where ``u`` are the levels of the random term with the most levels (the *big* term, e.g.
``item_id``), ``x_d`` stacks the fixed effects and the levels of every other random term
(the *dense* block, ~280 parameters on P1's design) and ``a_c`` is one row of the small
design of the *cells*, the unique combinations of everything but the big term (at most
6,480 on P1's design: task x prompt x model x persona). Given the log sd's ``theta`` the
Hessian of the latent vector is ``[[A, B'], [B, D]]`` with ``D`` diagonal, so Newton steps,
solves, the log-determinant and the posterior variances all go through the dense Schur
complement ``S = A - B' D^-1 B``: one pass over the patterns (a numba kernel) plus one
(nb x nd) x (nd x nb) matrix product per step, O(patterns + items x nd^2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .model import HierarchicalModel

try:  # numba is a core dependency (the W2 kernels use it); plain NumPy below if it is absent
    import numba as _nb
except ImportError:  # pragma: no cover
    _nb = None


# --------------------------------------------------------------------------- kernels
def _expit(e):
    if e >= 0:
        return 1.0 / (1.0 + np.exp(-e))
    z = np.exp(e)
    return z / (1.0 + z)


if _nb is not None:
    _expit = _nb.njit(cache=True, inline="always")(_expit)


def _pass(eta_c, x_b, cell, item, s, n, indptr, indices, data, B, want):
    """Log-likelihood; per-cell and per-item sums of weights ``w = n q (1 - q)`` and
    residuals ``r = s - n q``; ``B[i, j] += w a_c[j]`` (a numba kernel when numba imports)."""
    ll = 0.0
    nc, nb = eta_c.shape[0], x_b.shape[0]
    wc, rc, wi, ri = np.zeros(nc), np.zeros(nc), np.zeros(nb), np.zeros(nb)
    for k in range(cell.shape[0]):
        c, i = cell[k], item[k]
        e = eta_c[c] + x_b[i]
        z = np.exp(-abs(e))  # one exp for both softplus(e) and expit(e)
        ll += s[k] * e - n[k] * (max(e, 0.0) + np.log1p(z))
        if want:
            q = 1.0 / (1.0 + z) if e >= 0 else z / (1.0 + z)
            w = n[k] * q * (1.0 - q)
            r = s[k] - n[k] * q
            wc[c] += w
            rc[c] += r
            wi[i] += w
            ri[i] += r
            for j in range(indptr[c], indptr[c + 1]):
                B[i, indices[j]] += w * data[j]
    return ll, wc, rc, wi, ri


def _var_pass(eta_c, x_b, cell, item, n, indptr, indices, data, Q, cellvar, itemvar):
    """Per-cell and per-item sums of ``m3_k v_k``: ``m3 = n q (1-q)(1-2q)`` (derivative of the
    weight) times ``v = Var(eta_k)`` under the conditional Gaussian (a numba kernel when
    numba imports)."""
    nc, nb = eta_c.shape[0], x_b.shape[0]
    cc, ci = np.zeros(nc), np.zeros(nb)
    for k in range(cell.shape[0]):
        c, i = cell[k], item[k]
        q = _expit(eta_c[c] + x_b[i])
        cross = 0.0
        for j in range(indptr[c], indptr[c + 1]):
            cross += data[j] * Q[i, indices[j]]
        v = cellvar[c] - 2.0 * cross + itemvar[i]
        t = n[k] * q * (1.0 - q) * (1.0 - 2.0 * q) * v
        cc[c] += t
        ci[i] += t
    return cc, ci


if _nb is not None:  # one body for both: compiled here, plain Python without numba
    _pass = _nb.njit(cache=True)(_pass)
    _var_pass = _nb.njit(cache=True)(_var_pass)


def _syrk(Bs: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``A - Bs' Bs`` (symmetric), by BLAS ``dsyrk`` on the upper triangle."""
    from scipy.linalg.blas import dsyrk

    C = dsyrk(-1.0, Bs, beta=1.0, c=np.asfortranarray(A), trans=1, lower=0)
    iu = np.triu_indices_from(C, 1)
    C[(iu[1], iu[0])] = C[iu]
    return np.ascontiguousarray(C)


def _codes(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return np.asarray(s.array.codes, dtype=np.int64)
    return pd.factorize(s, sort=False)[0].astype(np.int64)


def _sd_logprior(dist: str, q: dict, theta: float) -> tuple[float, float]:
    """log p(theta) and its derivative for theta = log sd (the sd prior plus the Jacobian)."""
    sd = float(np.exp(theta))
    if dist == "halfnormal":
        lp = -0.5 * (sd / q["sigma"]) ** 2 + np.log(np.sqrt(2 / np.pi) / q["sigma"])
        d = -(sd / q["sigma"]) ** 2
    elif dist == "exponential":
        lp = np.log(q["lam"]) - q["lam"] * sd
        d = -q["lam"] * sd
    elif dist == "halfstudent_t":
        from scipy import stats

        nu, s2 = q["nu"], q["sigma"] ** 2
        lp = float(stats.t(nu, scale=q["sigma"]).logpdf(sd) + np.log(2))
        d = -(nu + 1) * sd * sd / (nu * s2 + sd * sd)
    else:  # halfcauchy
        b = q["beta"]
        lp = np.log(2 / (np.pi * b)) - np.log1p((sd / b) ** 2)
        d = -2 * sd * sd / (b * b + sd * sd)
    return float(lp + theta), float(d + 1.0)


# --------------------------------------------------------------------------- Laplace
class _Laplace:
    """Nested Laplace approximation of the hierarchical posterior (INLA-like, labelled approximate).

    Given the log group sd's ``theta``, the latent vector ``x = (x_d, x_b)`` (fixed effects
    and small group terms; levels of the big term) has a log-concave conditional posterior;
    its mode and the Hessian ``H`` there give a Gaussian ``N(x_hat, H^-1)`` and the Laplace
    marginal ``log p(theta | y) ~ log p(y, x_hat, theta) - log det(H) / 2`` (+ const).
    :meth:`log_post_theta` also returns its exact gradient in ``theta`` (including the
    change of ``H`` with the mode through the third derivative of the likelihood), so the
    mode of ``theta`` is found by quasi-Newton and its curvature by differences of
    gradients.
    """

    def __init__(self, m: HierarchicalModel):
        from scipy import sparse

        self.m = m
        pat = m.patterns
        self.s = pat["successes"].to_numpy(dtype=float)
        self.n = pat["trials"].to_numpy(dtype=float)
        n_pat = len(self.s)
        sizes = [len(g.levels) for g in m.groups]
        self.big = int(np.argmax(sizes))
        self.p = len(m.fixed_names)
        # cells: unique combinations of the fixed variables and the other terms' levels
        keys = [_codes(pat[v]) for v in m.parsed.fixed_variables]
        keys += [g.index.astype(np.int64) for t, g in enumerate(m.groups) if t != self.big]
        if keys:
            radix = [int(k.max()) + 1 for k in keys]
            if float(np.prod(np.array(radix, dtype=float))) < 2**62:
                key = np.ravel_multi_index(keys, radix)
                _, first, cell = np.unique(key, return_index=True, return_inverse=True)
            else:  # pragma: no cover - astronomically many combinations
                _, first, cell = np.unique(np.stack(keys, 1), axis=0, return_index=True,
                                           return_inverse=True)
        else:
            first, cell = np.zeros(1, dtype=np.int64), np.zeros(n_pat, dtype=np.int64)
        self.cell = np.ascontiguousarray(cell.ravel(), dtype=np.int64)
        self.first = first
        # the kernels visit patterns grouped by their big-term level, so that the row of B they
        # add to stays in cache (collapse orders patterns with the item varying fastest)
        self.order = np.argsort(m.groups[self.big].index, kind="stable")
        self.cell_sorted = np.ascontiguousarray(self.cell[self.order])
        self.bidx_sorted = np.ascontiguousarray(m.groups[self.big].index[self.order], dtype=np.int64)
        self.s_sorted = np.ascontiguousarray(self.s[self.order])
        self.n_sorted = np.ascontiguousarray(self.n[self.order])
        n_cell = len(first)
        blocks = [sparse.csr_matrix(m.X[first])]
        self.slices: dict[int, slice] = {}
        start = self.p
        for t, g in enumerate(m.groups):
            if t == self.big:
                continue
            L = len(g.levels)
            blocks.append(sparse.csr_matrix((np.ones(n_cell), (np.arange(n_cell), g.index[first])),
                                            shape=(n_cell, L)))
            self.slices[t] = slice(start, start + L)
            start += L
        self.J = sparse.hstack(blocks, format="csr")
        self.J.eliminate_zeros()
        self.J.sort_indices()
        self.JT = self.J.T.tocsr()
        self.nd = start
        self.bidx = np.ascontiguousarray(m.groups[self.big].index, dtype=np.int64)
        self.nb = sizes[self.big]
        self.fx_prior = [m.priors[name] for name in m.fixed_names]
        self.sd_prior = [m.priors[f"sd({g.name})"] for g in m.groups]
        self.L = np.array(sizes, dtype=float)
        self.x_d = np.zeros(self.nd)
        self.x_b = np.zeros(self.nb)
        rate = np.clip(self.s.sum() / self.n.sum(), 1e-6, 1 - 1e-6)
        if "Intercept" in m.fixed_names:
            self.x_d[m.fixed_names.index("Intercept")] = np.log(rate / (1 - rate))
        self.evaluations = 0
        self.newton_steps = 0
        self._pred = None
        # rough posterior sd of each log sd is 1 / sqrt(2 L_t) (L_t levels, well informed):
        # theta is optimised in units of it, which makes the problem well conditioned
        self._scale = np.sqrt(2 * self.L)

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

    def _eta(self, x_d, x_b):
        return (self.J @ x_d)[self.cell] + x_b[self.bidx]

    def _objective(self, x_d, x_b, theta):
        """Joint log density of (y, x) given theta, up to a theta-only constant; and eta."""
        eta = self._eta(x_d, x_b)
        f = self._state(x_d, x_b, theta, want=False)["f"]
        return f, eta

    def _state(self, x_d, x_b, theta, want=True):
        """Objective, gradient and Hessian blocks at (x_d, x_b) (one pass over the patterns)."""
        eta_c = self.J @ x_d
        B = np.zeros((self.nb, self.nd)) if want else np.zeros((1, 1))
        ll, wc, rc, wi, ri = _pass(eta_c, x_b, self.cell_sorted, self.bidx_sorted, self.s_sorted,
                                   self.n_sorted, self.J.indptr, self.J.indices, self.J.data, B, want)
        lpf, gf, hf = self._fixed_prior(x_d[: self.p])
        prec = self._prec(theta)
        tau_b = np.exp(-2 * theta[self.big])
        f = ll + lpf - 0.5 * float(np.sum(prec * x_d**2)) - 0.5 * tau_b * float(x_b @ x_b)
        out = {"f": float(f)}
        if not want:
            return out
        prec[: self.p] = hf
        g_d = self.JT @ rc - prec * x_d
        g_d[: self.p] += gf + hf * x_d[: self.p]  # the fixed priors' own gradient
        g_b = ri - tau_b * x_b
        A = (self.JT @ (self.J.multiply(wc[:, None]))).toarray()
        A[np.diag_indices_from(A)] += prec
        D = wi + tau_b
        BD = B / D[:, None]
        # S = A - B' D^-1 B, by a symmetric rank-k update (half the work of a product)
        Bs = B / np.sqrt(D)[:, None]
        S = _syrk(Bs, A)
        cho = np.linalg.cholesky(S)
        out.update(g_d=g_d, g_b=g_b, B=B, BD=BD, D=D, cho=cho)
        return out

    @staticmethod
    def _cho_solve(cho, r):
        from scipy.linalg import solve_triangular

        return solve_triangular(cho, solve_triangular(cho, r, lower=True), lower=True, trans="T")

    def mode(self, theta, tol=1e-9, max_iter=100, x0=None):
        """Conditional mode and Hessian blocks at ``theta`` (log sd's, one per term).

        Newton's method with step halving from the last mode (warm start); stops when half
        the Newton decrement ``g' H^-1 g`` is below ``tol`` (the remaining gain in the log
        density), so the returned Hessian is the one at the returned point.
        """
        theta = np.asarray(theta, dtype=float)
        if x0 is not None:
            x_d, x_b = x0[0].copy(), x0[1].copy()
        elif self._pred is not None and np.max(np.abs(theta - self._pred[0]) * self._scale) < 5:
            # first-order predictor from the last mode: x_hat(theta) ~ x_hat(theta0) + dx/dtheta d
            th0, xd0, xb0, dxd, dxb = self._pred
            d = theta - th0
            x_d, x_b = xd0 + d @ dxd, xb0 + d @ dxb
        else:
            x_d, x_b = self.x_d.copy(), self.x_b.copy()
        st = self._state(x_d, x_b, theta)
        it = 0
        for it in range(1, max_iter + 1):
            rhs = st["g_d"] - st["BD"].T @ st["g_b"]
            dx_d = self._cho_solve(st["cho"], rhs)
            dx_b = (st["g_b"] - st["B"] @ dx_d) / st["D"]
            decrement = float(st["g_d"] @ dx_d + st["g_b"] @ dx_b)
            if decrement / 2 < tol:
                break
            step = 1.0
            while True:
                new = self._state(x_d + step * dx_d, x_b + step * dx_b, theta)
                self.newton_steps += 1
                if new["f"] >= st["f"] - 1e-12 * abs(st["f"]) or step < 1e-8:
                    break
                step /= 2
            x_d, x_b, st = x_d + step * dx_d, x_b + step * dx_b, new
        self.x_d, self.x_b = x_d, x_b  # warm start for the next theta
        cho, D = st["cho"], st["D"]
        self._pred = (theta.copy(), x_d, x_b, *self._dx_dtheta(theta, x_d, x_b, st))
        logdet = 2 * float(np.sum(np.log(np.diag(cho)))) + float(np.sum(np.log(D)))
        return {"x_d": x_d, "x_b": x_b, "f": st["f"], "cho": cho, "B": st["B"], "BD": st["BD"],
                "D": D, "logdet": logdet, "iterations": it}

    def _dx_dtheta(self, theta, x_d, x_b, st):
        """d x_hat / d theta_t = H^-1 (2 tau_t x_hat_t) (block t), one Schur solve per term."""
        T = len(theta)
        dxd, dxb = np.zeros((T, self.nd)), np.zeros((T, self.nb))
        for t in range(T):
            tau = np.exp(-2 * theta[t])
            if t == self.big:
                r_b = 2 * tau * x_b
                z_d = self._cho_solve(st["cho"], -(st["BD"].T @ r_b))
                dxb[t] = (r_b - st["B"] @ z_d) / st["D"]
            else:
                r_d = np.zeros(self.nd)
                r_d[self.slices[t]] = 2 * tau * x_d[self.slices[t]]
                z_d = self._cho_solve(st["cho"], r_d)
                dxb[t] = -(st["BD"] @ z_d)
            dxd[t] = z_d
        return dxd, dxb

    def log_post_theta(self, theta, gradient=False):
        """Laplace approximation of log p(theta | y) + const (theta = log sd's).

        Returns ``(value, mode)``, or ``(value, gradient, mode)`` with ``gradient=True``.
        """
        theta = np.asarray(theta, dtype=float)
        md = self.mode(theta)
        self.evaluations += 1
        out = md["f"] - 0.5 * md["logdet"] - float(self.L @ theta)
        dprior = np.zeros(len(theta))
        for t, (dist, q) in enumerate(self.sd_prior):
            lp, d = _sd_logprior(dist, q, theta[t])
            out += lp
            dprior[t] = d
        if not gradient:
            return float(out), md
        return float(out), self._gradient(theta, md) + dprior, md

    def _third(self, md):
        """The latent Hessian's derivative terms at a mode: ``S^-1``, each item's variance and
        ``z = H^-1 sum_k m3_k v_k a_k`` (``m3 = n q (1-q)(1-2q)``, ``v_k = Var(eta_k)`` under
        the Gaussian, ``a_k`` pattern ``k``'s design row), as ``(Sinv, itemvar, z_d, z_b)``."""
        from scipy.linalg import solve_triangular

        x_d, x_b, cho, BD, B, D = md["x_d"], md["x_b"], md["cho"], md["BD"], md["B"], md["D"]
        Linv = solve_triangular(cho, np.eye(self.nd), lower=True)
        Sinv = Linv.T @ Linv
        Q = BD @ Sinv  # (nb, nd): B_i S^-1 / D_i
        itemvar = 1.0 / D + np.einsum("ij,ij->i", Q, BD)
        cellvar = np.empty(self.J.shape[0])
        for c0 in range(0, len(cellvar), 50_000):  # a_c' S^-1 a_c per cell, in row chunks
            Jc = self.J[c0:c0 + 50_000]
            cellvar[c0:c0 + 50_000] = np.asarray(Jc.multiply(Jc @ Sinv).sum(axis=1)).ravel()
        cc, ci = _var_pass(self.J @ x_d, x_b, self.cell_sorted, self.bidx_sorted, self.n_sorted,
                           self.J.indptr, self.J.indices, self.J.data, Q, cellvar, itemvar)
        c_d = self.JT @ cc
        z_d = self._cho_solve(cho, c_d - BD.T @ ci)
        z_b = (ci - B @ z_d) / D
        return Sinv, itemvar, z_d, z_b

    def mean_shift(self, md):
        """Second-order correction of the conditional mode towards the conditional mean.

        ``E[x | theta, y] ~ x_hat + H^-1 grad(-log det H / 2)`` (the Laplace expansion's
        next term; the mean of INLA's simplified Laplace marginals to first order): the
        gradient is ``sum_k d3_k v_k a_k / 2`` with ``d3 = -n q (1-q)(1-2q)`` the third
        derivative of pattern ``k``'s log-likelihood in ``eta_k``. Many weakly informed
        latent values (item effects, a rarely refused reference level) move the mean away
        from the mode; this shift is what a Gaussian at the mode misses (benchmarks/README.md,
        #24). Returns ``(dx_d, dx_b)``.
        """
        _, _, z_d, z_b = self._third(md)
        return -0.5 * z_d, -0.5 * z_b

    def _gradient(self, theta, md):
        """d/dtheta of f(x_hat) - logdet(H)/2 - L'theta (see docs/methods_hierarchical.md)."""
        x_d, x_b = md["x_d"], md["x_b"]
        Sinv, itemvar, z_d, z_b = self._third(md)
        T = len(theta)
        grad = np.zeros(T)
        diag = np.diag(Sinv)
        for t in range(T):
            tau = np.exp(-2 * theta[t])
            if t == self.big:
                xs, zs, tr = x_b, z_b, float(itemvar.sum())
            else:
                sl = self.slices[t]
                xs, zs, tr = x_d[sl], z_d[sl], float(diag[sl].sum())
            grad[t] = tau * (xs @ xs) + tau * tr - tau * (zs @ xs) - self.L[t]
        return grad

    def fit_theta(self, tol=1e-2, hessian=True):
        """Posterior mode of theta, the Hessian of -log p(theta | y) there, and evaluations.

        L-BFGS-B with the analytic gradient (bounds -12 <= theta <= 5) in the coordinates
        ``theta_t sqrt(2 L_t)`` (``gtol`` in those units: 0.01 moves theta by about a
        hundredth of its posterior sd); the Hessian by central differences of the gradient
        (step a tenth of ``1 / sqrt(2 L_t)``), symmetrised.
        """
        from scipy.optimize import minimize

        T = len(self.m.groups)
        sc = self._scale
        z0 = self._start() * sc

        def fun(z):
            v, g, _ = self.log_post_theta(z / sc, gradient=True)
            return -v, -g / sc

        res = minimize(fun, z0, jac=True, method="L-BFGS-B",
                       bounds=list(zip(-12.0 * sc, 5.0 * sc)), options={"gtol": tol, "maxiter": 200})
        theta = np.asarray(res.x) / sc
        self.mode(theta)
        if not hessian:
            return theta, None, self.evaluations
        H = np.zeros((T, T))
        pred = self._pred
        for t in range(T):
            h = 0.1 / sc[t]  # a tenth of the rough posterior sd
            e = np.zeros(T)
            e[t] = h
            self._pred = pred
            gp = self.log_post_theta(theta + e, gradient=True)[1]
            self._pred = pred
            gm = self.log_post_theta(theta - e, gradient=True)[1]
            H[:, t] = -(gp - gm) / (2 * h)
        self._pred = pred
        self.x_d, self.x_b = pred[1], pred[2]
        H = (H + H.T) / 2
        return theta, H, self.evaluations

    def _start(self):
        """A starting theta: log of the sd of the levels' empirical logits (shrunk), per term."""
        th = np.full(len(self.m.groups), np.log(0.5))
        s, n = self.s, self.n
        for t, g in enumerate(self.m.groups):
            K = np.bincount(g.index, weights=s, minlength=len(g.levels))
            N = np.bincount(g.index, weights=n, minlength=len(g.levels))
            z = np.log((K + 0.5) / (N - K + 0.5))
            v = np.var(z) - np.mean(1 / (K + 0.5) + 1 / (N - K + 0.5))
            th[t] = 0.5 * np.log(max(v, 0.01))
        return np.clip(th, -4.0, 2.0)

    # ------------------------------------------------------------------ posterior draws
    def design(self, theta, H):
        """The 2T+1 theta design points: the mode and +-a along each eigenvector of ``H`` in
        standardised units (``a = sqrt((2T+1)/2)``: equal weights reproduce the Gaussian's
        covariance). Returns ``(points, zs, scale)`` with ``theta = theta_hat + scale @ z``."""
        T = len(theta)
        lam, V = np.linalg.eigh(H)
        lam = np.maximum(lam, 1e-6)  # a flat direction (a sd at a bound) gets a wide, finite scale
        scale = V / np.sqrt(lam)[None, :]
        a = np.sqrt((2 * T + 1) / 2)
        zs = [np.zeros(T)] + [sgn * a * np.eye(T)[t] for t in range(T) for sgn in (1, -1)]
        points = [np.clip(theta + scale @ z, -12.0, 5.0) for z in zs]
        return points, zs, scale

    def theta_marginal(self, theta, H, lp0, t, max_drop=7.5):
        """Marginal log posterior of ``theta_t`` on a grid (INLA-style, APPROXIMATE).

        The Laplace log posterior is evaluated along the path on which the other log sd's
        follow their Gaussian regression on ``theta_t`` (``theta_hat + s u``, ``s`` in
        units of ``theta_t``'s curvature sd, capped at 2) at ``s = +-1.5, +-3`` and, where
        the density has dropped by less than 3.5 at ``+-3`` (a tail heavier than Gaussian,
        e.g. a group sd whose posterior reaches 0: its log sd has an exponential left tail),
        further out in steps growing by 1.6 until it has dropped by ``max_drop`` or theta
        reaches its bound. Returns ``(x, logp)``: theta_t's values and the log density
        (monotone cubic interpolation, linear extrapolation 6 units past the last point,
        cut at the bounds -12 and 5), normalised on the grid.
        """
        from scipy.interpolate import PchipInterpolator

        lam, V = np.linalg.eigh(H)
        cov = (V / np.maximum(lam, 1e-6)) @ V.T
        sd = min(float(np.sqrt(max(cov[t, t], 1e-12))), 2.0)
        u = cov[:, t] / max(cov[t, t], 1e-12) * sd  # theta_t moves by sd per unit s
        lo_s, hi_s = (-12.0 - theta[t]) / sd, (5.0 - theta[t]) / sd
        centre = (self.x_d.copy(), self.x_b.copy(), self._pred)
        S, L = [0.0], [0.0]
        for sgn in (1.0, -1.0):
            self.x_d, self.x_b, self._pred = centre
            s, drop = 0.0, 0.0
            for step in (1.5, 3.0, 4.8, 7.7, 12.3, 19.7, 31.5, 50.4, 80.6):
                if step > 3.0 and drop >= (3.5 if step == 4.8 else max_drop):
                    break
                s = float(np.clip(sgn * step, lo_s, hi_s))
                if s == S[-1]:
                    break
                th = np.clip(theta + s * u, -12.0, 5.0)
                drop = lp0 - self.log_post_theta(th)[0]
                S.append(s)
                L.append(-drop)
                if s in (lo_s, hi_s):
                    break
        self.x_d, self.x_b, self._pred = centre
        order = np.argsort(S)
        S, L = np.asarray(S)[order], np.asarray(L)[order]
        grid = np.linspace(max(S[0] - 6.0, lo_s), min(S[-1] + 6.0, hi_s), 1201)
        f = PchipInterpolator(S, L, extrapolate=False)(grid)
        left, right = grid < S[0], grid > S[-1]
        sl0 = (L[1] - L[0]) / (S[1] - S[0])
        sl1 = (L[-1] - L[-2]) / (S[-1] - S[-2])
        f[left] = L[0] + max(sl0, 0.5) * (grid[left] - S[0])  # at least a slowly decaying tail
        f[right] = L[-1] + min(sl1, -0.5) * (grid[right] - S[-1])
        x = theta[t] + grid * sd
        f -= np.log(np.trapezoid(np.exp(f - f.max()), x)) + f.max()
        return x, f

    def sample(self, theta, H, draws, rng):
        """Draws of the latent vector and of theta from the nested Laplace approximation.

        The latent Gaussians ``N(x_hat(theta) + dx(theta), H(theta)^-1)`` (``dx`` the mean
        correction of :meth:`mean_shift`) are mixed over the :meth:`design` points, weighted
        by the Laplace posterior of theta relative to its Gaussian (INLA's correction).
        Each log sd's marginal comes from :meth:`theta_marginal` (a grid), and their draws
        are joined by the Gaussian's correlation (a Gaussian copula). Returns
        ``(x_d draws, x_b draws, theta draws, info)``.
        """
        from scipy.linalg import solve_triangular
        from scipy.special import ndtr

        T = len(theta)
        points, zs, scale = self.design(theta, H)
        lps, states = [], []
        centre = (self.x_d.copy(), self.x_b.copy(), self._pred)
        shifts = []
        for th in points:
            self.x_d, self.x_b, self._pred = centre  # each point starts from the mode's predictor
            lp, md = self.log_post_theta(th)
            lps.append(lp)
            dd, db = self.mean_shift(md)
            shifts.append(dd[: self.p].copy())
            # what drawing needs (B D^-1 in single precision: 14 MB per point at full scale)
            states.append({"x_d": md["x_d"] + dd, "x_b": md["x_b"] + db, "cho": md["cho"], "D": md["D"],
                           "BD": md["BD"].astype(np.float32)})
        self.x_d, self.x_b, self._pred = centre
        lps = np.array(lps)
        logw = lps - lps[0] + 0.5 * np.array([z @ z for z in zs])
        w = np.exp(logw - logw.max())
        w /= w.sum()
        counts = rng.multinomial(draws, w)
        xd, xb = [], []
        for md, c in zip(states, counts):
            if c == 0:
                continue
            z = rng.standard_normal((c, self.nd))
            dd = solve_triangular(md["cho"], z.T, lower=True, trans="T").T
            db = -(dd @ md["BD"].T.astype(float)) + rng.standard_normal((c, self.nb)) / np.sqrt(md["D"])[None, :]
            xd.append(md["x_d"][None, :] + dd)
            xb.append(md["x_b"][None, :] + db)
        xd, xb = np.vstack(xd), np.vstack(xb)
        perm = rng.permutation(draws)
        xd, xb = xd[perm], xb[perm]
        # theta: grid marginals joined by the Gaussian's correlation
        cov = scale @ scale.T
        sdv = np.sqrt(np.diag(cov))
        corr = cov / np.outer(sdv, sdv)
        zc = rng.multivariate_normal(np.zeros(T), corr, size=draws, method="eigh")
        theta_draws = np.empty((draws, T))
        e0 = self.evaluations
        for t in range(T):
            x, f = self.theta_marginal(theta, H, lps[0], t)
            p = np.exp(f)
            cdf = np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(x))])
            cdf /= cdf[-1]
            theta_draws[:, t] = np.interp(ndtr(zc[:, t]), cdf, x)
        names = self.m.fixed_names
        info = {"points": [p.tolist() for p in points], "weights": w.tolist(),
                # the fixed effects at the joint mode given theta_hat (what glmer(nAGQ = 0)
                # estimates) and the mean correction added to them there
                "fixed_mode": dict(zip(names, (states[0]["x_d"][: self.p] - shifts[0]).tolist())),
                "mean_shift_fixed": dict(zip(names, shifts[0].tolist())),
                "theta_grid_evaluations": self.evaluations - e0}
        return xd, xb, theta_draws, info
