"""Rates, Newcombe differences, Cochran's Q, disparity and rank agreement.

Reference values come from statsmodels (proportion_confint, confint_proportions_2indep,
mcnemar), pingouin (cochran, friedman) and scipy (kendalltau), computed here on the
same data, and from closed forms.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

import refusalstats as rs
from refusalstats.rates import proportion_ci
from refusalstats.table import SchemaError


@pytest.fixture(scope="module")
def paper():
    return rs.simulate_paper(scale=0.01, seed=3)


def complete_blocks(seed=0, n_items=40, personas=("a", "b", "c", "d", "e"), models=("m1", "m2")):
    """P2-style data: every item answered under every persona, per model."""
    rng = np.random.default_rng(seed)
    rows = []
    for mi, m in enumerate(models):
        item_p = rng.beta(1, 4, n_items)
        for pi, p in enumerate(personas):
            shift = 0.15 * pi * (mi + 1) / len(personas)
            refuse = rng.random(n_items) < np.clip(item_p + shift, 0, 1)
            rows += [(m, p, i, int(r)) for i, r in enumerate(refuse)]
    return pd.DataFrame(rows, columns=["model", "persona", "item_id", "refusal"])


# ---------------------------------------------------------------------------------------
# refusal_rates
# ---------------------------------------------------------------------------------------

SM_METHOD = {"wilson": "wilson", "clopper-pearson": "beta", "jeffreys": "jeffreys"}


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson", "jeffreys"])
def test_refusal_rates_match_statsmodels(paper, method):
    out = rs.refusal_rates(paper, by=["model", "task"], method=method, conf=0.9, cluster=None)
    counts = paper.groupby(["model", "task"], observed=True)["refusal"].agg(["size", "sum"])
    assert out["n"].tolist() == counts["size"].tolist()
    assert out["refusals"].tolist() == counts["sum"].tolist()
    assert out["rate"].to_numpy() == pytest.approx((counts["sum"] / counts["size"]).to_numpy())
    k, n = out["refusals"].to_numpy(), out["n"].to_numpy()
    lo, hi = proportion_confint(k, n, alpha=0.1, method=SM_METHOD[method])
    inner = (k > 0) & (k < n)
    assert inner.sum() > 10
    np.testing.assert_allclose(out["ci_low"][inner], lo[inner], rtol=1e-9)
    np.testing.assert_allclose(out["ci_high"][inner], hi[inner], rtol=1e-9)
    assert (k == 0).any()  # Table 1's blank cells: models that never refuse
    zero = k == 0
    assert (out["ci_low"][zero] == 0).all()
    np.testing.assert_allclose(out["ci_high"][zero], hi[zero], rtol=1e-9)
    assert ((out["ci_low"] <= out["rate"]) & (out["rate"] <= out["ci_high"])).all()


def test_jeffreys_and_clopper_pearson_boundaries():
    # k = n: the upper limit is 1; the lower one is the statsmodels value
    for method, sm in [("jeffreys", "jeffreys"), ("clopper-pearson", "beta")]:
        lo, hi = proportion_ci(np.array([20]), np.array([20]), method, 0.95)
        assert hi[0] == 1.0
        assert lo[0] == pytest.approx(proportion_confint(20, 20, method=sm)[0])
    # Clopper-Pearson's closed form at k = 0: 1 - (alpha/2)^(1/n)
    lo, hi = proportion_ci(0, 30, "clopper-pearson", 0.95)
    assert (float(lo), float(hi)) == pytest.approx((0.0, 1 - 0.025 ** (1 / 30)))


def test_refusal_rates_overall_and_order(paper):
    out = rs.refusal_rates(paper, cluster=None)
    assert out.shape == (1, 5)
    assert out["n"].item() == len(paper) and out["refusals"].item() == paper["refusal"].sum()
    by_task = rs.refusal_rates(paper, by="task")
    assert by_task["task"].tolist() == [
        t for t in paper["task"].cat.categories if t in set(paper["task"])
    ]
    # unused categorical levels (persona-free) are not listed
    by_setting = rs.refusal_rates(paper, by="setting", cluster=None)
    assert by_setting["setting"].tolist() == ["persona"]


def test_refusal_rates_errors(paper):
    with pytest.raises(SchemaError, match="missing required column"):
        rs.refusal_rates(paper, by="temperature")
    bad = paper.head(50).assign(refusal=2)
    with pytest.raises(SchemaError, match="0/1"):
        rs.refusal_rates(bad, by="model")
    nan_group = pd.DataFrame({"model": ["a", None, "b"], "refusal": [0, 1, 0]})
    with pytest.raises(SchemaError, match="'model' has 1 missing"):
        rs.refusal_rates(nan_group, by="model")
    with pytest.raises(SchemaError, match="empty"):
        rs.refusal_rates(paper.head(0), by="model")
    with pytest.raises(ValueError, match="unknown interval method 'wald'"):
        rs.refusal_rates(paper, method="wald")
    with pytest.raises(ValueError, match="conf"):
        rs.refusal_rates(paper, conf=95)
    renamed = paper.head(100).rename(columns={"refusal": "refused"})
    out = rs.refusal_rates(renamed, by="task", refusal="refused")
    pd.testing.assert_frame_equal(out, rs.refusal_rates(paper.head(100), by="task"))
    with pytest.raises(SchemaError, match="'refused'"):
        rs.refusal_rates(renamed.assign(refused=5), refusal="refused")


def clustered(n_groups=400, n_clusters=40, size=8, a=1.5, b=6.0, seed=0):
    """Groups of clusters whose rows share a Beta-distributed refusal probability."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, (n_groups, n_clusters))
    y = rng.random((n_groups, n_clusters, size)) < p[..., None]
    g, c, _ = np.indices(y.shape)
    return pd.DataFrame(
        {"group": g.ravel(), "item_id": c.ravel(), "refusal": y.ravel().astype(int)}
    )


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson", "jeffreys"])
def test_clustered_rates_by_hand(method):
    df = clustered(n_groups=3, seed=1)
    out = rs.refusal_rates(df, by="group", cluster="item_id", method=method)
    assert out.columns.tolist()[-3:] == ["n_clusters", "design_effect", "n_eff"]
    for _, row in out.iterrows():
        sub = df[df.group == row["group"]]
        cl = sub.groupby("item_id")["refusal"].agg(["size", "sum"])
        n, p, c = len(sub), sub.refusal.mean(), len(cl)
        var = c / (c - 1) * ((cl["sum"] - p * cl["size"]) ** 2).sum() / n**2
        deff = max(1.0, var / (p * (1 - p) / n))
        n_eff = n / deff
        assert row["design_effect"] == pytest.approx(deff)
        assert row["n_eff"] == pytest.approx(n_eff)
        # Korn & Graubard / survey::svyciprop: n_eff * (qt(.975, n - 1) / qt(.975, C - 1))^2
        n_ci = n_eff * (stats.t.ppf(0.975, n - 1) / stats.t.ppf(0.975, c - 1)) ** 2
        lo, hi = proportion_confint(p * n_ci, n_ci, method=SM_METHOD[method])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
        assert row["design_effect"] > 1.05  # the rows of an item are correlated


def test_clustered_rates_cover_where_naive_ones_do_not():
    df = clustered(size=12)  # design effect about 2.3
    truth = 1.5 / 7.5
    naive = rs.refusal_rates(df, by="group", cluster=None)
    robust = rs.refusal_rates(df, by="group", cluster="item_id")

    def cover(t):
        return np.mean((t["ci_low"] <= truth) & (truth <= t["ci_high"]))

    assert cover(naive) < 0.85  # 400 groups: Monte Carlo standard error about 0.011
    assert 0.92 < cover(robust) < 0.975


def test_clustered_rates_edge_cases():
    # singleton clusters: Var = p(1-p)/(n-1), so n_eff = n - 1
    df = pd.DataFrame({"item_id": range(50), "refusal": [1] * 10 + [0] * 40})
    out = rs.refusal_rates(df, cluster="item_id")
    assert out["n_eff"].item() == pytest.approx(49)
    # no refusals: the design effect is 1 and the interval is the plain one
    zero = rs.refusal_rates(df.assign(refusal=0, g=df.item_id % 5), by="g", cluster="item_id")
    assert (zero["design_effect"] == 1).all() and (zero["ci_low"] == 0).all()
    with pytest.warns(RuntimeWarning, match="single item_id cluster"):
        one = rs.refusal_rates(df.assign(item_id=1), cluster="item_id")
    assert np.isnan(one["ci_low"].item())
    # several columns form the cluster key
    twice = pd.concat([df.assign(task="a"), df.assign(task="b")])
    both = rs.refusal_rates(twice, cluster=["task", "item_id"])
    assert both["n_clusters"].item() == 100
    with pytest.raises(ValueError, match="also in by"):
        rs.refusal_rates(twice, by="task", cluster=["task", "item_id"])


# ---------------------------------------------------------------------------------------
# persona_effect
# ---------------------------------------------------------------------------------------


def two_settings(seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for task, p_per, p_free in [("nli", 0.02, 0.0), ("offensiveness", 0.30, 0.18)]:
        for setting, p, n in [("persona", p_per, 900), ("persona-free", p_free, 300)]:
            frames.append(pd.DataFrame({
                "task": task, "setting": setting,
                "persona": "Man" if setting == "persona" else "none",
                "refusal": (rng.random(n) < p).astype(int),
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_persona_effect_matches_statsmodels_newcombe():
    df = two_settings()
    out = rs.persona_effect(df, by="task", conf=0.9)
    assert out["task"].tolist() == ["nli", "offensiveness"]
    for _, row in out.iterrows():
        sub = df[df.task == row["task"]]
        k1 = sub[sub.setting == "persona"].refusal.sum()
        k2 = sub[sub.setting == "persona-free"].refusal.sum()
        assert (row["n_persona"], row["n_persona_free"]) == (900, 300)
        assert (row["refusals_persona"], row["refusals_persona_free"]) == (k1, k2)
        assert row["difference"] == pytest.approx(k1 / 900 - k2 / 300)
        lo, hi = confint_proportions_2indep(
            k1, 900, k2, 300, method="newcomb", compare="diff", alpha=0.1
        )
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
    # nli: persona-free never refuses, the interval stays sensible at the boundary
    assert out.loc[0, "refusals_persona_free"] == 0 and out.loc[0, "ci_low"] > -0.02


def test_persona_effect_hand_computed_newcombe():
    # Newcombe (1998), hybrid score method 10, written out from the Wilson limits
    df = pd.DataFrame({"setting": ["persona"] * 50 + ["persona-free"] * 40,
                       "refusal": [1] * 12 + [0] * 38 + [1] * 4 + [0] * 36})  # fmt: skip
    out = rs.persona_effect(df)
    l1, u1 = proportion_confint(12, 50, method="wilson")
    l2, u2 = proportion_confint(4, 40, method="wilson")
    d = 12 / 50 - 4 / 40
    lo = d - np.sqrt((12 / 50 - l1) ** 2 + (u2 - 4 / 40) ** 2)
    hi = d + np.sqrt((u1 - 12 / 50) ** 2 + (4 / 40 - l2) ** 2)
    assert out[["difference", "ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([d, lo, hi])


def test_persona_effect_derives_setting_and_errors(paper):
    df = two_settings()
    derived = rs.persona_effect(df.drop(columns="setting"), by="task")
    pd.testing.assert_frame_equal(derived, rs.persona_effect(df, by="task"))
    # the simulated paper table has persona rows only
    with pytest.raises(ValueError, match="task='nli' has no 'persona-free' rows"):
        rs.persona_effect(paper, by="task")
    only_nli_free = df[~((df.task == "offensiveness") & (df.setting == "persona-free"))]
    with pytest.raises(ValueError, match=r"1 group\(s\) lack one: task='offensiveness'"):
        rs.persona_effect(only_nli_free, by="task")
    with pytest.raises(ValueError, match="besides"):
        rs.persona_effect(df.assign(setting="control"))
    with pytest.raises(ValueError, match="cannot also be in by"):
        rs.persona_effect(df, by="setting")


# ---------------------------------------------------------------------------------------
# cochran_q
# ---------------------------------------------------------------------------------------


def test_cochran_q_matches_pingouin():
    df = complete_blocks()
    out = rs.cochran_q(df, condition="persona", block="item_id", by="model", method="chi2")
    assert out["model"].tolist() == ["m1", "m2"]
    for _, row in out.iterrows():
        ref = pg.cochran(
            df[df.model == row["model"]], dv="refusal", within="persona", subject="item_id"
        )
        assert row["Q"] == pytest.approx(ref["Q"].item(), rel=1e-12)
        assert row["p_value"] == pytest.approx(ref["p_unc"].item(), rel=1e-9)
        assert row["df"] == ref["dof"].item() == 4
        assert (row["n_blocks"], row["n_conditions"]) == (40, 5)
    assert out.loc[1, "p_value"] < 0.05  # m2 has a real persona effect
    for method, sm in [("holm", "holm"), ("bh", "fdr_bh")]:
        adj = rs.cochran_q(df, by="model", adjust=method)
        want = multipletests(adj["p_value"], method=sm)[1]
        assert adj["p_adjusted"].to_numpy() == pytest.approx(want)
    with pytest.raises(ValueError, match="adjust must be"):
        rs.cochran_q(df, by="model", adjust="bonferroni")


def test_cochran_q_two_conditions_is_mcnemar():
    df = complete_blocks(seed=5, personas=("a", "b"), models=("m",))
    wide = df.pivot(index="item_id", columns="persona", values="refusal")
    table = pd.crosstab(wide["a"], wide["b"]).reindex(index=[0, 1], columns=[0, 1], fill_value=0)
    ref = mcnemar(table.to_numpy(), exact=False, correction=False)
    out = rs.cochran_q(df, method="chi2")
    assert out["Q"].item() == pytest.approx(ref.statistic)
    assert out["p_value"].item() == pytest.approx(ref.pvalue)
    # the exact conditional test is McNemar's exact test: binomial test on discordant pairs
    b01, b10 = int(table.loc[0, 1]), int(table.loc[1, 0])
    exact = rs.cochran_q(df, method="exact")
    assert exact["method"].item() == "exact"
    assert exact["p_value"].item() == pytest.approx(
        stats.binomtest(b01, b01 + b10, 0.5).pvalue, rel=1e-12
    )
    assert exact["p_value"].item() == pytest.approx(mcnemar(table.to_numpy(), exact=True).pvalue)
    assert exact["n_informative"].item() == b01 + b10


def brute_force_exact(x):
    """P(Q >= Q_obs) by listing every placement of each block's refusals."""
    from itertools import combinations, product

    k = x.shape[1]
    rows = [r for r in x.sum(axis=1) if 0 < r < k]
    q_of = lambda c: np.sum(np.asarray(c) ** 2)
    obs = q_of(x[(x.sum(1) > 0) & (x.sum(1) < k)].sum(0))
    hits = total = 0
    for choice in product(*[list(combinations(range(k), r)) for r in rows]):
        c = np.zeros(k, int)
        for cmb in choice:
            c[list(cmb)] += 1
        total += 1
        hits += q_of(c) >= obs
    return hits / total


def test_cochran_q_exact_equals_enumeration_and_permutation_agrees():
    rng = np.random.default_rng(3)
    x = (rng.random((9, 4)) < [0.1, 0.2, 0.5, 0.6]).astype(int)
    x[0] = [1, 1, 1, 1]  # constant blocks carry no information
    x[1] = 0
    df = pd.DataFrame([(i, f"c{j}", x[i, j]) for i in range(9) for j in range(4)],
                      columns=["item_id", "persona", "refusal"])  # fmt: skip
    want = brute_force_exact(x)
    assert 0.001 < want < 0.5
    out = rs.cochran_q(df, method="exact")
    assert out["p_value"].item() == pytest.approx(want, rel=1e-10)
    assert out["n_informative"].item() == int(((x.sum(1) > 0) & (x.sum(1) < 4)).sum())
    with pytest.warns(RuntimeWarning, match="fewer than 20 blocks carry information"):
        chi = rs.cochran_q(df, method="chi2")
    assert chi["Q"].item() == pytest.approx(out["Q"].item())
    auto = rs.cochran_q(df)
    assert auto["method"].item() == "exact" and auto["p_value"].item() == out["p_value"].item()
    perm = rs.cochran_q(df, method="permutation", n_perm=20000, seed=1)
    assert perm["method"].item() == "permutation"
    se = np.sqrt(want * (1 - want) / 20000)
    assert abs(perm["p_value"].item() - want) < 4 * se
    again = rs.cochran_q(df, method="permutation", n_perm=20000, seed=1)
    assert again["p_value"].item() == perm["p_value"].item()


def test_cochran_q_single_refusal_is_not_evidence():
    # P2's Zephyr racism matrix: one refusal among 163 personas; chi2 gives p = .485
    # (Q = k - 1 on k - 1 df), the exact conditional test p = 1
    k, b = 163, 300
    df = pd.DataFrame([(i, f"p{j}", int(i == 0 and j == 3)) for i in range(b) for j in range(k)],
                      columns=["item_id", "persona", "refusal"])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="unreliable"):
        chi = rs.cochran_q(df, method="chi2")
    assert chi["Q"].item() == pytest.approx(k - 1)
    assert chi["p_value"].item() == pytest.approx(stats.chi2.sf(k - 1, k - 1))
    assert round(chi["p_value"].item(), 3) == 0.485
    auto = rs.cochran_q(df)
    assert auto[["p_value", "method", "n_informative"]].values.tolist() == [[1.0, "exact", 1]]
    perm = rs.cochran_q(df, method="permutation", n_perm=99, seed=0)
    assert perm["p_value"].item() == 1.0


def test_cochran_q_method_choice_and_errors():
    df = complete_blocks(models=("m",))  # 40 items, about 30 informative
    auto = rs.cochran_q(df)
    assert auto["n_informative"].item() >= 20 and auto["method"].item() == "chi2"
    exact = rs.cochran_q(df, method="exact")
    assert exact["method"].item() == "exact"
    # many informative blocks: the chi2 and exact p-values are close
    assert exact["p_value"].item() == pytest.approx(auto["p_value"].item(), abs=0.02)
    with pytest.raises(ValueError, match="method must be one of"):
        rs.cochran_q(df, method="asymptotic")
    with pytest.raises(ValueError, match="n_perm"):
        rs.cochran_q(df, method="permutation", n_perm=0)
    big = complete_blocks(models=("m",), n_items=400, personas=tuple("abcdefghijkl"))
    with pytest.raises(ValueError, match="too large to enumerate.*permutation"):
        rs.cochran_q(big, method="exact")


def test_cochran_q_blocks_of_several_columns_and_degenerate():
    df = complete_blocks(seed=2, models=("m",))
    twice = pd.concat([df.assign(prompt="p1"), df.assign(prompt="p2")], ignore_index=True)
    with pytest.raises(ValueError, match=r"more than once.*block=\['item_id', 'prompt'\]"):
        rs.cochran_q(twice)
    out = rs.cochran_q(twice, block=["item_id", "prompt"], method="chi2")
    assert out["n_blocks"].item() == 80
    ref = pg.cochran(twice.assign(b=twice.item_id.astype(str) + twice.prompt), dv="refusal",
                     within="persona", subject="b")  # fmt: skip
    assert out["Q"].item() == pytest.approx(ref["Q"].item())
    none = rs.cochran_q(df.assign(refusal=0))
    assert np.isnan(none["Q"].item()) and np.isnan(none["p_value"].item())


def test_cochran_q_incomplete_blocks_point_to_the_likelihood_ratio_test(paper):
    with pytest.raises(ValueError, match=r"complete blocks.*rs\.logit\(.*\)\.anova\(\)"):
        rs.cochran_q(paper, by=["model", "task"])
    df = complete_blocks(models=("m",)).iloc[1:]
    with pytest.raises(ValueError, match=r"item_id=0 lacks 1 of 5 persona"):
        rs.cochran_q(df)
    with pytest.raises(ValueError, match="at least two levels"):
        rs.cochran_q(complete_blocks(personas=("a",), models=("m",)))
    with pytest.raises(ValueError, match="different columns"):
        rs.cochran_q(df, condition="persona", block="persona")


# ---------------------------------------------------------------------------------------
# disparity
# ---------------------------------------------------------------------------------------


def with_controls(seed=0):
    rng = np.random.default_rng(seed)
    groups = {"Gender": ["man", "woman", "nb"], "Race": ["black", "white", "asian", "latino"],
              "control": [f"helper{i}" for i in range(6)]}  # fmt: skip
    rows = []
    for model in ["m1", "m2"]:
        for cat, personas in groups.items():
            for persona in personas:
                p = 0.2 if cat == "control" else rng.uniform(0.05, 0.6)
                k = rng.binomial(1, p, 200)
                rows += [(model, cat, persona, int(v)) for v in k]
    return pd.DataFrame(rows, columns=["model", "persona_group", "persona", "refusal"])


def test_disparity_by_hand():
    df = with_controls()
    out = rs.disparity(df, category="persona_group", control="control", by="model",
                       estimator="plug-in")  # fmt: skip
    assert out.columns.tolist() == ["model", "persona_group", "n_personas", "sd", "n_control",
                                    "control_sd", "disparity"]  # fmt: skip
    assert out.attrs["estimator"] == "plug-in"
    assert len(out) == 4  # 2 models x (Gender, Race); the control category is the reference
    for _, row in out.iterrows():
        sub = df[df.model == row["model"]]
        rates = sub.groupby("persona")["refusal"].mean()
        cat = sub.groupby("persona")["persona_group"].first()
        sd = np.std(rates[cat == row["persona_group"]].to_numpy(), ddof=1)
        csd = np.std(rates[cat == "control"].to_numpy(), ddof=1)
        assert row["sd"] == pytest.approx(sd) and row["control_sd"] == pytest.approx(csd)
        assert row["disparity"] == pytest.approx(sd / csd)
        assert row["n_control"] == 6
    # the same control given as a list of personas or as a True/False column
    ctrl = [f"helper{i}" for i in range(6)]
    as_list = rs.disparity(df, control=ctrl, by="model", estimator="plug-in")
    as_col = rs.disparity(df.assign(is_ctrl=df.persona.isin(ctrl)), control="is_ctrl", by="model",
                          estimator="plug-in")  # fmt: skip
    pd.testing.assert_frame_equal(as_list, out)
    pd.testing.assert_frame_equal(as_col, out)
    pop = rs.disparity(df, control="control", by="model", ddof=0, estimator="plug-in")
    assert pop["sd"].iloc[0] < out["sd"].iloc[0]
    with pytest.raises(ValueError, match="estimator must be one of"):
        rs.disparity(df, estimator="plugin")


def _corrected_sd(rates, cov, ddof=1):
    """sqrt(max(SS - tr(H cov), 0.05 SS) / (k - ddof)), written out."""
    k = len(rates)
    ss = np.sum((rates - rates.mean()) ** 2)
    h = np.eye(k) - np.ones((k, k)) / k
    return np.sqrt(max(ss - np.trace(h @ cov), 0.05 * ss) / (k - ddof))


def test_disparity_corrected_by_hand():
    # independent rows (no item_id): each rate's noise is r(1-r)/(n-1), no covariance
    df = with_controls()
    out = rs.disparity(df, by="model")
    assert out.attrs["estimator"] == "corrected"
    assert out.columns.tolist() == ["model", "persona_group", "n_personas", "sd", "n_control",
                                    "control_sd", "sd_corrected", "control_sd_corrected",
                                    "disparity_plugin", "disparity"]  # fmt: skip
    plug = rs.disparity(df, by="model", estimator="plug-in")
    assert out["disparity_plugin"].tolist() == pytest.approx(plug["disparity"].tolist())
    assert out[["sd", "control_sd"]].to_numpy() == pytest.approx(plug[["sd", "control_sd"]])
    for _, row in out.iterrows():
        sub = df[df.model == row["model"]]
        g = sub.groupby("persona")["refusal"].agg(["mean", "size"])
        cat = sub.groupby("persona")["persona_group"].first()
        v = g["mean"] * (1 - g["mean"]) / (g["size"] - 1)
        sds = []
        for mask in (cat == row["persona_group"], cat == "control"):
            sds.append(_corrected_sd(g["mean"][mask].to_numpy(), np.diag(v[mask].to_numpy())))
        assert [row["sd_corrected"], row["control_sd_corrected"]] == pytest.approx(sds)
        assert row["disparity"] == pytest.approx(sds[0] / sds[1])
    # complete blocks: the rates' covariance is the cluster-robust one (items shared)
    rng = np.random.default_rng(3)
    nb = 80
    y = rng.random((nb, 7)) < np.clip(rng.beta(1, 3, (nb, 1)) + np.linspace(0, 0.3, 7), 0, 1)
    names = ["a", "b", "c", "h1", "h2", "h3", "h4"]
    blocks = pd.DataFrame({"item_id": np.repeat(np.arange(nb), 7), "persona": names * nb,
                           "refusal": y.ravel().astype(int)})  # fmt: skip
    blocks["persona_group"] = np.where(blocks.persona.str.startswith("h"), "control", "G")
    res = rs.disparity(blocks, cluster="item_id").iloc[0]
    r = y.mean(0)
    e = (y - r) / nb  # residual of each item's answer, over each rate's n
    cov = nb / (nb - 1) * e.T @ e
    sd_g = _corrected_sd(r[:3], cov[:3, :3])
    sd_c = _corrected_sd(r[3:], cov[3:, 3:])
    assert [res["sd_corrected"], res["control_sd_corrected"]] == pytest.approx([sd_g, sd_c])
    # ignoring the covariance (independent personas) would correct by more
    naive = _corrected_sd(r[3:], np.diag(np.diag(cov[3:, 3:])))
    assert naive < sd_c
    with pytest.warns(rs.ClusterNote):  # the correction clusters even without n_boot
        auto = rs.disparity(blocks)
    pd.testing.assert_frame_equal(auto, rs.disparity(blocks, cluster="item_id"))


def test_disparity_errors_and_warnings():
    df = with_controls()
    with pytest.raises(ValueError, match=r"control persona\(s\) \['robot'\] do not occur"):
        rs.disparity(df, control=["robot"])
    with pytest.raises(ValueError, match="at least 2 control personas"):
        rs.disparity(df, control=["helper0"])
    clash = df.copy()
    clash.loc[clash.index[0], "persona_group"] = "Race"  # "man" now in Gender and Race
    with pytest.raises(ValueError, match="belong to one 'persona_group'"):
        rs.disparity(clash, control="control")
    flat = df.copy()
    flat.loc[flat.persona_group == "control", "refusal"] = 0
    with pytest.warns(RuntimeWarning, match="do not vary"):
        out = rs.disparity(flat, control="control")
    assert np.isinf(out["disparity"]).all()


def test_disparity_item_bootstrap_equals_resampling_rows():
    # complete blocks: every item under every persona (P2's design), one model
    rng = np.random.default_rng(4)
    personas = {"man": "Gender", "woman": "Gender", "nb": "Gender",
                "h1": "control", "h2": "control", "h3": "control", "h4": "control"}  # fmt: skip
    item_p = rng.beta(1, 3, 60)
    rows = []
    for persona, cat in personas.items():
        shift = 0.0 if cat == "control" else rng.uniform(-0.1, 0.3)
        k = rng.random(60) < np.clip(item_p + shift, 0, 1)
        rows += [(persona, cat, i, int(v)) for i, v in enumerate(k)]
    df = pd.DataFrame(rows, columns=["persona", "persona_group", "item_id", "refusal"])
    n_boot = 60
    out = rs.disparity(df, n_boot=n_boot, cluster="item_id", conf=0.8, seed=11)
    plug_out = rs.disparity(df, n_boot=n_boot, cluster="item_id", conf=0.8, seed=11,
                            estimator="plug-in")  # fmt: skip
    # reference: the same multinomial item weights, applied by repeating rows; for the
    # corrected estimator each draw of an item is its own cluster (item_id, copy)
    codes, items = pd.factorize(df["item_id"])
    w = np.random.default_rng(11).multinomial(
        len(items), np.full(len(items), 1 / len(items)), n_boot
    )
    ratios, plug = [], []
    for r in range(n_boot):
        rep = df.loc[df.index.repeat(w[r][codes])]
        rep = rep.assign(copy=rep.groupby(level=0).cumcount())
        ratios.append(rs.disparity(rep, cluster=["item_id", "copy"])["disparity"].item())
        plug.append(rs.disparity(rep, cluster=None, estimator="plug-in")["disparity"].item())
    lo, hi = np.quantile(ratios, [0.1, 0.9])
    assert out[["ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([lo, hi])
    lo, hi = np.quantile(plug, [0.1, 0.9])
    assert plug_out[["ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([lo, hi])
    assert out.attrs["bootstrap"] == "clusters" and out.attrs["cluster"] == ["item_id"]
    # the default ("auto") clusters by item_id, with a note
    with pytest.warns(rs.ClusterNote, match="disparity: clustering by 'item_id'"):
        auto = rs.disparity(df, n_boot=n_boot, conf=0.8, seed=11)
    pd.testing.assert_frame_equal(auto, out)
    # block= still works for one release, with a FutureWarning (shown to users by default)
    with pytest.warns(FutureWarning, match="block=.*deprecated.*cluster="):
        old = rs.disparity(df, n_boot=n_boot, block="item_id", conf=0.8, seed=11)
    pd.testing.assert_frame_equal(old, out)
    with pytest.raises(ValueError, match="not both"), pytest.warns(FutureWarning):
        rs.disparity(df, n_boot=n_boot, block="item_id", cluster="item_id")
    binom = rs.disparity(df, n_boot=400, seed=1, cluster=None)
    again = rs.disparity(df, n_boot=400, seed=1, cluster=None)
    pd.testing.assert_frame_equal(binom, again)
    assert binom.attrs["bootstrap"] == "binomial"
    assert binom["ci_low"].item() < binom["disparity"].item() < binom["ci_high"].item()
    # without n_boot there is no interval; the plug-in ratio ignores clusters (no note)
    plain = rs.disparity(df, cluster="item_id")
    assert "ci_low" not in plain.columns
    with warnings.catch_warnings():
        warnings.simplefilter("error", rs.ClusterNote)
        rs.disparity(df, estimator="plug-in")
    with pytest.raises(SchemaError, match=r"cluster column\(s\) \['unit'\] not in the table"):
        rs.disparity(df, cluster="unit")


def _disparity_replicates(reps, n_items, effects, n_in_category, rate, seed):
    """``reps`` complete-block tables stacked (column rep), and the true disparity.

    Every item answered once by each persona; logit = base + item effect (sd 1) + persona
    effect; the truth is the ratio of the sds of the population-averaged persona rates.
    """
    from scipy.optimize import brentq
    from scipy.special import expit

    z, wq = np.polynomial.hermite_e.hermegauss(61)
    wq = wq / wq.sum()
    base = brentq(lambda e: float(np.sum(wq * expit(e + z))) - rate, -20, 20)
    eff = np.asarray(effects)
    marg = np.array([np.sum(wq * expit(base + e + z)) for e in eff])
    g = n_in_category
    true = np.std(marg[:g], ddof=1) / np.std(marg[g:], ddof=1)
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.0, (reps, n_items, 1))
    y = (rng.random((reps, n_items, len(eff))) < expit(base + u + eff)).astype(np.int8)
    r, i, j = np.indices(y.shape)
    df = pd.DataFrame({"rep": r.ravel(), "item_id": (r * n_items + i).ravel(),
                       "persona": j.ravel(), "refusal": y.ravel()})  # fmt: skip
    df["persona_group"] = np.where(df["persona"] < g, "G", "control")
    return df, true


@pytest.mark.parametrize(
    "n_items, effects, n_in_category, rate",
    [
        # benchmarks/calibration_rates.py's design: old interval 0.90, corrected 0.95
        (200, [0.0, 0.5, 1.0, -0.5, 0.0, 0.25, -0.25, 0.5, -0.5, 0.1], 4, 0.15),
        # fewer items, more personas: old interval 0.72, corrected 0.94-0.95
        (120, [0.0, 0.6, -0.6, 1.2, 0.3, -0.3, 0.0, 0.3, -0.3, 0.15, -0.15, 0.45, -0.45, 0.2],
         6, 0.10),
    ],
)  # fmt: skip
def test_disparity_interval_covers(n_items, effects, n_in_category, rate):
    # 240 replicates, 300 item-bootstrap draws each: the default interval covers the true
    # ratio 93-97% of the time (Monte Carlo s.e. 0.014), seldom lies wholly below it, and
    # the corrected ratio's median is nearer the truth than the plug-in one's (biased low)
    df, true = _disparity_replicates(240, n_items, effects, n_in_category, rate, seed=n_items)
    out = rs.disparity(df, by="rep", n_boot=300, seed=1, cluster="item_id")
    hit = (out["ci_low"] <= true) & (true <= out["ci_high"])
    assert 0.925 <= hit.mean() <= 0.975, hit.mean()
    assert (out["ci_high"] < true).mean() <= 0.06
    med, med_plugin = np.median(out["disparity"]), np.median(out["disparity_plugin"])
    assert med_plugin < 0.95 * true
    assert abs(np.log(med / true)) < abs(np.log(med_plugin / true))


# ---------------------------------------------------------------------------------------
# rank_agreement
# ---------------------------------------------------------------------------------------


def raters(seed=0, n_models=4, n_personas=8, tie=False):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.05, 0.5, n_personas)
    rows = []
    for m in range(n_models):
        for p in range(n_personas):
            rate = np.clip(base[p] + rng.normal(0, 0.08), 0, 1)
            k = rng.binomial(1, rate, 150)
            if tie and m == 0 and p < 2:
                k = np.zeros(150, dtype=int)  # a tie in model 0's rates
            rows += [(f"model{m}", f"persona{p}", int(v)) for v in k]
    return pd.DataFrame(rows, columns=["model", "persona", "refusal"])


@pytest.mark.parametrize("tie", [False, True])
def test_rank_agreement_matches_scipy_and_pingouin(tie):
    df = raters(tie=tie)
    ra = rs.rank_agreement(df, item="persona", rater="model")
    wide = df.pivot_table(index="model", columns="persona", values="refusal", aggfunc="mean")
    assert len(ra.pairs) == 6
    for _, row in ra.pairs.iterrows():
        ref = stats.kendalltau(wide.loc[row["model_1"]], wide.loc[row["model_2"]])
        assert row["tau"] == pytest.approx(ref.statistic)
        assert row["p_value"] == pytest.approx(ref.pvalue)
        assert row["n_items"] == 8
    long = wide.stack().rename("rate").reset_index()
    fr = pg.friedman(long, dv="rate", within="persona", subject="model")
    conc = ra.concordance.iloc[0]
    assert conc["W"] == pytest.approx(fr["W"].item(), rel=1e-10)
    assert conc["chi2"] == pytest.approx(fr["Q"].item(), rel=1e-10)
    assert conc["p_value"] == pytest.approx(fr["p_unc"].item(), rel=1e-9)
    assert (conc["n_models"], conc["n_personas"], conc["df"]) == (4, 8, 7)
    assert conc["mean_tau"] == pytest.approx(ra.pairs["tau"].mean())
    assert "Kendall's W" in repr(ra)
    holm = rs.rank_agreement(df, adjust="holm").pairs
    assert holm["p_adjusted"].to_numpy() == pytest.approx(
        multipletests(holm["p_value"], method="holm")[1]
    )


def test_kendall_w_closed_forms():
    same = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
                         "persona": list("wxyz") * 3,
                         "refusal": [0, 1, 1, 1] * 3})  # fmt: skip
    # identical rankings (with the same ties): W = 1
    assert rs.rank_agreement(same).concordance["W"].item() == pytest.approx(1.0)
    # two raters with opposite strict rankings: W = 0 and tau = -1
    rows = []
    for m, rates in [("a", [0, 1, 2, 3]), ("b", [3, 2, 1, 0])]:
        for persona, r in zip("wxyz", rates):
            rows += [(m, persona, int(i < r)) for i in range(4)]
    opp = rs.rank_agreement(pd.DataFrame(rows, columns=["model", "persona", "refusal"]))
    assert opp.concordance["W"].item() == pytest.approx(0.0)
    assert opp.pairs["tau"].item() == pytest.approx(-1.0)


def test_rank_agreement_by_group_and_errors(paper):
    ra = rs.rank_agreement(paper, by="task")
    assert ra.concordance["task"].tolist() == ["nli", "politeness", "offensiveness"]
    assert len(ra.pairs) == 3 * 16 * 15 // 2
    # models that never refuse have constant rates: tau undefined, not an error
    assert ra.pairs["tau"].isna().any() and ra.pairs["tau"].notna().any()
    df = raters()
    with pytest.raises(ValueError, match="at least two models"):
        rs.rank_agreement(df[df.model == "model0"])
    gap = df[~((df.model == "model1") & (df.persona == "persona3"))]
    with pytest.raises(ValueError, match=r"1 combination\(s\) have none.*model1.*persona3"):
        rs.rank_agreement(gap)


# ---------------------------------------------------------------------------------------
# clustering by item: cluster="auto", and calibration (coverage / false-positive rates)
# ---------------------------------------------------------------------------------------


def stacked_items(reps, seed, **kw):
    """``reps`` rs.simulate_items tables in one (``rep`` column, item ids unique)."""
    frames, truth = [], None
    n_items = kw.get("n_items", 200)
    for r in range(reps):
        d = rs.simulate_items(seed=seed + r, **kw)
        truth, d.attrs = d.attrs["truth"], {}
        frames.append(d.assign(item_id=d["item_id"] + r * n_items, rep=r))
    return pd.concat(frames, ignore_index=True), truth


def test_refusal_rates_auto_clusters_by_item_id():
    df = rs.simulate_items(n_items=60, k=10, seed=2)
    with pytest.warns(rs.ClusterNote, match="refusal_rates: clustering by 'item_id'"):
        auto = rs.refusal_rates(df, by="task")
    pd.testing.assert_frame_equal(auto, rs.refusal_rates(df, by="task", cluster="item_id"))
    assert auto.attrs["cluster"] == ["item_id"]
    # by item: each group is one item, nothing to cluster within; no note
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", rs.ClusterNote)
        per_item = rs.refusal_rates(df, by="item_id")
        plain = rs.refusal_rates(df.drop(columns="item_id"), by="task")
    assert "n_eff" not in per_item.columns and "n_eff" not in plain.columns
    with pytest.raises(SchemaError, match=r"cluster column\(s\) \['unit'\] not in the table"):
        rs.refusal_rates(df, cluster="unit")


def test_refusal_rates_default_covers_on_clustered_items():
    # three tasks at population-averaged rates 2%, 10%, 50% (item sd 1 on the logit
    # scale), 50 items x 10 answers per task; 400 replicates x 3 intervals
    z, w = np.polynomial.hermite_e.hermegauss(61)
    w = w / w.sum()
    from scipy.optimize import brentq
    from scipy.special import expit

    logit = [brentq(lambda e, t=t: np.sum(w * expit(e + z)) - t, -20, 20)
             for t in (0.02, 0.10, 0.50)]  # fmt: skip
    df, truth = stacked_items(
        400,
        100,
        n_items=150,
        k=10,
        item_sd=1.0,
        item_levels=3,
        intercept=logit[0],
        item_effect=[v - logit[0] for v in logit],
    )
    true = {f"t{i}": truth["marginal_rate_task_persona"][f"t{i}|p0"] for i in range(3)}
    assert list(true.values()) == pytest.approx([0.02, 0.10, 0.50])

    def coverage(res):
        tv = res["task"].astype(str).map(true)
        return float(np.mean((res["ci_low"] <= tv) & (tv <= res["ci_high"])))

    with pytest.warns(rs.ClusterNote):
        default = rs.refusal_rates(df, by=["rep", "task"])
    naive = rs.refusal_rates(df, by=["rep", "task"], cluster=None)
    # Monte Carlo s.e. about 0.0065 at 0.95 over 1,200 intervals
    assert 0.93 <= coverage(default) <= 0.975
    assert coverage(naive) < 0.90  # independent-rows Wilson: about 0.85


def test_persona_effect_clustered_by_hand_and_coverage():
    eff = [0.0, 0.6, 0.3, 0.9, 0.0]
    df, truth = stacked_items(
        400,
        7,
        n_items=150,
        k=10,
        item_sd=1.0,
        item_levels=3,
        intercept=-2.6,
        item_effect=[0.0, -1.0, 1.0],
        row_effect=eff,
    )
    df["setting"] = np.where(df["persona"].astype(str) == "p0", "persona-free", "persona")
    marg = truth["marginal_rate_task_persona"]
    true = {f"t{i}": np.mean([marg[f"t{i}|p{j}"] for j in range(1, 5)]) - marg[f"t{i}|p0"]
            for i in range(3)}  # fmt: skip
    with pytest.warns(rs.ClusterNote, match="persona_effect"):
        out = rs.persona_effect(df, by=["rep", "task"])
    assert out.attrs["method"] == "mover-clustered"
    tv = out["task"].astype(str).map(true)
    cover = float(np.mean((out["ci_low"] <= tv) & (tv <= out["ci_high"])))
    assert 0.93 <= cover <= 0.975  # s.e. about 0.0065 over 1,200 intervals
    # by hand for one group: clustered Wilson limits of each arm (as refusal_rates gives
    # them), the cluster-robust correlation of the two rates, Zou & Donner's MOVER
    one = df[(df.rep == 0) & (df.task == "t2")]
    arms = rs.refusal_rates(one, by="setting", cluster="item_id").set_index("setting")
    (p1, l1, u1), (p2, l2, u2) = (arms.loc[s, ["rate", "ci_low", "ci_high"]]
                                  for s in ("persona", "persona-free"))  # fmt: skip
    cl = one.groupby(["item_id", "setting"], observed=True)["refusal"].agg(["size", "sum"])
    cl = cl.unstack("setting", fill_value=0)
    e1 = cl[("sum", "persona")] - p1 * cl[("size", "persona")]
    e2 = cl[("sum", "persona-free")] - p2 * cl[("size", "persona-free")]
    n1, n2, c = cl[("size", "persona")].sum(), cl[("size", "persona-free")].sum(), len(cl)
    v1 = c / (c - 1) * (e1**2).sum() / n1**2
    v2 = c / (c - 1) * (e2**2).sum() / n2**2
    r = c / (c - 1) * (e1 * e2).sum() / (n1 * n2) / np.sqrt(v1 * v2)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * r * (p1 - l1) * (u2 - p2))
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * r * (u1 - p1) * (p2 - l2))
    row = out[(out.rep == 0) & (out.task == "t2")].iloc[0]
    assert row["correlation"] == pytest.approx(r) and r > 0.1  # items shared by both settings
    assert [row["difference"], row["ci_low"], row["ci_high"]] == pytest.approx([d, lo, hi])
    assert row["design_effect_persona"] == pytest.approx(arms.loc["persona", "design_effect"])
    assert row["n_clusters"] == 50
    # no item_id: Newcombe's independent-samples interval, as before
    plain = rs.persona_effect(df[df.rep == 0].drop(columns="item_id"), by="task")
    assert plain.attrs["method"] == "newcombe" and "correlation" not in plain.columns


def test_cochran_q_false_positive_rate_on_sparse_complete_blocks():
    # 400 null tables: 60 items x 4 conditions at about 3%, item sd 1 (few informative
    # blocks, where chi2 is not trusted); the exact test's size is at most 0.05
    rng = np.random.default_rng(5)
    reps, n_items, k = 400, 60, 4
    eta = -4.0 + rng.normal(0, 1, (reps, n_items, 1))
    y = (rng.random((reps, n_items, k)) < 1 / (1 + np.exp(-eta))).astype(int)
    r, i, j = np.indices(y.shape)
    df = pd.DataFrame({"rep": r.ravel(), "item_id": i.ravel(), "persona": j.ravel(),
                       "refusal": y.ravel()})  # fmt: skip
    out = rs.cochran_q(df, by="rep", method="exact")
    assert (out["method"].isin(["exact", "none"])).all()
    assert out["n_informative"].median() < 20
    size = float(np.mean(np.nan_to_num(out["p_value"], nan=1.0) <= 0.05))
    assert size <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps)  # 0.072
    # under the null the exact p-values are super-uniform: P(p <= a) <= a at every a
    p = np.nan_to_num(out["p_value"].to_numpy(), nan=1.0)
    for a in (0.1, 0.25, 0.5):
        assert np.mean(p <= a) <= a + 2 * np.sqrt(a * (1 - a) / reps)


def test_persona_effect_clustered_edge_cases():
    # one item only: no cluster-robust interval (NaN), with a warning
    df = pd.DataFrame({"item_id": [1] * 8, "setting": ["persona"] * 4 + ["persona-free"] * 4,
                       "refusal": [1, 1, 0, 0, 1, 0, 0, 0]})  # fmt: skip
    with pytest.warns(RuntimeWarning, match="single item_id cluster"):
        out = rs.persona_effect(df, cluster="item_id")
    assert out["difference"].item() == 0.25 and np.isnan(out["ci_low"].item())
    with pytest.raises(ValueError, match="also the setting column or in by"):
        rs.persona_effect(df, cluster="setting")
    with pytest.raises(SchemaError, match="not in the table"):
        rs.persona_effect(df, cluster="unit")
    # items never shared by the two settings: r = 0, each arm's clustered Wilson limits
    two = pd.DataFrame(
        {
            "item_id": np.repeat(np.arange(40), 5),
            "setting": np.where(np.arange(200) < 100, "persona", "persona-free"),
            "refusal": (np.random.default_rng(0).random(200) < 0.3).astype(int),
        }
    )
    res = rs.persona_effect(two, cluster="item_id")
    assert res["correlation"].item() == 0.0
    arms = rs.refusal_rates(two, by="setting", cluster="item_id").set_index("setting")
    p1, l1, u1 = arms.loc["persona", ["rate", "ci_low", "ci_high"]]
    p2, l2, u2 = arms.loc["persona-free", ["rate", "ci_low", "ci_high"]]
    lo = p1 - p2 - np.hypot(p1 - l1, u2 - p2)
    hi = p1 - p2 + np.hypot(u1 - p1, p2 - l2)
    assert [res["ci_low"].item(), res["ci_high"].item()] == pytest.approx([lo, hi])


def test_wilson_bounds_at_zero_and_all_refusals_are_exact():
    # the Wilson interval's lower bound at k = 0 is 0 and its upper at k = n is 1 exactly
    # (floating point gave 3.5e-18, printed as a positive bound and a negative error bar)
    for n in (80, 85, 1234, 102038):
        lo, hi = proportion_ci(np.array([0, n]), np.array([n, n]))
        assert lo[0] == 0.0 and hi[1] == 1.0
    df = rs.simulate_items(n_items=50, k=5, seed=1)
    df["refusal"] = 0
    tab = rs.refusal_rates(df, by="task")  # clustered (item_id repeats)
    assert (tab["ci_low"] == 0.0).all() and (tab["rate"] == 0.0).all()


# --------------------------------------------------------------------------- result object, seeds (issue 13)
def test_rank_agreement_result_object():
    ra = rs.rank_agreement(raters(), item="persona", rater="model")
    tab = ra.to_frame()
    pd.testing.assert_frame_equal(tab, ra.concordance)
    assert tab is not ra.concordance and "p_value" in tab.columns
    s = ra.summary()
    assert isinstance(s, str) and "Kendall's tau-b" in s and "Kendall's W" in s
    html = s._repr_html_()
    assert "<table" in html and "mean_tau" in html
    r = repr(ra)
    assert r.startswith("<RankAgreement") and len(r.splitlines()) <= 3
    assert f"{tab['W'].item():.3f}" in r


def test_seeds_accept_int_none_and_generator():
    rng = np.random.default_rng(0)
    df = pd.DataFrame([(i, p, int(rng.random() < 0.2 + 0.15 * k)) for i in range(40)
                       for k, p in enumerate("abc")], columns=["item_id", "persona", "refusal"])
    kw = {"condition": "persona", "block": "item_id", "method": "permutation", "n_perm": 199}
    p_int = [rs.cochran_q(df, seed=3, **kw)["p_value"].item() for _ in range(2)]
    assert p_int[0] == p_int[1]
    assert rs.cochran_q(df, **kw)["p_value"].item() == rs.cochran_q(df, **kw)["p_value"].item()
    gen = np.random.default_rng(3)
    a, b = (rs.cochran_q(df, seed=gen, **kw)["p_value"].item() for _ in range(2))
    assert a == rs.cochran_q(df, seed=np.random.default_rng(3), **kw)["p_value"].item()
    assert a != b  # the generator advanced
    rs.cochran_q(df, seed=None, **kw)
    with pytest.raises(TypeError, match="seed"):
        rs.cochran_q(df, seed=1.5, **kw)
    with pytest.raises(ValueError, match="conf"):
        rs.refusal_rates(df, conf=95)
