"""The tidy response table: schema validation and round trips."""

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.table import SchemaError


def _table(n=12):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "model": rng.choice(["m1", "m2"], n),
        "task": rng.choice(["nli", "politeness"], n),
        "persona": rng.choice(["Man", "Woman", "Atheist"], n),
        "prompt": rng.choice(["p1", "p2"], n),
        "refusal": rng.integers(0, 2, n),
        "item_id": np.arange(n),
        "response": [f"answer {i}" for i in range(n)],
        "extra_column": rng.normal(size=n),
    })


def test_validate_canonical_form_keeps_values():
    df = _table()
    df["refusal"] = df["refusal"].astype(bool)
    out = rs.validate(df)
    assert out["refusal"].dtype == np.int8
    assert out["refusal"].tolist() == df["refusal"].astype(int).tolist()
    assert isinstance(out["model"].dtype, pd.CategoricalDtype)
    assert out["model"].astype(str).tolist() == df["model"].tolist()
    # unknown columns pass through untouched
    np.testing.assert_array_equal(out["extra_column"], df["extra_column"])
    assert len(out) == len(df)


def test_schema_error_lists_every_problem():
    df = _table().drop(columns=["prompt"])
    df.loc[3, "refusal"] = 2
    df.loc[5, "persona"] = None
    with pytest.raises(SchemaError) as e:
        rs.validate(df, needs_levels=["task"], predictors=["persona", "model"])
    problems = e.value.problems
    assert len(problems) == 3
    text = str(e.value)
    assert "prompt" in text and "'refusal'" in text and "persona" in text


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.iloc[0:0], "empty"),
        (lambda d: d.assign(refusal=["yes"] * len(d)), "0/1"),
        (lambda d: d.assign(refusal=[np.nan] + [1] * (len(d) - 1)), "missing"),
        (lambda d: d.drop(columns=["model"]), "missing required column"),
        (lambda d: d.assign(model=[None] + ["m1"] * (len(d) - 1)), "predictor column 'model'"),
        (lambda d: d.assign(task="nli"), "single level"),
    ],
)
def test_each_schema_error(mutate, fragment):
    with pytest.raises(SchemaError, match=fragment):
        rs.validate(mutate(_table()), needs_levels=["task"])


def test_not_a_dataframe():
    with pytest.raises(TypeError, match="DataFrame"):
        rs.validate([1, 2, 3])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_round_trip_keeps_dtypes_and_metadata(tmp_path, suffix):
    df = rs.validate(_table())
    df["model"] = df["model"].cat.reorder_categories(["m2", "m1"])
    meta = {"model_revision": "abc123", "seed": 7, "decoding": {"temperature": 0.0}}
    path = rs.write_responses(df, tmp_path / f"t{suffix}", metadata=meta)
    back = rs.read_responses(path)
    assert back.attrs["metadata"] == meta
    assert list(back.columns) == list(df.columns)
    for c in df.columns:
        assert back[c].dtype == df[c].dtype, c
    assert list(back["model"].cat.categories) == ["m2", "m1"]
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df.reset_index(drop=True),
                                  check_exact=False, rtol=1e-12)


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="format"):
        rs.write_responses(_table(), tmp_path / "t.xlsx")


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        rs.read_responses(tmp_path / "nope.parquet")
