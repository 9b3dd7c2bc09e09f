"""Wasserstein-2 global sensitivity indices with bootstrap CIs and a permutation null.

The index of Borgonovo, Figalli, Plischke & Savaré (2024),

    xi(Y; X)  = E_X[ W2^2(P_Y, P_{Y|X}) ],
    iota(Y; X) = xi / (2 Var[Y])  in [0, 1],

estimated from the given sample by partitioning X (one partition per level of a
categorical input, equal-count rank bins for a numeric one) and averaging the exact W2^2
between each partition's empirical distribution of Y and the unconditional one, weighted
by partition size. ``Var`` is the *population* variance (divisor N), so a Y that is a
function of a discrete X scores exactly 1 and the 0/1 closed form is exact. See
``docs/methods_w2.md`` for the maths, the bias and the permutation null.

The package: :mod:`.encode` (the output, each input as a partition, the clusters),
:mod:`.estimators` (contingency tables and sorted rows), :mod:`.intervals` (bootstrap
intervals), :mod:`.stream` (Parquet sources as counts) and :mod:`.result`; this module checks
the arguments, encodes the inputs one at a time and analyses each.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._validation import AUTO_CLUSTER_COLUMN, check_conf, check_random_state
from ..table import SchemaError, its_columns
from .encode import (
    _Clusters,
    _encode_clusters,
    _encode_input,
    _encode_output,
    _Output,
    _Partition,
    default_partitions,
)
from .estimators import _iota, _replicates, _RowEstimator, _TableEstimator
from .intervals import (
    bc_interval,
    bca_interval,
    expanded_interval,
    expansion,
    percentile_interval,
    studentized_interval,
)
from .result import _SCHEME_WORDS, TABLE_COLUMNS, W2SensitivityResult
from .stream import RowsNeeded, _check_stream, _encode_stream

__all__ = ["RowsNeeded", "W2SensitivityResult", "default_partitions", "w2_sensitivity"]

#: Level of the permutation test behind ``distinguishable``.
NULL_LEVEL = 0.05
#: Bootstrap schemes; the default is chosen by measured coverage (docs/methods_w2.md).
BOOTSTRAPS = ("auto", "unstratified", "stratified")
#: Fewer effective items than this (Kish) behind an interval: a warning and a note.
FEW_ITEMS = 10
#: Interval types of ``ci=``.
CI_METHODS = ("expanded", "percentile", "bc", "bca", "studentized")


# ----------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------
def w2_sensitivity(
    data: pd.DataFrame | str | os.PathLike | Sequence[str | os.PathLike],
    output: str | Sequence[str] = "refusal",
    inputs: Sequence[str] = ("model", "task", "persona", "prompt"),
    partitions: Mapping[str, int | str] | None = None,
    n_boot: int = 1000,
    conf: float = 0.95,
    n_perm: int = 200,
    seed: int | np.random.Generator | None = 0,
    ci: str = "expanded",
    progress: bool = True,
    cluster: str | Sequence[str] | None = "auto",
    bootstrap: str = "auto",
    exclude: Mapping[str, Sequence] | None = None,
) -> W2SensitivityResult:
    r"""Wasserstein-2 sensitivity index of each input, with bootstrap CI and permutation null.

    For every input X the given-data estimate

    .. math:: \hat\iota = \frac{\sum_m (n_m/N)\, W_2^2(\hat P_Y, \hat P_{Y|m})}{2\,\widehat{Var}[Y]}

    is computed over the partitions m of X, with the *exact* W2^2 between the empirical
    distributions (merged quantile breakpoints) and the *population* variance (divisor N),
    so iota is in [0, 1], equals 1 when Y is a function of a discrete X, and for a 0/1
    output equals ``sum_m (n_m/N) |p - p_m| / (2 p (1 - p))`` exactly.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        One row per observation. No column may contain NaN (rows are never dropped silently).
        A Parquet file, a folder of Parquet shards, a glob or a list of them is streamed:
        per input, :func:`refusalstats.collapse` counts rows and refusals per input level
        (and per cluster x level), reading only those columns, so memory grows with
        clusters x levels, never with rows; the result equals the in-memory one with the
        same seed (estimates, CIs, p-values, replicates). This needs a 0/1 (or bool) output
        and inputs cut into levels; a continuous, ordinal, nominal or multivariate output
        and numeric inputs cut into rank bins need the rows and raise a ValueError that
        says how to read just the needed columns.
    output : str or list of str
        The output column. 0/1, bool or numeric with at most 256 distinct values: a 1-d
        discrete output, analysed as a partition x value contingency table. Numeric with more
        values: continuous (sorted rows, numba kernels). Non-numeric (labels): nominal, i.e.
        one-hot with squared Euclidean cost (W2^2 = sum_k ``|p_k - q_k|``). Several numeric
        columns: multivariate, exact OT with ``ot.emd2`` on the distinct rows (at most 2,000).
    inputs : list of str
        Input columns. Categorical/string/bool columns and integer columns with few values
        get one partition per observed level; other numeric columns get equal-count rank bins
        (ties split by order of appearance), by default ``default_partitions(N)`` of them.
    partitions : dict, optional
        Per input, ``"levels"`` or an int number of rank bins, overriding the default.
    n_boot : int
        Bootstrap replicates (0: no CI); how they are drawn is set by ``cluster`` and
        ``bootstrap``.
    conf : float
        Confidence level of the interval.
    n_perm : int
        Permutations of the input for the null (0: none). Without clusters the rows' labels
        are permuted (partition sizes kept; for tables a multivariate hypergeometric draw
        with both margins). With clusters, an input constant within every cluster (an
        item-level input such as ``task``) has its labels permuted across clusters, so an
        item's answers move together; any other input is permuted within each cluster (a
        stratified permutation: every item keeps its own answers and its own mix of levels).
    seed : int, None or numpy.random.Generator
        Seed; each input's random streams derive from it and the input's name (a Generator
        or None first draws an int seed).
    ci : {"expanded", "percentile", "bc", "bca", "studentized"}
        Interval type (:mod:`refusalstats.sensitivity.intervals`). ``"expanded"``
        (default): the percentile interval with the bootstrap spread about its median
        scaled by ``sqrt(G / (G - 1)) t_df / z``, ``G`` the fewest items (rows without
        clusters) in a bootstrap stratum and ``df`` the effective number of items (Kish)
        less the strata; with many items it is the percentile interval. Chosen by measured
        coverage with 12, 20 and 40 items per level, balanced and unbalanced (heavy-tailed
        answers per item, 0.5x/1x/1.5x items per level): 0.933-0.957 for an item-level
        input and 0.953-0.960 for a row-level one with 36 items, where the plain percentile
        interval covered 0.913-0.917 with 12 items per level, bias-corrected (``"bc"``) and
        BCa 0.853-0.910 and the bootstrap-t (``"studentized"``, linearization standard
        errors; 0/1 outputs only) 0.890-0.920 (300 data sets each;
        ``benchmarks/calibration_w2.py --intervals``, docs/methods_w2.md). Without clusters
        (random partition sizes, N = 6,400) the percentile interval covered 95.3% and BCa
        94.8%. BCa uses an exact leave-one-out jackknife for tables, a delete-a-group
        jackknife (100 groups) for continuous outputs with more than 1,000 rows, and
        delete-a-group of clusters (at most 100 groups) with clusters. An input whose
        interval rests on fewer than 10 effective items (in its smallest level, for an
        item-level input) gets a warning, a note and a place in ``few_items``: with 5 items
        per level the intervals covered 0.90 (balanced).
    progress : bool
        Show a tqdm progress bar.
    cluster : "auto", str or None
        Rows that belong together (answers to the same item). ``"auto"`` (default) clusters
        by ``item_id`` when the table has it and item ids repeat, with a one-line
        :class:`~refusalstats.ClusterNote`; ``None`` treats rows as independent. A list of
        columns (two-way clustering in ``refusal_rates``, ``persona_effect`` and ``logit``)
        is refused: make one key column of their combination and pass its name. With
        clusters the bootstrap resamples whole clusters and the permutation null respects
        them (see ``n_perm``). With an item random intercept of sd 1 (logit scale), treating
        rows as independent rejected a null item-level input 27% of the time at 5% and its
        95% CIs covered 80% (audit: 28-32% and 72%); clustered: 4.1% and 94.6%
        (2,000 data sets each, ``benchmarks/calibration_w2.py``, docs/methods_w2.md).
    bootstrap : {"auto", "unstratified", "stratified"}
        ``"unstratified"``: rows (or clusters) drawn with replacement from all of them, so
        partition sizes vary between replicates as they do between samples when each row's
        level is random. ``"stratified"``: each partition resampled at its own size (rows),
        or the clusters of each level of an item-level input resampled within that level
        (a row-level input with clusters: whole clusters, nothing to stratify).
        ``"auto"`` (default): unstratified without clusters (random partition sizes,
        iota = 0.505, N = 6,400: 95.3-95.9% coverage vs 92.9-93.3% stratified), stratified
        with clusters (items per task are fixed by the design: 94.6% vs 97.3% for the
        plain item bootstrap, whose sd overstated the sampling sd, 0.0278 vs 0.0249). Pass ``"unstratified"``
        when an item-level input's levels are themselves random draws, ``"stratified"``
        when row partitions have sizes fixed by the design.
    exclude : dict of str -> list, optional
        Rows to leave out, ``{column: values}``: the rows whose ``column`` holds one of
        ``values`` (compared as strings) are dropped before anything else, as
        ``data[~data[column].astype(str).isin(values)]`` would, for a DataFrame and a Parquet
        source alike (a source is counted with those lines left out, never read into
        memory). The report uses it to analyse the rows with a persona. A column the table
        lacks holds none of the values, so it leaves out nothing.

    Returns
    -------
    W2SensitivityResult
        ``.table`` with columns ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean,
        null_q95, iota_corrected, p_value, distinguishable, note``: ``xi`` in units of Y^2,
        ``null_mean``/``null_q95`` the mean and 95% quantile of iota under permutation (the
        finite-sample bias and a significance threshold), ``iota_corrected = max(iota -
        null_mean, 0)``, ``p_value`` the permutation p-value ``(1 + #{null >= iota}) /
        (n_perm + 1)``, ``distinguishable`` whether ``p_value <= 0.05`` (NA without
        permutations) and ``note`` a plain-words remark when an input is not distinguishable
        from its null or its estimate lies outside its own CI (also in ``.notes``).
        ``.boot_scheme`` / ``.null_scheme`` name how each input was resampled and permuted.
        ``.plot()`` draws it (grey hatched bars for inputs like their null, a dagger for an
        estimate outside its CI).

    Raises
    ------
    SchemaError
        A missing column (the message lists the table's columns).
    TypeError, ValueError
        NaNs, constant output, an input with a single level, more partitions
        than rows, bad arguments; the message names the column and the fix.

    References
    ----------
    Borgonovo, Figalli, Plischke & Savaré (2024), "Global sensitivity analysis via optimal
    transport", Management Science. Estimator as in the R package gsaot (``ot_indices_1d``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> g = rng.choice(["a", "b", "c", "d"], size=4000)
    >>> p = pd.Series(g).map({"a": 0.1, "b": 0.3, "c": 0.5, "d": 0.9}).to_numpy()
    >>> df = pd.DataFrame({"g": g, "noise": rng.choice(["x", "y"], size=4000),
    ...                    "refusal": (rng.random(4000) < p).astype(int)})
    >>> res = w2_sensitivity(df, inputs=["g", "noise"], n_boot=200, n_perm=100,
    ...                      progress=False)
    >>> cols = ["input", "iota", "ci_low", "ci_high", "null_q95", "p_value", "distinguishable"]
    >>> res.table[cols].round(3)
       input   iota  ci_low  ci_high  null_q95  p_value  distinguishable
    0      g  0.500   0.479    0.529     0.035    0.010             True
    1  noise  0.008   0.001    0.037     0.036    0.683            False
    >>> res.notes[0]
    'noise: not distinguishable from its permutation null (p = 0.683; null 95% quantile 0.0363)'

    The truth for ``g`` is 0.25 / (2 * 0.45 * 0.55) = 0.505; ``noise`` is irrelevant and its
    estimate lies below the permutation null's 95% quantile. The table has no ``item_id``,
    so rows are independent and the bootstrap is unstratified.
    """
    data, plan = _check_args(data, output, inputs, partitions, n_boot, conf, n_perm, seed, ci,
                             cluster, bootstrap, exclude)
    fallback: list[str] = []  # inputs whose BCa interval fell back to percentile
    analysed: list[_InputResult] = []
    first = None  # (output, clusters) of the first input: the result's header
    bar = tqdm(total=len(plan.inputs) * (n_boot + n_perm), desc="W2 sensitivity", unit="rep",
               disable=not progress or (n_boot + n_perm) == 0, leave=False)
    try:
        for out, part, clus in _encoded_inputs(data, plan):
            if first is None:
                first = (out.name, out.kind, out.n_support, out.n,
                         None if clus is None else clus.name, None if clus is None else clus.n)
            analysed.append(_analyse_input(out, part, clus, plan, bar, fallback))
            # let go of this input's records before the next is built (#15)
            del out, part, clus
    finally:
        bar.close()
    if fallback:
        warnings.warn(
            f"ci={ci!r}: for input(s) {fallback} the interval does not exist (every bootstrap "
            "replicate of iota lies above, or below, the estimate, so the bias correction is "
            "infinite; or a zero standard error); their ci_low/ci_high are percentile "
            "intervals. This is typical of an input whose estimate is mostly finite-sample bias: "
            "compare iota with null_mean/null_q95 and p_value.",
            RuntimeWarning, stacklevel=2,  # the caller of w2_sensitivity
        )
    out_name, out_kind, out_support, n, clus_name, clus_n = first
    table = pd.DataFrame([a.row for a in analysed], columns=TABLE_COLUMNS)
    table["n_partitions"] = table["n_partitions"].astype(int)
    table["distinguishable"] = table["distinguishable"].astype("boolean")
    return W2SensitivityResult(
        table=table, output=out_name,
        output_kind="binary" if out_kind == "ordinal" and out_support == 2 else out_kind,
        n=n, conf=plan.conf,
        ci_method=ci if n_boot else "none",
        boot={a.name: a.boot for a in analysed},
        null={a.name: a.null for a in analysed},
        partitions={a.name: a.labels for a in analysed},
        cluster=clus_name,
        n_clusters=clus_n,
        bootstrap=bootstrap,
        boot_scheme={a.name: a.boot_scheme for a in analysed},
        null_scheme={a.name: a.null_scheme for a in analysed},
        notes=[f"{a.name}: {t}" for a in analysed for t in a.notes],
        few_items=[a.name for a in analysed if a.few_items],
        units={a.name: a.units for a in analysed},
        se={a.name: a.se for a in analysed if a.se is not None},
        boot_se={a.name: a.boot_se for a in analysed if a.boot_se is not None},
    )


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """The checked arguments of one :func:`w2_sensitivity` call."""

    streamed: bool
    output: str | list[str]
    out_names: list[str]
    inputs: list[str]
    partitions: dict
    n_boot: int
    n_perm: int
    conf: float
    ci: str
    bootstrap: str
    seed: int  # every input's streams derive from it and the input's name
    cluster: str | list[str] | None  # resolved: "auto" decided
    needed: list[str]  # the columns the analysis reads (streamed: for RowsNeeded)
    exclude: dict[str, list[str]]


def _check_args(data, output, inputs, partitions, n_boot, conf, n_perm, seed, ci, cluster,
                bootstrap, exclude) -> tuple[pd.DataFrame | object, _Plan]:
    """Every argument checked (and ``cluster="auto"`` resolved) before any work is done.

    Returns the data to analyse (a table file read into a DataFrame, the rows ``exclude``
    leaves out dropped from a DataFrame; a Parquet source as given) and the plan."""
    from ..counts import one_way_cluster, resolve_cluster
    from ..sources import scan_columns, source_of

    cluster = one_way_cluster(cluster, where="w2_sensitivity")  # a list is two-way elsewhere
    src = source_of(data, where="w2_sensitivity")
    streamed = src.streamed
    if not streamed:
        data = src.frame
        if len(data) == 0:
            raise ValueError("data has no rows")
    columns = scan_columns(data) if streamed else list(map(str, data.columns))
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs is empty; name at least one column, e.g. inputs=['model']")
    missing = [c for c in inputs if c not in columns]
    if missing:
        raise SchemaError(f"w2_sensitivity: input column(s) {missing} not in the table; "
                          f"{its_columns(columns, missing)}")
    dup = sorted({c for c in inputs if inputs.count(c) > 1})
    if dup:
        raise ValueError(f"input(s) {dup} listed more than once")
    out_names = [output] if isinstance(output, str) else list(output)
    clash = [c for c in inputs if c in out_names]
    if clash:
        raise ValueError(f"column(s) {clash} are both output and input")
    partitions = dict(partitions or {})
    unknown = [k for k in partitions if k not in inputs]
    if unknown:
        raise ValueError(f"partitions names {unknown}, which are not among inputs={inputs}")
    for nm, val in (("n_boot", n_boot), ("n_perm", n_perm)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{nm} must be a non-negative integer, got {val!r}")
    conf = check_conf(conf)
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}, got {ci!r}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}")
    exclude = _check_exclude(exclude, columns)
    # an int seeds every input's streams directly (reproducible per input name); a Generator
    # or None first draws that int
    seed_int = (int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                and seed >= 0 else int(check_random_state(seed).integers(2**63 - 1)))
    needed: list[str] = []
    if streamed:
        if cluster is None:
            cl_given = []
        elif isinstance(cluster, str) and cluster == "auto":  # rows read back keep the column
            cl_given = [AUTO_CLUSTER_COLUMN] if AUTO_CLUSTER_COLUMN in columns else []
        else:
            cl_given = [cluster] if isinstance(cluster, str) else list(cluster)
        needed = list(dict.fromkeys([*inputs, *out_names, *cl_given]))
        _check_stream(data, out_names, inputs, partitions, columns, needed)
    # the one cluster="auto" rule (refusalstats.counts), on the table as given: a source and
    # the same table as a DataFrame cluster alike, with or without exclude
    with warnings.catch_warnings(record=True) as caught:  # the note names the caller's
        warnings.simplefilter("always")                   # line, not w2_sensitivity's
        cl = resolve_cluster(data, cluster, where="w2_sensitivity", refusal=out_names[0])
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    if exclude and not streamed:
        data = _leave_out(data, exclude)
    if cl is not None:
        both = [c for c in ([cl] if isinstance(cl, str) else cl) if c in out_names]
        if both:
            raise ValueError(f"column(s) {both} are both output and cluster")
    return data, _Plan(streamed, output, out_names, inputs, partitions, int(n_boot),
                       int(n_perm), conf, ci, bootstrap, seed_int, cl, needed, exclude)


def _check_exclude(exclude, columns: list[str]) -> dict[str, list[str]]:
    """``exclude`` as {column: [values as str]}, columns the table lacks dropped."""
    if exclude is None:
        return {}
    if not isinstance(exclude, Mapping):
        raise TypeError("exclude must be a mapping {column: values}, e.g. "
                        f"exclude={{'setting': ['persona-free']}}; got {type(exclude).__name__}")
    out = {}
    for col, vals in exclude.items():
        if isinstance(vals, str) or not isinstance(vals, (Sequence, set, frozenset, np.ndarray)):
            raise TypeError(f"exclude[{col!r}] must be a list of values, got {vals!r}")
        if str(col) in columns:
            out[str(col)] = [str(v) for v in vals]
    return out


def _leave_out(data: pd.DataFrame, exclude: dict[str, list[str]]) -> pd.DataFrame:
    """The rows of ``data`` whose columns hold none of the excluded values."""
    keep = np.ones(len(data), dtype=bool)
    for col, values in exclude.items():
        keep &= ~data[col].astype(str).isin(values).to_numpy()
    if not keep.any():
        raise ValueError(f"w2_sensitivity: no rows are left after leaving out {exclude}")
    return data if keep.all() else data[keep]


# ----------------------------------------------------------------------------------------
# one input at a time
# ----------------------------------------------------------------------------------------
def _encoded_inputs(data, plan: _Plan) -> Iterator[tuple[_Output, _Partition, _Clusters | None]]:
    """``(output, partition, clusters)`` per input, in the order of ``inputs``.

    A Parquet source is collapsed one input at a time (that input's records are built when
    the loop asks for them and freed once it moves on). A DataFrame's inputs are all
    encoded at the first request, so a bad input fails before any replicate is drawn.
    """
    if plan.streamed:
        yield from _encode_stream(data, plan.out_names[0], plan.inputs, plan.partitions,
                                  plan.cluster, plan.needed, plan.exclude)
        return
    out = _encode_output(data, plan.output)
    clus = None if plan.cluster is None else _encode_clusters(data, plan.cluster)
    parts = [_encode_input(data, name, plan.partitions.get(name), out.n)
             for name in plan.inputs]
    while parts:
        yield out, parts.pop(0), clus


@dataclass
class _InputResult:
    """One input's row of the table, its replicates and how they were drawn."""

    name: str
    row: dict
    boot: np.ndarray
    null: np.ndarray
    labels: list
    boot_scheme: str
    null_scheme: str
    notes: list[str]
    few_items: bool = False  # fewer than FEW_ITEMS effective items behind the interval
    units: tuple[float, float] = (np.inf, np.inf)  # (G, df) of the expanded interval
    se: float | None = None  # studentized: the estimate's standard error
    boot_se: np.ndarray | None = None  # ... and the replicates'


def _analyse_input(out: _Output, part: _Partition, clus: _Clusters | None, plan: _Plan, bar,
                   fallback: list[str]) -> _InputResult:
    """Estimate, bootstrap interval and permutation null of one input."""
    # "auto": rows independent -> unstratified (partition sizes vary, as they do between
    # samples when each row's level is random); clustered -> items resampled within the
    # levels of an item-level input (items per level are fixed by the design) and whole
    # items otherwise. Measured coverage behind the choice: docs/methods_w2.md.
    stratified = plan.bootstrap == "stratified" or (plan.bootstrap == "auto"
                                                    and clus is not None)
    est = (_RowEstimator if out.kind == "continuous" else _TableEstimator)(
        out, part, clus, stratified)
    xi, var = est.point()
    iota = float(xi / (2.0 * var))
    ss = np.random.SeedSequence([plan.seed, zlib.crc32(part.name.encode())])
    rng_boot, rng_perm, rng_jack = (np.random.default_rng(s) for s in ss.spawn(3))
    step = est.chunk()
    studentized = plan.ci == "studentized"
    if studentized and not getattr(est, "studentizable", False):
        raise ValueError(
            f"ci='studentized' needs a 0/1 output (its standard error is the closed-form "
            f"gradient of iota); output {out.name!r} is {out.kind}. Use ci='bca' or "
            "ci='percentile'.")
    boot_se = None
    if studentized:
        boot, boot_se = _replicates(est.boot, plan.n_boot, step, rng_boot, bar, with_se=True)
    else:
        boot = _replicates(est.boot, plan.n_boot, step, rng_boot, bar)
    null = _replicates(est.perm, plan.n_perm, step, rng_perm, bar)
    units = _bootstrap_units(out, part, clus, est)
    ci_low, ci_high = _interval(est, iota, boot, boot_se, part.name, plan, rng_jack, fallback,
                                units)
    null_mean = null_q95 = p_value = corrected = np.nan
    if plan.n_perm:
        nl = null[np.isfinite(null)]
        null_mean = float(nl.mean())
        null_q95 = float(np.quantile(nl, 0.95))
        corrected = max(iota - null_mean, 0.0)
        p_value = (1.0 + np.sum(nl >= iota - 1e-12)) / (len(nl) + 1.0)
    distinguishable = bool(p_value <= NULL_LEVEL) if plan.n_perm else pd.NA
    notes = []
    eff = _effective_items(out, part, clus, est.lab)
    few = eff is not None and eff < FEW_ITEMS and plan.n_boot > 0
    if few:
        where = " in its smallest level" if est.lab is not None else ""
        notes.append(
            f"too few effective items for the bootstrap interval: {eff:.1f}{where} (Kish's "
            f"effective number; below {FEW_ITEMS} the {plan.conf:.0%} interval may be too "
            "narrow, docs/methods_w2.md)")
        warnings.warn(f"input {part.name!r}: {notes[-1]}", RuntimeWarning,
                      stacklevel=3)  # the caller of w2_sensitivity
    if plan.n_perm and not distinguishable:
        notes.append(
            f"not distinguishable from its permutation null (p = {p_value:.3g}; null "
            f"95% quantile {null_q95:.3g}{_SCHEME_WORDS[est.scheme]})")
    if plan.n_boot and np.isfinite(ci_low) and not ci_low <= iota <= ci_high:
        notes.append(
            f"estimate {iota:.3g} outside its own {plan.conf:.0%} CI [{ci_low:.3g}, "
            f"{ci_high:.3g}]: the estimator's bias is large relative to its spread; "
            "read iota_corrected and p_value")
    row = {
        "input": part.name, "n_partitions": part.n_cells,
        "xi": float(xi) * out.scale2, "iota": iota,
        "ci_low": float(ci_low), "ci_high": float(ci_high),
        "null_mean": null_mean, "null_q95": null_q95,
        "iota_corrected": corrected, "p_value": p_value,
        "distinguishable": distinguishable, "note": "; ".join(notes),
    }
    se = float(est.se()[0]) if studentized else None
    return _InputResult(part.name, row, boot, null, part.labels, est.boot_scheme, est.scheme,
                        notes, few, units, se, boot_se)


def _bootstrap_units(out: _Output, part: _Partition, clus: _Clusters | None, est
                     ) -> tuple[float, float]:
    """``(G, df)`` of :func:`~.intervals.expansion` for this input's bootstrap: the fewest
    units (items, or rows without clusters) in a stratum it resamples within, and the
    effective number of units (Kish) less the strata."""
    from ..counts import effective_clusters

    if clus is not None:
        sizes = np.bincount(clus.codes, weights=out.w, minlength=clus.n)
        per_stratum = np.diff(est.sstarts)
        eff = effective_clusters(sizes)
    else:
        per_stratum = (np.bincount(part.codes, weights=out.w, minlength=part.n_cells)
                       if est.stratified else np.array([out.n]))
        eff = float(out.n)
    per_stratum = per_stratum[per_stratum > 0]
    return float(per_stratum.min()), eff - len(per_stratum)


def _effective_items(out: _Output, part: _Partition, clus: _Clusters | None,
                     lab: np.ndarray | None) -> float | None:
    """Kish's effective number of items behind an input's interval: over all items for a
    row-level input, in the level with the fewest for an item-level one (``lab``: each
    item's level); None without clusters."""
    if clus is None:
        return None
    from ..counts import effective_clusters

    sizes = np.bincount(clus.codes, weights=out.w, minlength=clus.n)
    if lab is None:
        return effective_clusters(sizes)
    return min(effective_clusters(sizes[lab == c]) for c in np.unique(lab))


def _interval(est, iota: float, boot: np.ndarray, boot_se: np.ndarray | None, name: str,
              plan: _Plan, rng_jack: np.random.Generator, fallback: list[str],
              units: tuple[float, float]) -> tuple[float, float]:
    """The ``ci`` interval of one input from its bootstrap replicates (NaN without any);
    when the chosen interval does not exist (infinite bias correction, zero standard
    error) the percentile interval is used and the input named in ``fallback``."""
    if not plan.n_boot:
        return np.nan, np.nan
    ok = np.isfinite(boot)
    if not ok.all():
        warnings.warn(
            f"input {name!r}: {int((~ok).sum())} of {plan.n_boot} bootstrap replicates "
            "had a constant output (Var = 0) and were left out of the CI.",
            RuntimeWarning, stacklevel=4,  # the caller of w2_sensitivity
        )
    bt = boot[ok]
    got = None
    if plan.ci == "expanded":
        got = expanded_interval(bt, plan.conf, expansion(*units, plan.conf))
    elif plan.ci == "bc":
        got = bc_interval(iota, bt, plan.conf)
    elif plan.ci == "bca":
        jx, jv, mult = est.jackknife(rng_jack)
        got = bca_interval(iota, bt, _iota(jx, jv), mult, plan.conf)
    elif plan.ci == "studentized":
        got = studentized_interval(iota, float(est.se()[0]), bt, boot_se[ok], plan.conf)
        if got is not None:  # iota lies in [0, 1]
            got = (max(got[0], 0.0), min(got[1], 1.0))
    if got is None:
        if plan.ci != "percentile":
            fallback.append(name)
        got = percentile_interval(bt, plan.conf)
    return got
