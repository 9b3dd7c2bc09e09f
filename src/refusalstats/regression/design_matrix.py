"""From a formula and a table to the fitted design: checks, factors, collapsed patterns, clusters.

:func:`_build` validates the input once (every problem at once), sets reference levels
through :func:`refusalstats.formula.prepare_factors`, collapses rows to unique covariate
patterns with binomial counts, and returns a :class:`_Design` the estimators share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg
from scipy.special import gammaln

from ..counts import row_patterns
from ..formula import (
    FormulaError,
    MissingColumnError,
    check_columns,
    fixed_design,
    main_effects_design,
    parse_formula,
    prepare_factors,
)
from ..table import binary_problem, its_columns
from .irls import _Start
from .linalg import _fast, _xtwx


@dataclass
class _Cluster:
    name: str
    labels: np.ndarray     # cluster label per cluster index
    g: np.ndarray          # cluster index per (cluster, pattern) pair
    j: np.ndarray          # pattern index per pair
    s: np.ndarray          # successes per pair
    n: np.ndarray          # trials per pair
    two_way: object = None  # covariance._TwoWay when the clusters are the cells of two crossed columns

    @property
    def n_clusters(self) -> int:
        return len(self.labels)


@dataclass
class _Design:
    X: np.ndarray              # dense design on the patterns
    Xf: object                 # the same, sparse when mostly zeros (for the solvers)
    s: np.ndarray
    n: np.ndarray
    names: list[str]
    spec: object
    patterns: pd.DataFrame
    variables: list[str]
    factors: dict[str, list]
    n_obs: int
    dev_sat: float
    ll_const: float
    start: _Start | None
    cluster: _Cluster | None = None
    inverse: object = None  # pattern of each input row: an array, or a function computing it
    row_pair: np.ndarray | None = None     # (cluster, pattern) pair of each input row (plain 0/1 rows)
    term_columns: dict[str, list[int]] = field(default_factory=dict)
    term_factors: dict[str, list[str]] = field(default_factory=dict)


def _row_patterns(d: _Design) -> np.ndarray | None:
    """``d.inverse`` (the pattern of each input row), computed now if it was deferred."""
    if callable(d.inverse):
        d.inverse = d.inverse()
    return d.inverse


def _check_response(y: pd.Series, name: str, trials: pd.Series | None) -> None:
    if trials is None:
        problem = binary_problem(y, name)  # the one 0/1 check (table.py)
        if problem:
            raise ValueError(f"{problem}. For counts of refusals out of n pass trials='n'")
    else:
        yv = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        tv = pd.to_numeric(trials, errors="coerce").to_numpy(dtype=float)
        if np.isnan(yv).any() or np.isnan(tv).any():
            raise ValueError(f"response '{name}' and trials '{trials.name}' must be numeric without NaN")
        if (tv <= 0).any():
            raise ValueError(f"trials column '{trials.name}' must be positive; {int((tv <= 0).sum())} row(s) are not")
        if (yv < 0).any() or (yv > tv).any():
            raise ValueError(
                f"response '{name}' counts successes out of '{trials.name}': it must satisfy "
                f"0 <= {name} <= {trials.name}; {int(((yv < 0) | (yv > tv)).sum())} row(s) do not"
            )


def _build(formula: str, data: pd.DataFrame, reference, trials, weights, cluster, collapse_rows: bool
           ) -> tuple[_Design, object]:
    from ..table import SchemaError, validate

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    data = data.copy(deep=False)
    data.attrs = {}  # pandas deep-copies attrs on every operation; the simulator's are large
    parsed = parse_formula(formula)
    if parsed.random:
        raise FormulaError(
            f"logit() fits fixed effects only; the formula has random terms "
            f"{[str(t) for t in parsed.random]}. Use refusalstats.hierarchical() for those, or write "
            "the grouping as a fixed factor"
        )
    extra = [c for c in (trials, cluster) if c is not None]
    if isinstance(weights, str):
        extra.append(weights)
    check_columns(parsed, data, extra=extra)
    variables = [v for v in parsed.fixed_variables if v in data.columns]
    resp = parsed.response
    if resp in variables:
        raise FormulaError(f"the response '{resp}' also appears on the right-hand side of {formula!r}")
    # the input boundary: every problem at once (NaNs, one-level factors, bad 0/1 response)
    cols = list(dict.fromkeys([resp, *variables, *extra]))
    levels_needed = [v for v in variables
                     if not pd.api.types.is_numeric_dtype(data[v]) or isinstance(data[v].dtype, pd.CategoricalDtype)
                     or v in (reference or {})]
    if trials is None and weights is None and collapse_rows:
        # plain 0/1 rows: checks and the collapse on integer codes; any doubt -> the full
        # validation below, which names every problem
        fast = _fast_rows(data, resp, variables, cluster, levels_needed, reference)
        if fast is not None:
            return _fast_finish(formula, parsed, data, variables, resp, cluster, *fast)
    sub = data[cols]
    if trials is not None and resp == "refusal":
        sub = sub.rename(columns={resp: "__successes__"})
    try:
        validate(sub, required=[c if not (trials is not None and c == "refusal") else "__successes__"
                                for c in cols],
                 predictors=[*variables, *([cluster] if cluster else [])], needs_levels=levels_needed)
    except SchemaError as exc:
        raise SchemaError([f"{p} (formula {formula!r})" for p in exc.problems]) from None
    _check_response(data[resp], resp, None if trials is None else data[trials])
    if isinstance(weights, str):
        w = data[weights].to_numpy(dtype=float)
    elif weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(data),):
            raise ValueError(f"weights must have one value per row ({len(data)}), got shape {w.shape}")
    else:
        w = None
    if w is not None and (np.isnan(w).any() or (w < 0).any()):
        raise ValueError("weights must be non-negative numbers without NaN")

    reference = _reference(reference, data, variables)
    frame = prepare_factors(data[[c for c in dict.fromkeys([resp, *variables, *extra])]],
                            variables, reference)
    yv = frame[resp].to_numpy(dtype=float)
    tv = np.ones(len(frame)) if trials is None else frame[trials].to_numpy(dtype=float)
    prior = tv if w is None else tv * w
    n_obs = int(len(frame) if w is None else np.count_nonzero(w))
    succ_total = float(np.sum(yv * (1 if w is None else w)))
    tot = float(np.sum(prior))
    if succ_total == 0 or succ_total == tot:
        raise ValueError(
            f"response '{resp}' is {'0' if succ_total == 0 else '1'} in every row ({tot:,.0f} rows): "
            "there is nothing to model. Check the response column and the rows you selected"
        )
    # saturated log-likelihood and the binomial-coefficient constant of the input rows
    if trials is None:
        dev_sat, ll_const = 0.0, 0.0
    else:
        ww = 1.0 if w is None else w
        sv, fv = yv, tv - yv
        with np.errstate(divide="ignore", invalid="ignore"):
            sat = np.where(sv > 0, sv * np.log(sv / tv), 0.0) + np.where(fv > 0, fv * np.log(fv / tv), 0.0)
        dev_sat = float(np.sum(ww * sat))
        ll_const = float(np.sum(ww * (gammaln(tv + 1) - gammaln(yv + 1) - gammaln(tv - yv + 1))))

    if collapse_rows:
        col = row_patterns(frame, variables, resp, trials=trials, weights=w)
        inverse = col.inverse
        patterns = col.patterns
    else:
        inverse = np.arange(len(frame))
        patterns = frame[variables].reset_index(drop=True).copy()
        patterns["successes"] = yv * (1 if w is None else w)
        patterns["trials"] = prior
    return _finish(formula, parsed, variables, resp, trials, w, cluster,
                   frame[cluster] if cluster is not None else None, yv, tv, prior, n_obs, dev_sat, ll_const,
                   patterns, inverse)


def _finish(formula, parsed, variables, resp, trials, w, cluster, cluster_values, yv, tv, prior, n_obs,
            dev_sat, ll_const, patterns, inverse) -> tuple[_Design, object]:
    """Start values, design matrix, rank check and clusters on the collapsed patterns."""
    s = patterns["successes"].to_numpy(dtype=float)
    n = patterns["trials"].to_numpy(dtype=float)
    keep = n > 0
    if not keep.all():  # patterns whose rows all have weight 0
        inverse = inverse() if callable(inverse) else inverse
        patterns = patterns[keep].reset_index(drop=True)
        remap = np.cumsum(keep) - 1
        inverse = np.where(keep[inverse], remap[inverse], -1)
        s, n = s[keep], n[keep]
    # R's glm.fit start (mustart = (m y + 0.5)/(m + 1) per input row), summed to patterns
    K = len(patterns)
    succ_rows = yv if w is None else yv * w
    if trials is None and w is None:  # plain 0/1 rows: mustart is 3/4 or 1/4, in closed form
        z1 = np.log(3.0) + 4.0 / 3.0
        start_w = 0.1875 * n
        start_wz = 0.1875 * z1 * (2.0 * s - n)
        dev0 = -2.0 * len(yv) * np.log(0.75)
    else:
        inverse = inverse() if callable(inverse) else inverse
        ok = inverse >= 0
        m = prior
        ybar = np.where(prior > 0, yv / np.maximum(tv, 1e-300), 0.0)
        mu0 = (m * ybar + 0.5) / (m + 1.0)
        v0 = mu0 * (1 - mu0)
        w0 = prior * v0
        z0 = np.log(mu0 / (1 - mu0)) + (ybar - mu0) / v0
        start_w = np.bincount(inverse[ok], weights=w0[ok], minlength=K)
        start_wz = np.bincount(inverse[ok], weights=(w0 * z0)[ok], minlength=K)
        fail_rows = prior - succ_rows
        dev0 = 2.0 * (dev_sat - float(np.sum(succ_rows * np.log(mu0) + fail_rows * np.log1p(-mu0))))
    start = _Start(start_w, start_wz, dev0)

    direct = main_effects_design(parsed.fixed, patterns[variables]) if variables else None
    if direct is not None:  # main effects of text factors: no formulaic call
        X, names, spec, term_columns, term_factors = direct
    else:
        X, names, spec = fixed_design(parsed.fixed, patterns[variables] if variables else patterns)
        term_columns, term_factors = {}, {}
        for term, idx in spec.term_indices.items():
            key = str(term)
            term_columns[key] = list(idx)
            term_factors[key] = [str(f) for f in term.factors if str(f) != "1"]
    if X.shape[0] != K:
        raise FormulaError(f"the design of {formula!r} lost rows ({X.shape[0]} of {K})")
    factors = {v: list(patterns[v].cat.categories) for v in variables
               if isinstance(patterns[v].dtype, pd.CategoricalDtype)}
    p = X.shape[1]
    if p > K:
        raise ValueError(
            f"the model has {p} coefficients but the data have only {K} distinct covariate pattern(s): "
            "the coefficients are not identifiable. Use fewer terms (e.g. drop an interaction) or more data"
        )
    Xf = _fast(X)
    gram = _xtwx(Xf, n / n.max())
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    gram = gram / scale[:, None] / scale[None, :]
    rank = np.linalg.matrix_rank(gram, tol=1e-10, hermitian=True)
    if rank < p:
        _, _, piv = linalg.qr(gram, pivoting=True)
        aliased = [names[i] for i in piv[rank:]]
        raise ValueError(
            f"the design of {formula!r} is rank deficient ({rank} of {p} columns independent): "
            f"coefficient(s) {aliased} are aliased with others (a constant numeric column, a "
            "level combination with no rows in an interaction, or collinear covariates). "
            "Remove or recode those terms"
        )
    cl = None
    row_pair = None
    if cluster is not None:
        inverse = inverse() if callable(inverse) else inverse
        ok = inverse >= 0
        codes, uniq = pd.factorize(cluster_values, sort=True)
        codes = codes.astype(np.int64)
        sel = ok if prior is None else ok & (prior > 0)  # prior None: one trial per row
        key = codes[sel] * K + inverse[sel]
        ukey, pinv = np.unique(key, return_inverse=True)
        pinv = pinv.ravel()
        cl = _Cluster(
            name=cluster, labels=np.asarray(uniq),
            g=(ukey // K).astype(np.int64), j=(ukey % K).astype(np.int64),
            s=np.bincount(pinv, weights=succ_rows[sel], minlength=len(ukey)),
            n=np.bincount(pinv, weights=None if prior is None else prior[sel],
                          minlength=len(ukey)).astype(float),
        )
        if cl.n_clusters < 2:
            raise ValueError(f"cluster column '{cluster}' has a single cluster; cluster-robust SEs need many")
        if trials is None and w is None and sel.all():
            row_pair = pinv.astype(np.int32 if len(ukey) < 2**31 else np.int64)
    design = _Design(X=X, Xf=Xf, s=s, n=n, names=names, spec=spec, patterns=patterns, variables=variables,
                     factors=factors, n_obs=n_obs, dev_sat=dev_sat, ll_const=ll_const, start=start,
                     cluster=cl, inverse=inverse, row_pair=row_pair, term_columns=term_columns, term_factors=term_factors)
    return design, parsed


def _reference(reference, data: pd.DataFrame, variables: list[str]) -> dict:
    """``reference=`` checked against the table, restricted to the formula's variables."""
    from ..formula import normalize_reference

    reference = normalize_reference(reference, data, variables)
    unknown = [k for k in reference if k not in data.columns]
    if unknown:
        raise MissingColumnError(f"reference given for column(s) {unknown}, which are not in the table; "
                                 f"{its_columns(data.columns, unknown)}")
    # a reference for a column the formula does not use has no effect (e.g. the paper's four)
    return {k: v for k, v in reference.items() if k in variables}


def _fast_rows(data: pd.DataFrame, resp: str, variables: list[str], cluster, levels_needed: list[str],
               reference):
    """Plain 0/1 rows (no trials, no weights): the checks of :func:`refusalstats.validate`
    and the collapse on integer codes, without copying or converting the table.

    Returns the arguments of :func:`_finish`, or None when anything looks wrong (then
    the full validation runs and names every problem).
    """
    n_rows = len(data)
    if n_rows == 0:
        return None
    y = data[resp]
    arr = y.to_numpy()
    kind = arr.dtype.kind
    if kind == "b":
        pass
    elif kind in "iu":
        if arr.min() < 0 or arr.max() > 1:
            return None
    elif kind == "f":
        if not ((arr == 0.0) | (arr == 1.0)).all():  # NaN included
            return None
    else:
        return None
    if cluster is not None and data[cluster].isna().any():
        return None
    reference = _reference(reference, data, variables)
    try:
        col = row_patterns(data, variables, resp,
                       prepare=lambda p: prepare_factors(p, variables, reference))
    except ValueError:  # a missing value in a key column
        return None
    raw = col.patterns
    if raw["successes"].sum() in (0.0, float(n_rows)):  # nothing to model: the full message
        return None
    for v in levels_needed:
        if len(pd.unique(raw[v])) < 2:
            return None
    return col, arr


def _fast_finish(formula, parsed, data, variables, resp, cluster, col, arr):
    """:func:`_finish` for :func:`_fast_rows`, whose collapse set the levels and reference
    on the patterns (a column's levels are the same whether read from its rows or its
    patterns) and ordered them as the collapse of the prepared rows orders them."""
    return _finish(formula, parsed, variables, resp, None, None, cluster,
                   data[cluster] if cluster is not None else None, arr, None, None, len(arr), 0.0, 0.0,
                   col.patterns, col.lazy_inverse)
