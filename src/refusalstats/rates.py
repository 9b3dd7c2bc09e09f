"""Refusal rates with confidence intervals, and persona minus persona-free differences.

Every function takes the tidy response table plus column names and returns a tidy
DataFrame (pingouin's shape). Rows of one item are correlated (each item is answered
many times), so intervals cluster by ``item_id`` by default (``cluster="auto"``,
resolved by :func:`refusalstats._validation.resolve_cluster`; ``cluster=None`` for
independent rows):

* :func:`refusal_rates` — the refusal rate of any grouping with Wilson,
  Clopper–Pearson or Jeffreys intervals (P1's Table 1 and figures);
* :func:`persona_effect` — persona minus persona-free rate with Newcombe's hybrid
  score interval (P1's Figure 1), or its clustered form (Zou & Donner's MOVER);
* :func:`proportion_ci` — the binomial intervals themselves (from :mod:`refusalstats.intervals`).

Cochran's Q and Kendall's rank agreement live in :mod:`refusalstats.agreement`, the
disparity ratio in :mod:`refusalstats.persona_disparity`; both build on the table handling
here (:func:`_counts`). Every analysis takes a DataFrame or a path (a Parquet file, a
folder of shards, a glob or a list of them), which is streamed into counts by
:func:`refusalstats.collapse` — column projection, batch by batch, never the rows —
and gives the same result as the DataFrame.

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

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_conf, resolve_cluster
from ._validation import column_names as _columns  # agreement, persona_disparity use it from here
from .counts import N_COLUMN, REFUSALS_COLUMN
from .intervals import check_ci_method, proportion_ci
from .sources import ERROR_COLUMN
from .vocabulary import level_slug

__all__ = ["persona_effect", "proportion_ci", "refusal_rates"]

# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _prepare(data: pd.DataFrame, columns: Sequence[str], refusal: str) -> pd.DataFrame:
    """Validate the columns a function needs and return them (refusal as int8 'refusal').

    Uses :func:`refusalstats.table.validate`: every problem (missing column, refusal
    values outside 0/1, NaN in a grouping column, empty table) is reported at once.
    """
    from .table import SchemaError, validate

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame or a path, got {type(data).__name__}")
    if not isinstance(refusal, str):
        raise TypeError("refusal must be the name of the 0/1 refusal column")
    columns = list(dict.fromkeys(columns))
    if refusal in columns:
        raise ValueError(f"column {refusal!r} is the refusal outcome; it cannot also group rows")
    present = [c for c in [*columns, refusal] if c in data.columns]
    # error rows (refusal_source 'error', no refusal) are left out by validate, with its
    # warning, as collapse leaves them out of a streamed source
    flagged = ERROR_COLUMN in data.columns and ERROR_COLUMN not in present
    sub = data[[*present, ERROR_COLUMN]] if flagged else data[present]
    sub.attrs = {}  # run metadata (e.g. the simulator's truth) is not needed here
    if refusal != "refusal":
        if "refusal" in columns:
            raise ValueError(
                "a grouping column may not be called 'refusal' when refusal= is renamed"
            )
        sub = sub.rename(columns={refusal: "refusal"})
    try:
        out = validate(sub, required=[*columns, "refusal"], predictors=columns,
                       table_columns=list(data.columns))
    except SchemaError as exc:  # name the user's refusal column and the table's real columns
        real = f"the table has {list(map(str, data.columns))}"
        problems = [str(p).replace(f"the table has {list(sub.columns)}", real) for p in exc.problems]
        if refusal != "refusal":
            problems = [p.replace("'refusal'", repr(refusal)) for p in problems]
        raise type(exc)(problems) from None
    if flagged:
        n_err = out.attrs.get("n_error_rows")
        out = out.drop(columns=ERROR_COLUMN)
        if n_err:
            out.attrs["n_error_rows"] = n_err
    return out


def _groups(data: pd.DataFrame, by: list[str]):
    """Iterate over (key tuple, sub-frame) in the order of the grouping levels."""
    if not by:
        yield (), data
        return
    for key, sub in data.groupby(by, observed=True, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), sub


def _columns_of(data) -> list[str]:
    """The column names of any source (a DataFrame, a table file, a Parquet source)."""
    from .sources import scan_columns

    return scan_columns(data)


def _at_caller(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its warnings (e.g. the ClusterNote) re-issued at the line
    that called the public analysis, which called :func:`_counts`, which called this."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=4)
    return out


def _counts(
    data,
    keys: Sequence[str],
    refusal: str,
    cluster: str | Sequence[str] | None = None,
    *,
    where: str,
    role: str = "in by=",
) -> tuple[pd.DataFrame, list[str]]:
    """Binomial counts of ``refusal`` per observed combination of ``keys`` (+ cluster).

    The one entry of every analysis here: a DataFrame is validated (:func:`_prepare`:
    every problem at once) and grouped; a path (Parquet file, shard folder, glob or list)
    is streamed by :func:`refusalstats.collapse`, reading only these columns batch by
    batch. Both give the key columns then ``n`` (rows) and ``refusals``, int64 (the counts
    vocabulary of :mod:`refusalstats.counts`), in
    ``groupby(keys + cluster, sort=True, observed=True)`` order (categorical keys in their
    level order, keeping the levels that occur; other keys sorted), so an analysis
    computed from them is the same for the rows and for the files, down to the order of
    its arrays (and so the draws of a seeded bootstrap or permutation test).

    Parameters
    ----------
    data : DataFrame or path
        The response table or a Parquet source.
    keys : list of str
        Grouping columns.
    refusal : str
        The 0/1 outcome column.
    cluster : "auto", str, list of str or None
        Cluster columns kept as extra keys ("auto": ``item_id`` when it repeats).
    where : str
        The calling function, for messages.
    role : str
        How ``keys`` are described when a cluster column is also a key.

    Returns
    -------
    (DataFrame, list of str)
        The counts and the cluster columns used.
    """
    from .counts import _collapse
    from .sources import source_of

    keys = list(dict.fromkeys(keys))
    clash = [c for c in keys if c in (N_COLUMN, REFUSALS_COLUMN)]
    if clash:
        raise ValueError(f"{where}: column(s) {clash} in {role} clash with the count columns "
                         f"'{N_COLUMN}' and '{REFUSALS_COLUMN}'; rename them first "
                         "(df.rename(columns={...}))")
    src = source_of(data, where=where)

    def check(clusters):
        both = sorted(set(clusters) & set(keys))
        if both:
            raise ValueError(f"{where}: cluster column(s) {both} are also {role}")

    if src.streamed:
        if not (cluster is None or (isinstance(cluster, str) and cluster == "auto")):
            check(_columns(cluster, "cluster"))
        counts = _at_caller(_collapse, data, by=keys, cluster=cluster, refusal=refusal,
                            where=where)
        clusters = _columns(counts.attrs["collapse"]["cluster"], "cluster")
        check(clusters)
        counts.attrs = {}
        return counts, clusters
    data = src.frame
    clusters = _columns(_at_caller(resolve_cluster, data, cluster, where=where, refusal=refusal),
                        "cluster")
    check(clusters)
    rows = _prepare(data, [*keys, *clusters], refusal)
    if not keys and not clusters:
        counts = pd.DataFrame({N_COLUMN: [len(rows)], REFUSALS_COLUMN: [int(rows["refusal"].sum())]})
    else:
        counts = (rows.groupby([*keys, *clusters], observed=True, sort=True)["refusal"]
                  .agg(**{N_COLUMN: "size", REFUSALS_COLUMN: "sum"}).reset_index())
        for c in [*keys, *clusters]:  # the levels that occur, as collapse keeps them
            if isinstance(counts[c].dtype, pd.CategoricalDtype):
                counts[c] = counts[c].cat.remove_unused_categories()
    counts[N_COLUMN] = counts[N_COLUMN].astype("int64")
    counts[REFUSALS_COLUMN] = counts[REFUSALS_COLUMN].astype("int64")
    return counts, clusters



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
    labels: str | None = None,
    strata: str | Sequence[str] | None = None,
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
        Column identifying groups of correlated rows (e.g. ``"item_id"``: P1 shows
        each item ten times to each model). The default ``"auto"`` clusters by
        ``item_id`` when the table has that column and some item repeats (a
        :class:`~refusalstats.ClusterNote` always says what it did; an ``item_id`` in
        ``by`` turns it off, each group then being one item); ``None`` treats rows as
        independent trials. With clusters the interval is Korn & Graubard's (1998): the
        chosen binomial interval on the effective sample size n_eff = p(1 - p) / Var(p),
        shrunk by the degrees-of-freedom factor (t_{n-1} / t_df)^2 at the interval's
        quantile (R's ``survey::svyciprop(method = "beta")``). Var(p) is the CR2
        (bias-reduced linearisation) variance sum_g e_g^2 / (1 - m_g / n) / n^2 over the
        clusters (e_g = y_g - p m_g, y_g refusals in m_g rows), equal to clubSandwich's
        ``vcovCR(lm(y ~ 1), type = "CR2")``; df are Bell & McCaffrey's Satterthwaite
        degrees of freedom under an exchangeable working correlation (the intra-item
        correlation estimated from the data), so a few large items among many small ones
        give few degrees of freedom rather than G - 1. Groups with df < 9 (fewer than
        about ten effective items) are flagged (``few_clusters``) with a warning naming
        them: the calibration does not reach 0.93 there. Two columns, e.g.
        ``["item_id", "persona"]``, give two-way clustering (Cameron, Gelbach & Miller
        2011): intervals for the population the personas were sampled from, not only the
        personas in the table (the default target). Item ids that restart within each
        task need one column first (``df["item"] = df.task.astype(str) + ":" +
        df.item_id.astype(str)``). The design effect is capped below at 1, so the
        interval is never narrower than the independent-rows one. Adds ``n_clusters``,
        ``design_effect``, ``n_eff`` (n / design effect, before the degrees-of-freedom
        factor), ``effective_clusters`` (Kish's (sum m)^2 / sum m^2), ``df`` and
        ``few_clusters``.
    refusal : str
        The 0/1 outcome column.
    labels : str, optional
        A column of human labels (0/1, NaN where unlabelled; :func:`refusalstats.label_sample`
        and :func:`refusalstats.join_labels`): the rates are then corrected for the
        detector's errors by prediction-powered inference, and the result is
        :func:`refusalstats.ppi_rates`'s table (``method`` is not used).
    strata : str or list of str, optional
        With ``labels``: the strata the labels were drawn in (``label_sample``'s ``by``).

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
    task about 85% of the time, the clustered one about 95% at rates of 2%, 10% and
    50% (50 items x 10 answers per task); with heavy-tailed item sizes (2-200 answers
    per item, item sd 1.5) and with 12-40 items per group it stays near 0.93-0.97
    (``benchmarks/calibration_rates.py``, ``docs/validity.md``, with Monte Carlo errors).
    The default target is the items' population and the personas in the table; pass
    ``cluster=["item_id", "persona"]`` for a population of personas.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01)
    >>> t = rs.refusal_rates(df, by=["model", "task"], method="jeffreys", cluster=None)
    >>> list(t.columns)
    ['model', 'task', 'n', 'refusals', 'rate', 'ci_low', 'ci_high']
    >>> t = rs.refusal_rates(df, by=["model", "task"], cluster="item_id")
    >>> list(t.columns)[-6:]
    ['n_clusters', 'design_effect', 'n_eff', 'effective_clusters', 'df', 'few_clusters']
    """
    if labels is not None:  # the detector's error carried in by human labels (#22)
        from .ppi import ppi_rates

        return ppi_rates(data, by, labels=labels, conf=conf, cluster=cluster, strata=strata, refusal=refusal)
    by = _columns(by, "by")
    method = check_ci_method(method)
    conf = check_conf(conf)
    counts, clusters = _counts(data, by, refusal, _auto_off(cluster, by), where="refusal_rates")
    cells = counts
    if clusters:
        return _clustered_from_cells(cells, counts, by, clusters, method, conf)
    if by:
        out = cells.groupby(by, observed=True, sort=True)[[N_COLUMN, REFUSALS_COLUMN]].sum()
        out = out.reset_index()
    else:
        out = pd.DataFrame({N_COLUMN: [int(cells[N_COLUMN].sum())],
                            REFUSALS_COLUMN: [int(cells[REFUSALS_COLUMN].sum())]})
    return _rates_table(out, method, conf)


def _rates_table(out: pd.DataFrame, method: str, conf: float) -> pd.DataFrame:
    """Group counts (``n``, ``refusals``) -> rate and the interval."""
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


# --------------------------------------------------------------------------------------
# Cluster-robust variance of a rate with few or unbalanced clusters
# --------------------------------------------------------------------------------------

#: Below this many degrees of freedom (about ten effective items) a clustered interval's
#: coverage is not established by the calibration (docs/validity.md): flagged and warned.
FEW_CLUSTERS_DF = 9.0

#: Working intra-item correlation of the degrees of freedom: None estimates it (the
#: default); a number fixes it (0: the independence working model of clubSandwich's
#: default ``target``), for the ablation in benchmarks/calibration_rates.py.
_WORKING_RHO: float | None = None


def _mean_cr2(codes: np.ndarray, m: np.ndarray, y: np.ndarray, n_groups: int) -> dict:
    """CR2 variance and Bell–McCaffrey degrees of freedom of a pooled rate, per group.

    ``codes`` (group of each cluster line), ``m`` (rows) and ``y`` (refusals) describe one
    line per (group, cluster). For the rate p = sum y / sum m (an intercept-only linear
    model on the rows), the bias-reduced linearisation (Bell & McCaffrey 2002) adjusts each
    cluster's residual sum by (1 - h_g)^(-1/2), h_g = m_g / N its leverage, so

        Var(p) = sum_g e_g^2 / (1 - h_g) / N^2,    e_g = y_g - p m_g,

    and the degrees of freedom are Satterthwaite's for that quadratic form under an
    exchangeable working model (intra-item correlation rho, estimated by the ANOVA
    moment estimator): (tr M)^2 / tr(M^2) with M = G' Omega G (Bell & McCaffrey;
    Pustejovsky & Tipton 2018, clubSandwich's ``conf_int(test = "Satterthwaite")``). With
    rho = 0 they are close to Kish's effective number of clusters (sum m)^2 / sum m^2; a
    few large items among many small ones give few degrees of freedom, never G - 1.
    M = diag(d) + U C U' (U = [a m, a m^2]) is handled in O(G).
    """
    def total(v):
        return np.bincount(codes, weights=v, minlength=n_groups)

    m = m.astype(float)
    y = y.astype(float)
    N = total(m)
    G = np.bincount(codes, minlength=n_groups).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = total(y) / N
        Ng, pg = N[codes], p[codes]
        h = m / Ng
        e = y - pg * m
        inv = np.where(h < 1, 1.0 / (1.0 - h), np.nan)
        var = total(e**2 * inv) / N**2
        var = np.where(G > 1, var, np.nan)
        # exchangeable working correlation: ANOVA estimator (unbalanced one-way layout)
        S2 = total(m**2)
        msb = total(m * (y / m - pg) ** 2) / (G - 1)
        msw = total(y - y**2 / m) / (N - G)
        m0 = (N - S2 / N) / (G - 1)
        rho = (msb - msw) / (msb + (m0 - 1) * msw)
        rho = np.clip(np.nan_to_num(rho, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
        if _WORKING_RHO is not None:  # the ablation in benchmarks/calibration_rates.py
            rho = np.full_like(rho, float(_WORKING_RHO))
        rg = rho[codes]
        a = np.sqrt(inv) / Ng
        b, c = a * m, a * m**2
        d = (1 - rg) * a**2 * m + rg * a**2 * m**2
        c11 = -(1 - rho) / N + rho * S2 / N**2
        c12 = -rho / N
        bb, bc, cc = total(b * b), total(b * c), total(c * c)
        dbb, dbc, dcc = total(d * b * b), total(d * b * c), total(d * c * c)
        tr = total(d) + c11 * bb + 2 * c12 * bc
        # tr((C U'U)^2) with C U'U = [[c11 bb + c12 bc, c11 bc + c12 cc], [c12 bb, c12 bc]]
        k11, k12 = c11 * bb + c12 * bc, c11 * bc + c12 * cc
        k21, k22 = c12 * bb, c12 * bc
        tr2 = (total(d**2) + 2 * (c11 * dbb + 2 * c12 * dbc) + 0 * dcc
               + k11**2 + 2 * k12 * k21 + k22**2)
        df = np.where(G > 1, tr**2 / tr2, np.nan)
    df = np.minimum(df, np.maximum(G - 1, 1))  # never more than the clusters allow
    kish = np.where(G > 0, N**2 / np.maximum(S2, 1e-300), np.nan)
    return {N_COLUMN: N, REFUSALS_COLUMN: total(y), "G": G, "var": var, "df": df, "rho": rho,
            "kish": kish, "e": e, "inv": inv}


def _cluster_var(cells: pd.DataFrame, codes: np.ndarray, n_groups: int, clusters: list[str],
                 n_col: str, k_col: str) -> dict:
    """Per group: rows, refusals, the cluster-robust variance of the rate and its df.

    One cluster column: :func:`_mean_cr2` on the lines of (group, cluster). Two columns
    (e.g. ``["item_id", "persona"]``): Cameron, Gelbach & Miller's (2011) two-way variance
    V_1 + V_2 - V_12, each term the CR2 variance of the rows grouped by that column (or by
    both), floored at the larger one-way variance (the sum can fall below it, even below 0,
    in small samples); degrees of freedom the smaller one-way ones. In a group where one
    column takes a single value (e.g. the persona-free rows' persona) that dimension
    carries no information: the variance is the other column's one-way variance.
    ``cells`` holds one line per (group, cluster combination), ``codes`` its group.
    """
    def one(cols):
        sub = cells[[*cols, n_col, k_col]].assign(_g=codes).groupby(
            ["_g", *cols], observed=True, sort=True)[[n_col, k_col]].sum().reset_index()
        return _mean_cr2(sub["_g"].to_numpy(), sub[n_col].to_numpy(), sub[k_col].to_numpy(),
                         n_groups)

    if len(clusters) > 2:
        raise ValueError(f"cluster= takes one or two columns (two-way clustering), got {clusters}")
    first = one(clusters[:1])
    if len(clusters) == 1:
        return first
    second, both = one(clusters[1:]), one(clusters)
    with np.errstate(invalid="ignore"):
        cgm = np.fmax(first["var"] + second["var"] - both["var"], np.fmax(first["var"], second["var"]))
    var = np.where(second["G"] <= 1, first["var"], np.where(first["G"] <= 1, second["var"], cgm))
    df = np.where(second["G"] <= 1, first["df"], np.where(first["G"] <= 1, second["df"],
                                                          np.fmin(first["df"], second["df"])))
    G = np.where(second["G"] <= 1, first["G"], np.where(first["G"] <= 1, second["G"],
                                                        np.minimum(first["G"], second["G"])))
    return {**first, "var": var, "df": df, "G": G}


def _kg_interval(p, n, var, df, method, conf):
    """Korn & Graubard's interval: the binomial interval on the effective sample size
    n_eff = p(1 - p) / Var(p) (design effect floored at 1), shrunk by (t_{n-1} / t_df)^2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        deff = np.where((p > 0) & (p < 1), var / (p * (1 - p) / n), 1.0)
    deff = np.where(np.isnan(deff), np.nan, np.maximum(deff, 1.0))
    n_eff = n / deff
    q = 1 - (1 - conf) / 2
    lo = np.full(len(p), np.nan)
    hi = np.full(len(p), np.nan)
    ok = np.isfinite(n_eff) & np.isfinite(df)
    if ok.any():
        factor = (stats.t.ppf(q, np.maximum(n[ok] - 1, 1)) / stats.t.ppf(q, df[ok])) ** 2
        n_ci = n_eff[ok] * factor
        lo[ok], hi[ok] = proportion_ci(p[ok] * n_ci, n_ci, method, conf)
    return lo, hi, deff, n_eff


def _warn_few(where: str, labels: list[str], df: np.ndarray) -> None:
    few = [lab for lab, d in zip(labels, df) if np.isfinite(d) and d < FEW_CLUSTERS_DF]
    if few:
        more = f" and {len(few) - 5} more" if len(few) > 5 else ""
        warnings.warn(
            f"{where}: {len(few)} group(s) have fewer than ~10 effective items (degrees of "
            f"freedom < {FEW_CLUSTERS_DF:g}): {', '.join(few[:5])}{more}; their intervals may be "
            "too narrow (column few_clusters)", RuntimeWarning, stacklevel=3)


def _group_labels(frame: pd.DataFrame, by: list[str]) -> list[str]:
    if not by:
        return ["the table"] * len(frame)
    return [", ".join(f"{c}={_plain(v)!r}" for c, v in zip(by, row))
            for row in frame[by].itertuples(index=False)]


def _arm_cov(cells: pd.DataFrame, codes: np.ndarray, n_groups: int, cols: list[str],
             p: list[np.ndarray], n: list[np.ndarray]) -> np.ndarray:
    """CR2-scaled covariance of the two arms' rates from the clusters of ``cols`` holding
    both: sum_g e0_g e1_g ((1 - h0_g)(1 - h1_g))^(-1/2) / (n0 n1)."""
    sub = cells[[*cols, "_arm", N_COLUMN, REFUSALS_COLUMN]].assign(_g=codes).groupby(
        ["_g", *cols, "_arm"], observed=True, sort=True)[[N_COLUMN, REFUSALS_COLUMN]].sum()
    sub = sub.unstack("_arm", fill_value=0)
    g = sub.index.get_level_values("_g").to_numpy()
    e, w = [], []
    for a in (0, 1):
        m = (sub[(N_COLUMN, a)].to_numpy(dtype=float) if (N_COLUMN, a) in sub
             else np.zeros(len(sub)))
        y = (sub[(REFUSALS_COLUMN, a)].to_numpy(dtype=float) if (REFUSALS_COLUMN, a) in sub
             else np.zeros(len(sub)))
        e.append(y - p[a][g] * m)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = m / n[a][g]
            w.append(np.where(h < 1, 1.0 / np.sqrt(1.0 - h), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.bincount(g, weights=e[0] * e[1] * w[0] * w[1], minlength=n_groups) / (n[0] * n[1])


def _clustered_from_cells(cl: pd.DataFrame, data: pd.DataFrame, by: list[str],
                          clusters: list[str], method: str, conf: float) -> pd.DataFrame:
    """Clustered rates from per-(group, cluster) counts ``n``/``refusals`` (rows or a collapse)."""
    keys = by or ["_all"]
    if not by:
        cl = cl.assign(_all=0)
    grp = cl.groupby(keys, observed=True, sort=True)
    out = grp[[N_COLUMN]].sum()
    res = _cluster_var(cl, grp.ngroup().to_numpy(), len(out), clusters, N_COLUMN, REFUSALS_COLUMN)
    n = res[N_COLUMN]
    p = res[REFUSALS_COLUMN] / n
    lo, hi, deff, n_eff = _kg_interval(p, n, res["var"], res["df"], method, conf)
    single = ~np.isfinite(res["var"])
    if single.any():
        warnings.warn(
            f"{int(single.sum())} group(s) have a single {'+'.join(clusters)} cluster: no "
            "cluster-robust interval (NaN) can be estimated there",
            RuntimeWarning,
            stacklevel=3,
        )
    res_frame = out.reset_index().drop(columns=N_COLUMN)
    if not by:
        res_frame = res_frame.drop(columns="_all")
    res_frame["n"] = n.astype("int64")
    res_frame[REFUSALS_COLUMN] = res[REFUSALS_COLUMN].astype("int64")
    res_frame["rate"] = p
    res_frame["ci_low"], res_frame["ci_high"] = lo, hi
    res_frame["n_clusters"] = res["G"].astype("int64")
    res_frame["design_effect"] = deff
    res_frame["n_eff"] = n_eff
    res_frame["effective_clusters"] = res["kish"]
    res_frame["df"] = res["df"]
    res_frame["few_clusters"] = ~(res["df"] >= FEW_CLUSTERS_DF)
    _warn_few("refusal_rates", _group_labels(res_frame, by), res["df"])
    res_frame.attrs.update(method=method, conf=conf, cluster=clusters,
                           variance="CR2 + Bell-McCaffrey df" if len(clusters) == 1
                           else "two-way CR2 (Cameron-Gelbach-Miller) + Bell-McCaffrey df")
    return _restore_dtypes(res_frame, data, by)


def _newcombe(k1, n1, k2, n2, conf):
    """Newcombe's hybrid score interval (method 10) for p1 - p2."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = proportion_ci(k1, n1, "wilson", conf)
    l2, u2 = proportion_ci(k2, n2, "wilson", conf)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def _clustered_newcombe(cells, by, clusters, conf):
    """Zou & Donner's MOVER from the two clustered Wilson intervals (see persona_effect).

    ``cells`` holds counts ``n``/``refusals`` per (by, cluster, ``_arm``), ``_arm`` 0 for the
    first setting and 1 for the second. Each arm's rate gets the CR2 variance and
    Bell–McCaffrey degrees of freedom of :func:`refusal_rates` (two-way with two cluster
    columns); the correlation of the two rates is the CR2-scaled cluster covariance over
    the clusters answered in both settings.
    """
    import itertools

    keys = by or ["_all"]
    cells = cells.assign(_all=0)
    grp = cells.groupby(keys, observed=True, sort=True)
    codes = grp.ngroup().to_numpy()
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    arms = [_cluster_var(cells[cells["_arm"] == a], codes[(cells["_arm"] == a).to_numpy()],
                         n_groups, clusters, N_COLUMN, REFUSALS_COLUMN) for a in (0, 1)]
    p = [r[REFUSALS_COLUMN] / r[N_COLUMN] for r in arms]
    n = [r[N_COLUMN] for r in arms]
    var = [r["var"] for r in arms]
    lims, deff = [], []
    for a, r in enumerate(arms):
        lo, hi, de, _ = _kg_interval(p[a], n[a], r["var"], r["df"], "wilson", conf)
        lims.append((lo, hi))
        deff.append(de)
    bad = ~(np.isfinite(var[0]) & np.isfinite(var[1]))
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} group(s) have a "
            f"setting whose rows come from a single {'+'.join(clusters)} cluster: no "
            "cluster-robust interval (NaN) can be estimated there",
            RuntimeWarning,
            stacklevel=3,
        )
    cov = 0.0
    for r in range(1, len(clusters) + 1):
        for subset in itertools.combinations(clusters, r):
            cov = cov + (-1) ** (r + 1) * _arm_cov(cells, codes, n_groups, list(subset), p, n)
    n_cl = cells.assign(_g=codes).groupby("_g")[clusters[0]].nunique().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rr = np.where((var[0] > 0) & (var[1] > 0), cov / np.sqrt(var[0] * var[1]), 0.0)
    rr = np.clip(np.nan_to_num(rr, nan=0.0), -1.0, 1.0)
    (l1, u1), (l2, u2) = lims
    p1, p2 = p
    diff = p1 - p2
    a, b = p1 - l1, u2 - p2
    lo = diff - np.sqrt(np.maximum(a**2 + b**2 - 2 * rr * a * b, 0.0))
    a, b = u1 - p1, p2 - l2
    hi = diff + np.sqrt(np.maximum(a**2 + b**2 - 2 * rr * a * b, 0.0))
    df = np.fmin(arms[0]["df"], arms[1]["df"])
    return diff, lo, hi, {"n_clusters": n_cl, "deff": deff, "r": rr, "df": df}


def persona_effect(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    setting: str = "setting",
    levels: tuple[str, str] = ("persona", "persona-free"),
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    refusal: str = "refusal",
    labels: str | None = None,
    strata: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Persona minus persona-free refusal rate, with Newcombe's interval.

    The difference of two binomial proportions gets Newcombe's (1998) hybrid score
    interval (his method 10, built from the two Wilson intervals), which keeps its
    coverage near rates of 0 where the Wald interval collapses.

    Parameters
    ----------
    data : DataFrame or path
        The tidy response table with both settings; or a Parquet file, a folder of
        Parquet shards, a glob or a list of them, streamed into counts by
        :func:`refusalstats.collapse` (the result equals the in-memory one).
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
        ``None``: independent rows, Newcombe's original interval). The default target is
        the effect for the personas in the table; ``["item_id", "persona"]`` (two-way,
        Cameron, Gelbach & Miller 2011) targets the population the personas were drawn
        from (the persona-free rows' single persona adds nothing there). Each setting's
        rate gets the CR2 variance and Bell–McCaffrey degrees of freedom of
        :func:`refusal_rates`; groups with df < 9 are flagged (``few_clusters``).
    refusal : str
        The 0/1 outcome column.
    labels : str, optional
        A column of human labels (0/1, NaN where unlabelled): the difference is then
        corrected for the detector's errors by prediction-powered inference
        (:func:`refusalstats.ppi_effect`'s table).
    strata : str or list of str, optional
        With ``labels``: the strata the labels were drawn in.

    Returns
    -------
    DataFrame
        ``by`` columns, then ``n``, ``refusals`` and ``rate`` for each setting
        (suffixed ``_persona`` and ``_persona_free``), ``difference`` (persona minus
        persona-free), ``ci_low``, ``ci_high``; with clusters also ``n_clusters``,
        ``design_effect_persona``, ``design_effect_persona_free``, ``correlation`` (of
        the two estimated rates), ``df`` and ``few_clusters``.

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
    if labels is not None:  # the detector's error carried in by human labels (#22)
        from .ppi import ppi_effect

        return ppi_effect(data, by, labels=labels, setting=setting, levels=levels, conf=conf,
                          cluster=cluster, strata=strata, refusal=refusal)
    by = _columns(by, "by")
    conf = check_conf(conf)
    if not (isinstance(levels, (tuple, list)) and len(levels) == 2 and levels[0] != levels[1]):
        raise ValueError(f"levels must be two different setting levels, got {levels!r}")
    if setting in by:
        raise ValueError(f"{setting!r} is the setting column; it cannot also be in by=")
    columns = _columns_of(data)
    # without a setting column, rows whose persona is "none" are the persona-free ones
    derived = setting not in columns and "persona" in columns
    counts, clusters = _counts(
        data, [*by, "persona" if derived else setting], refusal, _auto_off(cluster, by),
        where="persona_effect", role="the setting column or in by=",
    )
    if derived:
        from .vocabulary import NO_PERSONA

        values = pd.Series(np.where(counts["persona"].astype(object) == NO_PERSONA,
                                    levels[1], levels[0]), index=counts.index)
    else:
        values = counts[setting].astype(object)
    unknown = sorted(set(pd.unique(values)) - set(levels), key=str)
    if unknown:
        raise ValueError(
            f"column {setting!r} has level(s) {unknown} besides {list(levels)}; keep only the "
            f"two settings (e.g. df[df[{setting!r}].isin({list(levels)})]) or pass levels="
        )
    keys = by or ["_all"]
    cells = counts.assign(_all=0, _arm=(values == levels[1]).to_numpy().astype(np.int8))
    totals = cells.groupby([*keys, "_arm"], observed=True, sort=True)[
        [N_COLUMN, REFUSALS_COLUMN]].sum()
    totals = totals.unstack("_arm", fill_value=0)
    size = totals[N_COLUMN].reindex(columns=[0, 1], fill_value=0)
    total = totals[REFUSALS_COLUMN].reindex(columns=[0, 1], fill_value=0)
    lacking = size[(size == 0).any(axis=1)]
    if len(lacking):
        examples = []
        for key, row in lacking.head(5).iterrows():
            miss = [lev for a, lev in enumerate(levels) if row[a] == 0]
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
    n1, n2 = size[0].to_numpy(), size[1].to_numpy()
    k1, k2 = total[0].to_numpy(), total[1].to_numpy()
    if clusters:
        d, lo, hi, extra = _clustered_newcombe(cells, by, clusters, conf)
        if len(d) != len(n1):  # pragma: no cover - both group the same rows
            raise RuntimeError("persona_effect: clustered groups do not line up")
    else:
        d, lo, hi = _newcombe(k1, n1, k2, n2, conf)
        extra = {}
    s1, s2 = level_slug(levels[0]), level_slug(levels[1])
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
        out["df"] = extra["df"]
        out["few_clusters"] = ~(extra["df"] >= FEW_CLUSTERS_DF)
    if by:
        keys = size.index.to_frame(index=False)
        out = pd.concat([keys.reset_index(drop=True), out], axis=1)
    if clusters:
        _warn_few("persona_effect", _group_labels(out, by), out["df"].to_numpy())
    out.attrs["conf"] = conf
    out.attrs["method"] = "mover-clustered" if clusters else "newcombe"
    if clusters:
        out.attrs["cluster"] = clusters
    return out


def _plain(value):
    """A NumPy scalar as the Python value it holds (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _restore_dtypes(out: pd.DataFrame, data: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    for c in cols:
        if c in out.columns and isinstance(data[c].dtype, pd.CategoricalDtype):
            out[c] = pd.Categorical(out[c], categories=data[c].cat.categories)
    return out

