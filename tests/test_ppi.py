"""Prediction-powered estimates: peer agreement (ppi_python), slow-path references, validity."""

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.ppi import ppi_logistic, ppi_logit, ppi_mean, ppi_rates


def _fixture():
    """The i.i.d. fixture the ppi_python numbers below were computed on."""
    rng = np.random.default_rng(20261207)
    n, N = 150, 2000

    def draw(m):
        x = rng.normal(size=m)
        y = rng.binomial(1, 1 / (1 + np.exp(-(-1 + 0.8 * x))))
        flip = rng.random(m) < np.where(y == 1, 0.25, 0.08)
        return x, y, np.where(flip, 1 - y, y).astype(float)

    x, y, yh = draw(n)
    xu, _, yhu = draw(N)
    return x, y.astype(float), yh, xu, yhu


# ppi_python 0.2.3 (pip install ppi_python; numpy 2), computed once on _fixture():
#   ppi_py.ppi_mean_pointestimate(y, yh, yhu, lam=lam)
#   ppi_py.ppi_mean_ci(y, yh, yhu, alpha=0.05, lam=lam)
#   lam=None: ppi_py.ppi.ppi._calc_lam_glm at the lam=1 estimate (clip=True)
PEER_MEAN = {  # lam: (point estimate, ci low, ci high)
    None: (0.25240897591331724, 0.19672835970637853, 0.30808959212025594),
    1.0: (0.2571666666666667, 0.192897254942264, 0.3214360783910694),
    0.0: (0.24666666666666667, 0.1776822039407968, 0.31565112939253653),
    0.4: (0.2508666666666667, 0.19399824137198096, 0.3077350919613524),
}
PEER_MEAN_LAM = 0.5468865949191007
#   X = [1, x]: ppi_py.ppi_logistic_ci(X, y, yh, Xu, yhu, alpha=0.05, lam=lam)
#   tuned lam: _calc_lam_glm(*_logistic_get_stats(ppi_logistic_pointestimate(..., lam=None), ...))
PEER_LOGISTIC = {  # lam: (ci low, ci high) per coefficient (intercept, x)
    None: ([-1.590539551039059, 0.45076821620254365], [-0.8635916890790947, 1.2526961167824533]),
    1.0: ([-1.4919798875801302, 0.11834656524417914], [-0.7467056142957007, 0.9149854840092679]),
    0.0: ([-1.7728569893837292, 0.5557421173961193], [-0.8518805617447668, 1.6712705178317138]),
}
PEER_LOGISTIC_LAM = 0.38230926260813064


@pytest.mark.parametrize("lam", [None, 1.0, 0.0, 0.4])
def test_ppi_mean_matches_ppi_python(lam):
    _x, y, yh, _xu, yhu = _fixture()
    r = ppi_mean(y, yh, yhu, lam=lam)
    est, lo, hi = PEER_MEAN[lam]
    assert r["estimate"] == pytest.approx(est, abs=1e-6)
    assert r["ci_low"] == pytest.approx(lo, abs=1e-6)
    assert r["ci_high"] == pytest.approx(hi, abs=1e-6)
    if lam is None:
        assert r["lam"] == pytest.approx(PEER_MEAN_LAM, abs=1e-6)


@pytest.mark.parametrize("lam", [None, 1.0, 0.0])
def test_ppi_logistic_matches_ppi_python(lam):
    x, y, yh, xu, yhu = _fixture()
    X, Xu = np.c_[np.ones(len(x)), x], np.c_[np.ones(len(xu)), xu]
    r = ppi_logistic(X, y, yh, Xu, yhu, lam=lam)
    lo, hi = PEER_LOGISTIC[lam]
    np.testing.assert_allclose(r["ci_low"], lo, atol=1e-6)
    np.testing.assert_allclose(r["ci_high"], hi, atol=1e-6)
    if lam is None:
        assert r.attrs["lam"] == pytest.approx(PEER_LOGISTIC_LAM, abs=1e-6)


def _table():
    x, y, yh, xu, yhu = _fixture()
    return pd.DataFrame({"refusal": np.r_[yh, yhu].astype(int), "human": np.r_[y, np.full(len(xu), np.nan)],
                         "x": np.r_[x, xu]})


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.4])
def test_table_rates_equal_the_array_estimator(lam):
    # one stratum, rows independent, lam fixed: the table layer is ppi_python's estimator
    out = ppi_rates(_table(), cluster=None, lam=lam, ci="z")
    est, lo, hi = PEER_MEAN[lam]
    assert out["rate"].item() == pytest.approx(est, abs=1e-12)
    assert out["ci_low"].item() == pytest.approx(lo, abs=1e-12)
    assert out["ci_high"].item() == pytest.approx(hi, abs=1e-12)
    assert out["rate_labels_only"].item() == pytest.approx(PEER_MEAN[0.0][0], abs=1e-12)


def test_tuned_lam_minimizes_the_variance():
    df = _table()
    tuned = ppi_rates(df, cluster=None, ci="z")
    grid = [ppi_rates(df, cluster=None, lam=lam, ci="z")["std_error"].item() for lam in np.linspace(0, 1, 41)]
    assert tuned["std_error"].item() <= min(grid) + 1e-12
    # the exact minimizer of the estimated variance, close to ppi_python's pooled-variance lam
    assert tuned["lam"].item() == pytest.approx(PEER_MEAN_LAM, abs=0.02)


def test_logit_labels_only_is_the_hc0_glm_and_lam1_is_ppi_python():
    df = _table()
    fit0 = ppi_logit("refusal ~ x", df, cluster=None, lam=0, ci="z")
    # statsmodels 0.14: sm.GLM(y, [1, x], family=Binomial()).fit(cov_type="HC0") on the labelled rows
    np.testing.assert_allclose(fit0.params, [-1.31236877, 1.11350632], atol=1e-7)
    np.testing.assert_allclose(fit0.bse, [0.23416282, 0.28362862], atol=1e-7)
    fit1 = ppi_logit("refusal ~ x", df, cluster=None, lam=1, ci="z")
    centre = (np.array(PEER_LOGISTIC[1.0][0]) + np.array(PEER_LOGISTIC[1.0][1])) / 2
    np.testing.assert_allclose(fit1.params, centre, atol=1e-7)
    # the uncorrected fit is the flags' GLM on every row
    assert not np.allclose(fit1.params_detector, fit0.params, atol=0.1)


def _clustered_stratified(seed=0, n_items=60, per_item=8, fracs=(0.3, 0.1)):
    rng = np.random.default_rng(seed)
    item = np.repeat(np.arange(n_items), per_item)
    model = np.tile(np.array(["a", "b"]).repeat(per_item // 2), n_items)
    u = rng.normal(0, 1, n_items)[item]
    truth = rng.binomial(1, 1 / (1 + np.exp(-(-1 + u + (model == "b")))))
    sens = np.where(model == "a", 0.9, 0.6)
    flag = np.where(truth == 1, rng.random(len(item)) < sens, rng.random(len(item)) < 0.1).astype(int)
    df = pd.DataFrame({"item_id": item, "model": model, "refusal": flag, "truth": truth})
    human = np.full(len(df), np.nan)
    for m, frac in zip(["a", "b"], fracs):
        idx = np.flatnonzero(model == m)
        pick = rng.choice(idx, int(frac * len(idx)), replace=False)
        human[pick] = truth[pick]
    df["human"] = human
    return df


def _slow_overall(df, lam, strata, cluster):
    """The overall corrected rate and its variance, row by row (reference implementation)."""
    lab = df["human"].notna().to_numpy()
    s = df[strata].to_numpy() if strata else np.zeros(len(df))
    w = np.empty(len(df))
    for h in np.unique(s):
        on = s == h
        w[on & lab] = on.sum() / (on & lab).sum()
        w[on & ~lab] = on.sum() / (on & ~lab).sum()
    y, f = df["human"].fillna(0).to_numpy(), df["refusal"].to_numpy(float)
    WL, WU = w[lab].sum(), w[~lab].sum()
    A = (w * y)[lab].sum() / WL
    FL = (w * f)[lab].sum() / WL
    FU = (w * f)[~lab].sum() / WU
    est = A + lam * (FU - FL)
    infl = np.where(lab, w * (y - A - lam * (f - FL)) / WL, lam * w * (f - FU) / WU)
    for h in np.unique(s):  # centre within (part, stratum)
        for part in (lab, ~lab):
            on = (s == h) & part
            infl[on] -= infl[on].mean()
    if cluster is None:
        return est, np.sum(infl ** 2), infl
    sums = pd.Series(infl).groupby(df[cluster].to_numpy()).sum()
    C = len(sums)
    return est, C / (C - 1) * np.sum(sums ** 2), infl


@pytest.mark.parametrize("cluster", [None, "item_id"])
@pytest.mark.parametrize("strata", [None, "model"])
def test_clustered_stratified_variance_matches_row_by_row(cluster, strata):
    df = _clustered_stratified()
    for lam in (0.0, 0.7, 1.0):
        out = ppi_rates(df, cluster=cluster, strata=strata, lam=lam, ci="z")
        est, var, _ = _slow_overall(df, lam, strata, cluster)
        assert out["rate"].item() == pytest.approx(est, abs=1e-12)
        assert out["std_error"].item() == pytest.approx(np.sqrt(var), rel=1e-10)


def _unequal_items() -> pd.DataFrame:
    """9 items answered 1..9 times (45 rows), labels on rows with index % 3 != 1 (30)."""
    item = np.repeat(np.arange(9), np.arange(1, 10))
    j = np.arange(len(item))
    human = ((j * 7 + item * 3) % 5 < 2).astype(float)
    refusal = np.where(j % 6 == 0, 1 - human, human).astype(int)
    return pd.DataFrame({"item_id": item, "refusal": refusal, "human": np.where(j % 3 != 1, human, np.nan)})


def test_clustered_labels_only_interval_is_clubsandwich_cr2_with_satterthwaite_df(monkeypatch):
    """The default clustered interval (ci="t") is CR2 with Bell-McCaffrey df. Labels only
    (lam = 0) and the floor off, it is the intercept-only regression on the labelled rows:
    R 4.2, clubSandwich 0.5.x, on this table written to small.csv:
        l <- d[!is.na(d$human), ]; f <- lm(human ~ 1, data = l)
        coef_test(f, vcov = "CR2", cluster = l$item_id, test = "Satterthwaite")
    gave estimate 0.6, SE 0.041299202059, d.f. (Satt) 6.161637403480 (2026-12-07).
    The CR1 interval it replaced had SE 0.0420 on 8 df."""
    from scipy import stats

    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_PSEUDO", 0.0)
    out = ppi_rates(_unequal_items(), cluster="item_id", lam=0)
    assert out["rate"].item() == pytest.approx(0.6, abs=1e-12)
    assert out["std_error"].item() == pytest.approx(0.041299202059, rel=1e-9)
    q = out.attrs["quantile"][0]
    assert q == pytest.approx(stats.t.ppf(0.975, 6.161637403480), rel=1e-8)


def _cr2_dense(df, lam):
    """CR2 variance and Satterthwaite df of the overall PPI rate, from N x C matrices: the
    clusters' adjusted sums are ``V z`` with ``V[g, i] = (1 - h_gr)^(-1/2) / W_r w_i (1[i in g]
    - h_gr)``, ``r`` the row's part, and ``M = V Sigma V'`` under independent rows with the
    part's variance (labelled: of y - lam f; unlabelled: of lam f)."""
    lab = df["human"].notna().to_numpy()
    y, f = df["human"].fillna(0).to_numpy(), df["refusal"].to_numpy(float)
    z = np.where(lab, y - lam * f, lam * f)
    g = df["item_id"].to_numpy()
    groups = np.unique(g)
    V = np.zeros((len(groups), len(df)))
    sig = np.zeros(len(df))
    for part in (lab, ~lab):
        sig[part] = z[part].var()
        for k, c in enumerate(groups):
            h = (part & (g == c)).sum() / part.sum()
            if h == 0:
                continue
            V[k, part] = ((g[part] == c) - h) / np.sqrt(1 - h) / part.sum()
    M = V @ (sig[:, None] * V.T)
    return np.sum((V @ z) ** 2), np.trace(M) ** 2 / np.sum(M ** 2)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_clustered_cr2_variance_and_df_with_both_parts_match_the_dense_formula(lam, monkeypatch):
    from scipy import stats

    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_PSEUDO", 0.0)
    df = _unequal_items()
    out = ppi_rates(df, cluster="item_id", lam=lam)
    var, df_bm = _cr2_dense(df, lam)
    assert out["std_error"].item() == pytest.approx(np.sqrt(var), rel=1e-10)
    # at most the labelled clusters - 1 (8 here)
    assert out.attrs["quantile"][0] == pytest.approx(stats.t.ppf(0.975, min(df_bm, 8)), rel=1e-9)
    assert df_bm < 8


@pytest.mark.parametrize("strata", [None, "model"])
def test_skewness_of_unclustered_rows_equals_the_row_by_row_third_moment(strata, monkeypatch):
    """Without clusters the skewness comes from per-(cell, part) moment sums expanded in lam
    and the centring; row by row it is sum infl^3 / (sum infl^2)^(3/2) (times the n / (n - 1)
    factor's 3/2 power, which cancels), the interval Hall's: the default where strata cut
    across the target (strata="model"), and with the score interval switched off."""
    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_PSEUDO", 0.0)
    if strata is None:
        monkeypatch.setattr(ppi, "_SCORE", False)
    df = _clustered_stratified()
    n = df["human"].notna().sum()
    for lam in (0.0, 0.7):
        out = ppi_rates(df, cluster=None, strata=strata, lam=lam)
        est, var, infl = _slow_overall(df, lam, strata, None)
        gamma = np.sum(infl ** 3) / var ** 1.5
        se = np.sqrt(var * n / (n - 1))
        assert out["std_error"].item() == pytest.approx(se, rel=1e-10)
        q = out.attrs["quantile"][0]
        t_lo, t_hi = (3 / gamma * (np.cbrt(1 + gamma * (v - gamma / 6)) - 1) for v in (q, -q))
        assert (out["ci_low"].item(), out["ci_high"].item()) == pytest.approx(
            (est - t_lo * se, est - t_hi * se), rel=1e-10)
        assert abs(t_lo - q) > 1e-3


def test_skewness_is_capped_where_hall_transformation_runs_off(monkeypatch):
    """One refusal in 30 labels (labels only): the skewness (about 0.5 with the floor) is
    capped at 0.3, so Hall's upper end is est + 2.82 se, not est + 7 se (an upper end of 0.38
    against Clopper-Pearson's 0.17). (Hall's interval with the score interval switched off;
    it is the default for several-cell targets and strata across a cell.)"""
    from scipy import stats

    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_SCORE", False)
    f = np.zeros(300, dtype=int)
    h = np.full(300, np.nan)
    h[:30] = 0
    h[0] = 1
    df = pd.DataFrame({"refusal": f, "human": h})
    out = ppi_rates(df, cluster=None, lam=0)
    assert out.attrs["skewness"][0] == pytest.approx(0.3)
    est, se = out["rate"].item(), out["std_error"].item()
    q = stats.t.ppf(0.975, 29)
    g = 0.3
    t_hi = 3 / g * (np.cbrt(1 + g * (-q - g / 6)) - 1)
    assert out["ci_high"].item() == pytest.approx(est - t_hi * se, rel=1e-12)
    assert out["ci_high"].item() < stats.beta.ppf(0.975, 2, 29) + 0.05  # near Clopper-Pearson's 0.17


def test_a_group_in_one_cluster_says_why_its_interval_is_missing():
    """A model whose rows all share one cluster has no cluster-robust variance: its
    interval is NaN, and the user is told why instead of getting NaN silently."""
    df = _clustered_stratified()
    df["item_id"] = df["model"]
    with pytest.warns(RuntimeWarning, match="no standard error: their rows lie in fewer than two clusters"):
        out = ppi_rates(df, by="model", cluster="item_id", strata="model")
    assert out["rate"].notna().all() and out["std_error"].isna().all()


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_cr2_with_strata_that_cut_across_the_target_matches_row_by_row(lam, monkeypatch):
    """The overall rate with labels drawn at different rates per model (strata="model"):
    the influences are centred within (part, stratum), which touches every cluster, and the
    CR2 leverage of a cluster is its share of the part's weight (w = N_h / n_h). Reference:
    _slow_overall's row influences, summed per (cluster, part), each sum times
    (1 - W_cluster,part / W_part)^(-1/2), then squared and summed over clusters."""
    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_PSEUDO", 0.0)
    df = _clustered_stratified()
    out = ppi_rates(df, cluster="item_id", strata="model", lam=lam)
    est, _, infl = _slow_overall(df, lam, "model", "item_id")
    lab = df["human"].notna().to_numpy()
    s = df["model"].to_numpy()
    w = np.empty(len(df))
    for h in np.unique(s):
        on = s == h
        w[on & lab] = on.sum() / (on & lab).sum()
        w[on & ~lab] = on.sum() / (on & ~lab).sum()
    g = df["item_id"].to_numpy()
    total = pd.Series(0.0, index=np.unique(g))
    for part in (lab, ~lab):
        share = pd.Series(w[part]).groupby(g[part]).sum() / w[part].sum()
        sums = pd.Series(infl[part]).groupby(g[part]).sum()
        total = total.add(sums / np.sqrt(1 - share), fill_value=0.0)
    assert out["rate"].item() == pytest.approx(est, abs=1e-12)
    assert out["std_error"].item() == pytest.approx(np.sqrt(np.sum(total ** 2)), rel=1e-9)


def test_group_estimates_match_the_overall_code_on_each_group():
    df = _clustered_stratified(seed=3)
    by = ppi_rates(df, by="model", cluster="item_id", strata="model", lam=1.0, ci="z")
    for m in ("a", "b"):
        one = ppi_rates(df[df["model"] == m], cluster="item_id", lam=1.0, ci="z")
        assert by.loc[by["model"] == m, "rate"].item() == pytest.approx(one["rate"].item(), abs=1e-12)
        # the same influence sums; the CR1 factor counts the clusters of each group (all 60 here)
        assert by.loc[by["model"] == m, "std_error"].item() == pytest.approx(one["std_error"].item(), rel=1e-10)


def test_stratified_labels_need_strata_for_the_overall_rate():
    # model b is labelled at 1/3 the rate of model a and refuses more. With lam = 0 the overall
    # rate is the labels' own estimate: with strata= each model's labelled mean weighted by the
    # model's share of the rows (unbiased when labels are drawn within models); without, the
    # pooled labelled mean, which weights the models by their shares of the labels instead
    df = _clustered_stratified(seed=0)
    lab = df[df["human"].notna()]
    rows_share = df["model"].value_counts(normalize=True)
    labels_share = lab["model"].value_counts(normalize=True)
    assert labels_share["a"] == pytest.approx(0.75, abs=0.01)  # a: 0.3 of its rows, b: 0.1
    est_s = ppi_rates(df, cluster=None, strata="model", lam=0.0)["rate"].item()
    est_n = ppi_rates(df, cluster=None, lam=0.0)["rate"].item()
    assert est_s == pytest.approx((rows_share * lab.groupby("model")["human"].mean()).sum(), abs=1e-12)
    assert est_n == pytest.approx(lab["human"].mean(), abs=1e-12)
    # over label samples the pooled mean's expectation is the labels-share mix of the models'
    # rates: below the table's rate, as b refuses more (the simulation this replaced, 150 draws:
    # strata bias within 3 s.e. of 0, pooled below -5 s.e.)
    mu = df.groupby("model")["truth"].mean()
    assert (labels_share * mu).sum() - df["truth"].mean() < -0.03


def test_perfect_detector_gives_the_detector_rate_with_a_narrow_interval():
    df = _clustered_stratified(seed=5)
    df["refusal"] = df["truth"]
    df["human"] = np.where(df["human"].notna(), df["truth"], np.nan)
    # lam = 1: the labelled part cancels, the rate is the unlabelled rows' flag rate
    one = ppi_rates(df, by="model", cluster="item_id", strata="model", lam=1.0)
    unl = df[df["human"].isna()].groupby("model")["refusal"].mean().to_numpy()
    np.testing.assert_allclose(one["rate"], unl, atol=1e-12)
    # tuned: a precision-weighted mix of the labelled and the unlabelled flag rates, narrower
    out = ppi_rates(df, by="model", cluster="item_id", strata="model")
    assert (out["std_error"] <= one["std_error"] + 1e-12).all()
    assert (out["std_error"] < 0.8 * out["se_labels_only"]).all()


def test_effect_is_the_difference_of_rates():
    df = _clustered_stratified(seed=7).rename(columns={"model": "setting"})
    df["setting"] = df["setting"].map({"a": "persona", "b": "persona-free"})
    eff = rs.ppi_effect(df, cluster="item_id", strata="setting", lam=1.0, ci="z")
    rates = ppi_rates(df, by="setting", cluster="item_id", strata="setting", lam=1.0, ci="z")
    r = rates.set_index("setting")["rate"]
    assert eff["difference"].item() == pytest.approx(r["persona"] - r["persona-free"], abs=1e-12)
    # items answered in both settings: the difference's variance has the covariance term
    se1, se2 = rates["std_error"]
    assert eff["std_error"].item() != pytest.approx(np.hypot(se1, se2), rel=1e-3)
    # rows independent: the arms' variances add (no shared clusters, separate strata)
    e0 = rs.ppi_effect(df, cluster=None, strata="setting", lam=1.0, ci="z")
    r0 = ppi_rates(df, by="setting", cluster=None, strata="setting", lam=1.0, ci="z")
    assert e0["std_error"].item() == pytest.approx(np.hypot(*r0["std_error"]), rel=1e-10)


def test_rogan_gladen_closed_form():
    # 10 labelled: 4 refusals (3 flagged), 6 compliances (1 flagged); 90 unlabelled, 30 flagged
    f = np.r_[[1, 1, 1, 0], [1, 0, 0, 0, 0, 0], np.ones(30), np.zeros(60)].astype(int)
    h = np.r_[[1, 1, 1, 1], np.zeros(6), np.full(90, np.nan)]
    out = rs.rogan_gladen(pd.DataFrame({"refusal": f, "human": h}))
    se, sp, p = 0.75, 5 / 6, 34 / 100
    rate = (p + sp - 1) / (se + sp - 1)
    var = (p * (1 - p) / 100 + rate ** 2 * se * (1 - se) / 4 + (1 - rate) ** 2 * sp * (1 - sp) / 6) \
        / (se + sp - 1) ** 2
    assert out["rate"].item() == pytest.approx(rate)
    assert out["std_error"].item() == pytest.approx(np.sqrt(var))


def test_errors_name_the_problem():
    df = _clustered_stratified()
    with pytest.raises(ValueError, match="not a column"):
        ppi_rates(df, labels="gold")
    bad = df.assign(human=df["human"].replace(1.0, 2.0))
    with pytest.raises(ValueError, match="0/1"):
        ppi_rates(bad)
    no_b = df.assign(human=np.where(df["model"] == "b", np.nan, df["human"]))
    with pytest.raises(ValueError, match="no labelled row"):
        ppi_rates(no_b, strata="model")
    with pytest.raises(ValueError, match="lam"):
        ppi_rates(df, lam=2)
    with pytest.warns(RuntimeWarning, match="no labelled row"):
        out = ppi_rates(no_b, by="model", cluster=None)
    assert np.isnan(out.loc[out["model"] == "b", "rate"]).all()


def _errors_table(n=20000, rate=0.2, se=0.7, sp=0.95, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.binomial(1, rate, n)
    flag = np.where(truth == 1, rng.random(n) < se, rng.random(n) > sp).astype(int)
    return pd.DataFrame({"model": "m", "refusal": flag, "truth": truth})


def test_label_budget_reaches_the_target_width():
    df = _errors_table()
    pilot = df.assign(human=np.where(np.arange(len(df)) < 400, df["truth"], np.nan))
    b = rs.label_budget(pilot, 0.06, labels="human")
    assert b["error_rates"].item() == "estimated"
    head = df.head(400)
    assert b["sensitivity"].item() == pytest.approx(head.loc[head.truth == 1, "refusal"].mean())
    # planned from the true error rates, the interval has the target width on average
    b = rs.label_budget(df, 0.06, sensitivity=0.7, specificity=0.95)
    need = int(b["labels_needed"].item())
    assert need < b["labels_needed_labels_only"].item()
    rng = np.random.default_rng(1)
    widths = []
    for _ in range(150):
        lab = rng.choice(len(df), need, replace=False)
        h = np.full(len(df), np.nan)
        h[lab] = df["truth"].to_numpy()[lab]
        r = ppi_rates(df.assign(human=h), cluster=None, ci="z")
        widths.append((r["ci_high"] - r["ci_low"]).item())
    assert np.mean(widths) == pytest.approx(0.06, rel=0.08)
    # a useless detector (flags independent of the truth) needs as many labels as labels alone
    u = rs.label_budget(_errors_table(se=0.3, sp=0.7), 0.06, sensitivity=0.3, specificity=0.7)
    assert u["labels_needed"].item() == pytest.approx(u["labels_needed_labels_only"].item(), rel=0.01)
    assert u["error_rates"].item() == "assumed"


def test_detector_card_counts_and_flags_changes():
    df = pd.concat([_errors_table(4000, se=0.5, sp=0.99, seed=2).assign(model="bad"),
                    _errors_table(4000, se=0.99, sp=0.99, seed=3).assign(model="good")], ignore_index=True)
    df["human"] = np.where(np.arange(len(df)) % 8 == 0, df["truth"], np.nan)
    card = rs.detector_card(df, by="model", cluster=None)
    lab = df[df["human"].notna()]
    for m in ("bad", "good"):
        sub = lab[lab["model"] == m]
        row = card[card["model"] == m].iloc[0]
        assert row["sensitivity"] == pytest.approx(((sub.human == 1) & (sub.refusal == 1)).sum() / (sub.human == 1).sum())
        assert row["specificity"] == pytest.approx(((sub.human == 0) & (sub.refusal == 0)).sum() / (sub.human == 0).sum())
        assert row["rate_detector"] == pytest.approx(df.loc[df.model == m, "refusal"].mean())
    # the bad detector halves the refusals: its raw interval misses the corrected rate
    assert card.set_index("model")["changed"].to_dict() == {"bad": True, "good": False}
    assert card.set_index("model").loc["bad", "shift"] > 0.05


def test_small_sample_interval_floors_the_rectifier_variance(monkeypatch):
    # 30 labels that all agree with the detector: the plain (ppi_python) interval rests on
    # the unlabelled rows alone; the default adds a quarter pseudo-label per (label, flag) cell
    # to the standard error (and Hall's interval, with the score interval switched off, to the ends)
    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_SCORE", False)
    rng = np.random.default_rng(4)
    f = rng.binomial(1, 0.1, 3000)
    h = np.full(3000, np.nan)
    h[:30] = f[:30]
    df = pd.DataFrame({"refusal": f, "human": h})
    plain = ppi_rates(df, cluster=None, lam=1.0, ci="z")
    fu = f[30:]
    assert plain["std_error"].item() == pytest.approx(fu.std() / np.sqrt(len(fu)), rel=1e-12)
    small = ppi_rates(df, cluster=None, lam=1.0)
    # pseudo-labels: 0.25 * sum over (y, f) of ((y - A) - (f - FL))^2 / n^2 = 0.5 / n^2 (A = FL)
    var = (0.5 / 30 ** 2 + fu.var() / len(fu)) * 30 / 29
    assert small["std_error"].item() == pytest.approx(np.sqrt(var), rel=1e-12)
    from scipy import stats
    q = stats.t.ppf(0.975, 29)
    # the interval bends with the estimate's skewness (Hall 1992): here only the unlabelled
    # rows' influences (f - FU) / N_U have a third moment (the labels all agree)
    third = np.sum(((fu - fu.mean()) / len(fu)) ** 3) * (30 / 29) ** 1.5
    g = third / var ** 1.5
    assert g > 1e-4  # small, yet moves the bounds by 1e-3 se: far above rel=1e-12
    t_lo, t_hi = (3 / g * (np.cbrt(1 + g * (v - g / 6)) - 1) for v in (q, -q))  # g(T) = +-q
    assert t_hi + g * t_hi ** 2 / 3 + g ** 2 * t_hi ** 3 / 27 + g / 6 == pytest.approx(-q, rel=1e-12)
    assert small["ci_low"].item() == pytest.approx(small["rate"].item() - t_lo * np.sqrt(var), rel=1e-12)
    assert small["ci_high"].item() == pytest.approx(small["rate"].item() - t_hi * np.sqrt(var), rel=1e-12)


def test_skewness_corrected_interval_on_clusters_and_the_symmetric_switch(monkeypatch):
    """Clustered, the skewness is that of the CR2-adjusted cluster influences: sum u^3 /
    (sum u^2)^(3/2) (dense reference: _cr2_dense's adjusted sums). With ``_SKEW`` off the
    interval is the symmetric t interval on the same quantile."""
    from refusalstats import ppi

    monkeypatch.setattr(ppi, "_PSEUDO", 0.0)
    monkeypatch.setattr(ppi, "_SCORE", False)
    df = _unequal_items()
    out = ppi_rates(df, cluster="item_id", lam=1.0)
    assert out.attrs["interval"] == ["hall"]
    lab = df["human"].notna().to_numpy()
    y, f = df["human"].fillna(0).to_numpy(), df["refusal"].to_numpy(float)
    z = np.where(lab, y - f, f)
    g_ = df["item_id"].to_numpy()
    u = np.zeros(9)
    for part in (lab, ~lab):
        for k in range(9):
            on = part & (g_ == k)
            h = on.sum() / part.sum()
            u[k] += (z[on] - z[part].mean()).sum() / part.sum() / np.sqrt(1 - h)
    gamma = np.sum(u ** 3) / np.sum(u ** 2) ** 1.5
    q = out.attrs["quantile"][0]
    est, se = out["rate"].item(), out["std_error"].item()
    assert se == pytest.approx(np.sqrt(np.sum(u ** 2)), rel=1e-10)
    t_lo, t_hi = (3 / gamma * (np.cbrt(1 + gamma * (v - gamma / 6)) - 1) for v in (q, -q))
    assert (out["ci_low"].item(), out["ci_high"].item()) == pytest.approx((est - t_lo * se, est - t_hi * se), rel=1e-10)
    assert abs(gamma) > 0.05  # the two intervals differ
    monkeypatch.setattr(ppi, "_SKEW", False)
    sym = ppi_rates(df, cluster="item_id", lam=1.0)
    assert sym.attrs["interval"] == ["t"]
    assert (sym["ci_low"].item(), sym["ci_high"].item()) == pytest.approx((est - q * se, est + q * se), rel=1e-12)


def test_labels_of_one_class_take_plain_ppi_not_a_shrunken_lam():
    # A model refusing 10% of the time whose 30 labels hold no refusal (4% of such samples):
    # the labels say nothing about how label and flag co-vary, so the default takes lam = 1
    # (plain PPI: flag rate of the unlabelled rows + mean of label - flag on the labelled).
    # With the tuned lam (about 0.4, from the variance floor's pseudo-labels alone) the
    # estimate was shrunk towards the labels' 0: 0.048 for a true 0.10 (calibration_ppi.py).
    rng = np.random.default_rng(5)
    y = rng.binomial(1, 0.1, 1000)
    f = np.where(y == 1, rng.random(1000) < 0.95, rng.random(1000) < 0.02).astype(int)
    h = np.full(1000, np.nan)
    neg = np.flatnonzero((y == 0) & (f == 0))[:30]
    h[neg] = 0
    df = pd.DataFrame({"refusal": f, "human": h})
    got = ppi_rates(df, cluster=None)
    unl = np.isnan(h)
    assert got["lam"].item() == 1.0
    assert got["rate"].item() == pytest.approx(f[unl].mean() + (0 - 0), rel=1e-12)
    assert got["ci_low"].item() < 0.1 < got["ci_high"].item()
    # a label sample with both classes keeps the tuned lam
    h2 = h.copy()
    h2[np.flatnonzero(y == 1)[:3]] = 1
    assert ppi_rates(df.assign(human=h2), cluster=None)["lam"].item() < 1.0


def test_bonett_price_alternative_is_the_adjusted_wald_of_the_paired_difference(monkeypatch):
    # the alternative small-sample rule measured in docs/methods_ppi.md section 4 (not the
    # default): one pseudo-labelled (y=1, f=0) and (y=0, f=1) row per labelled group. With
    # lam = 1 and one stratum its labelled variance is Bonett & Price's (2012) adjusted
    # Wald for the paired difference y - f, closed form: (p10 + p01 - d^2) / (n + 2) with
    # p10 = (n10 + 1) / (n + 2), p01 = (n01 + 1) / (n + 2), d = p10 - p01
    from refusalstats import ppi as ppi_module

    rng = np.random.default_rng(5)
    f = rng.binomial(1, 0.2, 3000)
    h = np.full(3000, np.nan)
    h[:40] = f[:40]
    h[[0, 1, 2]] = 1 - f[[0, 1, 2]]          # three disagreements on the labelled rows
    df = pd.DataFrame({"refusal": f, "human": h})
    n = 40
    n10 = int(((h[:n] == 1) & (f[:n] == 0)).sum())
    n01 = int(((h[:n] == 0) & (f[:n] == 1)).sum())
    assert n10 + n01 == 3
    p10, p01 = (n10 + 1) / (n + 2), (n01 + 1) / (n + 2)
    fu = f[n:]
    var = (p10 + p01 - (p10 - p01) ** 2) / (n + 2) + fu.var() / len(fu)
    monkeypatch.setitem(ppi_module._SMALL_SAMPLE, "rule", "bp")
    monkeypatch.setitem(ppi_module._SMALL_SAMPLE, "quantile", "z")
    monkeypatch.setitem(ppi_module._SMALL_SAMPLE, "factor", False)
    bp = ppi_rates(df, cluster=None, lam=1.0)
    assert bp["std_error"].item() == pytest.approx(np.sqrt(var), rel=1e-12)
    # the point estimate is not adjusted: the plain PPI estimate
    assert bp["rate"].item() == pytest.approx(fu.mean() + np.mean(h[:n] - f[:n]), rel=1e-12)
    assert bp["ci_high"].item() == pytest.approx(bp["rate"].item() + 1.959963984540054 * np.sqrt(var), rel=1e-9)
    # the z interval (ppi_python's) ignores the rule
    assert ppi_rates(df, cluster=None, lam=1.0, ci="z")["std_error"].item() == pytest.approx(
        np.sqrt(np.var(h[:n] - f[:n]) / n + fu.var() / len(fu)), rel=1e-12)


@pytest.mark.parametrize("bare", [False, True])
def test_logit_small_sample_floor_only_where_the_labels_cannot_estimate_the_variance(bare):
    # intercept only, labels only (lam = 0), rows independent: closed forms. The estimate has
    # half a pseudo-refusal and half a pseudo-non-refusal (Haldane-Anscombe): mu = (sum y +
    # 0.5) / (n + 1); the sandwich is B / J^2 with B = sum (y - ybar)^2 / n^2,
    # J = mu (1 - mu) (1 + 1 / n), times n / (n - 1).
    # Labels that all agree with the flag ("bare") add 0.1 pseudo-label per (label, flag)
    # pair to B: 0.1 * 2 * (mu^2 + (1 - mu)^2) / n^2; labels with disagreements add nothing.
    rng = np.random.default_rng(3)
    n, N = 40, 400
    y = rng.binomial(1, 0.3, n).astype(float)
    f = y.copy()
    if not bare:
        f[:3] = 1 - f[:3]
    df = pd.DataFrame({"refusal": np.r_[f, rng.binomial(1, 0.3, N)].astype(int),
                       "human": np.r_[y, np.full(N, np.nan)]})
    fit = ppi_logit("refusal ~ 1", df, cluster=None, lam=0.0)
    mu = (y.sum() + 0.5) / (n + 1)
    assert fit.params.iloc[0] == pytest.approx(np.log(mu / (1 - mu)), abs=1e-10)
    B = ((y - y.mean()) ** 2).sum() / n ** 2 + (0.2 * (mu ** 2 + (1 - mu) ** 2) / n ** 2 if bare else 0.0)
    J = mu * (1 - mu) * (1 + 1 / n)
    assert fit.cov.iloc[0, 0] == pytest.approx(B / J ** 2 * n / (n - 1), rel=1e-10)


def test_labels_keyword_dispatches_from_the_public_functions():
    df = _clustered_stratified(seed=11)
    a = rs.refusal_rates(df, by="model", labels="human", strata="model", cluster="item_id")
    b = ppi_rates(df, by="model", strata="model", cluster="item_id")
    pd.testing.assert_frame_equal(a, b)
    e = df.assign(setting=np.where(df["model"] == "a", "persona", "persona-free"))
    pd.testing.assert_frame_equal(rs.persona_effect(e, labels="human", cluster="item_id"),
                                  rs.ppi_effect(e, cluster="item_id"))
    fit = rs.logit("refusal ~ model", df, labels="human", cluster="item_id", strata="model")
    ref = ppi_logit("refusal ~ model", df, cluster="item_id", strata="model")
    pd.testing.assert_series_equal(fit.params, ref.params)
    with pytest.raises(ValueError, match="penalty"):
        rs.logit("refusal ~ model", df, labels="human", penalty="firth")
    with pytest.raises(ValueError, match="one cluster column"):
        ppi_rates(df, cluster=["item_id", "model"])


def test_logit_clustered_labels_only_matches_statsmodels_cluster_sandwich():
    # lam = 0 on one stratum: the labelled rows' GLM with a CR1-type sandwich whose factor is
    # C / (C - 1) over all clusters (statsmodels' cluster cov uses the labelled clusters and
    # (n - 1) / (n - p) too; compare the meat directly instead)
    df = _clustered_stratified(seed=12)
    fit = ppi_logit("refusal ~ model", df, cluster="item_id", lam=0, ci="z")
    lab = df[df["human"].notna()]
    X = np.c_[np.ones(len(lab)), (lab["model"] == "b").to_numpy(float)]
    y = lab["human"].to_numpy()
    import statsmodels.api as sm
    m = sm.GLM(y, X, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(fit.params, m.params, atol=1e-8)
    mu = m.predict(X)
    score = X * (y - mu)[:, None]
    score = score - score.mean(0)   # centring within the labelled part (zero at the MLE)
    S = pd.DataFrame(score).groupby(lab["item_id"].to_numpy()).sum().to_numpy()
    bread = np.linalg.inv((X.T * (mu * (1 - mu))) @ X)
    C = df["item_id"].nunique()
    cov = C / (C - 1) * bread @ S.T @ S @ bread
    np.testing.assert_allclose(fit.cov.to_numpy(), cov, rtol=1e-8)


def test_report_adds_the_detector_section_only_with_labels(tmp_path, undrawn_figures):
    import warnings

    df = rs.simulate_paper(scale=0.005, seed=1)
    df = df[df["model"].isin(["Llama2-7B", "Qwen2-7B", "Gemma-7B"])][["model", "task", "persona", "prompt", "item_id", "refusal"]]
    df = df.assign(model=df["model"].astype(str)).reset_index(drop=True)
    s = rs.label_sample(df, 12, by="model", allocation="per_stratum", seed=0)
    s["human"] = np.where(np.arange(len(s)) % 4 == 0, 1 - s["refusal"], s["refusal"])
    t = rs.join_labels(df, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = rs.report(t, tmp_path / "with", hierarchical=False, progress=False)
    keys = [x.key for x in rep.sections]
    assert "detector" in keys and "detector" not in rep.skipped
    from types import SimpleNamespace

    from refusalstats.reporting.sections import detector_section
    assert detector_section(SimpleNamespace(data=df, source=None, design=None)) is None  # no labels
    sec = rep.sections[keys.index("detector")]
    card = sec.tables[0].data
    ref = rs.detector_card(t, "model", cluster=card.attrs.get("cluster") or None)
    np.testing.assert_allclose(card["rate"], ref["rate"])
    assert "The refusal detector against human labels" in rep.path.read_text()
    by_task = next(x for x in sec.tables if x.key == "detector_card_task").data
    assert len(by_task) == t.groupby(["model", "task"], observed=True).ngroups


def test_disparity_with_labels_uses_ppi_rates_and_their_noise():
    rng = np.random.default_rng(8)
    personas = {"a": "G", "b": "G", "c": "G", "c1": "control", "c2": "control", "c3": "control"}
    rate = {"a": 0.1, "b": 0.3, "c": 0.5, "c1": 0.2, "c2": 0.22, "c3": 0.25}
    df = pd.DataFrame({"persona": np.repeat(list(personas), 400)})
    df["persona_group"] = df["persona"].map(personas)
    truth = rng.random(len(df)) < df["persona"].map(rate)
    df["refusal"] = np.where(truth, rng.random(len(df)) < 0.8, rng.random(len(df)) < 0.05).astype(int)
    df["human"] = np.where(rng.random(len(df)) < 0.3, truth.astype(float), np.nan)
    out = rs.disparity(df, control="control", labels="human", cluster=None)
    pd.testing.assert_frame_equal(out, rs.ppi_disparity(df, control="control", cluster=None))
    r = ppi_rates(df, by="persona", cluster=None).set_index("persona")
    from refusalstats.persona_disparity import _spread

    def sd(names):
        noise = (1 - 1 / len(names)) * np.sum(r.loc[names, "std_error"] ** 2)
        return float(_spread(r.loc[names, "rate"].to_numpy(), noise, 1, True))

    assert out["sd_corrected"].item() == pytest.approx(sd(["a", "b", "c"]))
    assert out["control_sd_corrected"].item() == pytest.approx(sd(["c1", "c2", "c3"]))
    assert out["disparity"].item() == pytest.approx(sd(["a", "b", "c"]) / sd(["c1", "c2", "c3"]))
    with pytest.raises(ValueError, match="noise-corrected"):
        rs.disparity(df, control="control", labels="human", estimator="plug-in")


def test_score_interval_is_wilson_with_labels_only(monkeypatch):
    """The default interval of a rate (ppi._SCORE = "constrained") with lam = 0 takes the
    labelled mean's variance at the value tested: Wilson's score interval (statsmodels); so
    does the measured alternative "simple" (a closed form there)."""
    from statsmodels.stats.proportion import proportion_confint

    from refusalstats import ppi

    for kind in ("constrained", "simple"):
        monkeypatch.setattr(ppi, "_SCORE", kind)
        for k in (0, 1, 3, 10, 29):
            y = (np.arange(30) < k).astype(int)
            r = ppi_rates(pd.DataFrame({"refusal": y, "human": y.astype(float)}), cluster=None, lam=0)
            assert r.attrs["interval"] == ["score"]
            np.testing.assert_allclose(r[["ci_low", "ci_high"]].to_numpy().ravel(),
                                       proportion_confint(k, 30, method="wilson"), atol=1e-9)


def test_score_interval_inverts_the_constrained_table_variance():
    """With the detector (lam tuned), the default interval is the set of theta0 with
    (est - theta0)^2 <= z^2 V(theta0), V the variance of y - lam f over the labelled rows'
    (label, flag) table refitted with P(y=1) = theta0 and the flag's rates given the label
    kept (se = (n11 + 1/2) / (n1 + 1), fpr = (n01 + 1/2) / (n0 + 1)), plus lam^2 times the
    unlabelled flags' variance. Reference: that variance by enumerating the four cells,
    and the ends found by brentq."""
    from scipy import optimize, stats

    rng = np.random.default_rng(12)
    n, N = 40, 1500
    y = (rng.random(N) < 0.2).astype(int)
    f = np.where(y == 1, rng.random(N) < 0.8, rng.random(N) < 0.1).astype(int)
    h = np.full(N, np.nan)
    h[:n] = y[:n]
    out = ppi_rates(pd.DataFrame({"refusal": f, "human": h}), cluster=None)
    assert out.attrs["interval"] == ["score"]
    est, lam = out["rate"].item(), out["lam"].item()
    assert 0.2 < lam < 1
    yl, fl, fu = y[:n], f[:n], f[n:]
    se = (np.sum((yl == 1) & (fl == 1)) + 0.5) / (np.sum(yl == 1) + 1)
    fpr = (np.sum((yl == 0) & (fl == 1)) + 0.5) / (np.sum(yl == 0) + 1)

    def V(th):
        cells = {(1, 1): th * se, (1, 0): th * (1 - se), (0, 1): (1 - th) * fpr, (0, 0): (1 - th) * (1 - fpr)}
        m1 = sum(p * (a - lam * b) for (a, b), p in cells.items())
        m2 = sum(p * (a - lam * b) ** 2 for (a, b), p in cells.items())
        return (m2 - m1 ** 2) / n + lam ** 2 * fu.var() / len(fu)

    z2 = stats.norm.ppf(0.975) ** 2

    def g(th):
        return (est - th) ** 2 - z2 * V(th)

    lo, hi = optimize.brentq(g, 1e-9, est), optimize.brentq(g, est, 1 - 1e-9)
    np.testing.assert_allclose([out["ci_low"].item(), out["ci_high"].item()], [lo, hi], atol=1e-9)
    assert out.attrs["quantile"] == [pytest.approx(np.sqrt(z2))]


def test_score_interval_where_labels_share_a_stratum_and_hall_where_strata_cross():
    """Rates by model with labels drawn within models (strata="model"): each model's labels
    are one stratum, so each gets the score interval; the overall rate over those strata
    gets Hall's skewness-corrected t interval."""
    df = _clustered_stratified()
    by_model = ppi_rates(df, by="model", cluster=None, strata="model")
    assert set(by_model.attrs["interval"]) == {"score"}
    overall = ppi_rates(df, cluster=None, strata="model")
    assert overall.attrs["interval"] == ["hall"]
    assert (overall["ci_low"] < overall["rate"]).all() and (overall["rate"] < overall["ci_high"]).all()


def test_constrained_score_with_clusters_is_wilson_scaled_by_the_design_effect(monkeypatch):
    """The default interval with clusters, labels only (lam = 0): Wilson's interval with
    z^2 replaced by t^2 x deff, deff = the CR2 variance over p (1 - p) / n at the estimate
    and t on the Satterthwaite df (the interval's s.e. and df); "z" takes z^2 x deff."""
    from refusalstats import ppi

    rng = np.random.default_rng(8)
    item = np.repeat(np.arange(12), 5)
    y = (rng.random(60) < 0.15 + 0.4 * (item % 3 == 0)).astype(int)
    df = pd.DataFrame({"item_id": item, "refusal": y, "human": y.astype(float)})
    got = ppi_rates(df, cluster="item_id", lam=0)
    assert got.attrs["interval"] == ["score"]
    p, n, se = got["rate"].item(), 60, got["std_error"].item()
    t2 = float(np.ravel(got.attrs["quantile"])[0]) ** 2  # the t quantile on the Satterthwaite df
    assert t2 > 1.96**2

    def wilson(q2):
        c = q2 * se**2 / (p * (1 - p) / n) / n  # Wilson with z^2 / n -> q^2 deff / n
        centre, half = (p + c / 2) / (1 + c), np.sqrt(c * p * (1 - p) + c**2 / 4) / (1 + c)
        return [centre - half, centre + half]

    np.testing.assert_allclose(got[["ci_low", "ci_high"]].to_numpy().ravel(), wilson(t2), atol=1e-9)
    monkeypatch.setattr(ppi, "_SCORE_CLUSTER_Q", "z")
    got_z = ppi_rates(df, cluster="item_id", lam=0)
    np.testing.assert_allclose(got_z[["ci_low", "ci_high"]].to_numpy().ravel(), wilson(1.959963984540054**2),
                               atol=1e-9)
    assert got["rate"].item() == p


def test_fieller_interval_is_the_set_its_inequality_accepts():
    """_fieller's closed form against the inequality evaluated on a fine grid of ratios:
    bounded when the control variance is clearly positive, unbounded above when it is not,
    from 0 when the category's is not."""
    from refusalstats.ppi import _fieller

    z2 = 1.959964**2
    grid = np.linspace(0, 20, 200_001)
    cases = [(4.0, 1.0, [[1.0, 0.1], [0.1, 0.04]]),   # bounded
             (4.0, 0.2, [[1.0, 0.05], [0.05, 0.25]]),  # control not significant: [lo, inf)
             (0.1, 1.0, [[1.0, 0.0], [0.0, 0.04]])]    # category not significant: [0, hi]
    for a, c, S in cases:
        S = np.array(S)
        ok = (a - grid**2 * c) ** 2 <= z2 * (S[0, 0] - 2 * grid**2 * S[0, 1] + grid**4 * S[1, 1])
        lo, hi = _fieller(a, c, S, z2)
        assert lo == pytest.approx(grid[ok][0], abs=2e-4)
        if ok[-1]:
            assert hi == np.inf
        else:
            assert hi == pytest.approx(grid[ok][-1], abs=2e-4)
    assert _fieller(4.0, 0.2, np.array([[1.0, 0.05], [0.05, 0.25]]), z2)[1] == np.inf
    assert _fieller(0.1, 1.0, np.array([[1.0, 0.0], [0.0, 0.04]]), z2)[0] == 0.0


def test_noise_products_give_the_variance_of_corrected_spreads():
    """For normal rates r ~ N(mu, S): Var(V) = 2 t + 4 mu' A S A mu for a corrected
    variance V = r' A r - tr(A S), A = H / (k - 1), and Cov(V_c, V_0) likewise with t_c0
    (Searle's moments of quadratic forms); _noise_products gives the t's. Checked by
    simulation (400,000 draws: Monte Carlo error about 0.5%)."""
    from refusalstats.ppi import _noise_products

    rng = np.random.default_rng(3)
    P = 7
    cat = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    ctrl = ~cat
    L = rng.normal(0, 0.03, (P, P))
    S = L @ L.T + np.diag(rng.uniform(0.0005, 0.002, P))
    mu = rng.uniform(0.05, 0.3, P)
    tcc, tc0, t00 = _noise_products(cat, ctrl, S, 1)
    r = rng.multivariate_normal(mu, S, 400_000)

    def corrected(mem):
        k = mem.sum()
        H = (np.eye(k) - 1 / k) / (k - 1)
        x = r[:, mem]
        return np.einsum("ni,ij,nj->n", x, H, x) - np.trace(H @ S[np.ix_(mem, mem)]), H

    (vc, Hc), (v0, H0) = corrected(cat), corrected(ctrl)
    mc, m0 = mu[cat], mu[ctrl]
    Scc, S00, Sc0 = S[np.ix_(cat, cat)], S[np.ix_(ctrl, ctrl)], S[np.ix_(cat, ctrl)]
    assert np.var(vc) == pytest.approx(2 * tcc + 4 * mc @ Hc @ Scc @ Hc @ mc, rel=0.02)
    assert np.var(v0) == pytest.approx(2 * t00 + 4 * m0 @ H0 @ S00 @ H0 @ m0, rel=0.02)
    assert np.cov(vc, v0)[0, 1] == pytest.approx(2 * tc0 + 4 * mc @ Hc @ Sc0 @ H0 @ m0, rel=0.05)
    assert np.mean(vc) == pytest.approx(mc @ Hc @ mc, rel=0.01)  # unbiased
    # with the rates given, the first-order terms r_x' A_x S_xy A_y r_y as well
    *_, rcc, rc0, r00 = _noise_products(cat, ctrl, S, 1, mu)
    assert [rcc, rc0, r00] == pytest.approx([mc @ Hc @ Scc @ Hc @ mc, mc @ Hc @ Sc0 @ H0 @ m0,
                                             m0 @ H0 @ S00 @ H0 @ m0], rel=1e-12)


def test_cli_label_sample_then_corrected_rates_and_card(tmp_path, capsys):
    from refusalstats.cli import main

    df = rs.simulate_paper(scale=0.005, seed=2)
    table = tmp_path / "t.parquet"
    df.to_parquet(table)
    out = tmp_path / "to_label.csv"
    assert main(["label-sample", str(table), "-o", str(out), "-n", "20", "--per-stratum", "--by", "model"]) == 0
    lab = pd.read_csv(out)
    assert (lab.groupby("model").size() == 20).all() and lab["human"].isna().all()
    lab["human"] = lab["refusal"]
    lab.to_csv(out, index=False)
    capsys.readouterr()
    assert main(["rates", str(table), "--by", "model", "--label-file", str(out), "--strata", "model",
                 "--cluster", "none", "--csv", str(tmp_path / "r.csv")]) == 0
    text = capsys.readouterr().out
    assert "corrected by 320 human labels" in text
    got = pd.read_csv(tmp_path / "r.csv")
    ref = ppi_rates(rs.join_labels(df, out), by="model", strata="model", cluster=None)
    np.testing.assert_allclose(got["rate"], ref["rate"])
    assert main(["detector-card", str(table), "--label-file", str(out), "--cluster", "none"]) == 0
    assert "sensitivity" in capsys.readouterr().out
    assert main(["label-sample", str(table), "-o", str(tmp_path / "b.csv"), "--target-width", "0.2",
                 "--by", "task"]) == 0
    assert "labels_needed" in capsys.readouterr().out


def test_cli_disparity_with_labels_equals_the_python_estimate(tmp_path, capsys):
    from refusalstats.cli import main

    rng = np.random.default_rng(22)
    personas = {"a": "G", "b": "G", "c": "G", "c1": "control", "c2": "control", "c3": "control"}
    rate = {"a": 0.1, "b": 0.3, "c": 0.5, "c1": 0.2, "c2": 0.22, "c3": 0.25}
    df = pd.DataFrame({"persona": np.tile(list(personas), 300), "item_id": np.repeat(np.arange(300), 6)})
    df["persona_group"] = df["persona"].map(personas)
    truth = rng.random(len(df)) < df["persona"].map(rate)
    df["refusal"] = np.where(truth, rng.random(len(df)) < 0.8, rng.random(len(df)) < 0.05).astype(int)
    df["human"] = np.where(rng.random(len(df)) < 0.3, truth.astype(float), np.nan)
    table = tmp_path / "t.parquet"
    df.to_parquet(table)
    for cluster in ("none", "item_id"):
        out = tmp_path / f"d_{cluster}.csv"
        assert main(["disparity", str(table), "--labels", "human", "--cluster", cluster, "--n-boot", "30",
                     "--seed", "3", "--csv", str(out)]) == 0
        assert f"corrected by {int(df['human'].notna().sum()):,} human labels" in capsys.readouterr().out
        ref = rs.disparity(df, control="control", labels="human", cluster=None if cluster == "none" else cluster,
                           n_boot=30, seed=3)
        pd.testing.assert_frame_equal(pd.read_csv(out), ref, check_dtype=False, rtol=1e-12)
        # the labels change the estimate: the detector's flags alone give another ratio
        assert ref["disparity"].item() != pytest.approx(
            rs.disparity(df, control="control", cluster=None if cluster == "none" else cluster)["disparity"].item())
    assert main(["disparity", str(table), "--labels", "human", "--estimator", "plug-in"]) == 2
    assert "--estimator plug-in" in capsys.readouterr().err
