"""de Araujo & Roth's disparity (refusalstats.persona_disparity): by hand, corrected
estimator, bootstrap and coverage."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.table import SchemaError


@pytest.fixture(scope="module")
def paper():
    return rs.simulate_paper(scale=0.01, seed=3)


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
        rep = rep.assign(copy=rep["item_id"].astype(str) + "|"
                         + rep.groupby(level=0).cumcount().astype(str))
        ratios.append(rs.disparity(rep, cluster="copy")["disparity"].item())
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
def test_disparity_corrected_estimator_is_nearer_the_truth(n_items, effects, n_in_category, rate):
    # 240 replicates: the corrected ratio's median is nearer the truth than the plug-in
    # one's (biased low). The coverage of the default item-bootstrap interval on these two
    # designs is a simulation study: benchmarks/calibration_rates.py (disparity_checks,
    # 1000 replicates each; docs/validity.md: 0.953 and 0.950, target 0.93-0.97), not a
    # unit test (it took 300 bootstrap draws x 240 replicates here).
    df, true = _disparity_replicates(240, n_items, effects, n_in_category, rate, seed=n_items)
    out = rs.disparity(df, by="rep", n_boot=0, cluster="item_id")
    med, med_plugin = np.median(out["disparity"]), np.median(out["disparity_plugin"])
    assert med_plugin < 0.95 * true
    assert abs(np.log(med / true)) < abs(np.log(med_plugin / true))


def test_few_items_are_flagged_with_kish_effective_number():
    """Items answered by very different numbers of rows: the bootstrap's effective number
    of items is Kish's (sum m)^2 / sum m^2, flagged below 10 with a warning naming the group."""
    rng = np.random.default_rng(0)
    frames = []
    for item, size in enumerate([60] * 3 + [2] * 30):  # Kish: (180 + 60)^2 / (3*3600 + 30*4) ~ 5.3
        for persona, group in [("a", "G"), ("b", "G"), ("c", "control"), ("d", "control"), ("e", "control")]:
            frames.append(pd.DataFrame({"item_id": item, "persona": persona, "persona_group": group,
                                        "refusal": rng.random(size) < 0.3}))
    df = pd.concat(frames, ignore_index=True).assign(refusal=lambda d: d.refusal.astype(int))
    m = df.groupby("item_id").size().to_numpy(float)
    with pytest.warns(RuntimeWarning, match=r"1 group\(s\) have fewer than 10 effective items.*the table"):
        out = rs.disparity(df, control="control", cluster="item_id")
    assert out["effective_clusters"].item() == pytest.approx(m.sum() ** 2 / (m**2).sum())
    assert out["few_clusters"].item()
    ok = rs.disparity(df[df.item_id >= 3], control="control", cluster="item_id")  # 30 equal items
    assert ok["effective_clusters"].item() == pytest.approx(30) and not ok["few_clusters"].item()


def test_a_list_of_cluster_columns_is_refused_with_the_combined_key_recipe(tmp_path):
    """A list of cluster columns means two-way clustering in refusal_rates, persona_effect
    and logit; disparity's bootstrap resamples one column, so a list is refused (it once
    meant the combination of the columns here), naming the key column to make (#23)."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame([(p, g, i, t, int(rng.random() < 0.3))
                       for p, g in [("a", "G"), ("b", "G"), ("c", "control"), ("d", "control")]
                       for i in range(20) for t in ("p1", "p2")],
                      columns=["persona", "persona_group", "item_id", "prompt", "refusal"])
    msg = (r"disparity: cluster=\['item_id', 'prompt'\] names 2 columns\. A list of cluster columns "
           r"means two-way clustering .*df\['item_id_prompt'\] = df\['item_id'\]\.astype\(str\) "
           r"\+ '\|' \+ df\['prompt'\]\.astype\(str\), and pass cluster='item_id_prompt'")
    df.to_parquet(tmp_path / "t.parquet", index=False)
    for data in (df, str(tmp_path / "t.parquet")):
        with pytest.raises(ValueError, match=msg):
            rs.disparity(data, cluster=["item_id", "prompt"], n_boot=10)
    with pytest.raises(ValueError, match=msg):
        rs.disparity(df.assign(label=np.nan), cluster=["item_id", "prompt"], labels="label")
    with pytest.raises(ValueError, match="two-way"), pytest.warns(FutureWarning):
        rs.disparity(df, block=["item_id", "prompt"], n_boot=10)
    # the recipe of the message works, and a one-column list is that column
    df["item_id_prompt"] = df["item_id"].astype(str) + "|" + df["prompt"].astype(str)
    one = rs.disparity(df, cluster="item_id_prompt", n_boot=20, seed=1)
    assert one.attrs["cluster"] == ["item_id_prompt"]
    pd.testing.assert_frame_equal(rs.disparity(df, cluster=["item_id_prompt"], n_boot=20, seed=1), one)
