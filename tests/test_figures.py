"""Figure functions of the report (``refusalstats.plot``) on small tables with known counts.

Expected rates come from pandas counts in the test, expected intervals from statsmodels'
``proportion_confint(method="wilson")``; the figures are checked through their artists
(image arrays, text annotations, error-bar segments, tick labels).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from statsmodels.stats.proportion import proportion_confint

import refusalstats as rs

MODELS = ["A-7B", "B-13B"]
TASKS = ["nli", "offensiveness"]
PERSONAS = [("Man", "Gender"), ("Woman", "Gender"), ("Black person", "Race"),
            ("Atheist", "Religion")]
PROMPTS = [("p1", "unforced"), ("p4", "semi-forced"), ("p7", "forced")]


def small_table(persona_free: bool = True) -> pd.DataFrame:
    """Every cell of 20 rows with a refusal count that differs across the factors."""
    rows = []
    for mi, m in enumerate(MODELS):
        for ti, t in enumerate(TASKS):
            for pi, (p, g) in enumerate(PERSONAS):
                for qi, (q, rt) in enumerate(PROMPTS):
                    k = (3 * mi + 2 * ti + pi + qi) % 11
                    rows += [{"model": m, "task": t, "persona": p, "persona_group": g, "prompt": q,
                                  "response_type": rt, "setting": "persona", "refusal": int(i < k)}
                             for i in range(20)]
            if persona_free:
                for qi, (q, rt) in enumerate(PROMPTS):
                    k = (mi + ti + qi) % 4
                    rows += [{"model": m, "task": t, "persona": "none", "persona_group": "none",
                                  "prompt": q, "response_type": rt, "setting": "persona-free",
                                  "refusal": int(i < k)} for i in range(20)]
    df = pd.DataFrame(rows)
    for c in ("model", "task", "persona", "persona_group", "prompt", "response_type", "setting"):
        # the design's order as explicit levels (plain strings would be sorted, as R does)
        df[c] = pd.Categorical(df[c], categories=pd.unique(df[c]))
    return rs.validate(df)


def wilson(k, n):
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def fmt(x: float) -> str:
    return rs.plot._pct(x)


def cell_texts(ax) -> dict[tuple[int, int], str]:
    """Heatmap annotations keyed by (row, col) position."""
    out = {}
    for t in ax.texts:
        x, y = t.get_position()
        out[(round(y), round(x))] = t.get_text()
    return out


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return small_table()


def test_rates_heatmap_cells_match_counts_and_wilson(table):
    fig = rs.plot.rates(table[table["setting"] == "persona"])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "task" and ax.get_ylabel() == "model"
    assert fig.axes[1].get_ylabel() == "refusal rate (%)"  # colour bar with units
    img = ax.images[0].get_array()
    assert img.shape == (len(MODELS), len(TASKS))
    texts = cell_texts(ax)
    assert len(texts) == len(MODELS) * len(TASKS)
    d = table[table["setting"] == "persona"]
    for i, m in enumerate(MODELS):
        for j, t in enumerate(TASKS):
            sub = d[(d["model"] == m) & (d["task"] == t)]
            k, n = int(sub["refusal"].sum()), len(sub)
            assert img[i, j] == pytest.approx(100 * k / n)
            lo, hi = wilson(k, n)
            rate_line, ci_line = texts[(i, j)].split("\n")
            assert rate_line == fmt(k / n)
            assert ci_line == f"{fmt(lo)}–{fmt(hi)}"  # the CI is drawn in every cell
    assert [t.get_text() for t in ax.get_yticklabels()] == MODELS


def test_rates_accepts_a_rate_table_and_names_missing_columns(table):
    tab = rs.plot._rate_table(table, ["model", "task"])
    fig = rs.plot.rates(tab)
    assert fig.axes[0].images[0].get_array().shape == (2, 2)
    with pytest.raises(KeyError, match="ci_low"):
        rs.plot.rates(tab.drop(columns=["ci_low"]))
    with pytest.raises(KeyError, match="'nope'"):
        rs.plot.rates(table, row="nope")


def _errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_persona_vs_free_points_and_ci_whiskers(table):
    fig = rs.plot.persona_vs_free(table)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("task:")]
    assert len(panels) == len(TASKS)
    for ax, t in zip(panels, TASKS):
        assert ax.get_xlabel() == "refusal rate (%)"
        conts = _errorbars(ax)
        assert [c.get_label() for c in conts] == ["persona", "persona-free"]
        for c, setting in zip(conts, ["persona", "persona-free"]):
            x, _ = c.lines[0].get_data()
            assert len(x) == len(MODELS)
            segs = c.lines[2][0].get_segments()  # horizontal CI whiskers
            for xm, seg, m in zip(x, segs, MODELS):
                sub = table[(table["task"] == t) & (table["model"] == m)
                            & (table["setting"] == setting)]
                k, n = int(sub["refusal"].sum()), len(sub)
                lo, hi = wilson(k, n)
                assert xm == pytest.approx(100 * k / n)
                assert sorted([seg[0][0], seg[1][0]]) == pytest.approx([100 * lo, 100 * hi])


def test_persona_vs_free_needs_both_settings(table):
    with pytest.raises(ValueError, match="persona-free"):
        rs.plot.persona_vs_free(table[table["setting"] == "persona"])
    with pytest.raises(KeyError, match="setting"):
        rs.plot.persona_vs_free(table.drop(columns=["setting"]))


def test_personas_points_by_group_with_persona_free_baseline(table):
    fig = rs.plot.personas(table)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("task:")]
    assert len(panels) == len(TASKS)
    ax = panels[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(p for p, _ in PERSONAS)  # persona-free row not a persona
    conts = _errorbars(ax)
    assert [c.get_label() for c in conts] == ["Gender", "Race", "Religion"]
    assert sum(len(c.lines[0].get_data()[0]) for c in conts) == len(PERSONAS)
    # the dashed persona-free line sits at the pooled persona-free rate of that task
    free = table[(table["setting"] == "persona-free") & (table["task"] == TASKS[0])]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert dashed[0].get_xdata()[0] == pytest.approx(100 * free["refusal"].mean())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "persona-free 95% CI" in legend


def test_persona_heatmap_cells_and_task_filter(table):
    fig = rs.plot.persona_heatmap(table, task="nli")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (len(MODELS), len(PERSONAS))
    assert ax.get_xlabel() == "persona" and ax.get_ylabel() == "model"
    texts = cell_texts(ax)
    assert len(texts) == len(MODELS) * len(PERSONAS)
    sub = table[(table["task"] == "nli") & (table["model"] == "A-7B") & (table["persona"] == "Man")]
    lo, hi = wilson(int(sub["refusal"].sum()), len(sub))
    assert texts[(0, 0)].split("\n")[1] == f"{fmt(lo)}–{fmt(hi)}"
    with pytest.raises(ValueError, match="'politeness'"):
        rs.plot.persona_heatmap(table, task="politeness")


def test_response_types_one_heatmap_per_task(table):
    fig = rs.plot.response_types(table[table["setting"] == "persona"])
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == len(TASKS)
    for ax in heat:
        assert ax.images[0].get_array().shape == (len(MODELS), len(PROMPTS))
        assert ax.get_xlabel() == "response type"
        assert [t.get_text() for t in ax.get_xticklabels()] == [rt for _, rt in PROMPTS]
        assert len(cell_texts(ax)) == len(MODELS) * len(PROMPTS)
    # one shared colour scale
    assert len({ax.images[0].norm.vmax for ax in heat}) == 1


W2_TABLE = pd.DataFrame({
    "input": ["task", "model", "prompt"], "n_partitions": [3, 16, 9],
    "iota": [0.20, 0.41, 0.01], "ci_low": [0.18, 0.40, 0.005], "ci_high": [0.22, 0.42, 0.015],
    "null_mean": [0.001, 0.002, 0.004], "null_q95": [0.002, 0.004, 0.02],
})


def test_w2_bars_sorted_with_ci_and_null_band():
    fig = rs.plot.w2(W2_TABLE)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("W2 sensitivity index")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["model", "task", "prompt"]
    bars = [p for p in ax.patches if p.get_zorder() == 2]
    assert [b.get_height() for b in bars] == pytest.approx([0.41, 0.20, 0.01])
    nulls = [p for p in ax.patches if p.get_zorder() == 0]
    assert [b.get_height() for b in nulls] == pytest.approx([0.004, 0.002, 0.02])
    (c,) = [c for c in ax.collections if c.get_gid() == "ci"]
    segs = c.get_segments()
    got = np.array([sorted([s[0][1], s[1][1]]) for s in segs])
    np.testing.assert_allclose(got, [[0.40, 0.42], [0.18, 0.22], [0.005, 0.015]])


def test_w2_interval_that_excludes_the_estimate():
    # the given-data estimator is biased upward, so a bootstrap CI can lie above the estimate
    tab = W2_TABLE.assign(iota=[0.018, 0.41, 0.01], ci_low=[0.022, 0.40, 0.005],
                          ci_high=[0.096, 0.42, 0.015])
    ax = rs.plot.w2(tab).axes[0]
    (c,) = [c for c in ax.collections if c.get_gid() == "ci"]
    got = sorted(sorted([s[0][1], s[1][1]]) for s in c.get_segments())
    np.testing.assert_allclose(got, [[0.005, 0.015], [0.022, 0.096], [0.40, 0.42]])


def test_w2_takes_the_result_of_w2_sensitivity():
    from refusalstats.sensitivity import w2_sensitivity

    df = small_table(persona_free=False)
    res = w2_sensitivity(df, inputs=["model", "persona"], n_boot=50, n_perm=50, progress=False)
    fig = rs.plot.w2(res)
    bars = [p for p in fig.axes[0].patches if p.get_zorder() == 2]
    assert sorted(b.get_height() for b in bars) == pytest.approx(sorted(res.table["iota"]))


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_w2_legend_names_what_is_drawn():
    """One legend entry per drawn element, the interval named as the result computed it."""
    from matplotlib.container import ErrorbarContainer

    ax = rs.plot.w2(W2_TABLE.drop(columns=["null_mean", "null_q95"])).axes[0]
    assert _legend(ax) == ["ι (value above the bar)", "95% bootstrap CI ([low, high] above the bar)"]
    tab = W2_TABLE.assign(p_value=[0.01, 0.01, 0.4])
    tab.attrs["interval"] = "80% percentile bootstrap"
    ax = rs.plot.w2(tab).axes[0]
    assert _legend(ax) == [
        "ι (value above the bar)", "80% percentile bootstrap CI ([low, high] above the bar)",
        "permutation null, 0 to 95% quantile", "null mean (bias)",
        "~ null: not distinguishable from the permutation null (p > 0.05)"]
    assert len([p for p in ax.patches if p.get_gid() == "null-like"]) == 1
    # the CI entry is drawn as an error bar (whisker with caps), like the intervals
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)


def test_w2_result_plot_is_drawn_by_plot_w2(monkeypatch):
    """W2SensitivityResult.plot draws with rs.plot.w2 (one home for figures), in the
    inputs' order, into a given axes, with the result's interval in the legend."""
    from matplotlib.figure import Figure

    from refusalstats.sensitivity import w2_sensitivity

    df = small_table(persona_free=False)
    res = w2_sensitivity(df, inputs=["persona", "model"], n_boot=40, n_perm=20, conf=0.9,
                         ci="bca", progress=False)
    ax = Figure().subplots()
    fig = res.plot(ax=ax)
    assert fig is ax.figure and fig.axes == [ax]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["persona", "model"]
    assert _legend(ax)[1] == "90% BCa bootstrap CI ([low, high] above the bar)"
    calls = []
    monkeypatch.setattr(rs.plot, "w2", lambda *a, **k: calls.append((a, k)) or "drawn")
    assert res.plot(sort=True) == "drawn"
    assert calls[0][0] == (res,) and calls[0][1]["sort"] is True


COEF = pd.DataFrame({
    "term": ["Intercept", "a[T.x]", "a[T.y]", "b[T.u]", "b[T.v]", "b[T.w]"],
    "estimate": [-2.0, 1.5, 0.3, -0.8, -3.0, 0.9],
    "ci_low": [-2.2, 1.2, -0.1, -1.0, -3.5, 0.1],
    "ci_high": [-1.8, 1.8, 0.7, -0.6, -2.5, 1.7],
    "p_value": [1e-9, 1e-6, 0.2, 1e-4, 1e-8, 0.03],
})


def test_coefficients_forest_top_k_and_significance():
    fig = rs.plot.coefficients(COEF, top_k=2)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # two most positive, then two most negative; no intercept; readable names
    assert labels == ["a: x", "b: w", "b: u", "b: v"]
    conts = _errorbars(ax)
    assert len(conts) == 4
    ests = [c.lines[0].get_xdata()[0] for c in conts]
    assert ests == pytest.approx([1.5, 0.9, -0.8, -3.0])
    spans = [sorted([c.lines[2][0].get_segments()[0][0][0], c.lines[2][0].get_segments()[0][1][0]])
             for c in conts]
    np.testing.assert_allclose(spans, [[1.2, 1.8], [0.1, 1.7], [-1.0, -0.6], [-3.5, -2.5]])
    # hollow marker for p >= 0.01 (b[T.w], p = 0.03), filled otherwise
    hollow = [c.lines[0].get_markerfacecolor() == "white" for c in conts]
    assert hollow == [False, True, False, False]
    assert "log-odds" in ax.get_xlabel()
    with pytest.raises(ValueError, match="top_k"):
        rs.plot.coefficients(COEF, top_k=0)
    with pytest.raises(KeyError, match="estimate"):
        rs.plot.coefficients(COEF.drop(columns=["estimate"]))


def test_coefficients_from_a_logit_fit():
    from refusalstats import logit

    df = small_table(persona_free=False)
    fit = logit("refusal ~ persona + model", df, penalty="firth", progress=False)
    fig = rs.plot.coefficients(fit, top_k=5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    tab = fit.coef_table()
    assert len(labels) == len(tab) - 1  # every non-intercept term, fewer than 2 x top_k


def test_hierarchical_effects_panels_and_hdis():
    eff = pd.DataFrame({
        "model": ["A", "A", "A", "B", "B", "B"], "persona": ["x", "y", "z"] * 2,
        "effect": [0.5, -0.1, 0.0, 1.0, -0.6, 0.2],
        "ci_low": [0.1, -0.4, -0.3, 0.6, -0.9, -0.1],
        "ci_high": [0.9, 0.2, 0.3, 1.4, -0.3, 0.5],
    })
    eff.attrs["interval"] = "90% HDI"
    fig = rs.plot.hierarchical_effects(eff)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["A", "B"]
    assert panels[0].get_xlabel() == "effect (log-odds), 90% HDI"
    for ax, g in zip(panels, ["A", "B"]):
        conts = _errorbars(ax)
        assert len(conts) == 3
        sub = eff[eff["model"] == g]
        spans = [sorted([s[0][0], s[1][0]]) for c in conts for s in c.lines[2][0].get_segments()]
        np.testing.assert_allclose(spans, sub[["ci_low", "ci_high"]].to_numpy())
        filled = [c.lines[0].get_markerfacecolor() != "white" for c in conts]
        assert filled == [bool(lo > 0 or hi < 0) for lo, hi in
                          zip(sub["ci_low"], sub["ci_high"])]
    with pytest.raises(rs.SchemaError, match="'ci_low'"):
        rs.plot.hierarchical_effects(eff.drop(columns=["ci_low"]))


def test_palette_is_okabe_ito():
    fig = rs.plot.personas(small_table(persona_free=False), facet=None)
    colours = {matplotlib.colors.to_hex(c.lines[0].get_color()).upper()
               for c in _errorbars(fig.axes[0])}
    assert colours <= {c.upper() for c in rs.plot.OKABE_ITO}


def test_coefficients_on_the_odds_scale():
    tab = pd.DataFrame({"term": ["a", "b"], "estimate": [1.0, -0.5], "ci_low": [0.5, -0.9],
                        "ci_high": [1.5, -0.1], "p_value": [0.001, 0.02]})
    fig = rs.plot.coefficients(tab, top_k=1, scale="odds")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(ax.lines[0].get_xdata()[0], np.exp(1.0))  # 'a' at exp(1)
    np.testing.assert_allclose(ax.lines[3].get_xdata()[0], np.exp(-0.5))  # 'b' at exp(-0.5)
    assert any(np.allclose(line.get_xdata(), [1.0, 1.0]) for line in ax.lines)  # line at OR 1
    with pytest.raises(ValueError, match="scale must be"):
        rs.plot.coefficients(tab, scale="probability")


def test_coefficients_one_panel_per_factor_with_its_own_axis():
    tab = COEF.assign(separated=[False, False, False, False, True, False])
    fig = rs.plot.coefficients(tab, top_k=10, by_factor=True, reference={"a": "r", "b": "s"})
    a, b = fig.axes[:2]
    assert [a.get_title(loc="left"), b.get_title(loc="left")] == ["a (vs. r)", "b (vs. s)"]
    # each panel lists its factor's levels only, all of them (fewer than 2 x top_k), sorted
    assert [t.get_text() for t in a.get_yticklabels()] == ["x", "y"]
    assert [t.get_text() for t in b.get_yticklabels()] == ["w", "u", "v (separated)"]
    assert [c.lines[0].get_xdata()[0] for c in _errorbars(b)] == pytest.approx([0.9, -0.8, -3.0])
    # own axes: the persona-like panel is not stretched to the other factor's range
    assert a.get_xlim()[0] > -1.0 and b.get_xlim()[0] < -3.4


def test_hierarchical_effects_probability_scale_and_unassessable_cells():
    eff = pd.DataFrame({
        "model": ["A", "A", "B", "B"], "persona": ["x", "y"] * 2,
        "effect": [0.5, -0.5, 0.8, 0.7], "ci_low": [0.1, -0.9, 0.4, 0.3],
        "ci_high": [0.9, -0.1, 1.2, 1.1],
        "prob_effect": [0.05, -0.04, 1e-6, 1e-6], "prob_ci_low": [0.01, -0.08, 1e-7, 1e-7],
        "prob_ci_high": [0.09, -0.01, 2e-6, 2e-6], "observed_rate": [0.3, 0.1, 0.0, 0.0],
    })
    fig = rs.plot.hierarchical_effects(eff)
    pa, pb = [ax for ax in fig.axes if ax.get_visible()]
    assert pa.get_xlabel() == "Δ refusal probability (pp), 95% HDI"
    spans = [sorted([s[0][0], s[1][0]]) for c in _errorbars(pa) for s in c.lines[2][0].get_segments()]
    np.testing.assert_allclose(spans, [[1.0, 9.0], [-8.0, -1.0]])  # percentage points
    # model B never refused: no interval, no filled point, a grey cross per persona
    assert _errorbars(pb) == [] and pb.get_title() == "B (never refused)"
    crosses = [ln for ln in pb.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and len(crosses[0].get_xdata()) == 2
    assert "not assessed" in fig.get_suptitle()
    np.testing.assert_array_equal(rs.plot.unassessable(eff), [False, False, True, True])
    # the log-odds scale on request
    fig = rs.plot.hierarchical_effects(eff, scale="log-odds")
    assert fig.axes[0].get_xlabel() == "effect (log-odds), 95% HDI"
    with pytest.raises(ValueError, match="scale must be"):
        rs.plot.hierarchical_effects(eff, scale="odds")


def test_persona_heatmap_with_many_personas_puts_them_on_the_rows():
    rng = np.random.default_rng(1)
    personas = [f"persona {i:02d}" for i in range(25)]
    df = pd.DataFrame([{"model": m, "persona": p, "refusal": int(rng.random() < 0.2)}
                       for m in ["A", "B", "C"] for p in personas for _ in range(20)])
    ax = rs.plot.persona_heatmap(df, cluster=None).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == personas
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
    # cell (persona 03, model B) holds that cell's rate
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text().split("\n")[0]
             for t in ax.texts}
    sub = df[(df["model"] == "B") & (df["persona"] == "persona 03")]
    assert texts[(1, 3)] == fmt(sub["refusal"].mean())
    few = rs.plot.persona_heatmap(df[df["persona"].isin(personas[:5])], cluster=None).axes[0]
    assert [t.get_text() for t in few.get_yticklabels()] == ["A", "B", "C"]
