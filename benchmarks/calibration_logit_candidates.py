"""Candidates for logit's small-sample clustered inference that were measured and not kept (#19).

``benchmarks/calibration_logit.py`` measures what ``logit`` does (CR2, CR3, the default's rule
between them, CR1, GEE) on the shapes ``SHAPES`` (f)-(k). This script measures, on the same
tables (same generator, same seeds), two alternatives that were candidates for the default
and lost, so that the numbers docs/validity.md quotes for them can be reproduced:

* **CR2 with an exchangeable working model** (Pustejovsky & Tipton 2018, clubSandwich's
  ``vcovCR(..., target = Theta)``): the adjustment makes the sandwich unbiased when the rows
  of a cluster share a correlation ``rho`` (moment estimator on the Pearson residuals of the
  logistic fit), not only for independent rows; Satterthwaite df and HTZ use the same target
  (clubSandwich's ``get_GH`` with ``inverse_var = FALSE``). Also with the working-independence
  Satterthwaite df of the default CR2.
* **The wild cluster bootstrap for the logistic score** (Kline & Santos 2012): Rademacher
  weights per cluster, the restricted fit (WCR) for tests and for intervals by test inversion,
  the unrestricted fit (WCU, symmetric percentile-t) for intervals; one-step (linearized)
  replicates, studentized by the CR0 sandwich of the perturbed scores; 399 draws.

Everything runs on the (cluster, pattern) pairs of the fit's design: a cluster's rows that
share a covariate pattern enter through their count (for the exchangeable target, in the span
of the pattern indicators ``1_k / sqrt(n_k)``, which is exact: the within-pattern contrasts have
zero leverage and zero score).

Run: ``nice -n 10 python benchmarks/calibration_logit_candidates.py 400`` (shapes f, g, h).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from calibration_logit import SHAPE_FORMULA, SHAPES, _row, _seeds, _shape_table, _shape_truth
from scipy import sparse, stats
from scipy.special import expit

from refusalstats import logit
from refusalstats.regression.covariance import _cluster_info, _inv_sqrt_psd, _sorted_pairs
from refusalstats.regression.irls import _irls


def _sym_power(A: np.ndarray, power: float) -> np.ndarray:
    ev, U = np.linalg.eigh(0.5 * (A + A.T))
    f = np.where(ev > 1e-12, np.where(ev > 1e-12, ev, 1.0) ** power, 0.0)
    return (U * f) @ U.T


def _pairs(fit):
    """The fit's sorted (cluster, pattern) pairs, cluster starts, design and fitted mean."""
    d = fit._design
    cl = _sorted_pairs(d.cluster)
    starts = np.searchsorted(cl.g, np.arange(cl.n_clusters + 1))
    mu = expit(d.X @ fit.params.to_numpy())
    return d, cl, starts, mu


def _rho(fit) -> float:
    """Moment estimator of the exchangeable correlation on Pearson residuals (dispersion 1)."""
    _, cl, _, mu = _pairs(fit)
    v = mu * (1 - mu)
    t = np.bincount(cl.g, weights=(cl.s - cl.n * mu[cl.j]) / np.sqrt(v[cl.j]), minlength=cl.n_clusters)
    ss = np.bincount(cl.g, weights=(cl.s * (1 - mu[cl.j]) ** 2 + (cl.n - cl.s) * mu[cl.j] ** 2) / v[cl.j],
                     minlength=cl.n_clusters)
    m = np.bincount(cl.g, weights=cl.n, minlength=cl.n_clusters)
    return float(np.clip((t * t - ss).sum() / np.sum(m * (m - 1)), 0.0, 0.98))


class _TargetCR2:
    """CR2 of the working OLS (``sqrt(w) z`` on ``sqrt(w) X``) with target ``Phi_j = (1 - rho) I +
    rho 1 1'`` per cluster: ``A_j = D [D (Phi - H Phi - Phi H' + X M Omega M X') D]^(-1/2) D``,
    ``D = Phi^(1/2)`` (any root gives the same ``A_j``), and the pieces of clubSandwich's
    Satterthwaite / HTZ (``H1 = M E U L``, ``H2 = M E Phi U L``, ``H3 = M E U Omega_ct``,
    ``G = M E Phi E' M``)."""

    def __init__(self, fit, rho: float):
        d, cl, starts, mu = _pairs(fit)
        X = d.X
        v = mu * (1 - mu)
        p = X.shape[1]
        M = np.linalg.inv((X * (d.n * v)[:, None]).T @ X)
        blocks, Om = [], np.zeros((p, p))
        for j in range(cl.n_clusters):
            sl = slice(starts[j], starts[j + 1])
            k, n = cl.j[sl], cl.n[sl]
            Xr = X[k] * np.sqrt(n * v[k])[:, None]
            er = (cl.s[sl] - n * mu[k]) / np.sqrt(n * v[k])
            sn = np.sqrt(n)
            Phi = (1 - rho) * np.eye(len(k)) + rho * np.outer(sn, sn)
            blocks.append((Xr, er, Phi))
            Om += Xr.T @ Phi @ Xr
        MOM = M @ Om @ M
        L, Oc = np.linalg.cholesky(M), np.linalg.cholesky(MOM)
        S, H1, H2, H3, G = [], [], [], [], []
        for Xr, er, Phi in blocks:
            H = Xr @ M @ Xr.T
            D = _sym_power(Phi, 0.5)
            B = D @ (Phi - H @ Phi - Phi @ H.T + Xr @ MOM @ Xr.T) @ D
            E = Xr.T @ (D @ _sym_power(B, -0.5) @ D)
            S.append(E @ er)
            ME = M @ E
            H1.append(ME @ Xr @ L)
            H2.append(ME @ Phi @ Xr @ L)
            H3.append(ME @ Xr @ Oc)
            G.append(ME @ Phi @ ME.T)
        S = np.array(S)
        self.V = M @ S.T @ S @ M
        self.parts = tuple(np.array(a) for a in (H1, H2, H3, G))

    def _P(self, C: np.ndarray) -> np.ndarray:
        """clubSandwich's P array for the rows of C: P[s, t, j, k]."""
        H1, H2, H3, G = self.parts
        h1, h2, h3 = (np.einsum("sa,jab->sjb", C, H) for H in (H1, H2, H3))
        P = (np.einsum("sjb,tkb->stjk", h3, h3) - np.einsum("sjb,tkb->stjk", h1, h2)
             - np.einsum("sjb,tkb->stjk", h2, h1))
        J = H1.shape[0]
        P[:, :, np.arange(J), np.arange(J)] += np.einsum("sa,jab,tb->stj", C, G, C)
        return P

    def df(self, C: np.ndarray) -> np.ndarray:
        P = self._P(C)
        return np.array([np.trace(P[s, s]) ** 2 / (P[s, s] ** 2).sum() for s in range(len(C))])

    def htz_p(self, C: np.ndarray, b: np.ndarray) -> float:
        q = len(C)
        P = self._P(C)
        On = _inv_sqrt_psd(np.einsum("stjj->st", P))
        B = np.einsum("su,uvjk,vt->stjk", On, P, On)
        var = sum((B[s, t] * B[t, s]).sum() + (B[s, s] * B[t, t]).sum() for s in range(q) for t in range(q))
        nu = q * (q + 1) / var
        cb = C @ b
        Q = float(cb @ np.linalg.solve(C @ self.V @ C.T, cb))
        df2 = nu - q + 1
        return float(stats.f.sf(max(df2 / nu, 0.0) * Q / q, q, df2))


class _WildScore:
    """Wild cluster bootstrap of the logistic score (Rademacher weights, one-step replicates)."""

    def __init__(self, fit, n_boot: int = 399, seed: int = 1):
        d, cl, starts, _ = _pairs(fit)
        self.X, self.Xf, self.s, self.n, self.cl, self.starts = d.X, d.Xf, d.s, d.n, cl, starts
        self.J = cl.n_clusters
        self.v = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_boot, self.J))
        self.bhat = fit.params.to_numpy()
        self.hat = self._pieces(self.bhat)

    def _pieces(self, beta):
        X, cl = self.X, self.cl
        mu = expit(X @ beta)
        r = cl.s - cl.n * mu[cl.j]
        R = np.asarray(sparse.csr_matrix((r, (cl.g, cl.j)), shape=(self.J, len(X))) @ X)
        F = _cluster_info(X, self.Xf, mu * (1 - mu), cl, 0, self.J, self.starts)
        return R, F, np.linalg.inv(F.sum(0))

    @staticmethod
    def _wald(C, beta, theta, pieces) -> float:
        R, _, M = pieces
        a = R @ (M @ C.T)
        num = C @ beta - theta
        return float(num @ np.linalg.solve(a.T @ a, num))

    def _boot(self, C, pieces) -> np.ndarray:
        R, F, M = pieces
        U = M @ C.T
        D = self.v @ R @ M                                            # one-step replicates
        a = self.v[:, :, None] * (R @ U)[None] - np.einsum("bp,jpq->bjq", D, np.einsum("jab,bq->jaq", F, U))
        num = D @ C.T
        Vq = np.einsum("bjs,bjt->bst", a, a)
        return np.einsum("bs,bs->b", num, np.linalg.solve(Vq, num[:, :, None])[:, :, 0])

    def _restricted(self, cols, theta):
        keep = [k for k in range(self.X.shape[1]) if k not in cols]
        bb, _, _ = _irls(self.X[:, keep], self.s, self.n, beta0=self.bhat[keep],
                         offset=self.X[:, cols] @ theta, eps=1e-12, maxit=100)
        beta = np.zeros(self.X.shape[1])
        beta[keep], beta[cols] = bb, theta
        return beta

    def wcr_p(self, cols, theta) -> float:
        C = np.zeros((len(cols), len(self.bhat)))
        C[np.arange(len(cols)), cols] = 1.0
        theta = np.asarray(theta, float)
        W = self._wald(C, self.bhat, theta, self.hat)
        Ws = self._boot(C, self._pieces(self._restricted(cols, theta)))
        return (1 + np.sum(Ws >= W)) / (1 + len(Ws))

    def wcu_ci(self, i, conf=0.95):
        C = np.zeros((1, len(self.bhat)))
        C[0, i] = 1.0
        R, _, M = self.hat
        se = np.sqrt(((R @ M @ C.T) ** 2).sum())
        q = np.quantile(np.sqrt(self._boot(C, self.hat)), conf)
        return self.bhat[i] - q * se, self.bhat[i] + q * se

    def wcr_ci(self, i, conf=0.95, tol=1e-3):
        step = 12 * np.sqrt(self.hat[2][i, i])
        out = []
        for sign in (-1, 1):
            near, far = self.bhat[i], self.bhat[i] + sign * step
            for _ in range(6):
                if self.wcr_p([i], [far]) <= 1 - conf:
                    break
                far = self.bhat[i] + 2 * (far - self.bhat[i])
            while abs(far - near) > tol:
                mid = 0.5 * (near + far)
                if self.wcr_p([i], [mid]) > 1 - conf:
                    near = mid
                else:
                    far = mid
            out.append(0.5 * (near + far))
        return tuple(out)


def _candidate_checks(key: str, reps: int, seed: int) -> list[dict]:
    desc, per_task, sizes, effect = SHAPES[key]
    truth = _shape_truth(effect)
    t0 = time.perf_counter()
    names = ("target", "target-indep-df", "WCR", "WCU")
    hits = dict.fromkeys(names, 0)
    fp = {k: [0, 0] for k in ("target", "WCR")}
    for s in _seeds(seed, 100 + ord(key), reps):  # the tables of calibration_logit's shape checks
        df = _shape_table(np.random.default_rng(s), per_task, sizes, effect)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = logit(SHAPE_FORMULA, df, cluster="item_id", vcov="CR2", progress=False)
        b = f.params.to_numpy()
        i = list(f.params.index).index("task[T.t1]")
        C = np.zeros((1, len(b)))
        C[0, i] = 1.0
        tc = _TargetCR2(f, _rho(f))
        se = np.sqrt(tc.V[i, i])
        for name, dfi in (("target", tc.df(C)[0]), ("target-indep-df", f.df.iloc[i])):
            q = stats.t.ppf(0.975, dfi)
            hits[name] += b[i] - q * se <= truth <= b[i] + q * se
        wb = _WildScore(f, seed=s % 100_000)
        lo, hi = wb.wcr_ci(i)
        hits["WCR"] += lo <= truth <= hi
        lo, hi = wb.wcu_ci(i)
        hits["WCU"] += lo <= truth <= hi
        for t, term in enumerate(("domain", "persona")):
            cols = f._design.term_columns[term]
            Ct = np.zeros((len(cols), len(b)))
            Ct[np.arange(len(cols)), cols] = 1.0
            fp["target"][t] += tc.htz_p(Ct, b) < 0.05
            fp["WCR"][t] += wb.wcr_p(cols, np.zeros(len(cols))) < 0.05
    data = f"{desc} (calibration_logit's generator and seeds)"
    out = []
    for name, label in (("target", "CR2 with an exchangeable target + its Satterthwaite t"),
                        ("target-indep-df", ("CR2 with an exchangeable target + working-independence "
                                             "Satterthwaite t")),
                        ("WCR", "wild cluster restricted score bootstrap (test inversion)"),
                        ("WCU", "wild cluster unrestricted score bootstrap (symmetric percentile-t)")):
        out.append(_row(f"candidate, not kept: 95% {label} interval of task[T.t1] covers {truth:.3f}", data,
                        "coverage", hits[name], reps, 0.93, 0.97, t0))
    for name, label in (("target", "CR2 with an exchangeable target + HTZ"),
                        ("WCR", "wild cluster restricted score bootstrap")):
        for t, what in enumerate(("item-level factor (domain)", "row-level factor (persona)")):
            out.append(_row(f"candidate, not kept: drop-one test by {label} of a null {what}", data,
                            "false-positive rate", fp[name][t], reps, None, 0.07, t0))
    return out


def run(reps: int = 400, seed: int = 0, shapes: str = "fgh") -> list[dict]:
    rows: list[dict] = []
    for key in shapes:
        rows += _candidate_checks(key, reps, seed)
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    from calibration import table

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    print(table([dict(r, area="logit") for r in run(reps)]))
