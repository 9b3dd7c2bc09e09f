"""The nested Laplace approximation's corrections (issue #24): the mean shift and the grid
marginal of a log sd, against dense algebra, quadrature and brute-force grids."""

import numpy as np
import pandas as pd
from scipy.special import expit

from refusalstats.bayes import HierarchicalModel
from refusalstats.bayes.laplace import _Laplace


def _rare_events(n_items=3, trials=12, rate=0.04, item_sd=1.0, seed=0):
    """A small table with few refusals: item effects and the intercept have skewed posteriors."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, item_sd, n_items)
    items = np.repeat(np.arange(n_items), trials)
    task = np.tile(["a", "b"], n_items * trials // 2)
    eta = np.log(rate / (1 - rate)) + u[items] + 0.8 * (task == "b")
    y = (rng.random(len(items)) < expit(eta)).astype(int)
    return pd.DataFrame({"item_id": [f"i{i}" for i in items], "task": task, "refusal": y})


def test_mean_shift_is_the_second_order_term_of_the_dense_posterior():
    """mean_shift = H^-1 sum_k d3_k Var(eta_k) a_k / 2 (d3 the likelihood's third derivative),
    computed here with the dense Hessian of all latent values."""
    df = _rare_events(n_items=25, trials=16, rate=0.1, seed=3)
    m = HierarchicalModel("refusal ~ task + (1|item_id)", df)
    lap = _Laplace(m)
    theta = np.array([np.log(0.9)])
    md = lap.mode(theta)
    n_pat = len(m.patterns)
    Z = np.zeros((n_pat, lap.nd + lap.nb))
    Z[:, : lap.p] = m.X
    Z[np.arange(n_pat), lap.nd + m.groups[0].index] = 1
    x = np.concatenate([md["x_d"], md["x_b"]])
    q = expit(Z @ x)
    prec = np.concatenate([[1 / 25] + [1 / 2.5**2] * (lap.p - 1), np.full(lap.nb, np.exp(-2 * theta[0]))])
    H = (Z * (lap.n * q * (1 - q))[:, None]).T @ Z + np.diag(prec)
    Sig = np.linalg.inv(H)
    v = np.einsum("ij,jk,ik->i", Z, Sig, Z)
    d3 = -lap.n * q * (1 - q) * (1 - 2 * q)
    want = Sig @ (Z.T @ (d3 * v)) / 2
    dd, db = lap.mean_shift(md)
    np.testing.assert_allclose(np.concatenate([dd, db]), want, rtol=1e-8, atol=1e-12)
    assert np.max(np.abs(want)) > 0.01  # a real shift on this table, not a test of zeros


def test_mean_shift_moves_the_mode_towards_the_exact_conditional_mean():
    """Given theta, the exact mean of (intercept, task, 3 item effects) by Gauss-Hermite
    quadrature of exp(f) in the Laplace Gaussian's whitened coordinates: the corrected mean
    x_hat + dx is at least 3x closer to it than the mode."""
    df = _rare_events(n_items=3, trials=12, rate=0.05, seed=1)
    m = HierarchicalModel("refusal ~ task + (1|item_id)", df)
    lap = _Laplace(m)
    theta = np.array([0.0])
    md = lap.mode(theta)
    n = lap.nd + lap.nb
    S = md["cho"] @ md["cho"].T
    A = S + md["B"].T @ md["BD"]
    H = np.block([[A, md["B"].T], [md["B"], np.diag(md["D"])]])
    Lc = np.linalg.cholesky(np.linalg.inv(H))
    nodes, wts = np.polynomial.hermite_e.hermegauss(9)  # weight exp(-z^2 / 2)
    grid = np.stack(np.meshgrid(*[nodes] * n, indexing="ij"), -1).reshape(-1, n)
    lw = np.sum(np.log(np.stack(np.meshgrid(*[wts] * n, indexing="ij"), -1).reshape(-1, n)), 1)
    x0 = np.concatenate([md["x_d"], md["x_b"]])
    xs = x0 + grid @ Lc.T
    f = np.array([lap._state(x[: lap.nd], x[lap.nd:], theta, want=False)["f"] for x in xs])
    logw = lw + f - md["f"] + 0.5 * np.sum(grid**2, 1)
    w = np.exp(logw - logw.max())
    exact = (w @ xs) / w.sum()
    dd, db = lap.mean_shift(md)
    err_mode = np.abs(x0 - exact)
    err_corr = np.abs(x0 + np.concatenate([dd, db]) - exact)
    assert np.max(err_mode) > 0.1, err_mode  # the mode is visibly off on this table
    assert np.max(err_corr) < np.max(err_mode) / 3, (err_corr, err_mode)


def test_theta_marginal_matches_a_brute_force_grid_when_the_sd_reaches_zero():
    """One log sd whose posterior reaches sd = 0 (no item variation in the data): the grid
    marginal's quantiles (few evaluations, interpolated) equal those of the Laplace
    marginal evaluated on 300 points, within 3% of the 95% range."""
    df = _rare_events(n_items=20, trials=10, rate=0.3, item_sd=0.0, seed=2)
    m = HierarchicalModel("refusal ~ task + (1|item_id)", df)
    lap = _Laplace(m)
    theta, H, _ = lap.fit_theta()
    lp0 = lap.log_post_theta(theta)[0]
    x, f = lap.theta_marginal(theta, H, lp0, 0)
    brute = np.linspace(-12.0, x[-1], 300)
    fb = np.array([lap.log_post_theta(np.array([t]))[0] for t in brute])

    def quantiles(xg, lg):
        p = np.exp(lg - lg.max())
        c = np.concatenate([[0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(xg))])
        return np.interp([0.025, 0.5, 0.975], c / c[-1], xg)

    got, want = quantiles(x, f), quantiles(brute, fb)
    assert want[0] < theta[0] - 3 * (want[2] - theta[0]), want  # a long left tail
    np.testing.assert_allclose(got, want, atol=0.03 * (want[2] - want[0]))
