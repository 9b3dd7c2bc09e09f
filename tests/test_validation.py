"""The shared checks: cluster='auto', conf, seeds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats._validation import check_conf, check_random_state, resolve_cluster


def test_auto_cluster_picks_repeated_item_id_and_says_so():
    df = rs.simulate_items(n_items=20, k=3, seed=0)
    with pytest.warns(rs.ClusterNote, match=r"clustering by 'item_id' \(20 items answered 3 times"
                      r" on average: 20 clusters, effective number 20.0\)"):
        assert resolve_cluster(df, "auto", where="f") == "item_id"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_cluster(df, None) is None
        assert resolve_cluster(df, "item_id") == "item_id"  # explicit: no note
    # unique item ids (each answered once) or no item_id column: independent rows, said so
    with pytest.warns(rs.ClusterNote, match=r"independent.*'item_id' never repeats"):
        assert resolve_cluster(df.drop_duplicates("item_id"), "auto") is None
    with pytest.warns(rs.ClusterNote, match=r"independent.*no 'item_id' column.*No column looks"):
        assert resolve_cluster(df.drop(columns="item_id"), "auto") is None


def test_auto_cluster_names_columns_that_look_like_item_ids():
    df = rs.simulate_items(n_items=20, k=3, seed=0).rename(columns={"item_id": "prompt_id"})
    df["row_id"] = np.arange(len(df))  # never repeats: not a candidate
    with pytest.warns(rs.ClusterNote, match=r"'prompt_id' \(20 values, 3 rows each\): pass "
                      r"cluster='prompt_id'") as rec:
        assert resolve_cluster(df, "auto", where="logit") is None
    assert "row_id" not in str(rec[0].message)


def test_effective_number_of_clusters_is_kish():
    from refusalstats.counts import effective_clusters

    assert effective_clusters([5] * 12) == 12.0
    # (2 + 2 + 200)^2 / (4 + 4 + 40000) = 41616 / 40008
    assert effective_clusters([2, 2, 200]) == pytest.approx(41616 / 40008)
    df = pd.DataFrame({"item_id": np.repeat([1, 2, 3], [2, 2, 200]), "refusal": 0})
    with pytest.warns(rs.ClusterNote, match=r"3 clusters, effective number 1.0\)"):
        resolve_cluster(df, "auto")


def test_cluster_errors_name_the_problem():
    df = rs.simulate_items(n_items=5, k=2, seed=0)
    with pytest.raises(rs.SchemaError, match=r"\['itemid'\] not in the table; its columns are"):
        resolve_cluster(df, "itemid")
    with pytest.raises(TypeError, match="cluster must be 'auto', None"):
        resolve_cluster(df, 3)
    bad = df.astype({"item_id": "float"})
    bad.loc[0, "item_id"] = np.nan
    with pytest.raises(ValueError, match="1 missing value"):
        resolve_cluster(bad, "auto")


def test_check_conf_and_seeds():
    assert check_conf(0.9) == 0.9
    for bad in (0, 1, 95, "0.9", True, None):
        with pytest.raises(ValueError, match="between 0 and 1"):
            check_conf(bad)
    a, b = check_random_state(7).random(3), check_random_state(7).random(3)
    np.testing.assert_array_equal(a, b)
    g = np.random.default_rng(0)
    assert check_random_state(g) is g
    assert isinstance(check_random_state(None), np.random.Generator)
    with pytest.raises(ValueError, match="non-negative"):
        check_random_state(-1)
    with pytest.raises(TypeError, match="got float"):
        check_random_state(1.5)


def test_simulate_items_matches_its_truth():
    # population-averaged rate by Gauss-Hermite = simulation mean over many items
    df = rs.simulate_items(n_items=20000, k=2, item_sd=1.0, intercept=-1.0, seed=1)
    truth = df.attrs["truth"]["marginal_rate_task_persona"]["t0|p0"]
    se = np.sqrt(truth * (1 - truth) / len(df)) * 1.6  # item clustering inflates the s.e.
    assert abs(df["refusal"].mean() - truth) < 4 * se
    assert isinstance(df["task"].dtype, pd.CategoricalDtype)
    # task constant within item, persona varying within item
    assert (df.groupby("item_id")["task"].nunique() == 1).all()
    assert (df.groupby("item_id")["persona"].nunique() == 2).all()


def test_choose_cluster_reports_what_it_did_for_frames_and_files(tmp_path):
    from refusalstats.counts import choose_cluster

    df = rs.simulate_items(n_items=12, k=4, seed=1)
    df.to_parquet(tmp_path / "t.parquet", index=False)
    for data in (df, tmp_path / "t.parquet"):
        with pytest.warns(rs.ClusterNote):
            got = choose_cluster(data, "auto", where="f")
        assert (got.column, got.n_clusters, got.effective) == ("item_id", 12, 12.0)
        assert got.note.startswith("f: clustering by 'item_id' (12 items answered 4 times")
        explicit = choose_cluster(data, "persona", count=True)
        assert explicit.column == "persona" and explicit.n_clusters == df.persona.nunique()
        assert explicit.note == ""
    with pytest.warns(rs.ClusterNote):
        none = choose_cluster(df.rename(columns={"item_id": "question_id"}), "auto")
    assert none.column is None and none.candidates == ["question_id"]
