"""Refusal rates with confidence intervals, and the classical tests of both papers.

Every function takes the tidy response table plus column names and returns a tidy
DataFrame (pingouin's shape). Rows of one item are correlated (each item is answered
many times), so intervals cluster by ``item_id`` by default (``cluster="auto"``,
resolved by :func:`refusalstats._validation.resolve_cluster`; ``cluster=None`` for
independent rows):

* :func:`refusal_rates` — the refusal rate of any grouping with Wilson,
  Clopper–Pearson or Jeffreys intervals (P1's Table 1 and figures);
* :func:`persona_effect` — persona minus persona-free rate with Newcombe's hybrid
  score interval (P1's Figure 1), or its clustered form (Zou & Donner's MOVER);
* :func:`cochran_q` — Cochran's Q across conditions with items as complete blocks
  (de Araujo & Roth's test that refusals differ across personas), with chi-squared,
  exact conditional or permutation p-values;
* :func:`disparity` — the sd of persona rates within a category over the sd among
  control personas (de Araujo & Roth);
* :func:`rank_agreement` — Kendall's tau between raters' (models') rankings of items
  (personas), and Kendall's W across all of them.

Examples
--------
>>> import refusalstats as rs
>>> df = rs.simulate_paper(scale=0.01)
>>> rs.refusal_rates(df, by="task", cluster=None).columns.tolist()
['task', 'n', 'refusals', 'rate', 'ci_low', 'ci_high']
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._summary import Summary
from ._validation import check_conf, check_random_state, resolve_cluster
from .multiplicity import adjust_pvalues

__all__ = [
    "RankAgreement",
    "cochran_q",
    "disparity",
    "persona_effect",
    "proportion_ci",
    "rank_agreement",
    "refusal_rates",
]

CI_METHODS = ("wilson", "clopper-pearson", "jeffreys")
_ALIASES = {
    "beta": "clopper-pearson",
    "exact": "clopper-pearson",
    "clopper_pearson": "clopper-pearson",
}


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _columns(value: str | Sequence[str] | None, arg: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        cols = list(value)
    except TypeError:
        raise TypeError(f"{arg} must be a column name or a list of column names") from None
    bad = [c for c in cols if not isinstance(c, str)]
    if bad:
        raise TypeError(f"{arg} must hold column names (strings); got {bad!r}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"{arg} names a column twice: {cols}")
    return cols


def _prepare(df: pd.DataFrame, columns: Sequence[str], refusal: str) -> pd.DataFrame:
    """Validate the columns a function needs and return them (refusal as int8 'refusal').

    Uses :func:`refusalstats.table.validate`: every problem (missing column, refusal
    values outside 0/1, NaN in a grouping column, empty table) is reported at once.
    """
    from .table import SchemaError, validate

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(refusal, str):
        raise TypeError("refusal must be the name of the 0/1 refusal column")
    columns = list(dict.fromkeys(columns))
    if refusal in columns:
        raise ValueError(f"column {refusal!r} is the refusal outcome; it cannot also group rows")
    present = [c for c in [*columns, refusal] if c in df.columns]
    sub = df[present]
    sub.attrs = {}  # run metadata (e.g. the simulator's truth) is not needed here
    if refusal != "refusal":
        if "refusal" in columns:
            raise ValueError(
                "a grouping column may not be called 'refusal' when refusal= is renamed"
            )
        sub = sub.rename(columns={refusal: "refusal"})
    try:
        out = validate(sub, required=[*columns, "refusal"], predictors=columns)
    except SchemaError as exc:  # name the user's refusal column and the table's real columns
        real = f"the table has {list(map(str, df.columns))}"
        problems = [str(p).replace(f"the table has {list(sub.columns)}", real) for p in exc.problems]
        if refusal != "refusal":
            problems = [p.replace("'refusal'", repr(refusal)) for p in problems]
        raise type(exc)(problems) from None
    return out


def _groups(data: pd.DataFrame, by: list[str]):
    """Iterate over (key tuple, sub-frame) in the order of the grouping levels."""
    if not by:
        yield (), data
        return
    for key, sub in data.groupby(by, observed=True, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), sub


# --------------------------------------------------------------------------------------
# Binomial intervals
# --------------------------------------------------------------------------------------


def proportion_ci(
    refusals: np.ndarray | int,
    n: np.ndarray | int,
    method: str = "wilson",
    conf: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided confidence interval for binomial proportions (vectorized).

    Parameters
    ----------
    refusals, n : array-like of int
        Successes and trials (``n > 0``).
    method : {"wilson", "clopper-pearson", "jeffreys"}
        Wilson score interval; Clopper–Pearson "exact" interval; Jeffreys interval
        (equal-tailed Beta(k + 1/2, n - k + 1/2) quantiles, with the lower limit set
        to 0 when k = 0 and the upper to 1 when k = n, as Brown, Cai & DasGupta 2001
        recommend, so that the interval always contains the estimate).
    conf : float
        Confidence level.

    Returns
    -------
    (ci_low, ci_high) : arrays

    Examples
    --------
    >>> lo, hi = proportion_ci(3, 50)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.0206, 0.1622)
    """
    method = _ci_method(method)
    conf = check_conf(conf)
    k = np.asarray(refusals, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= refusals <= n and n > 0 for every group")
    alpha = 1 - conf
    if method == "wilson":
        z = stats.norm.ppf(1 - alpha / 2)
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        # the Wilson bounds at k = 0 and k = n are exactly 0 and 1; rounding in
        # centre -/+ half leaves ~1e-17 there, which prints as a spurious positive bound
        lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
        hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
        return lo, hi
    if method == "clopper-pearson":
        with np.errstate(invalid="ignore"):
            lo = stats.beta.ppf(alpha / 2, k, n - k + 1)
            hi = stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
        return np.where(k == 0, 0.0, lo), np.where(k == n, 1.0, hi)
    lo = stats.beta.ppf(alpha / 2, k + 0.5, n - k + 0.5)
    hi = stats.beta.ppf(1 - alpha / 2, k + 0.5, n - k + 0.5)
    return np.where(k == 0, 0.0, lo), np.where(k == n, 1.0, hi)


def _ci_method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {list(CI_METHODS)}")
    m = _ALIASES.get(method.lower(), method.lower())
    if m not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {list(CI_METHODS)}")
    return m


# --------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------


def refusal_rates(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    method: str = "wilson",
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    refusal: str = "refusal",
) -> pd.DataFrame:
    """Refusal rate per group, with a binomial confidence interval.

    Parameters
    ----------
    data : DataFrame or path
        The tidy response table; or a Parquet file, a folder of Parquet shards, a glob or
        a list of them, streamed into counts by :func:`refusalstats.collapse` (memory does
        not grow with rows; the result equals the in-memory one).
    by : str or list of str, optional
        Grouping columns (e.g. ``["model", "task"]``); ``None`` gives the overall rate.
        Groups appear in the order of the columns' levels; only combinations that
        occur are listed.
    method : {"wilson", "clopper-pearson", "jeffreys"}
        Interval (see :func:`proportion_ci`).
    conf : float
        Confidence level.
    cluster : "auto", str, list of str or None
        Column(s) identifying groups of correlated rows (e.g. ``"item_id"``: P1 shows
        each item ten times to each model; ``["task", "item_id"]`` when item ids
        restart in each task). The default ``"auto"`` clusters by ``item_id`` when the
        table has that column and some item repeats (a :class:`~refusalstats.ClusterNote`
        says so; an ``item_id`` in ``by`` turns it off, each group then being one
        item); ``None`` treats rows as independent trials. With clusters the interval
        is Korn & Graubard's (1998): the chosen binomial interval on the effective
        sample size n_eff = p(1 - p) / Var(p), with the cluster-robust (ratio
        estimator) variance Var(p) = C / (C - 1) * sum_c (y_c - p m_c)^2 / n^2 over the
        C clusters (y_c refusals in m_c rows), and n_eff shrunk by the degrees-of-freedom
        factor (t_{n-1} / t_{C-1})^2 at the interval's quantile, as R's
        ``survey::svyciprop(method = "beta")`` does. The design effect is capped below
        at 1, so the interval is never narrower than the independent-rows one. Adds
        ``n_clusters``, ``design_effect`` and ``n_eff`` (n / design effect, before the
        degrees-of-freedom factor).
    refusal : str
        The 0/1 outcome column.

    Returns
    -------
    DataFrame
        ``by`` columns, then ``n``, ``refusals``, ``rate``, ``ci_low``, ``ci_high``
        (and the cluster columns).

    Notes
    -----
    With ``cluster=None`` the interval treats the rows of a group as independent
    trials. In P1's design each item appears ten times (persona x template
    variations), so rows of one item are correlated and those intervals are too
    narrow: on simulated tables with an item random intercept of sd 1 (logit scale)
    the independent-rows Wilson interval covers the population-averaged rate of a
    task about 85% of the time, the clustered one 94.6-95.0% at rates of 2%, 10% and
    50% (50 items x 10 answers per task, 1,000 replicates;
    ``benchmarks/calibration_rates.py``, ``docs/validity.md``).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01)
    >>> t = rs.refusal_rates(df, by=["model", "task"], method="jeffreys", cluster=None)
    >>> list(t.columns)
    ['model', 'task', 'n', 'refusals', 'rate', 'ci_low', 'ci_high']
    >>> t = rs.refusal_rates(df, by=["model", "task"], cluster="item_id")
    >>> list(t.columns)[-3:]
    ['n_clusters', 'design_effect', 'n_eff']
    """
    df = data
    by = _columns(by, "by")
    method = _ci_method(method)
    conf = check_conf(conf)
    from .scan import is_dataset

    if is_dataset(df):
        return _rates_from_dataset(df, by, method, conf, _auto_off(cluster, by), refusal)
    clusters = _columns(
        resolve_cluster(df, _auto_off(cluster, by), where="refusal_rates"), "cluster"
    )
    if set(clusters) & set(by):
        raise ValueError(f"cluster column(s) {sorted(set(clusters) & set(by))} are also in by=")
    data = _prepare(df, [*by, *clusters], refusal)
    if clusters:
        return _clustered_rates(data, by, clusters, method, conf)
    if by:
        agg = data.groupby(by, observed=True, sort=True)["refusal"].agg(["size", "sum"])
        out = agg.reset_index()
    else:
        out = pd.DataFrame({"size": [len(data)], "sum": [int(data["refusal"].sum())]})
    return _rates_table(out, method, conf)


def _rates_from_dataset(source, by: list[str], method: str, conf: float, cluster,
                        refusal: str) -> pd.DataFrame:
    """refusal_rates on a Parquet dataset: streamed into counts, never into rows."""
    from .scan import collapse

    if cluster not in (None, "auto") and set(_columns(cluster, "cluster")) & set(by):
        raise ValueError(f"cluster column(s) {cluster!r} are also in by=")
    counts = collapse(source, by=by, cluster=cluster, refusal=refusal)
    used = counts.attrs["collapse"]["cluster"]
    used = [] if used is None else ([used] if isinstance(used, str) else list(used))
    cells = counts.rename(columns={"n": "size", "refusals": "sum"})
    if used:
        return _clustered_from_cells(cells, counts, by, used, method, conf)
    if by:
        out = cells.groupby(by, observed=True, sort=True)[["size", "sum"]].sum().reset_index()
    else:
        out = pd.DataFrame({"size": [int(cells["size"].sum())], "sum": [int(cells["sum"].sum())]})
    return _rates_table(out, method, conf)


def _rates_table(out: pd.DataFrame, method: str, conf: float) -> pd.DataFrame:
    """Group counts (``size``, ``sum``) -> n, refusals, rate and the interval."""
    out = out.rename(columns={"size": "n", "sum": "refusals"})
    out["n"] = out["n"].astype("int64")
    out["refusals"] = out["refusals"].astype("int64")
    out["rate"] = out["refusals"] / out["n"]
    out["ci_low"], out["ci_high"] = proportion_ci(out["refusals"], out["n"], method, conf)
    out.attrs["method"] = method
    out.attrs["conf"] = conf
    return out


def _auto_off(cluster, by: list[str]):
    """``cluster="auto"`` is off when ``item_id`` groups the rows (each group one item)."""
    from ._validation import AUTO_CLUSTER_COLUMN

    if isinstance(cluster, str) and cluster == "auto" and AUTO_CLUSTER_COLUMN in by:
        return None
    return cluster


def _df_factor(n, n_clusters, conf: float):
    """Korn & Graubard's degrees-of-freedom factor (t_{n-1} / t_{C-1})^2 for n_eff.

    Multiplying the effective sample size by it makes the interval's quantile a t on
    C - 1 degrees of freedom (C clusters) instead of (nearly) a normal one; it is R's
    ``survey::svyciprop(method = "beta")`` ratio ``(qt(alpha/2, n - 1) / qt(alpha/2,
    degf))^2``. For a Wilson interval this is exactly the score interval with the t
    quantile, since Wilson's limits depend on the quantile q and n only through q^2/n.
    """
    q = 1 - (1 - conf) / 2
    n = np.asarray(n, dtype=float)
    c = np.asarray(n_clusters, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        big = stats.t.ppf(q, np.maximum(n - 1, 1))
        return (big / stats.t.ppf(q, np.maximum(c - 1, 1))) ** 2


def _clustered_rates(
    data: pd.DataFrame, by: list[str], clusters: list[str], method: str, conf: float
) -> pd.DataFrame:
    keys = by or ["_all"]
    d = data.assign(_all=0) if not by else data
    cl = d.groupby([*keys, *clusters], observed=True, sort=True)["refusal"].agg(["size", "sum"])
    return _clustered_from_cells(cl.reset_index(), data, by, clusters, method, conf)


def _clustered_from_cells(cl: pd.DataFrame, data: pd.DataFrame, by: list[str],
                          clusters: list[str], method: str, conf: float) -> pd.DataFrame:
    """Clustered rates from per-(group, cluster) counts ``size``/``sum`` (rows or a collapse)."""
    keys = by or ["_all"]
    if not by:
        cl = cl.assign(_all=0)
    grp = cl.groupby(keys, observed=True, sort=True)
    out = pd.DataFrame(
        {"n": grp["size"].sum(), "refusals": grp["sum"].sum(), "n_clusters": grp["size"].size()}
    )
    rate = out["refusals"] / out["n"]
    cl_rate = cl[keys].merge(rate.rename("_p").reset_index(), on=keys, how="left")["_p"]
    resid2 = (cl["sum"] - cl_rate.to_numpy() * cl["size"]) ** 2
    ss = resid2.groupby([cl[k] for k in keys], observed=True, sort=True).sum()
    c = out["n_clusters"].to_numpy(dtype=float)
    n = out["n"].to_numpy(dtype=float)
    p = rate.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(c > 1, c / (c - 1) * ss.to_numpy() / n**2, np.nan)
        deff = np.where((p > 0) & (p < 1), var / (p * (1 - p) / n), 1.0)
    deff = np.where(np.isnan(deff), np.nan, np.maximum(deff, 1.0))
    n_eff = n / deff
    lo = np.full(len(out), np.nan)
    hi = np.full(len(out), np.nan)
    ok = np.isfinite(n_eff)
    if ok.any():
        n_ci = n_eff[ok] * _df_factor(n[ok], c[ok], conf)
        lo[ok], hi[ok] = proportion_ci(p[ok] * n_ci, n_ci, method, conf)
    if (~ok).any():
        warnings.warn(
            f"{int((~ok).sum())} group(s) have a single {'+'.join(clusters)} cluster: no "
            "cluster-robust "
            "interval (NaN) can be estimated there",
            RuntimeWarning,
            stacklevel=3,
        )
    res = out.reset_index()
    if not by:
        res = res.drop(columns="_all")
    res["n"] = res["n"].astype("int64")
    res["refusals"] = res["refusals"].astype("int64")
    res["rate"] = p
    res["ci_low"], res["ci_high"] = lo, hi
    res["n_clusters"] = res.pop("n_clusters").astype("int64")
    res["design_effect"] = deff
    res["n_eff"] = n_eff
    res.attrs.update(method=method, conf=conf, cluster=clusters)
    return _restore_dtypes(res, data, by)


def _newcombe(k1, n1, k2, n2, conf):
    """Newcombe's hybrid score interval (method 10) for p1 - p2."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = proportion_ci(k1, n1, "wilson", conf)
    l2, u2 = proportion_ci(k2, n2, "wilson", conf)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def _clustered_newcombe(data, by, arm, clusters, conf):
    """Zou & Donner's MOVER from the two clustered Wilson intervals (see persona_effect)."""
    keys = by or ["_all"]
    d = data.assign(_all=0, _arm=arm)
    cl = d.groupby([*keys, *clusters, "_arm"], observed=True, sort=True)["refusal"].agg(
        ["size", "sum"]
    )
    cl = cl.unstack("_arm", fill_value=0).reset_index()
    f = pd.DataFrame({k: cl[k] for k in keys})
    for a in (0, 1):
        f[f"m{a}"] = cl[("size", a)].to_numpy(dtype=float) if ("size", a) in cl else 0.0
        f[f"y{a}"] = cl[("sum", a)].to_numpy(dtype=float) if ("sum", a) in cl else 0.0
    g = f.groupby(keys, observed=True, sort=True)
    for a in (0, 1):
        p_a = g[f"y{a}"].transform("sum") / g[f"m{a}"].transform("sum")
        f[f"e{a}"] = f[f"y{a}"] - p_a * f[f"m{a}"]
        f[f"c{a}"] = (f[f"m{a}"] > 0).astype(float)
    f["e00"], f["e11"], f["e01"] = f.e0**2, f.e1**2, f.e0 * f.e1
    agg = g[["m0", "y0", "m1", "y1", "e00", "e11", "e01", "c0", "c1"]].sum()
    n_cl = g.size().to_numpy(dtype=float)
    p, var, deff, lims = [], [], [], []
    for a in (0, 1):
        n = agg[f"m{a}"].to_numpy()
        pa = agg[f"y{a}"].to_numpy() / n
        c = agg[f"c{a}"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(c > 1, c / (c - 1) * agg[f"e{a}{a}"].to_numpy() / n**2, np.nan)
            de = np.where((pa > 0) & (pa < 1), v / (pa * (1 - pa) / n), 1.0)
        de = np.where(np.isnan(de), np.nan, np.maximum(de, 1.0))
        n_ci = n / de * _df_factor(n, c, conf)
        lo = np.full(len(n), np.nan)
        hi = np.full(len(n), np.nan)
        ok = np.isfinite(n_ci)
        if ok.any():
            lo[ok], hi[ok] = proportion_ci(pa[ok] * n_ci[ok], n_ci[ok], "wilson", conf)
        p.append(pa)
        var.append(v)
        deff.append(de)
        lims.append((lo, hi))
    if not np.all(np.isfinite(deff[0]) & np.isfinite(deff[1])):
        warnings.warn(
            f"{int((~(np.isfinite(deff[0]) & np.isfinite(deff[1]))).sum())} group(s) have a "
            f"setting whose rows come from a single {'+'.join(clusters)} cluster: no "
            "cluster-robust interval (NaN) can be estimated there",
            RuntimeWarning,
            stacklevel=3,
        )
    n0, n1 = agg["m0"].to_numpy(), agg["m1"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.where(n_cl > 1, n_cl / (n_cl - 1) * agg["e01"].to_numpy() / (n0 * n1), np.nan)
        r = np.where((var[0] > 0) & (var[1] > 0), cov / np.sqrt(var[0] * var[1]), 0.0)
    r = np.clip(np.nan_to_num(r, nan=0.0), -1.0, 1.0)
    (l1, u1), (l2, u2) = lims
    p1, p2 = p
    diff = p1 - p2
    a, b = p1 - l1, u2 - p2
    lo = diff - np.sqrt(np.maximum(a**2 + b**2 - 2 * r * a * b, 0.0))
    a, b = u1 - p1, p2 - l2
    hi = diff + np.sqrt(np.maximum(a**2 + b**2 - 2 * r * a * b, 0.0))
    return diff, lo, hi, {"n_clusters": n_cl, "deff": deff, "r": r}


def _slug(level: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(level)).strip("_").lower()


def persona_effect(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    setting: str = "setting",
    levels: tuple[str, str] = ("persona", "persona-free"),
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    refusal: str = "refusal",
) -> pd.DataFrame:
    """Persona minus persona-free refusal rate, with Newcombe's interval.

    The difference of two binomial proportions gets Newcombe's (1998) hybrid score
    interval (his method 10, built from the two Wilson intervals), which keeps its
    coverage near rates of 0 where the Wald interval collapses.

    Parameters
    ----------
    data : DataFrame
        The tidy response table with both settings.
    by : str or list of str, optional
        Grouping columns, e.g. ``["model", "task"]``.
    setting : str
        Column telling the two settings apart. If it is absent and the table has a
        ``persona`` column, rows whose persona is ``"none"`` are persona-free and the
        rest persona rows (the design's convention).
    levels : (str, str)
        The persona and the persona-free level of ``setting``.
    conf : float
        Confidence level.
    cluster : "auto", str, list of str or None
        Column(s) identifying groups of correlated rows, as in :func:`refusal_rates`
        (default ``"auto"``: ``item_id`` when the table has it and items repeat;
        ``None``: independent rows, Newcombe's original interval).
    refusal : str
        The 0/1 outcome column.

    Returns
    -------
    DataFrame
        ``by`` columns, then ``n``, ``refusals`` and ``rate`` for each setting
        (suffixed ``_persona`` and ``_persona_free``), ``difference`` (persona minus
        persona-free), ``ci_low``, ``ci_high``; with clusters also ``n_clusters``,
        ``design_effect_persona``, ``design_effect_persona_free`` and
        ``correlation`` (of the two estimated rates).

    Notes
    -----
    Newcombe's interval assumes two independent samples. In P1's design the
    persona-free prompts reuse the persona prompts' items, and each item appears
    several times. With ``cluster`` the interval is the MOVER of Zou & Donner (2008,
    *Statistics in Medicine* 27:1693-1702) for correlated estimates, the general
    form of Newcombe's method 10: each rate gets the clustered Wilson interval of
    :func:`refusal_rates` (Korn & Graubard's effective sample size, t quantile on
    C - 1 degrees of freedom), and the limits combine as

        L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2 - 2 r (p1 - l1)(u2 - p2)),
        U = d + sqrt((u1 - p1)^2 + (p2 - l2)^2 - 2 r (u1 - p1)(p2 - l2)),

    with r the cluster-robust correlation of the two rates, C / (C - 1) sum_c
    e1_c e2_c / (n1 n2) over sqrt(Var(p1) Var(p2)) (e_c the cluster's residual
    refusals y_c - p m_c; C clusters in the group). Items answered in both settings
    make r positive and the interval narrower than for independent samples; with
    r = 0 and singleton clusters it is Newcombe's. Regression adjustment for other
    factors: ``rs.logit("refusal ~ setting + ...", df, cluster="item_id")``.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"setting": ["persona"] * 4 + ["persona-free"] * 4,
    ...                    "refusal": [1, 1, 0, 0, 1, 0, 0, 0]})
    >>> rs.persona_effect(df)["difference"].item()
    0.25
    """
    df = data
    by = _columns(by, "by")
    conf = check_conf(conf)
    if not (isinstance(levels, (tuple, list)) and len(levels) == 2 and levels[0] != levels[1]):
        raise ValueError(f"levels must be two different setting levels, got {levels!r}")
    if setting in by:
        raise ValueError(f"{setting!r} is the setting column; it cannot also be in by=")
    clusters = _columns(
        resolve_cluster(df, _auto_off(cluster, by), where="persona_effect"), "cluster"
    )
    if set(clusters) & ({setting} | set(by)):
        raise ValueError(
            f"cluster column(s) {sorted(set(clusters) & ({setting} | set(by)))} are also the "
            "setting column or in by="
        )
    derived = False
    if isinstance(df, pd.DataFrame) and setting not in df.columns and "persona" in df.columns:
        from .design import NO_PERSONA

        df = df.assign(
            **{setting: np.where(df["persona"].astype(object) == NO_PERSONA, levels[1], levels[0])}
        )
        derived = True
    data = _prepare(df, [*by, setting, *clusters], refusal)
    values = data[setting].astype(object)
    unknown = sorted(set(pd.unique(values)) - set(levels), key=str)
    if unknown:
        raise ValueError(
            f"column {setting!r} has level(s) {unknown} besides {list(levels)}; keep only the "
            f"two settings (e.g. df[df[{setting!r}].isin({list(levels)})]) or pass levels="
        )
    keys = by or ["_all"]
    counts = (
        data.assign(_s=pd.Categorical(values, categories=list(levels)), _all=0)
        .groupby([*keys, "_s"], observed=False, sort=True)["refusal"]
        .agg(["size", "sum"])
    )
    size = counts["size"].unstack("_s")
    total = counts["sum"].unstack("_s")
    if by:
        # only groups that occur at all (observed=False also builds empty combinations)
        seen = data.groupby(by, observed=True, sort=True).size().index
        size, total = size.loc[seen], total.loc[seen]
    lacking = size[(size == 0).any(axis=1)]
    if len(lacking):
        examples = []
        for key, row in lacking.head(5).iterrows():
            miss = [lev for lev in levels if row[lev] == 0]
            where = ", ".join(
                f"{c}={v!r}" for c, v in zip(by, key if isinstance(key, tuple) else (key,))
            )
            examples.append(f"{where or 'the table'} has no {miss[0]!r} rows")
        hint = " (the setting was derived from persona == 'none')" if derived else ""
        raise ValueError(
            f"persona_effect needs both settings {list(levels)} in column {setting!r}{hint} for "
            f"every group; {len(lacking)} group(s) lack one: " + "; ".join(examples) + ". "
            "Add the missing setting (rs.sample_design(..., setting='both') designs persona "
            "and persona-free prompts over the same items) or drop those groups from by="
        )
    n1, n2 = size[levels[0]].to_numpy(), size[levels[1]].to_numpy()
    k1, k2 = total[levels[0]].to_numpy(), total[levels[1]].to_numpy()
    if clusters:
        arm = (values == levels[1]).to_numpy().astype(np.int8)
        d, lo, hi, extra = _clustered_newcombe(data, by, arm, clusters, conf)
        if len(d) != len(n1):  # pragma: no cover - both group the same rows
            raise RuntimeError("persona_effect: clustered groups do not line up")
    else:
        d, lo, hi = _newcombe(k1, n1, k2, n2, conf)
        extra = {}
    s1, s2 = _slug(levels[0]), _slug(levels[1])
    out = pd.DataFrame(
        {
            f"n_{s1}": n1.astype("int64"),
            f"refusals_{s1}": k1.astype("int64"),
            f"rate_{s1}": k1 / n1,
            f"n_{s2}": n2.astype("int64"),
            f"refusals_{s2}": k2.astype("int64"),
            f"rate_{s2}": k2 / n2,
            "difference": d,
            "ci_low": lo,
            "ci_high": hi,
        }
    )
    if extra:
        out["n_clusters"] = extra["n_clusters"].astype("int64")
        out[f"design_effect_{s1}"] = extra["deff"][0]
        out[f"design_effect_{s2}"] = extra["deff"][1]
        out["correlation"] = extra["r"]
    if by:
        keys = size.index.to_frame(index=False)
        out = pd.concat([keys.reset_index(drop=True), out], axis=1)
    out.attrs["conf"] = conf
    out.attrs["method"] = "mover-clustered" if clusters else "newcombe"
    if clusters:
        out.attrs["cluster"] = clusters
    return out


# --------------------------------------------------------------------------------------
# Cochran's Q
# --------------------------------------------------------------------------------------


def cochran_q(
    data: pd.DataFrame,
    condition: str = "persona",
    block: str | Sequence[str] = "item_id",
    by: str | Sequence[str] | None = None,
    *,
    method: str = "auto",
    n_perm: int = 9999,
    seed: int | np.random.Generator | None = 0,
    adjust: str | None = None,
    refusal: str = "refusal",
) -> pd.DataFrame:
    """Cochran's Q test: do refusal rates differ across conditions, items as blocks?

    de Araujo & Roth's test that refusals differ across personas: every item
    (block) is answered under every persona (condition) once, and Q compares the
    persona totals against the within-item variation (Cochran 1950). Q is
    asymptotically chi-squared with k - 1 degrees of freedom for k conditions.

    Parameters
    ----------
    data : DataFrame
        The tidy response table.
    condition : str
        The within-block factor (default ``"persona"``).
    block : str or list of str
        The block identifier (default ``"item_id"``); a list combines columns, e.g.
        ``["item_id", "prompt"]`` when each item is shown with several templates.
    by : str or list of str, optional
        Separate tests per group, e.g. ``["model", "task"]``.
    method : {"auto", "chi2", "exact", "permutation"}
        How the p-value is computed. Only blocks whose answers differ across
        conditions (neither all refusals nor none) carry information; Q does not
        change when the others are dropped. ``"chi2"``: the asymptotic chi-squared
        distribution with k - 1 degrees of freedom, which needs many informative
        blocks (a warning says so below 20). ``"exact"``: the exact conditional
        (permutation) distribution: given each block's number of refusals, the
        refusals fall uniformly on the block's conditions, independently across
        blocks; p = P(Q >= Q_obs), enumerated by convolving the blocks' placements
        over the (sorted, by symmetry) vector of condition totals, on which Q depends
        only through the sum of its squares. Exact enumeration is feasible for small
        problems; beyond 5 x 10^6 placements it raises. ``"permutation"``: the same
        null distribution by Monte Carlo, ``n_perm`` draws, p = (1 + #{Q* >= Q_obs}) /
        (1 + n_perm). ``"auto"`` (default): chi2 when at least 20 blocks are
        informative; with fewer, exact when the enumeration is small, else
        permutation. With k = 2 conditions the exact test is McNemar's exact test
        (the binomial test on the discordant pairs).
    n_perm : int
        Monte Carlo draws for ``method="permutation"``.
    seed : int, None or numpy.random.Generator
        Seed of the permutation draws (default 0: reproducible; None: fresh entropy).
    adjust : {"holm", "bh"}, optional
        Adjust the p-values for the number of groups tested (Holm's step-down, or
        Benjamini–Hochberg's false discovery rate); adds ``p_adjusted``.
    refusal : str
        The 0/1 outcome column.

    Returns
    -------
    DataFrame
        ``by`` columns, then ``n_blocks``, ``n_informative`` (blocks that are not
        constant), ``n_conditions``, ``Q``, ``dof``, ``p_value``, ``method`` (the
        one used) (and ``p_adjusted``). Q is NaN when no block varies (all refusals
        or none); such groups are left out of the adjustment.

    Raises
    ------
    ValueError
        When blocks are incomplete (some block lacks a condition, or has one twice).
        P1's Monte Carlo design shows each item to only a few personas; there the
        persona effect is tested with the likelihood-ratio test of the persona term
        of a logistic regression: ``rs.logit("refusal ~ model + task + prompt +
        persona", df).anova()`` (the last row tests persona given the other terms).

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"item_id": [1, 1, 2, 2, 3, 3, 4, 4],
    ...                    "persona": ["a", "b"] * 4,
    ...                    "refusal": [1, 0, 1, 0, 1, 1, 0, 0]})
    >>> rs.cochran_q(df)[["Q", "dof", "p_value", "method"]].values.tolist()
    [[2.0, 1, 0.5, 'exact']]
    """
    df = data
    if not isinstance(condition, str):
        raise TypeError("condition must be one column name")
    if adjust not in (None, "holm", "bh"):
        raise ValueError(f"adjust must be 'holm', 'bh' or None, got {adjust!r}")
    if method not in Q_METHODS:
        raise ValueError(f"method must be one of {list(Q_METHODS)}, got {method!r}")
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}")
    rng = check_random_state(seed)
    blocks = _columns(block, "block")
    by = _columns(by, "by")
    if not blocks:
        raise ValueError("block must name at least one column")
    overlap = set(blocks) & ({condition} | set(by)) or ({condition} & set(by))
    if overlap:
        raise ValueError(
            f"condition, block and by must be different columns; {sorted(overlap)} repeat"
        )
    data = _prepare(df, [*by, condition, *blocks], refusal)
    rows, few = [], []
    for key, sub in _groups(data, by):
        x = _cochran_matrix(sub, condition, blocks, by, key, df)
        row = _cochran_test(x, method, n_perm, rng)
        if row[-1] == "chi2" and row[1] < FEW_BLOCKS and np.isfinite(row[3]):
            few.append((key, row[1]))
        rows.append((*key, *row))
    if few:
        key, n_inf = few[0]
        where = ", ".join(f"{c}={_plain(v)!r}" for c, v in zip(by, key)) or "the table"
        warnings.warn(
            f"cochran_q: in {len(few)} test(s) fewer than {FEW_BLOCKS} blocks carry information "
            f"(not all refusals or none; e.g. {n_inf} in {where}): the chi-squared p-value is "
            "unreliable there; use method='exact' or method='permutation' (or 'auto')",
            RuntimeWarning,
            stacklevel=2,
        )
    out = pd.DataFrame(
        rows,
        columns=[*by, "n_blocks", "n_informative", "n_conditions", "Q", "dof", "p_value", "method"],
    )
    for c in ("n_blocks", "n_informative", "n_conditions"):
        out[c] = out[c].astype("int64")
    if adjust is not None:
        out["p_adjusted"] = adjust_pvalues(out["p_value"], adjust)
    return _restore_dtypes(out, data, by)


Q_METHODS = ("auto", "chi2", "exact", "permutation")
#: Below this many informative blocks the chi-squared approximation is not trusted.
FEW_BLOCKS = 20
#: Largest enumeration (states x placements, summed over blocks) method="exact" runs.
EXACT_BUDGET = 5_000_000
#: The enumeration "auto" tries before switching to permutations.
AUTO_EXACT_BUDGET = 500_000


def _cochran_test(x: np.ndarray, method: str, n_perm: int, rng) -> tuple:
    """Cochran's Q of a complete (blocks x conditions) 0/1 matrix, with its p-value."""
    b, k = x.shape
    row = x.sum(axis=1)
    informative = (row > 0) & (row < k)
    n_inf = int(informative.sum())
    col = x.sum(axis=0).astype(float)
    total = float(row.sum())
    denom = k * total - float(np.sum(row.astype(float) ** 2))
    used = "chi2" if method == "auto" and n_inf >= FEW_BLOCKS else method
    if denom == 0:
        return b, n_inf, k, np.nan, k - 1, np.nan, "none" if used == "auto" else used
    q = (k - 1) * (k * np.sum(col**2) - total**2) / denom
    if used == "chi2":
        return b, n_inf, k, q, k - 1, float(stats.chi2.sf(q, k - 1)), "chi2"
    r = row[informative]
    # Q depends on the placement only through sum_j C_j^2 (C_j the condition totals of
    # the informative blocks; constant blocks add the same to every C_j and cancel)
    c_inf = x[informative].sum(axis=0)
    s_obs = int(np.sum(c_inf.astype(np.int64) ** 2))
    p = None
    if used in ("exact", "auto"):
        budget = EXACT_BUDGET if used == "exact" else AUTO_EXACT_BUDGET
        p = _cochran_exact(r, k, s_obs, budget)
        if p is None and used == "exact":
            raise ValueError(
                f"cochran_q: the exact distribution of this table ({n_inf} informative blocks, "
                f"{k} conditions) is too large to enumerate; use method='permutation'"
            )
        used = "exact" if p is not None else "permutation"
    if p is None:
        p = _cochran_permutation(r, k, s_obs, n_perm, rng)
    return b, n_inf, k, q, k - 1, p, used


def _cochran_exact(r: np.ndarray, k: int, s_obs: int, budget: int) -> float | None:
    """P(sum_j C_j^2 >= s_obs) when each block puts its r_i refusals uniformly at random.

    The convolution runs over sorted condition-total vectors: every block's placement
    is exchangeable across conditions, so the distribution of the sorted totals after a
    block depends only on the sorted totals before it. Returns None past ``budget``.
    """
    from itertools import combinations
    from math import comb, factorial

    # about as many sorted total vectors as partitions of the total into k parts: when
    # even the last block's placements from those would pass the budget, do not start
    last = comb(k, int(np.median(r))) if len(r) else 1
    if comb(int(np.sum(r)) + k - 1, k - 1) / factorial(k) * last > budget:
        return None
    states = np.zeros((1, k), dtype=np.int64)
    probs = np.ones(1)
    base = len(r) + 1  # a condition total never exceeds the number of blocks
    exact_code = k * np.log2(base) < 62
    if exact_code:
        code = base ** np.arange(k, dtype=np.int64)
    else:  # random odd multipliers; integer overflow wraps, which a hash may do
        code = np.random.default_rng(0).integers(1, 2**62, k, dtype=np.int64) | 1
    placements: dict[int, np.ndarray] = {}
    work = 0
    for ri in np.sort(r)[::-1]:
        ri = int(ri)
        work += len(states) * comb(k, ri)
        if work > budget:
            return None
        if ri not in placements:
            idx = list(combinations(range(k), ri))
            m = np.zeros((len(idx), k), dtype=np.int64)
            for i, cmb in enumerate(idx):
                m[i, list(cmb)] = 1
            placements[ri] = m
        m = placements[ri]
        new = (states[:, None, :] + m[None, :, :]).reshape(-1, k)
        new.sort(axis=1)
        pr = np.repeat(probs / len(m), len(m))
        # one integer per sorted state (exact base-(b+1) digits, or a 64-bit hash whose
        # collisions are checked) makes the unique a fast 1-D one
        _, first, inv = np.unique(new @ code, return_index=True, return_inverse=True)
        inv = inv.ravel()
        states = new[first]
        if not exact_code and not np.array_equal(states[inv], new):
            states, inv = np.unique(new, axis=0, return_inverse=True)
        probs = np.bincount(inv.ravel(), weights=pr, minlength=len(states))
    stat = np.sum(states**2, axis=1)
    return float(min(1.0, probs[stat >= s_obs].sum() / probs.sum()))


def _cochran_permutation(r: np.ndarray, k: int, s_obs: int, n_perm: int, rng) -> float:
    """Monte Carlo p-value (1 + #{S* >= S_obs}) / (1 + n_perm) under the same null."""
    nb = len(r)
    chunk = max(1, min(n_perm, 2_000_000 // max(nb * k, 1)))
    hits, done = 0, 0
    while done < n_perm:
        m = min(chunk, n_perm - done)
        rank = rng.random((m, nb, k)).argsort(axis=2).argsort(axis=2)
        c = (rank < r[None, :, None]).sum(axis=1)
        hits += int(np.count_nonzero(np.sum(c.astype(np.int64) ** 2, axis=1) >= s_obs))
        done += m
    return (1 + hits) / (1 + n_perm)


def _cochran_matrix(sub, condition, blocks, by, key, original) -> np.ndarray:
    """The (blocks x conditions) 0/1 matrix of one group; a clear error if incomplete."""
    cond_codes, cond_levels = pd.factorize(sub[condition], sort=True)
    if len(blocks) == 1:
        block_codes, block_levels = pd.factorize(sub[blocks[0]], sort=True)
    else:
        mi = pd.MultiIndex.from_frame(sub[blocks])
        block_codes, block_levels = pd.factorize(mi, sort=True)
    k, b = len(cond_levels), len(block_levels)
    where = ", ".join(f"{c}={_plain(v)!r}" for c, v in zip(by, key))
    where = f" (in {where})" if where else ""
    if k < 2:
        raise ValueError(
            f"cochran_q needs at least two levels of {condition!r}{where}; found {list(cond_levels)}"
        )
    cell = block_codes.astype(np.int64) * k + cond_codes
    counts = np.bincount(cell, minlength=b * k).reshape(b, k)
    if (counts != 1).any():
        bad_blocks = np.flatnonzero((counts != 1).any(axis=1))
        i = bad_blocks[0]
        missing = [cond_levels[j] for j in np.flatnonzero(counts[i] == 0)]
        repeated = [cond_levels[j] for j in np.flatnonzero(counts[i] > 1)]
        bname = "+".join(blocks)
        detail = []
        if missing:
            detail.append(f"lacks {len(missing)} of {k} {condition} level(s), e.g. {missing[:3]}")
        if repeated:
            detail.append(
                f"has {repeated[:3]} more than once (if each item is shown with several "
                f"templates, add that column to block=, e.g. block=[{blocks[0]!r}, 'prompt'])"
            )
        hint = ""
        if "none" in map(str, cond_levels) and "setting" in original.columns:
            hint = (
                f" The {condition!r} level 'none' holds persona-free rows; test personas only "
                "with df[df['setting'] == 'persona']."
            )
        problem = " and ".join(detail)
        raise ValueError(
            f"cochran_q needs complete blocks{where}: every {bname} must appear exactly once "
            f"under each {condition}, but {len(bad_blocks)} of {b} blocks do not; "
            f"{bname}={_plain(block_levels[i])!r} {problem}.{hint} A Monte Carlo design (each "
            "item shown to a few personas, as P1's) has incomplete blocks: test the "
            f"{condition} term with the likelihood-ratio test of a logistic regression "
            f"instead, e.g. rs.logit('refusal ~ model + task + prompt + {condition}', "
            f"df).anova() (sequential: {condition} last is tested given the other terms; "
            ".drop1() tests every term that way)."
        )
    x = np.zeros((b, k), dtype=np.int64)
    x[block_codes, cond_codes] = sub["refusal"].to_numpy()
    return x


def _plain(value):
    """A NumPy scalar as the Python value it holds (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _restore_dtypes(out: pd.DataFrame, data: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    for c in cols:
        if c in out.columns and isinstance(data[c].dtype, pd.CategoricalDtype):
            out[c] = pd.Categorical(out[c], categories=data[c].cat.categories)
    return out


# --------------------------------------------------------------------------------------
# Disparity
# --------------------------------------------------------------------------------------


def _control_personas(df, control, category, persona) -> tuple[set, str]:
    """Resolve ``control`` to a set of persona levels and a description."""
    if isinstance(control, str):
        in_category = category in df.columns and (df[category].astype(object) == control).any()
        is_column = control in df.columns
        if in_category and is_column:
            raise ValueError(
                f"control={control!r} is both a level of {category!r} and a column; "
                "pass the control personas as a list instead"
            )
        if in_category:
            mask = (df[category].astype(object) == control).to_numpy()
            return set(
                pd.unique(df.loc[mask, persona].astype(object))
            ), f"{category} == {control!r}"
        if is_column:
            col = df[control]
            if col.isna().any() or not col.astype(object).isin([0, 1, True, False]).all():
                raise ValueError(
                    f"control column {control!r} must be True/False (or 0/1) for every row"
                )
            mask = col.astype(bool).to_numpy()
            ctrl = set(pd.unique(df.loc[mask, persona].astype(object)))
            other = set(pd.unique(df.loc[~mask, persona].astype(object)))
            both = sorted(ctrl & other, key=str)
            if both:
                raise ValueError(
                    f"control column {control!r} marks persona(s) {both[:5]} as control in "
                    "some rows and not in others; it must be constant within a persona"
                )
            return ctrl, f"{control} is True"
        control = [control]
    try:
        ctrl = list(control)
    except TypeError:
        raise TypeError(
            "control must be a list of control personas, a level of the category column, "
            "or the name of a True/False column"
        ) from None
    known = set(pd.unique(df[persona].astype(object)))
    missing = [c for c in ctrl if c not in known]
    if missing:
        raise ValueError(
            f"control persona(s) {missing[:5]} do not occur in column {persona!r} (nor as a level "
            f"of {category!r} or a column); known personas include {sorted(known, key=str)[:8]}"
        )
    return set(ctrl), "listed control personas"


DISPARITY_ESTIMATORS = ("corrected", "plug-in")

# the noise-corrected spread keeps at least this share of the observed sum of squares, so
# a spread that sampling noise explains entirely stays positive (and its ratio finite)
_CORRECTED_FLOOR = 0.05


def _cluster_rates_noise(s_mat, c_mat, w, sets):
    """Persona rates and each set's noise term under cluster weights ``w``.

    ``s_mat``/``c_mat`` (clusters x personas) hold refusals and rows per cluster; ``w``
    (replicates x clusters) weights the clusters (all ones: the data; multinomial counts:
    an item bootstrap replicate, each draw its own cluster). The rates' covariance is the
    cluster-robust (ratio-estimator) one of :func:`refusal_rates`,
    ``C/(C-1) sum_c w_c e_ci e_cj`` with ``e_ci = (y_ci - r_i m_ci) / n_i``; the noise of a
    set S of k personas is ``tr(H Sigma_S)`` (H the centring matrix), the expected excess
    of their sum of squared deviations over the true one.
    """
    nb, npers = s_mat.shape
    n = w @ c_mat
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (w @ s_mat) / n
    noise = np.full((len(w), len(sets)), np.nan)
    if nb < 2:
        return rate, noise
    f = nb / (nb - 1)
    chunk = max(1, 4_000_000 // (nb * npers))
    for a in range(0, len(w), chunk):
        rb, nbk, wb = np.nan_to_num(rate[a : a + chunk]), n[a : a + chunk], w[a : a + chunk]
        inv = np.where(nbk > 0, 1.0 / np.where(nbk > 0, nbk, 1.0), 0.0)
        e = (s_mat[None] - rb[:, None, :] * c_mat[None]) * inv[:, None, :]
        for j, members in enumerate(sets):
            es = e[:, :, members]
            k = np.maximum((nbk[:, members] > 0).sum(1), 1)
            q = (es**2).sum(-1) - es.sum(-1) ** 2 / k[:, None]
            noise[a : a + chunk, j] = f * np.einsum("bc,bc->b", wb, q)
    return rate, noise


def _binomial_noise(rate, n, sets):
    """Each set's noise term ``(1 - 1/k) sum v_i`` with independent rows, v = r(1-r)/(n-1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(n > 1, rate * (1 - rate) / np.maximum(n - 1, 1), 0.0)
    return np.stack([(1 - 1 / max(int(m.sum()), 1)) * v[..., m].sum(-1) for m in sets], axis=-1)


def _spread(rate, noise, ddof, corrected):
    """sd of ``rate`` (replicates x members, NaN for a persona without rows) per replicate.

    With ``corrected`` the sum of squares loses its noise term (method of moments),
    floored at ``_CORRECTED_FLOOR`` of itself: sqrt(max(SS - noise, floor SS) / (k - ddof)).
    """
    k = np.isfinite(rate).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without these personas
        dev = rate - np.nanmean(rate, axis=-1, keepdims=True)
        ss = np.nansum(dev**2, axis=-1)
        if corrected:
            ss = np.maximum(ss - noise, _CORRECTED_FLOOR * ss)
        return np.where(k > ddof, np.sqrt(ss / np.maximum(k - ddof, 1)), np.nan)


def disparity(
    data: pd.DataFrame,
    category: str = "persona_group",
    control: str | Sequence[str] = "control",
    *,
    persona: str = "persona",
    by: str | Sequence[str] | None = None,
    ddof: int = 1,
    n_boot: int = 0,
    cluster: str | Sequence[str] | None = "auto",
    conf: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    refusal: str = "refusal",
    block: str | Sequence[str] | None = None,
    estimator: str = "corrected",
) -> pd.DataFrame:
    """de Araujo & Roth's disparity: persona spread within a category over control spread.

    For each category (e.g. Gender, Race), the standard deviation of its personas'
    refusal rates is divided by the standard deviation of the control personas'
    rates (paraphrases of "a helpful assistant"). A ratio well above 1 means the
    personas of that category differ more than mere rewordings of a neutral persona.

    Estimated rates carry sampling noise, which inflates every sd, the small control
    sd most: the plain ratio of sds (``estimator="plug-in"``, the paper's number) is
    biased low, and its bootstrap interval covers the population ratio too rarely
    (0.91 at 95% with 200 items, 0.70-0.72 with 120 items; docs/methods_rates.md). The
    default ``estimator="corrected"`` subtracts each spread's expected noise
    (method of moments: the sum of squared deviations less the trace of the centred
    covariance matrix of the rates, cluster-robust as in :func:`refusal_rates`,
    floored at 5% of itself) before taking the ratio, and bootstraps that; its interval
    covers 0.95. The plug-in ratio stays in column ``disparity_plugin``.

    Parameters
    ----------
    data : DataFrame
        The tidy response table, control personas included.
    category : str
        Column that groups personas into categories; each persona must belong to one.
    control : str or list of str
        The control personas: a list of persona names, a level of ``category``
        (P2's dumps use ``"control"``), or the name of a True/False column marking
        control rows. Control personas are left out of every category's spread.
    persona : str
        The persona column.
    by : str or list of str, optional
        Separate ratios per group, e.g. ``["model", "task"]``.
    ddof : int
        Delta degrees of freedom of the standard deviations (1: sample sd).
    n_boot : int
        Bootstrap replicates for a percentile interval of each ratio (0: none), of the
        chosen ``estimator``.
        With clusters (e.g. ``"item_id"``) whole items are resampled, which keeps
        the correlation between personas answering the same item (P2's complete
        design); with ``cluster=None`` each persona's refusal count is redrawn from
        its binomial, which treats rows as independent.
    cluster : "auto", str, list of str or None
        Column(s) identifying items, the bootstrap's resampling unit. ``"auto"``
        (default): ``item_id`` when the table has it and items repeat (a
        :class:`~refusalstats.ClusterNote` says so); ``None``: independent rows. The
        bootstrap and the corrected estimator's noise use it; the plug-in ratio without
        ``n_boot`` does not.
    conf : float
        Confidence level of the bootstrap interval.
    seed : int, None or numpy.random.Generator
        Seed of the bootstrap (default 0: reproducible; None: fresh entropy).
    refusal : str
        The 0/1 outcome column.
    block : str or list of str, optional
        Deprecated name of ``cluster`` (removed in the next release).
    estimator : {"corrected", "plug-in"}
        ``"corrected"`` (default): the noise-corrected ratio
        ``sd_corrected / control_sd_corrected``, for the ratio of the personas' true
        (population) rates; ``"plug-in"``: the ratio of the sds of the observed rates,
        as in de Araujo & Roth (its interval under-covers, see above).

    Returns
    -------
    DataFrame
        ``by`` columns, ``category`` (its level), ``n_personas``, ``sd``,
        ``n_control``, ``control_sd`` (sds of the observed rates), with the corrected
        estimator ``sd_corrected``, ``control_sd_corrected`` and ``disparity_plugin``
        (= ``sd / control_sd``), then ``disparity`` (the chosen estimator) and
        ``ci_low``, ``ci_high`` with ``n_boot``. ``attrs["estimator"]`` names the
        estimator. A category with fewer than ``ddof + 1`` personas has NaN
        sd; a control sd of 0 gives an infinite (or NaN) ratio, with a warning.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({
    ...     "persona": ["a", "a", "b", "b", "c", "c", "d", "d"],
    ...     "persona_group": ["G", "G", "G", "G", "control", "control", "control", "control"],
    ...     "refusal": [1, 1, 0, 0, 1, 0, 1, 1]})
    >>> out = rs.disparity(df, control="control")
    >>> out[["persona_group", "disparity_plugin"]].values.tolist()
    [['G', 2.0]]
    >>> rs.disparity(df, control="control", estimator="plug-in")["disparity"].tolist()
    [2.0]
    """
    df = data
    by = _columns(by, "by")
    if block is not None:
        warnings.warn(
            "disparity(block=...) is deprecated: pass cluster=... (the same columns); "
            "block= goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        if not (isinstance(cluster, str) and cluster == "auto"):
            raise ValueError("pass cluster= or the deprecated block=, not both")
        cluster = block
    if not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if estimator not in DISPARITY_ESTIMATORS:
        raise ValueError(f"estimator must be one of {DISPARITY_ESTIMATORS}, got {estimator!r}")
    if n_boot or estimator == "corrected":
        blocks = _columns(resolve_cluster(df, _auto_off(cluster, by), where="disparity"), "cluster")
    else:  # the plug-in ratio does not depend on clustering; only check the names
        blocks = []
        if not (isinstance(cluster, str) and cluster == "auto"):
            resolve_cluster(df, cluster, where="disparity")
    conf = check_conf(conf)
    if category == persona:
        raise ValueError("category and persona must be different columns")
    extra = [control] if isinstance(control, str) and control in df.columns else []
    data = _prepare(df, [*by, category, persona, *extra, *blocks], refusal)
    ctrl, how = _control_personas(data, control, category, persona)
    # each persona belongs to one category
    pairs = data[[persona, category]].astype(object).drop_duplicates()
    multi = pairs[pairs.duplicated(persona, keep=False)]
    if len(multi):
        ex = multi.groupby(persona)[category].apply(list).head(3).to_dict()
        raise ValueError(
            f"every persona must belong to one {category!r}; found persona(s) in several: {ex}"
        )
    cat_of = dict(zip(pairs[persona], pairs[category]))
    cat_order = list(pd.unique(data[category].astype(object)))
    rng = check_random_state(seed)
    alpha = 1 - conf
    corrected = estimator == "corrected"
    rows, degenerate = [], []
    for key, sub in _groups(data, by):
        p_codes, p_levels = pd.factorize(sub[persona].astype(object), sort=False)
        n_p = np.bincount(p_codes, minlength=len(p_levels)).astype(float)
        k_p = np.bincount(p_codes, weights=sub["refusal"].to_numpy(), minlength=len(p_levels))
        rate = k_p / n_p
        is_ctrl = np.array([p in ctrl for p in p_levels])
        if is_ctrl.sum() <= ddof:
            where = ", ".join(f"{k}={_plain(v)!r}" for k, v in zip(by, key)) or "the table"
            raise ValueError(
                f"disparity needs at least {ddof + 1} control personas with rows in {where} "
                f"(control = {how}); found {int(is_ctrl.sum())}"
            )
        cats = np.array([cat_of[p] for p in p_levels], dtype=object)
        levels = [c for c in cat_order if c in set(cats[~is_ctrl])]
        sets = [is_ctrl] + [(cats == lev) & ~is_ctrl for lev in levels]
        boot = noise = boot_noise = None
        if blocks:
            b_codes, b_levels = pd.factorize(
                pd.MultiIndex.from_frame(sub[blocks]) if len(blocks) > 1 else sub[blocks[0]]
            )
            nb, npers = len(b_levels), len(p_levels)
            cell = b_codes.astype(np.int64) * npers + p_codes
            c_mat = np.bincount(cell, minlength=nb * npers).reshape(nb, npers).astype(float)
            s_mat = np.bincount(
                cell, weights=sub["refusal"].to_numpy(), minlength=nb * npers
            ).reshape(nb, npers)
            if corrected:
                noise = _cluster_rates_noise(s_mat, c_mat, np.ones((1, nb)), sets)[1][0]
            if n_boot:
                w = rng.multinomial(nb, np.full(nb, 1 / nb), size=n_boot).astype(float)
                if corrected:
                    boot, boot_noise = _cluster_rates_noise(s_mat, c_mat, w, sets)
                else:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boot = (w @ s_mat) / (w @ c_mat)
        else:
            if corrected:
                noise = _binomial_noise(rate, n_p, sets)
            if n_boot:
                boot = rng.binomial(n_p.astype(np.int64), rate, size=(n_boot, len(rate))) / n_p
                if corrected:
                    boot_noise = _binomial_noise(boot, n_p, sets)
        csd = float(np.std(rate[is_ctrl], ddof=ddof))
        if corrected:
            csd_c = float(_spread(rate[is_ctrl], noise[0], ddof, True))
        if boot is not None:
            boot_csd = _spread(
                boot[:, is_ctrl], None if boot_noise is None else boot_noise[:, 0], ddof, corrected
            )
        for j, lev in enumerate(levels, start=1):
            members = sets[j]
            r = rate[members]
            sd = float(np.std(r, ddof=ddof)) if len(r) > ddof else np.nan
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.float64(sd) / csd
            if csd == 0:
                degenerate.append(key)
            row = [*key, lev, len(r), sd, int(is_ctrl.sum()), csd]
            if corrected:
                sd_c = float(_spread(r, noise[j], ddof, True))
                with np.errstate(divide="ignore", invalid="ignore"):
                    row += [sd_c, csd_c, ratio, np.float64(sd_c) / csd_c]
            else:
                row += [ratio]
            if boot is not None:
                num = _spread(
                    boot[:, members], None if boot_noise is None else boot_noise[:, j], ddof,
                    corrected,
                )  # fmt: skip
                with np.errstate(divide="ignore", invalid="ignore"):
                    dist = num / boot_csd
                dist = dist[~np.isnan(dist)]
                if len(r) > ddof and len(dist):
                    with np.errstate(invalid="ignore"):  # inf ratios when controls agree
                        row += list(np.quantile(dist, [alpha / 2, 1 - alpha / 2]))
                else:
                    row += [np.nan, np.nan]
            rows.append(tuple(row))
    if degenerate:
        warnings.warn(
            f"the control personas' refusal rates do not vary in {len(set(degenerate))} group(s) "
            f"(e.g. {degenerate[0] or 'the table'}); their disparity is infinite or undefined",
            RuntimeWarning,
            stacklevel=2,
        )
    columns = [*by, category, "n_personas", "sd", "n_control", "control_sd"]
    if corrected:
        columns += ["sd_corrected", "control_sd_corrected", "disparity_plugin"]
    columns += ["disparity"]
    if n_boot:
        columns += ["ci_low", "ci_high"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["control"] = sorted(ctrl, key=str)
    out.attrs["estimator"] = estimator
    if blocks:
        out.attrs["cluster"] = blocks
    if n_boot:
        out.attrs.update(n_boot=n_boot, conf=conf, bootstrap="clusters" if blocks else "binomial")
    return _restore_dtypes(out, data, by)


# --------------------------------------------------------------------------------------
# Rank agreement
# --------------------------------------------------------------------------------------


@dataclass
class RankAgreement:
    """Agreement between raters' rankings of items by refusal rate.

    Attributes
    ----------
    pairs : DataFrame
        One row per pair of raters: Kendall's tau-b between their item rates, its
        two-sided p-value and the number of items.
    concordance : DataFrame
        One row per group: Kendall's W (tie-corrected) across all raters, the
        Friedman chi-square it implies, its degrees of freedom and p-value, and the
        mean pairwise tau.
    rates : DataFrame
        The item x rater refusal rates the rankings come from.
    """

    pairs: pd.DataFrame
    concordance: pd.DataFrame
    rates: pd.DataFrame = field(repr=False)

    def __repr__(self) -> str:
        c = self.concordance
        w = ", ".join(f"{v:.3f}" for v in c["W"].head(4)) + (", ..." if len(c) > 4 else "")
        return (f"<RankAgreement: Kendall's W {w} ({len(c)} group(s))\n"
                f"  {len(self.pairs)} pair(s) of raters, mean tau-b "
                f"{float(self.pairs['tau'].mean()):.3f}; .to_frame(), .pairs, .summary()>")

    def _text(self) -> str:
        with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
            return (
                "Kendall's W across raters\n"
                + self.concordance.to_string(index=False)
                + "\n\nKendall's tau-b between pairs of raters\n"
                + self.pairs.to_string(index=False)
            )

    def to_frame(self) -> pd.DataFrame:
        """The tidy table: Kendall's W per group (a copy of :attr:`concordance`).

        Returns
        -------
        DataFrame
            One row per group: ``W``, the Friedman ``chi2``, its ``dof``, ``p_value``
            (and ``p_adjusted``), the mean pairwise tau. The pairwise taus are :attr:`pairs`.
        """
        return self.concordance.copy()

    def summary(self) -> Summary:
        """Kendall's W and the pairwise taus as text and, in notebooks, an HTML table.

        Returns
        -------
        Summary
            A string that prints as text and renders as HTML (``_repr_html_``).
        """
        return Summary("Rank agreement between raters (Kendall's W)", self._text(), self.concordance,
                       notes=[f"{len(self.pairs)} pair(s) of raters: see .pairs for Kendall's tau-b"])


def _kendall_w(x: np.ndarray) -> tuple[float, float, int, float]:
    """Kendall's W for an (m raters x n items) matrix, tie-corrected."""
    m, n = x.shape
    ranks = np.apply_along_axis(stats.rankdata, 1, x)
    r = ranks.sum(axis=0)
    s = float(np.sum((r - r.mean()) ** 2))
    ties = 0.0
    for row in x:
        _, t = np.unique(row, return_counts=True)
        ties += float(np.sum(t**3 - t))
    denom = m**2 * (n**3 - n) - m * ties
    w = 12 * s / denom if denom > 0 else np.nan
    chi2 = m * (n - 1) * w
    return w, chi2, n - 1, float(stats.chi2.sf(chi2, n - 1)) if np.isfinite(chi2) else np.nan


def rank_agreement(
    data: pd.DataFrame,
    item: str = "persona",
    rater: str = "model",
    *,
    by: str | Sequence[str] | None = None,
    adjust: str | None = None,
    refusal: str = "refusal",
) -> RankAgreement:
    """Do models rank personas alike? Kendall's tau between pairs and Kendall's W.

    Each rater's (model's) refusal rate per item (persona) ranks the items; Kendall's
    tau-b compares two raters' rankings (ties handled, two-sided p-value from
    :func:`scipy.stats.kendalltau`), and Kendall's coefficient of concordance W
    (tie-corrected) summarizes all raters at once, with the Friedman chi-square
    test m (n - 1) W ~ chi2(n - 1). de Araujo & Roth report tau between models'
    persona rankings.

    Parameters
    ----------
    data : DataFrame
        The tidy response table.
    item : str
        What is ranked (default ``"persona"``).
    rater : str
        Who ranks (default ``"model"``).
    by : str or list of str, optional
        Separate analyses per group (e.g. ``"task"``).
    adjust : {"holm", "bh"}, optional
        Adjust the pairwise p-values for the number of pairs (all groups together);
        adds ``p_adjusted`` to ``.pairs``.
    refusal : str
        The 0/1 outcome column.

    Returns
    -------
    RankAgreement
        ``.pairs`` (rater_1, rater_2, n_items, tau, p_value), ``.concordance``
        (n_raters, n_items, W, chi2, dof, p_value, mean_tau) and ``.rates``. A rater
        whose rates do not vary has an undefined tau (NaN) with every other rater.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"model": ["m1"] * 3 + ["m2"] * 3, "persona": ["a", "b", "c"] * 2,
    ...                    "refusal": [0, 1, 1, 0, 0, 1]})
    >>> ra = rs.rank_agreement(df)
    >>> round(ra.pairs["tau"].item(), 3)
    0.5
    """
    df = data
    by = _columns(by, "by")
    if adjust not in (None, "holm", "bh"):
        raise ValueError(f"adjust must be 'holm', 'bh' or None, got {adjust!r}")
    if item == rater:
        raise ValueError("item and rater must be different columns")
    data = _prepare(df, [*by, rater, item], refusal)
    pair_rows, conc_rows, rate_frames = [], [], []
    for key, sub in _groups(data, by):
        where = ", ".join(f"{c}={v!r}" for c, v in zip(by, key))
        where = f" in {where}" if where else ""
        mat = sub.groupby([rater, item], observed=True, sort=True)["refusal"].mean().unstack(item)
        if mat.shape[0] < 2:
            raise ValueError(
                f"rank_agreement needs at least two {rater}s{where}; found {list(mat.index)}"
            )
        if mat.shape[1] < 2:
            raise ValueError(f"rank_agreement needs at least two {item}s{where} to rank")
        if mat.isna().any().any():
            gaps = mat.isna().stack()
            gaps = gaps[gaps].index.tolist()
            raise ValueError(
                f"every {rater} must have rows for every {item}{where}; {len(gaps)} combination(s) "
                f"have none, e.g. {gaps[:3]}. Drop those {item}s or {rater}s first"
            )
        x = mat.to_numpy(dtype=float)
        taus = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: tau is NaN
            for i in range(len(mat.index)):
                for j in range(i + 1, len(mat.index)):
                    res = stats.kendalltau(x[i], x[j])
                    tau, p = float(res.statistic), float(res.pvalue)
                    taus.append(tau)
                    pair_rows.append((*key, mat.index[i], mat.index[j], x.shape[1], tau, p))
        w, chi2, dof, p = _kendall_w(x)
        mean_tau = float(np.nanmean(taus)) if np.isfinite(taus).any() else np.nan
        conc_rows.append((*key, x.shape[0], x.shape[1], w, chi2, dof, p, mean_tau))
        long = mat.stack().rename("rate").reset_index()
        for c, v in zip(by, key):
            long[c] = v
        rate_frames.append(long[[*by, rater, item, "rate"]])
    pairs = pd.DataFrame(
        pair_rows, columns=[*by, f"{rater}_1", f"{rater}_2", "n_items", "tau", "p_value"]
    )
    conc = pd.DataFrame(
        conc_rows,
        columns=[*by, f"n_{rater}s", f"n_{item}s", "W", "chi2", "dof", "p_value", "mean_tau"],
    )
    if adjust is not None:
        pairs["p_adjusted"] = adjust_pvalues(pairs["p_value"], adjust)
    for c in (f"{rater}_1", f"{rater}_2"):
        if isinstance(data[rater].dtype, pd.CategoricalDtype):
            pairs[c] = pd.Categorical(pairs[c], categories=data[rater].cat.categories)
    return RankAgreement(
        pairs=_restore_dtypes(pairs, data, by),
        concordance=_restore_dtypes(conc, data, by),
        rates=pd.concat(rate_frames, ignore_index=True),
    )
