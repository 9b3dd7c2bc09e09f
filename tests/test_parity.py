"""Parity (#23): the same table as a DataFrame, a CSV file, a Parquet file and a folder of
Parquet shards gives the same result in every analysis.

Each source reaches the analysis through a different path (rows in memory, a text file
read into rows, one Parquet file and a folder streamed in batches into counts), and the
``cluster="auto"`` rule, the level order and the counting are each decided on that path;
a difference between paths is a bug (a streamed W2 once clustered differently from the
same rows in memory). The table is small (2,160 rows) so every analysis runs in seconds.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs

MODELS = ["m1", "m2", "m3"]
PERSONAS = {"Man": "Gender", "Woman": "Gender", "Christian": "Religion", "Atheist": "Religion",
            "Helpful assistant": "control", "Friendly assistant": "control"}
N_ITEMS = 20  # 10 per task
SOURCES = ["frame", "csv", "parquet", "folder"]


def _table(seed: int = 7) -> pd.DataFrame:
    """Every item under every persona for every model (a complete design), plus persona-free
    rows, with item, model and persona effects on the logit scale."""
    rng = np.random.default_rng(seed)
    item_eff = rng.normal(0, 1.0, N_ITEMS)
    model_eff = dict(zip(MODELS, [-0.5, 0.0, 0.6]))
    persona_eff = dict(zip(PERSONAS, [0.0, 0.3, -0.2, 0.5, -0.4, 0.1]))
    rows = []
    for item in range(N_ITEMS):
        task = "t1" if item < N_ITEMS // 2 else "t2"
        for model in MODELS:
            for persona, group in [*PERSONAS.items(), ("none", "none")]:
                setting = "persona-free" if persona == "none" else "persona"
                for rep in range(5):
                    eta = -1.0 + item_eff[item] + model_eff[model] + persona_eff.get(persona, 0.0)
                    rows.append((item, model, task, persona, group, setting, f"p{rep}",
                                 int(rng.random() < 1 / (1 + np.exp(-eta)))))
    df = pd.DataFrame(rows, columns=["item_id", "model", "task", "persona", "persona_group",
                                     "setting", "prompt", "refusal"])
    df["refusal"] = df["refusal"].astype("int8")
    return df


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The table four ways: DataFrame, CSV, one Parquet file, a folder of 3 shards."""
    df = _table()
    root = tmp_path_factory.mktemp("parity")
    df.to_csv(root / "t.csv", index=False)
    df.to_parquet(root / "t.parquet", index=False)
    (root / "shards").mkdir()
    for i, model in enumerate(MODELS):  # shards split by model, not by row order
        df[df["model"] == model].to_parquet(root / "shards" / f"part-{i}.parquet", index=False)
    return {"frame": df, "csv": str(root / "t.csv"), "parquet": str(root / "t.parquet"),
            "folder": str(root / "shards")}


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """A result table with categoricals as their labels and a fresh index, for comparing."""
    out = frame.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype) or out[c].dtype == object:
            out[c] = out[c].astype(object).where(out[c].notna(), None).map(
                lambda v: v if v is None else str(v))
    return out.reset_index(drop=True)


def _same(results: dict[str, pd.DataFrame], rtol: float = 1e-9) -> None:
    base = _plain(results["frame"])
    assert len(base) > 0
    for name, got in results.items():
        pd.testing.assert_frame_equal(_plain(got), base, check_dtype=False, rtol=rtol,
                                      obj=f"{name} vs DataFrame")


def _each(sources, fn):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cluster notes say the same thing on each path
        for name in SOURCES:
            out[name] = fn(sources[name])
    return out


def test_the_sources_hold_the_same_rows(sources):
    df = sources["frame"]
    for name in ("csv", "parquet", "folder"):
        got = rs.read_responses(sources[name], validate_table=False) if name != "folder" else \
            rs.read_responses(sources[name])
        got = got.sort_values(["item_id", "model", "persona", "prompt"], kind="stable")
        assert len(got) == len(df) and int(got["refusal"].sum()) == int(df["refusal"].sum())


@pytest.mark.parametrize("cluster", ["auto", "item_id", None])
def test_refusal_rates(sources, cluster):
    _same(_each(sources, lambda s: rs.refusal_rates(s, by=["model", "task"], cluster=cluster)))


def test_refusal_rates_by_persona_group(sources):
    _same(_each(sources, lambda s: rs.refusal_rates(s, by="persona_group")))


def test_persona_effect(sources):
    _same(_each(sources, lambda s: rs.persona_effect(s, by="model")))


def test_cochran_q(sources):
    # blocks are items within (model, prompt): a list of cluster columns is two-way
    # clustering elsewhere, so cochran_q takes one block column (#23)
    _same(_each(sources, lambda s: rs.cochran_q(s, condition="persona", by=["model", "prompt"],
                                                cluster="item_id", method="chi2")))


def test_disparity(sources):
    _same(_each(sources, lambda s: rs.disparity(s, by="model", n_boot=50, seed=1)))


def test_rank_agreement(sources):
    res = _each(sources, lambda s: rs.rank_agreement(s, item="persona", rater="model"))
    _same({k: v.concordance for k, v in res.items()})
    _same({k: v.pairs for k, v in res.items()})


@pytest.mark.parametrize("cluster", ["auto", "item_id", None])
def test_logit(sources, cluster):
    res = _each(sources, lambda s: rs.logit("refusal ~ model + persona + task", s,
                                            cluster=cluster, progress=False))
    _same({k: v.to_frame() for k, v in res.items()}, rtol=1e-10)


def test_logit_default_cluster_is_cr2_on_every_source(sources):
    """The default clustered logit: a Parquet file and a shard folder are collapsed to
    (cluster, pattern) counts batch by batch and get the CR2 covariance with Satterthwaite
    t that the same rows in a DataFrame get (they got CR1 with z, #19/#23): the coefficient
    table (estimate, std_error, t, df, p_value, ci), drop1's and anova's HTZ tests, the fit
    statistics and the printed summary are the DataFrame's."""
    res = _each(sources, lambda s: rs.logit("refusal ~ model + persona + task", s, progress=False))
    base = res["frame"]
    assert base.vcov == "CR2" and base.n_clusters == N_ITEMS
    assert {"t", "df", "ci_low", "ci_high", "p_value"} <= set(base.to_frame().columns)
    assert np.isfinite(base.df).all() and (base.df < N_ITEMS).all()  # Satterthwaite, not z
    for name, fit in res.items():
        assert fit.vcov == "CR2" and fit.n_clusters == N_ITEMS, name
        assert fit.n_obs == base.n_obs == len(sources["frame"]), name
        for stat in ("loglik", "deviance", "null_deviance", "aic", "bic"):
            assert getattr(fit, stat) == pytest.approx(getattr(base, stat), rel=1e-12, abs=1e-12), (name, stat)
        assert fit.summary() == base.summary(), name
    _same({k: v.to_frame() for k, v in res.items()}, rtol=1e-10)
    _same({k: v.drop1() for k, v in res.items()}, rtol=1e-10)
    _same({k: v.anova() for k, v in res.items()}, rtol=1e-10)


def test_logit_streamed_cr1_fallback(sources, monkeypatch):
    """A source with more (cluster, pattern) pairs than the CR2 limit keeps its counts per
    pattern and streams the CR1 sandwich from the rows, with a warning and a note; that CR1
    is the CR1 of the same rows in a DataFrame (vcov="CR1")."""
    from refusalstats.regression import model as logit_model

    monkeypatch.setattr(logit_model, "_CR2_MAX_PAIRS", 50)  # the table has 420 (item, pattern) pairs
    formula = "refusal ~ model + persona + task"
    with pytest.warns(UserWarning, match=r"more than 50 \(cluster, pattern\) pairs"):
        streamed = rs.logit(formula, sources["parquet"], cluster="item_id", progress=False)
    assert streamed.vcov == "CR1" and "z" in streamed.to_frame().columns
    assert any("too many to hold for CR2" in n for n in streamed.notes)
    frame = rs.logit(formula, sources["frame"], cluster="item_id", vcov="CR1", progress=False)
    _same({"frame": frame.to_frame(), "parquet": streamed.to_frame()}, rtol=1e-10)
    _same({"frame": frame.drop1(), "parquet": streamed.drop1()}, rtol=1e-10)


def test_w2_sensitivity(sources):
    """The streamed W2 once clustered differently from the rows in memory (#23)."""
    res = _each(sources, lambda s: rs.w2_sensitivity(
        s, inputs=["model", "task", "persona"], n_boot=40, n_perm=20, seed=3, progress=False))
    assert len({str(r.cluster) for r in res.values()}) == 1, {k: r.cluster for k, r in res.items()}
    _same({k: v.to_frame() for k, v in res.items()}, rtol=1e-9)


def test_hierarchical(sources):
    res = _each(sources, lambda s: rs.hierarchical(
        "refusal ~ model + (1|persona)", s, method="laplace", draws=200, seed=0))
    _same({k: v.summary() if isinstance(v.summary(), pd.DataFrame) else v.to_frame()
           for k, v in res.items()}, rtol=1e-6)


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_report_header_counts(sources, tmp_path):
    """The page header (rows, refusals, items, clusters, levels) is the same however the
    table arrives; the report's analyses are the ones tested above."""
    heads, findings = {}, {}
    for name in ("frame", "folder"):  # rows in memory; streamed counts (a file streams alike)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = rs.report(sources[name], out=tmp_path / name, hierarchical=False,
                            options={"w2": {"n_boot": 20, "n_perm": 10}}, progress=False,
                            source="the table")
        text = rep.path.read_text()
        head = text[:text.find("</table>")] if "</table>" in text else text[:4000]
        head = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<time>", head)
        # the source line says how the table was read; everything after it must agree
        heads[name] = head.replace(" (Parquet, streamed into counts: no analysis holds the rows)", "")
        findings[name] = rep.findings
        assert rep.findings
    assert "<dt>Rows</dt><dd>2,100 answers" in heads["frame"]
    assert heads["folder"] == heads["frame"]
    assert findings["folder"] == findings["frame"]


def test_a_bad_response_gets_the_same_words_everywhere(tmp_path):
    """One validation boundary (#23): a refusal value of 2 is described by
    table.binary_problem whether the table is validated, streamed into counts, fitted by
    logit or by the hierarchical model (each raises its own error type)."""
    from refusalstats.table import binary_problem

    df = _table().head(300).copy()
    df.loc[5, "refusal"] = 2
    df.to_parquet(tmp_path / "bad.parquet", index=False)
    words = "'refusal' must hold 0/1 or True/False; found 1 other value(s)"
    assert words in binary_problem(df["refusal"])
    calls = {
        "validate": lambda: rs.validate(df),
        "refusal_rates": lambda: rs.refusal_rates(df, by="model"),
        "collapse": lambda: rs.collapse(tmp_path / "bad.parquet", by="model"),
        "logit": lambda: rs.logit("refusal ~ model", df, cluster=None, progress=False),
        "hierarchical": lambda: rs.hierarchical("refusal ~ model + (1|persona)", df,
                                                method="laplace", draws=50),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        assert words in str(info.value), (name, str(info.value))


@pytest.fixture(scope="module")
def labelled_sources(tmp_path_factory):
    """The table with a `human` label on every 6th row and a fourth model that never refuses
    (flags and labels all 0: its labels hold one class), four ways."""
    df = _table()
    never = df[df["model"] == "m1"].assign(model="m0", refusal=0)
    df = pd.concat([df, never], ignore_index=True)
    df["refusal"] = df["refusal"].astype("int8")
    human = df["refusal"].astype(float)
    flip = np.random.default_rng(3).random(len(df)) < 0.05  # the detector errs on 5% of rows
    human[flip & (df["model"] != "m0")] = 1 - human[flip & (df["model"] != "m0")]
    df["human"] = np.where(np.arange(len(df)) % 6 == 0, human, np.nan)
    root = tmp_path_factory.mktemp("parity_labels")
    df.to_csv(root / "t.csv", index=False)
    df.to_parquet(root / "t.parquet", index=False)
    (root / "shards").mkdir()
    for i, (_, part) in enumerate(df.groupby("model")):
        part.to_parquet(root / "shards" / f"part-{i}.parquet", index=False)
    return {"frame": df, "csv": str(root / "t.csv"), "parquet": str(root / "t.parquet"),
            "folder": str(root / "shards")}


@pytest.mark.parametrize("cluster", ["item_id", None])
def test_refusal_rates_with_labels_and_a_never_refusing_model(labelled_sources, cluster):
    """PPI rates are the same from every source; the model that never refuses has labels of
    one class, so it takes lam = 1 (plain PPI) and its corrected rate is 0."""
    got = _each(labelled_sources, lambda s: rs.refusal_rates(s, by="model", labels="human",
                                                             cluster=cluster))
    _same(got)
    m0 = got["frame"].set_index("model").loc["m0"]
    assert m0["lam"] == 1.0 and m0["rate"] == 0.0 and m0["ci_high"] > 0
    assert (got["frame"].set_index("model").drop(index="m0")["lam"] < 1).all()
