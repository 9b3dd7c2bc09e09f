"""Counts: the one home for collapsing a response table to binomial counts.

Every analysis in refusalstats needs only sufficient statistics: the number of rows
(``n``) and of refusals (``refusals``) per covariate pattern, and, for cluster-robust
inference, per cluster x pattern. :func:`collapse` computes that counts table from any
source :func:`refusalstats.sources.source_of` recognises (a DataFrame, a CSV/JSONL file,
a Parquet file, a folder of shards, a glob, a generation run directory, a list), reading
only the columns it needs, one record batch at a time: memory grows with the number of
distinct patterns, never with the number of rows.

The vocabulary is fixed: key columns, then ``n`` (rows, int64) and ``refusals`` (sum of
the 0/1 response, int64). ``rs.logit("refusals ~ ...", counts, trials="n")`` fits it;
the fit equals the fit on the rows (the binomial likelihood of a pattern is the product
of its Bernoulli likelihoods). docs/scale.md shows how to compute the same table with
DuckDB SQL, Dask or Spark.

:func:`resolve_cluster` is the one ``cluster="auto"`` rule, for DataFrames and streamed
sources alike: ``item_id`` when the table has it and some item id repeats. It always says
what it did (a :class:`~refusalstats.ClusterNote`): the column, the number of clusters
and the effective number of clusters; or, when it treats rows as independent, why, and
which columns look like item ids with the ``cluster=`` to pass.

Engine: pyarrow datasets (fragment by fragment, record batch by batch), with the
per-batch group-by done by dictionary codes and ``numpy.bincount``; the measurements
behind that choice (against DuckDB's ``GROUP BY`` over ``read_parquet``) are in
benchmarks/README.md ("Scale").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .sources import Source, source_batches, source_of

__all__ = [
    "AUTO_CLUSTER_COLUMN",
    "N_COLUMN",
    "REFUSALS_COLUMN",
    "ClusterChoice",
    "ClusterNote",
    "choose_cluster",
    "collapse",
    "effective_clusters",
    "one_way_cluster",
    "resolve_cluster",
    "row_patterns",
]

#: Names of the count columns :func:`collapse` adds (the one vocabulary of counts).
N_COLUMN = "n"
REFUSALS_COLUMN = "refusals"

#: The column ``cluster="auto"`` looks for.
AUTO_CLUSTER_COLUMN = "item_id"

_BATCH_ROWS = 1 << 18  # rows per record batch (memory ~ batch x projected columns)
_COMPACT_ROWS = 1 << 16  # partial count lines buffered before they are merged (~3 MB)

#: Design columns that are never item ids, whatever their values do.
_DESIGN_COLUMNS = ("model", "task", "persona", "prompt", "refusal", "setting", "persona_group",
                   "response_type", "gold_label", "predicted_label", "finish_reason",
                   "n_new_tokens", "response", "prompt_text", "system_text")


class ClusterNote(UserWarning):
    """One-line note naming what ``cluster="auto"`` did.

    It always comes with ``"auto"``: the column chosen, its number of clusters and the
    effective number of clusters; or that rows are treated as independent, with the
    columns that look like item ids. Silence it with
    ``warnings.simplefilter("ignore", rs.ClusterNote)``, or pass ``cluster="item_id"``
    (or ``cluster=None``) explicitly.
    """


# --------------------------------------------------------------------------- cluster rule
def effective_clusters(sizes) -> float:
    """Kish's effective number of clusters, ``(sum m)^2 / sum m^2``, of cluster sizes ``m``.

    Equal sizes give the number of clusters; a few large clusters among many small ones
    give about the number of large ones (the precision of a pooled rate is that of so
    many equal items when answers within an item agree).

    Parameters
    ----------
    sizes : array-like of int
        Rows per cluster.

    Returns
    -------
    float

    Examples
    --------
    >>> effective_clusters([10, 10, 10, 10])
    4.0
    >>> round(effective_clusters([200, 2, 2, 2]), 2)
    1.06
    """
    m = np.asarray(sizes, dtype=float)
    m = m[m > 0]
    return float(m.sum() ** 2 / (m**2).sum()) if len(m) else 0.0


def _id_like(name: str) -> bool:
    low = name.lower()
    if low in _DESIGN_COLUMNS:
        return False
    return (low.endswith(("_id", "_idx")) or low in ("id", "item", "question", "prompt_index")
            or low.startswith("item"))


def _candidates(src: Source, columns: list[str], refusal: str) -> list[tuple[str, int, float]]:
    """Columns that look like item ids: an id-like name, values that repeat but are not
    all one. (name, clusters, mean rows per cluster), most clusters first."""
    found = []
    names = [c for c in columns if c != AUTO_CLUSTER_COLUMN and c != refusal and _id_like(c)]
    for c in names[:8]:
        try:
            if src.frame is not None:
                col = src.frame[c]
                if col.isna().any():
                    continue
                sizes = col.value_counts(sort=False).to_numpy()
            else:
                sizes = _sizes(src, c, refusal)
        except (ValueError, TypeError, KeyError):
            continue
        if 1 < len(sizes) < sizes.sum():
            found.append((c, len(sizes), float(sizes.sum() / len(sizes))))
    return sorted(found, key=lambda t: -t[1])


def _sizes(src: Source, column: str, refusal: str) -> np.ndarray:
    """Rows per value of ``column`` of a streamed source (one pass over that column)."""
    acc = _Accumulator([_Levels(column, hint=", or pass cluster=None for independent rows")])
    for batch, path in source_batches(src, [column], _BATCH_ROWS, where="cluster='auto'"):
        if batch.num_rows == 0:
            continue
        idx, lut = _local_codes(batch.column(column), acc.levels[0], path)
        n = np.bincount(idx, minlength=len(lut))
        present = np.flatnonzero(n)
        acc.add([lut[present]], n[present].astype(np.int64), np.zeros(len(present), np.int64))
    acc.compact()
    return acc.n


#: The analyses where a list of cluster columns means two-way clustering (Cameron,
#: Gelbach & Miller 2011): a list means that, or is refused, everywhere.
TWO_WAY_ANALYSES = ("refusal_rates", "persona_effect", "logit")


def one_way_cluster(cluster, *, where: str, unit: str = "cluster"):
    """``cluster`` for an analysis with one-way clustering only: a list of columns refused.

    A list of cluster columns means two-way clustering wherever refusalstats takes one
    (:data:`TWO_WAY_ANALYSES`); an analysis without a two-way form refuses it rather than
    read it as something else (e.g. one cluster per combination of the columns), saying
    how to make a combined key column when that is what was meant. A one-element list is
    its column.

    Parameters
    ----------
    cluster : "auto", str, list of str or None
        What the caller passed.
    where : str
        The analysis, for the message.
    unit : str
        What the analysis calls a cluster (``"block"`` for Cochran's Q).

    Returns
    -------
    "auto", str or None

    Raises
    ------
    ValueError
        ``cluster`` names two or more columns.

    Examples
    --------
    >>> one_way_cluster(["item_id"], where="disparity")
    'item_id'
    """
    if not isinstance(cluster, (list, tuple)):
        return cluster
    cols = list(cluster)
    if len(cols) == 1 and isinstance(cols[0], str):
        return cols[0]
    if not cols or not all(isinstance(c, str) for c in cols):
        raise TypeError(f"{where}: cluster must be 'auto', None or a column name; got {cluster!r}")
    key = "_".join(cols)
    parts = " + '|' + ".join(f"df[{c!r}].astype(str)" for c in cols)
    raise ValueError(
        f"{where}: cluster={cols!r} names {len(cols)} columns. A list of cluster columns means "
        f"two-way clustering (as in {', '.join(TWO_WAY_ANALYSES)}), which {where} does not "
        f"have: it takes one {unit} column. To use each combination of {' and '.join(map(repr, cols))} "
        f"as one {unit}, make a key column, df[{key!r}] = {parts}, and pass cluster={key!r} "
        "(a Parquet source: rs.read_responses(path) first)"
        + (f"; or, when the other columns are nested in one, pass that coarser column alone "
           f"(e.g. cluster={cols[0]!r})" if unit == "cluster" else ""))


@dataclass(frozen=True)
class ClusterChoice:
    """What a ``cluster=`` argument resolved to (:func:`choose_cluster`).

    Attributes
    ----------
    column : str, list of str or None
        The column(s) to cluster by; None for independent rows.
    n_clusters : int or None
        Number of clusters (``"auto"``, or when counted).
    effective : float or None
        Kish's effective number of clusters (:func:`effective_clusters`).
    note : str
        The sentence of the :class:`ClusterNote` (``"auto"``); "" for an explicit choice.
    candidates : list of str
        Columns that look like item ids when ``"auto"`` found none.
    """

    column: str | list[str] | None
    n_clusters: int | None = None
    effective: float | None = None
    note: str = ""
    candidates: list[str] = field(default_factory=list)


def resolve_cluster(
    data,
    cluster: str | Sequence[str] | None,
    *,
    where: str = "",
    note: bool = True,
    refusal: str = "refusal",
) -> str | list[str] | None:
    """The column(s) a ``cluster=`` argument means for a table (see :func:`choose_cluster`).

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        The table or any source.
    cluster : "auto", str, list of str or None
        As :func:`choose_cluster` takes it.
    where : str
        The calling function, for messages.
    note : bool
        Emit the :class:`ClusterNote` for ``"auto"``.
    refusal : str
        The response column.

    Returns
    -------
    The column (or list of columns) to cluster by, or ``None``.
    """
    return choose_cluster(data, cluster, where=where, note=note, refusal=refusal,
                          stacklevel=5).column


def choose_cluster(
    data,
    cluster: str | Sequence[str] | None,
    *,
    where: str = "",
    note: bool = True,
    refusal: str = "refusal",
    count: bool = False,
    stacklevel: int = 4,
) -> ClusterChoice:
    """Resolve a ``cluster=`` argument against a table: the one ``"auto"`` rule.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        The response table or any source :func:`refusalstats.sources.source_of` takes (a
        streamed source is read for its ``item_id`` column only).
    cluster : "auto", str, list of str or None
        ``"auto"``: ``"item_id"`` when the table has that column and some item id
        repeats (items answered many times), else ``None``. A note
        (:class:`ClusterNote`) always says what ``"auto"`` did: the column, the number
        of clusters and the effective number of clusters (:func:`effective_clusters`);
        or that rows are treated as independent, why, and which columns look like item
        ids (an id-like name such as ``prompt_id`` whose values repeat), with the
        ``cluster=`` to pass. A column name (or list of names) is checked to exist and
        returned as given. ``None`` turns clustering off.
    where : str
        The calling function, for messages (e.g. ``"refusal_rates"``).
    note : bool
        Emit the :class:`ClusterNote` for ``"auto"``.
    refusal : str
        The response column (never a candidate item id).
    count : bool
        Also count the clusters of an explicit ``cluster=`` (one pass over those columns
        of a streamed source); ``"auto"`` always counts.
    stacklevel : int
        Where the note points (the caller's caller by default).

    Returns
    -------
    ClusterChoice
        The column(s), the number and effective number of clusters, the note's text.

    Raises
    ------
    ValueError
        ``"auto"`` finds an ``item_id`` with missing values.
    SchemaError
        A named cluster column is not in the table.

    Examples
    --------
    >>> import pandas as pd, warnings
    >>> df = pd.DataFrame({"item_id": [1, 1, 2, 2], "refusal": [0, 1, 0, 0]})
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     choice = choose_cluster(df, "auto")
    >>> choice.column, choice.n_clusters, choice.effective
    ('item_id', 2, 2.0)
    """
    prefix = f"{where}: " if where else ""
    if cluster is None:
        return ClusterChoice(None)
    auto = isinstance(cluster, str) and cluster == "auto"
    if not auto:
        names = [cluster] if isinstance(cluster, str) else (
            list(cluster) if isinstance(cluster, (list, tuple)) else None)
        if not names or not all(isinstance(c, str) for c in names):
            raise TypeError(
                f"{prefix}cluster must be 'auto', None, a column name or a list of column names; "
                f"got {cluster!r}")
    src = _answered(source_of(data, where=where))
    if src.frame is not None:
        columns = list(map(str, src.frame.columns))
    else:
        from .sources import _dataset

        columns = list(_dataset(list(src.files)).schema.names)
    if not auto:
        missing = [c for c in names if c not in columns]
        if missing:
            from .table import SchemaError

            raise SchemaError([(f"{prefix}cluster column(s) {missing} not in the table; its columns "
                               f"are {columns} (cluster=None treats rows as independent)")])
        if not count:
            return ClusterChoice(cluster)
        if src.frame is not None:
            sizes = src.frame.groupby(names, observed=True, sort=False).size().to_numpy()
        else:
            sizes = _collapse(data, [], names, refusal, where=where)[N_COLUMN].to_numpy()
        return ClusterChoice(cluster, len(sizes), effective_clusters(sizes))
    col = AUTO_CLUSTER_COLUMN
    sizes = None
    if col in columns:
        if src.frame is not None:
            values = src.frame[col]
            if values.isna().any():
                # a partially missing item id cannot define clusters; say so rather than guess
                raise ValueError(
                    f"{prefix}cluster='auto' would cluster by '{col}', but it has "
                    f"{int(values.isna().sum()):,} missing value(s); fill them, or pass "
                    "cluster=None to treat rows as independent")
            sizes = values.value_counts(sort=False).to_numpy()
        else:
            sizes = _sizes(src, col, refusal)
    return _decide_auto(sizes, src, columns, where=where, note=note, refusal=refusal,
                        stacklevel=stacklevel)


def _answered(src: Source) -> Source:
    """A source whose in-memory rows leave out the error rows (``refusal_source ==
    "error"``), as the counts do; streamed sources leave them out as they are read."""
    if src.frame is None:
        return src
    from .table import is_error_row

    err = is_error_row(src.frame)
    if not err.any():
        return src
    return Source(src.kind, src.frame.loc[~err], src.files, src.label)


def _decide_auto(sizes: np.ndarray | None, src: Source, columns: list[str], *, where: str,
                 note: bool, refusal: str, stacklevel: int = 4) -> ClusterChoice:
    """``cluster="auto"`` given the rows per ``item_id`` value (None: no such column)."""
    prefix = f"{where}: " if where else ""
    col = AUTO_CLUSTER_COLUMN
    if sizes is not None and (sizes > 1).any():
        eff = effective_clusters(sizes)
        text = (f"{prefix}clustering by '{col}' ({len(sizes):,} items answered "
                f"{sizes.sum() / len(sizes):.3g} times on average: {len(sizes):,} clusters, "
                f"effective number {eff:,.1f}) as cluster='auto' does; "
                "pass cluster=None for independent rows")
        if note:
            warnings.warn(text, ClusterNote, stacklevel=stacklevel)
        return ClusterChoice(col, len(sizes), eff, text)
    if sizes is not None:
        why = f"'{col}' never repeats (each of its {len(sizes):,} values is one row)"
    else:
        why = f"the table has no '{col}' column"
    cands = _candidates(src, columns, refusal)
    if cands:
        c = cands[0][0]
        look = "; ".join(f"'{n}' ({k:,} values, {r:.3g} rows each)" for n, k, r in cands[:3])
        hint = (f" Column(s) that look like item ids: {look}: pass cluster='{c}' if rows "
                "sharing it are answers to one item.")
    else:
        hint = " No column looks like an item id (an '*_id' name whose values repeat)."
    text = f"{prefix}rows are treated as independent (cluster='auto'), since {why}.{hint}"
    if note:
        warnings.warn(text, ClusterNote, stacklevel=stacklevel)
    return ClusterChoice(None, None, None, text, [c for c, _, _ in cands])


# --------------------------------------------------------------------------- levels
@dataclass
class _Levels:
    """The distinct values of one key column, with a global id per value."""

    name: str
    index: pd.Index | None = None
    categorical: bool | None = None  # dictionary-typed in the source (keeps stored order)
    numeric: bool | None = None
    hint: str = ""  # appended to a missing-value error (e.g. for a cluster column)

    def ids(self, values) -> np.ndarray:
        """Global ids of ``values`` (a pyarrow array of distinct values), adding new ones."""
        vals = values.to_pandas() if hasattr(values, "to_pandas") else pd.Series(values)
        vals = pd.Index(vals)
        if self.index is None:
            self.index = vals.unique()
            return self.index.get_indexer(vals)
        ids = self.index.get_indexer(vals)
        new = ids < 0
        if new.any():
            self.index = self.index.append(vals[new].unique())
            ids = self.index.get_indexer(vals)
        return ids

    def order(self, used: np.ndarray) -> tuple[np.ndarray, pd.Index]:
        """Rank of each global id in the output level order (-1 when unused), and the levels."""
        idx = self.index if self.index is not None else pd.Index([])
        used_ids = np.flatnonzero(used)
        if self.categorical:
            ordered = used_ids  # order of first appearance of the stored dictionaries
        else:
            vals = idx[used_ids]
            if self.numeric:
                ordered = used_ids[np.argsort(np.asarray(vals), kind="stable")]
            else:
                keys = sorted(range(len(vals)), key=lambda i: (str(type(vals[i])), vals[i]))
                ordered = used_ids[np.asarray(keys, dtype=np.int64)]
        rank = np.full(len(idx), -1, dtype=np.int64)
        rank[ordered] = np.arange(len(ordered))
        return rank, idx[ordered]


@dataclass
class _Accumulator:
    """Counts per distinct key (tuple of global level ids), merged batch by batch."""

    levels: list[_Levels]
    codes: list[np.ndarray] = field(default_factory=list)
    n: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    r: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pending: list[tuple[list[np.ndarray], np.ndarray, np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0
    rows: int = 0

    def add(self, codes: list[np.ndarray], n: np.ndarray, r: np.ndarray) -> None:
        self.pending.append((codes, n, r))
        self.pending_rows += len(n)
        self.rows += int(n.sum())
        if self.pending_rows >= max(_COMPACT_ROWS, len(self.n)):
            self.compact()

    def compact(self) -> None:
        if not self.pending:
            return
        k = len(self.levels)
        parts = ([(self.codes, self.n, self.r)] if len(self.n) else []) + self.pending
        sizes = [max(len(lv.index) if lv.index is not None else 0, 1) for lv in self.levels]
        m = sum(len(p[1]) for p in parts)
        n_keys = float(np.prod(np.array(sizes, dtype=float)))
        if k and n_keys <= max(4.0 * m, 2.0**16):
            # a dense key space (e.g. model x item): add each part's counts into one table
            # per key, without concatenating the parts or keeping a key per line
            self.pending, self.pending_rows = [], 0
            self.codes, self.n, self.r = [], self.n[:0], self.r[:0]
            n_tot = np.zeros(int(n_keys))
            r_tot = np.zeros(int(n_keys))
            while parts:
                p_codes, p_n, p_r = parts.pop(0)
                key = (np.ravel_multi_index(p_codes, sizes) if k > 1
                       else np.asarray(p_codes[0], dtype=np.int64))
                n_tot += np.bincount(key, weights=p_n, minlength=int(n_keys))
                r_tot += np.bincount(key, weights=p_r, minlength=int(n_keys))
                del p_codes, p_n, p_r, key
            present = np.flatnonzero(n_tot)  # every line has n >= 1
            self.n = n_tot[present].astype(np.int64)
            del n_tot
            self.r = r_tot[present].astype(np.int64)
            del r_tot
            self.codes = [c.astype(_id_dtype(size)) for c, size in
                          zip(np.unravel_index(present, sizes) if k > 1 else (present,), sizes)]
            return
        codes = [np.concatenate([p[0][j] for p in parts]) for j in range(k)]
        n = np.concatenate([p[1] for p in parts])
        r = np.concatenate([p[2] for p in parts])
        self.pending, self.pending_rows = [], 0
        sizes = [max(len(lv.index) if lv.index is not None else 0, 1) for lv in self.levels]
        del parts
        self.codes, (self.n, self.r) = _reduce(codes, sizes, len(n), [n, r])
        del codes, n, r
        # level ids in the narrowest type that holds them (an item id per line adds up)
        self.codes = [c.astype(_id_dtype(size), copy=False) for c, size in zip(self.codes, sizes)]


def _id_dtype(size: int):
    """The narrowest integer type for ids below ``size``."""
    return np.int8 if size <= 127 else np.int16 if size <= 32767 else np.int32 if size < 2**31 else np.int64


def _reduce(codes: list[np.ndarray], sizes: list[int], m: int,
            weights: list[np.ndarray | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Group ``m`` rows by their code tuples; return each group's codes and weight sums.

    ``weights`` holds one array per sum (None: count rows). Groups come out sorted by
    their codes. A dense key space is counted (``bincount``), a sparse one sorted.
    """
    def sums(key, n_groups):
        return [np.bincount(key, weights=w, minlength=n_groups).astype(np.int64) for w in weights]

    if not codes:
        return [], [np.array([m if w is None else int(np.sum(w))], dtype=np.int64) for w in weights]
    n_keys = float(np.prod(np.array(sizes, dtype=float)))
    if n_keys < 2.0**62:
        key = (np.ravel_multi_index(codes, sizes) if len(codes) > 1
               else np.asarray(codes[0], dtype=np.int64))
        if n_keys <= max(4.0 * m, 2.0**16):
            totals = sums(key, int(n_keys))
            present = np.flatnonzero(totals[0] if weights[0] is None else
                                     np.bincount(key, minlength=int(n_keys)))
            out = [t[present] for t in totals]
        else:
            present, inv = np.unique(key, return_inverse=True)
            out = sums(inv.ravel(), len(present))
        groups = np.unravel_index(present, sizes) if len(codes) > 1 else (present,)
        return [g.astype(np.int64) for g in groups], out
    stacked = np.stack(codes, axis=1)  # pragma: no cover - astronomically many combinations
    uniq, inv = np.unique(stacked, axis=0, return_inverse=True)
    return [uniq[:, j].astype(np.int64) for j in range(len(codes))], sums(inv.ravel(), len(uniq))


# --------------------------------------------------------------------------- checks
def _where(source: str | None) -> str:
    return f" in '{source}'" if source else ""


def _local_codes(arr, lv: _Levels, source: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One key column of a record batch as (dictionary indices, global id of each entry)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    typ = arr.type
    is_dict = pa.types.is_dictionary(typ)
    value_type = typ.value_type if is_dict else typ
    if lv.categorical is None:
        lv.categorical = is_dict
        lv.numeric = (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)
                      or pa.types.is_boolean(value_type) or pa.types.is_decimal(value_type))
    n_missing = arr.null_count
    if pa.types.is_floating(value_type) and not is_dict:
        n_missing += int(pc.sum(pc.is_nan(arr)).as_py() or 0)
    if n_missing:
        raise ValueError(
            f"column '{lv.name}' has {n_missing:,} missing value(s){_where(source)}; drop or fill "
            f"them before collapsing (a pattern with an unknown level cannot be modelled){lv.hint}"
        )
    enc = arr if is_dict else pc.dictionary_encode(arr)
    dictionary = enc.dictionary
    if pa.types.is_floating(dictionary.type) and int(pc.sum(pc.is_nan(dictionary)).as_py() or 0):
        used = np.unique(enc.indices.to_numpy(zero_copy_only=False))
        if pc.any(pc.is_nan(dictionary.take(pa.array(used)))).as_py():
            raise ValueError(f"column '{lv.name}' has missing (NaN) value(s){_where(source)}; drop "
                             "or fill them before collapsing")
    return enc.indices.to_numpy(zero_copy_only=False), lv.ids(dictionary)


def _refusal_values(arr, name: str, source: str | None) -> np.ndarray:
    """The 0/1 response of a record batch as int64, or a SchemaError naming bad values."""
    import pyarrow as pa

    from .table import SchemaError

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    def problem():  # the one 0/1 check's words (table.binary_problem), on the bad batch only
        from .table import binary_problem

        return SchemaError([binary_problem(arr.to_pandas(), name, _where(source),
                                           positions=False)])

    typ = arr.type
    if arr.null_count or not (pa.types.is_boolean(typ) or pa.types.is_integer(typ)
                              or pa.types.is_floating(typ)):
        raise problem()
    if pa.types.is_boolean(typ):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64)
    v = arr.to_numpy(zero_copy_only=False)
    if ((v != 0) & (v != 1)).any():
        raise problem()
    return v.astype(np.int64)


def _add_batch(acc: _Accumulator, batch, keys: list[str], refusal: str, source: str | None) -> None:
    """Count one record batch by its own dictionary codes, then map the (few) groups to
    global level ids: no per-row translation."""
    m = batch.num_rows
    if m == 0:
        return
    y = _refusal_values(batch.column(refusal), refusal, source)
    local = [_local_codes(batch.column(c), lv, source) for c, lv in zip(keys, acc.levels)]
    sizes = [max(len(lut), 1) for _, lut in local]
    n_keys = float(np.prod(np.array(sizes, dtype=float)))
    if local and 2.0 * n_keys <= max(8.0 * m, 2.0**17):
        # one count of (key, response) gives the rows and the refusals of every key
        key = np.ravel_multi_index([idx for idx, _ in local], sizes) if len(local) > 1 else \
            np.asarray(local[0][0], dtype=np.int64)
        key *= 2
        key += y
        both = np.bincount(key, minlength=2 * int(n_keys))
        n_all, r = both[0::2] + both[1::2], both[1::2]
        present = np.flatnonzero(n_all)
        groups = np.unravel_index(present, sizes) if len(local) > 1 else (present,)
        n, r = n_all[present], r[present]
    else:
        groups, (n, r) = _reduce([idx for idx, _ in local], sizes, m, [None, y])
    acc.add([lut[g].astype(_id_dtype(len(lv.index)), copy=False)
             for g, (_, lut), lv in zip(groups, local, acc.levels)], n, r)


# --------------------------------------------------------------------------- collapse
def _check_keys(by, cluster_cols: list[str], refusal: str) -> list[str]:
    if by is None:
        by = []
    elif isinstance(by, str):
        by = [by]
    elif not isinstance(by, (list, tuple)) or not all(isinstance(c, str) for c in by):
        raise TypeError(f"by must be a column name or a list of column names, got {by!r}")
    by = list(by)
    dup = sorted({c for c in by if by.count(c) > 1})
    if dup:
        raise ValueError(f"collapse: by= names column(s) {dup} more than once")
    both = [c for c in cluster_cols if c in by]
    if both:
        raise ValueError(f"collapse: cluster column(s) {both} are also in by=; a cluster column "
                         "is kept as its own key, name it once")
    if refusal in by or refusal in cluster_cols:
        raise ValueError(f"collapse: the response '{refusal}' cannot also be a key column")
    clash = [c for c in (N_COLUMN, REFUSALS_COLUMN) if c in by or c in cluster_cols]
    if clash:
        raise ValueError(f"collapse: key column(s) {clash} clash with the count columns "
                         f"'{N_COLUMN}' and '{REFUSALS_COLUMN}'; rename them first")
    return by


def _cluster_columns(cluster) -> list[str]:
    if cluster is None:
        return []
    if isinstance(cluster, str):
        return [cluster]
    if isinstance(cluster, (list, tuple)) and cluster and all(isinstance(c, str) for c in cluster):
        return list(cluster)
    raise TypeError("cluster must be 'auto', None, a column name or a list of column names; "
                    f"got {cluster!r}")


def _missing_columns(needed: list[str], have: list[str], what: str, advice: str = "") -> None:
    from .table import SchemaError, its_columns

    missing = [c for c in dict.fromkeys(needed) if c not in have]
    if missing:
        raise SchemaError([(f"collapse: column(s) {missing} are not in {what}; "
                           f"{its_columns(have, missing)}{advice}")])


def collapse(
    data: pd.DataFrame | str | Path | Sequence[str | Path],
    by: str | Sequence[str] | None,
    cluster: str | Sequence[str] | None = None,
    refusal: str = "refusal",
    *,
    batch_rows: int = _BATCH_ROWS,
) -> pd.DataFrame:
    """Collapse a response table to binomial counts per unique combination of ``by``.

    The table is read in record batches with only the ``by``, cluster and ``refusal``
    columns projected, so memory grows with the number of distinct key combinations,
    never with the number of rows. Fit the result with
    ``rs.logit("refusals ~ persona + task", counts, trials="n")``.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        The tidy response table, a text table file (CSV, TSV, JSON lines; read by
        :func:`refusalstats.read_responses`), a Parquet file, a folder of Parquet shards (searched
        recursively; files and folders starting with ``.`` or ``_`` are skipped), a glob
        such as ``"runs/*/part-*.parquet"``, or a list of those. A generation run
        directory (``run.json`` + ``shards/``), or a folder of them (``shard-I-of-N``),
        is read from its labelled shards, finished or not (a partial run warns); runs
        whose shards carry no labels are read through their collected
        ``responses.parquet``.
    by : str or list of str
        Key columns (the model's predictors). ``[]`` gives one overall row.
    cluster : None, "auto", str or list of str
        Cluster column(s) to keep as extra keys, so cluster-robust standard errors can
        be computed from the counts (``rs.logit(..., trials="n", cluster="item_id")``).
        ``"auto"``: ``item_id`` when the table has it and some item id repeats (a
        :class:`~refusalstats.ClusterNote` says so), as everywhere in refusalstats.
    refusal : str
        The 0/1 (or True/False) response column.
    batch_rows : int
        Rows per record batch (memory per batch ~ ``batch_rows`` x projected columns).

    Returns
    -------
    DataFrame
        One row per observed combination of ``by`` (+ cluster), ordered as
        ``groupby(..., sort=True, observed=True)`` orders them, with the key columns
        (categorical keys keep their stored level order, other text keys get sorted
        levels — the levels ``logit`` would use — numeric keys stay numeric), ``n``
        (rows, int64) and ``refusals`` (sum of the response, int64).
        ``attrs["collapse"]`` records the source, the keys, the row count and
        ``n_error_rows``: rows of prompts that got no answer (``refusal_source ==
        "error"``, no ``refusal``), left out with a warning as
        :func:`refusalstats.validate` leaves them out.

    Raises
    ------
    SchemaError
        A column that is not in the data (the message lists the data's columns), or
        response values other than 0/1/True/False.
    ValueError
        Missing values in a key column, an empty table, an unreadable file.

    Examples
    --------
    >>> import refusalstats as rs
    >>> counts = rs.collapse(rs.simulate_paper(scale=0.01), by=["model", "task"])
    >>> list(counts.columns)
    ['model', 'task', 'n', 'refusals']
    >>> counts.attrs["collapse"]["rows"]
    20320
    """
    return _collapse(data, by, cluster, refusal, batch_rows=batch_rows, where="collapse")


class _TooManyLines(Exception):
    """Raised by :func:`_collapse` when the counts outgrow ``max_lines`` lines."""


def _collapse(data, by, cluster, refusal: str = "refusal", *, batch_rows: int = _BATCH_ROWS,
              where: str = "collapse", max_lines: int | None = None) -> pd.DataFrame:
    """:func:`collapse`, its messages naming the analysis ``where`` that asked.

    ``max_lines``: stop with :class:`_TooManyLines` as soon as the counts hold more lines
    than that (a caller that falls back to another method for very large key spaces).
    """
    if not isinstance(refusal, str):
        raise TypeError(f"refusal must be a column name, got {refusal!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    if not (cluster is None or isinstance(cluster, str)):
        _cluster_columns(cluster)  # type check first
    src = source_of(data, where=where)
    if src.frame is not None:
        columns = list(map(str, src.frame.columns))
        what = "the table" if src.kind == "frame" else f"the table '{src.label}'"
    else:
        from .sources import _dataset

        columns = list(_dataset(list(src.files)).schema.names)
        what = f"the dataset '{src.label}'"
    by_list = _check_keys(by, [], refusal)
    _missing_columns([*by_list, refusal], columns, what)
    auto = isinstance(cluster, str) and cluster == "auto"
    if auto and src.frame is None and AUTO_CLUSTER_COLUMN in columns:
        # streamed: count by item_id too and decide from those counts (one pass)
        cluster_cols = [AUTO_CLUSTER_COLUMN]
    else:
        auto = False
        resolved = resolve_cluster(src.frame if src.frame is not None else data, cluster,
                                   where=where, refusal=refusal)
        cluster_cols = _cluster_columns(resolved)
    _missing_columns(cluster_cols, columns, what,
                     advice=" (cluster=None treats rows as independent)")
    by_list = _check_keys(by_list, cluster_cols, refusal)
    keys = [*by_list, *cluster_cols]
    acc = _Accumulator([_Levels(c, hint=", or pass cluster=None for independent rows"
                                if c in cluster_cols else "") for c in keys])
    if src.frame is not None and len(src.frame) == 0:
        raise ValueError(f"{where}: the table is empty (0 rows)")
    read: dict = {}
    for batch, path in source_batches(src, [*keys, refusal], batch_rows, where=where, stats=read):
        _add_batch(acc, batch, keys, refusal, path)
        if max_lines is not None and len(acc.n) > max_lines:
            raise _TooManyLines(len(acc.n))
    if max_lines is not None:
        acc.compact()
        if len(acc.n) > max_lines:
            raise _TooManyLines(len(acc.n))
    if acc.rows == 0:
        raise ValueError(f"{where}: {what} is empty (0 rows)")
    acc.compact()
    out = _frame(acc, keys, src.frame)
    if auto:
        sizes = out.groupby(AUTO_CLUSTER_COLUMN, observed=True)[N_COLUMN].sum().to_numpy()
        if _decide_auto(sizes, src, columns, where=where, note=True, refusal=refusal,
                        stacklevel=4).column is None:
            out = _merge_out(out, by_list)
            cluster_cols = []
    out.attrs["collapse"] = {"source": src.label, "kind": src.kind,
                             "by": by_list, "cluster": cluster_cols[0] if len(cluster_cols) == 1
                             else (cluster_cols or None), "rows": int(acc.rows),
                             "n_error_rows": int(read.get("n_error_rows", 0))}
    return out


def _frame(acc: _Accumulator, keys: list[str], data) -> pd.DataFrame:
    """The accumulated counts as a DataFrame in groupby(sort=True, observed=True) order."""
    cols: dict[str, object] = {}
    monotone = True
    for j, (c, lv) in enumerate(zip(keys, acc.levels)):
        size = len(lv.index) if lv.index is not None else 0
        used = np.bincount(acc.codes[j], minlength=size) > 0 if size else np.zeros(0, bool)
        rank, levels = lv.order(used)
        rank = rank.astype(_id_dtype(max(len(levels), 1)))
        monotone = monotone and bool(np.all(np.diff(rank[used]) > 0))
        cols[c] = (rank, levels, lv)
    # the lines come out of the merge sorted by their level ids (first key first); when
    # every key's output order follows its ids, that is already the output order
    if monotone:
        order = None
    else:
        order = np.lexsort([cols[c][0][acc.codes[j]] for j, c in enumerate(keys)][::-1])
    out: dict[str, object] = {}
    for j, c in enumerate(keys):
        rank, levels, lv = cols[c]
        r = rank[acc.codes[j]] if order is None else rank[acc.codes[j][order]]
        if lv.numeric and not lv.categorical:
            values = np.asarray(levels)[r]
            if isinstance(data, pd.DataFrame) and not isinstance(data[c].dtype, pd.CategoricalDtype):
                values = pd.array(values, dtype=data[c].dtype)
            out[c] = values
        else:
            out[c] = pd.Categorical.from_codes(r, categories=pd.Index(levels))
    out[N_COLUMN] = acc.n if order is None else acc.n[order]
    out[REFUSALS_COLUMN] = acc.r if order is None else acc.r[order]
    return pd.DataFrame(out, copy=False)


def _merge_out(counts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Drop the cluster key from a counts table (sum over it), keeping level order."""
    if not by:
        return pd.DataFrame({N_COLUMN: [int(counts[N_COLUMN].sum())],
                             REFUSALS_COLUMN: [int(counts[REFUSALS_COLUMN].sum())]})
    g = counts.groupby(by, observed=True, sort=True)[[N_COLUMN, REFUSALS_COLUMN]].sum()
    return g.reset_index()


# --------------------------------------------------------------------------- row patterns (model fits)
class Collapsed:
    """Unique covariate patterns with binomial counts.

    ``patterns`` holds one row per unique combination of ``columns`` with columns
    ``successes`` (refusals) and ``trials`` (n); ``inverse[i]`` is the pattern of row i
    (computed on first use: a fit without clusters never needs it);
    ``codes[j]`` the integer code (categorical code, or ``pandas.factorize`` number) of
    each pattern's value of ``columns[j]``.
    """

    def __init__(self, patterns: pd.DataFrame, inverse, columns: list[str],
                 codes: list[np.ndarray] | None = None):
        self.patterns = patterns
        self._inverse = inverse  # an array, or a function that computes it
        self.columns = columns
        self.codes = codes  # per column, the code of each pattern's value

    @property
    def inverse(self) -> np.ndarray:
        if callable(self._inverse):
            self._inverse = self._inverse()
        return self._inverse

    @property
    def lazy_inverse(self):
        """``inverse``, or the function that computes it when it was not needed yet."""
        return self._inverse

    @property
    def n_rows(self) -> int:
        return int(self.patterns["trials"].sum())


def _pattern_codes(s: pd.Series) -> tuple[np.ndarray, int, object]:
    """Integer codes of a column (-1 for missing), the number of values, and a function
    giving the column's values (same dtype) for an array of codes."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        dtype = pd.CategoricalDtype(s.dtype.categories)  # unordered, as the design uses it
        return (np.asarray(s.array.codes), len(dtype.categories),
                lambda k: pd.Categorical.from_codes(k, dtype=dtype))
    codes, uniques = pd.factorize(s, sort=False)
    return codes, len(uniques), lambda k: uniques.take(k)


def row_patterns(
    data: pd.DataFrame,
    columns: Iterable[str],
    response: str,
    trials: str | None = None,
    weights: np.ndarray | None = None,
    *,
    prepare=None,
) -> Collapsed:
    """Collapse rows to unique patterns of ``columns`` with (successes, trials), row map kept.

    The in-memory collapse of the model fits (``logit``, ``hierarchical``): unlike
    :func:`collapse` (a counts table from any source) it keeps the pattern of every row
    (``inverse``), takes aggregated input (``trials``) and frequency weights, and can order
    the patterns by prepared factor levels. ``refusalstats.formula.collapse`` is its old name.

    With ``trials`` the response holds counts of successes out of ``data[trials]``
    (already aggregated rows are merged further when they share a pattern). With
    ``weights`` each row counts ``weights[i]`` times (frequency weights).

    Rows are grouped by the integer codes of their columns (categorical codes, or
    ``pandas.factorize``) with ``numpy.bincount`` when the combinations are few, so the
    work per row is a handful of integer operations; the pattern values are built from
    the codes (no row is copied).

    Parameters
    ----------
    data : DataFrame
        The rows.
    columns : iterable of str
        The key columns (the model's variables).
    response : str
        The response column: 0/1 per row, or successes out of ``trials``.
    trials : str, optional
        Column of trials per row (aggregated input); default one per row.
    weights : array, optional
        Frequency weight per row.
    prepare : callable, optional
        Applied to the key columns of the patterns (e.g. ``lambda p: prepare_factors(p,
        columns, reference)``) before the rows are mapped to them: the patterns come
        back prepared and ordered by the prepared codes, as collapsing the prepared rows
        would order them, at the cost of the patterns only.

    Returns
    -------
    Collapsed
        ``patterns``: one row per observed combination of ``columns`` (in the order of
        the combinations' codes), with the key columns (same dtypes as ``data``; a
        categorical keeps all its categories; or as ``prepare`` returns them) and
        ``successes``, ``trials``; ``inverse``: the pattern of each row.

    Raises
    ------
    ValueError
        A missing value in a key column.

    Examples
    --------
    >>> df = pd.DataFrame({"a": list("xxyy"), "refusal": [1, 0, 0, 0]})
    >>> row_patterns(df, ["a"], "refusal").patterns
       a  successes  trials
    0  x        1.0     2.0
    1  y        0.0     2.0
    """
    columns = list(columns)
    n = len(data)
    y = data[response].to_numpy()
    if y.dtype != np.float64 and not (trials is None and weights is None and y.dtype.kind in "biu"):
        y = y.astype(float)
    t = None if trials is None else data[trials].to_numpy(dtype=float)
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != (n,):
            raise ValueError(f"weights must have one value per row ({n}), got shape {w.shape}")
        y = y * w
        t = (np.ones(n) if t is None else t) * w
    if not columns:
        inverse = np.zeros(n, dtype=np.int64)
        patterns = pd.DataFrame({"successes": [float(y.sum())],
                                 "trials": [float(n if t is None else t.sum())]})
        return Collapsed(patterns, inverse, columns)
    codes, sizes, values = [], [], []
    for c in columns:
        k, m, make = _pattern_codes(data[c])
        if k.min(initial=0) < 0:
            raise ValueError(f"column '{c}' has missing values; drop or fill them before fitting")
        codes.append(k)
        sizes.append(max(m, 1))
        values.append(make)
    n_keys = float(np.prod(np.array(sizes, dtype=float)))
    dense = n_keys <= max(4.0 * n, 2.0**20)
    if n_keys >= 2**62:  # pragma: no cover - astronomically many level combinations
        stacked = np.stack([np.asarray(k, dtype=np.int64) for k in codes], axis=1)
        uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
        pattern_codes = [uniq[:, j] for j in range(len(columns))]
        present = None
    else:
        key = _ravel(codes, sizes)
        binary = (t is None and y.dtype.kind in "biu" and 2.0 * n_keys < 2**31
                  and (y.dtype.kind == "b" or (y.min(initial=0) >= 0 and y.max(initial=0) <= 1)))
        if dense and binary:
            # 0/1 rows: one count of (key, response) gives rows and refusals per key
            key *= 2
            key += y
            both = np.bincount(key, minlength=2 * int(n_keys))
            counts, succ_keys = both[0::2] + both[1::2], both[1::2]
            present = np.flatnonzero(counts)
        elif dense:  # the usual all-categorical case: counting instead of sorting
            counts = np.bincount(key, minlength=int(n_keys))
            present = np.flatnonzero(counts)
        else:
            present, inverse = np.unique(key, return_inverse=True)
        pattern_codes = list(np.unravel_index(present, sizes))
    patterns = pd.DataFrame({c: make(np.asarray(pc, dtype=np.intp))
                             for c, make, pc in zip(columns, values, pattern_codes)})
    k = len(patterns)
    order = None
    if prepare is not None:
        patterns = prepare(patterns)
        keys = [np.asarray(patterns[c].cat.codes, dtype=np.int64)
                if isinstance(patterns[c].dtype, pd.CategoricalDtype) else np.asarray(pc, dtype=np.int64)
                for c, pc in zip(columns, pattern_codes)]
        order = np.lexsort(keys[::-1])
        if (order == np.arange(k)).all():
            order = None
        else:
            patterns = patterns.iloc[order].reset_index(drop=True)
            pattern_codes = [np.asarray(pc)[order] for pc in pattern_codes]
    s_pat = None
    if present is not None and dense:
        at = present if order is None else present[order]
        slot = np.full(int(n_keys), -1, dtype=np.int32 if k < 2**31 else np.intp)
        slot[at] = np.arange(k)
        n_pat = counts[at].astype(float)
        if binary:  # key holds 2 key + response: the row -> pattern map only when asked for
            s_pat = succ_keys[at].astype(float)
            inverse = _LazyInverse(np.repeat(slot, 2), key)
        else:
            inverse = slot[key]
    else:
        if order is not None:
            rank = np.empty(k, dtype=np.intp)
            rank[order] = np.arange(k)
            inverse = rank[inverse.ravel()]
        n_pat = None
    if not callable(inverse):
        inverse = inverse.ravel()
        patterns["successes"] = (s_pat if s_pat is not None
                                 else np.bincount(inverse, weights=y, minlength=k).astype(float))
        if t is None:
            patterns["trials"] = n_pat if n_pat is not None else np.bincount(inverse, minlength=k).astype(float)
        else:
            patterns["trials"] = np.bincount(inverse, weights=t, minlength=k)
    else:
        patterns["successes"] = s_pat
        patterns["trials"] = n_pat
    return Collapsed(patterns, inverse, columns, [np.asarray(pc) for pc in pattern_codes])


class _LazyInverse:
    """The pattern of each row, ``slot[key]``, computed when called."""

    def __init__(self, slot: np.ndarray, key: np.ndarray):
        self.slot, self.key = slot, key

    def __call__(self) -> np.ndarray:
        return self.slot[self.key]


def _ravel(codes: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """``np.ravel_multi_index`` of per-row codes in the smallest integer type that holds
    the key (codes of categoricals are int8: the sum is built without int64 copies)."""
    total = int(np.prod(sizes))
    dtype = np.int32 if total < 2**31 else np.int64
    key = codes[0].astype(dtype)
    for k, m in zip(codes[1:], sizes[1:]):
        key *= m
        key += k
    return key
