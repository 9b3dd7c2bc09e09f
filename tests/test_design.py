"""Experimental design: personas, templates and the balanced Monte Carlo sampler."""

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.design import (
    PERSONAS,
    TASKS,
    TEMPLATES,
    Template,
    balance_ratios,
    validate_templates,
)
from refusalstats.simulate import PAPER_ITEMS


def _items(n_per_task=None):
    n_per_task = n_per_task or PAPER_ITEMS
    frames, start = [], 0
    for task, n in n_per_task.items():
        frames.append(pd.DataFrame({"item_id": np.arange(start, start + n), "task": task,
                                    "gold_label": "x"}))
        start += n
    return pd.concat(frames, ignore_index=True)


def test_paper_personas_and_templates():
    assert len(PERSONAS) == 15
    groups = pd.Series([p.group for p in PERSONAS]).value_counts().to_dict()
    assert groups == {"Gender": 5, "Religion": 5, "Race": 3, "Disability": 2}
    for fam in ("nli", "text"):
        fam_t = [t for t in TEMPLATES if t.family == fam]
        assert [t.prompt for t in fam_t] == [f"p{i}" for i in range(1, 10)]
        assert [t.response_type for t in fam_t] == ["unforced"] * 3 + ["semi-forced"] * 3 + ["forced"] * 3
    validate_templates(TEMPLATES, TASKS)


def test_paper_design_size_balance_and_reproducibility():
    items = _items()
    d1 = rs.sample_design(items, k=10, seed=3)
    assert len(d1) == 10 * sum(PAPER_ITEMS.values()) == 127010
    # k distinct (persona, template) pairs per item
    assert not d1.duplicated(["item_id", "persona", "prompt"]).any()
    assert (d1.groupby("item_id").size() == 10).all()
    ratios = balance_ratios(d1)
    assert ratios["ratio"].max() <= 1.01, ratios
    # far better than the paper's own Monte Carlo draw (Table 5: 2121/1937 = 1.095 on NLI)
    assert (ratios["max"] - ratios["min"]).max() <= 1
    small = items.iloc[:300]  # reproducibility on a slice (the full design takes seconds)
    pd.testing.assert_frame_equal(rs.sample_design(small, k=10, seed=3),
                                  rs.sample_design(small, k=10, seed=3))
    assert not rs.sample_design(small, seed=3)["persona"].equals(rs.sample_design(small, seed=4)["persona"])


def _matchings(d: pd.DataFrame) -> pd.Series:
    """Per item, how its personas are matched to its templates: the templates' ranks
    (among the item's templates) listed in the order of the item's personas."""
    p_rank = {p.name: i for i, p in enumerate(PERSONAS)}
    d = d.assign(p=d["persona"].map(p_rank), t=d["prompt"].str[1:].astype(int))
    d = d.sort_values(["item_id", "p"])
    d["t_rank"] = d.groupby("item_id")["t"].rank(method="first").astype(int)
    return d.groupby("item_id")["t_rank"].agg(tuple)


def test_pairs_are_random_not_fixed():
    d = rs.sample_design(_items({"nli": 900}), k=10, seed=0)
    pairs = d.groupby(["persona", "prompt"], observed=True).size()
    assert len(pairs) == 15 * 9  # every combination occurs
    # Which persona of an item gets which of its templates is a uniform random matching: with
    # k = 5 distinct personas and templates, each of the 5! = 120 matchings has chance 1/120.
    # A fixed pairing (sorted to sorted, a cyclic shift) uses a handful of them.
    from scipy import stats

    m = _matchings(rs.sample_design(_items({"nli": 900}), k=5, seed=0))
    assert m.map(len).eq(5).all() and m.map(lambda t: len(set(t))).eq(5).all()
    counts = m.value_counts()
    assert len(counts) >= 110  # expected 119.9 distinct matchings in 900 items
    observed = np.concatenate([counts.to_numpy(), np.zeros(120 - len(counts))])
    assert stats.chisquare(observed).pvalue > 1e-4


def test_rendered_text_and_persona_free():
    items = pd.DataFrame({"item_id": [1, 2], "task": ["nli", "offensiveness"],
                          "gold_label": ["neutral", "3"]})
    d = rs.sample_design(items, k=3, seed=0, setting="both")
    free = d[d["setting"] == "persona-free"]
    assert len(free) == 18 and (free["persona"] == "none").all()
    row = d[(d["item_id"] == 1) & (d["setting"] == "persona")].iloc[0]
    persona = next(p for p in PERSONAS if p.name == row["persona"])
    assert persona.phrase.lower() in row["prompt_text"].lower()
    assert "entailment, contradiction, or neutral" in row["prompt_text"]
    p7 = free[(free["task"] == "offensiveness") & (free["prompt"] == "p7")]["prompt_text"].iloc[0]
    assert p7 == ("Given a text, classify it as offensive or not offensive. You have to pick one "
                  "of the two options. Only answer with the label.")


def test_full_factorial():
    items = pd.DataFrame({"item_id": [1, 2], "task": "politeness"})
    d = rs.sample_design(items, full_factorial=True)
    assert len(d) == 2 * 15 * 9
    assert not d.duplicated(["item_id", "persona", "prompt"]).any()


def test_user_templates_validated():
    bad = Template("text", "q1", "unforced", "Is this {label1}?", "Is this {label1}?")
    with pytest.raises(ValueError, match="persona") as e:
        rs.sample_design(pd.DataFrame({"item_id": [1], "task": ["politeness"]}), k=1, templates=[bad])
    assert "label2" in str(e.value)
    good = Template("text", "q1", "forced", "Would {persona} say {label1} or {label2}?",
                    "Say {label1} or {label2}.")
    d = rs.sample_design(pd.DataFrame({"item_id": [1], "task": ["politeness"]}), k=5, templates=[good])
    assert len(d) == 5 and set(d["prompt"]) == {"q1"}


def test_bad_items():
    with pytest.raises(ValueError, match="unknown task"):
        rs.sample_design(pd.DataFrame({"item_id": [1], "task": ["summarise"]}))
    with pytest.raises(ValueError, match="unique"):
        rs.sample_design(pd.DataFrame({"item_id": [1, 1], "task": ["nli", "nli"]}))
    with pytest.raises(ValueError, match="exceeds"):
        rs.sample_design(pd.DataFrame({"item_id": [1], "task": ["nli"]}), k=200)
