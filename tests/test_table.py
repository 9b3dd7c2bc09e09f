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


# ---------------------------------------------------------------------- read_table: the one reader
def _raw(n=6):
    return pd.DataFrame({"model": ["m1", "m2"] * (n // 2), "refusal": [0, 1] * (n // 2),
                         "response": [f"text {i}" for i in range(n)]})


@pytest.mark.parametrize("name, write", [
    ("t.parquet", lambda d, p: d.to_parquet(p, index=False)),
    ("t.csv", lambda d, p: d.to_csv(p, index=False)),
    ("t.csv.gz", lambda d, p: d.to_csv(p, index=False)),
    ("t.tsv", lambda d, p: d.to_csv(p, index=False, sep="\t")),
    ("semicolon.csv", lambda d, p: d.to_csv(p, index=False, sep=";")),
    ("t.jsonl", lambda d, p: d.to_json(p, orient="records", lines=True)),
    ("t.jsonl.gz", lambda d, p: d.to_json(p, orient="records", lines=True)),
    ("t.json", lambda d, p: d.to_json(p, orient="records")),
    ("lines.json", lambda d, p: d.to_json(p, orient="records", lines=True)),
])
def test_read_table_reads_every_format(tmp_path, name, write):
    from refusalstats.table import read_table

    df = _raw()
    write(df, tmp_path / name)
    back = read_table(tmp_path / name)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    sub = read_table(tmp_path / name, columns=["response", "model"])
    assert list(sub.columns) == ["response", "model"]
    assert sub["response"].tolist() == df["response"].tolist()


@pytest.mark.parametrize("name", ["t.parquet", "t.csv"])
def test_read_table_names_absent_columns(tmp_path, name):
    from refusalstats.table import read_table

    df = _raw()
    (df.to_parquet if name.endswith("parquet") else df.to_csv)(tmp_path / name, index=False)
    with pytest.raises(SchemaError, match=r"\['persona'\] not in the file; its columns are "
                                          r"\['model', 'refusal', 'response'\]"):
        read_table(tmp_path / name, columns=["model", "persona"])


def test_read_table_sep_and_format_overrides(tmp_path):
    from refusalstats.table import read_table

    f = tmp_path / "data.txt"
    f.write_text("a|b\n1|2\n")
    with pytest.raises(ValueError, match="cannot tell the format of .*data.txt"):
        read_table(f)
    assert read_table(f, format="csv").columns.tolist() == ["a", "b"]  # '|' guessed
    assert read_table(f, format="csv", sep=",").columns.tolist() == ["a|b"]  # --sep wins


@pytest.mark.parametrize("name, content, why", [
    ("empty.csv", b"", r"could not read '.*empty.csv' as CSV: the file is empty \(0 bytes\)"),
    ("empty.parquet", b"", r"as PARQUET: the file is empty \(0 bytes\)"),
    ("bad.parquet", b"PAR1 this is not parquet", r"not a valid Parquet file"),
    ("bad.jsonl", b'{"a": 1}\n{"a": \n', r"as JSONL: it is not valid JSONL"),
])
def test_read_table_errors_name_the_file(tmp_path, name, content, why):
    from refusalstats.table import read_table

    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ValueError, match=why):
        read_table(f)


def test_truncated_parquet_and_folders(tmp_path):
    from refusalstats.table import read_table

    good = tmp_path / "t.parquet"
    _raw(200).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a valid Parquet file"):
        read_table(cut)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_table(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_table(tmp_path / "nope.csv")


def test_every_reader_goes_through_read_table(tmp_path, monkeypatch):
    """read_responses, the dump loaders and the inference task files share the one reader
    (and so its messages): each reports an empty file the same way."""
    from refusalstats import dumps, table

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    readers = [lambda: rs.read_responses(empty),
               lambda: dumps.read_generic(empty, progress=False),
               lambda: dumps.xstest(empty, progress=False)]
    try:
        from refusalstats.inference.datasets import load_items
    except ImportError:  # pragma: no cover - the inference module is optional
        pass
    else:
        readers.append(lambda: load_items(empty, "nli"))
    for read in readers:
        with pytest.raises(ValueError, match=r"empty\.csv.*the file is empty \(0 bytes\)"):
            read()
    calls = []
    real = table.read_table

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(table, "read_table", spy)
    with pytest.raises(ValueError):
        rs.read_responses(empty)
    assert calls == [empty]


# ---------------------------------------------------------------------------- issue 20
@pytest.mark.parametrize("sidecar", [True, False])
def test_labels_none_and_na_round_trip_through_csv(tmp_path, sidecar):
    df = _table(8)
    df["persona"] = ["None", "NA", "null", "n/a", "Man", "None", "NA", "Woman"]
    df["model"] = ["NaN", "m2"] * 4
    df.loc[2, "extra_column"] = np.nan
    path = rs.write_responses(df, tmp_path / "t.csv")
    if not sidecar:
        (tmp_path / "t.csv.meta.json").unlink()
    back = rs.read_responses(path)
    assert back["persona"].astype(str).tolist() == df["persona"].tolist()
    assert back["model"].astype(str).tolist() == df["model"].tolist()
    assert back["refusal"].tolist() == df["refusal"].tolist()
    # numeric columns still read missing values as missing
    assert np.isnan(back.loc[2, "extra_column"]) and back["extra_column"].dtype == float
    if sidecar:
        assert back["persona"].cat.categories.tolist() == rs.validate(df)["persona"].cat.categories.tolist()


def test_a_csv_with_two_columns_of_one_name_is_an_error_naming_it(tmp_path):
    f = tmp_path / "dup.csv"
    f.write_text("model,task,persona,prompt,refusal,refusal\nm,t,p,q,1,0\n")
    with pytest.raises(SchemaError, match=r"\['refusal'\] appear more than once"):
        rs.read_responses(f)
    with pytest.raises(SchemaError, match="appear more than once"):
        rs.read_table(f)


def test_the_sidecar_is_not_written_before_the_csv_is_in_place(tmp_path, monkeypatch):
    """A kill (here: a failing rename) between the two files leaves the old pair readable."""
    import os
    from pathlib import Path

    old = _table(8)
    path = rs.write_responses(old, tmp_path / "t.csv", metadata={"run": "old"})
    new = _table(8)
    new["persona"] = ["Other persona"] * 8
    real_os_replace, real_path_replace = os.replace, Path.replace

    def boom(src, dst, *a, **k):
        if Path(dst) == path:
            raise OSError("killed before the rename")
        return real_os_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", boom)
    monkeypatch.setattr(Path, "replace", lambda self, dst: boom(self, dst) or Path(dst))
    with pytest.raises(OSError, match="killed"):
        rs.write_responses(new, path, metadata={"run": "new"})
    monkeypatch.setattr(os, "replace", real_os_replace)
    monkeypatch.setattr(Path, "replace", real_path_replace)
    back = rs.read_responses(path)
    assert back["persona"].astype(str).tolist() == old["persona"].tolist()
    assert back.attrs["metadata"] == {"run": "old"}


def test_a_sidecar_of_another_file_is_ignored_with_a_warning(tmp_path):
    df = _table(8)
    assert "Atheist" in df["persona"].tolist()
    path = rs.write_responses(df, tmp_path / "t.csv", metadata={"run": 1})
    path.write_text(path.read_text().replace("Atheist", "Believer"))  # edited after the sidecar
    with pytest.warns(UserWarning, match="does not describe"):
        back = rs.read_responses(path)
    assert back["persona"].astype(str).tolist() == [
        "Believer" if p == "Atheist" else p for p in df["persona"]]


def test_a_table_over_the_column_limit_is_refused_with_the_way_to_raise_it(tmp_path, monkeypatch):
    f = tmp_path / "wide.csv"
    cols = ["model", "task", "persona", "prompt", "refusal"] + [f"x{i}" for i in range(20)]
    f.write_text(",".join(cols) + "\n" + ",".join(["m", "t", "p", "q", "1"] + ["0"] * 20) + "\n")
    monkeypatch.setenv("REFUSALSTATS_MAX_COLUMNS", "10")
    with pytest.raises(ValueError, match=r"25 columns, more than the limit of 10.*"
                                         r"REFUSALSTATS_MAX_COLUMNS=25"):
        rs.read_table(f)
    monkeypatch.setenv("REFUSALSTATS_MAX_COLUMNS", "25")
    assert rs.read_table(f).shape == (1, 25)
    monkeypatch.setenv("REFUSALSTATS_MAX_BYTES", "16")
    with pytest.raises(ValueError, match=r"bytes, more than the limit of 16.*REFUSALSTATS_MAX_BYTES"):
        rs.read_table(f)


def test_error_rows_are_left_out_with_a_count_and_kept_on_request(tmp_path):
    df = _table(6)
    df["refusal"] = pd.array([1, 0, None, 1, None, 0], dtype="Int8")
    df["refusal_source"] = ["detector", "provider", "error", "detector", "error", "detector"]
    df["error"] = [None, None, "HTTP 400: too long", None, "HTTP 400: too long", None]
    with pytest.warns(UserWarning, match="2 of 6 row"):
        out = rs.validate(df)
    assert len(out) == 4 and out.attrs["n_error_rows"] == 2 and out["refusal"].dtype == np.int8
    kept = rs.validate(df, error_rows="keep")
    assert len(kept) == 6 and kept["refusal"].isna().sum() == 2
    bad = df.copy()
    bad.loc[0, "refusal"] = pd.NA  # a missing refusal that is not an error row
    with pytest.raises(SchemaError, match="missing value"):
        rs.validate(bad, error_rows="keep")
    path = rs.write_responses(df, tmp_path / "t.parquet")
    with pytest.warns(UserWarning, match="left out as errors"):
        assert len(rs.read_responses(path)) == 4
