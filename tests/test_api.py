"""The shape of the public API (issue #13): modules import as modules, tables survive pandas I/O,
the reference level does not depend on how the table was loaded."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import pkgutil
import re
import types
import warnings

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs

# ---------------------------------------------------------------------------------------
# every submodule is a module; no function shadows one
# ---------------------------------------------------------------------------------------


def _submodules() -> list[str]:
    """Every module of the statistical core (``refusalstats.inference`` has its own tests)."""
    names = []
    for info in pkgutil.walk_packages(rs.__path__, prefix="refusalstats."):
        if info.name.startswith("refusalstats.inference"):
            continue
        names.append(info.name)
    return sorted(names)


def test_the_package_has_the_expected_rooms():
    names = set(_submodules())
    for expected in ("refusalstats.plot", "refusalstats.multiplicity", "refusalstats.regression",
                     "refusalstats.regression.model", "refusalstats.regression.results",
                     "refusalstats.reporting", "refusalstats.reporting.html",
                     "refusalstats.reporting.sections", "refusalstats.reporting.export",
                     "refusalstats.bayes"):
        assert expected in names
    for gone in ("refusalstats.logit", "refusalstats.report", "refusalstats.report.figures",
                 "refusalstats.hierarchical"):
        assert gone not in names


@pytest.mark.parametrize("name", _submodules())
def test_every_submodule_imports_as_a_module(name):
    mod = importlib.import_module(name)
    assert isinstance(mod, types.ModuleType)
    assert mod.__name__ == name
    # ``import a.b.c`` then ``a.b.c`` is the module: the parent's attribute is not rebound
    # to a function of the same name
    parent, _, leaf = name.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is mod


def test_plot_is_a_module_of_figure_functions():
    assert isinstance(rs.plot, types.ModuleType)
    assert rs.plot is importlib.import_module("refusalstats.plot")
    for fn in ("rates", "rates_by", "persona_vs_free", "personas", "persona_heatmap", "response_types",
               "w2", "coefficients", "hierarchical_effects"):
        assert callable(getattr(rs.plot, fn)), fn


def test_model_entry_points_stay_callables():
    for fn in (rs.logit, rs.report, rs.hierarchical):
        assert callable(fn) and not isinstance(fn, types.ModuleType)
    assert rs.logit is importlib.import_module("refusalstats.regression").logit
    assert rs.report is importlib.import_module("refusalstats.reporting").report


def test_one_p_value_adjustment():
    from refusalstats import agreement, multiplicity
    from refusalstats.regression import results

    assert agreement.adjust_pvalues is multiplicity.adjust_pvalues
    assert results.adjust_pvalues is multiplicity.adjust_pvalues


# ---------------------------------------------------------------------------------------
# every table the package returns survives plain pandas I/O (Parquet)
# ---------------------------------------------------------------------------------------


def _complete_blocks(seed=0, n_items=30, personas=("a", "b", "c", "d"), models=("m1", "m2")):
    rng = np.random.default_rng(seed)
    rows = []
    for mi, m in enumerate(models):
        item_p = rng.beta(1, 4, n_items)
        for pi, p in enumerate(personas):
            refuse = rng.random(n_items) < np.clip(item_p + 0.1 * pi * (mi + 1) / len(personas), 0, 1)
            rows += [(m, p, i, int(r)) for i, r in enumerate(refuse)]
    return pd.DataFrame(rows, columns=["model", "persona", "item_id", "refusal"])


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    df = rs.simulate_paper(scale=0.005, seed=1)  # every column and level; 10,240 rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = rs.logit("refusal ~ persona + task + prompt + model", df, progress=False)
        fit_rows = rs.logit("refusal ~ persona + task + prompt + model", df, cluster=None, progress=False)
        out = {
            "simulate_paper": df,
            "refusal_rates": rs.refusal_rates(df, by=["model", "task"]),
            "coef_table": fit.coef_table(adjust="holm"),
            "drop1": fit.drop1(),
            "drop1_unclustered": fit_rows.drop1(),
            "anova": fit_rows.anova(),
            "marginal_means": fit.marginal_means("task"),
            "w2_sensitivity": rs.w2_sensitivity(df, n_boot=20, progress=False).table,
            "cochran_q": rs.cochran_q(_complete_blocks(), by="model", method="chi2", adjust="holm"),
            "disparity": rs.disparity(df, control=["Atheist", "Man"], by="model", n_boot=50, seed=0),
            "collapse": rs.collapse(df, by=["model", "task"], cluster="item_id"),
        }
    return out


_TABLES = ["simulate_paper", "refusal_rates", "coef_table", "drop1", "drop1_unclustered", "anova",
           "marginal_means", "w2_sensitivity", "cochran_q", "disparity", "collapse"]


@pytest.mark.parametrize("name", _TABLES)
def test_tables_survive_a_parquet_round_trip(tables, name, tmp_path):
    tab = tables[name]
    assert isinstance(tab, pd.DataFrame)
    # attrs must be JSON: string keys all the way down, JSON values (pyarrow stores them so)
    assert json.loads(json.dumps(tab.attrs)) is not None
    path = tmp_path / f"{name}.parquet"
    tab.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, tab, check_dtype=False, check_categorical=False)
    assert back.attrs == json.loads(json.dumps(tab.attrs))


def test_validate_keeps_attrs_json(tables, tmp_path):
    df = rs.validate(tables["simulate_paper"].copy())
    df.to_parquet(tmp_path / "v.parquet")
    assert pd.read_parquet(tmp_path / "v.parquet").shape == df.shape


# ---------------------------------------------------------------------------------------
# one level-order rule: raw and validated input give the same reference level
# ---------------------------------------------------------------------------------------


def _first_appearance_not_sorted(seed=0, n=600) -> pd.DataFrame:
    """Levels whose first appearance (zeta, mid, alpha) differs from their sorted order."""
    rng = np.random.default_rng(seed)
    model = np.array(["zeta", "mid", "alpha"])[np.r_[0, 1, 2, rng.integers(0, 3, n - 3)]]
    task = np.array(["summarise", "classify"])[np.r_[0, 1, 0, rng.integers(0, 2, n - 3)]]
    eta = -0.5 + 0.8 * (model == "zeta") - 0.4 * (model == "alpha") + 0.6 * (task == "classify")
    return pd.DataFrame({"model": model, "task": task, "persona": "none", "prompt": "p1",
                         "refusal": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)})


def test_raw_and_validated_input_give_the_same_reference(tmp_path):
    path = tmp_path / "answers.csv"
    _first_appearance_not_sorted().to_csv(path, index=False)
    raw = pd.read_csv(path)
    loaded = rs.read_responses(path)
    validated = rs.validate(raw)
    formula = "refusal ~ model + task"
    fits = [rs.logit(formula, d, cluster=None) for d in (raw, loaded, validated)]
    names = [list(f.params.index) for f in fits]
    assert names[0] == ["Intercept", "model[T.mid]", "model[T.zeta]", "task[T.summarise]"]
    assert names[1] == names[0] and names[2] == names[0]
    assert all(f.reference == {"model": "alpha", "task": "classify"} for f in fits)
    np.testing.assert_allclose(fits[1].params, fits[0].params, rtol=1e-12)
    # the validated table's categoricals carry the same (sorted) levels
    assert list(loaded["model"].cat.categories) == ["alpha", "mid", "zeta"]
    assert list(validated["task"].cat.categories) == ["classify", "summarise"]


def test_explicit_levels_and_reference_win_over_sorting():
    df = _first_appearance_not_sorted()
    # a categorical the user built carries an explicit level order (R's factor(levels = ...))
    leveled = df.assign(model=pd.Categorical(df["model"], categories=["mid", "zeta", "alpha"]))
    fit = rs.logit("refusal ~ model + task", rs.validate(leveled), cluster=None)
    assert fit.reference["model"] == "mid"
    assert list(fit.params.index[1:3]) == ["model[T.zeta]", "model[T.alpha]"]
    # reference= moves one level first and keeps the rest in their order
    fit = rs.logit("refusal ~ model + task", df, reference={"model": "zeta"}, cluster=None)
    assert fit.reference == {"model": "zeta", "task": "classify"}
    assert list(fit.params.index[1:3]) == ["model[T.alpha]", "model[T.mid]"]


# ---------------------------------------------------------------------------------------
# one name per concept (issue #13): signatures and result columns
# ---------------------------------------------------------------------------------------

#: Names that the conventions replaced: the table is ``data``, an interval level is ``conf``,
#: adjusted p-values are ``p_adjusted``.
_RETIRED_PARAMETERS = {"df", "hdi_prob", "prob", "p_adj"}


def _public_callables():
    """Every public function of the package and of rs.plot, and every public method of the
    result classes, as (name, callable)."""
    out = []
    for name in rs.__all__:
        obj = getattr(rs, name)
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj) and name.endswith(("Results", "Result")):
            out += [(f"{name}.{m}", f) for m, f in vars(obj).items()
                    if inspect.isfunction(f) and not m.startswith("_")]
    out += [(f"plot.{n}", f) for n, f in vars(rs.plot).items()
            if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == "refusalstats.plot"]
    out += [("RankAgreement." + m, f) for m, f in vars(importlib.import_module("refusalstats.agreement")
                                                      .RankAgreement).items()
            if inspect.isfunction(f) and not m.startswith("_")]
    return out


_TABLE_FUNCTIONS = ["refusal_rates", "persona_effect", "cochran_q", "disparity", "rank_agreement",
                    "validate", "write_responses", "w2_sensitivity", "report", "collapse",
                    "plot.rates", "plot.rates_by", "plot.personas", "plot.persona_vs_free",
                    "plot.persona_heatmap", "plot.response_types"]


@pytest.mark.parametrize("name", _TABLE_FUNCTIONS)
def test_the_table_argument_is_data(name):
    fn = dict(_public_callables())[name]
    assert next(iter(inspect.signature(fn).parameters)) == "data", name


@pytest.mark.parametrize("name", ["logit", "hierarchical"])
def test_formula_functions_take_data_second(name):
    assert list(inspect.signature(getattr(rs, name)).parameters)[:2] == ["formula", "data"]


def test_no_retired_parameter_names():
    found = {name: sorted(set(inspect.signature(fn).parameters) & _RETIRED_PARAMETERS)
             for name, fn in _public_callables()}
    assert not {k: v for k, v in found.items() if v}
    # a significance level is not called alpha: in this package alpha is logit's penalty
    alphas = [name for name, fn in _public_callables() if "alpha" in inspect.signature(fn).parameters]
    assert alphas == ["logit"], alphas
    # every interval level is conf
    for name, fn in _public_callables():
        params = inspect.signature(fn).parameters
        assert not {"ci_level", "conf_level", "credible", "hdi", "interval_level"} & set(params), name


def test_seed_parameters_accept_a_generator():
    for name, fn in _public_callables():
        p = inspect.signature(fn).parameters.get("seed")
        if p is not None and p.annotation is not inspect.Parameter.empty:
            assert "Generator" in str(p.annotation), name


_RETIRED_COLUMNS = {"p", "p_adj", "pvalue", "hdi_low", "hdi_high", "effect_low", "effect_high",
                    "prob_low", "prob_high", "p_low", "p_high", "p_mean", "low", "high", "lower", "upper"}


@pytest.mark.parametrize("name", _TABLES)
def test_result_tables_use_the_column_names(tables, name):
    cols = set(map(str, tables[name].columns))
    assert not cols & _RETIRED_COLUMNS, (name, cols & _RETIRED_COLUMNS)
    assert not {c for c in cols if c.startswith("p_") and c not in ("p_value", "p_adjusted", "p_gt_0")}


def test_adjusted_tables_have_p_value_and_p_adjusted(tables):
    for name in ("coef_table", "cochran_q"):
        assert {"p_value", "p_adjusted"} <= set(tables[name].columns), name
    for name in ("refusal_rates", "coef_table", "w2_sensitivity", "marginal_means"):
        assert {"ci_low", "ci_high"} <= set(tables[name].columns), name


# ---------------------------------------------------------------------------------------
# one exception for a missing column: SchemaError, naming the table's real columns
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _missing_column_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's columns (a small table: each call fails on its column check) and blocks,
    made once (the list of calls is built at collection and again in every case)."""
    return rs.simulate_paper(scale=0.002, seed=1), _complete_blocks()


def _missing_column_calls():
    df, blocks = _missing_column_tables()
    return [
        ("refusal_rates", lambda: rs.refusal_rates(df, by=["model", "nope"])),
        ("refusal_rates cluster", lambda: rs.refusal_rates(df, by="model", cluster="nope")),
        ("persona_effect", lambda: rs.persona_effect(df, by="nope")),
        ("cochran_q", lambda: rs.cochran_q(blocks, condition="nope")),
        ("disparity", lambda: rs.disparity(df, category="nope")),
        ("rank_agreement", lambda: rs.rank_agreement(blocks, item="persona", rater="nope")),
        ("validate", lambda: rs.validate(df.drop(columns="task"))),
        ("collapse", lambda: rs.collapse(df, by=["model", "nope"])),
        ("logit", lambda: rs.logit("refusal ~ model + nope", df, cluster=None)),
        ("logit reference", lambda: rs.logit("refusal ~ model", df, reference={"nope": "a"}, cluster=None)),
        ("logit cluster", lambda: rs.logit("refusal ~ model", df, cluster="nope")),
        ("hierarchical", lambda: rs.hierarchical("refusal ~ task + (1|nope)", df, draws=10, tune=10,
                                                 chains=1, progress=False)),
        ("w2 input", lambda: rs.w2_sensitivity(df, inputs=["model", "nope"], n_boot=0, n_perm=0,
                                               progress=False)),
        ("w2 output", lambda: rs.w2_sensitivity(df, output="nope", n_boot=0, n_perm=0, progress=False)),
        ("plot.rates", lambda: rs.plot.rates(df, row="nope")),
        ("plot.rates_by", lambda: rs.plot.rates_by(df, column="nope")),
        ("plot.coefficients", lambda: rs.plot.coefficients(pd.DataFrame({"term": ["a"], "x": [1.0]}))),
        ("plot.hierarchical_effects", lambda: rs.plot.hierarchical_effects(
            pd.DataFrame({"model": ["A"], "persona": ["x"], "effect": [0.1]}))),
        ("report", lambda: rs.report(df, inputs=["model", "nope"], out=None)),
    ]


@pytest.mark.parametrize("case", range(len(_missing_column_calls())),
                         ids=[c[0] for c in _missing_column_calls()])
def test_a_missing_column_raises_schema_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name, call = _missing_column_calls()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(rs.SchemaError) as info:
            call()
    msg = str(info.value)
    assert "columns are [" in msg or "the table has [" in msg, (name, msg)  # the real columns
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert not msg.startswith("'"), msg  # printed plainly, not quoted as a KeyError would be


# ---------------------------------------------------------------------------------------
# every public function and result method: the naming conventions and a numpy docstring
# whose Parameters match the signature and whose Returns says what comes back
# ---------------------------------------------------------------------------------------


def _core_result_classes() -> dict[str, type]:
    """Public classes of the core with a ``to_frame`` method: the result objects."""
    out = {}
    for name in _submodules():
        mod = importlib.import_module(name)
        for cname, cls in vars(mod).items():
            if (inspect.isclass(cls) and not cname.startswith("_") and cls.__module__ == name
                    and callable(getattr(cls, "to_frame", None))):
                out[cname] = cls
    return out


def _all_public() -> dict[str, object]:
    """Every public function reachable from ``refusalstats.__all__`` (functions, the
    functions of the public modules in it) and every public method of the result classes."""
    out: dict[str, object] = {}
    for name in rs.__all__:
        obj = getattr(rs, name)
        if inspect.isfunction(obj):
            out[name] = obj
        elif isinstance(obj, types.ModuleType):
            names = getattr(obj, "__all__", None) or [
                n for n, f in vars(obj).items()
                if inspect.isfunction(f) and f.__module__.startswith(obj.__name__)]
            for n in names:
                f = getattr(obj, n)
                if inspect.isfunction(f) and not n.startswith("_"):
                    out[f"{name}.{n}"] = f
    for cname, cls in sorted(_core_result_classes().items()):
        for m, f in vars(cls).items():
            if inspect.isfunction(f) and not m.startswith("_"):
                out[f"{cname}.{m}"] = f
    return out


_PUBLIC = _all_public()
#: parameter names for a concept that has another name in this package
_OTHER_NAMES = {"df": "data", "table": "data", "frame": "data", "responses": "data",
                "prob": "conf", "hdi_prob": "conf", "ci_level": "conf", "conf_level": "conf",
                "level": "conf", "random_state": "seed", "rng": "seed", "random_seed": "seed",
                "block": "cluster", "p_adj": "p_adjusted"}


def _returns_something(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    if ann is not inspect.Signature.empty:
        return str(ann) not in ("None", "NoReturn")
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]

    def walk(node):  # the function's own returns, not those of nested functions
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, (ast.Yield, ast.YieldFrom)) or (
                    isinstance(child, ast.Return) and child.value is not None):
                return True
            if walk(child):
                return True
        return False

    return walk(tree)


def _deprecated_alias(fn, param: str) -> bool:
    """A parameter kept only as a deprecated alias: documented as deprecated and warned."""
    doc = inspect.getdoc(fn) or ""
    src = inspect.getsource(fn)
    return ("deprecated" in doc.lower() and param in doc
            and ("DeprecationWarning" in src or "FutureWarning" in src))


@pytest.mark.parametrize("name", sorted(_PUBLIC))
def test_public_names_follow_the_conventions(name):
    fn = _PUBLIC[name]
    params = inspect.signature(fn).parameters
    wrong = {p: _OTHER_NAMES[p] for p in params
             if p in _OTHER_NAMES and not _deprecated_alias(fn, p)}
    assert not wrong, f"{name}: rename {wrong} (old name -> convention)"
    if "alpha" in params:  # alpha is a penalty strength here, never a significance level
        from numpydoc.docscrape import FunctionDoc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry = [" ".join(q.desc) for q in FunctionDoc(fn)["Parameters"]
                     if "alpha" in [n.strip() for n in q.name.split(",")]]
        assert entry and "penalty" in entry[0].lower(), f"{name}: alpha must be documented as a penalty"
    first = next(iter(params.values()), None)
    if first is not None and "DataFrame" in str(first.annotation):
        assert first.name == "data", f"{name}: the table argument is called data"


@pytest.mark.parametrize("name", sorted(_PUBLIC))
def test_public_names_have_numpy_docstrings(name):
    from numpydoc.docscrape import FunctionDoc

    fn = _PUBLIC[name]
    assert inspect.getdoc(fn), f"{name}: no docstring"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpydoc warns about sections it does not know
        doc = FunctionDoc(fn)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    documented = []
    for p in doc["Parameters"]:
        documented += [n.strip().lstrip("*") for n in p.name.split(",") if n.strip()]
    missing = [p for p in params if p not in documented]
    unknown = [p for p in documented if p not in params]
    assert not missing and not unknown, (
        f"{name}: Parameters section documents {documented}, signature has {params} "
        f"(missing {missing}, not in the signature {unknown})")
    if _returns_something(fn):
        assert doc["Returns"] or doc["Yields"], f"{name}: no Returns section"


def test_the_api_reference_lists_every_public_name():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "api.rst").read_text()
    # a directive (".. autofunction:: name") or an autosummary entry (an indented line "name")
    listed = set(re.findall(r"^\s{3}(?:refusalstats\.)?(\w+)\s*$", page, flags=re.MULTILINE))
    missing = [n for n in rs.__all__ if n not in ("dumps", "plot") and n not in listed
               and not any(f":: {p}{n}" in page for p in ("", "refusalstats."))]
    assert not missing, f"docs/api.rst does not document {missing}"
    assert "automodule:: refusalstats.plot" in page and "automodule:: refusalstats.dumps" in page
