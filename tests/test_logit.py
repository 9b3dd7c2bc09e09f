"""Tests for refusalstats.logit (refusalstats.regression) against R, statsmodels, published values and simulation truth.

R reference values were computed once with R 4.2.2 (Debian r-base-core 4.2.2.20221110),
glmnet 4.1-6 and brglm2 0.9 on the data built by ``_cells()`` / ``_rows()`` below. The R
code is quoted next to each block of numbers; the data in R:

    cells <- data.frame(
      persona = rep(c("Atheist", "Black person", "Man", "Woman"), each = 6),
      model = rep(rep(c("Llama2-13B", "Gemma-7B", "Qwen2-7B"), each = 2), 4),
      prompt = rep(c("p1", "p2"), 12),
      k = c(20, 3, 8, 4, 10, 10, 19, 10, 24, 13, 22, 10, 5, 8, 5, 6, 8, 15, 15, 9, 3, 1, 12, 15),
      n = c(57, 21, 41, 37, 48, 41, 37, 20, 53, 46, 57, 39, 21, 57, 31, 36, 49, 57, 37, 36, 30, 42, 32, 59))
    rows <- do.call(rbind, lapply(seq_len(nrow(cells)), function(r) {
      i <- 0:(cells$n[r] - 1)
      data.frame(persona = cells$persona[r], model = cells$model[r], prompt = cells$prompt[r],
                 refusal = as.integer(i < cells$k[r]), x = (i %% 5) - 2)
    }))
    # factors: persona, prompt sorted (R default); model <- relevel(factor(model), "Llama2-13B")
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from refusalstats.formula import FormulaError
from refusalstats.multiplicity import adjust_pvalues
from refusalstats.regression import LogitResults, SeparationWarning, logit
from refusalstats.simulate import PAPER_REFERENCE, simulate_paper
from refusalstats.table import SchemaError

REF = {"model": "Llama2-13B"}
MAIN = "refusal ~ persona + task + prompt + model"


def _cells() -> pd.DataFrame:
    return pd.DataFrame({
        "persona": np.repeat(["Atheist", "Black person", "Man", "Woman"], 6),
        "model": np.tile(np.repeat(["Llama2-13B", "Gemma-7B", "Qwen2-7B"], 2), 4),
        "prompt": np.tile(["p1", "p2"], 12),
        "k": [20, 3, 8, 4, 10, 10, 19, 10, 24, 13, 22, 10, 5, 8, 5, 6, 8, 15, 15, 9, 3, 1, 12, 15],
        "n": [57, 21, 41, 37, 48, 41, 37, 20, 53, 46, 57, 39, 21, 57, 31, 36, 49, 57, 37, 36, 30, 42, 32, 59],
    })


def _rows() -> pd.DataFrame:
    out = []
    for r in _cells().itertuples():
        i = np.arange(r.n)
        out.append(pd.DataFrame({"persona": r.persona, "model": r.model, "prompt": r.prompt,
                                 "refusal": (i < r.k).astype(int), "x": (i % 5) - 2}))
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return _rows()


@pytest.fixture(scope="module")
def fit_m1(rows) -> LogitResults:
    return logit("refusal ~ persona + model + prompt", rows, reference=REF)


# ----------------------------------------------------------------------------- R glm
# m1 <- glm(refusal ~ persona + model + prompt, family = binomial, data = rows)
# coef(summary(m1)); deviance(m1); m1$null.deviance; AIC(m1); BIC(m1); m1$iter
R_M1_EST = [-0.796970824463279, 0.872269815963806, -0.161930697684666, 0.122370085489985,
            -0.697471957347986, -0.252934779176514, -0.411677493114859]
R_M1_SE = [0.190122664357469, 0.204549994615095, 0.227224950364490, 0.221377808241305,
           0.196073591174521, 0.177141440911456, 0.152938769103274]
R_M1_P = [2.76655981447344e-05, 2.00497937634493e-05, 4.76065532076017e-01, 5.80423776862924e-01,
          3.74836210824977e-04, 1.53329556337511e-01, 7.10718482718816e-03]
R_M1_NAMES = ["Intercept", "persona[T.Black person]", "persona[T.Man]", "persona[T.Woman]",
              "model[T.Gemma-7B]", "model[T.Qwen2-7B]", "prompt[T.p2]"]


def test_mle_matches_r_glm(fit_m1):
    f = fit_m1
    assert list(f.params.index) == R_M1_NAMES
    np.testing.assert_allclose(f.params, R_M1_EST, atol=1e-9)
    # R's SEs use the IRLS weights of the last iteration's start (one step before the
    # estimate); ours are the Fisher information at the estimate: they agree to ~1e-7.
    np.testing.assert_allclose(f.bse, R_M1_SE, atol=1e-6)
    np.testing.assert_allclose(f.pvalues, R_M1_P, rtol=1e-5)
    assert f.deviance == pytest.approx(1074.57944777241, abs=1e-8)
    assert f.null_deviance == pytest.approx(1126.01505609941, abs=1e-8)
    assert f.aic == pytest.approx(1088.57944777241, abs=1e-8)
    assert f.bic == pytest.approx(1122.82082905178, abs=1e-8)
    assert f.iterations == 4  # m1$iter
    assert (f.df_resid, f.df_null) == (977, 983)
    assert f.reference == {"persona": "Atheist", "model": "Llama2-13B", "prompt": "p1"}


def test_anova_and_drop1_match_r(fit_m1):
    # anova(m1, test = "Chisq")
    a = fit_m1.anova()
    assert list(a["term"]) == ["NULL", "persona", "model", "prompt"]
    np.testing.assert_allclose(a["deviance"].iloc[1:], [29.940518312870, 14.197507609318, 7.297582404816],
                               atol=1e-8)
    np.testing.assert_allclose(a["resid_dev"], [1126.015056099, 1096.074537787, 1081.877030177,
                                                1074.579447772], atol=1e-8)
    np.testing.assert_allclose(a["p_value"].iloc[1:], [1.4204e-06, 0.00082613, 0.00690475], rtol=1e-4)
    # drop1(m1, test = "LRT")
    d = fit_m1.drop1()
    np.testing.assert_allclose(d["lr"], [30.849047307014, 13.263484051495, 7.297582404816], atol=1e-8)
    np.testing.assert_allclose(d["deviance"], [1105.428495079, 1087.842931824, 1081.877030177], atol=1e-8)
    np.testing.assert_allclose(d["p_value"], [9.1459e-07, 0.0013179, 0.0069047], rtol=1e-4)
    assert "likelihood ratio" in a.attrs["test"] and "likelihood ratio" in d.attrs["test"]


def test_interaction_and_numeric_covariate_match_r(rows):
    # m2 <- glm(refusal ~ persona * prompt + model + x, family = binomial, data = rows)
    f = logit("refusal ~ persona * prompt + model + x", rows, reference=REF)
    r_est = [-0.8068030421727725, 0.8929257382015060, -0.4350762274658428, 0.2275192213869523,
             -0.4546193050586848, -0.6704201578316608, -0.2205945061645065, -0.0603202094171848,
             -0.0532875176362626, 0.4871906923643886, -0.1919334496002068]
    r_se = [0.2107959789520935, 0.2552438193815367, 0.3246943166385053, 0.2911223982542454,
            0.3297241589178558, 0.1975331720385432, 0.1789314942800897, 0.0529419832318039,
            0.4259881478529853, 0.4720717258345281, 0.4541039037856683]
    np.testing.assert_allclose(f.params, r_est, atol=1e-9)
    np.testing.assert_allclose(f.bse, r_se, atol=1e-6)
    assert "persona[T.Man]:prompt[T.p2]" in f.params.index
    assert f.deviance == pytest.approx(1070.80403444459, abs=1e-8)
    assert f.aic == pytest.approx(1092.80403444459, abs=1e-8)
    assert f.bic == pytest.approx(1146.61191931217, abs=1e-8)
    # anova(m2, test = "Chisq"): persona, prompt, model, x, persona:prompt
    a = f.anova()
    np.testing.assert_allclose(a["deviance"].iloc[1:], [29.940518312870, 8.231605962638, 13.263484051495,
                                                        1.300359492141, 2.475053835675], atol=1e-8)
    # drop1(m2, test = "LRT"): marginality keeps persona and prompt
    d = f.drop1()
    assert list(d["term"]) == ["model", "x", "persona:prompt"]
    np.testing.assert_allclose(d["lr"], [12.268651020517, 1.301224667177, 2.475053835675], atol=1e-8)


def test_counts_input_matches_r_binomial_counts():
    # m3 <- glm(cbind(k, n - k) ~ persona + model + prompt, family = binomial, data = cells)
    f = logit("k ~ persona + model + prompt", _cells(), reference=REF, trials="n")
    np.testing.assert_allclose(f.params, R_M1_EST, atol=1e-9)
    assert f.deviance == pytest.approx(28.6980274213729, abs=1e-8)
    assert f.null_deviance == pytest.approx(80.1336357483764, abs=1e-8)
    assert f.aic == pytest.approx(131.592417301256, abs=1e-8)
    assert f.bic == pytest.approx(139.838794113691, abs=1e-8)
    assert f.df_resid == 17 and f.iterations == 4


def test_profile_ci_matches_r_confint():
    # confint(m3)  (MASS profile likelihood; its spline interpolation is good to ~1e-4)
    f = logit("k ~ persona + model + prompt", _cells(), reference=REF, trials="n", ci="profile")
    lo = [-1.176481652853278, 0.475107576495819, -0.609490753609249, -0.311915344220153,
          -1.085136225621180, -0.600323056949393, -0.712790774248485]
    hi = [-0.4299195314973903, 1.2779510398209475, 0.2829714067274566, 0.5573697062059086,
          -0.3155762052111299, 0.0947263545868561, -0.1127891897445797]
    ci = f.conf_int()
    np.testing.assert_allclose(ci["ci_low"], lo, atol=2e-4)
    np.testing.assert_allclose(ci["ci_high"], hi, atol=2e-4)


def test_collapsed_fit_equals_row_level_fit(rows):
    a = logit("refusal ~ persona * prompt + model + x", rows, reference=REF)
    b = logit("refusal ~ persona * prompt + model + x", rows, reference=REF, collapse=False)
    assert a.n_patterns == 120 and b.n_patterns == len(rows)
    np.testing.assert_allclose(a.params, b.params, atol=1e-8)
    np.testing.assert_allclose(a.bse, b.bse, atol=1e-8)
    assert a.deviance == pytest.approx(b.deviance, abs=1e-8)
    assert a.iterations == b.iterations


# ----------------------------------------------------------------------------- glmnet
# X <- model.matrix(m1)[, -1]
# glmnet(X, rows$refusal, family = "binomial", alpha = a, lambda = lam, standardize = FALSE,
#        thresh = 1e-14, maxit = 1e7); as.vector(coef(g))
@pytest.mark.parametrize("penalty,alpha,expected", [
    ("l1", 0.01, [-1.030692407844199, 0.601796863568994, 0.0, 0.0, -0.252929842527163, 0.0,
                  -0.230707221361490]),
    ("l2", 0.05, [-0.9182977979370992, 0.3477489243375851, -0.1626663618814657, -0.0368351399100132,
                  -0.2211066518180098, -0.0158020168961456, -0.2161917644702348]),
    ("elasticnet", 0.02, [-1.0145542115160513, 0.4681771823357398, -0.0398036905700022, 0.0,
                          -0.1936432603876204, 0.0, -0.1969538060179377]),
])
def test_penalized_fits_match_glmnet(rows, penalty, alpha, expected):
    f = logit("refusal ~ persona + model + prompt", rows, reference=REF, penalty=penalty, alpha=alpha)
    np.testing.assert_allclose(f.params, expected, atol=1e-7)
    if penalty in ("l1", "elasticnet"):
        assert f.bse.isna().all() and f.conf_int().isna().all().all()  # no Wald interval for lasso


def test_lasso_refuses_wald_intervals(rows):
    with pytest.raises(ValueError, match="bootstrap"):
        logit("refusal ~ persona + model", rows, penalty="l1", alpha=0.01, ci="wald")
    with pytest.raises(ValueError, match="alpha"):
        logit("refusal ~ persona + model", rows, penalty="l2")


# ----------------------------------------------------------------------------- Firth
# Heinze & Schemper (2002) endometrial cancer data (brglm2::endometrial): NV separates HG.
_ENDO = {
    "NV": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 "
          "1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 1 1 0 1 0",
    "PI": "13 16 8 34 20 5 17 10 26 17 8 7 20 10 18 16 18 8 29 12 20 38 22 7 25 15 7 28 11 19 10 10 18 14 "
          "21 11 17 25 16 19 15 33 24 48 12 19 2 22 40 5 0 21 15 29 15 12 3 20 23 12 22 42 15 13 14 19 12 "
          "13 10 12 49 6 5 17 11 21 5 19 33",
    "EH": "1.64 2.26 3.14 2.68 1.28 2.31 1.8 1.68 1.56 2.31 2.01 1.89 3.15 1.23 1.27 1.76 2 2.64 0.88 1.27 "
          "1.37 0.97 1.14 0.88 0.91 0.58 0.97 1.5 1.33 2.37 1.82 3.13 1.31 1.92 1.64 2.01 1.88 1.93 2.11 "
          "1.29 1.72 0.75 1.92 1.84 1.11 1.61 1.18 1.44 1.18 0.93 1.17 1.19 1.06 2.02 2.29 2.33 2.9 1.7 "
          "1.41 2.25 1.54 1.97 1.75 2.16 2.57 1.37 3.61 2.04 2.17 1.69 0.27 1.84 1.3 0.96 1.01 0.98 0.35 "
          "1.02 0.85",
    "HG": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 "
          "1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1 1 1",
}


@pytest.fixture(scope="module")
def endometrial() -> pd.DataFrame:
    return pd.DataFrame({k: np.array(v.split(), dtype=float) for k, v in _ENDO.items()})


def test_firth_matches_brglm2_and_profile_penalized_likelihood(endometrial):
    # fb <- glm(HG ~ NV + PI + EH, family = binomial("logit"), data = endometrial,
    #           method = "brglmFit", type = "AS_mean")          # Firth's estimator for the logit
    # Profile intervals / p-values: the penalized log-likelihood
    #   pl(b) = sum(y log p + (1-y) log(1-p)) + 0.5 log det(X'WX)
    # maximised over the other coefficients with optim(BFGS, analytic modified score,
    # reltol 1e-15) and uniroot(2 (pl_max - pl_j(b)) = qchisq(0.95, 1), tol 1e-12); this
    # reproduces Heinze & Schemper (2002), Table 3: NV 2.93 (0.61, 7.85), EH -2.60 (-4.36, -1.23).
    f = logit("HG ~ NV + PI + EH", endometrial, penalty="firth")
    np.testing.assert_allclose(f.params, [3.7745593981356871, 2.9292732585761301, -0.0347517494485836,
                                          -2.6041638241447136], atol=1e-7)
    np.testing.assert_allclose(f.bse, [1.4886916020959928, 1.5507636910028493, 0.0395781457757934,
                                       0.7760176212662470], atol=1e-6)
    ci = f.conf_int()
    np.testing.assert_allclose(ci["ci_low"], [1.08253710844768, 0.609724436303418, -0.124458720851717,
                                              -4.36518324726325], atol=1e-5)
    np.testing.assert_allclose(ci["ci_high"], [7.20928049824698, 7.85463171387759, 0.0404554731806117,
                                               -1.23272105721699], atol=1e-5)
    np.testing.assert_allclose(f.pvalues, [0.00419362788558682, 0.00912366754708601, 0.387482203566458,
                                           2.50686721485585e-05], rtol=1e-4)
    assert f.penalized_loglik == pytest.approx(-24.037267800698, abs=1e-7)


def test_separation_detected_on_numeric_predictor(endometrial):
    with pytest.warns(SeparationWarning, match="NV"):
        f = logit("HG ~ NV + PI + EH", endometrial)
    assert f.separated_terms == ["NV"]
    assert np.isnan(f.bse["NV"]) and np.isnan(f.pvalues["NV"])
    assert np.isfinite(f.bse["EH"])


# ----------------------------------------------------------------------------- statsmodels
@pytest.fixture(scope="module")
def sim_table7() -> pd.DataFrame:
    df = simulate_paper(scale=0.01, seed=3, calibrate="table7", item_sd=0.5)
    refusals = df.groupby("model", observed=True)["refusal"].sum()
    df = df[df["model"].isin(refusals[refusals >= 5].index)].copy()  # no separation for statsmodels
    df["model"] = df["model"].cat.remove_unused_categories()
    for k, v in PAPER_REFERENCE.items():
        cats = list(df[k].cat.categories)
        df[k] = df[k].cat.reorder_categories([v] + [c for c in cats if c != v])
    return df


def test_matches_statsmodels_and_cluster_robust(sim_table7):
    sm = pytest.importorskip("statsmodels.formula.api")
    df = sim_table7
    f = logit(MAIN, df, reference=PAPER_REFERENCE, cluster="item_id", vcov="CR1")
    m = sm.logit(MAIN, df).fit(disp=0, method="newton", maxiter=100, tol=1e-12)
    assert list(f.params.index) == list(m.params.index)
    np.testing.assert_allclose(f.params, m.params, atol=1e-6)
    assert f.loglik == pytest.approx(m.llf, abs=1e-6)
    assert f.pseudo_r2 == pytest.approx(m.prsquared, abs=1e-9)
    # model-based SEs
    f0 = logit(MAIN, df, reference=PAPER_REFERENCE, cluster=None)
    np.testing.assert_allclose(f0.bse, m.bse, rtol=1e-6)
    # CR1 = statsmodels cov_type="cluster" (G/(G-1) (N-1)/(N-k) correction)
    mc = sm.logit(MAIN, df).fit(disp=0, method="newton", maxiter=100, tol=1e-12, cov_type="cluster",
                                cov_kwds={"groups": df["item_id"].to_numpy()})
    np.testing.assert_allclose(f.bse, mc.bse, rtol=1e-6)
    # likelihood-ratio test of persona as a whole (14 df) = statsmodels restricted fit
    mr = sm.logit("refusal ~ task + prompt + model", df).fit(disp=0, method="newton", tol=1e-12)
    d = f0.drop1().set_index("term")
    assert d.loc["persona", "df"] == 14
    assert d.loc["persona", "lr"] == pytest.approx(2 * (m.llf - mr.llf), abs=1e-6)
    # clustered drop1 = cluster-robust Wald F of persona as a whole: statsmodels' Wald chi-square
    # with its CR1 covariance, over q, on (q, G - 1) df (Cameron & Miller 2015; statsmodels'
    # use_t=True convention, checked on sub-models below); no LR column
    from scipy import stats

    R = np.array([[1.0 if name == col else 0.0 for name in mc.params.index]
                  for col in mc.params.index if col.startswith("persona")])
    W = float(mc.wald_test(R, scalar=True, use_f=False).statistic)
    dc = f.drop1().set_index("term")
    assert "lr" not in dc.columns and "Wald F" in f.drop1().attrs["test"]
    assert (dc.loc["persona", "df"], dc.loc["persona", "df_resid"]) == (14, 126)  # 127 items
    assert dc.loc["persona", "F"] == pytest.approx(W / 14, rel=1e-6)
    assert dc.loc["persona", "p_value"] == pytest.approx(stats.f.sf(W / 14, 14, 126), rel=1e-6)


def test_truth_recovery_on_table7_simulation():
    df = simulate_paper(scale=0.1, seed=11, calibrate="table7", item_sd=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeparationWarning)
        f = logit(MAIN, df, reference=PAPER_REFERENCE, cluster=None)  # item_sd=0: independent rows
    truth = df.attrs["truth"]["coefficients"]
    assert set(f.separated_terms) <= {"model[T.Qwen2.5-7B]", "model[T.Qwen2.5-32B]"}
    z = [(f.params[t] - v) / f.bse[t] for t, v in truth.items() if t not in f.separated_terms]
    assert len(z) >= 37  # 39 truth terms less the two Qwen2.5 models
    assert np.max(np.abs(z)) < 4.5
    # jointly: (b - truth)' V^-1 (b - truth) ~ chi2(37) (the z's share reference levels)
    terms = [t for t in truth if t not in f.separated_terms]
    diff = (f.params[terms] - pd.Series(truth)[terms]).to_numpy()
    V = f.cov_params().loc[terms, terms].to_numpy()
    from scipy import stats

    assert stats.chi2.sf(diff @ np.linalg.solve(V, diff), len(terms)) > 1e-3


def test_wald_coverage_over_repeated_simulations():
    """95% Wald CIs cover the Table 7 truth 93-97% of the time (binomial redraws per pattern)."""
    df = simulate_paper(scale=0.5, seed=5, calibrate="table7", item_sd=0)
    keep = ~df["model"].isin(["Qwen2.5-7B", "Qwen2.5-32B", "Llama3.2-3B"])  # separated / near-separated
    df = df[keep].copy()
    df["model"] = df["model"].cat.remove_unused_categories()
    cells = df.groupby(["persona", "task", "prompt", "model"], observed=True).size().rename("n").reset_index()
    truth = df.attrs["truth"]
    coef = truth["coefficients"]
    eta = np.full(len(cells), truth["intercept"])
    for fac in ("persona", "task", "prompt", "model"):
        eta += cells[fac].astype(str).map(lambda lv, f=fac: coef.get(f"{f}[T.{lv}]", 0.0)).to_numpy()
    p = 1 / (1 + np.exp(-eta))
    rng = np.random.default_rng(2026)
    hits, total = 0, 0
    for _ in range(40):
        cells["k"] = rng.binomial(cells["n"].to_numpy(), p)
        f = logit("k ~ persona + task + prompt + model", cells, reference=PAPER_REFERENCE, trials="n")
        ci = f.conf_int()
        terms = [t for t in f.params.index if t in coef]
        hits += int(((ci.loc[terms, "ci_low"] <= pd.Series(coef)[terms])
                     & (pd.Series(coef)[terms] <= ci.loc[terms, "ci_high"])).sum())
        total += len(terms)
    cover = hits / total
    assert 0.93 <= cover <= 0.97, cover


# ----------------------------------------------------------------------------- separation
def test_separation_on_qwen25_detected_and_firth_is_finite():
    df = simulate_paper(scale=0.01, seed=2)  # calibrate="table1": Qwen2.5-32B never refuses
    n_qwen = int((df["model"] == "Qwen2.5-32B").sum())
    with pytest.warns(SeparationWarning, match=f"model=Qwen2.5-32B has 0 refusals in {n_qwen:,} rows"):
        f = logit(MAIN, df, reference=PAPER_REFERENCE, cluster=None)
    assert "model[T.Qwen2.5-32B]" in f.separated_terms
    assert any("Qwen2.5-32B" in s for s in f.separation)
    assert np.isnan(f.bse["model[T.Qwen2.5-32B]"])
    assert "sep" in str(f.summary())
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeparationWarning)  # Firth does not warn
        ff = logit(MAIN, df, reference=PAPER_REFERENCE, penalty="firth", ci="wald", cluster=None)
    assert np.isfinite(ff.params).all() and np.isfinite(ff.bse).all()
    assert -20 < ff.params["model[T.Qwen2.5-32B]"] < -5
    assert ff.separation  # still reported


def test_ridge_is_finite_under_separation():
    df = simulate_paper(scale=0.01, seed=2)
    f = logit(MAIN, df, reference=PAPER_REFERENCE, penalty="l2", alpha=1e-4, cluster=None)
    assert np.isfinite(f.params).all()
    assert f.params["model[T.Qwen2.5-32B]"] < -3


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_clear_errors(rows):
    with pytest.raises(FormulaError, match="missing_col"):
        logit("refusal ~ persona + missing_col", rows)
    one = rows.assign(task="nli")
    with pytest.raises(SchemaError, match="single level"):
        logit("refusal ~ persona + task", one)
    with pytest.raises(SchemaError, match="missing value"):
        logit("refusal ~ persona + model", rows.assign(persona=rows["persona"].where(rows.index > 3)))
    with pytest.raises(ValueError, match=r"'y' must hold 0/1 or True/False; found \d+ other .*trials='n'"):
        logit("y ~ persona", rows.assign(y=rows["refusal"] * 2))
    with pytest.raises(ValueError, match="nothing to model"):
        logit("refusal ~ persona", rows.assign(refusal=0))
    with pytest.raises(FormulaError, match="levels are"):
        logit("refusal ~ persona", rows, reference={"persona": "Martian"})
    with pytest.raises(FormulaError, match="hierarchical"):
        logit("refusal ~ prompt + (1|persona)", rows)
    tiny = pd.DataFrame({"a": list("xyzwv"), "b": list("pqrst"), "refusal": [1, 0, 1, 0, 0]})
    with pytest.raises(ValueError, match="only 5 distinct covariate pattern"):
        logit("refusal ~ a + b", tiny)
    with pytest.raises(ValueError, match="rank deficient"):
        logit("refusal ~ persona + x + z", rows.assign(z=rows["x"] * 2))
    with pytest.raises(ValueError, match="penalty"):
        logit("refusal ~ persona", rows, penalty="ridge")


# ----------------------------------------------------------------------------- results API
def test_predict_reuses_levels(fit_m1, rows):
    new = pd.DataFrame({"persona": ["Woman", "Atheist"], "model": ["Qwen2-7B", "Llama2-13B"],
                        "prompt": ["p2", "p1"]})
    b = fit_m1.params
    expect_link = [b["Intercept"] + b["persona[T.Woman]"] + b["model[T.Qwen2-7B]"] + b["prompt[T.p2]"],
                   b["Intercept"]]
    np.testing.assert_allclose(fit_m1.predict(new, type="link"), expect_link, atol=1e-12)
    np.testing.assert_allclose(fit_m1.predict(new), 1 / (1 + np.exp(-np.array(expect_link))), atol=1e-12)
    assert len(fit_m1.predict()) == len(rows)
    with pytest.raises(ValueError, match="Martian"):
        fit_m1.predict(new.assign(persona=["Martian", "Man"]))


def test_marginal_means_by_brute_force_and_delta_method(fit_m1, rows):
    mm = fit_m1.marginal_means("persona").set_index("persona")
    V = fit_m1.cov_params().to_numpy()
    for lv in ["Atheist", "Man"]:
        pr = fit_m1.predict(rows.assign(persona=lv))
        assert mm.loc[lv, "prob"] == pytest.approx(pr.mean(), abs=1e-12)
        # numerical gradient of the mean prediction w.r.t. the coefficients
        base = fit_m1.params.to_numpy()
        Xl = fit_m1._new_X(rows.assign(persona=lv))
        g = np.array([(1 / (1 + np.exp(-Xl @ (base + 1e-6 * e))) - 1 / (1 + np.exp(-Xl @ (base - 1e-6 * e))))
                      .mean() / 2e-6 for e in np.eye(len(base))])
        assert mm.loc[lv, "std_error"] == pytest.approx(np.sqrt(g @ V @ g), rel=1e-5)
        assert mm.loc[lv, "ci_low"] < mm.loc[lv, "prob"] < mm.loc[lv, "ci_high"]
    by = fit_m1.marginal_means("persona", by="model")
    assert len(by) == 12
    sub = rows[rows["model"] == "Gemma-7B"]
    got = by[(by["persona"] == "Woman") & (by["model"] == "Gemma-7B")]["prob"].item()
    assert got == pytest.approx(fit_m1.predict(sub.assign(persona="Woman")).mean(), abs=1e-12)


def test_pvalue_adjustment_matches_statsmodels(fit_m1):
    mt = pytest.importorskip("statsmodels.stats.multitest")
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001, np.nan])
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        exp = mt.multipletests(p[:-1], method=theirs)[1]
        np.testing.assert_allclose(adjust_pvalues(p, ours)[:-1], exp, atol=1e-14)
        assert np.isnan(adjust_pvalues(p, ours)[-1])
    tab = fit_m1.coef_table(adjust="holm")
    pers = tab[tab["term"].str.startswith("persona")]
    np.testing.assert_allclose(pers["p_adjusted"], mt.multipletests(pers["p_value"], method="holm")[1], atol=1e-14)
    assert np.isnan(tab.loc[tab["term"] == "Intercept", "p_adjusted"]).all()
    np.testing.assert_allclose(tab["odds_ratio"], np.exp(tab["estimate"]))


def test_summary_is_r_style(fit_m1):
    s = str(fit_m1.summary())
    for piece in ("Call:", "Coefficients:", "Estimate", "Std. Error", "z value", "Pr(>|z|)", "Signif. codes",
                  "Null deviance: 1126.02  on 983  degrees of freedom",
                  "Residual deviance: 1074.58  on 977  degrees of freedom", "AIC: 1088.58",
                  "Number of Fisher Scoring iterations: 4", "persona[T.Black person]", "***"):
        assert piece in s, piece


def test_cluster_bootstrap_agrees_with_cr1_and_is_seeded(sim_table7):
    df = sim_table7
    kw = {"reference": PAPER_REFERENCE, "cluster": "item_id", "ci": "bootstrap", "n_boot": 150, "seed": 4,
          "progress": False}
    f = logit("refusal ~ task + prompt + persona_group", df, **kw)
    g = logit("refusal ~ task + prompt + persona_group", df, **kw)
    np.testing.assert_array_equal(f.conf_int(), g.conf_int())
    sd = np.nanstd(f.boot, axis=0, ddof=1)
    np.testing.assert_allclose(sd, f.bse, rtol=0.25)
    ci = f.conf_int()
    assert (ci["ci_low"] < f.params).all() and (f.params < ci["ci_high"]).all()


def test_cv_alpha_groups_clusters(rows, monkeypatch):
    """Cross-validation folds hold out whole clusters: every item here is 4 rows of one
    covariate pattern, so a fold that keeps items whole trains on a multiple of 4 rows
    of every pattern; a fold that split items would not (with 5 folds, almost surely)."""
    from refusalstats.regression import penalized

    keys = ["persona", "model", "prompt"]
    r = rows.sort_values(keys, kind="stable")
    r = r[r.groupby(keys, observed=True).cumcount() < r.groupby(keys, observed=True)["refusal"]
          .transform("size") // 4 * 4]  # each pattern a multiple of 4 rows
    r = r.assign(item=np.arange(len(r)) // 4).reset_index(drop=True)  # items within one pattern
    assert (r.groupby("item")[keys].nunique() == 1).all().all()
    trained = []  # rows per pattern each fold trains on (patterns it holds out entirely dropped)
    real = penalized._enet
    monkeypatch.setattr(penalized, "_enet", lambda X, s, n, *a, **k: trained.append(n.copy()) or
                        real(X, s, n, *a, **k))
    f = logit("refusal ~ persona + model + prompt", r, reference=REF, penalty="l1", alpha="cv",
              cluster="item", n_folds=5, progress=False)
    cv = f.cv
    assert f.alpha == pytest.approx(cv["alpha"].iloc[int(np.argmin(cv["cv_deviance"]))])
    assert np.isfinite(f.params).all() and f.bse.isna().all()
    assert len(trained) == 5 * len(cv)
    assert all(np.allclose(n % 4, 0) for n in trained), "a fold split an item (cluster)"
    # the 5 folds hold out 1/5 of the items each (sizes differ by at most one item)
    G = r["item"].nunique()
    held_items = {round((len(r) - float(n.sum())) / 4) for n in trained}
    assert held_items <= {G // 5, -(-G // 5)}


def test_frequency_weights_equal_expanded_rows(rows, fit_m1):
    # each (cell, outcome) once with a weight = its count gives the row-level fit
    agg = rows.groupby(["persona", "model", "prompt", "refusal"]).size().rename("w").reset_index()
    f = logit("refusal ~ persona + model + prompt", agg, reference=REF, weights="w")
    np.testing.assert_allclose(f.params, fit_m1.params, atol=1e-9)
    np.testing.assert_allclose(f.bse, fit_m1.bse, atol=1e-9)
    assert f.loglik == pytest.approx(fit_m1.loglik, abs=1e-8)


def test_cli_fit_prints_summary_and_writes_csv(tmp_path, capsys):
    from refusalstats.cli import main
    from refusalstats.table import write_responses

    df = simulate_paper(scale=0.005, seed=1, calibrate="table7", item_sd=0)
    df.attrs = {}
    path = write_responses(df, tmp_path / "t.parquet")
    out_csv = tmp_path / "coef.csv"
    rc = main(["fit", "refusal ~ persona + task + prompt + model", str(path), "--reference", "paper",
               "--penalty", "firth", "--cluster", "item_id", "--csv", str(out_csv)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Coefficients:" in text and "Firth" in text
    # clustered: the per-term test is the cluster-robust HTZ Wald test (CR2, as for the same
    # rows in a DataFrame, #19), never an LR test
    assert "Test of each term (dropped from the full model): cluster-robust HTZ Wald test" in text
    tab = pd.read_csv(out_csv)
    direct = logit(MAIN, df, reference=PAPER_REFERENCE, penalty="firth", cluster="item_id")
    np.testing.assert_allclose(tab["estimate"], direct.params.to_numpy(), atol=1e-10)


# ----------------------------------------------------------------------------- clusters (issue #11)
def _items(n_items: int = 80, k: int = 8, seed: int = 0) -> pd.DataFrame:
    """Items answered k times: task constant within item, persona varying within it."""
    from refusalstats.simulate import simulate_items

    return simulate_items(n_items, k, item_sd=1.0, seed=seed)


def test_cluster_auto_resolves_item_id_with_one_note(rows):
    from refusalstats import ClusterNote

    df = _items()
    with pytest.warns(ClusterNote, match="clustering by 'item_id' \\(80 items") as rec:
        f = logit("refusal ~ task + persona", df)
    assert len([w for w in rec if issubclass(w.category, ClusterNote)]) == 1
    assert rec[0].filename == __file__  # the note points at the caller, not inside logit
    g = logit("refusal ~ task + persona", df, cluster="item_id")
    assert f.cluster == "item_id" and f.n_clusters == 80
    np.testing.assert_array_equal(f.bse, g.bse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClusterNote)
        h = logit("refusal ~ task + persona", df, cluster=None)  # off, silently
    with pytest.warns(ClusterNote, match="rows are treated as independent"):
        logit("refusal ~ persona + model", rows)  # no item_id: independent rows, said so
    assert h.cluster is None and "model-based" in h.cov_type
    assert not np.allclose(h.bse, g.bse)
    with pytest.raises(SchemaError, match="cluster column"):
        logit("refusal ~ task", df, cluster="nope")
    with pytest.raises(ValueError, match="one column or two crossed columns"):
        logit("refusal ~ task", df.assign(b=df["item_id"] % 3, c=df["item_id"] % 5), cluster=["item_id", "b", "c"])


def test_refit_responses_equals_a_fresh_fit():
    from refusalstats.regression.model import _refit_responses

    df = _items(seed=1)
    y = _items(seed=2)["refusal"].to_numpy()
    for kw in ({"cluster": "item_id"}, {"cluster": None}, {"cluster": "item_id", "penalty": "firth"}):
        a = _refit_responses(logit("refusal ~ task + persona", df, **kw), y)
        b = logit("refusal ~ task + persona", df.assign(refusal=y), **kw)
        np.testing.assert_allclose(a.params, b.params, atol=1e-12)
        np.testing.assert_allclose(a.bse, b.bse, atol=1e-12)
        pd.testing.assert_frame_equal(a.drop1(), b.drop1())
        pd.testing.assert_frame_equal(a.anova(), b.anova())
    with pytest.raises(ValueError, match="one response per row"):
        _refit_responses(a, y[:-1])


def test_clustered_tests_match_statsmodels_wald_f_on_submodels():
    sm = pytest.importorskip("statsmodels.formula.api")
    df = _items(seed=3)
    f = logit("refusal ~ task + persona + prompt", df, cluster="item_id", vcov="CR1")
    a = f.anova().set_index("term")
    d = f.drop1().set_index("term")
    assert list(a.columns) == ["df", "df_resid", "F", "p_value", "note"]
    assert "Wald F" in a.attrs["test"] and "(q, 79)" in a.attrs["test"]
    groups = {"groups": df["item_id"].to_numpy()}
    for k, (term, upto) in enumerate([("task", "task"), ("persona", "task + persona"),
                                      ("prompt", "task + persona + prompt")]):
        m = sm.logit(f"refusal ~ {upto}", df).fit(disp=0, method="newton", tol=1e-12, cov_type="cluster",
                                                   cov_kwds=groups, use_t=True)
        R = np.array([[1.0 if nm == c else 0.0 for nm in m.params.index]
                      for c in m.params.index if c.startswith(term)])
        wt = m.wald_test(R, scalar=True, use_f=True)
        assert a.loc[term, "F"] == pytest.approx(float(wt.statistic), rel=1e-6), term
        assert a.loc[term, "p_value"] == pytest.approx(float(wt.pvalue), rel=1e-6), term
        assert (a.loc[term, "df"], a.loc[term, "df_resid"]) == (len(R), wt.df_denom) == (len(R), 79)
    # the last sequential row is the full model's test, as drop1's
    assert a.loc["prompt", "F"] == pytest.approx(d.loc["prompt", "F"], rel=1e-12)


def test_clustered_anova_holds_its_level_and_the_unclustered_lr_does_not():
    """100 null tables (item intercept sd 1, task constant within item, no effect of task or
    persona): the default cluster-robust tests (CR2 + HTZ) reject at most 10% at the 5% level
    (Monte Carlo sd 2.2 points); R's LR test (cluster=None) on the same tables rejects far
    more (the audit measured 32-46%). The study itself (400+ tables of 250 items, Monte Carlo
    errors) is benchmarks/calibration_logit.py's checks (a) and (e)."""
    from refusalstats.regression.model import _refit_responses

    df = _items(n_items=80, k=8, seed=0)
    f = logit("refusal ~ task + persona", df, cluster="item_id")
    g = logit("refusal ~ task + persona", df, cluster=None)
    rng = np.random.default_rng(11)
    item = df["item_id"].to_numpy()
    reject = np.zeros(4)
    reps = 100
    for _ in range(reps):
        u = rng.normal(0.0, 1.0, 80)
        y = (rng.random(len(df)) < 1 / (1 + np.exp(1.0 - u[item]))).astype(float)
        fc, gc = _refit_responses(f, y), _refit_responses(g, y)
        d1 = fc.drop1()["p_value"].to_numpy()  # task, persona
        reject += [fc.anova()["p_value"].iloc[0] < 0.05, d1[0] < 0.05, d1[1] < 0.05,
                   gc.drop1()["p_value"].iloc[0] < 0.05]
    fpr = reject / reps
    print("FPR: anova task, drop1 task, drop1 persona (CR1 F); unclustered LR task:", fpr)
    assert fpr[0] <= 0.10 and fpr[1] <= 0.10 and fpr[2] <= 0.10, fpr
    assert fpr[3] >= 0.15, fpr  # the independent-rows LR test fails this check


def test_wald_f_rank_deficiency_and_too_few_clusters(rows):
    from scipy import stats

    from refusalstats.regression.covariance import _wald_f

    # closed form: V = v v' with v = (1, 1) has rank 1, V+ = V / 4, so W = (b.v)^2 / 4
    out = _wald_f(np.array([1.0, 1.0]), np.ones((2, 2)), G=30)
    assert out["df"] == 1 and out["F"] == pytest.approx(1.0, abs=1e-12)
    assert out["p_value"] == pytest.approx(stats.f.sf(1.0, 1, 29), abs=1e-14)
    assert "rank 1" in out["note"]
    full = _wald_f(np.array([1.0, 2.0]), np.array([[2.0, 0.5], [0.5, 1.0]]), G=30)
    W = np.array([1.0, 2.0]) @ np.linalg.solve([[2.0, 0.5], [0.5, 1.0]], [1.0, 2.0])
    assert full["F"] == pytest.approx(W / 2, rel=1e-12) and full["note"] == ""
    # 3 clusters: persona (3 coefficients) exceeds G - 1 = 2; prompt (1) does not
    r = rows.assign(site=np.arange(len(rows)) % 3)
    d = logit("refusal ~ persona + prompt", r, cluster="site", vcov="CR1").drop1().set_index("term")
    assert np.isnan(d.loc["persona", "F"]) and "only G - 1 = 2" in d.loc["persona", "note"]
    assert np.isfinite(d.loc["prompt", "p_value"]) and d.loc["prompt", "df_resid"] == 2


# ----------------------------------------------------------------------------- pseudo-R²
def test_pseudo_r2_rows_equal_trials_and_closed_form(rows):
    a = logit("refusal ~ persona + model + prompt", rows, reference=REF)
    b = logit("k ~ persona + model + prompt", _cells(), reference=REF, trials="n")
    assert a.pseudo_r2 == pytest.approx(b.pseudo_r2, abs=1e-12)
    for pen in ("firth", "l2"):
        kw = {"penalty": pen} | ({"alpha": 0.01} if pen == "l2" else {})
        fa = logit("refusal ~ persona + model + prompt", rows, reference=REF, **kw)
        fb = logit("k ~ persona + model + prompt", _cells(), reference=REF, trials="n", **kw)
        assert fa.pseudo_r2 == pytest.approx(fb.pseudo_r2, abs=1e-12)
        assert 0 <= fb.pseudo_r2 <= a.pseudo_r2  # the MLE maximises the unpenalized loglik
    # closed form: a model saturated in prompt has p = s/n per prompt level
    c = _cells().groupby("prompt")[["k", "n"]].sum()
    s, n = c["k"].to_numpy(float), c["n"].to_numpy(float)
    ll = float(np.sum(s * np.log(s / n) + (n - s) * np.log1p(-s / n)))
    S, N = s.sum(), n.sum()
    ll0 = S * np.log(S / N) + (N - S) * np.log1p(-S / N)
    assert logit("refusal ~ prompt", rows).pseudo_r2 == pytest.approx(1 - ll / ll0, abs=1e-12)


def test_pseudo_r2_of_firth_below_the_null_is_zero_with_a_note():
    # four groups with the same rate 2/10: the MLE is the null model; Firth's estimate in a
    # one-way (saturated) model is p = (s + 1/2)/(n + 1) per group, whose unpenalized
    # log-likelihood is below the null's
    df = pd.DataFrame({"g": np.repeat(list("abcd"), 10), "refusal": np.tile([1, 1] + [0] * 8, 4)})
    f = logit("refusal ~ g", df, penalty="firth")
    pf = 2.5 / 11
    ll = 40 * (0.2 * np.log(pf) + 0.8 * np.log1p(-pf))
    ll0 = 40 * (0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    assert f.pseudo_r2 == 0.0
    note = [x for x in f.notes if "pseudo-R2" in x]
    assert len(note) == 1 and f"{1 - ll / ll0:.3g}" in note[0]
    assert logit("refusal ~ g", df).pseudo_r2 == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- what the tests say
def test_firth_summary_pairs_penalized_lr_chisq_with_its_p(endometrial):
    from scipy import stats

    f = logit("HG ~ NV + PI + EH", endometrial, penalty="firth")
    tab = f.coef_table()
    assert "z" not in tab.columns and "chisq" in tab.columns
    # the chi-square statistic behind R's penalized LR p-values (values in the Firth test above)
    r_p = [0.00419362788558682, 0.00912366754708601, 0.387482203566458, 2.50686721485585e-05]
    np.testing.assert_allclose(tab["chisq"], stats.chi2.isf(r_p, 1), rtol=1e-4)
    s = str(f.summary())
    assert "Chisq" in s and "Pr(>Chisq)" in s and "z value" not in s and "Pr(>|z|)" not in s
    assert "penalized likelihood-ratio" in s


def test_ridge_and_lasso_give_no_pvalues_or_stars(rows):
    r = logit("refusal ~ persona + model + prompt", rows, reference=REF, penalty="l2", alpha=0.01)
    s = str(r.summary())
    for piece in ("Pr(", "z value", "Signif. codes", "*"):
        assert piece not in s, piece
    assert "No p-values" in s and "posterior" in r.ci_method
    tab = r.coef_table()
    assert not {"z", "p_value", "chisq"} & set(tab.columns) and np.isfinite(tab["ci_low"]).all()
    assert r.pvalues.isna().all() and r.zvalues.isna().all()
    for call in (r.anova, r.drop1, lambda: r.coef_table(adjust="holm")):
        with pytest.raises(ValueError, match="no p-values or tests"):
            call()
    lasso = logit("refusal ~ persona + model + prompt", rows, reference=REF, penalty="l1", alpha=0.01,
                  ci="bootstrap", n_boot=30, progress=False)
    assert "bootstrap" in lasso.ci_method and "not confidence intervals" in lasso.ci_method
    assert "Pr(" not in str(lasso.summary()) and "p_value" not in lasso.coef_table().columns
    with pytest.raises(ValueError, match="no p-values or tests"):
        lasso.drop1()


# ----------------------------------------------------------------------------- result object (issue 13)
def test_result_object_frame_conf_int_summary_repr(fit_m1):
    tab = fit_m1.to_frame()
    assert list(tab["term"]) == R_M1_NAMES
    assert {"p_value", "ci_low", "ci_high"} <= set(tab.columns)
    assert not {"p", "p_adj"} & set(tab.columns)
    np.testing.assert_allclose(tab["p_value"], R_M1_P, rtol=1e-4)
    assert "p_adjusted" in fit_m1.coef_table(adjust="holm").columns
    # Wald intervals at another level: estimate -/+ z * SE (R's confint.default(m1, level = 0.9))
    ci = fit_m1.conf_int(conf=0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(ci["ci_low"], np.array(R_M1_EST) - z * np.array(R_M1_SE), rtol=1e-5)
    np.testing.assert_allclose(ci["ci_high"], np.array(R_M1_EST) + z * np.array(R_M1_SE), rtol=1e-5)
    assert ci.attrs["interval"].startswith("Wald 90%")
    pd.testing.assert_frame_equal(fit_m1.conf_int(), fit_m1.conf_int(conf=0.95))
    with pytest.raises(ValueError, match="conf"):
        fit_m1.conf_int(conf=1.5)
    s = fit_m1.summary()
    assert isinstance(s, str) and "Pr(>|z|)" in s
    html = s._repr_html_()
    assert "<table" in html and "p_value" in html and "persona[T.Man]" in html
    r = repr(fit_m1)
    assert r.startswith("<LogitResults 'refusal ~ persona + model + prompt'") and 2 <= len(r.splitlines()) <= 5


def test_profile_conf_int_at_another_level_refits():
    # a profile interval at level 0.9 is the fit's own profile interval at 0.9, not a Wald one
    cells = _cells()
    f95 = logit("k ~ persona + model + prompt", cells, reference=REF, trials="n", ci="profile")
    f90 = logit("k ~ persona + model + prompt", cells, reference=REF, trials="n", ci="profile", conf=0.9)
    np.testing.assert_allclose(f95.conf_int(conf=0.9), f90.conf_int(), rtol=1e-10)
    assert "profile" in f95.conf_int(conf=0.9).attrs["interval"]


def test_main_effects_design_is_formulaics_design():
    """The design of ``a + b + ...`` (text factors) built from the codes equals formulaic's:
    columns, names, terms; other formulas are left to formulaic; predictions on new data
    use formulaic's spec, made when first needed."""
    from refusalstats.formula import fixed_design, main_effects_design

    rng = np.random.default_rng(5)
    df = pd.DataFrame({
        "persona": pd.Categorical(rng.choice(["Man", "Atheist", "Woman"], 40), categories=["Woman", "Man", "Atheist"]),
        "model": pd.Categorical(rng.choice(["m b", "m-a", "m[c]", "m.d"], 40)),
        "x": rng.normal(size=40), "k": pd.Categorical(rng.integers(0, 3, 40)),
    })
    for rhs in ("persona + model", "model + persona", "persona"):
        X, names, spec, cols, facs = main_effects_design(rhs, df)
        X0, names0, spec0 = fixed_design(rhs, df)
        assert names == names0
        np.testing.assert_array_equal(X, X0)
        assert cols == {str(t): list(i) for t, i in spec0.term_indices.items()}
        assert facs == {str(t): [str(f) for f in t.factors if str(f) != "1"] for t in spec0.term_indices}
        np.testing.assert_array_equal(spec.get_model_matrix(df.iloc[:5]), spec0.get_model_matrix(df.iloc[:5]))
    for rhs in ("persona * model", "persona + x", "persona + k", "0 + persona", "persona + C(model)"):
        assert main_effects_design(rhs, df) is None
    df["refusal"] = (rng.random(40) < 0.4).astype(int)
    f = logit("refusal ~ persona + model", df, cluster=None)
    assert list(f.params.index) == fixed_design("persona + model", df)[1]
    p = f.predict(df.iloc[:6])
    np.testing.assert_allclose(p, f.predict()[:6], rtol=1e-12)


def test_logit_model_builds_once_and_fits_like_logit(rows):
    """LogitModel(formula, data, ...).fit(...) (#23): one design, several estimators, each equal to
    logit(); results hold their model and refit profile intervals through it, and the results
    module no longer imports the model module (no model <-> results import circle)."""
    import ast
    import pathlib

    from refusalstats.regression import LogitModel
    from refusalstats.regression import results as results_module

    model = LogitModel("refusal ~ persona + model + prompt", rows, reference=REF, cluster=None)
    for kw in ({}, {"penalty": "firth"}, {"penalty": "l2", "alpha": 0.01}):
        got = model.fit(**kw)
        want = logit("refusal ~ persona + model + prompt", rows, reference=REF, cluster=None, **kw)
        np.testing.assert_allclose(got.params, want.params, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.bse, want.bse, rtol=1e-12)
        assert got.model is model and got._design is model.design
    prof = model.fit(ci="profile")
    np.testing.assert_allclose(prof.conf_int(0.9), model.fit(ci="profile", conf=0.9).conf_int(), rtol=1e-10)
    tree = ast.parse(pathlib.Path(results_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "model" not in imported
