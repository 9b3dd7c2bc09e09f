"""Cochran's Q and rank agreement (refusalstats.agreement).

Reference values come from statsmodels (mcnemar), pingouin (cochran, friedman) and scipy
(kendalltau), computed here on the same data, and from closed forms.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

import refusalstats as rs


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
# cochran_q
# ---------------------------------------------------------------------------------------


@pytest.mark.xdist_group("pingouin")  # one worker imports it (make test: --dist loadgroup)
def test_cochran_q_matches_pingouin():
    import pingouin as pg  # (seconds to import: only where it is used)

    df = complete_blocks()
    out = rs.cochran_q(df, condition="persona", cluster="item_id", by="model", method="chi2")
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


@pytest.mark.xdist_group("pingouin")  # one worker imports it (make test: --dist loadgroup)
def test_cochran_q_blocks_of_several_columns_and_degenerate():
    import pingouin as pg  # (seconds to import: only where it is used)

    df = complete_blocks(seed=2, models=("m",))
    twice = pd.concat([df.assign(prompt="p1"), df.assign(prompt="p2")], ignore_index=True)
    with pytest.raises(ValueError, match=r"more than once.*df\['item_prompt'\] = "
                                         r"df\['item_id'\].*cluster='item_prompt'"):
        rs.cochran_q(twice)
    # a list of columns means two-way clustering elsewhere: refused here, saying how to
    # make the combined block column (#23)
    with pytest.raises(ValueError, match=r"cochran_q: cluster=\['item_id', 'prompt'\] names 2 "
                                         r"columns.*two-way clustering.*df\['item_id_prompt'\] = "
                                         r"df\['item_id'\]\.astype\(str\) \+ '\|' \+ "
                                         r"df\['prompt'\]\.astype\(str\)"):
        rs.cochran_q(twice, cluster=["item_id", "prompt"], method="chi2")
    with pytest.raises(ValueError, match="two-way"), pytest.warns(FutureWarning):
        rs.cochran_q(twice, block=["item_id", "prompt"], method="chi2")
    twice["item_id_prompt"] = twice["item_id"].astype(str) + "|" + twice["prompt"].astype(str)
    out = rs.cochran_q(twice, cluster="item_id_prompt", method="chi2")
    assert out["n_blocks"].item() == 80
    pd.testing.assert_frame_equal(rs.cochran_q(twice, cluster=["item_id_prompt"], method="chi2"), out)
    # cluster='auto' is the one rule (counts.choose_cluster): an item_id that never repeats
    # gives no blocks
    with pytest.raises(ValueError, match="'item_id' by default, which never repeats"):
        rs.cochran_q(twice.assign(item_id=np.arange(len(twice))), cluster="auto")
    ref = pg.cochran(twice.assign(b=twice.item_id.astype(str) + twice.prompt), dv="refusal",
                     within="persona", subject="b")  # fmt: skip
    assert out["Q"].item() == pytest.approx(ref["Q"].item())
    none = rs.cochran_q(df.assign(refusal=0))
    assert np.isnan(none["Q"].item()) and np.isnan(none["p_value"].item())


def test_cochran_q_block_is_a_deprecated_name_of_cluster():
    df = complete_blocks(seed=2, models=("m",)).rename(columns={"item_id": "item"})
    want = rs.cochran_q(df, cluster="item", method="permutation", n_perm=199, seed=4)
    with pytest.warns(FutureWarning, match=r"block=.*deprecated.*cluster="):
        old = rs.cochran_q(df, block="item", method="permutation", n_perm=199, seed=4)
    pd.testing.assert_frame_equal(old, want)
    with pytest.raises(ValueError, match="not both"), pytest.warns(FutureWarning):
        rs.cochran_q(df, cluster="item", block="item")


def test_cochran_q_incomplete_blocks_point_to_the_likelihood_ratio_test(paper):
    with pytest.raises(ValueError, match=r"complete blocks.*rs\.logit\(.*\)\.anova\(\)"):
        rs.cochran_q(paper, by=["model", "task"])
    df = complete_blocks(models=("m",)).iloc[1:]
    with pytest.raises(ValueError, match=r"item_id=0 lacks 1 of 5 persona"):
        rs.cochran_q(df)
    with pytest.raises(ValueError, match="at least two levels"):
        rs.cochran_q(complete_blocks(personas=("a",), models=("m",)))
    with pytest.raises(ValueError, match="different columns"):
        rs.cochran_q(df, condition="persona", cluster="persona")


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


@pytest.mark.xdist_group("pingouin")  # one worker imports it (make test: --dist loadgroup)
@pytest.mark.parametrize("tie", [False, True])
def test_rank_agreement_matches_scipy_and_pingouin(tie):
    import pingouin as pg  # (seconds to import: only where it is used)

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
    kw = {"condition": "persona", "cluster": "item_id", "method": "permutation", "n_perm": 199}
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


def test_cochran_q_auto_blocks_are_the_items_and_none_is_refused():
    rng = np.random.default_rng(3)
    df = pd.DataFrame([(i, c, int(rng.random() < 0.3)) for i in range(30) for c in "abc"],
                      columns=["item_id", "persona", "refusal"])
    pd.testing.assert_frame_equal(rs.cochran_q(df, cluster="auto", method="chi2"),
                                  rs.cochran_q(df, cluster="item_id", method="chi2"))
    with pytest.raises(ValueError, match="needs blocks"):
        rs.cochran_q(df, cluster=None)


def test_cochran_q_auto_without_item_id_names_the_id_like_columns():
    df = rs.simulate_items(n_items=90, k=5, intercept=-2.5, row_effect=0.3, seed=3)
    df = df.rename(columns={"item_id": "prompt_id"})
    with pytest.raises(ValueError, match=r"lacks; column\(s\) that look like item ids: "
                                         r"\['prompt_id'\]: pass cluster='prompt_id'"):
        rs.cochran_q(df, by="task")
    assert rs.cochran_q(df, by="task", cluster="prompt_id")["n_blocks"].tolist() == [30, 30, 30]
