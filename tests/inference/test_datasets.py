"""Task data loaders on small files written by the tests."""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from refusalstats.inference.datasets import (
    load_items,
    load_popquorn,
    load_task,
    load_xnli,
    read_table,
    select_per_class,
)


def _xnli_frame(n=12):
    return pd.DataFrame({
        "premise": [f"Premise number {i}." for i in range(n)],
        "hypothesis": [f"Hypothesis number {i}." for i in range(n)],
        "label": [i % 3 for i in range(n)],
    })


def test_xnli_jsonl_integer_labels_follow_xnli_order(tmp_path):
    path = tmp_path / "xnli.jsonl"
    _xnli_frame().to_json(path, orient="records", lines=True)
    items = load_xnli(path)
    assert list(items.columns[:5]) == ["item_id", "task", "premise", "hypothesis", "gold_label"]
    assert (items["task"] == "nli").all()
    # XNLI: 0 entailment, 1 neutral, 2 contradiction
    assert items["gold_label"].tolist()[:3] == ["entailment", "neutral", "contradiction"]
    assert items["premise"][4] == "Premise number 4."
    assert items["item_id"].is_unique


def test_xnli_csv_with_column_mapping_and_string_labels(tmp_path):
    df = pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"],
                       "gold": ["Neutral", "contradiction"], "pairID": ["x1", "x2"]})
    path = tmp_path / "xnli.csv"
    df.to_csv(path, index=False)
    items = load_xnli(path, columns={"premise": "sentence1", "hypothesis": "sentence2",
                                     "gold_label": "gold", "item_id": "pairID"})
    assert items["gold_label"].tolist() == ["neutral", "contradiction"]
    assert items["item_id"].tolist() == ["x1", "x2"]


def test_xnli_tsv_with_all_languages_keeps_the_one_asked_for(tmp_path):
    # layout of XNLI-1.0's xnli.test.tsv (subset of its columns)
    df = pd.DataFrame({"language": ["en", "de", "en", "fr"],
                       "gold_label": ["neutral", "entailment", "contradiction", "neutral"],
                       "sentence1": ["s1", "d1", "s2", "f1"], "sentence2": ["h1", "d2", "h2", "f2"],
                       "pairID": ["1", "1", "2", "2"]})
    path = tmp_path / "xnli.test.tsv"
    df.to_csv(path, sep="\t", index=False)
    cols = {"premise": "sentence1", "hypothesis": "sentence2", "item_id": "pairID"}
    items = load_xnli(path, columns=cols)
    assert items["premise"].tolist() == ["s1", "s2"]
    assert items["gold_label"].tolist() == ["neutral", "contradiction"]
    assert load_xnli(path, columns=cols, language="de")["premise"].tolist() == ["d1"]
    with pytest.raises(ValueError, match="no rows with language 'xx'"):
        load_xnli(path, columns=cols, language="xx")


def test_xnli_bad_label_and_missing_column_name_the_problem(tmp_path):
    df = _xnli_frame(3)
    df.loc[1, "label"] = 7
    path = tmp_path / "bad.jsonl"
    df.to_json(path, orient="records", lines=True)
    with pytest.raises(ValueError, match="gold_label has value"):
        load_xnli(path)
    path2 = tmp_path / "nohyp.csv"
    _xnli_frame(3).drop(columns="hypothesis").to_csv(path2, index=False)
    with pytest.raises(KeyError, match="'hypothesis'"):
        load_xnli(path2)
    with pytest.raises(KeyError, match="column mapping names"):
        load_xnli(path2, columns={"hypothesis": "nope"})


def test_xnli_from_hub_goes_through_datasets(monkeypatch):
    calls = {}

    class FakeDS:
        def to_pandas(self):
            return _xnli_frame(6)

    def load_dataset(name, config, split):
        calls.update(name=name, config=config, split=split)
        return FakeDS()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    items = load_xnli(language="en", split="validation")
    assert calls == {"name": "facebook/xnli", "config": "en", "split": "validation"}
    assert len(items) == 6 and items.attrs["source"] == "facebook/xnli/en/validation"


def test_xnli_without_path_or_datasets_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_xnli()


def _popquorn_raw():
    # one row per annotation, like dataset/offensiveness/raw_data.csv
    return pd.DataFrame({
        "instance_id": [1, 1, 1, 2, 2, 3, 3, 3, 3],
        "user_id": [0, 1, 2, 0, 3, 1, 2, 3, 4],
        "text": ["t one"] * 3 + ["t two"] * 2 + ["t three"] * 4,
        "offensiveness": [1.0, 1.0, 4.0, 2.0, 3.0, 5.0, 5.0, 4.0, 2.0],
        "gender": ["Man", "Woman", "Man", "Man", "Woman", "Woman", "Man", "Man", "Man"],
    })


def test_popquorn_annotation_unit_keeps_distinct_text_rating_pairs(tmp_path):
    path = tmp_path / "raw_data.csv"
    _popquorn_raw().to_csv(path, index=False)
    items = load_popquorn(path, "offensiveness")
    # pairs: (one,1) (one,4) (two,2) (two,3) (three,5) (three,4) (three,2); duplicates 2
    assert len(items) == 7
    assert items.attrs["duplicates"] == 2
    assert items["gold_label"].tolist() == [1, 4, 2, 3, 5, 4, 2]
    assert items["item_id"].tolist()[:2] == ["1:0", "1:2"]
    assert "gender" in items.columns  # other columns pass through


def test_popquorn_text_unit_uses_median_rounded_half_up(tmp_path):
    path = tmp_path / "raw_data.csv"
    _popquorn_raw().to_csv(path, index=False)
    items = load_popquorn(path, "offensiveness", unit="text")
    raw = _popquorn_raw()
    med = raw.groupby("instance_id")["offensiveness"].median()
    expected = [int(np.floor(m + 0.5)) for m in med]  # 1, 2.5 -> 3, 4.5 -> 5
    assert expected == [1, 3, 5]
    assert items["gold_label"].tolist() == expected
    assert items["n_annotations"].tolist() == [3, 2, 4]


def test_popquorn_errors(tmp_path):
    raw = _popquorn_raw()
    raw.loc[0, "offensiveness"] = 9
    path = tmp_path / "bad.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(ValueError, match="ratings must be numbers from 1 to 5"):
        load_popquorn(path, "offensiveness")
    path2 = tmp_path / "polite.csv"
    _popquorn_raw().to_csv(path2, index=False)
    with pytest.raises(KeyError, match="no rating column 'politeness'"):
        load_popquorn(path2, "politeness")
    items = load_popquorn(path2, "politeness", columns={"gold_label": "offensiveness"})
    assert (items["task"] == "politeness").all()


def test_missing_values_fail_or_are_dropped_and_counted(tmp_path):
    raw = _popquorn_raw()
    raw.loc[4, "text"] = None
    path = tmp_path / "raw.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"1 row\(s\) have an empty or missing value"):
        load_popquorn(path, "offensiveness")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        items = load_popquorn(path, "offensiveness", drop_missing=True)
    assert items.attrs["dropped"] == 1 and len(items) == 6


def test_generic_task_file_with_label_set(tmp_path):
    df = pd.DataFrame({"comment": ["a b", "c d", "e f"], "y": ["yes", "no", "yes"]})
    path = tmp_path / "task.tsv"
    df.to_csv(path, sep="\t", index=False)
    items = load_task("stance", path, columns={"text": "comment", "gold_label": "y"},
                      labels=["yes", "no"])
    assert items["item_id"].tolist() == ["stance-0", "stance-1", "stance-2"]
    with pytest.raises(ValueError, match="outside the label set"):
        load_items(path, "stance", columns={"text": "comment", "gold_label": "y"},
                   labels=["yes"])
    dup = pd.DataFrame({"item_id": [1, 1], "text": ["a", "b"], "gold_label": [0, 1]})
    with pytest.raises(ValueError, match="item ids are not unique"):
        load_items(dup, "x")


def test_read_table_formats(tmp_path):
    df = _xnli_frame(4)
    df.to_parquet(tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.parquet"), df)
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_table(tmp_path / "a.xyz")
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.csv")


def test_select_per_class_counts_seed_and_short_classes():
    rng = np.random.default_rng(1)
    n = {1: 50, 2: 40, 3: 12, 4: 30, 5: 5}
    labels = np.concatenate([[k] * v for k, v in n.items()])
    rng.shuffle(labels)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(labels))], "task": "politeness",
                          "text": [f"text {i}" for i in range(len(labels))],
                          "gold_label": labels})
    with pytest.warns(UserWarning, match=r"2 class\(es\) have fewer than 20"):
        sel = select_per_class(items, per_class=20, seed=3)
    counts = sel["gold_label"].value_counts().to_dict()
    assert counts == {k: min(v, 20) for k, v in n.items()}
    assert sel["item_id"].is_unique and set(sel["item_id"]) <= set(items["item_id"])
    rep = pd.DataFrame(sel.attrs["selection"]).set_index("class")
    json.dumps(sel.attrs)  # JSON-able: the items table survives to_parquet
    assert rep.loc[5, "available"] == 5 and rep.loc[5, "selected"] == 5 and rep.loc[5, "short"]
    assert rep.loc[1, "selected"] == 20 and not rep.loc[1, "short"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = select_per_class(items, per_class=20, seed=3)
        other = select_per_class(items, per_class=20, seed=4)
    assert again["item_id"].tolist() == sel["item_id"].tolist()
    assert set(other["item_id"]) != set(sel["item_id"])


def test_select_per_class_draw_is_uniform():
    # each of 10 items of a class is drawn with probability 3/10. One table holds 30 such
    # classes (items 0-9 of each), so 10 calls make 300 independent draws; the count of
    # draws taking the item at position j is exactly Binomial(300, 0.3), and each of the 10
    # counts must lie in its central 1 - 1e-5 interval ([56, 126] of 300, i.e. 0.19-0.42:
    # as tight as 300 single-class calls with +-5 normal-approximation s.e., 0.17-0.43).
    from scipy.stats import binom

    n_classes, reps = 30, 10
    items = pd.DataFrame({"item_id": [f"{c}-{i}" for c in range(n_classes) for i in range(10)],
                          "task": "nli", "premise": "p", "hypothesis": "h",
                          "gold_label": [f"class{c:02d}" for c in range(n_classes)
                                         for _ in range(10)]})
    hits = np.zeros(10, dtype=int)
    for s in range(reps):
        sel = select_per_class(items, per_class=3, seed=s)
        ids = sel["item_id"].str.split("-", expand=True).astype(int)
        assert (sel["gold_label"] == ids[0].map("class{:02d}".format)).all()
        assert (ids.groupby(0)[1].nunique() == 3).all() and len(ids) == 3 * n_classes
        hits += np.bincount(ids[1], minlength=10)
    draws = n_classes * reps
    lo, hi = binom.ppf(0.5e-5, draws, 0.3), binom.isf(0.5e-5, draws, 0.3)
    assert np.all((hits >= lo) & (hits <= hi)), (hits, lo, hi)
