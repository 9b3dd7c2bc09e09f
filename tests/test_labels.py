"""Label samples: stratified draws, sampling probabilities, the stable row key, the join."""

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.labels import join_labels, label_sample, read_labels, row_key


@pytest.fixture(scope="module")
def table():
    return rs.simulate_paper(scale=0.01, seed=1)


def test_row_key_is_stable_and_unique(table):
    k = row_key(table)
    assert not k.duplicated().any()
    # independent of row order, index and the detector's flag
    shuffled = table.sample(frac=1, random_state=0).reset_index(drop=True)
    shuffled["refusal"] = 1 - shuffled["refusal"]
    assert dict(zip(row_key(shuffled), shuffled["item_id"])) == dict(zip(k, table["item_id"]))
    # an item id read back as text hashes the same
    as_text = table.assign(item_id=table["item_id"].astype(str))
    assert (row_key(as_text).to_numpy() == k.to_numpy()).all()


def test_row_key_counts_exact_duplicates():
    df = pd.DataFrame({"model": ["a", "a", "a"], "task": ["t", "t", "u"], "refusal": [0, 1, 0]})
    k = row_key(df)
    assert k.iloc[0].endswith("-0") and k.iloc[1].endswith("-1") and k.iloc[2].endswith("-0")
    assert k.iloc[0].split("-")[0] == k.iloc[1].split("-")[0]


def test_proportional_and_per_stratum_allocation(table):
    sizes = table.groupby("model", observed=True).size()
    s = label_sample(table, 160, by="model", seed=0)
    got = s.groupby("model", observed=True).size()
    assert got.sum() == 160
    # largest remainders: each stratum within one of its proportional share
    share = sizes / sizes.sum() * 160
    assert (abs(got.reindex(sizes.index) - share) < 1).all()
    assert np.allclose(s["sampling_prob"], s.groupby("model", observed=True)["model"]
                       .transform("size") / s["stratum_size"])
    s2 = label_sample(table, 7, by=["model", "task"], allocation="per_stratum", seed=0)
    assert (s2.groupby(["model", "task"], observed=True).size() == 7).all()
    assert s2["row_key"].is_unique
    # a mapping gives the counts per stratum
    s3 = label_sample(table, {"Gemma-2B": 5, "Qwen2-7B": 2}, by="model", seed=0)
    assert s3["model"].astype(str).value_counts().to_dict() == {"Gemma-2B": 5, "Qwen2-7B": 2}
    assert s3["sampling_prob"].max() == pytest.approx(5 / sizes["Gemma-2B"])


def test_sample_is_seeded_and_uniform_within_strata(table):
    a = label_sample(table, 30, by="model", seed=4)
    b = label_sample(table, 30, by="model", seed=4)
    assert a["row_key"].tolist() == b["row_key"].tolist()
    # inclusion frequency of one stratum's rows over many draws is flat (SRS without
    # replacement): 200 copies of 40 rows as 200 strata (column rep), 10 drawn in each, in
    # one call (each stratum's draw is its own, as 200 calls with 200 seeds were)
    small = table[table["model"] == "Gemma-2B"].head(40)
    stack = pd.concat([small.assign(rep=r) for r in range(200)], ignore_index=True)
    pos = pd.Series(np.tile(np.arange(40), 200), index=row_key(stack).to_numpy())
    assert pos.index.is_unique
    draw = label_sample(stack, 10, by="rep", allocation="per_stratum", seed=0)
    assert (draw.groupby("rep").size() == 10).all()
    hits = np.bincount(pos[draw["row_key"]].to_numpy(), minlength=40)
    # each row has probability 1/4; 200 draws: sd sqrt(200 * .25 * .75) = 6.1
    assert abs(hits.mean() - 50) < 1e-9 and ((hits > 50 - 5 * 6.1) & (hits < 50 + 5 * 6.1)).all()


def test_roundtrip_csv_and_parquet(table, tmp_path):
    s = label_sample(table, 25, by="model", seed=2)
    s["human"] = s["refusal"].astype(object)
    s.loc[s.index[:3], "human"] = None  # left blank
    s.loc[s.index[3], "human"] = "yes"
    for path in (tmp_path / "lab.csv", tmp_path / "lab.parquet"):
        if path.suffix == ".csv":
            s.to_csv(path, index=False)
        else:
            s.assign(human=s["human"].astype(str).replace("None", "")).to_parquet(path)
        lab = read_labels(path)
        assert lab["human"].isna().sum() == 3 and lab["human"].iloc[3] == 1.0
        joined = join_labels(table, path)
        assert joined["human"].notna().sum() == 22
        assert joined.attrs["labels"]["n_labelled"] == 22
        keys = row_key(joined)
        back = joined.set_index(keys.to_numpy()).loc[s["row_key"], "human"].to_numpy()
        assert np.array_equal(back[4:], s["refusal"].to_numpy()[4:].astype(float))


def test_bad_labels_are_named(table):
    s = label_sample(table, 5, seed=0)
    s["human"] = ["1", "0", "maybe", "1", "0"]
    with pytest.raises(ValueError, match="maybe"):
        join_labels(table, s)
    s["human"] = 1
    s.loc[0, "row_key"] = "ffffffffffffffff-0"
    with pytest.raises(ValueError, match="match no row"):
        join_labels(table, s)
    with pytest.raises(ValueError, match="more labels than rows"):
        label_sample(table.head(3), 5)
    with pytest.raises(ValueError, match="not in the table"):
        label_sample(table, 5, by="nope")
