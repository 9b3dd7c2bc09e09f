"""Separation on small designs: levels or cells that never (or always) refuse (#19).

Before the fix every fit below raised ``ValueError: zero-size array to reduction
operation maximum`` in ``regression/separation.py`` (the thin SVD of the mixed patterns
has fewer right singular vectors than coefficients when there are fewer mixed patterns
than coefficients, and the null space came out empty). The expected numbers come from
closed forms:

* ``refusal ~ persona`` is saturated (one coefficient per pattern), so its MLE for a
  level with refusals is the log odds ratio ``log(s_l f_r / (f_l s_r))`` with the
  textbook SE ``sqrt(1/s_l + 1/f_l + 1/s_r + 1/f_r)``;
* Firth's estimate in a saturated model adds 1/2 to every cell's refusals and
  non-refusals (the hat value of each pattern is 1, so the modified score equation
  is ``s + 1/2 = (n + 1) p``);
* ridge is the minimizer of glmnet's objective, found here by ``scipy.optimize``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit
from scipy.special import logit as qlogis

import refusalstats as rs
from refusalstats.regression import SeparationWarning, logit
from refusalstats.regression.design_matrix import _build
from refusalstats.regression.separation import _separation

#: refusals / answers per persona; "c" never refuses
COUNTS = {"a": (30, 80), "b": (18, 70), "c": (0, 60)}


def _table(counts=COUNTS, n_items: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = []
    for lv, (k, n) in counts.items():
        y = np.zeros(n, int)
        y[:k] = 1
        out.append(pd.DataFrame({"persona": lv, "refusal": rng.permutation(y),
                                 "item_id": rng.integers(0, n_items, n)}))
    return pd.concat(out, ignore_index=True)


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


@pytest.mark.parametrize("cluster", [None, "item_id"])
def test_never_refusing_level_mle_names_it_and_keeps_the_rest(cluster):
    df = _table()
    with pytest.warns(SeparationWarning, match="persona=c has 0 refusals in 60 rows"):
        fit = logit("refusal ~ persona", df, cluster=cluster)
    assert fit.separated_terms == ["persona[T.c]"]
    assert np.isnan(fit.bse["persona[T.c]"]) and np.isnan(fit.pvalues["persona[T.c]"])
    assert fit.params["persona[T.c]"] < -10  # where the fit stopped, marked as diverging
    (sa, na), (sb, nb) = COUNTS["a"], COUNTS["b"]
    lor = np.log(sb * (na - sa) / ((nb - sb) * sa))
    assert fit.params["persona[T.b]"] == pytest.approx(lor, abs=1e-7)
    if cluster is None:
        assert fit.bse["persona[T.b]"] == pytest.approx(np.sqrt(1 / sa + 1 / (na - sa) + 1 / sb + 1 / (nb - sb)),
                                                        rel=1e-6)
    text = str(fit.summary())
    assert "(sep)" in text and "persona=c has 0 refusals" in text
    tests = fit.drop1()
    assert len(tests) == 1 and tests["term"].iloc[0] == "persona"


@pytest.mark.parametrize("cluster", [None, "item_id"])
def test_never_refusing_level_firth_equals_adding_a_half(cluster):
    df = _table()
    fit = _quiet(logit, "refusal ~ persona", df, penalty="firth", cluster=cluster)
    p = {lv: (k + 0.5) / (n + 1.0) for lv, (k, n) in COUNTS.items()}
    assert fit.params["Intercept"] == pytest.approx(qlogis(p["a"]), abs=1e-6)
    for lv in ("b", "c"):
        assert fit.params[f"persona[T.{lv}]"] == pytest.approx(qlogis(p[lv]) - qlogis(p["a"]), abs=1e-6)
    assert np.isfinite(fit.conf_int().to_numpy()).all()
    assert fit.separated_terms == ["persona[T.c]"]
    assert np.isfinite(fit.drop1()["p_value"]).all()


@pytest.mark.parametrize("cluster", [None, "item_id"])
def test_never_refusing_level_ridge_is_finite_and_minimizes_glmnets_objective(cluster):
    df = _table()
    alpha = 0.02
    fit = _quiet(logit, "refusal ~ persona", df, penalty="l2", alpha=alpha, cluster=cluster)
    X = np.column_stack([np.ones(len(df)), df["persona"].eq("b"), df["persona"].eq("c")]).astype(float)
    y = df["refusal"].to_numpy(float)

    def objective(b):
        eta = X @ b
        return -np.mean(y * eta - np.logaddexp(0, eta)) + alpha / 2 * np.sum(b[1:] ** 2)

    best = minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-12}).x
    np.testing.assert_allclose(fit.params.to_numpy(), best, atol=1e-5)
    assert np.isfinite(fit.bse).all()


def test_several_never_and_always_refusing_levels():
    counts = {"a": (30, 80), "b": (0, 50), "c": (0, 40), "d": (45, 45), "e": (10, 30)}
    df = _table(counts)
    with pytest.warns(SeparationWarning) as rec:
        fit = logit("refusal ~ persona", df, cluster=None)
    msg = " ".join(str(r.message) for r in rec if issubclass(r.category, SeparationWarning))
    for text in ("persona=b has 0 refusals in 50 rows", "persona=c has 0 refusals in 40 rows",
                 "persona=d has only refusals (45 of 45 rows)"):
        assert text in msg
    assert fit.separated_terms == ["persona[T.b]", "persona[T.c]", "persona[T.d]"]
    firth = _quiet(logit, "refusal ~ persona", df, penalty="firth")
    p = {lv: (k + 0.5) / (n + 1.0) for lv, (k, n) in counts.items()}
    for lv in "bcde":
        assert firth.params[f"persona[T.{lv}]"] == pytest.approx(qlogis(p[lv]) - qlogis(p["a"]), abs=1e-6)


def test_reference_level_never_refuses():
    df = _table({"a": (0, 50), "b": (20, 60), "c": (10, 40)})
    with pytest.warns(SeparationWarning, match="persona=a has 0 refusals"):
        fit = logit("refusal ~ persona", df, cluster=None)
    assert set(fit.separated_terms) == {"Intercept", "persona[T.b]", "persona[T.c]"}
    firth = _quiet(logit, "refusal ~ persona", df, penalty="firth", cluster="item_id")
    assert firth.params["Intercept"] == pytest.approx(qlogis(0.5 / 51), abs=1e-6)


def test_never_refusing_cell_of_an_interaction():
    rng = np.random.default_rng(3)
    n = 600
    df = pd.DataFrame({"persona": rng.choice(["a", "b", "c"], n), "task": rng.choice(["x", "y"], n),
                       "item_id": rng.integers(0, 40, n)})
    df["refusal"] = (rng.random(n) < 0.35).astype(int)
    cell = (df["persona"] == "b") & (df["task"] == "y")
    df.loc[cell, "refusal"] = 0
    for cluster in (None, "item_id"):
        with pytest.warns(SeparationWarning, match=f"persona=b & task=y has 0 refusals in {int(cell.sum())} rows"):
            fit = logit("refusal ~ persona * task", df, cluster=cluster)
        assert fit.separated_terms == ["persona[T.b]:task[T.y]"]
        firth = _quiet(logit, "refusal ~ persona * task", df, penalty="firth", cluster=cluster)
        assert np.isfinite(firth.params).all()
        # saturated 3 x 2 model: Firth adds 1/2 to each cell
        s = df.groupby(["persona", "task"])["refusal"].agg(["sum", "size"])
        lp = qlogis((s["sum"] + 0.5) / (s["size"] + 1.0))
        want = lp[("b", "y")] - lp[("b", "x")] - lp[("a", "y")] + lp[("a", "x")]
        assert firth.params["persona[T.b]:task[T.y]"] == pytest.approx(want, abs=1e-6)


def test_fewer_mixed_patterns_than_coefficients_detector():
    # 5 personas x 2 tasks, only persona a mixed: 2 mixed patterns, 6 coefficients
    rng = np.random.default_rng(5)
    n = 500
    df = pd.DataFrame({"persona": rng.choice(list("abcde"), n), "task": rng.choice(["x", "y"], n)})
    df["refusal"] = np.where(df["persona"] == "a", (rng.random(n) < 0.5).astype(int), 0)
    d, _ = _build("refusal ~ persona + task", df, None, None, None, None, True)
    desc, terms = _separation(d)
    assert terms == ["persona[T.b]", "persona[T.c]", "persona[T.d]", "persona[T.e]"]
    assert len(desc) == 4 and all("has 0 refusals" in t for t in desc)
    # and the MLE's other coefficients are those of the model fitted to persona a alone
    fit = _quiet(logit, "refusal ~ persona + task", df)
    alone = _quiet(logit, "refusal ~ task", df[df["persona"] == "a"])
    assert fit.params["task[T.y]"] == pytest.approx(alone.params["task[T.y]"], abs=1e-6)
    assert fit.params["Intercept"] == pytest.approx(alone.params["Intercept"], abs=1e-6)


def test_cli_fit_with_a_never_refusing_level(tmp_path, capsys):
    from refusalstats.cli import main

    df = _table()
    df["model"], df["task"], df["prompt"] = "m", "t", "p1"
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    for penalty in ("none", "firth"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["fit", "refusal ~ persona", str(path), "--penalty", penalty, "--cluster", "item_id"])
        out = capsys.readouterr().out
        assert rc == 0
        assert "persona=c has 0 refusals in 60 rows" in out
        if penalty == "firth":
            want = qlogis(0.5 / 61) - qlogis(30.5 / 81)
            assert f"{want:.5g}" in out


def test_predict_and_marginal_means_with_separation():
    df = _table()
    firth = _quiet(logit, "refusal ~ persona", df, penalty="firth")
    mm = firth.marginal_means("persona")
    assert mm.loc[mm["persona"] == "c", "prob"].item() == pytest.approx(0.5 / 61, rel=1e-6)
    pr = firth.predict(pd.DataFrame({"persona": ["c"]}), conf=0.95)
    assert pr["prediction"].item() == pytest.approx(expit(qlogis(0.5 / 61)), rel=1e-6)
    assert 0 < pr["ci_low"].item() < pr["prediction"].item() < pr["ci_high"].item() < 1


def _never_refusing_with_labels(seed=0, n=1200):
    """Three models, one never refuses (its flags and its human labels are all 0)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"model": rng.choice(["a", "b", "never"], n),
                       "persona": rng.choice(["p", "q", "r"], n), "item_id": rng.integers(0, 60, n)})
    df["refusal"] = np.where(df["model"] == "never", 0, (rng.random(n) < 0.3).astype(int))
    df["human"] = np.where(rng.random(n) < 0.2, df["refusal"], np.nan)
    return df


def test_ppi_logit_names_a_never_refusing_level_instead_of_a_zero_standard_error():
    """With labels= a level that never refuses diverged to about -34 with standard error 0,
    z -1.9e16 and p 0 (a finding out of nothing). It is now marked separated: NaN standard
    error, test and interval, named in the summary, as logit marks it; the other terms keep
    their finite estimates, equal to the fit without that level's rows."""
    df = _never_refusing_with_labels()
    with pytest.warns(RuntimeWarning, match="separate"):
        r = rs.logit("refusal ~ model + persona", df, labels="human", cluster=None)
    t = r.to_frame()
    assert r.separated == ("model[T.never]",) and t.attrs["separated"] == ["model[T.never]"]
    assert t.loc["model[T.never]", "estimate"] < -30
    assert t.loc["model[T.never]", ["std_error", "z", "p_value", "ci_low", "ci_high",
                                    "std_error_labels_only"]].isna().all()
    rest = t.drop(index="model[T.never]")
    assert np.isfinite(rest[["std_error", "p_value", "ci_low", "ci_high"]].to_numpy()).all()
    assert "Separation: model[T.never]" in str(r.summary())
    # the labelled rows alone: a term that separates leaves the others' estimates as in the
    # table without its rows (up to the small-sample pull toward 1/2 of its cells)
    sub = df[df["model"] != "never"]
    r2 = rs.logit("refusal ~ model + persona", sub, labels="human", cluster=None)
    for term in ("model[T.b]", "persona[T.q]", "persona[T.r]"):
        assert r.params_labels_only[term] == pytest.approx(r2.params_labels_only[term], abs=0.02), term
