"""Tests for refusalstats.scan: streaming counts from Parquet shards, and fits from counts.

The reference for every count is pandas' ``groupby(..., observed=True, sort=True)`` on the
concatenated rows; the reference for every fit is ``rs.logit`` on those rows.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import refusalstats as rs
from refusalstats import counts, scan
from refusalstats.formula import prepare_factors
from refusalstats.table import SchemaError

KEYS = ["model", "task", "persona", "prompt"]
FORMULA = "persona + task + prompt + model"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "scale.md"


def _rows(n: int = 6000, seed: int = 0, n_items: int = 120) -> pd.DataFrame:
    """Plain-string rows with repeated item x pattern pairs and no separation."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, n_items, n)
    df = pd.DataFrame({
        "item_id": item,
        "model": rng.choice(["m-b", "m-a", "m-c"], n),
        "task": np.where(item % 2 == 0, "nli", "offensiveness"),
        "persona": rng.choice(["Woman", "Atheist", "Man", "Black person"], n),
        "prompt": rng.choice(["p2", "p1", "p3"], n),
        "x": rng.integers(0, 4, n),
    })
    eta = (-1.0 + 0.6 * (df.persona == "Man") - 0.4 * (df.persona == "Woman")
           + 0.8 * (df.task == "offensiveness") + 0.3 * (df.model == "m-c")
           - 0.2 * (df.prompt == "p3") + rng.normal(0, 0.8, n_items)[item])
    df["refusal"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int8)
    return df


def _write_shards(df: pd.DataFrame, root: Path, n_shards: int = 7) -> Path:
    """Shards as multi-node runs write them: root/<model>/part-NNNNN.parquet (uneven sizes)."""
    cut = np.sort(np.random.default_rng(1).choice(np.arange(1, len(df)), n_shards - 1, replace=False))
    for i, part in enumerate(np.split(np.arange(len(df)), cut)):
        chunk = df.iloc[part]
        folder = root / f"node{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / f"part-{i:05d}.parquet")
    return root


def _concat(root: Path) -> pd.DataFrame:
    files = sorted(root.rglob("*.parquet"), key=str)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _groupby(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = df.groupby(keys, observed=True, sort=True)["refusal"].agg(n="size", refusals="sum")
    return g.reset_index()


def _assert_counts_equal(got: pd.DataFrame, want: pd.DataFrame, keys: list[str]) -> None:
    assert list(got.columns) == [*keys, "n", "refusals"]
    assert len(got) == len(want)
    for c in keys:
        assert got[c].astype(str).tolist() == want[c].astype(str).tolist(), c
    np.testing.assert_array_equal(got["n"].to_numpy(), want["n"].to_numpy())
    np.testing.assert_array_equal(got["refusals"].to_numpy(), want["refusals"].to_numpy())


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return _rows()


@pytest.fixture(scope="module")
def shards(rows, tmp_path_factory) -> Path:
    return _write_shards(rows, tmp_path_factory.mktemp("run"))


# --------------------------------------------------------------------------- counts
def test_shard_folder_counts_equal_pandas_groupby_on_the_rows(shards):
    rows = _concat(shards)
    got = rs.collapse(shards, by=KEYS)
    _assert_counts_equal(got, _groupby(rows, KEYS), KEYS)
    assert got["n"].sum() == len(rows) == 6000
    assert got.attrs["collapse"]["rows"] == 6000
    # levels are the ones logit would build from the rows (strings: sorted)
    prepared = prepare_factors(rows, KEYS)
    for c in KEYS:
        assert list(got[c].cat.categories) == list(prepared[c].cat.categories)
    assert list(got["model"].cat.categories) == ["m-a", "m-b", "m-c"]


def test_file_glob_list_and_dataframe_give_the_same_table(shards, rows, tmp_path):
    want = rs.collapse(shards, by=KEYS)
    single = tmp_path / "all.parquet"
    pq.write_table(pa.Table.from_pandas(_concat(shards), preserve_index=False), single)
    for source in (single, str(shards / "node*" / "part-*.parquet"),
                   sorted(shards.rglob("*.parquet"), key=str), rows):
        got = rs.collapse(source, by=KEYS)
        pd.testing.assert_frame_equal(got, want)


def test_tiny_batches_and_merges_change_nothing(shards, monkeypatch):
    want = rs.collapse(shards, by=KEYS, cluster="item_id")
    monkeypatch.setattr(counts, "_COMPACT_ROWS", 50)  # merge partial counts very often
    got = rs.collapse(shards, by=KEYS, cluster="item_id", batch_rows=97)
    pd.testing.assert_frame_equal(got, want)
    _assert_counts_equal(got, _groupby(_concat(shards), [*KEYS, "item_id"]), [*KEYS, "item_id"])


def test_merges_in_a_sparse_key_space_equal_pandas_groupby(rows, monkeypatch):
    """Keys with many more level combinations than lines (item x a 1,000-level key) are
    merged by sorting, not in a dense table per key: same counts, same order."""
    df = rows.assign(u=np.random.default_rng(3).integers(0, 1000, len(rows)))
    monkeypatch.setattr(counts, "_COMPACT_ROWS", 50)
    got = rs.collapse(df, by=["u", "model"], cluster="item_id", batch_rows=301)
    _assert_counts_equal(got, _groupby(df, ["u", "model", "item_id"]), ["u", "model", "item_id"])


def test_stored_categorical_levels_keep_their_order_across_shards(tmp_path):
    """Dictionary (categorical) columns keep their stored order, merged in file order, as
    pd.read_parquet(folder) does; unused levels are dropped as prepare_factors does."""
    a = pd.DataFrame({"persona": pd.Categorical(["Woman", "Man"], categories=["Woman", "Unused", "Man"]),
                      "refusal": [1, 0]})
    b = pd.DataFrame({"persona": pd.Categorical(["Atheist", "Man", "Man"], categories=["Atheist", "Man"]),
                      "refusal": [0, 1, 1]})
    pq.write_table(pa.Table.from_pandas(a, preserve_index=False), tmp_path / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(b, preserve_index=False), tmp_path / "part-1.parquet")
    got = rs.collapse(tmp_path, by="persona")
    assert list(got["persona"].cat.categories) == ["Woman", "Man", "Atheist"]
    assert got["persona"].tolist() == ["Woman", "Man", "Atheist"]
    assert got["n"].tolist() == [1, 3, 1] and got["refusals"].tolist() == [1, 2, 0]
    in_memory = prepare_factors(pd.read_parquet(tmp_path), ["persona"])
    assert list(in_memory["persona"].cat.categories) == ["Woman", "Man", "Atheist"]


def test_numeric_keys_stay_numeric_and_sorted(rows):
    got = rs.collapse(rows, by=["x", "task"])
    assert pd.api.types.is_integer_dtype(got["x"])
    _assert_counts_equal(got, _groupby(rows, ["x", "task"]), ["x", "task"])
    overall = rs.collapse(rows, by=[])
    assert overall["n"].tolist() == [6000] and overall["refusals"].tolist() == [int(rows.refusal.sum())]


def test_boolean_refusal_counts_as_0_1(tmp_path):
    df = pd.DataFrame({"model": ["a", "a", "b"], "refusal": [True, False, True]})
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "t.parquet")
    got = rs.collapse(tmp_path / "t.parquet", by="model")
    assert got["refusals"].tolist() == [1, 1] and got["n"].tolist() == [2, 1]


# --------------------------------------------------------------------------- fits from counts
def test_logit_on_streamed_counts_equals_logit_on_rows(shards):
    rows = _concat(shards)
    fit_rows = rs.logit(f"refusal ~ {FORMULA}", rows, cluster=None, epsilon=1e-14)
    counts = rs.collapse(shards, by=KEYS)
    fit_counts = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster=None, epsilon=1e-14)
    assert list(fit_counts.params.index) == list(fit_rows.params.index)
    assert fit_counts.n_patterns == fit_rows.n_patterns == len(counts)
    np.testing.assert_allclose(fit_counts.params, fit_rows.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fit_counts.bse, fit_rows.bse, rtol=1e-10)
    # the deviance differs only by the saturated model of the counts; differences agree
    assert abs((fit_counts.null_deviance - fit_counts.deviance)
               - (fit_rows.null_deviance - fit_rows.deviance)) < 1e-8


@pytest.fixture(scope="module")
def paper_shards(tmp_path_factory):
    """A small paper design (every item x pattern pair one row) as 3 Parquet shards."""
    df = rs.simulate_paper(scale=0.02, seed=5, calibrate="table7")
    df.attrs = {}
    df = df[df.groupby("model", observed=True)["refusal"].transform("sum") > 0]  # no separation
    df = df.assign(model=df["model"].cat.remove_unused_categories()).reset_index(drop=True)
    root = tmp_path_factory.mktemp("paper")
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False), root / f"part-{i}.parquet")
    return df, root


def test_clustered_logit_on_paper_design_counts_equals_rows(paper_shards):
    """Paper design: every item x pattern pair is one row, so counts and rows have the same N."""
    df, root = paper_shards
    assert df["model"].nunique() >= 4
    fit_rows = rs.logit(f"refusal ~ {FORMULA}", df, cluster="item_id", vcov="CR1", epsilon=1e-14)
    with pytest.warns(rs.ClusterNote, match="item_id"):
        counts = rs.collapse(root, by=KEYS, cluster="auto")
    assert list(counts.columns) == [*KEYS, "item_id", "n", "refusals"]
    fit_counts = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster="item_id", vcov="CR1", epsilon=1e-14)
    assert fit_counts.n_clusters == fit_rows.n_clusters == df.item_id.nunique()
    np.testing.assert_allclose(fit_counts.params, fit_rows.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fit_counts.bse, fit_rows.bse, rtol=1e-10)


def test_clustered_logit_on_counts_with_repeats_equals_rows_exactly(shards):
    rows = _concat(shards)
    counts = rs.collapse(shards, by=KEYS, cluster="item_id")
    fit_rows = rs.logit(f"refusal ~ {FORMULA}", rows, cluster="item_id", vcov="CR1", epsilon=1e-14)
    fit_counts = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster="item_id", vcov="CR1", epsilon=1e-14)
    np.testing.assert_allclose(fit_counts.bse, fit_rows.bse, rtol=1e-10)


# --------------------------------------------------------------------------- cluster="auto"
def test_auto_cluster_on_a_path_matches_the_dataframe_rule(shards, rows, tmp_path):
    with pytest.warns(rs.ClusterNote, match="120 items"):
        from_path = rs.collapse(shards, by=KEYS, cluster="auto")
    with pytest.warns(rs.ClusterNote):
        from_frame = rs.collapse(rows, by=KEYS, cluster="auto")
    pd.testing.assert_frame_equal(from_path, from_frame)
    assert from_path.attrs["collapse"]["cluster"] == "item_id"
    # item ids that never repeat: no clustering, the plain counts
    unique = rows.assign(item_id=np.arange(len(rows)))
    pq.write_table(pa.Table.from_pandas(unique, preserve_index=False), tmp_path / "u.parquet")
    # ... and "auto" still says what it did (never silent)
    with pytest.warns(rs.ClusterNote, match=r"independent.*'item_id' never repeats"):
        got = rs.collapse(tmp_path / "u.parquet", by=KEYS, cluster="auto")
    pd.testing.assert_frame_equal(got, rs.collapse(rows, by=KEYS))
    assert got.attrs["collapse"]["cluster"] is None
    # no item_id column at all, item ids under another name: named with the cluster= to pass
    renamed = rows.rename(columns={"item_id": "prompt_id"})
    pq.write_table(pa.Table.from_pandas(renamed, preserve_index=False), tmp_path / "noid.parquet")
    for source in (tmp_path / "noid.parquet", renamed):
        with pytest.warns(rs.ClusterNote, match=r"no 'item_id' column.*'prompt_id' \(120 values, "
                          r"50 rows each\).*cluster='prompt_id'"):
            got = rs.collapse(source, by="model", cluster="auto")
        assert list(got.columns) == ["model", "n", "refusals"]


# --------------------------------------------------------------------------- bad input
def test_missing_columns_name_the_dataset_columns(shards):
    with pytest.raises(SchemaError, match=r"\['temperature'\].*its columns are \['item_id', 'model'"):
        rs.collapse(shards, by=["model", "temperature"], cluster="seed")
    # a missing cluster column says how to do without clusters
    with pytest.raises(SchemaError, match=r"\['seed'\].*cluster=None treats rows as independent"):
        rs.collapse(shards, by=["model"], cluster="seed")
    with pytest.raises(SchemaError, match="'refused'"):
        rs.collapse(shards, by="model", refusal="refused")
    assert rs.scan_columns(shards) == ["item_id", "model", "task", "persona", "prompt", "x", "refusal"]


def test_refusal_outside_0_1_names_the_file(tmp_path, rows):
    bad = rows.head(50).copy()
    bad.loc[bad.index[7], "refusal"] = 2
    _write_shards(rows.iloc[50:], tmp_path, n_shards=2)
    (tmp_path / "node9").mkdir()
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp_path / "node9" / "part-bad.parquet")
    with pytest.raises(SchemaError, match=r"0/1 or True/False; found 1 other value\(s\) in '.*part-bad.parquet', e.g. \[2\]"):
        rs.collapse(tmp_path, by="model")
    text = rows.head(5).assign(refusal=["yes", "no", "yes", "no", "no"])
    with pytest.raises(SchemaError, match=r"0/1 or True/False; found 5 other value\(s\).*e\.g\. \['yes', 'no'\]"):
        rs.collapse(text, by="model")
    nan = rows.head(5).assign(refusal=[0, 1, np.nan, 0, 1])
    with pytest.raises(SchemaError, match=r"has 1 missing value\(s\); refusal must be 0/1"):
        rs.collapse(nan, by="model")


def test_missing_values_in_a_key_column_are_an_error(tmp_path, rows):
    df = rows.head(100).astype({"persona": object})
    df.loc[df.index[[3, 9]], "persona"] = None
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "part-0.parquet")
    with pytest.raises(ValueError, match=r"column 'persona' has 2 missing value\(s\) in '.*part-0.parquet'"):
        rs.collapse(tmp_path, by=["model", "persona"])
    num = rows.head(100).astype({"x": float})
    num.loc[num.index[0], "x"] = np.nan
    with pytest.raises(ValueError, match=r"column 'x' has 1 missing"):
        rs.collapse(num, by="x")
    ids = rows.head(100).astype({"item_id": float})
    ids.loc[ids.index[5], "item_id"] = np.nan
    pq.write_table(pa.Table.from_pandas(ids, preserve_index=False), tmp_path / "part-0.parquet")
    with pytest.raises(ValueError, match="item_id.*pass cluster=None"):
        rs.collapse(tmp_path, by="model", cluster="item_id")


def test_paths_and_arguments_are_checked(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="no Parquet file or folder"):
        rs.collapse(tmp_path / "nope", by="model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .parquet files"):
        rs.collapse(tmp_path / "empty", by="model")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        rs.collapse(str(tmp_path / "*.parquet"), by="model")
    run = tmp_path / "gen"
    (run / "shards" / "m").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="generation run directory.*responses.parquet"):
        rs.collapse(run, by="model")
    with pytest.raises(ValueError, match="also in by="):
        rs.collapse(shards, by=["model", "item_id"], cluster="item_id")
    with pytest.raises(ValueError, match="clash with the count columns"):
        rs.collapse(shards, by=["n"])
    with pytest.raises(ValueError, match="more than once"):
        rs.collapse(shards, by=["model", "model"])
    with pytest.raises(TypeError, match="by must be"):
        rs.collapse(shards, by=3)
    with pytest.raises(ValueError, match="batch_rows"):
        rs.collapse(shards, by="model", batch_rows=0)
    with pytest.raises(ValueError, match="empty"):
        rs.collapse(pd.DataFrame({"model": [], "refusal": []}), by="model")


def test_a_run_directory_is_read_through_its_collected_table(tmp_path, rows):
    run = tmp_path / "gen"
    (run / "shards" / "m").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"row_id": [0], "response": ["x"]})),
                   run / "shards" / "m" / "part-000000.parquet")
    rs.write_responses(rows, run / "responses.parquet")
    got = rs.collapse(run, by=["task"])
    assert got["n"].sum() == len(rows)


# --------------------------------------------------------------------------- docs/scale.md recipes
def _recipe(name: str) -> str:
    text = DOCS.read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        if f"# recipe: {name}" in block:
            return block
    raise AssertionError(f"docs/scale.md has no python block marked '# recipe: {name}'")


def test_docs_pandas_recipe_gives_the_identical_counts_table(shards):
    env = {"path": str(shards), "by": KEYS}
    exec(_recipe("pandas"), env)  # noqa: S102 - the documented recipe, run as written
    pd.testing.assert_frame_equal(env["counts"], rs.collapse(shards, by=KEYS), check_like=False)


def test_docs_duckdb_recipe_gives_the_identical_counts_table(shards):
    pytest.importorskip("duckdb")
    env = {"path": str(shards), "by": KEYS}
    exec(_recipe("duckdb"), env)  # noqa: S102 - the documented recipe, run as written
    want = rs.collapse(shards, by=KEYS)
    pd.testing.assert_frame_equal(env["counts"], want)
    fit = rs.logit(f"refusals ~ {FORMULA}", env["counts"], trials="n", cluster=None)
    np.testing.assert_allclose(
        fit.params, rs.logit(f"refusals ~ {FORMULA}", want, trials="n", cluster=None).params, atol=1e-12)


# --------------------------------------------------------------------------- streamed CR1
def test_streamed_cr1_equals_the_clustered_row_fit(shards):
    """Fit the small unclustered counts, stream the rows for the cluster score sums: the
    covariance equals rs.logit(rows, cluster='item_id') (with N = rows, unlike the
    counts-with-item_id route above)."""
    rows = _concat(shards)
    fit_rows = rs.logit(f"refusal ~ {FORMULA}", rows, cluster="item_id", vcov="CR1", epsilon=1e-14)
    counts = rs.collapse(shards, by=KEYS)
    fit = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster=None, epsilon=1e-14)
    V = scan.cluster_robust_cov(fit, counts, shards, cluster="item_id", batch_rows=500)
    np.testing.assert_allclose(V.to_numpy(), fit_rows.cov_params().to_numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(np.sqrt(np.diag(V)), fit_rows.bse, rtol=1e-10)
    assert V.attrs["cluster_robust_cov"] == {"cluster": "item_id", "n_clusters": 120, "rows": 6000}
    # the same from the DataFrame, with a numeric covariate and a reference level
    f2 = "refusals ~ persona + x + task"
    c2 = rs.collapse(rows, by=["persona", "x", "task"])
    fit2 = rs.logit(f2, c2, trials="n", cluster=None, reference={"persona": "Man"}, epsilon=1e-14)
    want = rs.logit("refusal ~ persona + x + task", rows, cluster="item_id", vcov="CR1", reference={"persona": "Man"},
                    epsilon=1e-14)
    V2 = scan.cluster_robust_cov(fit2, c2, rows, cluster="item_id")
    np.testing.assert_allclose(np.sqrt(np.diag(V2)), want.bse, rtol=1e-10)


def test_streamed_cr1_in_pieces_of_few_clusters(shards, monkeypatch):
    """Batches with more clusters than one dense piece holds are summed piece by piece."""
    rows = _concat(shards)
    want = rs.logit(f"refusal ~ {FORMULA}", rows, cluster="item_id", vcov="CR1", epsilon=1e-14)
    counts = rs.collapse(shards, by=KEYS)
    fit = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster=None, epsilon=1e-14)
    monkeypatch.setattr(scan._ScoreSums, "BLOCK", 7)  # 120 items: many pieces per batch
    V = scan.cluster_robust_cov(fit, counts, shards, cluster="item_id", batch_rows=2000)
    np.testing.assert_allclose(V.to_numpy(), want.cov_params().to_numpy(), rtol=1e-9, atol=1e-14)


def test_streamed_cr1_refuses_mismatched_inputs(shards, rows):
    counts = rs.collapse(shards, by=KEYS)
    fit = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster=None)
    with pytest.raises(ValueError, match="sums to 6,000"):
        scan.cluster_robust_cov(fit, counts, rows.head(3000), cluster="item_id")
    other = rows.assign(persona=rows["persona"].replace({"Man": "Robot"}))
    with pytest.raises(ValueError, match=r"column 'persona' has value\(s\) \['Robot'\]"):
        scan.cluster_robust_cov(fit, counts, other, cluster="item_id")
    with pytest.raises(ValueError, match="not the table the fit was fitted on"):
        scan.cluster_robust_cov(fit, counts[counts["persona"] != "Man"], rows, cluster="item_id")
    clustered = rs.logit(f"refusals ~ {FORMULA}", rs.collapse(rows, by=KEYS, cluster="item_id"),
                         trials="n", cluster="item_id")
    with pytest.raises(ValueError, match="cluster=None"):
        scan.cluster_robust_cov(clustered, counts, rows, cluster="item_id")
    with pytest.raises(SchemaError, match="'batch'"):
        scan.cluster_robust_cov(fit, counts, shards, cluster="batch")


def test_streamed_cr1_with_a_separated_term(rows):
    """A model that never refuses: its term diverges (NaN in the covariance, as logit
    reports it); the identified terms keep the clustered row fit's CR1 SEs."""
    extra = rows.head(600).assign(model="m-zero", refusal=np.int8(0))
    data = pd.concat([rows, extra], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = rs.logit(f"refusal ~ {FORMULA}", data, cluster="item_id", vcov="CR1")
        counts = rs.collapse(data, by=KEYS)
        fit = rs.logit(f"refusals ~ {FORMULA}", counts, trials="n", cluster=None)
    assert fit.separated_terms == ["model[T.m-zero]"]
    se = pd.Series(np.sqrt(np.diag(scan.cluster_robust_cov(fit, counts, data).to_numpy())),
                   index=fit.params.index)
    assert np.isnan(se["model[T.m-zero]"])
    ok = [t for t in fit.params.index if t != "model[T.m-zero]"]
    np.testing.assert_allclose(se[ok], want.bse[ok], rtol=1e-7)  # 1.3e-8 measured


# ------------------------------------------------------------------ logit(path, cluster=...) streams CR1
@pytest.mark.parametrize("design", ["paper", "repeats"])
def test_clustered_logit_from_a_path_streams_cr1_and_equals_the_dataframe_fit(design, paper_shards, shards,
                                                                              monkeypatch):
    """A source with more (cluster, pattern) pairs than CR2 holds (the limit set to 0 here):
    logit(path, cluster=) fits the per-pattern counts and streams the CR1 meat, no counts per
    item x pattern (as many as the rows in the paper design); results equal the DataFrame's
    CR1 fit. "repeats": items answer the same pattern several times."""
    from refusalstats.regression import covariance
    from refusalstats.regression import model as logit_model

    monkeypatch.setattr(logit_model, "_CR2_MAX_PAIRS", 0)
    df, root = paper_shards if design == "paper" else (_concat(shards), shards)
    ref = {"persona": "Atheist", "prompt": "p1"}
    want = rs.logit(f"refusal ~ {FORMULA}", df, cluster="item_id", vcov="CR1", reference=ref, epsilon=1e-14)
    passes = []
    real = covariance._stream_cluster_meats  # its home since #23 (scan re-exports it)
    monkeypatch.setattr(covariance, "_stream_cluster_meats",
                        lambda *a, **k: passes.append(len(a[6])) or real(*a, **k))
    with pytest.warns(UserWarning, match=r"more than 0 \(cluster, pattern\) pairs"):
        got = rs.logit(f"refusal ~ {FORMULA}", root, cluster="item_id", vcov="CR1", reference=ref,
                       epsilon=1e-14)
    assert passes == [1]  # one streamed pass for the full model's CR1
    assert isinstance(got._design.cluster, covariance._StreamedCluster)
    assert got.n_patterns == want.n_patterns < len(df) // 4  # per pattern, not per item x pattern
    assert (want._design.cluster.n.max() > 1) == (design == "repeats")  # rows per item x pattern
    assert got.n_clusters == want.n_clusters == df["item_id"].nunique()
    assert got.cov_type == want.cov_type
    np.testing.assert_allclose(got.params, want.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.cov_params(), want.cov_params(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.bse, want.bse, rtol=1e-10)
    np.testing.assert_allclose(got.conf_int(), want.conf_int(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.conf_int(conf=0.9), want.conf_int(conf=0.9), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.pvalues, want.pvalues, rtol=1e-9, atol=1e-15)
    # anova refits each sub-model and needs its CR1 covariance: all in one more pass
    passes.clear()
    a, b = want.anova(), got.anova()
    assert passes == [len(a) - 1]
    assert a["term"].tolist() == b["term"].tolist()
    np.testing.assert_allclose(b[["df", "df_resid", "F", "p_value"]], a[["df", "df_resid", "F", "p_value"]],
                               rtol=1e-9)
    a, b = want.drop1(), got.drop1()
    np.testing.assert_allclose(b[["df", "df_resid", "F", "p_value"]], a[["df", "df_resid", "F", "p_value"]],
                               rtol=1e-9)
    assert b.attrs["test"] == a.attrs["test"]


def test_clustered_logit_from_a_path_auto_and_fallbacks(paper_shards, shards, rows, tmp_path):
    df, root = paper_shards
    # auto: item ids repeat (paper design) -> clustered, with the note; the default CR2 with
    # Satterthwaite df, as for the same rows in a DataFrame (#19)
    with pytest.warns(rs.ClusterNote, match="clustering by 'item_id'"):
        got = rs.logit(f"refusal ~ {FORMULA}", root, epsilon=1e-14)
    want = rs.logit(f"refusal ~ {FORMULA}", df, cluster="item_id", epsilon=1e-14)
    assert got.cluster == "item_id" and got.vcov == want.vcov == "CR2"
    np.testing.assert_allclose(got.bse, want.bse, rtol=1e-10)
    np.testing.assert_allclose(got.df, want.df, rtol=1e-10)
    # auto with item ids that never repeat: not clustered, model-based SEs, and said so before the
    # fit (the one cluster='auto' rule for frames and sources, #23)
    unique = rows.assign(item_id=np.arange(len(rows)))
    pq.write_table(pa.Table.from_pandas(unique, preserve_index=False), tmp_path / "u.parquet")
    with pytest.warns(rs.ClusterNote, match="rows are treated as independent"):
        plain = rs.logit(f"refusal ~ {FORMULA}", tmp_path / "u.parquet", epsilon=1e-14)
    assert plain.cluster is None and plain.n_clusters == 0
    np.testing.assert_allclose(plain.bse, rs.logit(f"refusal ~ {FORMULA}", rows, cluster=None,
                                                   epsilon=1e-14).bse, rtol=1e-10)
    # a cluster column that is not there
    with pytest.raises(SchemaError, match="'batch'"):
        rs.logit(f"refusal ~ {FORMULA}", shards, cluster="batch")
    # the cluster bootstrap resamples clusters: per item x pattern counts, as before
    b_rows = rs.logit("refusal ~ task + persona", rows, cluster="item_id", vcov="CR1", ci="bootstrap", n_boot=20,
                      progress=False)
    b_path = rs.logit("refusal ~ task + persona", shards, cluster="item_id", vcov="CR1", ci="bootstrap", n_boot=20,
                      progress=False)
    np.testing.assert_allclose(b_path.conf_int(), b_rows.conf_int(), rtol=1e-8)


# ------------------------------------------------------------------ analyses on a dataset path
def test_refusal_rates_and_logit_accept_a_shard_folder(shards):
    """A path is streamed into counts; results equal the in-memory ones (issue #15)."""
    rows = _concat(shards)
    for kw in ({"by": "task", "cluster": "item_id"}, {"by": ["task", "persona"], "cluster": None},
               {"cluster": "item_id"}):
        a = rs.refusal_rates(rows, **kw).reset_index(drop=True)
        b = rs.refusal_rates(shards, **kw).reset_index(drop=True)
        assert list(a.columns) == list(b.columns)
        for c in a.columns:
            if pd.api.types.is_numeric_dtype(a[c]):
                np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), rtol=1e-12)
            else:
                assert b[c].astype(str).tolist() == a[c].astype(str).tolist()
    fit_rows = rs.logit(f"refusal ~ {FORMULA}", rows, cluster="item_id", vcov="CR1", epsilon=1e-14)
    fit_path = rs.logit(f"refusal ~ {FORMULA}", shards, cluster="item_id", vcov="CR1", epsilon=1e-14)
    np.testing.assert_allclose(fit_path.params, fit_rows.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fit_path.bse, fit_rows.bse, rtol=1e-9)
    a, b = fit_rows.drop1(), fit_path.drop1()
    np.testing.assert_allclose(b["F"], a["F"], rtol=1e-8)
    with pytest.raises(ValueError, match="trials= and weights= are for a DataFrame"):
        rs.logit(f"refusal ~ {FORMULA}", shards, trials="n")


# --------------------------------------------------------------------------- sources (#20, #21)
def _runs_with_latest_link(rows: pd.DataFrame, root: Path) -> Path:
    """runs/run1..run3 with shards, and runs/latest -> run3 (a folder link), as tools leave."""
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 3), start=1):
        folder = root / "runs" / f"run{i}" / "shards"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(rows.iloc[part], preserve_index=False),
                       folder / "part-00000.parquet")
    (root / "runs" / "latest").symlink_to(root / "runs" / "run3", target_is_directory=True)
    return root / "runs"


def test_a_link_to_a_run_counts_each_row_once(rows, tmp_path):
    runs = _runs_with_latest_link(rows, tmp_path)
    want = rs.refusal_rates(rows, by="task", cluster=None)
    for source in (runs, str(runs / "**" / "*.parquet"), str(runs / "*" / "shards" / "*.parquet")):
        got = rs.refusal_rates(source, by="task", cluster=None)
        assert got["n"].sum() == len(rows) == 6000, source
        pd.testing.assert_frame_equal(got, want)
    # the link itself, given by name, is read (once)
    assert rs.collapse(runs / "latest", by=[])["n"].item() == len(np.array_split(np.arange(6000), 3)[2])


def test_links_out_of_the_folder_and_link_loops(rows, tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    rows.iloc[:100].to_parquet(inside / "a.parquet", index=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    rows.iloc[100:300].to_parquet(outside / "b.parquet", index=False)
    (inside / "out").symlink_to(outside, target_is_directory=True)  # a folder link out
    (inside / "b.parquet").symlink_to(outside / "b.parquet")  # a file link out
    (inside / "loop").symlink_to(inside, target_is_directory=True)  # a loop
    (inside / "sub").mkdir()
    (inside / "sub" / "up").symlink_to(inside, target_is_directory=True)  # a deeper loop
    for source in (inside, str(inside / "**" / "*.parquet")):
        with pytest.warns(UserWarning, match=r"left out symbolic link.*outside") as rec:
            got = rs.collapse(source, by=[])
        assert got["n"].item() == 100, source
        text = " ".join(str(w.message) for w in rec)
        assert "elsewhere" in text and "loop" in text


def test_refusal_rates_and_read_responses_read_text_tables_and_run_directories(rows, tmp_path):
    rows.to_csv(tmp_path / "good.csv", index=False)
    with pytest.warns(rs.ClusterNote):
        got = rs.refusal_rates(str(tmp_path / "good.csv"), by="task")
    with pytest.warns(rs.ClusterNote):
        want = rs.refusal_rates(rows, by="task")
    pd.testing.assert_frame_equal(got, want)
    # a run directory written by `refusalstats generate` (labelled shards) reads as one table
    run = tmp_path / "runs" / "two"
    (run / "shards" / "m").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    tidy = rows.drop(columns="x").assign(model=rows["model"])
    for i, part in enumerate(np.array_split(np.arange(len(tidy)), 2)):
        pq.write_table(pa.Table.from_pandas(tidy.iloc[part], preserve_index=False),
                       run / "shards" / "m" / f"part-{i:06d}.parquet")
    from refusalstats.sources import source_of

    assert source_of(run).kind == "run-dir"
    assert source_of(str(tmp_path / "good.csv")).kind == "table-file"
    back = rs.read_responses(run)
    assert len(back) == len(rows)
    assert back["refusal"].sum() == rows["refusal"].sum()
    assert rs.refusal_rates(run, by="task", cluster=None)["n"].sum() == len(rows)


def test_logit_reads_a_csv_path_as_its_rows(rows, tmp_path):
    """rs.logit(formula, "t.csv") reads what `refusalstats fit t.csv` reads (#21)."""
    rows.to_csv(tmp_path / "t.csv", index=False)
    want = rs.logit(f"refusal ~ {FORMULA}", rows, cluster="item_id")
    got = rs.logit(f"refusal ~ {FORMULA}", str(tmp_path / "t.csv"), cluster="item_id")
    np.testing.assert_allclose(got.params, want.params, rtol=1e-12)
    np.testing.assert_allclose(got.bse, want.bse, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::refusalstats.ClusterNote")
def test_every_text_table_format_reads_as_its_rows(rows, tmp_path):
    want = rs.refusal_rates(rows, by="task")
    rows.to_json(tmp_path / "t.json", orient="records")
    rows.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    rows.to_csv(tmp_path / "t.csv.gz", index=False)
    rows.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    from refusalstats.sources import source_of

    for name in ("t.json", "t.jsonl", "t.csv.gz", "t.tsv"):
        assert source_of(tmp_path / name, read=False).kind == "table-file"
        got = rs.refusal_rates(str(tmp_path / name), by="task")
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


# --------------------------------------------------------------------------- error rows
def _with_error_rows(rows: pd.DataFrame, at=(5, 77, 400)) -> pd.DataFrame:
    """``rows`` as ``generate --on-error record`` writes them: ``refusal_source``, and rows of
    prompts that got no answer (``"error"``, no refusal, the error text in ``error``)."""
    df = rows.drop(columns="x").copy()
    df["refusal"] = df["refusal"].astype("Int8")
    df["refusal_source"] = "detector"
    df["error"] = None
    at = list(at)
    df.loc[at, "refusal"] = pd.NA
    df.loc[at, "refusal_source"] = "error"
    df.loc[at, "error"] = "HTTP 400: context too long"
    return df


def _error_run(df: pd.DataFrame, run: Path) -> Path:
    """A generation run directory holding ``df`` as two labelled shards."""
    (run / "shards" / "m").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for i, part in enumerate(np.array_split(np.arange(len(df)), 2)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False),
                       run / "shards" / "m" / f"part-{i:06d}.parquet")
    return run


def _left_out(caught) -> list[str]:
    return [str(w.message) for w in caught if "left out as errors" in str(w.message)]


@pytest.mark.parametrize("kind", ["run-dir", "parquet-file", "folder"])
def test_streamed_sources_leave_error_rows_out_as_validate_does(rows, tmp_path, kind):
    """A Parquet source with error rows (no refusal) gives what the same table in memory
    gives (validate leaves them out), and says once how many rows it left out."""
    from refusalstats.sources import source_of

    raw = _with_error_rows(rows)
    if kind == "run-dir":
        path = _error_run(raw, tmp_path / "run")
    elif kind == "parquet-file":
        path = tmp_path / "t.parquet"
        raw.to_parquet(path, index=False)
    else:
        path = _write_shards(raw, tmp_path / "shards")
    assert source_of(path).kind == kind
    with pytest.warns(UserWarning, match="3 of 6,000 row"):
        clean = rs.validate(raw, required=["refusal"])
    assert len(clean) == len(rows) - 3
    ref = {"persona": "Atheist", "prompt": "p1"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # three passes over the rows: cluster='auto', the counts and the streamed CR1 meat
        got = rs.logit(f"refusal ~ {FORMULA}", path, cluster="auto", vcov="CR1", reference=ref,
                        epsilon=1e-14)
        rates = rs.refusal_rates(path, by=["model", "task"])
        counted = rs.collapse(path, by="task")
    said = _left_out(caught)
    words = (f"'{path}': 3 of 6,000 row(s) are left out as errors (refusal_source 'error': "
             "the prompt got no answer, its error text is in column 'error'); the analyses "
             "use the other rows")
    assert said == [words], said  # once, in validate's words
    assert counted.attrs["collapse"]["n_error_rows"] == 3
    assert counted.attrs["collapse"]["rows"] == int(counted["n"].sum()) == len(rows) - 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = rs.logit(f"refusal ~ {FORMULA}", clean, cluster="auto", vcov="CR1", reference=ref,
                        epsilon=1e-14)
        want_rates = rs.refusal_rates(clean, by=["model", "task"])
        raw_rates = rs.refusal_rates(raw, by=["model", "task"])  # the rows with their errors
    assert got.n_clusters == want.n_clusters and want.n_obs == len(rows) - 3
    np.testing.assert_allclose(got.params, want.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.bse, want.bse, rtol=1e-9)
    pd.testing.assert_frame_equal(rates, want_rates, check_dtype=False, check_categorical=False)
    pd.testing.assert_frame_equal(raw_rates, want_rates, check_dtype=False, check_categorical=False)
    assert rates["n"].sum() == len(rows) - 3
    # read_responses of the same source leaves the same rows out, in the same words
    with pytest.warns(UserWarning, match=re.escape(said[0][len(f"'{path}': "):])):
        assert len(rs.read_responses(path)) == len(rows) - 3


@pytest.mark.usefixtures("undrawn_figures")  # the header is checked, not the figures
def test_streamed_report_header_counts_error_rows_as_the_dataframe_does(tmp_path):
    """rs.report on a Parquet run with one error row has the header of the same table in
    memory: rows and refusals without it, and an 'Error rows left out' line saying 1."""
    df = rs.simulate_paper(scale=0.005, seed=2)
    # four models x four personas (the header is checked; the persona figures of a 16 x 15
    # table take most of a report's time even unrasterized)
    df = df[df["model"].isin(df["model"].cat.categories[:4])
            & df["persona"].isin(df["persona"].cat.categories[:4])].reset_index(drop=True)
    df = df.assign(model=df["model"].cat.remove_unused_categories(),
                   persona=df["persona"].cat.remove_unused_categories())
    df["refusal"] = df["refusal"].astype("Int8")
    df["refusal_source"] = pd.Series("detector", index=df.index, dtype=object)
    df.loc[3, "refusal"] = pd.NA
    df.loc[3, "refusal_source"] = "error"
    path = tmp_path / "t.parquet"
    df.to_parquet(path, index=False)
    heads = {}
    for name, data in (("frame", df), ("parquet", str(path))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = rs.report(data, out=tmp_path / name, hierarchical=False, inputs=["model"],
                            options={"w2": {"n_boot": 10, "n_perm": 10}}, progress=False,
                            source="the table")
        text = rep.path.read_text()
        head = text[:text.find("</dl>")]
        head = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<time>", head)
        heads[name] = head.replace(" (Parquet, streamed into counts: no analysis holds the rows)", "")
    assert f"<dd>{len(df) - 1:,} answers" in heads["frame"]
    assert "Error rows left out</dt><dd>1 (" in heads["frame"]
    assert heads["parquet"] == heads["frame"]


def test_collapse_of_a_dataframe_leaves_error_rows_out_too(rows):
    """collapse(DataFrame) and choose_cluster leave error rows out as a Parquet source
    does (one rule in sources.source_batches), so counts never depend on how rows arrive."""
    raw = _with_error_rows(rows)
    with pytest.warns(UserWarning, match=r"DataFrame: 3 of 6,000 row\(s\) are left out as errors"):
        got = rs.collapse(raw, by=["model", "task"], cluster="item_id")
    want = rs.collapse(rows.drop(index=[5, 77, 400]), by=["model", "task"], cluster="item_id")
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert got.attrs["collapse"]["n_error_rows"] == 3 and want.attrs["collapse"]["n_error_rows"] == 0
    choice = counts.choose_cluster(raw, "item_id", count=True)
    sizes = rows.drop(index=[5, 77, 400]).groupby("item_id").size()
    assert choice.effective == pytest.approx(counts.effective_clusters(sizes), rel=1e-13)
    assert choice.effective != pytest.approx(  # the error rows would change it
        counts.effective_clusters(rows.groupby("item_id").size()), rel=1e-13)


def test_missing_column_messages_end_in_one_hint_everywhere(tmp_path):
    """collapse, a Parquet source's column read and w2_sensitivity end a missing-column
    error with table.its_columns (the column list and a did-you-mean), not a message of their own."""
    df = pd.DataFrame({"model": ["a", "b"] * 5, "persona": ["x"] * 10, "refusal": [0, 1] * 5})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    with pytest.raises(rs.SchemaError, match=r"did you mean 'persona'"):
        rs.collapse(df, by="persnoa")
    with pytest.raises(rs.SchemaError, match=r"did you mean 'persona'"):
        rs.collapse(path, by="persnoa")
    with pytest.raises(rs.SchemaError, match=r"did you mean 'persona'"):
        rs.w2_sensitivity(df, inputs=["persnoa"], n_boot=0)
