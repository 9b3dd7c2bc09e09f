"""Cluster-robust covariance of logit (#19, #23): CR2 / CR3 + Satterthwaite + HTZ, CR1, two-way.

Reference numbers were computed once with R 4.2.2, clubSandwich 0.5.8 and sandwich
(Debian r-base-core) on the tables built by ``_fixture()`` and ``_crossed()`` below,
written to CSV (``df.to_csv(path, index=False)``) and read with ``read.csv``.

CR2 of a GLM here is Bell & McCaffrey's bias-reduced linearization of the GLM's last
IRLS step: the weighted least-squares fit of the working response ``z`` on ``X`` with
weights ``w = mu (1 - mu)``, written as OLS on ``sqrt(w)``-scaled variables, where
clubSandwich's CR2 for OLS applies (``A_j = (I - H_jj)^(-1/2)``)::

    library(clubSandwich); library(sandwich)
    d <- read.csv("fix.csv"); d$task <- factor(d$task); d$persona <- factor(d$persona)
    irls_ols <- function(fit) {
      w <- fit$weights; z <- fit$linear.predictors + residuals(fit, type = "working")
      X <- model.matrix(fit); sw <- sqrt(w); y <- sw * z; Xs <- sw * X
      lm(y ~ 0 + Xs)
    }
    fit <- glm(refusal ~ persona + task, family = binomial, data = d)
    ols <- irls_ols(fit)
    V <- vcovCR(ols, cluster = d$item_id, type = "CR2")
    ct <- conf_int(ols, vcov = V, test = "Satterthwaite", level = 0.95)     # df, CI_L
    linear_contrast(ols, vcov = V, contrasts = matrix(c(0, -1, 1, 0, 0), 1),
                    test = "Satterthwaite")$df
    C <- matrix(0, 2, 5); C[1, 2] <- 1; C[2, 3] <- 1                          # persona
    Wald_test(ols, constraints = C, vcov = V, test = "HTZ")
    C <- matrix(0, 2, 5); C[1, 4] <- 1; C[2, 5] <- 1                          # task
    Wald_test(ols, constraints = C, vcov = V, test = "HTZ")
    fit0 <- glm(refusal ~ persona, family = binomial, data = d)              # anova's sub-model
    ols0 <- irls_ols(fit0); V0 <- vcovCR(ols0, cluster = d$item_id, type = "CR2")
    C <- matrix(0, 2, 3); C[1, 2] <- 1; C[2, 3] <- 1
    Wald_test(ols0, constraints = C, vcov = V0, test = "HTZ")

clubSandwich's own ``vcovCR.glm`` takes another square root of the cluster blocks: it
treats the fit as WLS of ``y`` on the mean function with target ``Theta = V = diag(mu (1 -
mu))`` and uses ``V^(1/2) [V (I - H_jj) V]^(-1/2) V^(1/2)`` where the working OLS has ``V^(1/2)
(I - H_jj)^(-1/2) V^(-1/2)`` (both unbiased under the working model; equal when ``mu`` is constant
within clusters). That has no p x p form; ``vcov="CR2-glm"`` computes it per cluster and is
tested against ``vcovCR(glm_fit, type = "CR2")`` below (``GLM_REF``), 0.1% from the numbers just
below. CR3's ``(I - H_jj)^-1`` is the same in both forms: ``vcov="CR3"`` equals
``vcovCR(glm_fit, type = "CR3")``.

Two-way clustering (``_crossed()``)::

    fit <- glm(refusal ~ task, family = binomial, data = d2)
    vcovCL(fit, cluster = ~ item_id + persona, type = "HC1")
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from refusalstats.regression import logit
from refusalstats.regression.covariance import _CR2Engine

FORMULA = "refusal ~ persona + task"
# R: as.vector(vcovCR(ols, cluster = d$item_id, type = "CR2"))
V_CR2 = np.array([
    0.162420266379211, -0.0278671255614276, -0.0414114365905453, -0.128804519951764, -0.131250931477952,
    -0.0278671255614275, 0.129543454911893, 0.0336019904090701, -0.0217468960033615, -0.044701414340127,
    -0.0414114365905452, 0.0336019904090701, 0.166299311578963, -0.0516342158520731, -0.0323743808221153,
    -0.128804519951764, -0.0217468960033614, -0.0516342158520731, 0.359795848617512, 0.154060208539448,
    -0.131250931477952, -0.044701414340127, -0.0323743808221153, 0.154060208539448, 0.385882460378144,
]).reshape(5, 5)
DF_SATT = np.array([11.0228373545489, 18.1092366319679, 18.6201182839475, 11.7282240761534, 11.4917784575416])
CI_LOW = np.array([-1.01789149760691, -0.22027269760936, -0.339799016747355, -0.71345679535655,
                   -1.02433331791778])
CONTRAST_DF = 18.5918707281208  # persona Woman - Man
HTZ = {"persona": (1.4728086052226, 17.7791590577392, 0.255943393571247),
       "task": (0.466526224875183, 12.1035094482938, 0.637999405845124)}
HTZ_SUB_PERSONA = (1.24396922528715, 17.975585849429, 0.311896732078203)
# clubSandwich on the glm itself (not the working OLS), _fixture(), R 4.2.2, clubSandwich 0.5.8:
#   fit <- glm(refusal ~ persona + task, family = binomial, data = d,
#              control = glm.control(epsilon = 1e-14, maxit = 100))   # the converged MLE; R's
#   # default epsilon 1e-8 stops about 2e-7 (relative) away from it, which moves vcovCR as much
#   for (type in c("CR3", "CR2")) {
#     V <- vcovCR(fit, cluster = d$item_id, type = type)
#     ct <- conf_int(fit, vcov = V, test = "Satterthwaite", level = 0.95)     # df, CI_L
#     C <- matrix(0, 2, 5); C[1, 2] <- 1; C[2, 3] <- 1                          # persona
#     Wald_test(fit, constraints = C, vcov = V, test = "HTZ")                   # Fstat, df_denom, p_val
#     C <- matrix(0, 2, 5); C[1, 4] <- 1; C[2, 5] <- 1                          # task
#     Wald_test(fit, constraints = C, vcov = V, test = "HTZ") }
GLM_REF = {
    "CR3": {
        "V": [0.18820713733391234, -0.025940903358465033, -0.042805898227737907, -0.15341209658604898,
              -0.15502243757287093, -0.025940903358464971, 0.14030816962833143, 0.03224453968984442,
              -0.025797186079803382, -0.055251546688507763, -0.04280589822773781, 0.032244539689844455,
              0.17818408827161125, -0.057455926709459988, -0.035622756609799348, -0.15341209658604874,
              -0.025797186079803486, -0.057455926709460085, 0.42408979716285145, 0.18195626433093604,
              -0.15502243757287121, -0.055251546688507555, -0.035622756609799085, 0.18195626433093623,
              0.46338625605218325],
        "df": [10.334943352039391, 17.838993790608736, 18.367748881433425, 11.268925341762273,
               11.069893991704411],
        "ci_low": [-1.0934883871795673, -0.25189964919903152, -0.37065479749314389, -0.83234016725914295,
                   -1.1613102594092908],
        "persona": (1.3922970737434832, 17.540702290567754, 0.27465405321686948),
        "task": (0.39426977191859985, 11.616413915195656, 0.68286076390097461)},
    "CR2-glm": {
        "V": [0.16227148022935112, -0.027752236626910582, -0.041269488578298999, -0.12892210362569764,
              -0.13136907384821431, -0.027752236626910707, 0.12943820469241699, 0.033455356619166557,
              -0.021456784382032242, -0.044476558531085432, -0.041269488578299061, 0.033455356619166508,
              0.1661373581545964, -0.051458940844707229, -0.032151745308646153, -0.12892210362569739,
              -0.021456784382032468, -0.051458940844707431, 0.3601074202116839, 0.15404968859434962,
              -0.13136907384821436, -0.044476558531085439, -0.032151745308646139, 0.15404968859434975,
              0.38592565207570867],
        "df": [11.023278647701233, 18.109052510716371, 18.620119271521066, 11.728131523772401,
               11.491638363944562],
        "ci_low": [-1.0174809474873752, -0.21996601163660534, -0.33938272079642551, -0.7140251106158727,
                   -1.0244113321147306],
        "persona": (1.4750286472726206, 17.779073532768709, 0.25545658596592441),
        "task": (0.46618281752585361, 12.103485397413952, 0.63820287697269906)},
}
# R: as.vector(vcovCL(fit, cluster = ~ item_id + persona, type = "HC1")) on _crossed()
V_2WAY = np.array([0.084966587797703, -0.0229870516870415, -0.0229870516870416, 0.0878993759682517]).reshape(2, 2)


def _fixture(seed: int = 19) -> pd.DataFrame:
    """24 items of 2-12 answers (3 tasks), 3 personas, item effect sd 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, task in enumerate(["nli", "offensiveness", "sentiment"]):
        for i in range(8):
            item = f"{task[:3]}{i}"
            size = int(rng.integers(2, 13))
            u = rng.normal(0, 1.0)
            for _ in range(size):
                persona = rng.choice(["Atheist", "Man", "Woman"])
                eta = -0.5 + 0.6 * t + (persona == "Woman") * 0.7 + u
                rows.append((item, task, persona, int(rng.random() < 1 / (1 + np.exp(-eta)))))
    return pd.DataFrame(rows, columns=["item_id", "task", "persona", "refusal"])


def _crossed(seed: int = 23) -> pd.DataFrame:
    """20 items x 8 personas, each item answered by 3-8 personas 1-3 times; persona effects sd 0.6."""
    rng = np.random.default_rng(seed)
    personas = [f"p{k}" for k in range(8)]
    pe = rng.normal(0, 0.6, 8)
    rows = []
    for i in range(20):
        task = "nli" if i < 10 else "sentiment"
        u = rng.normal(0, 0.8)
        for k in rng.choice(8, size=int(rng.integers(3, 9)), replace=False):
            for _ in range(int(rng.integers(1, 4))):
                eta = -0.3 + 0.5 * (task == "sentiment") + u + pe[k]
                rows.append((f"i{i}", task, personas[k], int(rng.random() < 1 / (1 + np.exp(-eta)))))
    return pd.DataFrame(rows, columns=["item_id", "task", "persona", "refusal"])


@pytest.fixture(scope="module")
def fit():
    return logit(FORMULA, _fixture(), cluster="item_id")


def test_cr2_is_the_default_and_equals_clubsandwich(fit):
    assert fit.vcov == "CR2" and "CR2" in fit.cov_type
    np.testing.assert_allclose(fit.cov_params().to_numpy(), V_CR2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fit.df.to_numpy(), DF_SATT, rtol=1e-6)
    tab = fit.coef_table()
    assert "t" in tab.columns and "df" in tab.columns
    np.testing.assert_allclose(tab["ci_low"], CI_LOW, rtol=1e-6)
    t = fit.params / np.sqrt(np.diag(V_CR2))
    np.testing.assert_allclose(fit.pvalues, 2 * stats.t.sf(np.abs(t), DF_SATT), rtol=1e-5)
    assert "t value" in str(fit.summary()) and "Satterthwaite" in str(fit.summary())


def test_htz_tests_equal_clubsandwich(fit):
    d1 = fit.drop1().set_index("term")
    for term, (F, df2, p) in HTZ.items():
        assert d1.loc[term, "F"] == pytest.approx(F, rel=1e-6)
        assert d1.loc[term, "df_resid"] == pytest.approx(df2, rel=1e-6)
        assert d1.loc[term, "p_value"] == pytest.approx(p, rel=1e-6)
    assert "HTZ" in d1.attrs["test"]
    an = fit.anova().set_index("term")  # persona in the persona-only model, task in the full one
    F, df2, p = HTZ_SUB_PERSONA
    assert an.loc["persona", "F"] == pytest.approx(F, rel=1e-6)
    assert an.loc["persona", "df_resid"] == pytest.approx(df2, rel=1e-6)
    assert an.loc["task", "p_value"] == pytest.approx(HTZ["task"][2], rel=1e-6)
    # both ways of summing over pairs of clusters give clubSandwich's numbers
    C = np.zeros((2, 5))
    C[[0, 1], [1, 2]] = 1.0
    eng, b, V = fit._ccov.engine, fit.params.to_numpy(), fit.cov_params().to_numpy()
    for gram in (True, False):
        out = eng.htz(C, b, V, gram=gram)
        assert (out["F"], out["df_resid"]) == pytest.approx(HTZ["persona"][:2], rel=1e-6)


def test_contrast_prediction_and_marginal_mean_df(fit):
    c = np.array([0.0, -1.0, 1.0, 0.0, 0.0])
    assert fit._contrast_df(c)[0] == pytest.approx(CONTRAST_DF, rel=1e-6)
    # a prediction is the contrast x' b: its df is that contrast's
    new = pd.DataFrame({"persona": ["Woman"], "task": ["sentiment"]})
    pr = fit.predict(new, conf=0.95, type="link")
    x = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    assert pr["df"].item() == pytest.approx(fit._contrast_df(x)[0], rel=1e-12)
    se = np.sqrt(x @ V_CR2 @ x)
    q = stats.t.ppf(0.975, pr["df"].item())
    assert pr["ci_high"].item() == pytest.approx(x @ fit.params.to_numpy() + q * se, rel=1e-6)
    mm = fit.marginal_means("persona")
    assert (mm["df"] > 5).all() and (mm["df"] < 24).all()


@pytest.mark.parametrize("vcov", ["CR3", "CR2-glm"])
def test_cr3_and_the_glm_form_of_cr2_equal_clubsandwich_on_the_glm(vcov):
    """``vcovCR(glm_fit, type = "CR3")`` is our CR3 (its (I - H_jj)^-1 is the same in the GLM's
    and the working OLS's parametrization); ``vcovCR(glm_fit, type = "CR2")`` takes the square
    root on the response scale, which ``vcov="CR2-glm"`` does per cluster."""
    ref = GLM_REF[vcov]
    f = logit(FORMULA, _fixture(), cluster="item_id", vcov=vcov)
    assert f.vcov == vcov
    np.testing.assert_allclose(f.cov_params().to_numpy(), np.reshape(ref["V"], (5, 5)), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(f.df.to_numpy(), ref["df"], rtol=1e-6)
    np.testing.assert_allclose(f.conf_int()["ci_low"].to_numpy(), ref["ci_low"], rtol=1e-6)
    d1 = f.drop1().set_index("term")
    for term in ("persona", "task"):
        assert tuple(d1.loc[term, ["F", "df_resid", "p_value"]]) == pytest.approx(ref[term], rel=1e-6)
    # both route the double sums the same way
    C = np.zeros((2, 5))
    C[[0, 1], [1, 2]] = 1.0
    out = f._ccov.engine.htz(C, f.params.to_numpy(), f.cov_params().to_numpy(), gram=False)
    assert (out["F"], out["df_resid"]) == pytest.approx(ref["persona"][:2], rel=1e-6)
    # the working-OLS CR2 (the default's form) is a different root: 0.1% from the GLM form here
    if vcov == "CR2-glm":
        rel = np.abs(np.diag(V_CR2) / np.diag(f.cov_params().to_numpy()) - 1)
        assert 1e-5 < rel.max() < 3e-3


def _sized(sizes: list[int], seed: int = 3) -> pd.DataFrame:
    """Items of the given sizes (answers each), tasks by item, personas by answer, item sd 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, m in enumerate(sizes):
        task = ["nli", "offensiveness", "sentiment"][i % 3]
        u = rng.normal(0, 1.0)
        for _ in range(m):
            persona = rng.choice(["Atheist", "Man", "Woman"])
            eta = -0.3 + 0.4 * (task == "sentiment") + u
            rows.append((f"i{i}", task, persona, int(rng.random() < 1 / (1 + np.exp(-eta)))))
    return pd.DataFrame(rows, columns=["item_id", "task", "persona", "refusal"])


def test_default_is_cr3_for_very_unequal_clusters_and_says_why():
    # Kish effective number 192^2 / (2 * 40^2 + 28 * 4^2) = 10.1 < min(20, 30 / 2): CR3
    unequal = _sized([40, 40] + [4] * 28)
    f = logit(FORMULA, unequal, cluster="item_id")
    assert f.vcov == "CR3" and "CR3" in f.cov_type
    why = [n for n in f.notes if n.startswith("vcov: CR3")]
    assert why and "Kish effective number 10.1" in why[0] and "shape (g)" in why[0]
    assert "vcov: CR3" in str(f.summary())
    f3 = logit(FORMULA, unequal, cluster="item_id", vcov="CR3")
    np.testing.assert_allclose(f.cov_params().to_numpy(), f3.cov_params().to_numpy(), rtol=1e-12)
    assert "HTZ" in f.drop1().attrs["test"] and "CR3" in f.drop1().attrs["test"]
    f2 = logit(FORMULA, unequal, cluster="item_id", vcov="CR2")  # by name, with a note
    assert f2.vcov == "CR2" and any("vcov='CR2' on 30 clusters" in n for n in f2.notes)
    assert (f3.bse > f2.bse).all()  # (I - H)^-1 > (I - H)^(-1/2) wherever a cluster has leverage
    # balanced few clusters: Kish = G = 12, not under half of G: CR2, no caveat
    balanced = logit(FORMULA, _sized([10] * 12), cluster="item_id")
    assert balanced.vcov == "CR2" and any(n.startswith("vcov: CR2 (Kish effective number of clusters 12.0")
                                          for n in balanced.notes)
    # one item carries most rows: Kish 1.96 < 8: the default is CR3 and says that it was conservative
    few = logit(FORMULA, _sized([80] + [3] * 11), cluster="item_id")
    assert few.vcov == "CR3" and any("effective clusters (Kish)" in n and "conservative" in n for n in few.notes)


def test_cr1_stays_available_by_name():
    df = _fixture()
    f1 = logit(FORMULA, df, cluster="item_id", vcov="CR1")
    assert f1.vcov == "CR1" and "CR1" in f1.cov_type and "z" in f1.coef_table().columns
    # CR1 = G/(G-1) (N-1)/(N-k) x the row-level sandwich, written out here
    from scipy.special import expit

    X = np.column_stack([np.ones(len(df)), df["persona"].eq("Man"), df["persona"].eq("Woman"),
                         df["task"].eq("offensiveness"), df["task"].eq("sentiment")]).astype(float)
    mu = expit(X @ f1.params.to_numpy())
    bread = np.linalg.inv((X * (mu * (1 - mu))[:, None]).T @ X)
    S = pd.DataFrame(X * (df["refusal"].to_numpy() - mu)[:, None]).groupby(df["item_id"].to_numpy()).sum()
    G, N, k = len(S), len(df), 5
    want = G / (G - 1) * (N - 1) / (N - k) * bread @ (S.T.to_numpy() @ S.to_numpy()) @ bread
    np.testing.assert_allclose(f1.cov_params().to_numpy(), want, rtol=1e-8)
    assert (f1.drop1()["df_resid"] == G - 1).all()
    with pytest.raises(ValueError, match="vcov must be one of"):
        logit(FORMULA, df, cluster="item_id", vcov="HC3")


def test_series_path_equals_the_exact_cr2_and_first_order_df_is_close():
    rng = np.random.default_rng(7)
    n = 6000
    df = pd.DataFrame({"item_id": rng.integers(0, 400, n), "persona": rng.choice(list("abcde"), n),
                       "task": rng.choice(["x", "y", "z"], n)})
    u = rng.normal(0, 1, 400)
    df["refusal"] = (rng.random(n) < 1 / (1 + np.exp(-(u[df["item_id"]] - 0.3)))).astype(int)
    f = logit(FORMULA, df, cluster="item_id")
    d = f._design
    from scipy.special import expit

    from refusalstats.regression.linalg import _inv_spd, _xtwx

    beta = f.params.to_numpy()
    mu = expit(d.X @ beta)
    M = _inv_spd(_xtwx(d.Xf, d.n * mu * (1 - mu)))
    exact = _CR2Engine(d.X, d.Xf, d.cluster, beta, M, exact=True)
    series = _CR2Engine(d.X, d.Xf, d.cluster, beta, M, exact=False)
    np.testing.assert_allclose(series.V, exact.V, rtol=1e-10)
    assert series.approx_note and not exact.approx_note
    np.testing.assert_allclose(series.df(np.eye(7)), exact.df(np.eye(7)), rtol=0.05)


def test_two_way_clustering_equals_sandwich_vcovcl():
    df = _crossed()
    f = logit("refusal ~ task", df, cluster=["item_id", "persona"])
    np.testing.assert_allclose(f.cov_params().to_numpy(), V_2WAY, rtol=1e-7)
    assert f.vcov == "CR1-2way" and "Cameron, Gelbach & Miller" in f.cov_type
    assert (f.df == 7).all()  # min(20 items, 8 personas) - 1
    d1 = f.drop1()
    assert d1["df_resid"].item() == 7
    b, v = f.params["task[T.sentiment]"], V_2WAY[1, 1]
    assert d1["p_value"].item() == pytest.approx(stats.f.sf(b * b / v, 1, 7), rel=1e-6)
    # one-way by item is narrower here: the persona effects add between-persona variance
    one = logit("refusal ~ task", df, cluster="item_id", vcov="CR1")
    assert f.bse["Intercept"] > one.bse["Intercept"]
    with pytest.raises(ValueError, match="two cluster columns"):
        logit("refusal ~ task", df, cluster=["item_id", "persona"], ci="bootstrap")


def test_cr2_with_separation_and_firth_is_finite():
    df = _fixture()
    df.loc[df["persona"] == "Man", "refusal"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mle = logit(FORMULA, df, cluster="item_id")
        firth = logit(FORMULA, df, cluster="item_id", penalty="firth")
        cr3 = logit(FORMULA, df, cluster="item_id", vcov="CR3")
    assert mle.separated_terms == ["persona[T.Man]"]
    assert np.isfinite(mle.bse.drop("persona[T.Man]")).all()
    assert np.isfinite(cr3.bse.drop("persona[T.Man]")).all() and np.isfinite(cr3.drop1()["F"]).any()
    assert np.isfinite(firth.conf_int().to_numpy()).all()
    assert np.isfinite(firth.drop1()["p_value"]).all()


def test_gee_exchangeable_equals_its_row_level_equations():
    """working='exchangeable': the estimating equations, the moment estimator of rho and the
    Mancl-DeRouen covariance written out row by row (m x m per cluster) equal the
    parameter-space computation from counts."""
    from scipy.special import expit

    df = _fixture()
    f = logit(FORMULA, df, cluster="item_id", working="exchangeable")
    cc = f._ccov
    assert cc.kind == "GEE-MD" and "Mancl-DeRouen" in f.cov_type
    X = np.column_stack([np.ones(len(df)), df["persona"].eq("Man"), df["persona"].eq("Woman"),
                         df["task"].eq("offensiveness"), df["task"].eq("sentiment")]).astype(float)
    y = df["refusal"].to_numpy(float)
    b = f.params.to_numpy()
    mu = expit(X @ b)
    a = mu * (1 - mu)
    e = (y - mu) / np.sqrt(a)
    groups = [np.flatnonzero(df["item_id"].to_numpy() == g) for g in pd.unique(df["item_id"])]
    N, p = len(df), X.shape[1]
    phi = (e ** 2).sum() / (N - p)
    within = sum(e[i].sum() ** 2 - (e[i] ** 2).sum() for i in groups)
    rho = within / phi / (sum(len(i) * (len(i) - 1) for i in groups) - p)
    assert cc.rho == pytest.approx(rho, rel=1e-6)
    U, B, parts = np.zeros(p), np.zeros((p, p)), []
    for i in groups:
        m = len(i)
        R = (1 - rho) * np.eye(m) + rho * np.ones((m, m))
        Vi = np.linalg.inv(np.sqrt(np.outer(a[i], a[i])) * R)
        D = X[i] * a[i][:, None]
        U += D.T @ Vi @ (y[i] - mu[i])
        B += D.T @ Vi @ D
        parts.append((D, Vi, y[i] - mu[i]))
    np.testing.assert_allclose(U, 0.0, atol=1e-8)
    Binv = np.linalg.inv(B)
    meat = np.zeros((p, p))
    for D, Vi, r in parts:
        H = D @ Binv @ D.T @ Vi
        u = D.T @ Vi @ np.linalg.solve(np.eye(len(r)) - H, r)
        meat += np.outer(u, u)
    np.testing.assert_allclose(f.cov_params().to_numpy(), Binv @ meat @ Binv, rtol=1e-7)
    G = len(groups)
    assert (f.df == G - p).all() and (f.drop1()["df_resid"] == G - p).all()
    with pytest.raises(ValueError, match="GEE"):
        logit(FORMULA, df, cluster=None, working="exchangeable")


def test_cli_fit_takes_vcov_and_working(tmp_path, capsys):
    from refusalstats.cli import main

    df = _fixture().assign(model="m", prompt="p1")
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    for extra, want in ((["--vcov", "CR1"], "cluster-robust CR1 by 'item_id'"),
                        ([], "cluster-robust CR2"),
                        (["--vcov", "CR3"], "cluster-robust CR3"),
                        (["--working", "exchangeable"], "Mancl-DeRouen")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["fit", FORMULA, str(path), "--cluster", "item_id", *extra]) == 0
        assert want in capsys.readouterr().out
