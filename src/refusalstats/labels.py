"""Human labels for a sample of answers: draw the sample, read the labels back, join them.

The refusal flag of the response table comes from a detector, which makes mistakes.
A few human labels on a random sample of answers let the estimators of
:mod:`refusalstats.ppi` carry the detector's error into every interval. This module is
the bookkeeping around those labels:

* :func:`label_sample` draws a (stratified) random sample of rows to label and records
  each row's sampling probability, with a stable row key;
* :func:`row_key` is that key: a hash of the columns that identify an answer (never of
  the detector's flag), so it survives re-running the detector, reordering or
  re-reading the table;
* :func:`read_labels` reads a labelled sample back (CSV, TSV, JSONL or Parquet) and
  :func:`join_labels` joins it onto the table as a ``human`` column: 0/1 where
  labelled, NaN elsewhere;
* :func:`detector_card` says what the labels show about the detector: its sensitivity
  and specificity per group, and its rates beside the label-corrected ones.

Examples
--------
>>> import refusalstats as rs
>>> df = rs.simulate_paper(scale=0.01, seed=1)
>>> s = rs.label_sample(df, 20, by="model", seed=0)
>>> s["human"] = s["refusal"]           # a stand-in for a person's judgement
>>> t = rs.join_labels(df, s)
>>> int(t["human"].notna().sum())
20
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._validation import check_conf, check_random_state
from ._validation import column_names as _columns
from .intervals import proportion_ci
from .ppi import ppi_rates, response_rows
from .rates import refusal_rates

__all__ = ["IDENTITY_COLUMNS", "detector_card", "join_labels", "label_sample", "read_labels", "row_key"]

#: Columns that identify an answer, hashed (those present) into the stable row key. The
#: refusal flag, human labels and any computed column are left out on purpose.
IDENTITY_COLUMNS = ("model", "task", "item_id", "persona", "prompt", "setting", "response_type",
                    "persona_group", "system_text", "prompt_text", "response")

#: The columns of a label sample shown to the person labelling, when present.
_SHOWN = ("model", "task", "item_id", "persona", "prompt", "setting", "system_text",
          "prompt_text", "response")

KEY = "row_key"
_TRUE = {"1", "1.0", "true", "yes", "y", "refusal", "refused", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "compliance", "complied", "f"}


def row_key(data: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.Series:
    """A stable key per row: a hash of the identifying columns, plus a repeat counter.

    Parameters
    ----------
    data : DataFrame
        The response table.
    columns : list of str, optional
        Columns to hash; default the :data:`IDENTITY_COLUMNS` present in ``data``. A
        table that already has a ``row_key`` column keeps it.

    Returns
    -------
    Series of str
        16 hex digits of pandas' (SipHash) hash of the row's values, then ``-k`` where ``k``
        counts earlier rows with the same values (0 for the first), so duplicated rows
        still get distinct keys in table order. The key does not depend on the
        detector's flag, the row order (except among exact duplicates) or the index.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"model": ["a", "a"], "task": ["t", "t"], "persona": ["p", "q"],
    ...                    "prompt": ["p1", "p1"], "refusal": [0, 1]})
    >>> k = row_key(df)
    >>> bool(k.iloc[0] == row_key(df.iloc[::-1]).iloc[1])
    True
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"row_key needs a DataFrame, got {type(data).__name__}")
    if columns is None and KEY in data.columns:
        keys = data[KEY].astype(str)
        if keys.duplicated().any():
            raise ValueError(f"column {KEY!r} has duplicated keys ({int(keys.duplicated().sum())}); "
                             "drop it to let row_key() hash the identifying columns")
        return keys.rename(KEY)
    cols = [c for c in (IDENTITY_COLUMNS if columns is None else columns) if c in data.columns]
    if columns is not None and len(cols) != len(columns):
        missing = sorted(set(columns) - set(data.columns))
        raise ValueError(f"row_key: column(s) {missing} are not in the table")
    if not cols:
        raise ValueError(
            f"row_key needs at least one identifying column; the table has none of "
            f"{list(IDENTITY_COLUMNS)}. Add an id column (e.g. df['row_key'] = range(len(df)))"
        )
    # values as text (an item id read back from CSV as int or str hashes the same), then
    # pandas' stable SipHash of each row (fixed key; independent of index and dtype)
    text = pd.DataFrame({c: data[c].astype(str).to_numpy() for c in cols})
    h = pd.util.hash_pandas_object(text, index=False).to_numpy()
    digest = np.char.zfill(np.char.mod("%x", h.astype(np.uint64)), 16).astype(object)
    rep = pd.Series(digest).groupby(digest, sort=False).cumcount().to_numpy()
    return pd.Series([f"{d}-{r}" for d, r in zip(digest, rep)], index=data.index, name=KEY)


def _allocate(sizes: pd.Series, n, allocation: str) -> pd.Series:
    """Labels per stratum: proportional (largest remainder), equal, or as given."""
    if isinstance(n, (Mapping, pd.Series)):
        given = pd.Series(dict(n) if isinstance(n, Mapping) else n)
        unknown = [k for k in given.index if k not in sizes.index]
        if unknown:
            raise ValueError(f"n names strata {unknown[:5]} that are not in the table "
                             f"(strata: {list(sizes.index)[:10]})")
        out = given.reindex(sizes.index, fill_value=0).astype(int)
    else:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer or a mapping stratum -> n, got {n!r}")
        if allocation == "per_stratum":
            out = pd.Series(int(n), index=sizes.index)
        elif allocation == "proportional":
            share = sizes / sizes.sum() * int(n)
            out = np.floor(share).astype(int)
            rest = int(n) - int(out.sum())
            order = (share - out).sort_values(ascending=False, kind="stable").index[:rest]
            out[order] += 1
        else:
            raise ValueError(f"allocation must be 'proportional' or 'per_stratum', got {allocation!r}")
    if (out < 0).any():
        raise ValueError("n per stratum must be non-negative")
    over = out[out > sizes]
    if len(over):
        raise ValueError(
            f"asked for more labels than rows in {len(over)} stratum(s), e.g. {over.index[0]!r}: "
            f"{int(over.iloc[0])} > {int(sizes[over.index[0]])} rows; lower n"
        )
    return out


def label_sample(
    data: pd.DataFrame,
    n: int | Mapping | pd.Series,
    by: str | Sequence[str] | None = None,
    *,
    seed: int | np.random.Generator | None = 0,
    allocation: str = "proportional",
    columns: Sequence[str] | None = None,
    label: str = "human",
) -> pd.DataFrame:
    """Draw a (stratified) simple random sample of answers for people to label.

    Parameters
    ----------
    data : DataFrame
        The response table.
    n : int or mapping
        How many answers to label: a total, split over the strata by ``allocation``; or
        a mapping (or Series) stratum -> count (a stratum of several ``by`` columns is a
        tuple). :func:`refusalstats.ppi.label_budget` suggests counts for a target
        interval width.
    by : str or list of str, optional
        Strata (e.g. ``"model"``): rows are drawn without replacement within each
        stratum. Pass the same columns as ``strata=`` to the estimators of
        :mod:`refusalstats.ppi` when the sampling fractions differ between strata.
    seed : int, None or numpy.random.Generator
        Randomness of the draw (default 0: reproducible).
    allocation : {"proportional", "per_stratum"}
        With an integer ``n``: ``"proportional"`` splits it over the strata in
        proportion to their rows (largest remainders); ``"per_stratum"`` draws ``n``
        from every stratum.
    columns : list of str, optional
        Extra columns to carry into the sample (default: the identifying columns
        the table has, the detector's ``refusal`` flag and ``by``).
    label : str
        Name of the empty column for the labels (default ``"human"``; 1 = refusal).

    Returns
    -------
    DataFrame
        One row per sampled answer, in random order: ``row_key`` (see
        :func:`row_key`), the shown columns, ``stratum_size`` (rows in the stratum),
        ``sampling_prob`` (labels / rows of the stratum) and an empty ``label`` column.
        ``attrs`` records ``by``, ``seed`` and the counts per stratum.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> s = rs.label_sample(df, 10, by="model", allocation="per_stratum", seed=3)
    >>> s.groupby("model", observed=True).size().unique().tolist()
    [10]
    """
    from .rates import _columns

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"label_sample needs a DataFrame (read a file with rs.read_table first), "
                        f"got {type(data).__name__}")
    if not len(data):
        raise ValueError("label_sample: the table is empty")
    by = _columns(by, "by")
    missing = [c for c in by if c not in data.columns]
    if missing:
        raise ValueError(f"label_sample: strata column(s) {missing} are not in the table "
                         f"(columns: {list(map(str, data.columns))})")
    if label in data.columns:
        raise ValueError(f"the table already has a {label!r} column; choose another label= name")
    rng = check_random_state(seed)
    keys = row_key(data)
    pos = np.arange(len(data))
    if by:
        strata = pd.MultiIndex.from_frame(data[by].astype(object)) if len(by) > 1 else \
            pd.Index(data[by[0]].astype(object))
    else:
        strata = pd.Index(np.zeros(len(data), dtype=int))
    codes, levels = pd.factorize(strata, sort=True)
    sizes = pd.Series(np.bincount(codes, minlength=len(levels)), index=levels if by else [0])
    counts = _allocate(sizes, n, allocation)
    chosen, prob, size = [], [], []
    for j, lev in enumerate(sizes.index):
        k = int(counts[lev])
        if k == 0:
            continue
        members = pos[codes == j]
        pick = rng.choice(members, size=k, replace=False)
        chosen.append(pick)
        prob.append(np.full(k, k / len(members)))
        size.append(np.full(k, len(members)))
    chosen = np.concatenate(chosen)
    order = rng.permutation(len(chosen))
    rows = chosen[order]
    shown = [c for c in (_SHOWN if columns is None else columns) if c in data.columns]
    extra = [c for c in ["refusal", *by] if c in data.columns and c not in shown]
    out = data.iloc[rows][[*shown, *extra]].reset_index(drop=True)
    out.insert(0, KEY, keys.to_numpy()[rows])
    out["stratum_size"] = np.concatenate(size)[order].astype("int64")
    out["sampling_prob"] = np.concatenate(prob)[order]
    out[label] = pd.array([pd.NA] * len(out), dtype="Int8")
    out.attrs = {"label_sample": {"by": by, "label": label,
                                  "n": {str(k): int(v) for k, v in counts.items()}}}
    return out


def _as_label(values: pd.Series, label: str) -> pd.Series:
    """0/1/True/False/yes/no/refusal/compliance (any case) -> float 0/1, blank -> NaN."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    if pd.api.types.is_numeric_dtype(values):
        v = values.astype(float)
        bad = v.notna() & ~v.isin([0.0, 1.0])
    else:
        text = values.astype(object).map(lambda x: None if pd.isna(x) else str(x).strip().lower())
        text = text.replace("", None)
        v = pd.Series(np.where(text.isin(_TRUE), 1.0, np.where(text.isin(_FALSE), 0.0, np.nan)),
                      index=values.index)
        bad = text.notna() & v.isna()
    if bad.any():
        ex = pd.unique(values[bad].astype(str))[:5].tolist()
        raise ValueError(
            f"labels in column {label!r} must be 0/1 (1 = refusal), True/False, yes/no or "
            f"refusal/compliance, blank where not labelled; found {ex} in {int(bad.sum())} row(s)"
        )
    return v


def read_labels(path: str | Path, label: str = "human") -> pd.DataFrame:
    """Read a labelled sample back (the file :func:`label_sample` wrote, filled in).

    Parameters
    ----------
    path : path
        CSV, TSV, JSONL, JSON or Parquet file with a ``row_key`` column and the label
        column.
    label : str
        The label column (default ``"human"``).

    Returns
    -------
    DataFrame
        ``row_key`` and ``label`` (float 0/1, NaN where left blank), plus
        ``sampling_prob`` when the file has it.

    Examples
    --------
    >>> labels = read_labels("to_label.csv")  # doctest: +SKIP
    """
    from .table import read_table

    raw = read_table(path, dtype={KEY: str})
    return _label_frame(raw, label, where=str(path))


def _label_frame(raw: pd.DataFrame, label: str, where: str) -> pd.DataFrame:
    missing = [c for c in (KEY, label) if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{where}: the label file needs columns {[KEY, label]}; missing {missing} (it has "
            f"{list(map(str, raw.columns))[:12]}). Label the file written by label-sample, or "
            f"pass label= the name of your label column"
        )
    out = pd.DataFrame({KEY: raw[KEY].astype(str).to_numpy(),
                        label: _as_label(raw[label], label).to_numpy()})
    if "sampling_prob" in raw.columns:
        out["sampling_prob"] = raw["sampling_prob"].to_numpy(dtype=float)
    dup = out[out[KEY].duplicated(keep=False)]
    if len(dup):
        conflict = dup.groupby(KEY)[label].nunique(dropna=True)
        conflict = conflict[conflict > 1]
        if len(conflict):
            raise ValueError(f"{where}: {len(conflict)} row key(s) carry different labels, e.g. "
                             f"{conflict.index[0]!r}; keep one label per answer")
        out = out.drop_duplicates(KEY)
    return out


def join_labels(
    data: pd.DataFrame,
    labels: pd.DataFrame | str | Path,
    *,
    label: str = "human",
    on: str = KEY,
) -> pd.DataFrame:
    """Join human labels onto the response table by the stable row key.

    Parameters
    ----------
    data : DataFrame
        The response table the sample was drawn from.
    labels : DataFrame or path
        The labelled sample (``row_key`` and the label column), or a file for
        :func:`read_labels`.
    label : str
        The label column (default ``"human"``); it becomes a float column of ``data``:
        0/1 where labelled, NaN elsewhere.
    on : str
        The key column (default ``"row_key"``).

    Returns
    -------
    DataFrame
        A copy of ``data`` with the label column. ``attrs["labels"]`` counts the labels
        joined.

    Raises
    ------
    ValueError
        When a label's key matches no row (labels from another table, or a table that
        changed its identifying columns), or ``data`` already has the label column.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> s = rs.label_sample(df, 5, seed=0); s["human"] = 1
    >>> float(rs.join_labels(df, s)["human"].sum())
    5.0
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"join_labels needs the response table as a DataFrame, got {type(data).__name__}")
    if on != KEY:
        raise ValueError(f"join_labels joins on {KEY!r} (the key label_sample writes), got on={on!r}")
    if label in data.columns:
        raise ValueError(f"the table already has a {label!r} column; drop it or pass another label=")
    lab = read_labels(labels, label) if isinstance(labels, (str, Path)) else \
        _label_frame(labels, label, where="labels")
    keys = row_key(data)
    pos = pd.Series(np.arange(len(keys)), index=keys.to_numpy())
    found = lab[KEY].isin(pos.index)
    if not found.all():
        ex = lab.loc[~found, KEY].head(3).tolist()
        raise ValueError(
            f"{int((~found).sum())} of {len(lab)} label key(s) match no row of the table (e.g. "
            f"{ex}): the labels come from another table, or its identifying columns "
            f"({[c for c in IDENTITY_COLUMNS if c in data.columns]}) changed since label_sample"
        )
    out = data.copy()
    col = np.full(len(out), np.nan)
    col[pos[lab[KEY]].to_numpy()] = lab[label].to_numpy(dtype=float)
    out[label] = col
    out.attrs = dict(data.attrs)
    out.attrs["labels"] = {"column": label, "n_labelled": int(np.isfinite(col).sum())}
    return out


def detector_card(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = "model",
    *,
    labels: str = "human",
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    strata: str | Sequence[str] | None = None,
    refusal: str = "refusal",
) -> pd.DataFrame:
    """The detector's report card: its errors per group and what they do to the rates.

    Parameters
    ----------
    data : DataFrame
        The response table with the detector's flag and human labels on a sample.
    by : str or list of str
        Groups (default ``"model"``; e.g. ``["model", "task"]``).
    labels, conf, cluster, strata, refusal
        As in :func:`refusalstats.ppi_rates`.

    Returns
    -------
    DataFrame
        ``by`` columns; ``n``, ``n_labelled``; ``sensitivity`` and ``specificity`` with
        Wilson intervals (``*_ci_low``, ``*_ci_high``; from the labelled rows of the
        group); ``rate_detector`` with its (clustered) interval ``detector_ci_low``,
        ``detector_ci_high`` (what the package reports without labels); the corrected
        ``rate`` with ``ci_low``, ``ci_high`` (:func:`refusalstats.ppi_rates`); ``shift`` (corrected
        minus raw); ``changed`` (True where the corrected estimate falls outside the raw
        interval: the raw finding does not hold); ``rank_detector`` and ``rank`` (1 =
        highest rate) so reordered groups show.

    Examples
    --------
    >>> import numpy as np, refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> df["human"] = np.where(np.arange(len(df)) % 10 == 0, df["refusal"], np.nan)
    >>> card = rs.detector_card(df, by="task", cluster=None)
    >>> bool(card["changed"].any())
    False
    """
    data = response_rows(data, "detector_card")
    by = _columns(by, "by")
    conf = check_conf(conf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cor = ppi_rates(data, by, labels=labels, conf=conf, cluster=cluster, strata=strata, refusal=refusal)
    clusters = cor.attrs["cluster"] or None
    raw = refusal_rates(data[[*by, refusal, *(clusters or [])]], by or None, conf=conf,
                        cluster=clusters, refusal=refusal)
    h = data[labels].to_numpy(dtype=float)
    lab = data.loc[~np.isnan(h), [*by, refusal]].assign(_h=h[~np.isnan(h)])
    lab["_tp"] = (lab["_h"] == 1) & (lab[refusal] == 1)
    lab["_tn"] = (lab["_h"] == 0) & (lab[refusal] == 0)
    lab["_pos"] = lab["_h"] == 1
    lab["_neg"] = lab["_h"] == 0
    agg = (lab.groupby(by, observed=True)[["_tp", "_tn", "_pos", "_neg"]].sum() if by else
           lab[["_tp", "_tn", "_pos", "_neg"]].sum().to_frame().T)
    out = cor[[*by, "n", "n_labelled"]].copy()
    keys = out[by].set_index(by).index if by else pd.RangeIndex(1)
    agg = agg.reindex(keys, fill_value=0) if by else agg
    for name, k, m in (("sensitivity", "_tp", "_pos"), ("specificity", "_tn", "_neg")):
        kk, mm = agg[k].to_numpy(float), agg[m].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = kk / mm
        lo, hi = proportion_ci(kk.astype(int), np.maximum(mm, 1).astype(int), "wilson", conf)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = np.where(mm > 0, lo, np.nan), np.where(mm > 0, hi, np.nan)
    out["rate_detector"] = raw["rate"].to_numpy()
    out["detector_ci_low"] = raw["ci_low"].to_numpy()
    out["detector_ci_high"] = raw["ci_high"].to_numpy()
    out["rate"] = cor["rate"].to_numpy()
    out["ci_low"] = cor["ci_low"].to_numpy()
    out["ci_high"] = cor["ci_high"].to_numpy()
    out["shift"] = out["rate"] - out["rate_detector"]
    out["changed"] = (out["rate"] < out["detector_ci_low"]) | (out["rate"] > out["detector_ci_high"])
    out["rank_detector"] = out["rate_detector"].rank(ascending=False, method="min").astype("int64")
    out["rank"] = out["rate"].rank(ascending=False, method="min").astype("Int64")
    out.attrs.update(conf=conf, labels=labels, cluster=cor.attrs["cluster"], strata=cor.attrs["strata"])
    return out
