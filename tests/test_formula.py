"""Tests for refusalstats.formula: parsing, reference levels, collapsing, designs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from refusalstats.formula import (
    FormulaError,
    RandomTerm,
    check_columns,
    collapse,
    fixed_design,
    group_index,
    new_design,
    parse_formula,
    prepare_factors,
)
from refusalstats.table import SchemaError


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 500
    return pd.DataFrame({
        "persona": rng.choice(["Man", "Woman", "Atheist", "Black person"], n),
        "model": pd.Categorical(rng.choice(["m2", "m1", "m3"], n), categories=["m2", "m1", "m3", "unused"]),
        "prompt": rng.choice(["p1", "p2", "p3"], n),
        "x": rng.normal(size=n),
        "refusal": rng.integers(0, 2, n),
        "n": rng.integers(1, 5, n),
    })


# ----------------------------------------------------------------------------- parse_formula
def test_parse_formula_splits_parts():
    f = parse_formula("refusal ~ task + prompt + (1|model) + (1 | persona:model)")
    assert f.response == "refusal"
    assert f.fixed == "task + prompt"
    assert f.random == (RandomTerm(("model",)), RandomTerm(("persona", "model")))
    assert f.variables == ["task", "prompt", "model", "persona"]
    assert parse_formula("y ~ (1|g)").fixed == "1"


def test_parse_formula_variables_skip_functions_and_literals():
    f = parse_formula('refusal ~ C(persona, Treatment("Atheist")) + np.log(x) + persona:model + `my col`')
    assert f.fixed_variables == ["persona", "x", "model", "my col"]


@pytest.mark.parametrize("bad,match", [
    ("refusal + persona", "no '~'"),
    (" ~ persona", "no response"),
    ("log(y) ~ a", "column name"),
    ("y ~ a + (x|g)", "random slopes"),
    ("y ~ (1|g) + (1|g)", "twice"),
])
def test_parse_formula_errors(bad, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(bad)


def test_check_columns_names_every_missing(table):
    with pytest.raises(FormulaError, match=r"\['task', 'item'\]"):
        check_columns(parse_formula("refusal ~ persona + task + (1|item)"), table)
    check_columns(parse_formula("refusal ~ persona * prompt + x"), table)


# ----------------------------------------------------------------------------- prepare_factors
def test_prepare_factors_levels_and_reference(table):
    out = prepare_factors(table, ["persona", "model", "prompt", "x"], {"persona": "Man", "prompt": "p2"})
    assert list(out["persona"].cat.categories) == ["Man", "Atheist", "Black person", "Woman"]  # ref, then sorted
    assert list(out["model"].cat.categories) == ["m2", "m1", "m3"]  # categorical order kept, unused dropped
    assert list(out["prompt"].cat.categories) == ["p2", "p1", "p3"]
    assert pd.api.types.is_float_dtype(out["x"])  # numeric stays numeric
    assert (out["persona"].astype(str) == table["persona"]).all()  # no value changed
    assert not isinstance(table["persona"].dtype, pd.CategoricalDtype)  # input untouched


def test_prepare_factors_errors(table):
    with pytest.raises(FormulaError, match=r"levels are \['Atheist', 'Black person', 'Man', 'Woman'\]"):
        prepare_factors(table, ["persona"], {"persona": "Martian"})
    with pytest.raises(SchemaError, match="not in the table; its columns are"):
        prepare_factors(table, ["persona"], {"task": "nli"})


def test_prepare_factors_numeric_reference_makes_a_factor():
    df = pd.DataFrame({"dose": [1, 2, 3, 2]})
    out = prepare_factors(df, ["dose"], {"dose": 2})
    assert list(out["dose"].cat.categories) == [2, 1, 3]


# ----------------------------------------------------------------------------- collapse
def _groupby_reference(df, cols, y="refusal", t=None, w=None):
    d = df.copy()
    d["_s"] = d[y] * (1 if w is None else w)
    d["_n"] = (1 if t is None else d[t]) * (1 if w is None else w)
    return d.groupby(cols, observed=True)[["_s", "_n"]].sum()


def test_collapse_equals_groupby(table):
    prep = prepare_factors(table, ["persona", "model", "prompt"])
    col = collapse(prep, ["persona", "model", "prompt"], "refusal")
    ref = _groupby_reference(prep, ["persona", "model", "prompt"])
    got = col.patterns.set_index(["persona", "model", "prompt"])
    assert len(got) == len(ref) and col.n_rows == len(table)
    np.testing.assert_array_equal(got.loc[ref.index, "successes"], ref["_s"])
    np.testing.assert_array_equal(got.loc[ref.index, "trials"], ref["_n"])
    # inverse maps each row to its pattern
    back = col.patterns.iloc[col.inverse][["persona", "model", "prompt"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(back.astype(str), prep[["persona", "model", "prompt"]].astype(str))


def test_collapse_trials_and_weights(table):
    w = np.linspace(0.5, 2.0, len(table))
    col = collapse(table, ["persona", "prompt"], "refusal", trials="n", weights=w)
    ref = _groupby_reference(table, ["persona", "prompt"], t="n", w=w)
    got = col.patterns.set_index(["persona", "prompt"])
    np.testing.assert_allclose(got.loc[ref.index, "successes"], ref["_s"])
    np.testing.assert_allclose(got.loc[ref.index, "trials"], ref["_n"])
    with pytest.raises(ValueError, match="one value per row"):
        collapse(table, ["persona"], "refusal", weights=w[:3])


def test_collapse_numeric_column_and_dense_sparse_paths_agree(table):
    # a float column factorizes to many keys: the sorting path; categoricals: the counting path
    col_sparse = collapse(table, ["persona", "x"], "refusal")
    assert len(col_sparse.patterns) == table["x"].nunique() and col_sparse.patterns["trials"].eq(1).all()
    col_dense = collapse(table, ["persona", "prompt"], "refusal")
    big = table.assign(prompt=pd.Categorical(table["prompt"], categories=[f"q{i}" for i in range(3000)]
                                             + ["p1", "p2", "p3"]))
    big = big.assign(persona=pd.Categorical(big["persona"],
                                            categories=[f"z{i}" for i in range(2000)] + sorted(table["persona"].unique())))
    col_sorted = collapse(big, ["persona", "prompt"], "refusal")  # 6e6 key space > 4n: np.unique path
    a = col_dense.patterns.assign(persona=lambda d: d["persona"].astype(str), prompt=lambda d: d["prompt"].astype(str))
    b = col_sorted.patterns.assign(persona=lambda d: d["persona"].astype(str), prompt=lambda d: d["prompt"].astype(str))
    pd.testing.assert_frame_equal(a.sort_values(["persona", "prompt"]).reset_index(drop=True),
                                  b.sort_values(["persona", "prompt"]).reset_index(drop=True))


def test_collapse_missing_values_error(table):
    bad = table.assign(persona=table["persona"].where(table.index > 0))
    with pytest.raises(ValueError, match="'persona' has missing values"):
        collapse(bad, ["persona"], "refusal")


def test_collapse_no_columns(table):
    col = collapse(table, [], "refusal")
    assert col.patterns["successes"].item() == table["refusal"].sum()
    assert col.patterns["trials"].item() == len(table)


# ----------------------------------------------------------------------------- designs
def test_fixed_design_names_and_new_design(table):
    prep = prepare_factors(table, ["persona", "prompt"], {"persona": "Atheist"})
    X, names, spec = fixed_design("persona * prompt + x", prep)
    assert names[:4] == ["Intercept", "persona[T.Black person]", "persona[T.Man]", "persona[T.Woman]"]
    assert "persona[T.Man]:prompt[T.p3]" in names and "x" in names
    assert X.shape == (len(table), 1 + 3 + 2 + 1 + 6)
    np.testing.assert_array_equal(X[:, names.index("persona[T.Man]")], (prep["persona"] == "Man").to_numpy())
    X2 = new_design(spec, prep.iloc[:7])
    np.testing.assert_array_equal(X2, X[:7])
    with pytest.raises(FormulaError, match="cannot build"):
        fixed_design("persona + nosuchcolumn", prep)


def test_group_index_labels(table):
    idx, labels = group_index(table, RandomTerm(("persona", "prompt")))
    assert len(labels) == table.groupby(["persona", "prompt"]).ngroups
    lab = np.array(labels)[idx]
    np.testing.assert_array_equal(lab, (table["persona"] + ":" + table["prompt"]).to_numpy())


@pytest.mark.parametrize("formula", ["refusal ~ persona +", "refusal ~ + persona",
                                     "refusal ~ persona + + task", "refusal ~ "])
def test_dangling_plus_or_empty_right_side_is_an_error(formula):
    # R: `glm(refusal ~ persona +, ...)` is a syntax error; nothing is silently dropped
    with pytest.raises(FormulaError, match="'\\+' with no term|nothing right of"):
        parse_formula(formula)


def test_reference_must_be_a_mapping():
    df = pd.DataFrame({"persona": ["a", "b", "a"], "refusal": [0, 1, 1]})
    with pytest.raises(FormulaError, match="reference must map columns"):
        prepare_factors(df, ["persona"], reference="c")  # a level of no column
    with pytest.raises(FormulaError, match="reference must map columns"):
        prepare_factors(df, ["persona"], reference=["persona", "a"])
    # a bare level of exactly one column is that column's reference (#21)
    out = prepare_factors(df, ["persona"], reference="b")
    assert list(out["persona"].cat.categories) == ["b", "a"]
