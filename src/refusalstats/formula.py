"""Formula machinery shared by the models.

* :func:`parse_formula` splits an R/lme4 formula into the response, the fixed part
  (Wilkinson syntax, handed to formulaic) and random intercept terms ``(1|g)`` /
  ``(1|a:b)``.
* :func:`prepare_factors` turns predictor columns into categoricals with the
  requested reference levels first (treatment coding), with clear errors for unknown
  levels.
* :func:`collapse` reduces rows to unique covariate patterns with binomial counts
  (refusals, n): for an all-categorical design the binomial likelihood equals the
  Bernoulli one, so millions of rows cost thousands.
* :func:`fixed_design` builds the fixed-effect model matrix once (formulaic) and keeps
  its spec so new data reuse the fitted levels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .table import SchemaError, default_levels, its_columns


class FormulaError(ValueError):
    """A formula cannot be used with the data (syntax, missing column, unsupported term)."""


class MissingColumnError(SchemaError, FormulaError):
    """A formula (or ``reference=``) names a column the table lacks.

    Both a :class:`~refusalstats.SchemaError` (the one exception every analysis raises for a
    missing column) and a :class:`FormulaError`.
    """


@dataclass(frozen=True)
class RandomTerm:
    """A random intercept ``(1|g1:g2:...)``: one normal deviation per level combination."""

    groups: tuple[str, ...]

    @property
    def name(self) -> str:
        return ":".join(self.groups)

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"(1|{self.name})"


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its parts."""

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...] = field(default_factory=tuple)

    @property
    def fixed_variables(self) -> list[str]:
        """Variable names used in the fixed part (in order of appearance)."""
        return _variables(self.fixed)

    @property
    def group_variables(self) -> list[str]:
        out: list[str] = []
        for t in self.random:
            for g in t.groups:
                if g not in out:
                    out.append(g)
        return out

    @property
    def variables(self) -> list[str]:
        out = list(self.fixed_variables)
        for g in self.group_variables:
            if g not in out:
                out.append(g)
        return out


_RANDOM_RE = re.compile(r"\(\s*([^()|]*?)\s*\|\s*([^()|]+?)\s*\)")
_NAME_RE = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


def _variables(rhs: str) -> list[str]:
    """Column names a formula's right-hand side needs, in order of first appearance.

    The set comes from formulaic (``Formula(rhs).required_variables``: function names,
    ``np``, contrasts and string literals are not columns). formulaic 1.2 returns nothing
    for a stateful transform such as ``scale(z)`` or ``bs(x, df=3)``; for those factors its
    expression parser is asked for the values the call reads.
    """
    from formulaic import Formula
    from formulaic.parser.types import Factor
    from formulaic.transforms import TRANSFORMS
    from formulaic.utils.variables import Variable, get_expression_variables

    try:
        formula = Formula(rhs)
    except Exception as exc:  # noqa: BLE001 - formulaic's parser raises several types
        raise FormulaError(f"cannot parse the formula's right-hand side {rhs!r}: {exc}") from None
    names = {str(v) for v in formula.required_variables} - {"True", "False", "None"}
    for term in formula:
        for factor in term.factors:
            if factor.eval_method == Factor.EvalMethod.PYTHON and not factor.required_variables:
                names |= {str(v.root) for v in get_expression_variables(factor.expr, {})
                          if Variable.Role.VALUE in v.roles and v.root not in TRANSFORMS}
    # order of appearance: string literals blanked (same length) so "Atheist" is not a match
    text = re.sub(r"(['\"]).*?\1", lambda m: " " * len(m.group(0)), rhs)

    def first(name: str) -> int:
        m = re.search(r"(?<![A-Za-z0-9_.])" + re.escape(name) + r"(?![A-Za-z0-9_.])", text)
        return m.start() if m else len(text)

    return sorted(names, key=lambda n: (first(n), n))


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``"y ~ a + b + (1|g) + (1|g:h)"`` into response, fixed part and random terms.

    Random slopes such as ``(x|g)`` are refused with a clear message.

    Examples
    --------
    >>> f = parse_formula("refusal ~ task + prompt + (1|model) + (1|persona:model)")
    >>> f.response, f.fixed, [t.name for t in f.random]
    ('refusal', 'task + prompt', ['model', 'persona:model'])
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(
            f"a formula looks like 'refusal ~ persona + task'; got {formula!r} (no '~')"
        )
    lhs, rhs = formula.split("~", 1)
    response = lhs.strip()
    if not response:
        raise FormulaError(f"formula {formula!r} has no response on the left of '~'")
    if not _NAME_RE.fullmatch(response):
        raise FormulaError(
            f"the response must be a column name (e.g. 'refusal'); got {response!r}. For "
            "aggregated counts use a column of successes and pass trials='n'"
        )
    bare = rhs.strip()
    if not bare:
        raise FormulaError(f"formula {formula!r} has nothing right of '~'; write "
                           "'refusal ~ 1' for an intercept-only model")
    if bare.endswith("+") or bare.startswith("+") or re.search(r"\+\s*\+", bare):
        raise FormulaError(
            f"formula {formula!r} has a '+' with no term on one side; remove it or add the "
            "term (as R does, a dangling '+' is an error, not ignored)"
        )
    random: list[RandomTerm] = []
    for m in _RANDOM_RE.finditer(rhs):
        expr, groups = m.group(1).strip(), m.group(2).strip()
        if expr not in ("1",):
            raise FormulaError(
                f"random term '({expr}|{groups})': only random intercepts '(1|{groups})' are "
                "supported; random slopes are not (yet) — write the slope as a fixed "
                f"interaction instead, e.g. '{expr}:{groups}'"
            )
        parts = tuple(p.strip() for p in groups.split(":"))
        if not all(_NAME_RE.fullmatch(p) for p in parts):
            raise FormulaError(f"random term '(1|{groups})': grouping must be column names joined by ':'")
        term = RandomTerm(parts)
        if term in random:
            raise FormulaError(f"random term '(1|{groups})' appears twice")
        random.append(term)
    fixed = _RANDOM_RE.sub(" ", rhs)
    if "|" in fixed:
        raise FormulaError(f"cannot parse the random part of {formula!r}; write random intercepts as '(1|group)'")
    fixed = re.sub(r"\+\s*(?=\+|$)", "", fixed)
    fixed = re.sub(r"^\s*\+", "", fixed.strip())
    fixed = re.sub(r"\s+", " ", fixed).strip().rstrip("+").strip()
    if not fixed:
        fixed = "1"
    return ParsedFormula(formula=formula, response=response, fixed=fixed, random=tuple(random))


def check_columns(parsed: ParsedFormula, data: pd.DataFrame, extra: Iterable[str] = ()) -> None:
    """Raise :class:`MissingColumnError` naming every formula variable missing from ``data``."""
    needed = [parsed.response, *parsed.variables, *extra]
    missing = [c for c in dict.fromkeys(needed) if c not in data.columns]
    if missing:
        raise MissingColumnError(
            f"formula {parsed.formula!r} names column(s) {missing} that are not in the table; "
            f"{its_columns(data.columns, missing)}"
        )


def normalize_reference(reference, data=None, columns: Iterable[str] = ()) -> dict:
    """``reference=`` as a dict: a mapping as given, None as {}, or a bare level name.

    A bare string (``reference="Atheist"``) is accepted when it is a level of exactly one
    of ``columns`` in ``data`` (a DataFrame); otherwise the error says what to pass.

    Parameters
    ----------
    reference : mapping, str or None
        The user's ``reference=``.
    data : DataFrame, optional
        The table (a path or None: a bare string cannot be resolved).
    columns : iterable of str
        The formula's variables, where a bare level is looked for.

    Returns
    -------
    dict
        column -> reference level.

    Raises
    ------
    FormulaError
        ``reference`` is neither a mapping, None nor a level of exactly one column.
    """
    if reference is None:
        return {}
    if isinstance(reference, Mapping):
        return dict(reference)
    example = "reference={'persona': 'Atheist'}"
    if not isinstance(reference, str):
        raise FormulaError(f"reference must map columns to their reference level, e.g. {example}; "
                           f"got {type(reference).__name__} {reference!r}")
    found = []
    if isinstance(data, pd.DataFrame):
        for col in dict.fromkeys(columns):
            if col in data.columns:
                s = data[col]
                levels = s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype) \
                    else pd.unique(s.dropna())
                if reference in set(map(str, levels)):
                    found.append(col)
    if len(found) == 1:
        return {found[0]: reference}
    if found:
        why = (f"it is a level of several columns ({found}); say which, e.g. "
               f"reference={{{found[0]!r}: {reference!r}}}")
    elif isinstance(data, pd.DataFrame):
        why = f"it is not a level of any of the formula's columns {list(dict.fromkeys(columns))}"
    else:
        why = "a bare level can only be matched to its column on a DataFrame"
    raise FormulaError(f"reference must map columns to their reference level, e.g. {example}; got "
                       f"the string {reference!r}: {why}")


def prepare_factors(
    data: pd.DataFrame,
    columns: Iterable[str],
    reference: Mapping[str, object] | None = None,
) -> pd.DataFrame:
    """Return a copy where non-numeric ``columns`` are categoricals, reference level first.

    The level-order rule (R's): a column of plain values (strings) gets sorted levels
    (:func:`default_levels`); a pandas categorical keeps its level order (ordered or
    not: its categories are an explicit order, like R's ``factor(x, levels = ...)``);
    ``reference`` moves the named level first. Unused categories are removed (they have
    no rows to estimate from). The first level is the reference of treatment coding.
    Numeric columns are left numeric unless named in ``reference`` (then treated as a
    factor).

    Raises
    ------
    FormulaError
        A ``reference`` key that is not a column, or a level that is not in the column
        (the message lists the levels).
    """
    columns = list(dict.fromkeys(columns))
    reference = normalize_reference(reference, data, columns)
    out = data.copy()
    for col in reference:
        if col not in out.columns:
            raise MissingColumnError(
                f"reference given for column '{col}', which is not in the table; "
                f"{its_columns(out.columns, [col])}"
            )
    for col in columns:
        s = out[col]
        is_cat = isinstance(s.dtype, pd.CategoricalDtype)
        if not is_cat and (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) \
                and col not in reference:
            continue
        if is_cat:
            codes = s.cat.codes.to_numpy()
            if not (np.bincount(codes[codes >= 0], minlength=len(s.cat.categories)) > 0).all():
                s = s.cat.remove_unused_categories()  # (slow on millions of rows: only when needed)
        else:
            s = pd.Categorical(s, categories=default_levels(s))
            s = pd.Series(s, index=out.index, name=col)
        if col in reference:
            ref = reference[col]
            cats = list(s.cat.categories)
            match = [c for c in cats if c == ref or str(c) == str(ref)]
            if not match:
                raise FormulaError(
                    f"reference level {ref!r} is not a level of '{col}'; its levels are {cats}"
                )
            ref_level = match[0]
            s = s.cat.reorder_categories([ref_level] + [c for c in cats if c != ref_level])
        out[col] = s
    return out


# Rows -> covariate patterns has one home with the other counts
# (:func:`refusalstats.counts.row_patterns`); the old names stay importable from here.
from .counts import Collapsed  # noqa: F401
from .counts import row_patterns as collapse  # noqa: F401


def fixed_design(fixed: str, data: pd.DataFrame):
    """Fixed-effect model matrix of ``fixed`` (formula right-hand side) on ``data``.

    Returns ``(X, names, spec)`` where ``X`` is a float ndarray, ``names`` its column
    names (R/formulaic style, e.g. ``"persona[T.Black person]"``) and ``spec`` the
    formulaic ModelSpec to rebuild the matrix on new data with the same levels.
    """
    from formulaic import model_matrix

    try:
        mm = model_matrix(fixed, data, ensure_full_rank=True, na_action="raise")
    except Exception as exc:  # formulaic raises many types; name the formula
        raise FormulaError(f"cannot build the design for '{fixed}': {exc}") from exc
    X = np.asarray(mm, dtype=float)
    return X, list(mm.columns), mm.model_spec


class _LazySpec:
    """The formulaic ModelSpec of a design built without formulaic, made on first use (to
    evaluate the formula on new data)."""

    def __init__(self, fixed: str, data: pd.DataFrame):
        self._fixed, self._data, self._spec = fixed, data, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._spec is None:
            self._spec = fixed_design(self._fixed, self._data)[2]
            self._data = None
        return getattr(self._spec, name)


def main_effects_design(fixed: str, data: pd.DataFrame):
    """:func:`fixed_design` of ``a + b + ...`` (main effects of categorical columns with
    text levels, the usual model here) built directly from the category codes, as
    formulaic builds it (intercept, then each factor's levels but the first, in formula
    order, named ``a[T.level]``), without formulaic's per-call cost.

    Returns ``(X, names, spec, term_columns, term_factors)``, ``spec`` made by formulaic
    when first used; or None for any other formula (then use :func:`fixed_design`).
    """
    terms = [t.strip() for t in fixed.split("+")]
    if not terms or any(not t.isidentifier() for t in terms) or len(set(terms)) != len(terms):
        return None
    K = len(data)
    cols = []
    for t in terms:
        if t not in data.columns or not isinstance(data[t].dtype, pd.CategoricalDtype):
            return None
        cats = data[t].cat.categories
        codes = np.asarray(data[t].array.codes)
        if len(cats) < 2 or not all(isinstance(c, str) for c in cats) or (codes < 0).any():
            return None
        cols.append((t, cats, codes))
    p = 1 + sum(len(c) - 1 for _, c, _ in cols)
    X = np.zeros((K, p))
    X[:, 0] = 1.0
    names = ["Intercept"]
    term_columns: dict[str, list[int]] = {"1": [0]}
    term_factors: dict[str, list[str]] = {"1": []}
    j = 1
    rows = np.arange(K)
    for t, cats, codes in cols:
        on = codes > 0
        X[rows[on], j + codes[on] - 1] = 1.0
        names.extend(f"{t}[T.{c}]" for c in cats[1:])
        term_columns[t] = list(range(j, j + len(cats) - 1))
        term_factors[t] = [t]
        j += len(cats) - 1
    return X, names, _LazySpec(fixed, data), term_columns, term_factors


def new_design(spec, data: pd.DataFrame) -> np.ndarray:
    """Rebuild a fitted model matrix on new data (same levels and coding)."""
    try:
        mm = spec.get_model_matrix(data, na_action="raise")
    except Exception as exc:
        raise FormulaError(f"cannot evaluate the fitted formula on new data: {exc}") from exc
    return np.asarray(mm, dtype=float)


def group_index(data: pd.DataFrame, term: RandomTerm) -> tuple[np.ndarray, list[str]]:
    """Integer group index per row for a random term and the level labels (``"a:b"``)."""
    codes = []
    levels = []
    for g in term.groups:
        s = data[g]
        if not isinstance(s.dtype, pd.CategoricalDtype):
            s = pd.Series(pd.Categorical(s), index=data.index)
        s = s.cat.remove_unused_categories()
        codes.append(s.cat.codes.to_numpy().astype(np.int64))
        levels.append([str(c) for c in s.cat.categories])
    sizes = [len(lv) for lv in levels]
    key = np.ravel_multi_index(codes, sizes)
    uniq, inverse = np.unique(key, return_inverse=True)
    labels = [":".join(levels[j][i] for j, i in enumerate(np.unravel_index(u, sizes))) for u in uniq]
    return inverse.ravel(), labels
