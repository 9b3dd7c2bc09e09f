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
    """statsmodels' binomial GLM on the covariate-pattern counts: the same likelihood, MLE
    and Wald intervals as its row-level logit on the 100,000 rows (#23: 1 s instead of 46)."""
    sm = pytest.importorskip("statsmodels.api")
    smf = pytest.importorskip("statsmodels.formula.api")
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
    counts = (fit_df.groupby(["persona", "prompt", "task", "model"], observed=True)["refusal"]
              .agg(refusals="sum", n="size").reset_index())
    counts["kept"] = counts["n"] - counts["refusals"]
    res = smf.glm(formula.replace("refusal ~", "refusals + kept ~"), counts,
                  family=sm.families.Binomial()).fit(tol=1e-12)
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


# ------------------------------------------------------------------ marginal (population-averaged) truth
def test_truth_is_serialisable_with_string_keys():
    import json

    df = rs.simulate_paper(scale=0.01, seed=3)
    truth = df.attrs["truth"]
    text = json.dumps(truth)  # raises on tuple keys / numpy values
    assert "Llama2-7B|nli" in truth["offsets"] and "Llama2-7B|nli" in truth["target_rates"]
    assert "Llama2-7B|nli" in truth["marginal"]["rates"] and len(truth["marginal"]["rates"]) == 48
    assert json.loads(text)["marginal"]["separated"] == ["model[T.Qwen2.5-32B]"]


def test_marginal_rates_by_independent_monte_carlo_integration():
    """Target: marginal["rates"] (item intercept integrated out), checked against a
    Monte Carlo average over u ~ N(0, item_sd^2) computed here from the conditional truth."""
    df = rs.simulate_paper(scale=0.02, seed=4, calibrate="table7", item_sd=1.3)
    truth = df.attrs["truth"]
    coef = truth["coefficients"]
    d = df[df["model"] == "Llama2-7B"]
    eta = np.full(len(d), truth["intercept"])
    for f in ("persona", "prompt", "task", "model"):
        eta += d[f].astype(str).map(lambda lv, f=f: coef.get(f"{f}[T.{lv}]", 0.0)).to_numpy()
    u = np.random.default_rng(0).normal(0, 1.3, 4000)
    p = (1 / (1 + np.exp(-(eta[:, None] + u[None, :])))).mean(1)
    for task in ("nli", "politeness", "offensiveness"):
        mc = p[(d["task"] == task).to_numpy()].mean()
        assert truth["marginal"]["rates"][f"Llama2-7B|{task}"] == pytest.approx(mc, abs=0.004)
    # without an item intercept the marginal truth is the conditional truth
    df0 = rs.simulate_paper(scale=0.02, seed=4, calibrate="table7", item_sd=0.0)
    m0 = df0.attrs["truth"]["marginal"]
    for k, v in df0.attrs["truth"]["coefficients"].items():
        assert m0["coefficients"][k] == pytest.approx(v, abs=1e-6), k
    assert m0["intercept"] == pytest.approx(df0.attrs["truth"]["intercept"], abs=1e-6)


def test_marginal_coefficients_equal_statsmodels_weighted_fit():
    """Target: marginal["coefficients"], recomputed by statsmodels' GLM on the marginal cell
    rates with the design's cell counts as variance weights (the same population limit)."""
    sm = pytest.importorskip("statsmodels.api")
    from scipy.special import expit

    df = rs.simulate_paper(scale=0.02, seed=8, calibrate="table7", item_sd=1.0)
    truth = df.attrs["truth"]
    coef = truth["coefficients"]
    cells = df.groupby(["persona", "prompt", "task", "model"], observed=True).size().rename("n").reset_index()
    eta = np.full(len(cells), truth["intercept"])
    for f in ("persona", "prompt", "task", "model"):
        eta += cells[f].astype(str).map(lambda lv, f=f: coef.get(f"{f}[T.{lv}]", 0.0)).to_numpy()
    z, w = np.polynomial.hermite_e.hermegauss(40)
    cells["p"] = (expit(eta[:, None] + z[None, :]) * (w / w.sum())[None, :]).sum(1)
    X = pd.get_dummies(cells[["persona", "prompt", "task", "model"]].astype(str), prefix_sep="=")
    X = X.drop(columns=[f"{f}={lv}" for f, lv in PAPER_REFERENCE.items()]).astype(float)
    X.insert(0, "Intercept", 1.0)
    res = sm.GLM(cells["p"], X, family=sm.families.Binomial(), var_weights=cells["n"]).fit(tol=1e-12)
    marg = truth["marginal"]
    assert res.params["Intercept"] == pytest.approx(marg["intercept"], abs=1e-5)
    for col, v in res.params.items():
        if col == "Intercept":
            continue
        f, lv = col.split("=", 1)
        assert marg["coefficients"][f"{f}[T.{lv}]"] == pytest.approx(v, abs=1e-5), col


def test_pooled_logit_recovers_marginal_not_conditional_coefficients():
    """A pooled fit (no item term) targets marginal["coefficients"]; the conditional
    coefficients (which the hierarchical model with (1|item_id) targets) are attenuated
    by the item intercept and lie far outside its cluster-robust intervals."""
    df = rs.simulate_paper(scale=0.05, seed=12, calibrate="table7", item_sd=1.5)
    truth = df.attrs["truth"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = rs.logit("refusal ~ persona + prompt + task + model", df, reference=PAPER_REFERENCE,
                     cluster="item_id", progress=False)
    marg = truth["marginal"]["coefficients"]
    terms = [t for t in ("task[T.offensiveness]", "task[T.politeness]", "persona[T.Black person]",
                         "persona[T.White person]", "prompt[T.p6]", "model[T.Llama2-7B]")]
    z_marg = np.array([(f.params[t] - marg[t]) / f.bse[t] for t in terms])
    z_cond = np.array([(f.params[t] - truth["coefficients"][t]) / f.bse[t] for t in terms])
    assert np.abs(z_marg).max() < 3.5, dict(zip(terms, z_marg))
    # the big effects: the conditional truth is many standard errors away
    big = [0, 2, 3]  # task[T.offensiveness] (4.16), Black person (2.62), White person (2.18)
    assert np.abs(z_cond[big]).min() > 4, dict(zip(terms, z_cond))


# ------------------------------------------------------------------ the full study: persona-free, controls, answers
#: Small enough to keep the module fast; the full-size table is checked in test_full_size_and_columns.
STUDY_SCALE = 0.1


@pytest.fixture(scope="module")
def study():
    return rs.simulate_paper(scale=STUDY_SCALE, seed=7, persona_free=True, controls=True,
                             answer_text=True)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: str for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})


def test_options_leave_the_persona_rows_unchanged(study):
    base = rs.simulate_paper(scale=STUDY_SCALE, seed=7)
    got = study.iloc[:len(base)][list(base.columns)].reset_index(drop=True)
    assert list(study.columns) == [*base.columns[:-1], "design", "refusal", "response"]
    # categories differ (the study adds levels): compare values, as strings (check_categorical=False
    # compares the same values but takes seconds)
    pd.testing.assert_frame_equal(_plain(base), _plain(got))
    assert (study["setting"].iloc[:len(base)] == "persona").all()
    assert (study["design"].iloc[:len(base)] == "p1").all()
    rs.validate(study)


def test_persona_free_rates_follow_p1_section_4_4():
    """Target: each model's persona-free offensiveness rate = Table 1 minus P1's persona
    effect (12.38, 14.08, 17.27, 13.15, 3.78 pp), 0 for the six models refusing in
    neither setting; exact_rates keeps each cell within one refusal of its expectation."""
    from refusalstats.simulate import PAPER_PERSONA_FREE_DELTA, PAPER_REFUSE_IN_NEITHER

    df = rs.simulate_paper(scale=0.1, seed=3, persona_free=True)
    free = df[df["setting"] == "persona-free"]
    assert set(free["task"].astype(str)) == {"offensiveness"}
    assert (free["persona"] == "none").all()
    n_items = round(4701 * 0.1)
    assert len(free) == 16 * 9 * n_items
    per_item = free.groupby(["model", "item_id"], observed=True)["prompt"].nunique()
    assert (per_item == 9).all()
    rate = free.groupby("model", observed=True)["refusal"].mean()
    n = 9 * n_items
    table1_off = {m: v[2] for m, v in PAPER_TABLE1.items()}
    for m, d in PAPER_PERSONA_FREE_DELTA.items():
        assert abs(100 * rate[m] - (table1_off[m] - d)) < 100 / n + 1e-9, m
    for m in PAPER_REFUSE_IN_NEITHER:
        assert rate[m] == 0, m
    # the published persona effects, measured as persona minus persona-free rate
    pers = df[(df["setting"] == "persona") & (df["task"] == "offensiveness")]
    diff = 100 * (pers.groupby("model", observed=True)["refusal"].mean() - rate)
    # (exact rates in both settings: 12.374 and 17.277 at this scale)
    assert diff["Llama2-13B"] == pytest.approx(12.38, abs=0.1)
    assert diff["Qwen1.5-32B"] == pytest.approx(17.27, abs=0.1)
    # persona-free rows share the persona rows' items
    assert set(free["item_id"]) <= set(pers["item_id"])


def test_complete_design_has_complete_blocks_and_control_personas(study):
    from refusalstats.design import CONTROL_PERSONAS

    comp = study[study["design"] == "complete"]
    assert (comp["setting"] == "persona").all()
    n_items = 3 * max(5, round(100 * STUDY_SCALE))
    assert len(comp) == 16 * 25 * n_items
    cells = comp.groupby(["model", "item_id", "persona"], observed=True).size()
    assert (cells == 1).all() and len(cells) == 16 * 25 * n_items
    ctrl = comp[comp["persona_group"] == "control"]
    assert set(ctrl["persona"].astype(str)) == {p.name for p in CONTROL_PERSONAS}
    truth = study.attrs["truth"]["controls"]["effects"]
    assert np.std(list(truth.values()), ddof=1) == pytest.approx(0.15)
    # P2's tests run on it: Cochran's Q across personas and the disparity ratio
    q = rs.cochran_q(comp, condition="persona", by="model")
    assert len(q) == 16 and q["p_value"].notna().sum() >= 12
    disp = rs.disparity(comp, control="control")
    assert list(disp["persona_group"].astype(str)) == ["Gender", "Race", "Religion", "Disability"]


def test_answer_text_agrees_with_refusal_at_the_documented_rate():
    """Target: the default detector's sensitivity 1 - 0.03 and specificity 1 - 0.002
    (response_error), checked within 4 binomial standard errors; every text the
    simulator writes is flagged exactly as intended."""
    from refusalstats.detect import flag_refusals
    from refusalstats.simulate import RESPONSE_ERROR

    # a tenth of the study: 4 binomial s.e. are 0.43 points (miss), 0.035 (false alarm)
    df = rs.simulate_paper(scale=0.1, seed=2, persona_free=True, controls=True, answer_text=True)
    flag = flag_refusals(df).to_numpy()
    r = df["refusal"].to_numpy().astype(bool)
    miss, fa = RESPONSE_ERROR
    sens, spec = flag[r].mean(), 1 - flag[~r].mean()
    assert abs(sens - (1 - miss)) < 4 * np.sqrt(miss * (1 - miss) / r.sum()), sens
    assert abs(spec - (1 - fa)) < 4 * np.sqrt(fa * (1 - fa) / (~r).sum()), spec
    assert df.attrs["truth"]["responses"] == {"miss": miss, "false_alarm": fa, "detector": "default"}
    # a perfect text (no errors) is read back exactly
    clean = rs.simulate_paper(scale=0.05, seed=4, persona_free=True, controls=True, answer_text=True,
                              response_error=(0.0, 0.0))
    assert (flag_refusals(clean).to_numpy() == clean["refusal"].to_numpy().astype(bool)).all()
    # and P1's own prefix list reads the texts too (it misses 'As an AI' refusals)
    paper = rs.detector("paper")(clean["response"].cat.categories)
    assert 0 < paper.sum() < len(paper)


def test_option_errors():
    with pytest.raises(ValueError, match="response_error"):
        rs.simulate_paper(scale=0.01, answer_text=True, response_error=(0.1,))
    with pytest.raises(ValueError, match="response_error"):
        rs.simulate_paper(scale=0.01, answer_text=True, response_error=(1.5, 0))
    with pytest.raises(ValueError, match="control_items"):
        rs.simulate_paper(scale=0.01, controls=True, control_items=0)
