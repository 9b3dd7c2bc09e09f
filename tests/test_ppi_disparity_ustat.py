"""The U-statistic variance of the disparity's test statistic (issue #22, research kinds).

D(q) = V_c - q V_0 with V = r' B r - sum_g t_g' B t_g (the noise correction from the same
units' influences t_g) is a U-statistic: its variance has no fourth-moment term, and
``ppi._ustat_products`` estimates it without bias. Checked against a closed form on
rare-event (Bernoulli, 3-8%) units, where the plug-in 4 r' B S B r - 2 tr(B S B S) is
biased upwards by the units' fourth and third moments.
"""

import numpy as np
import pytest

from refusalstats import ppi


def _B(mem, P):
    idx = np.flatnonzero(mem)
    k = len(idx)
    M = np.zeros((P, P))
    M[np.ix_(idx, idx)] = (np.eye(k) - 1 / k) / (k - 1)
    return M


def test_ustat_variance_is_exact_and_unbiased_on_rare_event_units():
    """Units: n_p = 40 per persona, t_g = (Z_g - pi_p) / n_p with Z_g ~ Bernoulli(pi_p),
    pi_p 0.03-0.08 (a persona's labels with a few disagreements). Closed form:
    Var D = 4 sum_p (B mu)_p^2 sigma_p^2 + 2 [sum_{p != p'} B_pp'^2 sigma_p^2 sigma_p'^2
    + sum_p B_pp^2 (sigma_p^4 - n_p s_p^2)], s_p = pi_p (1 - pi_p) / n_p^2 one unit's variance,
    sigma_p^2 = n_p s_p. 20,000 simulated data sets: the variance of D over them and the
    mean of the estimate S(q) (moments path) both match it (Monte Carlo error about 1.5%);
    the plug-in is about 14% too high. The personas-by-units path equals the moments path."""
    rng = np.random.default_rng(11)
    P, n = 8, 40
    cat = np.arange(P) < 4
    ctrl = ~cat
    pi = np.array([0.03, 0.05, 0.06, 0.08, 0.04, 0.05, 0.07, 0.03])
    mu = np.array([0.10, 0.16, 0.22, 0.30, 0.15, 0.17, 0.19, 0.21])
    q = 2.0
    B = _B(cat, P) - q * _B(ctrl, P)
    s = pi * (1 - pi) / n**2
    sig2 = n * s
    off = (B**2 * np.outer(sig2, sig2)).sum() - (np.diag(B) ** 2 * sig2**2).sum()
    exact = 4 * np.sum((B @ mu) ** 2 * sig2) + 2 * (off + np.sum(np.diag(B) ** 2 * (sig2**2 - n * s**2)))

    R = 20_000
    Z = rng.random((R, P, n)) < pi[None, :, None]
    t = (Z - pi[None, :, None]) / n                       # R x P x n units
    r = mu[None] + t.sum(2)
    m2, m3, m4 = (t**2).sum(2), (t**3).sum(2), (t**4).sum(2)
    noise = (np.diag(B)[None] * m2).sum(1)
    D = np.einsum("rp,pq,rq->r", r, B, r) - noise
    est = np.empty(R)
    plug = np.empty(R)
    for i in range(R):
        c = ppi._ustat_products(cat, ctrl, r[i], 1, moments=(m2[i], m3[i], m4[i]))
        est[i] = c[0] - 2 * q * c[1] + q**2 * c[2]
        S = np.diag(m2[i])
        plug[i] = 4 * r[i] @ B @ S @ B @ r[i] - 2 * np.trace(B @ S @ B @ S)
    assert np.mean(D) == pytest.approx(mu @ B @ mu, abs=3 * np.std(D) / np.sqrt(R))
    assert np.var(D) == pytest.approx(exact, rel=0.03)
    assert np.mean(est) == pytest.approx(exact, rel=0.02)
    assert np.mean(plug) > 1.08 * exact

    # the personas x units path on a few data sets: the same numbers
    for i in range(5):
        T = np.zeros((P, P * n))
        for p in range(P):
            T[p, p * n:(p + 1) * n] = t[i, p]
        a = ppi._ustat_products(cat, ctrl, r[i], 1, T=T)
        b = ppi._ustat_products(cat, ctrl, r[i], 1, moments=(m2[i], m3[i], m4[i]))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-18)


def test_ll_max_closed_form_equals_a_grid_search():
    """_ll_max's roots of the score against the log-likelihood maximized on a fine grid."""
    rng = np.random.default_rng(5)
    g = np.concatenate([[0.0], np.geomspace(1e-9, 1.0, 400_001)])
    for _ in range(20):
        x = rng.normal(0, 4e-3)
        lx, W = rng.uniform(1e-4, 5e-3), rng.uniform(1e-7, 1e-5)
        got = ppi._ll_max(np.array([x]), lx, W)[0]
        assert got == pytest.approx(ppi._ll(x, g, lx, W).max(), abs=1e-9)
        assert got >= ppi._ll(x, g, lx, W).max() - 1e-12


def test_lr_interval_is_the_set_a_brute_force_likelihood_ratio_accepts(monkeypatch):
    """_lr_interval (chi-square calibration) against the likelihood ratio computed from
    scratch: corrected variances, U-statistic W by a double loop over units, both maxima
    by a grid search over (v_c, v_0), on the function's grid of ratios, so the ends agree
    exactly. One design with clear spreads (bounded), one with the controls' spread inside
    the noise (unbounded above). The ends refined by bisection are accepted and a hair
    outside them rejected. Fails with the variance model 2 v l + 2 W, or l not per unit
    spread."""
    from scipy import stats

    rng = np.random.default_rng(8)
    P, C = 8, 60
    cat = np.arange(P) < 4
    ctrl = ~cat
    Rg = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 120), [np.inf]])
    v = np.concatenate([[0.0], np.geomspace(1e-8, 1.0, 1500)])
    for spread0, bounded in ((0.15, True), (0.0, False)):
        T = rng.normal(0, 0.006, (P, C)) * (rng.random((P, C)) < 0.3)
        rate = 0.2 + np.concatenate([rng.normal(0, 0.12, 4), rng.normal(0, spread0, 4)])
        monkeypatch.setattr(ppi, "_REFINE_STEPS", 0)
        lo, hi = ppi._lr_interval(cat, ctrl, rate, 1, T, 0, None, 0.05, boot=False)
        monkeypatch.setattr(ppi, "_REFINE_STEPS", 8)
        lo_r, hi_r = ppi._lr_interval(cat, ctrl, rate, 1, T, 0, None, 0.05, boot=False)
        Bs = [_B(cat, P), _B(ctrl, P)]
        V = [rate @ M @ rate - sum(T[:, g] @ M @ T[:, g] for g in range(C)) for M in Bs]
        W = [sum((T[:, g] @ M @ T[:, h]) ** 2 for g in range(C) for h in range(C) if g != h) for M in Bs]
        lin = [sum((T[:, g] @ M @ rate) ** 2 for g in range(C)) / (rate @ M @ rate) for M in Bs]

        def ll(x, vv, k, lin=lin, W=W):
            s = 4 * vv * lin[k] + 2 * W[k]
            return -0.5 * np.log(s) - (x - vv) ** 2 / (2 * s)
        full = ll(V[0], v, 0).max() + ll(V[1], v, 1).max()
        def accepts(R, V=V, full=full, ll=ll):
            if R == 0:
                rest = ll(V[0], 0.0, 0) + ll(V[1], v, 1).max()
            elif np.isinf(R):
                rest = ll(V[0], v, 0).max() + ll(V[1], 0.0, 1)
            else:
                rest = (ll(V[0], R**2 * v, 0) + ll(V[1], v, 1)).max()
            return 2 * (full - rest) <= stats.chi2.ppf(0.95, 1)
        acc = Rg[np.array([accepts(R) for R in Rg])]
        # refined ends: accepted, and a hair outside them rejected (the bisection's precision)
        assert accepts(lo_r) and not accepts(lo_r / 1.002) and lo_r <= lo
        if bounded:
            assert accepts(hi_r) and not accepts(hi_r * 1.002) and hi_r >= hi
        assert lo == pytest.approx(acc.min(), rel=1e-12, abs=1e-12)
        if bounded:
            assert np.isfinite(hi) and hi == pytest.approx(acc.max(), rel=1e-12)
        else:
            assert hi == np.inf and acc.max() == np.inf
