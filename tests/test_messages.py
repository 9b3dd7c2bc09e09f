"""Messages a newcomer meets (issue 21): each mistake gets a clear error or is accepted."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.formula import FormulaError
from refusalstats.table import SchemaError, column_hint


@pytest.fixture(scope="module")
def df():
    return rs.simulate_paper(scale=0.01, seed=1)


def _fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rs.logit(formula, data, **kw)


# ---------------------------------------------------------------- reference=
def test_bare_string_reference_is_the_level_of_its_one_column(df):
    a = _fit("refusal ~ persona + task", df, reference="Muslim")
    b = _fit("refusal ~ persona + task", df, reference={"persona": "Muslim"})
    pd.testing.assert_series_equal(a.params, b.params)
    assert not any("Muslim" in t for t in a.params.index)
    from refusalstats.bayes import HierarchicalModel

    m = HierarchicalModel("refusal ~ task + (1|persona)", df, reference="politeness")
    assert m.reference == {"task": "politeness"}


def test_reference_that_is_not_a_mapping_says_what_to_pass(df):
    with pytest.raises(FormulaError, match=r"reference=\{'persona': 'Atheist'\}.*not a level"):
        _fit("refusal ~ persona + task", df, reference="Athiest")
    two = pd.DataFrame({"a": ["x", "y"] * 20, "b": ["y", "x", "x", "y"] * 10,
                        "refusal": np.tile([0, 1, 1, 0, 1], 8)})
    with pytest.raises(FormulaError, match=r"several columns \(\['a', 'b'\]\)"):
        _fit("refusal ~ a + b", two, reference="x")
    with pytest.raises(FormulaError, match="must map columns"):
        _fit("refusal ~ persona", df, reference=["persona", "Atheist"])


# ---------------------------------------------------------------- penalty="none"
def test_penalty_spelled_as_on_the_command_line(df):
    ml = _fit("refusal ~ persona + task", df, penalty=None)
    none = _fit("refusal ~ persona + task", df, penalty="none")
    pd.testing.assert_series_equal(ml.params, none.params)
    assert none.penalty is None
    firth = _fit("refusal ~ persona + task", df, penalty="Firth")
    assert firth.penalty == "firth"


# ---------------------------------------------------------------- by= and missing columns
def test_by_accepts_a_comma_separated_string(df):
    a = rs.refusal_rates(df, by="model,task")
    b = rs.refusal_rates(df, by=["model", "task"])
    pd.testing.assert_frame_equal(a, b)


def test_missing_columns_get_did_you_mean(df):
    with pytest.raises(SchemaError, match=r"did you mean 'model'\?"):
        rs.refusal_rates(df, by="Model")
    with pytest.raises(SchemaError, match=r"did you mean 'Refusal'\?"):
        rs.refusal_rates(df.rename(columns={"refusal": "Refusal"}), by="model")
    with pytest.raises(SchemaError, match=r"did you mean 'refusal'\?"):
        _fit("Refusal ~ persona", df)
    with pytest.raises(SchemaError, match=r"is several columns: pass a list, \['model', 'task'\]"):
        rs.refusal_rates(df, by=["model,task"])
    with pytest.raises(SchemaError, match=r"did you mean 'persona'\?"):
        _fit("refusal ~ persona", df, reference={"Persona": "Atheist"})
    assert column_hint(["zzz"], ["model"]) == ""
    assert column_hint(["Modle", "tsak"], ["model", "task"]) == \
        " (did you mean 'model' for 'Modle', 'task' for 'tsak'?)"


# ---------------------------------------------------------------- noise in the report
def test_report_figures_do_not_warn_about_constrained_layout():
    from matplotlib.figure import Figure

    from refusalstats.reporting.sections import render

    fig = Figure(figsize=(0.6, 0.6), layout="constrained")
    for ax in fig.subplots(3, 3).flat:
        ax.set_title("a long title here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = render(fig, "tiny", "a figure too small for its layout")
    assert item.png[:4] == b"\x89PNG"
    assert not [w for w in caught if "constrained_layout" in str(w.message)]


def test_nested_progress_bars_only_on_a_terminal(monkeypatch):
    from types import SimpleNamespace

    from refusalstats.reporting.sections import nested_progress

    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log or a pipe
    assert nested_progress(SimpleNamespace(progress=True)) is False

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert nested_progress(SimpleNamespace(progress=True)) is True
    assert nested_progress(SimpleNamespace(progress=False)) is False


# ---------------------------------------------------------------- packaging
def test_license_is_an_spdx_expression_with_its_file():
    """setuptools >= 77 deprecates ``license = {text = ...}`` (a warning on every install)."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert all((root / f).is_file() for f in project["license-files"])
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
