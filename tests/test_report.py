"""The HTML report: sections, skip reasons, numbers traced to their sources, files, browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
)

import refusalstats as rs
from refusalstats.reporting import sections as S

W2_OPTS = {"w2": {"n_boot": 100, "n_perm": 50}}
#: The hierarchical model of the simulated paper table's report: 50 + 50 draws per chain (the
#: tests check the section's tables, figure and counts, not the posterior).
HIER_OPTS = {"hierarchical": {"draws": 50, "tune": 50, "chains": 2}}


def _text(html: str) -> str:
    """The page without embedded images (base64 may contain any letters)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


@pytest.fixture(scope="module")
def simulated():
    return rs.simulate_paper(scale=0.01, seed=3)


@pytest.fixture(scope="module")
def sim_report(simulated, tmp_path_factory):
    """The report of the simulated paper table, every figure drawn, with the hierarchical
    model fitted (the default formula, nested Laplace) -- the one drawn paper-size page."""
    out = tmp_path_factory.mktemp("report")
    rep = rs.report(simulated, out=out, seed=1, options=W2_OPTS | HIER_OPTS, progress=False)
    return rep, (out / "report.html").read_text(encoding="utf-8")


def with_free_and_answers() -> pd.DataFrame:
    """Two models x two tasks x three personas, persona-free rows and answer text."""
    rng = np.random.default_rng(5)
    rows = []
    for mi, m in enumerate(["M1", "M2"]):
        for ti, t in enumerate(["nli", "offensiveness"]):
            for p, g, base in [("Man", "Gender", 0.1), ("Woman", "Gender", 0.15),
                               ("Black person", "Race", 0.35), ("none", "none", 0.05)]:
                for q in ["p1", "p2"]:
                    prob = min(0.95, base + 0.2 * mi + 0.1 * ti)
                    for i in range(60):
                        r = int(rng.random() < prob)
                        rows.append({
                            "item_id": i, "model": m, "task": t, "persona": p, "persona_group": g, "prompt": q,
                            "setting": "persona-free" if p == "none" else "persona", "refusal": r,
                            "response": ("I'm sorry, I cannot answer <that>." if r
                                      else "The label is: neutral & fine"),
                        })
    return rs.validate(pd.DataFrame(rows))


def _undrawn(fig, key, caption):
    """conftest's undrawn_figures stand-in for ``sections.render``, for module fixtures and
    reports that draw one figure only."""
    fig.clear()  # as render() releases it
    return S.FigureItem(key, caption, b"\x89PNG\r\n\x1a\n", b'<svg xmlns="http://www.w3.org/2000/svg"/>')


@pytest.fixture(scope="module")
def free_report(tmp_path_factory):
    """with_free_and_answers() and its report (hierarchical off, figures not rasterized)."""
    df = with_free_and_answers()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "render", _undrawn)
        rep = rs.report(df, out=tmp_path_factory.mktemp("free") / "mem", hierarchical=False,
                        options=W2_OPTS, progress=False)
    return df, rep


def rep_rows_refusals(rep) -> int:
    return int(pd.read_csv(rep.tables["rates_model_task"])["refusals"].sum())


# ------------------------------------------------------------------ simulated table
def test_every_section_is_on_the_page_and_skips_say_why(sim_report):
    rep, html = sim_report
    keys = [s.key for s in rep.sections]
    assert keys == ["rates", "factors", "persona_free", "personas", "response_type", "w2",
                    "logit", "hierarchical", "answers"]
    for s in rep.sections:
        assert f'id="{s.key}"' in html and s.title.replace("'", "&#x27;") in html
    assert set(rep.skipped) == {"persona_free", "answers"}
    # a rates table for every design column (simulate_paper: task, persona_group, prompt,
    # response_type, setting; model and persona have their own sections)
    for col in ("task", "persona_group", "prompt", "response_type"):
        tab = pd.read_csv(rep.tables[f"rates_by_{col}"])
        assert tab["rate"].is_monotonic_increasing
        assert tab["refusals"].sum() == rep_rows_refusals(rep)
    assert "no persona-free rows" in rep.skipped["persona_free"]
    assert "'response'" in rep.skipped["answers"]
    for why in rep.skipped.values():
        assert "Skipped:</b> " + why.replace("'", "&#x27;")[:30] in html
    txt = _text(html)
    assert not re.search(r"\bnan\b|\binf\b", txt, flags=re.IGNORECASE)
    assert "http://" not in txt and "https://" not in txt  # no external requests


def test_header_and_files(sim_report, simulated):
    rep, html = sim_report
    assert f"{len(simulated):,} answers" in html
    assert "simulate_paper(scale=0.01, seed=3" in html
    assert f"<dt>refusalstats</dt><dd>{rs.__version__}</dd>" in html
    assert "<dt>Seed</dt><dd>1</dd>" in html
    assert "16: Llama2-7B" in html and "15: Man" in html and "3: nli" in html
    assert html.count("<img src=\"data:image/png;base64,") == len(rep.figures) >= 7
    for png in rep.figures.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    for csv in rep.tables.values():
        assert len(pd.read_csv(csv)) > 0
    assert {"rates_model_task", "w2_indices", "coefficients", "factor_tests",
            "hierarchical_effects"} <= set(rep.tables)
    assert "hierarchical_effects" in rep.figures  # drawn: its PNG and SVG are checked above


def test_rate_findings_match_the_counts(sim_report, simulated):
    rep, html = sim_report
    k, n = int(simulated["refusal"].sum()), len(simulated)
    # items are answered many times, so the report clusters by item_id (cluster="auto")
    overall = rs.refusal_rates(simulated, cluster="item_id").iloc[0]
    lo, hi = overall["ci_low"], overall["ci_high"]
    line = (f"Overall refusal rate {S.pct(k / n)} (95% CI {S.pct_ci(lo, hi)}, clustered by "
            f"item_id) over {n:,} answers.")
    assert line in rep.findings and line in html
    naive_lo, naive_hi = proportion_confint(k, n, method="wilson")
    assert hi - lo > 1.5 * (naive_hi - naive_lo)  # the item random intercept (sd 1) shows
    tab = pd.read_csv(rep.tables["rates_model_task"])
    sub = simulated[(simulated["model"] == "Llama2-13B") & (simulated["task"] == "offensiveness")]
    row = tab[(tab["model"] == "Llama2-13B") & (tab["task"] == "offensiveness")].iloc[0]
    assert row["n"] == len(sub) and row["refusals"] == sub["refusal"].sum()
    ref = rs.refusal_rates(sub, cluster="item_id").iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))


def test_w2_and_regression_numbers_come_from_their_modules(sim_report, simulated):
    from refusalstats import logit
    from refusalstats.sensitivity import w2_sensitivity

    rep, html = sim_report
    res = w2_sensitivity(simulated, inputs=["model", "task", "persona", "prompt"], seed=1,
                         progress=False, **W2_OPTS["w2"])
    w2 = pd.read_csv(rep.tables["w2_indices"]).set_index("input")
    np.testing.assert_allclose(w2.loc[res.table["input"], "iota"], res.table["iota"])
    np.testing.assert_allclose(w2.loc[res.table["input"], "ci_low"], res.table["ci_low"])
    top = res.table.sort_values("iota").iloc[-1]
    assert top["input"] == "model"  # P1: model explains most
    assert (f"Among inputs that beat the null, model explains the most variation "
            f"(ι {top['iota']:.3f}, 95% CI "
            f"{top['ci_low']:.3f}–{top['ci_high']:.3f})") in html

    fit = logit("refusal ~ persona + prompt + task + model", simulated, penalty="firth",
                cluster="item_id", reference=S.PAPER_REFERENCE, progress=False)
    coef = pd.read_csv(rep.tables["coefficients"]).set_index("term")
    np.testing.assert_allclose(coef.loc[fit.params.index, "estimate"], fit.params, rtol=1e-6)
    tests = fit.drop1().set_index("term")
    persona = tests.loc["persona"]
    assert int(persona["df"]) == 14
    test = fit.drop1().attrs["test"]  # clustered by item: a cluster-robust Wald test, no LR test
    assert "cluster-robust" in test and "Wald" in test
    line = [f for f in rep.findings if f.startswith("Cluster-robust Wald F test")]
    assert len(line) == 1 and not any(f.startswith("Likelihood-ratio") for f in rep.findings)
    assert (f"persona: F(14, {int(persona['df_resid'])}) = {S.fmt_num(persona['F'], 3)}, p "
            f"{S._p_phrase(persona['p_value'])}") in line[0]
    assert f"McFadden pseudo-R² of the regression: {fit.pseudo_r2:.3f}" in html


# ------------------------------------------------------------------ persona-free, answers
@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_persona_free_difference_matches_newcombe(tmp_path):
    df = with_free_and_answers()
    # cluster=None: the independent-rows Newcombe interval, checked against statsmodels
    rep = rs.report(df, out=tmp_path, hierarchical=True, options=W2_OPTS, progress=False,
                    cluster=None)
    assert "persona_free" not in rep.skipped and "answers" not in rep.skipped
    eff = pd.read_csv(rep.tables["persona_vs_free"])
    for r in eff.itertuples():
        sub = df[(df["task"] == r.task) & (df["model"] == r.model)]
        p = sub[sub["setting"] == "persona"]["refusal"]
        f = sub[sub["setting"] == "persona-free"]["refusal"]
        assert r.diff == pytest.approx(p.mean() - f.mean())
        lo, hi = confint_proportions_2indep(p.sum(), len(p), f.sum(), len(f), method="newcomb",
                                            compare="diff")
        assert (r.diff_low, r.diff_high) == pytest.approx((lo, hi), abs=1e-9)
    # the hierarchical model is asked for, but this table is too small: the page says why
    why = rep.skipped["hierarchical"]
    assert "too small" in why and "'model' has 2 level(s), fewer than 3" in why
    html = rep.path.read_text(encoding="utf-8")
    # answers are shown escaped, as text
    assert "I&#x27;m sorry, I cannot answer &lt;that&gt;." in html
    assert "neutral &amp; fine" in html and "<that>" not in html
    ans = pd.read_csv(rep.tables["answers_sample"])
    assert set(ans["model"]) == {"M1", "M2"}
    assert (ans.groupby(["model", "refusal"]).size() == S.ANSWERS_PER_MODEL).all()
    assert not re.search(r"\bnan\b", _text(html), flags=re.IGNORECASE)


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_missing_module_is_skipped_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "refusalstats.regression", None)  # import now fails
    df = with_free_and_answers()
    rep = rs.report(df, out=tmp_path, hierarchical=False, options=W2_OPTS, progress=False)
    assert "refusalstats.regression) is not available" in rep.skipped["logit"]
    assert "hierarchical=False" in rep.skipped["hierarchical"]  # not asked for: says so
    # the regression's tables are not written (the old check here could not fail)
    assert not {"coefficients", "factor_tests"} & set(rep.tables)
    assert {"rates_model_task", "w2_indices"} <= set(rep.tables)


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_constant_refusal_skips_models(tmp_path):
    df = with_free_and_answers().assign(refusal=0)
    rep = rs.report(df, out=tmp_path, hierarchical=False, options=W2_OPTS, progress=False)
    assert "refusal is constant" in rep.skipped["w2"]
    assert "refusal is constant" in rep.skipped["logit"]
    assert "rates" not in rep.skipped


def test_bad_arguments_name_the_problem(tmp_path):
    df = with_free_and_answers()
    with pytest.raises(TypeError, match="DataFrame or a path"):
        rs.report([1, 2], out=tmp_path)
    with pytest.raises(ValueError, match="unknown key"):
        rs.report(df, out=tmp_path, results={"lgoit": None})
    with pytest.raises(KeyError, match="'age'"):
        rs.report(df, out=tmp_path, inputs=["model", "age"])
    with pytest.raises(rs.SchemaError, match="refusal"):
        rs.report(df.drop(columns=["refusal"]), out=tmp_path)


def test_cli_report(tmp_path, monkeypatch):
    from refusalstats.cli import main

    # the persona-vs-free figure is drawn (rasterized) here: the simulated paper table of
    # sim_report, which draws every other figure, has no persona-free rows
    drawn = S.render
    monkeypatch.setattr(S, "render", lambda fig, key, caption: (
        drawn if key == "persona_vs_free" else _undrawn)(fig, key, caption))
    path = rs.write_responses(with_free_and_answers(), tmp_path / "t.parquet",
                              metadata={"source": "unit test"})
    out = tmp_path / "rep"
    assert main(["report", str(path), "-o", str(out), "--no-hierarchical", "--n-boot", "50",
                 "--n-perm", "20", "-q"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<dt>Data</dt><dd>" + str(path) in html
    assert (out / "tables" / "persona_vs_free.csv").exists()
    png = (out / "figures" / "persona_vs_free.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "figures" / "persona_vs_free.svg").read_text().lstrip().startswith("<?xml")
    assert main(["report", str(tmp_path / "missing.parquet"), "-o", str(out)]) == 2


# ------------------------------------------------------------------ browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_page_renders_in_headless_chromium_without_failed_loads(sim_report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (the Makefile's test target installs Debian 'chromium')")
    rep, html = sim_report
    # every src/href is embedded data or a relative file link: nothing to fetch
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("data:image/png;base64,", "#", "figures/")), attr
    shot = tmp_path / "page.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           f"--screenshot={shot}", "--window-size=1280,4000", rep.path.resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    log = proc.stdout + proc.stderr
    assert shot.exists(), log[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a drawn page, not blank
    bad = [ln for ln in log.splitlines()
           if re.search(r"Failed to load resource|net::ERR_|ERR_FILE_NOT_FOUND|"
                        r"Not allowed to load", ln)]
    assert not bad, bad


# ------------------------------------------------------------------ hierarchical
def test_hierarchical_section_on_a_real_fit(sim_report):
    """sim_report fits the hierarchical model (the default formula) on the paper design."""
    rep, html = sim_report
    assert "hierarchical" not in rep.skipped
    eff = pd.read_csv(rep.tables["hierarchical_effects"])
    assert len(eff) == 16 * 15
    assert (eff["ci_low"] <= eff["effect"]).all() and (eff["effect"] <= eff["ci_high"]).all()
    assert "hierarchical_effects" in rep.figures
    flat = rs.plot.unassessable(eff)
    n_excl = int((((eff["prob_ci_low"] > 0) | (eff["prob_ci_high"] < 0)) & ~flat).sum())
    assert f"{n_excl} of {int((~flat).sum())} persona × model effects" in html
    # 20,320 item-level patterns: the default keeps (1|item_id) (up to HIER_MAX_ITEM_PATTERNS),
    # so neither the page nor the count carries the too-narrow caveat
    assert "was left out" not in html and "without an item term" not in html


def test_default_hierarchical_formula_has_the_item_term_when_affordable(simulated, monkeypatch):
    formula, why = S.default_hier_formula(simulated, "item_id")
    assert formula.endswith("+ (1|item_id)") and why is None
    monkeypatch.setattr(S, "HIER_MAX_ITEM_PATTERNS", 20_000)  # below this table's 20,320
    small = simulated[simulated["item_id"].isin(simulated["item_id"].unique()[:40])]
    formula, why = S.default_hier_formula(small, "item_id")
    assert formula.endswith("+ (1|item_id)") and why is None
    formula, why = S.default_hier_formula(simulated, "item_id")
    assert "(1|item_id)" not in formula and "20,320 covariate patterns" in why
    assert S.default_hier_formula(simulated, None) == (formula, None)


# ------------------------------------------------------------------ Parquet sources (#15)
def _shards(df, folder, k=3):
    folder.mkdir()
    for i, idx in enumerate(np.array_split(np.arange(len(df)), k)):
        df.iloc[idx].to_parquet(folder / f"part-{i}.parquet")
    return folder


#: Tables from fits whose coefficients agree to rounding (IRLS on counts vs rows, #15: 1e-10).
_FITTED = {"coefficients", "factor_tests"}


def _same_tables(a, b, only=None):
    keys = set(a.tables) if only is None else set(only)
    assert keys <= set(b.tables), keys - set(b.tables)
    for k in sorted(keys):
        x, y = pd.read_csv(a.tables[k]), pd.read_csv(b.tables[k])
        if k in _FITTED:
            pd.testing.assert_frame_equal(x, y, check_exact=False, rtol=1e-8, atol=1e-10)
        else:
            pd.testing.assert_frame_equal(x, y, check_exact=True, obj=k)


@pytest.fixture(scope="module")
def shards(simulated, tmp_path_factory):
    """The simulated table as a folder of three Parquet shards."""
    return _shards(simulated, tmp_path_factory.mktemp("sim") / "shards")


@pytest.fixture(scope="module")
def streamed_report(shards, tmp_path_factory):
    """report(folder) with sim_report's seed and options, figures built but not drawn (the
    tables and text are checked), and the hierarchical model replaced by one that records
    what it was given and cannot stream (so the page must say why it skipped it).

    Returns the report and the (formula, data) of every call to the hierarchical model."""
    import refusalstats.bayes as B

    seen = []

    def fake(formula, data, **kw):
        seen.append((formula, data))
        raise TypeError("data must be a pandas DataFrame")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "hierarchical", fake)
        mp.setattr(S, "HIER_MAX_ITEM_PATTERNS", 20_000)  # below this table's 20,320
        mp.setattr(S, "render", _undrawn)
        rep = rs.report(shards, out=tmp_path_factory.mktemp("streamed") / "out", seed=1,
                        options=W2_OPTS, progress=False)
    return rep, seen


def test_report_of_a_shard_folder_equals_the_in_memory_report(sim_report, streamed_report,
                                                             simulated):
    """report(path) streams every analysis (counts, never rows) and writes the same tables
    as report(df): rates, W2 (same seed: same CIs, p-values), regression."""
    rep, _ = sim_report
    streamed, _ = streamed_report
    # the stream skips the hierarchical model (the stand-in cannot stream; sim_report fits
    # it): every other section and table is the same
    assert [s.key for s in streamed.sections] == [s.key for s in rep.sections]
    hier = {k for k in rep.tables if k.startswith("hierarchical")}
    assert hier and set(streamed.tables) == set(rep.tables) - hier and len(streamed.tables) >= 10
    assert streamed.skipped.keys() == rep.skipped.keys() | {"hierarchical"}
    _same_tables(streamed, rep)
    html = streamed.path.read_text(encoding="utf-8")
    assert f"{len(simulated):,} answers" in html and "streamed into counts" in html
    clustering = re.findall(r"<dt>Clustering</dt><dd>([^<]*)</dd>", html)
    assert clustering == re.findall(r"<dt>Clustering</dt><dd>([^<]*)</dd>", sim_report[1])
    assert clustering[0].startswith("answers clustered by item_id (")
    assert [f for f in streamed.findings if "Overall" in f] == [
        f for f in rep.findings if "Overall" in f]


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_report_of_a_parquet_source_with_persona_free_rows(free_report, tmp_path):
    """Persona-only tables are selected through 'setting' (identical numbers); what cannot
    stream yet is skipped with a reason on the page, and answers come from a small head."""
    df, mem = free_report
    src = _shards(df, tmp_path / "shards")
    rep = rs.report(str(src / "*.parquet"), out=tmp_path / "str", hierarchical=False,
                    options=W2_OPTS, progress=False)
    rate_tables = [k for k in mem.tables if k.startswith("rates") or k == "persona_vs_free"]
    assert "persona_vs_free" in rate_tables and "rates_model_persona" in rate_tables
    # W2 and the regression of the persona rows, streamed (counts without persona-free lines)
    _same_tables(mem, rep, [*rate_tables, "w2_indices", "coefficients", "factor_tests"])
    assert rep.skipped.keys() == mem.skipped.keys() == {"response_type", "hierarchical"}
    logit = next(s for s in rep.sections if s.key == "logit")
    assert any("persona rows' counts" in n for n in logit.notes)
    ans = pd.read_csv(rep.tables["answers_sample"])
    assert set(ans["model"]) == {"M1", "M2"} and len(ans) == len(
        pd.read_csv(mem.tables["answers_sample"]))
    notes = next(s for s in rep.sections if s.key == "answers").notes
    assert any("first 1,920 rows" in n for n in notes)


def test_default_hierarchical_formula_of_a_stream_counts_the_same_patterns(simulated, shards,
                                                                           tmp_path, monkeypatch):
    monkeypatch.setattr(S, "HIER_MAX_ITEM_PATTERNS", 20_000)  # below this table's 20,320
    folder = shards
    design = rs.collapse(folder, by=["task", "prompt", "model", "persona"])
    streamed = S.default_hier_formula(design, "item_id", folder)
    assert streamed == S.default_hier_formula(simulated, "item_id")
    assert "20,320 covariate patterns" in streamed[1]
    small = simulated[simulated["item_id"].isin(simulated["item_id"].unique()[:40])]
    few = _shards(small, tmp_path / "few")
    assert S.default_hier_formula(design, "item_id", few)[0].endswith("+ (1|item_id)")


def test_report_of_a_stream_gives_the_hierarchical_model_the_path(streamed_report, shards):
    """No rows for the hierarchical model either: it gets the path (it streams); a model
    that cannot stream is skipped with the reason on the page."""
    rep, seen = streamed_report
    assert [d for _, d in seen] == [shards]
    assert "(1|item_id)" not in seen[0][0]  # 20,320 patterns: the item term is left out
    why = rep.skipped["hierarchical"]
    assert "needs the rows" in why and "data must be a pandas DataFrame" in why
    assert "Skipped:</b> " + why.replace("'", "&#x27;")[:30] in rep.path.read_text("utf-8")


# ------------------------------------------------------------------ issue 21: the report never misleads
def strong_persona_table() -> pd.DataFrame:
    """Four models (C never refuses), eight personas (y raises refusal a lot), two prompts."""
    rng = np.random.default_rng(0)
    rows = []
    for m, base in [("A", 0.3), ("B", 0.15), ("C", 0.0), ("D", 0.25)]:
        for p, shift in [("x", 0.0), ("y", 0.6), ("z", -0.12), ("w", 0.1), ("v", 0.0),
                         ("u", -0.05), ("t", 0.05), ("s", 0.0)]:
            for q in ["p1", "p2"]:
                for i in range(80):
                    prob = 0.0 if base == 0 else min(1.0, max(0.0, base + shift))
                    rows.append({"item_id": i, "model": m, "persona": p, "prompt": q,
                                 "task": "nli", "refusal": int(rng.random() < prob)})
    return rs.validate(pd.DataFrame(rows))


HIER_FORMULA = "refusal ~ prompt + (1|model) + (1|persona) + (1|persona:model)"


@pytest.fixture(scope="module")
def strong():
    df = strong_persona_table()
    fit = rs.hierarchical(HIER_FORMULA, df, method="laplace", seed=0, progress=False)
    return df, fit


@pytest.mark.usefixtures("undrawn_figures")  # tables and text (sim_report draws the figure)
def test_hierarchical_section_in_percentage_points_and_zero_cells_not_counted(strong, tmp_path):
    df, fit = strong
    rep = rs.report(df, out=tmp_path, results={"hierarchical": fit}, seed=0, progress=False,
                    options={"w2": {"n_boot": 0, "n_perm": 0}})
    eff = fit.effects("persona", within="model")
    tab = pd.read_csv(rep.tables["hierarchical_effects"])
    np.testing.assert_allclose(tab["prob_effect"], eff["prob_effect"])
    excludes = ((100 * eff["prob_ci_low"] > 0) | (100 * eff["prob_ci_high"] < 0)).to_numpy()
    never = (eff["model"] == "C").to_numpy()
    # without the rule the never-refusing model's cells would be counted (tiny but one-signed)
    assert excludes[never].any()
    k = int((excludes & ~never).sum())
    line = [f for f in rep.findings if f.startswith("Hierarchical model:")]
    assert len(line) == 1
    assert line[0].startswith(f"Hierarchical model: {k} of 24 persona × model effects on the "
                              "refusal probability have a 95% HDI excluding 0")
    assert "8 cells with an observed rate of 0% or 100%" in line[0]
    # the item caveat sits next to the count (the fit has no (1|item_id) term)
    assert "without an item term (1|item_id)" in line[0]
    sec = next(s for s in rep.sections if s.key == "hierarchical")
    disp = sec.tables[0].display
    row = disp[(disp["model"] == "A") & (disp["persona"] == "y")].iloc[0]
    a_y = eff[(eff["model"] == "A") & (eff["persona"] == "y")].iloc[0]
    assert row["Δ refusal probability (pp)"] == f"{100 * a_y['prob_effect']:.2f}"
    assert row["95% HDI (pp)"] == (f"{100 * a_y['prob_ci_low']:.2f} to "
                                   f"{100 * a_y['prob_ci_high']:.2f}")
    assert (disp.loc[disp["model"] == "C", "note"] != "").all()
    # the persona x model deviations apart: the (1|persona:model) draws alone
    dev = pd.read_csv(rep.tables["hierarchical_deviations"])
    ref = fit.deviations("persona:model")
    assert len(dev) == 32
    np.testing.assert_allclose(dev["effect"], ref["effect"])
    u = fit.deviations("persona").set_index("persona")["effect"]
    both = eff.set_index(["model", "persona"])["effect"]
    for r in ref.itertuples():  # effects() = (1|persona) + (1|persona:model)
        assert both[(r.model, r.persona)] == pytest.approx(u[r.persona] + r.effect, abs=1e-9)


def test_cli_bayes_prints_the_report_units(strong, tmp_path, capsys, monkeypatch):
    from refusalstats import bayes
    from refusalstats.cli import main

    df, fit = strong
    monkeypatch.setattr(bayes, "hierarchical", lambda *a, **k: fit)
    path = rs.write_responses(df, tmp_path / "t.parquet")
    assert main(["bayes", HIER_FORMULA, str(path), "--effects", "persona", "--within",
                 "model"]) == 0
    out = capsys.readouterr().out
    assert "Δ refusal probability (pp)" in out and "percentage points" in out
    a_y = fit.effects("persona", within="model").query("model == 'A' and persona == 'y'").iloc[0]
    assert f"{100 * a_y['prob_effect']:.2f}" in out


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_report_reuses_fitted_results_without_refitting(strong, tmp_path, monkeypatch):
    import refusalstats.bayes
    import refusalstats.regression
    import refusalstats.sensitivity

    df, fit = strong
    lf = rs.logit("refusal ~ persona + prompt + model", df, penalty="firth", progress=False,
                  cluster="item_id")
    w2 = rs.w2_sensitivity(df, inputs=["model", "persona"], n_boot=20, n_perm=10, seed=0,
                           progress=False, cluster="item_id")

    def refit(*args, **kwargs):
        raise RuntimeError("the report fitted again")

    for mod, name in [(refusalstats.regression, "logit"), (refusalstats.sensitivity, "w2_sensitivity"),
                      (refusalstats.bayes, "hierarchical")]:
        monkeypatch.setattr(mod, name, refit)
    with pytest.raises(RuntimeError, match="fitted again"):  # the guard works
        rs.report(df, out=tmp_path / "a", progress=False)
    rep = rs.report(df, out=tmp_path / "b", progress=False,
                    results={"logit": lf, "w2": w2, "hierarchical": fit})
    assert not {"logit", "w2", "hierarchical"} & set(rep.skipped)
    coef = pd.read_csv(rep.tables["coefficients"]).set_index("term")
    np.testing.assert_allclose(coef.loc[lf.params.index, "estimate"], lf.params)
    np.testing.assert_allclose(pd.read_csv(rep.tables["w2_indices"])["iota"], w2.table["iota"])
    with pytest.raises(TypeError, match="results\\['hierarchical'\\]"):
        rs.report(df, out=tmp_path / "c", progress=False, results={"hierarchical": lf})


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_odds_ratio_intervals_and_separated_terms_in_the_coefficient_table(strong, tmp_path):
    df, _ = strong
    for penalty in (None, "firth"):
        rep = rs.report(df, out=tmp_path / str(penalty), hierarchical=False, progress=False,
                        options={"w2": {"n_boot": 0, "n_perm": 0}, "logit": {"penalty": penalty}})
        sec = next(s for s in rep.sections if s.key == "logit")
        disp = sec.tables[0].display.set_index("term")
        raw = pd.read_csv(rep.tables["coefficients"]).set_index("term")
        sep = raw.index[raw["separated"].astype(bool)]
        assert len(sep) == 1 and "C" in sep[0]  # model C never refused
        ok = raw.index[~raw["separated"].astype(bool) & (raw.index != "Intercept")][0]
        r = raw.loc[ok]
        assert disp.loc[S.F._pretty_term(ok), "odds ratio (95% CI)"] == (
            f"{np.exp(r['estimate']):.3g} ({np.exp(r['ci_low']):.3g} to {np.exp(r['ci_high']):.3g})")
        text = disp.loc[S.F._pretty_term(sep[0]), "odds ratio (95% CI)"]
        if penalty is None:
            assert text == "separated; not estimable"
        else:
            assert text.endswith("firth-penalised (separated)") and "(" in text
        # never a bare "0.000" (an odds ratio rounded to nothing)
        assert not re.search(r"(?<![\d.])0\.000(?!\d)", " ".join(disp["odds ratio (95% CI)"]))


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_findings_one_base_per_sentence_ties_and_one_model(free_report, tmp_path):
    df, rep = free_report
    po = df[df["setting"] == "persona"]
    overall = rs.refusal_rates(po, cluster="item_id").iloc[0]
    assert any(f.startswith(f"Overall refusal rate {S.pct(overall['rate'])}") and
               f"over the {len(po):,} answers to prompts that name a persona" in f
               for f in rep.findings)
    task = rs.refusal_rates(po, by="task", cluster="item_id").set_index("task")["rate"]
    line = next(f for f in rep.findings if f.startswith("Highest task rate (persona rows)"))
    assert f"offensiveness, {S.pct(task['offensiveness'])}" in line  # same base as overall
    # ties: every level equal -> one sentence saying so, never "highest x ... lowest x"
    tied = df.assign(refusal=np.where(df["task"] == "nli", df["refusal"], 0))
    tied.loc[tied["task"] == "offensiveness", "refusal"] = tied.loc[
        tied["task"] == "nli", "refusal"].to_numpy()
    rep = rs.report(tied, out=tmp_path / "b", hierarchical=False, progress=False,
                    options={"w2": {"n_boot": 0, "n_perm": 0}})
    line = next(f for f in rep.findings if f.startswith(("Every task rate", "Highest task rate")))
    assert line.startswith("Every task rate (persona rows) is the same:") and "lowest" not in line
    # one model that never refused: no talk of a model coefficient
    one = df[df["model"] == "M1"].assign(refusal=0)
    rep = rs.report(one, out=tmp_path / "c", hierarchical=False, progress=False,
                    options={"w2": {"n_boot": 0, "n_perm": 0}})
    assert "The model never refused in the rows with a persona: M1." in rep.findings
    assert not any("coefficient" in f for f in rep.findings)


def test_w2_section_says_what_iota_is_and_that_indices_do_not_add_up(sim_report):
    rep, html = sim_report
    sec = next(s for s in rep.sections if s.key == "w2")
    assert "2 Var(Y)" in sec.how_to_read and "do not add up to 1" in sec.how_to_read
    assert "share of the output's variability explained" not in html


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_safe_and_unsafe_prompts_apart_and_relabelled_columns_shown_once(tmp_path):
    df = with_free_and_answers()
    df = df.assign(safe=pd.Categorical(np.where(df["prompt"] == "p1", "True", "False")),
                   persona_original=pd.Categorical("a_" + df["persona"].astype(str)))
    rep = rs.report(df, out=tmp_path, hierarchical=False, progress=False,
                    options={"w2": {"n_boot": 0, "n_perm": 0}})
    po = df[df["setting"] == "persona"]
    tab = rs.refusal_rates(po, by="safe", cluster="item_id").set_index("safe")
    line = next(f for f in rep.findings if f.startswith("The overall rate mixes safe and unsafe"))
    assert (f"on the {int(tab.loc['True', 'n']):,} safe prompts (where a refusal is a false "
            f"refusal) the rate is {S.pct(tab.loc['True', 'rate'])}") in line
    assert f"unsafe ones (where refusing is expected) {S.pct(tab.loc['False', 'rate'])}" in line
    # persona_original renames persona: no second table of the same rates
    assert "rates_by_persona_original" not in rep.tables and "rates_by_safe" in rep.tables


_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
window.addEventListener("load", () => {
  const w = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll("body *")].filter(el => {
    const r = el.getBoundingClientRect(); return r.right > w + 1 && !el.closest(".scroll, pre");
  }).slice(0, 5).map(el => el.tagName + "." + el.className);
  const out = document.createElement("div");
  out.id = "probe";
  out.textContent = JSON.stringify({scrollWidth: document.documentElement.scrollWidth, width: w,
    wide: wide, errors: window.__errors,
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length});
  document.body.appendChild(out);
});
</script>"""


def _probe(exe: str, html: str, tmp_path, width: int) -> dict:
    """Load ``html`` in headless Chromium at ``width`` px; what the page reports on load."""
    import json

    page = tmp_path / f"probe_{width}.html"
    page.write_text(html.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / f'profile{width}'}", f"--window-size={width},2000",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    m = re.search(r'<div id="probe">([^<]*)</div>', proc.stdout)
    assert m, proc.stderr[-2000:]
    return json.loads(m.group(1).replace("&quot;", '"'))


def test_page_loads_without_script_errors_broken_images_or_horizontal_overflow(sim_report,
                                                                              tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (the Makefile's test target installs Debian 'chromium')")
    _, html = sim_report
    for width in (1280, 760):  # a laptop and a narrow window
        got = _probe(exe, html, tmp_path, width)
        assert got["errors"] == [] and got["broken"] == 0, got
        assert got["scrollWidth"] <= got["width"] and got["wide"] == [], got
    # the probe sees an element wider than the window (the check can fail)
    bad = html.replace("<main>", '<main><div style="width:3000px">wide</div>', 1)
    got = _probe(exe, bad, tmp_path, 1280)
    assert got["scrollWidth"] > got["width"] and got["wide"]
