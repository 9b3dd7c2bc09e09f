"""Tests of the W2 sensitivity indices: closed forms, estimator properties, the numba kernels
against a plain NumPy/POT reference, bootstrap coverage and the permutation null.

Known answers come from /work/shared/reference/w2-estimator.md (closed forms for 0/1 outputs,
jointly Gaussian inputs, Y = f(X)) and are derived again in docs/methods_w2.md.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refusalstats import _kernels as K
from refusalstats.sensitivity import TABLE_COLUMNS, default_partitions, w2_sensitivity
from refusalstats.sensitivity.encode import _encode_input, _encode_output
from refusalstats.sensitivity.estimators import _TableEstimator
from refusalstats.table import SchemaError


# --------------------------------------------------------------------------------------
# plain reference implementation (no numba): exact W2^2 by merging quantile breakpoints
# --------------------------------------------------------------------------------------
def w2sq_ref(a, b, wa=None, wb=None) -> float:
    """Exact W2^2 between two weighted empirical distributions on the real line."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    wa = np.ones(len(a)) if wa is None else np.asarray(wa, float)
    wb = np.ones(len(b)) if wb is None else np.asarray(wb, float)
    ia, ib = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    a, wa, b, wb = a[ia], wa[ia], b[ib], wb[ib]
    ca, cb = np.cumsum(wa) / wa.sum(), np.cumsum(wb) / wb.sum()
    brk = np.union1d(np.concatenate([[0.0], ca]), np.concatenate([[0.0], cb]))
    brk = brk[(brk >= 0) & (brk <= 1)]
    widths = np.diff(brk)
    mid = (brk[:-1] + brk[1:]) / 2
    qa = a[np.minimum(np.searchsorted(ca, mid, side="left"), len(a) - 1)]
    qb = b[np.minimum(np.searchsorted(cb, mid, side="left"), len(b) - 1)]
    return float(np.sum(widths * (qa - qb) ** 2))


def iota_ref(cells, y) -> float:
    """sum_m (n_m/N) W2^2(P_Y, P_{Y|m}) / (2 Var_pop(Y)), one cell at a time."""
    cells = np.asarray(cells)
    y = np.asarray(y, float)
    xi = 0.0
    for c in np.unique(cells):
        sel = cells == c
        xi += sel.mean() * w2sq_ref(y, y[sel])
    return xi / (2 * y.var())


def one_point(df, **kw):
    kw.setdefault("n_boot", 0)
    kw.setdefault("n_perm", 0)
    kw.setdefault("progress", False)
    return w2_sensitivity(df, **kw).table.set_index("input")


# Python splitmix64, to replay the kernels' random streams in the reference
MASK = (1 << 64) - 1


def splitmix_randint(state: int, n: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z = z ^ (z >> 31)
    u = float(z >> 11) * (1.0 / 9007199254740992.0)
    return state, min(int(u * n), n - 1)


# --------------------------------------------------------------------------------------
# the reference itself against POT
# --------------------------------------------------------------------------------------
@pytest.mark.xdist_group("POT")  # one worker imports it (make test: --dist loadgroup)
def test_reference_matches_pot_emd2(monkeypatch):
    # POT imports torch (and jax, ...) as backends when present: only numpy's is used here
    # (its import: 2.4 s -> 1.2 s)
    for lib in ("PYTORCH", "JAX", "TENSORFLOW", "CUPY"):
        monkeypatch.setenv(f"POT_BACKEND_DISABLE_{lib}", "1")
    import ot

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=37), rng.gamma(2.0, size=23)
    wa, wb = rng.integers(1, 5, 37), rng.integers(1, 5, 23)
    cost = (a[:, None] - b[None, :]) ** 2
    exact = ot.emd2(wa / wa.sum(), wb / wb.sum(), cost)
    assert w2sq_ref(a, b, wa, wb) == pytest.approx(exact, abs=1e-12)
    assert ot.wasserstein_1d(a, b, wa / wa.sum(), wb / wb.sum(), p=2) == pytest.approx(
        exact, abs=1e-10)


def test_default_partitions_matches_salib_heuristic():
    # values listed in w2-estimator.md (Plischke, Borgonovo & Smith 2013; SALib delta)
    assert [default_partitions(n) for n in (100, 1000, 10_000, 50_000, 200_000, 2_000_000)] == [
        4, 6, 22, 37, 48, 48]


# --------------------------------------------------------------------------------------
# numba kernels == reference to 1e-10
# --------------------------------------------------------------------------------------
def test_rank_cells_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, 1001).astype(float)  # ties split by order of appearance
    order = np.argsort(x, kind="stable")
    ref = np.empty(len(x), dtype=np.int64)
    ref[order] = np.arange(len(x)) * 7 // len(x)
    got = K.rank_cells(order.astype(np.int64), 7)
    assert np.array_equal(got, ref)
    assert np.bincount(got).max() - np.bincount(got).min() <= 1


@pytest.mark.parametrize("kind", ["levels", "ranks"])
def test_continuous_kernel_matches_reference(kind):
    rng = np.random.default_rng(2)
    n = 2500
    x = rng.normal(size=n)
    y = np.exp(0.7 * x + rng.normal(size=n)) + 3.0
    df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(rng.choice(list("abcde"), n))})
    name = "g" if kind == "levels" else "x"
    res = one_point(df, output="y", inputs=[name], partitions={name: 9} if kind == "ranks" else None)
    part = _encode_input(df, name, 9 if kind == "ranks" else None, n)
    assert res.loc[name, "iota"] == pytest.approx(iota_ref(part.codes, y), abs=1e-10)
    xi_ref = iota_ref(part.codes, y) * 2 * y.var()
    assert res.loc[name, "xi"] == pytest.approx(xi_ref, rel=1e-10)


def test_weighted_kernel_matches_reference_with_repeated_rows():
    rng = np.random.default_rng(3)
    n = 400
    ys = np.sort(rng.standard_t(3, size=n))
    cells_sorted = rng.integers(0, 6, n).astype(np.int64)
    members, starts = K.group_sorted(cells_sorted, 6)
    w = rng.integers(0, 4, n).astype(np.int64)  # bootstrap-like multiplicities incl. zeros
    xi, var = K.cells_xi_weighted(ys, members, starts, w)
    rep = np.repeat(ys, w)
    cells_rep = np.repeat(cells_sorted, w)
    assert var == pytest.approx(rep.var(), abs=1e-12)
    assert xi / (2 * var) == pytest.approx(iota_ref(cells_rep, rep), abs=1e-10)


def test_bootstrap_and_permutation_kernels_replay_exactly():
    """Replay the kernels' splitmix64 streams in Python and recompute with the reference."""
    rng = np.random.default_rng(4)
    n, m = 150, 4
    ys = np.sort(rng.normal(size=n))
    cells_sorted = rng.integers(0, m, n).astype(np.int64)
    members, starts = K.group_sorted(cells_sorted, m)
    seeds = np.array([12345, 2**63 + 7, 99], dtype=np.uint64)
    xi_b, var_b = K.boot_continuous(ys, members, starts, seeds)
    xi_p, var_p = K.perm_continuous(ys, cells_sorted, m, seeds)
    for r, seed in enumerate(seeds.tolist()):
        # stratified bootstrap: each cell resampled at its own size
        state, w = seed, np.zeros(n, dtype=np.int64)
        for c in range(m):
            s, nm = starts[c], starts[c + 1] - starts[c]
            for _ in range(nm):
                state, idx = splitmix_randint(state, int(nm))
                w[members[s + idx]] += 1
        rep, crep = np.repeat(ys, w), np.repeat(cells_sorted, w)
        assert np.bincount(crep, minlength=m).tolist() == np.bincount(cells_sorted).tolist()
        assert xi_b[r] / (2 * var_b[r]) == pytest.approx(iota_ref(crep, rep), abs=1e-10)
        # permutation: Fisher-Yates of the labels
        state, lab = seed, cells_sorted.copy()
        for i in range(n - 1, 0, -1):
            state, j = splitmix_randint(state, i + 1)
            lab[i], lab[j] = lab[j], lab[i]
        assert xi_p[r] / (2 * var_p[r]) == pytest.approx(iota_ref(lab, ys), abs=1e-10)


def test_table_kernel_matches_reference_for_likert_output():
    rng = np.random.default_rng(5)
    n = 3000
    g = rng.integers(0, 6, n)
    y = np.clip(np.round(2 + 0.4 * g + rng.normal(size=n)), 1, 5).astype(int)
    df = pd.DataFrame({"g": pd.Categorical(g), "y": y})
    res = w2_sensitivity(df, output="y", inputs=["g"], n_boot=0, n_perm=0, progress=False)
    assert res.output_kind == "ordinal"
    assert res.table.loc[0, "iota"] == pytest.approx(iota_ref(g, y), abs=1e-10)


def test_binary_closed_form_is_exact():
    rng = np.random.default_rng(6)
    n = 5000
    g = rng.choice(list("abcdefg"), n)
    y = (rng.random(n) < pd.Series(g).map(dict(zip("abcdefg", np.linspace(0.05, 0.6, 7))))).astype(
        int)
    df = pd.DataFrame({"g": g, "refusal": y})
    p = y.mean()
    pc = df.groupby("g")["refusal"].agg(["mean", "size"])
    closed = float((pc["size"] / n * (pc["mean"] - p).abs()).sum() / (2 * p * (1 - p)))
    got = one_point(df, inputs=["g"]).loc["g"]
    assert got["iota"] == pytest.approx(closed, abs=1e-12)
    assert got["xi"] == pytest.approx(float((pc["size"] / n * (pc["mean"] - p).abs()).sum()),
                                      abs=1e-12)
    assert got["iota"] == pytest.approx(iota_ref(g, y), abs=1e-10)


@pytest.mark.xdist_group("POT")  # one worker imports it (make test: --dist loadgroup)
def test_nominal_output_matches_pot_on_one_hot_labels():
    import ot  # POT imports torch as a backend when present: only where it is used

    rng = np.random.default_rng(7)
    n = 600
    g = rng.integers(0, 3, n)
    lab = np.where(rng.random(n) < 0.3 + 0.2 * g, "entail", rng.choice(["neutral", "contra"], n))
    df = pd.DataFrame({"g": g.astype(str), "label": lab})
    res = w2_sensitivity(df, output="label", inputs=["g"], n_boot=0, n_perm=0, progress=False)
    assert res.output_kind == "nominal"
    onehot = pd.get_dummies(pd.Series(lab)).to_numpy(float)
    cost = ot.dist(onehot, onehot)  # squared Euclidean
    u = np.full(n, 1 / n)
    xi = 0.0
    for c in range(3):
        sel = g == c
        xi += sel.mean() * ot.emd2(u, sel / sel.sum(), cost)
    var = onehot.var(axis=0).sum()
    assert res.table.loc[0, "iota"] == pytest.approx(xi / (2 * var), abs=1e-10)


@pytest.mark.xdist_group("POT")  # one worker imports it (make test: --dist loadgroup)
def test_multivariate_output_matches_row_level_emd2():
    import ot

    rng = np.random.default_rng(8)
    n = 240
    g = rng.integers(0, 3, n)
    y1 = rng.integers(0, 3, n) + g
    y2 = rng.integers(0, 2, n) * (g == 1)
    df = pd.DataFrame({"g": g.astype(str), "y1": y1, "y2": y2})
    res = w2_sensitivity(df, output=["y1", "y2"], inputs=["g"], n_boot=20, n_perm=20,
                         progress=False)
    assert res.output_kind == "multivariate"
    ymat = np.column_stack([y1, y2]).astype(float)
    cost = ot.dist(ymat, ymat)
    u = np.full(n, 1 / n)
    xi = sum((g == c).mean() * ot.emd2(u, (g == c) / (g == c).sum(), cost) for c in range(3))
    var = ymat.var(axis=0).sum()
    assert res.table.loc[0, "iota"] == pytest.approx(xi / (2 * var), abs=1e-9)
    assert np.isfinite(res.table.loc[0, ["ci_low", "ci_high", "null_mean"]].astype(float)).all()


# --------------------------------------------------------------------------------------
# closed forms and known values
# --------------------------------------------------------------------------------------
def test_four_categories_known_value():
    # p_c = .1, .3, .5, .9 equally likely: p = .45, iota = .25 / (2 * .2475) = .50505
    rng = np.random.default_rng(9)
    n = 400_000
    g = rng.integers(0, 4, n)
    y = (rng.random(n) < np.array([0.1, 0.3, 0.5, 0.9])[g]).astype(np.int8)
    df = pd.DataFrame({"g": pd.Categorical(g), "refusal": y})
    assert one_point(df, inputs=["g"]).loc["g", "iota"] == pytest.approx(0.25 / (2 * 0.2475),
                                                                          abs=0.004)


@pytest.mark.parametrize("m,truth", [(10, 0.5), (5, (25 - 1) / (2 * 25))])
def test_bernoulli_of_uniform(m, truth):
    # X ~ U(0,1), Y ~ Bernoulli(X): 1/2 for even M, (M^2 - 1)/(2 M^2) for odd M
    rng = np.random.default_rng(10 + m)
    n = 200_000
    x = rng.random(n)
    df = pd.DataFrame({"x": x, "refusal": (rng.random(n) < x).astype(int)})
    assert one_point(df, inputs=["x"], partitions={"x": m}).loc["x", "iota"] == pytest.approx(
        truth, abs=0.006)


@pytest.mark.parametrize("rho,expected", [(0.5, 0.133), (0.8, 0.3995)])
def test_bivariate_normal(rho, expected):
    # truth 1 - sqrt(1 - rho^2) (0.134, 0.400); N = 1e5, M = 50 gives 0.133 and 0.3995
    rng = np.random.default_rng(11)
    n = 100_000
    x = rng.normal(size=n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
    got = one_point(pd.DataFrame({"x": x, "y": y}), output="y", inputs=["x"],
                    partitions={"x": 50}).loc["x", "iota"]
    assert got == pytest.approx(expected, abs=0.004)
    assert got == pytest.approx(1 - math.sqrt(1 - rho**2), abs=0.006)


def test_function_of_input_scores_one():
    rng = np.random.default_rng(12)
    g = rng.integers(0, 8, 3000)
    ybin = (g % 2).astype(int)
    lev = rng.integers(0, 300, 3000)
    ycont = rng.normal(size=300)[lev]  # ~300 distinct values: the continuous (row) path
    df = pd.DataFrame({"g": g.astype(str), "lev": lev.astype(str), "refusal": ybin, "y": ycont})
    assert one_point(df, inputs=["g"]).loc["g", "iota"] == pytest.approx(1.0, abs=1e-12)
    res = w2_sensitivity(df, output="y", inputs=["lev"], n_boot=0, n_perm=0, progress=False)
    assert res.output_kind == "continuous"
    assert res.table.loc[0, "iota"] == pytest.approx(1.0, abs=1e-10)


# --------------------------------------------------------------------------------------
# estimator properties
# --------------------------------------------------------------------------------------
def test_invariances_relabel_rows_and_transforms():
    rng = np.random.default_rng(13)
    n = 3000
    x = rng.normal(size=n)
    g = rng.choice(["u", "v", "w"], n)
    y = x + (g == "u") + rng.normal(size=n)
    df = pd.DataFrame({"x": x, "g": g, "y": y, "r": (y > 0.5).astype(int)})
    base = one_point(df, output="y", inputs=["x", "g"])
    # relabelled levels, shuffled rows, increasing transform of x, affine map of y
    df2 = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    df2["g"] = df2["g"].map({"u": "zz", "v": "aa", "w": "mm"})
    df2["x"] = np.exp(df2["x"])
    df2["y"] = 3.0 * df2["y"] - 7.0
    other = one_point(df2, output="y", inputs=["x", "g"])
    assert np.allclose(base["iota"], other["iota"], atol=1e-10)
    assert np.allclose(other["xi"], 9.0 * base["xi"], rtol=1e-10)
    b = one_point(df, output="r", inputs=["g"])
    o = one_point(df2.assign(r=(df2["y"] > 3 * 0.5 - 7).astype(int)), output="r", inputs=["g"])
    assert b["iota"].iloc[0] == pytest.approx(o["iota"].iloc[0], abs=1e-12)


@pytest.mark.parametrize("output", ["r", "y"])
def test_refinement_never_decreases_iota(output):
    rng = np.random.default_rng(14)
    n = 4000
    x = rng.random(n)
    a = rng.integers(0, 3, n)
    z = rng.integers(0, 4, n)
    y = np.sin(6 * x) + 0.3 * a * z + rng.normal(size=n)
    df = pd.DataFrame({"x": x, "a": a.astype(str), "az": (a * 10 + z).astype(str), "y": y,
                       "r": (y > 0.2).astype(int)})
    coarse = one_point(df, output=output, inputs=["a"]).loc["a", "iota"]
    fine = one_point(df, output=output, inputs=["az"]).loc["az", "iota"]
    assert fine >= coarse - 1e-12
    ranks = [one_point(df, output=output, inputs=["x"], partitions={"x": m}).loc["x", "iota"]
             for m in (3, 6, 12, 24)]  # nested equal-count cells
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(ranks))


def test_iota_at_least_half_first_order_sobol():
    rng = np.random.default_rng(15)
    n = 5000
    g = rng.integers(0, 5, n)
    y = rng.gamma(1 + g, 1.0)
    df = pd.DataFrame({"g": g.astype(str), "y": y})
    iota = one_point(df, output="y", inputs=["g"]).loc["g", "iota"]
    s = pd.Series(y).groupby(g).transform("mean").var(ddof=0) / y.var()
    assert iota >= s / 2
    assert iota <= 1


def test_independent_input_bias_and_permutation_null():
    """E[iota] under independence follows the square-root law; the null estimates it."""
    rng = np.random.default_rng(16)
    n, p = 2000, 0.3
    sizes = np.array([200, 400, 600, 800])
    law = math.sqrt(2 / math.pi) * np.sum(np.sqrt(sizes * (n - sizes))) / (
        2 * n**1.5 * math.sqrt(p * (1 - p)))
    iotas, null_means, corrected, pvals = [], [], [], []
    for rep in range(40):
        g = np.repeat(np.arange(4), sizes)
        y = (rng.random(n) < p).astype(int)
        res = w2_sensitivity(pd.DataFrame({"g": g.astype(str), "refusal": y}), inputs=["g"],
                             n_boot=0, n_perm=200, seed=rep, progress=False).table.iloc[0]
        iotas.append(res["iota"])
        null_means.append(res["null_mean"])
        corrected.append(res["iota_corrected"])
        pvals.append(res["p_value"])
    assert np.mean(iotas) == pytest.approx(law, rel=0.15)
    assert np.mean(null_means) == pytest.approx(law, rel=0.05)
    assert np.mean(corrected) < 0.35 * law  # the bias is mostly removed
    assert 0.2 < np.mean(np.array(pvals) < 0.5) < 0.8


def test_permuted_tables_keep_both_margins_and_hypergeometric_mean():
    rng = np.random.default_rng(17)
    n = 900
    g = rng.integers(0, 5, n)
    y = rng.integers(1, 4, n)
    df = pd.DataFrame({"g": g.astype(str), "y": y})
    out = _encode_output(df, "y")
    est = _TableEstimator(out, _encode_input(df, "g", None, n))
    captured = []
    est.xi_var = lambda counts: (captured.append(counts.copy()), (np.zeros(len(counts)),) * 2)[1]
    est.perm(3000, np.random.default_rng(0))
    tabs = captured[0]
    assert (tabs.sum(axis=2) == est.sizes[None, :]).all()
    assert (tabs.sum(axis=1) == est.counts.sum(axis=0)[None, :]).all()
    expected = np.outer(est.sizes, est.counts.sum(axis=0)) / n
    assert np.allclose(tabs.mean(axis=0), expected, atol=0.5)
    captured.clear()
    est.boot(5, np.random.default_rng(0))
    assert (captured[0].sum(axis=2) == est.sizes[None, :]).all()  # stratified bootstrap




# --------------------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=2, max_size=60),
    perm=st.permutations([0, 1, 2, 3]),
)
def test_property_bounds_symmetry_and_reference(data, perm):
    g = np.array([d[0] for d in data])
    y = np.array([d[1] for d in data])
    if len(np.unique(g)) < 2 or len(np.unique(y)) < 2:
        return
    df = pd.DataFrame({"g": g.astype(str), "y": y})
    iota = one_point(df, output="y", inputs=["g"]).loc["g", "iota"]
    assert -1e-12 <= iota <= 1 + 1e-12
    assert iota == pytest.approx(iota_ref(g, y), abs=1e-10)
    relabelled = df.assign(g=np.array(perm)[g].astype(str))
    assert one_point(relabelled, output="y", inputs=["g"]).loc["g", "iota"] == pytest.approx(
        iota, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dist=st.sampled_from(["normal", "exponential", "bimodal"]),
    scale=st.floats(1e-3, 1e3),
    decimals=st.integers(1, 4),
    m=st.integers(2, 8),
)
def test_property_continuous_path_bounds_and_reference(seed, dist, scale, decimals, m):
    rng = np.random.default_rng(seed)
    n = 600
    x = rng.normal(size=n)
    base = {"normal": rng.normal(size=n), "exponential": rng.exponential(size=n),
            "bimodal": rng.normal(size=n) + 4 * (rng.random(n) < 0.3)}[dist]
    y = np.round(scale * (base + rng.uniform(-1, 1) * x), decimals)  # ties included
    if len(np.unique(y)) <= 256:  # keep to the continuous (row) path
        y = y + np.arange(n) * 1e-6 * scale
    df = pd.DataFrame({"x": x, "y": y})
    res = w2_sensitivity(df, output="y", inputs=["x"], partitions={"x": m}, n_boot=0, n_perm=0,
                         progress=False)
    assert res.output_kind == "continuous"
    iota = res.table.loc[0, "iota"]
    assert -1e-12 <= iota <= 1 + 1e-12
    part = _encode_input(df, "x", m, n)
    assert iota == pytest.approx(iota_ref(part.codes, y), abs=1e-9)


# --------------------------------------------------------------------------------------
# result object, reproducibility, errors
# --------------------------------------------------------------------------------------
def _small_df(n=1200, seed=19):
    rng = np.random.default_rng(seed)
    g = rng.choice(["m1", "m2", "m3"], n)
    t = rng.choice(["nli", "pol"], n)
    y = (rng.random(n) < np.where(g == "m1", 0.5, 0.1)).astype(int)
    return pd.DataFrame({"model": pd.Categorical(g), "task": t, "refusal": y,
                         "x": rng.normal(size=n)})


def test_table_plot_and_reproducibility():
    df = _small_df()
    res = w2_sensitivity(df, inputs=["model", "task"], n_boot=200, n_perm=100, seed=3,
                         progress=False)
    assert list(res.table.columns) == TABLE_COLUMNS
    assert list(res.table["n_partitions"]) == [3, 2]
    row = res.table.set_index("input").loc["model"]
    assert row["ci_low"] <= row["iota"] <= row["ci_high"]
    assert row["iota_corrected"] == pytest.approx(max(row["iota"] - row["null_mean"], 0))
    assert row["p_value"] == pytest.approx(1 / 101)
    again = w2_sensitivity(df, inputs=["model", "task"], n_boot=200, n_perm=100, seed=3,
                           progress=False)
    pd.testing.assert_frame_equal(res.table, again.table)
    other = w2_sensitivity(df, inputs=["model", "task"], n_boot=200, n_perm=100, seed=4,
                           progress=False)
    assert not np.allclose(res.table["ci_low"], other.table["ci_low"])
    # an input's numbers do not depend on which other inputs are analysed alongside
    alone = w2_sensitivity(df, inputs=["task"], n_boot=200, n_perm=100, seed=3, progress=False)
    pd.testing.assert_series_equal(alone.table.iloc[0], res.table.iloc[1], check_names=False)

    from matplotlib.figure import Figure

    fig = res.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_ylabel() and ax.get_xlabel() == "input"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["model", "task"]
    assert len(ax.patches) >= 4  # two bars and two null bands
    assert "model" in repr(res)


def test_no_boot_no_perm_gives_nan_columns():
    res = w2_sensitivity(_small_df(), inputs=["model"], n_boot=0, n_perm=0, progress=False)
    row = res.table.iloc[0]
    assert np.isnan([row["ci_low"], row["ci_high"], row["null_mean"], row["iota_corrected"]]).all()
    assert res.plot() is not None


@pytest.mark.parametrize(
    "mutate,kwargs,match",
    [
        (lambda d: d.assign(refusal=0), {}, "constant"),
        (lambda d: d.assign(refusal=d["refusal"].astype(float).where(d.index > 3)), {},
         "'refusal' has 4 missing"),
        (lambda d: d.assign(task=d["task"].where(d.index > 0)), {}, "'task' has 1 missing"),
        (lambda d: d.assign(task="nli"), {}, "single level"),
        (lambda d: d.head(5), {"inputs": ["x"], "partitions": {"x": 10}}, "only 5 rows"),
        (lambda d: d, {"inputs": ["nope"]}, "nope"),
        (lambda d: d, {"output": "nope"}, "nope"),
        (lambda d: d, {"inputs": ["model"], "partitions": {"model": 4}}, "categorical"),
        (lambda d: d, {"inputs": ["x"], "partitions": {"x": "bins"}}, "'levels'"),
        (lambda d: d, {"output": ["refusal", "task"], "inputs": ["model"]}, "numeric columns"),
        (lambda d: d, {"n_boot": -1}, "n_boot"),
        (lambda d: d, {"inputs": ["refusal"]}, "both output and input"),
    ],
)
def test_bad_input_errors_name_the_problem(mutate, kwargs, match):
    kw = {"inputs": ["model", "task"], "n_boot": 0, "n_perm": 0, "progress": False}
    kw.update(kwargs)
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        w2_sensitivity(mutate(_small_df()), **kw)


def test_cli_sensitivity_writes_table_and_plot(tmp_path, capsys):
    from refusalstats.cli import main

    df = _small_df()
    df["persona"] = pd.Categorical(np.resize(["Atheist", "Black person"], len(df)))
    df["prompt"] = pd.Categorical(np.resize(["p1", "p2", "p3"], len(df)))
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    csv, png = tmp_path / "w2.csv", tmp_path / "w2.png"
    rc = main(["sensitivity", str(path), "--inputs", "model,task,x", "--partitions", "x=4",
               "--boot", "50", "--perm", "20", "--csv", str(csv), "--plot", str(png),
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model" in printed and "iota_corrected" in printed
    got = pd.read_csv(csv)
    want = w2_sensitivity(df, inputs=["model", "task", "x"], partitions={"x": 4}, n_boot=50,
                          n_perm=20, progress=False).table
    assert np.allclose(got["iota"], want["iota"]) and np.allclose(got["ci_low"], want["ci_low"])
    assert png.stat().st_size > 1000


def test_rank_bins_on_few_distinct_values_warn():
    df = _small_df()
    df["x"] = np.round(df["x"]).clip(-1, 1)  # three distinct values
    with pytest.warns(RuntimeWarning, match="only 3 distinct values"):
        w2_sensitivity(df, inputs=["x"], partitions={"x": 6}, n_boot=0, n_perm=0,
                       progress=False)


def test_simulated_paper_ranking_model_task_then_persona_prompt():
    # P1's Fig. 5: model matters most, then task, then persona and prompt (at full scale,
    # benchmarks/README.md: 0.682 > 0.338 > 0.141 > 0.129); 5% of the items here
    from refusalstats.simulate import simulate_paper

    df = simulate_paper(scale=0.05, seed=1)
    tab = w2_sensitivity(df, n_boot=200, n_perm=100, seed=0, cluster="item_id",
                         progress=False).table
    tab = tab.set_index("input")
    assert tab.loc["model", "ci_low"] > tab.loc["task", "ci_high"]
    assert tab.loc["task", "ci_low"] > max(tab.loc["persona", "ci_high"],
                                           tab.loc["prompt", "ci_high"])
    assert (tab["iota"] > tab["null_q95"]).all()


def test_plot_draws_intervals_that_exclude_the_estimate():
    from matplotlib.collections import LineCollection

    res = w2_sensitivity(_small_df(), inputs=["model"], n_boot=10, n_perm=0, progress=False)
    res.table.loc[0, ["iota", "ci_low", "ci_high"]] = [0.018, 0.022, 0.096]
    ax = res.plot().axes[0]
    segs = [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()]
    assert any(np.allclose(sorted(seg[:, 1]), [0.022, 0.096]) for seg in segs)


# --------------------------------------------------------------------------------------
# clustered answers (issue #11): item bootstrap, item-level / within-item permutation null
# --------------------------------------------------------------------------------------
def _items(n_items=120, k=10, seed=0, **kw):
    import refusalstats as rs

    return rs.simulate_items(n_items, k, item_sd=1.0, intercept=-1.0, seed=seed, **kw)


def test_cluster_kernels_replay_exactly():
    """Cluster bootstrap and both cluster permutations of the continuous kernels, replayed in
    Python (splitmix64) and recomputed with the reference."""
    rng = np.random.default_rng(41)
    n, m, n_g = 120, 3, 17
    ys = np.sort(rng.normal(size=n))
    clus = rng.integers(0, n_g, n).astype(np.int64)
    clus[:n_g] = np.arange(n_g)
    cells_row = rng.integers(0, m, n).astype(np.int64)
    members, starts = K.group_sorted(cells_row, m)
    cmembers, cstarts = K.group_sorted(clus, n_g)
    clab = rng.integers(0, m, n_g).astype(np.int64)
    sgroups, sstarts = np.arange(n_g, dtype=np.int64), np.array([0, n_g], dtype=np.int64)
    seeds = np.array([7, 2**63 + 11, 424242], dtype=np.uint64)
    xi_b, var_b = K.boot_clusters_continuous(ys, members, starts, clus, n_g, sgroups, sstarts,
                                             seeds)
    xi_c, var_c = K.perm_clusters_continuous(ys, clus, clab, m, seeds)
    xi_w, var_w = K.perm_within_continuous(ys, cells_row, cmembers, cstarts, m, seeds)
    for r, seed in enumerate(seeds.tolist()):
        state, cw = seed, np.zeros(n_g, dtype=np.int64)
        for _ in range(n_g):
            state, g = splitmix_randint(state, n_g)
            cw[g] += 1
        w = cw[clus]
        assert xi_b[r] / (2 * var_b[r]) == pytest.approx(
            iota_ref(np.repeat(cells_row, w), np.repeat(ys, w)), abs=1e-10)
        state, perm = seed, clab.copy()
        for i in range(n_g - 1, 0, -1):
            state, j = splitmix_randint(state, i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        assert xi_c[r] / (2 * var_c[r]) == pytest.approx(iota_ref(perm[clus], ys), abs=1e-10)
        state, lab = seed, cells_row.copy()
        for g in range(n_g):
            pos = cmembers[cstarts[g]:cstarts[g + 1]]
            for i in range(len(pos) - 1, 0, -1):
                state, j = splitmix_randint(state, i + 1)
                lab[pos[i]], lab[pos[j]] = lab[pos[j]], lab[pos[i]]
        assert xi_w[r] / (2 * var_w[r]) == pytest.approx(iota_ref(lab, ys), abs=1e-10)


def _capture(est):
    captured = []
    est.xi_var = lambda counts: (captured.append(counts.copy()), (np.zeros(len(counts)),) * 2)[1]
    return captured


def _clustered_table(df, name, stratified=False):
    from refusalstats.sensitivity.encode import _encode_clusters

    out = _encode_output(df, "y")
    clus = _encode_clusters(df, "item_id")
    return _TableEstimator(out, _encode_input(df, name, None, len(df)), clus, stratified), clus


def test_cluster_bootstrap_tables_are_resampled_items():
    """A replicate's table equals the table of the items drawn, rows repeated with them."""
    rng = np.random.default_rng(42)
    n_items, k = 40, 6
    item = np.repeat(np.arange(n_items), k)
    df = pd.DataFrame({"item_id": item, "task": (item % 3).astype(str),
                       "persona": rng.integers(0, 4, len(item)).astype(str),
                       "y": rng.integers(1, 4, len(item))})
    for name, stratified in [("task", False), ("task", True), ("persona", False)]:
        est, clus = _clustered_table(df, name, stratified)
        captured = _capture(est)
        est.boot(30, np.random.default_rng(1))
        w = est.cluster_weights(30, np.random.default_rng(1)).astype(np.int64)
        assert (w.sum(axis=1) == n_items).all()
        codes = _encode_input(df, name, None, len(df)).codes
        for b in (0, 7, 29):
            rw = w[b][clus.codes]
            want = np.zeros_like(est.counts)
            np.add.at(want, (np.repeat(codes, rw), np.repeat(_encode_output(df, "y").codes, rw)), 1)
            assert (captured[0][b] == want).all()
        if stratified:  # items drawn within each task: items per task are kept
            per_task = np.array([w[:, est.lab == c].sum(axis=1) for c in range(3)])
            assert (per_task == np.bincount(est.lab)[:, None]).all()


def test_cluster_permutations_keep_the_right_margins():
    rng = np.random.default_rng(43)
    n_items = 60
    size = rng.integers(3, 14, n_items)  # items of different sizes
    item = np.repeat(np.arange(n_items), size)
    p_item = rng.uniform(0.05, 0.9, n_items)[item]
    # even items see personas 0/1, odd items 2/3: answers may not cross between items
    persona = 2 * (item % 2) + rng.integers(0, 2, len(item))
    df = pd.DataFrame({"item_id": item, "task": (item % 3).astype(str),
                       "persona": persona.astype(str),
                       "y": (rng.random(len(item)) < p_item).astype(int) + 1})
    # item-level input: whole items move between levels; an item's answers stay together
    est, clus = _clustered_table(df, "task")
    assert est.scheme == "items"
    captured = _capture(est)
    est.perm(2000, np.random.default_rng(0))
    tabs = captured[0]
    assert (tabs.sum(axis=1) == est.counts.sum(axis=0)).all()
    # whole items move, so a level's size changes with the items it gets; its expected
    # table is (items in the level / items) x the pooled value counts
    sizes = tabs.sum(axis=2)
    assert (sizes != sizes[0]).any()
    share = np.bincount(est.lab, minlength=3) / n_items
    want = np.outer(share, est.counts.sum(axis=0))
    assert np.abs(tabs.mean(axis=0) - want).max() < 0.02 * est.counts.sum() / 3
    # within items: every item's own (partition, value) margins are kept, so the expected
    # table is sum_g outer(n_gc, h_gk) / n_g (not the pooled outer product / N)
    est, clus = _clustered_table(df, "persona")
    assert est.scheme == "within items"
    captured = _capture(est)
    est.perm(4000, np.random.default_rng(0))
    tabs = captured[0]
    assert (tabs.sum(axis=2) == est.sizes).all()
    assert (tabs.sum(axis=1) == est.counts.sum(axis=0)).all()
    even = est.h[np.arange(n_items) % 2 == 0].sum(axis=0)
    assert (tabs[:, :2, :].sum(axis=1) == even).all()
    codes = _encode_input(df, "persona", None, len(df)).codes
    n_gc = np.bincount(clus.codes * 4 + codes, minlength=n_items * 4).reshape(n_items, 4)
    expected = np.einsum("gc,gk->ck", n_gc / size[:, None], est.h)
    pooled = np.outer(est.sizes, est.counts.sum(axis=0)) / len(df)
    assert np.abs(tabs.mean(axis=0) - expected).max() < 0.25
    assert np.abs(pooled - expected).max() > 1.0  # the test can tell the two apart
    # the sparse per-item table (many items x cells) draws the same tables as the dense one
    import refusalstats.sensitivity.estimators as S

    est_d, _ = _clustered_table(df, "persona")
    old_limit = S.DENSE_CLUSTER_TABLE
    S.DENSE_CLUSTER_TABLE = 0
    try:
        est_s, _ = _clustered_table(df, "persona")
    finally:
        S.DENSE_CLUSTER_TABLE = old_limit
    assert not est_d.sparse and est_s.sparse
    for est_x in (est_d, est_s):
        est_x._within_setup()
    a = est_d._perm_within(50, np.random.default_rng(7))
    b = est_s._perm_within(50, np.random.default_rng(7))
    assert (a == b).all()


def _within_reference_tables(item, cell, y, n_cells, k_sup, n_rep, rng):
    """The row-level within-item null, written out: shuffle the outputs within each item
    (numpy, rows sorted by item) and count the (cell, value) table."""
    order = np.argsort(item, kind="stable")
    item, cell, y = item[order], cell[order], y[order]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    bounds = np.r_[starts, len(item)]
    tabs = np.empty((n_rep, n_cells, k_sup), dtype=np.int64)
    for r in range(n_rep):
        ys = y.copy()
        for a, b in itertools.pairwise(bounds):
            ys[a:b] = rng.permutation(ys[a:b])
        tabs[r] = np.bincount(cell * k_sup + ys, minlength=n_cells * k_sup).reshape(n_cells,
                                                                                     k_sup)
    return tabs


@pytest.mark.parametrize("k_sup", [2, 3])
def test_within_item_null_matches_row_shuffling_in_law(k_sup):
    """The within-item null is drawn from per-(item, cell) counts (multivariate
    hypergeometric per item), no longer by placing answers among row slots: its null
    distribution of the index must match shuffling each item's outputs among its rows
    (two-sample KS over 2,000 permutations), while the pooled (across items) null, run as a
    negative control, must not."""
    from scipy.stats import ks_2samp

    from refusalstats.sensitivity.estimators import _iota

    rng = np.random.default_rng(2024)
    n_items = 40
    size = rng.integers(4, 16, n_items)
    item = np.repeat(np.arange(n_items), size)
    # items differ in rate and in their mix of personas: within != pooled
    p_item = np.where(np.arange(n_items) % 2 == 0, 0.15, 0.6)[item]
    persona = 2 * (item % 2) + rng.integers(0, 2, len(item))
    y = (rng.random(len(item)) < p_item).astype(int)
    if k_sup == 3:
        y = y + (rng.random(len(item)) < 0.3)
    df = pd.DataFrame({"item_id": item, "persona": persona.astype(str), "y": y})
    est, _ = _clustered_table(df, "persona")
    assert est.scheme == "within items" and est.counts.shape[1] == k_sup
    cell = _encode_input(df, "persona", None, len(df)).codes
    ycode = _encode_output(df, "y").codes
    n_rep = 2000
    ref = _within_reference_tables(item, cell, ycode, est.counts.shape[0], k_sup, n_rep,
                                   np.random.default_rng(1))
    captured = _capture(est)
    est.perm(n_rep, np.random.default_rng(2))
    got = captured[0]
    assert (got.sum(axis=2) == est.sizes).all()
    assert (got.sum(axis=1) == est.counts.sum(axis=0)).all()
    del est.xi_var  # back to the class method
    stat_ref = _iota(*est.xi_var(ref))
    stat_new = _iota(*est.xi_var(got))
    assert ks_2samp(stat_ref, stat_new).pvalue > 0.01
    # negative control: the pooled null (labels moved across items) is told apart
    flat = _TableEstimator(_encode_output(df, "y"), _encode_input(df, "persona", None,
                                                                  len(df)), None, False)
    stat_flat = _iota(*flat.xi_var(_flat_tables(flat, n_rep)))
    assert ks_2samp(stat_ref, stat_flat).pvalue < 0.01


def _flat_tables(est, n_rep):
    captured = _capture(est)
    est.perm(n_rep, np.random.default_rng(3))
    del est.xi_var
    return captured[0]


def test_cluster_auto_and_explicit_and_errors():
    import refusalstats as rs

    df = _items(60, 5, seed=1)
    with pytest.warns(rs.ClusterNote, match="item_id"):
        res = w2_sensitivity(df, inputs=["task", "persona"], n_boot=20, n_perm=20,
                             progress=False)
    assert res.cluster == "item_id" and res.n_clusters == 60
    assert res.null_scheme == {"task": "items", "persona": "within items"}
    again = w2_sensitivity(df, inputs=["task", "persona"], n_boot=20, n_perm=20,
                           cluster="item_id", progress=False)
    pd.testing.assert_frame_equal(res.table, again.table)
    flat = w2_sensitivity(df, inputs=["task"], n_boot=20, n_perm=20, cluster=None,
                          progress=False)
    assert flat.cluster is None and flat.null_scheme == {"task": "rows"}
    assert "rows independent" in repr(flat) and "clustered by 'item_id'" in repr(res)
    with pytest.raises(ValueError, match="nope"):
        w2_sensitivity(df, inputs=["task"], cluster="nope", progress=False)
    with pytest.raises(ValueError, match="both output and cluster"):
        w2_sensitivity(df, inputs=["task"], cluster="refusal", progress=False)
    with pytest.raises(ValueError, match="single cluster"):
        w2_sensitivity(df.assign(one=1), inputs=["task"], cluster="one", progress=False)
    with pytest.raises(ValueError, match="bootstrap"):
        w2_sensitivity(df, inputs=["task"], bootstrap="blocks", cluster=None, progress=False)


def _rate(fn, reps):
    return sum(bool(fn(s)) for s in range(reps)) / reps


def test_calibration_studies_moved_to_benchmarks_still_run():
    """The W2 coverage, false-positive-rate and bootstrap-spread studies (~3,000 fits) run
    in benchmarks/calibration_w2_checks.py (#23); here each runs on 2 replicates so the
    script keeps working with the package."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import calibration_w2_checks as cal
    finally:
        sys.path.pop(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (fn, _) in cal.STUDIES.items():
            for label, (value, (lo, hi)) in fn(2).items():
                assert np.isfinite(value) and lo < hi, (name, label)




def _true_iota(df, which):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from calibration_w2 import true_iota
    finally:
        sys.path.pop(0)
    return true_iota(df.attrs["truth"], which)


def test_true_iota_closed_form_matches_a_large_simulation():
    effects = {"item_effect": [0.0, 0.3, 2.0], "row_effect": [0.0, 0.0, 1.2, 1.2, 1.2]}
    big = _items(60_000, 10, seed=7, **effects)
    got = one_point(big, inputs=["task", "persona"], cluster=None)
    # population-averaged rates integrated over the item effect; sampling sd here ~0.0015
    assert got.loc["task", "iota"] == pytest.approx(_true_iota(big, "task"), abs=0.006)
    assert got.loc["persona", "iota"] == pytest.approx(_true_iota(big, "persona"), abs=0.004)






def test_distinguishable_and_notes_in_table_and_plot():
    from matplotlib.figure import Figure

    from refusalstats.plot import w2 as fig_w2

    df = _items(200, 10, seed=5, item_effect=[0.0, 0.3, 2.0])
    res = w2_sensitivity(df, inputs=["task", "prompt"], n_boot=200, n_perm=200, seed=1,
                         cluster="item_id", progress=False)
    tab = res.table.set_index("input")
    assert list(res.table.columns) == TABLE_COLUMNS
    assert str(res.table["distinguishable"].dtype) == "boolean"
    assert tab.loc["task", "distinguishable"] and tab.loc["task", "note"] == ""
    # prompt has no effect: p > 0.05 here, and the table, the notes and the plot say so
    assert tab.loc["prompt", "p_value"] > 0.05
    assert not tab.loc["prompt", "distinguishable"]
    assert "not distinguishable from its permutation null" in tab.loc["prompt", "note"]
    assert any(t.startswith("prompt: not distinguishable") for t in res.notes)
    # the estimate of a null input typically lies below its own bootstrap CI: noted
    outside = not tab.loc["prompt", "ci_low"] <= tab.loc["prompt", "iota"] <= tab.loc[
        "prompt", "ci_high"]
    assert outside == ("outside its own 95% CI" in tab.loc["prompt", "note"])
    for fig in (res.plot(), fig_w2(res)):
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        hatched = [p for p in ax.patches if p.get_gid() == "null-like"]
        assert len(hatched) == 1
        foot = [t for t in ax.texts if t.get_gid() == "w2-footnote"]
        assert len(foot) == int(outside)
    # no permutations: nothing to compare with, distinguishable is missing (NA)
    none = w2_sensitivity(df, inputs=["task"], n_boot=0, n_perm=0, cluster=None,
                          progress=False).table
    assert none["distinguishable"].isna().all() and none["note"].iloc[0] == ""
    # an estimate forced outside its interval gets the note and the dagger footnote
    res.table.loc[0, ["iota", "ci_low", "ci_high"]] = [0.01, 0.02, 0.09]
    ax = fig_w2(res.table).axes[0]
    assert [t for t in ax.texts if t.get_gid() == "w2-footnote"]


def test_sparse_cluster_tables_match_dense(monkeypatch):
    """Many clusters x partitions x values: the per-cluster counts are kept sparse; same
    numbers as the dense path (same seeds, same draws)."""
    import refusalstats.sensitivity.estimators as S

    df = _items(80, 7, seed=9, item_effect=0.5, row_effect=0.4)
    df["likert"] = (df["refusal"] * 2 + df["item_id"] % 3).astype(int)
    kw = {"output": "likert", "inputs": ["task", "persona"], "n_boot": 50, "n_perm": 50,
          "cluster": "item_id", "ci": "bca", "progress": False}
    dense = w2_sensitivity(df, **kw).table
    monkeypatch.setattr(S, "DENSE_CLUSTER_TABLE", 0)
    sparse = w2_sensitivity(df, **kw).table
    pd.testing.assert_frame_equal(dense, sparse)


def test_clustered_continuous_output_runs_every_scheme():
    df = _items(60, 8, seed=4, item_effect=2.0)
    df["score"] = df["refusal"] + 0.3 * np.random.default_rng(0).normal(size=len(df))
    for boot in ("auto", "unstratified", "stratified"):
        res = w2_sensitivity(df, output="score", inputs=["task", "persona"], n_boot=60,
                             n_perm=60, cluster="item_id", bootstrap=boot, ci="bca",
                             progress=False)
        t = res.table.set_index("input")
        assert res.null_scheme == {"task": "items", "persona": "within items"}
        assert np.isfinite(t[["ci_low", "ci_high", "null_q95"]].to_numpy()).all()
        assert t.loc["task", "distinguishable"]
    assert res.boot_scheme == {"task": "items within levels", "persona": "items"}


# ----------------------------------------------------------------------------- result object (issue 13)
def test_result_object_frame_conf_int_summary_repr_and_seeds():
    rng = np.random.default_rng(5)
    g = rng.choice(["a", "b", "c"], size=1500)
    df = pd.DataFrame({"g": g, "noise": rng.choice(["x", "y"], size=1500),
                       "refusal": (rng.random(1500) < pd.Series(g).map({"a": 0.1, "b": 0.4, "c": 0.8})
                                   .to_numpy()).astype(int)})
    res = w2_sensitivity(df, inputs=["g", "noise"], n_boot=300, n_perm=50, seed=1, progress=False)
    tab = res.to_frame()
    pd.testing.assert_frame_equal(tab, res.table)
    assert tab is not res.table
    ci = res.conf_int()
    np.testing.assert_allclose(ci.to_numpy(), res.table[["ci_low", "ci_high"]].to_numpy())
    ci80 = res.conf_int(conf=0.8, ci="percentile")
    boot_g = res.boot["g"][np.isfinite(res.boot["g"])]
    np.testing.assert_allclose(ci80.loc["g"], np.quantile(boot_g, [0.1, 0.9]))
    assert ci80.attrs["interval"] == "80% percentile bootstrap"
    # the default, expanded: the spread about the median scaled by sqrt(G/(G-1)) t_df / z,
    # G = 1,500 rows (one stratum: the unstratified bootstrap), df = 1,500 - 1
    from scipy.stats import norm, t

    assert res.ci_method == "expanded" and res.units["g"] == (1500.0, 1499.0)
    exp80 = res.conf_int(conf=0.8)
    scale = np.sqrt(1500 / 1499) * t.ppf(0.9, 1499) / norm.ppf(0.9)
    mid = np.median(boot_g)
    np.testing.assert_allclose(exp80.loc["g"], mid + scale * (np.quantile(boot_g, [0.1, 0.9]) - mid))
    assert exp80.attrs["interval"] == "80% expanded bootstrap"
    assert ((ci80["ci_high"] - ci80["ci_low"]) <= (ci["ci_high"] - ci["ci_low"])).all()
    with pytest.raises(ValueError, match="conf"):
        res.conf_int(conf=0)
    s = res.summary()
    assert isinstance(s, str) and "noise" in s and "<table" in s._repr_html_()
    r = repr(res)
    assert r.startswith("W2SensitivityResult(") and len(r.splitlines()) <= 4 and "iota" in r
    # seed: an int, None or a Generator; a Generator advances, an int reproduces
    again = w2_sensitivity(df, inputs=["g"], n_boot=50, n_perm=0, seed=1, progress=False)
    same = w2_sensitivity(df, inputs=["g"], n_boot=50, n_perm=0, seed=1, progress=False)
    np.testing.assert_array_equal(again.boot["g"], same.boot["g"])
    gen = np.random.default_rng(0)
    a = w2_sensitivity(df, inputs=["g"], n_boot=50, n_perm=0, seed=gen, progress=False)
    b = w2_sensitivity(df, inputs=["g"], n_boot=50, n_perm=0, seed=gen, progress=False)
    assert not np.array_equal(a.boot["g"], b.boot["g"])
    c = w2_sensitivity(df, inputs=["g"], n_boot=50, n_perm=0, seed=np.random.default_rng(0),
                       progress=False)
    np.testing.assert_array_equal(a.boot["g"], c.boot["g"])
    w2_sensitivity(df, inputs=["g"], n_boot=5, n_perm=0, seed=None, progress=False)
    with pytest.raises(TypeError, match="seed"):
        w2_sensitivity(df, inputs=["g"], n_boot=5, n_perm=0, seed="x", progress=False)


# ----------------------------------------------------------------------------- Parquet sources (issue 15)
def _shards(df, folder, k=3):
    folder.mkdir()
    for i, idx in enumerate(np.array_split(np.arange(len(df)), k)):
        df.iloc[idx].to_parquet(folder / f"part-{i}.parquet")
    return folder


def _same(a, b):
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    for name in a.boot:
        np.testing.assert_array_equal(a.boot[name], b.boot[name])
        np.testing.assert_array_equal(a.null[name], b.null[name])
    assert (a.partitions, a.n, a.cluster, a.n_clusters, a.boot_scheme, a.null_scheme) == (
        b.partitions, b.n, b.cluster, b.n_clusters, b.boot_scheme, b.null_scheme)


@pytest.mark.parametrize("kw", [{}, {"cluster": None}, {"ci": "bca"},
                                {"bootstrap": "unstratified"}, {"ci": "studentized"}])
def test_parquet_shards_give_the_in_memory_result(tmp_path, kw):
    """A file, a folder of 3 shards, a glob and a list: counts streamed by collapse, the
    same estimates, CIs, p-values and replicates as the DataFrame with the same seed."""
    import refusalstats as rs

    df = rs.simulate_paper(scale=0.02, seed=3)
    folder = _shards(df, tmp_path / "shards")
    opts = {"n_boot": 40, "n_perm": 20, "seed": 4, "progress": False, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.ClusterNote)
        ref = w2_sensitivity(df, **opts)
        assert ref.cluster == (None if "cluster" in kw else "item_id")
        _same(ref, w2_sensitivity(folder, **opts))
        if kw:  # each option once through a folder; every kind of source with the defaults
            return
        for src in (str(folder / "*.parquet"), sorted(folder.glob("*.parquet"))):
            _same(ref, w2_sensitivity(src, **opts))
        df.to_parquet(tmp_path / "one.parquet")
        _same(ref, w2_sensitivity(tmp_path / "one.parquet", **opts))


def test_parquet_text_and_bool_columns_and_sparse_cluster_table(tmp_path, monkeypatch):
    """String (not categorical) inputs and item ids, a bool output, an integer input with few
    values, several cluster columns and the sparse cluster table: still identical."""
    import refusalstats.sensitivity.estimators as S

    df = _items(90, 6, seed=2, item_effect=0.8)
    df = df.assign(task=df["task"].astype(str), persona=df["persona"].astype(str),
                   item_id="i" + df["item_id"].astype(str).str.zfill(3),
                   refusal=df["refusal"].astype(bool),
                   dose=df["prompt"].cat.codes.astype(np.int64), site=df["item_id"] % 2)
    df["site_item"] = df["site"].astype(str) + "|" + df["item_id"]  # a combined key column
    folder = _shards(df, tmp_path / "s")
    opts = {"inputs": ["task", "persona", "dose"], "n_boot": 80, "n_perm": 40, "seed": 2,
            "progress": False, "cluster": "item_id"}
    ref = w2_sensitivity(df, **opts)
    _same(ref, w2_sensitivity(folder, **opts))
    two = {**opts, "cluster": "site_item"}
    _same(w2_sensitivity(df, **two), w2_sensitivity(folder, **two))
    # a list of cluster columns means two-way clustering elsewhere (refusal_rates, logit):
    # refused here, with the recipe for the key column above (#23)
    for data in (df, folder):
        with pytest.raises(ValueError, match=r"w2_sensitivity: cluster=\['site', 'item_id'\] names "
                                             r"2 columns.*two-way.*df\['site_item_id'\] = "):
            w2_sensitivity(data, **{**opts, "cluster": ["site", "item_id"]})
    monkeypatch.setattr(S, "DENSE_CLUSTER_TABLE", 0)
    _same(ref, w2_sensitivity(folder, **opts))


def test_parquet_inputs_are_collapsed_one_at_a_time(tmp_path, monkeypatch):
    """#15: the streamed path builds an input's counts and records only when its turn
    comes (one collapse per input, in order), and the dense and sparse per-item tables give
    the within-item null the same (item, cell) arrays."""
    import refusalstats.sensitivity.estimators as E
    import refusalstats.sensitivity.stream as S

    df = _items(60, 6, seed=4, item_effect=0.8)
    folder = _shards(df, tmp_path / "s")
    calls = []
    real = S._collapse

    def counting(data, by, *a, **k):
        calls.append(list(by))
        return real(data, by, *a, **k)

    monkeypatch.setattr(S, "_collapse", counting)
    inputs = ["task", "persona", "prompt"]
    stream = S._encode_stream(folder, "refusal", inputs, {}, "item_id",
                              [*inputs, "refusal", "item_id"])
    assert calls == []
    for i, (out, part, clus) in enumerate(stream):
        assert calls == [[name] for name in inputs[: i + 1]]
        assert part.name == inputs[i] and out.n == len(df) and clus.n == 60
    seen = []
    ests = {}
    for limit in (E.DENSE_CLUSTER_TABLE, 0):
        monkeypatch.setattr(E, "DENSE_CLUSTER_TABLE", limit)
        for out, part, clus in S._encode_stream(folder, "refusal", ["persona"], {}, "item_id",
                                                ["persona", "refusal", "item_id"]):
            est = E._TableEstimator(out, part, clus, True)
            est._within_setup()
            ests[est.sparse] = est
            seen.append(est.sparse)
    assert seen == [False, True]
    assert ests[False].scheme == "within items" and len(ests[False].active) > 0
    for attr in ("active", "pcell", "psize", "pstart", "kmaj", "hmin", "base"):
        a, b = getattr(ests[False], attr), getattr(ests[True], attr)
        assert a.dtype == b.dtype == np.int64
        np.testing.assert_array_equal(a, b)


def test_parquet_inputs_that_need_rows_say_how_to_proceed(tmp_path):
    df = _items(40, 5, seed=1)
    df["score"] = np.random.default_rng(0).normal(size=len(df))
    df["likert"] = df["item_id"] % 4
    df["label"] = np.where(df["refusal"] == 1, "no", "yes")
    folder = _shards(df, tmp_path / "s")
    base = {"n_boot": 0, "n_perm": 0, "progress": False, "cluster": None}
    with pytest.raises(ValueError, match=r"'score' \(equal-count rank bins\) needs the rows.*"
                       r"pd.read_parquet"):
        w2_sensitivity(folder, inputs=["task", "score"], **base)
    with pytest.raises(ValueError, match="rank bins"):
        w2_sensitivity(folder, inputs=["task"], partitions={"task": 3}, **base)
    with pytest.raises(ValueError, match="values other than 0/1"):
        w2_sensitivity(folder, output="likert", inputs=["task"], **base)
    with pytest.raises(ValueError, match="nominal"):
        w2_sensitivity(folder, output="label", inputs=["task"], **base)
    with pytest.raises(ValueError, match="multivariate"):
        w2_sensitivity(folder, output=["score", "likert"], inputs=["task"], **base)
    with pytest.raises(SchemaError, match="'age'.*its columns are"):
        w2_sensitivity(folder, inputs=["task", "age"], **base)
    # a numeric input with few values streams when its levels are asked for
    res = w2_sensitivity(folder, inputs=["likert"], partitions={"likert": "levels"}, **base)
    assert res.table["n_partitions"].iloc[0] == 4
    with pytest.raises(ValueError, match="constant"):
        w2_sensitivity(_shards(df.assign(refusal=0), tmp_path / "c"), inputs=["task"], **base)


def test_exclude_leaves_out_rows_for_frames_and_sources_alike(tmp_path):
    """``exclude=`` (public since #23; the report used to bind a private function for it):
    the DataFrame and the Parquet source give the result of the filtered table."""
    df = _items(60, 6, seed=5, item_effect=0.8)
    df["setting"] = np.where(df["prompt"].astype(str) == "q0", "persona-free", "persona")
    folder = _shards(df, tmp_path / "s")
    opts = {"inputs": ["task", "persona"], "n_boot": 60, "n_perm": 30, "seed": 3,
            "progress": False, "cluster": "item_id"}
    kept = df[df["setting"] != "persona-free"]
    ref = w2_sensitivity(kept, **opts)
    excl = {"setting": ["persona-free"], "not_a_column": ["x"]}
    _same(ref, w2_sensitivity(df, exclude=excl, **opts))
    _same(ref, w2_sensitivity(folder, exclude=excl, **opts))
    assert ref.n == len(kept) < len(df)
    with pytest.raises(ValueError, match="no rows are left"):
        w2_sensitivity(df, exclude={"setting": ["persona", "persona-free"]}, **opts)
    with pytest.raises(TypeError, match="list of values"):
        w2_sensitivity(df, exclude={"setting": "persona-free"}, **opts)


# --------------------------------------------------------------------------------------
# bootstrap intervals (#19, #23): BCa against scipy, the studentized interval's standard error
# --------------------------------------------------------------------------------------
def _iota_rows(g, y):
    """iota of a 0/1 output from rows (population variance), for scipy's bootstrap."""
    p = y.mean()
    if p in (0.0, 1.0):
        return np.nan
    levels = np.unique(g)
    return sum(np.mean(g == c) * abs(y[g == c].mean() - p) for c in levels) / (2 * p * (1 - p))


def test_bca_matches_scipy_bootstrap_on_iid_rows():
    """Given scipy's own bootstrap distribution, our BCa interval (with the table's exact
    leave-one-out jackknife, multiplicities per cell) is scipy.stats.bootstrap's BCa interval;
    the acceleration is far from 0 here, so its sign is tested (flipping it moves the
    bounds by more than the tolerance)."""
    from scipy import stats

    from refusalstats.sensitivity.intervals import acceleration, bca_interval

    rng = np.random.default_rng(11)
    g = rng.integers(0, 3, 90)
    y = (rng.random(90) < np.array([0.1, 0.25, 0.7])[g]).astype(float)
    res = stats.bootstrap((g, y), _iota_rows, paired=True, vectorized=False, method="BCa",
                          n_resamples=3000, confidence_level=0.9, random_state=3)
    df = pd.DataFrame({"g": g.astype(str), "y": y.astype(int)})
    est = _TableEstimator(_encode_output(df, "y"), _encode_input(df, "g", None, len(df)))
    jx, jv, mult = est.jackknife(np.random.default_rng(0))
    from refusalstats.sensitivity.estimators import _iota

    jack = _iota(jx, jv)
    theta = _iota_rows(g, y)
    assert est.point()[0] / (2 * est.point()[1]) == pytest.approx(theta, abs=1e-12)
    loo = np.array([_iota_rows(np.delete(g, i), np.delete(y, i)) for i in range(len(g))])
    assert acceleration(jack, mult) == pytest.approx(acceleration(loo), abs=1e-12)
    a = acceleration(jack, mult)
    assert abs(a) > 0.01
    lo, hi = bca_interval(theta, res.bootstrap_distribution, jack, mult, 0.9)
    assert (lo, hi) == pytest.approx(tuple(res.confidence_interval), abs=1e-12)
    flipped = bca_interval(theta, res.bootstrap_distribution, 2 * np.mean(loo) - loo, None, 0.9)
    assert abs(flipped[0] - lo) + abs(flipped[1] - hi) > 1e-3


def test_studentized_standard_error_gradient_and_bootstrap_sd():
    """The closed-form gradient of iota equals finite differences and sums to 0 against the
    table (degree-0 homogeneity); the linearization standard error agrees with the sd of
    the bootstrap replicates for rows, items and items within levels."""
    from refusalstats.sensitivity.encode import _encode_clusters
    from refusalstats.sensitivity.estimators import _iota, _iota_gradient

    rng = np.random.default_rng(0)
    tab = rng.integers(5, 50, size=(3, 4, 2)).astype(float)

    def iota_of(t):
        n_c = t.sum(-1)
        n = n_c.sum(-1)
        p = t[..., 1].sum(-1) / n
        return np.abs(t[..., 1] - n_c * p[:, None]).sum(-1) / (2 * n * p * (1 - p))

    grad = _iota_gradient(tab)
    h = 1e-6
    for c, k in itertools.product(range(4), range(2)):
        bump = tab.copy()
        bump[:, c, k] += h
        np.testing.assert_allclose((iota_of(bump) - iota_of(tab)) / h, grad[:, c, k],
                                   atol=1e-6)
    np.testing.assert_allclose((grad * tab).sum(axis=(1, 2)), 0.0, atol=1e-12)
    df = _items(60, 10, seed=1, item_effect=[0, 0.3, 2.0], row_effect=[0, 0, 1.2, 1.2, 1.2])
    df = df.rename(columns={"refusal": "y"})
    out, clus = _encode_output(df, "y"), _encode_clusters(df, "item_id")
    for name, cl, strat in [("task", clus, True), ("task", clus, False), ("persona", clus, True),
                            ("task", None, True), ("persona", None, False)]:
        est = _TableEstimator(out, _encode_input(df, name, None, len(df)), cl, strat)
        x, v, se = est.boot(3000, np.random.default_rng(1), True)
        sd = _iota(x, v).std()
        assert est.se()[0] == pytest.approx(sd, rel=0.08), (name, cl is None, strat)
        assert np.mean(se) == pytest.approx(sd, rel=0.08)


def test_interval_types_and_conf_int_read_back():
    """ci= picks the interval; a studentized fit keeps what conf_int needs to give the
    percentile, bc and studentized intervals at any level (the same numbers as fits with
    those types and the same seed); studentized needs a 0/1 output."""
    df = _items(45, 8, seed=2, item_effect=[0, 0.3, 2.0])
    kw = {"inputs": ["task", "persona"], "n_boot": 400, "n_perm": 0, "seed": 5,
          "progress": False, "cluster": "item_id"}
    stud = w2_sensitivity(df, ci="studentized", **kw)
    assert set(stud.se) == {"task", "persona"} and len(stud.boot_se["task"]) == 400
    for ci in ("percentile", "bc", "studentized"):
        fit = w2_sensitivity(df, ci=ci, **kw)
        pd.testing.assert_frame_equal(stud.conf_int(ci=ci), fit.conf_int(), check_exact=True)
    assert stud.conf_int(0.8, ci="bc")["ci_low"].gt(
        stud.conf_int(0.95, ci="bc")["ci_low"]).all()
    with pytest.raises(ValueError, match="ci='bca'"):
        stud.conf_int(ci="bca")
    with pytest.raises(ValueError, match="rerun"):
        w2_sensitivity(df, ci="percentile", **kw).conf_int(ci="studentized")
    df["score"] = df["refusal"] * 2 + df["item_id"] % 3
    with pytest.raises(ValueError, match="needs a 0/1 output"):
        w2_sensitivity(df, output="score", ci="studentized", **kw)
    with pytest.raises(ValueError, match="ci must be one of"):
        w2_sensitivity(df, ci="normal", **kw)


def test_few_effective_items_warn_and_are_flagged():
    """An item-level input with fewer than 10 effective items in a level gets a warning, a
    note and its name in few_items (the report lists it); 40 items per level do not."""
    few = _items(15, 10, seed=3, item_effect=[0, 0.3, 2.0])  # 5 items per task
    with pytest.warns(RuntimeWarning, match="too few effective items"):
        res = w2_sensitivity(few, inputs=["task", "persona"], n_boot=100, n_perm=0,
                             progress=False, cluster="item_id")
    assert res.few_items == ["task"]  # persona: 15 items over all levels
    assert "5.0 in its smallest level" in res.table.set_index("input").loc["task", "note"]
    many = _items(120, 10, seed=3, item_effect=[0, 0.3, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ok = w2_sensitivity(many, inputs=["task"], n_boot=100, n_perm=0, progress=False,
                            cluster="item_id")
    assert ok.few_items == []


def test_shaped_items_truth_matches_a_large_simulation():
    """The population iota of the interval study's own generator (benchmarks/calibration_w2
    shaped_items: quadrature over the item intercept, levels weighted by expected row
    shares) against 12,000 items, balanced and unbalanced."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from calibration_w2 import shaped_items, shaped_truth
    finally:
        sys.path.pop(0)
    for unbalanced, tol in ((False, 0.004), (True, 0.008)):
        big = shaped_items(1, 4000, unbalanced)
        got = w2_sensitivity(big, inputs=["task", "persona"], n_boot=0, n_perm=0, cluster=None,
                             progress=False).table.set_index("input")["iota"]
        for which in ("task", "persona"):
            assert got[which] == pytest.approx(shaped_truth(4000, unbalanced, which), abs=tol)
