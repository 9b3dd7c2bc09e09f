"""The paper-calibrated simulator: sizes, Table 1 calibration, Table 7 recovery."""

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.simulate import PAPER_REFERENCE, PAPER_TABLE1, _systematic_draw, paper_table1


@pytest.fixture(scope="module")
def full():
    return rs.simulate_paper(scale=1.0, seed=0)


def test_full_size_and_columns(full):
    assert len(full) == 2_032_160
    assert list(full.columns) == ["item_id", "model", "task", "persona", "persona_group", "prompt",
                                  "response_type", "setting", "refusal"]
    assert full["model"].nunique() == 16 and full["persona"].nunique() == 15
    per_task = full[full["model"] == "Llama2-7B"]["task"].value_counts().to_dict()
    assert per_task == {"nli": 30000, "politeness": 50000, "offensiveness": 47010}
    rs.validate(full)
    assert full.memory_usage(deep=True).sum() < 200e6


def test_table1_calibration_within_half_a_point(full):
    got = full.groupby(["model", "task"], observed=True)["refusal"].mean().rename("got").reset_index()
    t1 = paper_table1().merge(got, on=["model", "task"])
    assert len(t1) == 48
    diff_pp = 100 * (t1["got"] - t1["rate"].fillna(0.0)).abs()
    assert diff_pp.max() < 0.5, t1.assign(diff=diff_pp).sort_values("diff").tail()
    # zero and blank cells of Table 1 have no refusals at all (the paper's separation)
    zero = t1[t1["rate"].fillna(0.0) == 0]
    assert (zero["got"] == 0).all()
    # the overall rate is Table 1's row-weighted mean
    assert abs(full["refusal"].mean() - full.attrs["truth"]["overall_rate"]) < 0.001


def test_systematic_draw_keeps_marginals():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.6, 40)
    cell = np.repeat([0, 1], 20)
    draws = np.array([_systematic_draw(p, cell, rng) for _ in range(3000)])
    # marginal probability of each row equals p (binomial se <= 0.009; 5 se bound)
    assert np.abs(draws.mean(0) - p).max() < 0.045
    # cell totals are the floor or ceiling of their expectation
    for c in (0, 1):
        tot = draws[:, cell == c].sum(1)
        e = p[cell == c].sum()
        assert set(np.unique(tot)) <= {np.floor(e), np.ceil(e)}


def test_table7_recovery_row_level_statsmodels():
    sm = pytest.importorskip("statsmodels.formula.api")
    df = rs.simulate_paper(scale=0.05, seed=11, calibrate="table7", item_sd=0.0)
    truth = df.attrs["truth"]
    assert truth["calibrate"] == "table7" and truth["offsets"] == {}
    never = df.groupby("model", observed=True)["refusal"].sum()
    separated = [m for m, s in never.items() if s == 0]
    assert {"Qwen2.5-7B", "Qwen2.5-32B"} <= set(separated)
    fit_df = df[~df["model"].isin(separated)].copy()
    for c in ("persona", "prompt", "task", "model"):
        fit_df[c] = fit_df[c].astype(str)
    ref = PAPER_REFERENCE
    formula = (f"refusal ~ C(persona, Treatment('{ref['persona']}')) + C(task, Treatment('{ref['task']}'))"
               f" + C(prompt, Treatment('{ref['prompt']}')) + C(model, Treatment('{ref['model']}'))")
    res = sm.logit(formula, fit_df).fit(disp=0, maxiter=100)
    ci = res.conf_int(0.01)
    covered, n_terms = 0, 0
    for name in res.params.index:
        if name == "Intercept":
            t_val = truth["intercept"]
        else:
            factor = name.split(",")[0][2:]
            level = name.split("[T.")[1].rstrip("]")
            t_val = truth["coefficients"][f"{factor}[T.{level}]"]
        n_terms += 1
        covered += ci.loc[name, 0] <= t_val <= ci.loc[name, 1]
    assert n_terms == 1 + 14 + 2 + 8 + (15 - len(separated))
    assert covered / n_terms >= 0.95, (covered, n_terms)


def test_scale_and_errors():
    small = rs.simulate_paper(scale=0.01, seed=2)
    assert len(small) == 16 * 10 * (30 + 50 + 47)
    assert set(small["model"].cat.categories) == set(PAPER_TABLE1)
    with pytest.raises(ValueError, match="calibrate"):
        rs.simulate_paper(calibrate="table9")
    with pytest.raises(ValueError, match="item_sd"):
        rs.simulate_paper(item_sd=-1)


def test_reproducible():
    a = rs.simulate_paper(scale=0.01, seed=5)
    b = rs.simulate_paper(scale=0.01, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a["refusal"].equals(rs.simulate_paper(scale=0.01, seed=6)["refusal"])
