"""Streaming aggregation of response tables into binomial counts.

Every model in refusalstats needs only sufficient statistics: the number of rows
(``n``) and of refusals (``refusals``) per covariate pattern, and, for cluster-robust
inference, per cluster x pattern. :func:`collapse` computes that counts table from a
DataFrame, a Parquet file, a directory of Parquet shards (searched recursively) or a
glob, reading only the columns it needs, one record batch at a time: memory grows
with the number of distinct patterns, never with the number of rows.

The counts table is what ``rs.logit("refusals ~ ...", counts, trials="n")`` fits;
the fit equals the fit on the rows (the binomial likelihood of a pattern is the
product of its Bernoulli likelihoods). docs/scale.md shows how to compute the same
table with DuckDB SQL, Dask or Spark.

Engine: pyarrow datasets (fragment by fragment, record batch by batch), with the
per-batch group-by done by dictionary codes and ``numpy.bincount``; the measurements
behind that choice (against DuckDB's ``GROUP BY`` over ``read_parquet``) are in
benchmarks/README.md ("Scale").
"""

from __future__ import annotations

import glob as _glob
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["cluster_robust_cov", "collapse", "scan_columns"]

#: Names of the count columns :func:`collapse` adds.
N_COLUMN = "n"
REFUSALS_COLUMN = "refusals"

_BATCH_ROWS = 1 << 18  # rows per record batch (memory ~ batch x projected columns)
_COMPACT_ROWS = 1 << 16  # partial count lines buffered before they are merged (~3 MB)


# --------------------------------------------------------------------------- sources
def _parquet_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files behind ``path``: a file, a folder (recursive) or a glob, sorted."""
    if isinstance(path, (list, tuple)):
        files: list[Path] = []
        for p in path:
            files.extend(_parquet_files(p))
        if not files:
            raise FileNotFoundError("the list of paths is empty")
        return list(dict.fromkeys(files))
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted((Path(p) for p in _glob.glob(text, recursive=True)
                        if Path(p).is_file() and not Path(p).name.startswith((".", "_"))), key=str)
        if not files:
            raise FileNotFoundError(f"no file matches the pattern '{text}'")
        return files
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no Parquet file or folder at '{p}'")
    if p.is_file():
        return [p]
    if _is_run_dir(p):
        return _run_dir_files(p, [p])
    found = [f for f in p.rglob("*")
             if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)]
    runs = sorted({f.parent for f in found if f.name == "run.json" and _is_run_dir(f.parent)}, key=str)
    files = sorted((f for f in found if f.suffix.lower() in (".parquet", ".pq")), key=str)
    if runs:
        others = [f for f in files if not any(r in f.parents for r in runs)]
        if others:
            raise ValueError(
                f"'{p}' holds generation run directories ({', '.join(map(str, runs[:3]))}"
                f"{', ...' if len(runs) > 3 else ''}) and other Parquet files (e.g. '{others[0]}'); "
                "name the run directories or the files, so rows are not counted twice")
        return _run_dir_files(p, runs)
    if not files:
        raise FileNotFoundError(f"the folder '{p}' holds no .parquet files (searched recursively)")
    return files


#: Parquet key-value metadata of a shard `refusalstats generate` labelled (see
#: refusalstats.inference.runner.SHARD_METADATA_KEY).
_SHARD_METADATA_KEY = b"refusalstats.shard"
_warned_partial: set[tuple] = set()


def _is_run_dir(p: Path) -> bool:
    """A `refusalstats generate` run directory (``run.json`` with ``shards/`` or prompts)."""
    return (p / "run.json").is_file() and ((p / "shards").is_dir()
                                           or (p / "prompts.parquet").is_file())


def _run_dir_files(where: Path, runs: list[Path]) -> list[Path]:
    """The files to read for generation run directories: their labelled shards.

    ``generate`` writes every shard as a fragment of the tidy table (model, design
    columns, ``refusal``), so a run is read from ``shards/**/part-*.parquet`` directly,
    finished or not, without ``collect``; prompts.parquet and responses.parquet are never
    mixed in. A run whose shards are not all labelled (written before shards were
    labelled, or generated without a detector) is read through its collected
    ``responses.parquet``, or is an error that says to run collect. Shards labelled by
    different detectors are an error too. The rows are counted from the Parquet
    footers: fewer (or more) than prompts x models, as run.json gives them, is a warning
    naming the numbers (once per run state), since a partial run may be analysed but
    never silently. A prompt answered twice cannot be told cheaply while streaming:
    ``refusalstats collect`` is the exactly-once check.
    """
    import json

    import pyarrow.parquet as pq

    files: list[Path] = []
    unlabelled: list[Path] = []
    detectors: dict[str, Path] = {}
    groups: dict[str, dict] = {}  # experiment (prompts fingerprint) -> rows expected and found
    for run in runs:
        parts = sorted((f for f in (run / "shards").rglob("part-*.parquet")
                        if not any(x.startswith((".", "_")) for x in f.relative_to(run).parts)),
                       key=str) if (run / "shards").is_dir() else []
        footers = [pq.read_metadata(f) for f in parts]
        infos = [json.loads((m.metadata or {}).get(_SHARD_METADATA_KEY, b"{}")) for m in footers]
        labelled = bool(parts) and all({"model", "refusal"} <= set(m.schema.names) for m in footers)
        if labelled:
            files.extend(parts)
            for info in infos:
                if info.get("detector") is not None:
                    detectors.setdefault(str(info["detector"]), run)
            n_found = sum(m.num_rows for m in footers)
        elif (run / "responses.parquet").is_file():
            files.append(run / "responses.parquet")
            n_found = pq.read_metadata(run / "responses.parquet").num_rows
        else:
            unlabelled.append(run)
            continue
        try:
            meta = json.loads((run / "run.json").read_text())
        except ValueError:
            meta = {}
        shard = meta.get("shard") or {}
        key = str(shard.get("prompts_sha256_total") or meta.get("prompts_sha256") or run)
        g = groups.setdefault(key, {"prompts": shard.get("n_rows_total", meta.get("n_rows")),
                                    "models": set(), "rows": 0})
        g["models"].update(meta.get("planned_models") or meta.get("models") or {})
        g["rows"] += int(n_found)
    if unlabelled:
        r = unlabelled[0]
        more = f" (and {len(unlabelled) - 1} more run(s) in '{where}')" if len(unlabelled) > 1 else ""
        raise ValueError(
            f"'{r}' is a generation run directory{more}: its shards hold raw responses without "
            "the design columns or refusal labels (written before shards were labelled, or "
            "generated without a detector). Run `refusalstats collect` (or "
            "refusalstats.inference.collect_responses(..., detector=...)) to write "
            f"'{r / 'responses.parquet'}', then analyse that"
        )
    if len(detectors) > 1:
        raise ValueError(
            f"the shards in '{where}' were labelled by different detectors ("
            + ", ".join(f"{d!r} in '{r}'" for d, r in detectors.items())
            + "); run `refusalstats collect --detector ...` to label them all alike")
    for g in groups.values():
        if g["prompts"] is None or not g["models"]:
            continue
        expected = int(g["prompts"]) * len(g["models"])
        if g["rows"] == expected:
            continue
        state = (str(where.resolve()), g["rows"], expected)
        if state in _warned_partial:
            continue
        _warned_partial.add(state)
        if g["rows"] < expected:
            what = ("the run is incomplete: analysing what is there (finish it with --resume; "
                    "`refusalstats collect` checks that every prompt is answered once)")
        else:
            what = ("more rows than prompts x models: some prompt was answered twice (a shard "
                    "copied or run twice?); `refusalstats collect` finds them")
        warnings.warn(
            f"'{where}': {g['rows']:,} of {expected:,} rows ({len(g['models'])} model(s) x "
            f"{int(g['prompts']):,} prompts) are in its shards; {what}", UserWarning, stacklevel=4)
    return files


def _scan_pool():
    """The memory pool for decoded batches: jemalloc where pyarrow has it. Batches are
    allocated and freed hundreds of times; mimalloc (pyarrow's default) keeps the freed
    pages, so peak RSS crept up with the size of the row groups (+75 MB at 40 M rows
    here), jemalloc hands them back (+18 MB; benchmarks/README.md, "Scale")."""
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError):  # builds without jemalloc (macOS, Windows)
        return pa.default_memory_pool()


def _dataset(files: list[Path]):
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        return ds.dataset([str(f) for f in files], format="parquet")
    except (pa.ArrowException, OSError, ValueError) as exc:
        import pyarrow.parquet as pq

        from .table import _read_error

        for f in files:  # name the file at fault, as read_table would (footers only)
            try:
                pq.read_metadata(f)
            except (pa.ArrowException, OSError, ValueError) as bad:
                raise _read_error(Path(f), "parquet", bad) from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"could not open the Parquet dataset ({len(files)} file(s), first "
                         f"'{files[0]}'): {detail}") from None


def open_dataset(path: str | Path | Sequence[str | Path]):
    """The pyarrow dataset behind a Parquet file, shard folder, glob or list.

    Only the file list and the schema are read; a file that is not valid Parquet is named.

    Parameters
    ----------
    path : str, Path or list of them
        As for :func:`collapse`.

    Returns
    -------
    pyarrow.dataset.Dataset
    """
    return _dataset(_parquet_files(path))


def scan_columns(path: str | Path | Sequence[str | Path]) -> list[str]:
    """Column names of a Parquet file, shard folder or glob, read from the schema only.

    Parameters
    ----------
    path : path, glob or list of paths
        A Parquet file, a folder of Parquet shards (searched recursively), a glob, or a
        list of those, as :func:`collapse` reads them.

    Returns
    -------
    list of str
        The dataset's column names (the unified schema of its files), no rows read.

    Raises
    ------
    FileNotFoundError
        No such file or folder, or no file matching the glob.

    Examples
    --------
    >>> rs.scan_columns("runs/big/")  # doctest: +SKIP
    ['item_id', 'model', 'task', 'persona', 'prompt', 'refusal']
    """
    return list(open_dataset(path).schema.names)


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


def _key_codes(arr, lv: _Levels, source: str | None) -> np.ndarray:
    """Global level ids of one key column of a record batch."""
    idx, lut = _local_codes(arr, lv, source)
    return lut[idx]


def _refusal_values(arr, name: str, source: str | None) -> np.ndarray:
    """The 0/1 response of a record batch as int64, or a SchemaError naming bad values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .table import SchemaError

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        raise SchemaError([(f"column '{name}' has {arr.null_count:,} missing value(s)"
                           f"{_where(source)}; {name} must be 0/1")])
    typ = arr.type
    if pa.types.is_boolean(typ):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64)
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        examples = pc.unique(arr).slice(0, 5).to_pylist()
        raise SchemaError([(f"column '{name}' must hold 0/1 or True/False; it has type {typ}"
                           f"{_where(source)}, e.g. {examples}")])
    v = arr.to_numpy(zero_copy_only=False)
    bad = (v != 0) & (v != 1)
    if bad.any():
        examples = pd.unique(v[bad])[:5].tolist()
        raise SchemaError([(f"column '{name}' must hold 0/1 or True/False; found {int(bad.sum()):,} "
                           f"other value(s){_where(source)}, e.g. {examples}")])
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
    from .table import SchemaError

    missing = [c for c in dict.fromkeys(needed) if c not in have]
    if missing:
        raise SchemaError([(f"collapse: column(s) {missing} are not in {what}; its columns are "
                           f"{have}{advice}")])


def is_dataset(data) -> bool:
    """True for a Parquet file, a folder of shards, a glob, or a list of them.

    The analyses that accept such a path stream it through :func:`collapse` (counts,
    never rows) instead of reading a DataFrame.

    Parameters
    ----------
    data : object
        What an analysis was given as its table.

    Returns
    -------
    bool
        True for a ``str`` or ``os.PathLike``, or a non-empty list or tuple of them.

    Examples
    --------
    >>> is_dataset("runs/big/"), is_dataset(["a.parquet", "b.parquet"]), is_dataset(None)
    (True, True, False)
    """
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(
        isinstance(x, (str, os.PathLike)) for x in data)


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
        The tidy response table, a Parquet file, a folder of Parquet shards (searched
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
        ``attrs["collapse"]`` records the source, the keys and the row count.

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
    import pyarrow as pa

    if not isinstance(refusal, str):
        raise TypeError(f"refusal must be a column name, got {refusal!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    auto = isinstance(cluster, str) and cluster == "auto"
    if isinstance(data, pd.DataFrame):
        from ._validation import resolve_cluster

        source = None
        columns = list(map(str, data.columns))
        by_list = _check_keys(by, [], refusal)
        _missing_columns([*by_list, refusal], columns, "the table")
        if auto:
            resolved = resolve_cluster(data, cluster, where="collapse")
        else:
            _cluster_columns(cluster)  # type check first
            resolved = resolve_cluster(data, cluster, where="collapse")
        cluster_cols = _cluster_columns(resolved)
        auto = False  # resolved against the rows already
    else:
        files = _parquet_files(data)
        dataset = _dataset(files)
        source = str(data) if not isinstance(data, (list, tuple)) else f"{len(files)} path(s)"
        columns = list(dataset.schema.names)
        if auto:
            from ._validation import AUTO_CLUSTER_COLUMN

            cluster_cols = [AUTO_CLUSTER_COLUMN] if AUTO_CLUSTER_COLUMN in columns else []
        else:
            cluster_cols = _cluster_columns(cluster)
        by_list = _check_keys(by, cluster_cols, refusal)
        _missing_columns([*by_list, refusal], columns, f"the dataset '{source}'")
        _missing_columns(cluster_cols, columns, f"the dataset '{source}'",
                         advice=" (cluster=None treats rows as independent)")
    by_list = _check_keys(by_list, cluster_cols, refusal)
    keys = [*by_list, *cluster_cols]
    acc = _Accumulator([_Levels(c, hint=", or pass cluster=None for independent rows"
                                if c in cluster_cols else "") for c in keys])

    if isinstance(data, pd.DataFrame):
        if len(data) == 0:
            raise ValueError("collapse: the table is empty (0 rows)")
        for start in range(0, len(data), int(batch_rows)):
            chunk = data.iloc[start:start + int(batch_rows)][[*keys, refusal]]
            try:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ValueError(f"collapse: cannot read the key columns {keys}: {exc}") from None
            for batch in table.to_batches():
                _add_batch(acc, batch, keys, refusal, None)
    else:
        for fragment in dataset.get_fragments():
            path = getattr(fragment, "path", None)
            try:
                batches = fragment.to_batches(schema=dataset.schema, columns=[*keys, refusal],
                                              batch_size=int(batch_rows),
                                              batch_readahead=1, fragment_readahead=1,
                                              memory_pool=_scan_pool())
                for batch in batches:
                    _add_batch(acc, batch, keys, refusal, path)
            except pa.ArrowException as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"collapse: could not read '{path}': {detail}") from None
        if acc.rows == 0:
            raise ValueError(f"collapse: the dataset '{source}' is empty (0 rows)")
    acc.compact()
    out = _frame(acc, keys, data)

    if auto and cluster_cols:
        col = cluster_cols[0]
        n_items = int(out[col].nunique())
        if n_items == acc.rows:  # no item repeats: rows are independent
            out = _merge_out(out, by_list)
            cluster_cols = []
        else:
            from ._validation import ClusterNote

            warnings.warn(
                f"collapse: clustering by '{col}' ({n_items:,} items answered "
                f"{acc.rows / n_items:.3g} times on average); pass cluster=None for "
                "independent rows",
                ClusterNote, stacklevel=2)
    out.attrs["collapse"] = {"source": source if source is not None else "DataFrame",
                             "by": by_list, "cluster": cluster_cols[0] if len(cluster_cols) == 1
                             else (cluster_cols or None), "rows": int(acc.rows)}
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


# --------------------------------------------------------------------------- streamed CR1
def _row_batches(data, columns: list[str], batch_rows: int):
    """(record batch, source) pairs of ``columns`` from a DataFrame or a Parquet source."""
    import pyarrow as pa

    if isinstance(data, pd.DataFrame):
        for start in range(0, len(data), int(batch_rows)):
            chunk = data.iloc[start:start + int(batch_rows)][columns]
            for batch in pa.Table.from_pandas(chunk, preserve_index=False).to_batches():
                yield batch, None
        return
    files = _parquet_files(data)
    dataset = _dataset(files)
    _missing_columns(columns, list(dataset.schema.names), f"the dataset '{data}'")
    for fragment in dataset.get_fragments():
        path = getattr(fragment, "path", None)
        try:
            for batch in fragment.to_batches(schema=dataset.schema, columns=columns,
                                             batch_size=int(batch_rows), batch_readahead=1,
                                             fragment_readahead=1, memory_pool=_scan_pool()):
                yield batch, path
        except pa.ArrowException as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cluster_robust_cov: could not read '{path}': {detail}") from None


class _ScoreSums:
    """Per-cluster score sums (clusters x coefficients) in fixed blocks: growing with new
    clusters never copies what is there."""

    BLOCK = 1 << 14

    def __init__(self, p: int):
        self.p = p
        self.blocks: list[np.ndarray] = []

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        if len(ids) == 0:
            return
        need = int(ids.max()) // self.BLOCK + 1
        while len(self.blocks) < need:
            self.blocks.append(np.zeros((self.BLOCK, self.p)))
        distinct = len(np.unique(ids)) == len(ids)  # dictionary values are, as a rule
        which = ids // self.BLOCK
        for b in np.unique(which):
            sel = which == b
            if distinct:
                self.blocks[b][ids[sel] % self.BLOCK] += rows[sel]
            else:
                np.add.at(self.blocks[b], ids[sel] % self.BLOCK, rows[sel])

    def meat(self) -> np.ndarray:
        """Sum over clusters of the outer products of their score sums (S' S)."""
        out = np.zeros((self.p, self.p))
        for block in self.blocks:
            out += block.T @ block
        return out


class _PatternLines:
    """Maps the rows of a record batch to lines of a patterns table (one line per
    distinct combination of ``variables``), through per-column level lookups: only the
    combinations present in a batch (few) are translated, never row by row."""

    def __init__(self, patterns: pd.DataFrame, variables: list[str], where: str):
        self.variables = list(variables)
        self.where = where
        self.lookups, self.sizes = [], []
        for v in self.variables:
            col = patterns[v]
            levels = pd.Index(col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype)
                              else pd.unique(col))
            self.lookups.append(levels)
            self.sizes.append(max(len(levels), 1))
        line_codes = [lv.get_indexer(patterns[v] if isinstance(patterns[v].dtype, pd.CategoricalDtype)
                                     else patterns[v].astype(object))
                      for v, lv in zip(self.variables, self.lookups)]
        line_key = (np.ravel_multi_index(line_codes, self.sizes) if self.variables
                    else np.zeros(len(patterns), dtype=np.int64))
        self.order = np.argsort(line_key, kind="stable")
        self.sorted_key = line_key[self.order]
        if len(self.sorted_key) > 1 and (np.diff(self.sorted_key) == 0).any():
            raise ValueError(f"{where}: counts has repeated patterns; collapse by exactly the "
                             f"formula's variables {self.variables}")
        self.seen = [_Levels(v) for v in self.variables]  # global ids of the values met so far

    def lines(self, batch, source) -> np.ndarray:
        m = batch.num_rows
        if not self.variables:
            return np.zeros(m, dtype=np.int64)
        local = [_local_codes(batch.column(v), lv, source) for v, lv in zip(self.variables, self.seen)]
        local_sizes = [max(len(lut), 1) for _, lut in local]
        groups, _ = _reduce([idx for idx, _ in local], local_sizes, m, [None])
        codes = []
        for v, g, (_, lut), levels, seen in zip(self.variables, groups, local, self.lookups, self.seen):
            rank = levels.get_indexer(seen.index[lut[g]])
            if (rank < 0).any():
                new = list(seen.index[lut[g][rank < 0]].unique()[:3])
                raise ValueError(f"{self.where}: column '{v}' has value(s) {new}{_where(source)} that "
                                 "are not in counts; counts must come from the same data")
            codes.append(rank)
        key = np.ravel_multi_index(codes, self.sizes)
        pos = np.minimum(np.searchsorted(self.sorted_key, key), len(self.sorted_key) - 1)
        if (self.sorted_key[pos] != key).any():
            raise ValueError(f"{self.where}: rows{_where(source)} have covariate patterns that are "
                             "not in counts; counts must come from the same data")
        group_line = self.order[pos]
        row_key = np.ravel_multi_index([idx for idx, _ in local], local_sizes)
        present = np.ravel_multi_index(groups, local_sizes)
        n_local = int(np.prod(local_sizes))
        if n_local <= max(4 * m, 1 << 16):
            table = np.empty(n_local, dtype=np.int64)
            table[present] = group_line
            return table[row_key]
        return group_line[np.searchsorted(present, row_key)]  # groups come out sorted


def _stream_cluster_meats(data, patterns: pd.DataFrame, variables: list[str], cluster: str,
                          refusal: str, X: np.ndarray, models: list[tuple[np.ndarray, list[int] | None]],
                          *, batch_rows: int = _BATCH_ROWS, where: str = "logit"
                          ) -> tuple[list[np.ndarray], int, int]:
    """The CR1 meats ``S'S`` of several fits in one streaming pass over the rows.

    ``patterns`` (one line per covariate pattern, with the ``variables`` columns) and
    ``X`` (its design) describe the fits; each model is ``(prob, cols)``: the fitted
    probability per line and the design columns it uses (None: all). A row's score is
    ``x[cols] (y - prob[line])``; per cluster these are summed, in memory of clusters x
    coefficients. Returns the meats, the number of clusters and of rows.
    """
    from scipy import sparse

    mapper = _PatternLines(patterns, variables, where)
    K = X.shape[0]
    Xs = [X if cols is None else X[:, cols] for _, cols in models]
    sums = [_ScoreSums(x.shape[1]) for x in Xs]
    clusters = _Levels(cluster, hint=" (the cluster column)")
    n_rows = 0
    for batch, source in _row_batches(data, list(dict.fromkeys([*variables, cluster, refusal])),
                                      batch_rows):
        m = batch.num_rows
        if m == 0:
            continue
        y = _refusal_values(batch.column(refusal), refusal, source)
        line = mapper.lines(batch, source)
        g_idx, g_lut = _local_codes(batch.column(cluster), clusters, source)
        used = np.bincount(g_idx, minlength=len(g_lut)) > 0
        slot = (np.cumsum(used) - 1)[g_idx]
        n_used = int(used.sum())
        ids = g_lut[used]
        # each cluster's score sum is (rows of the cluster) x (their residuals) @ x: a sparse
        # (clusters x lines) matrix in COO form, whose product with x sums repeated
        # (cluster, line) entries itself (no grouping, no sort); in dense pieces of at most
        # BLOCK clusters so the product stays small
        B = _ScoreSums.BLOCK
        if n_used <= B:
            pieces = [(0, n_used, None)]
        else:
            blk = (slot // B).astype(np.int32)
            by_blk = np.argsort(blk, kind="stable")
            cuts = np.searchsorted(blk[by_blk], np.arange(0, n_used // B + 2))
            pieces = [(b * B, min(n_used, (b + 1) * B), by_blk[cuts[b]:cuts[b + 1]])
                      for b in range(len(cuts) - 1) if b * B < n_used]
        for (prob, _), x, S in zip(models, Xs, sums):
            r = y - prob[line]
            for lo, hi, rows in pieces:
                if rows is None:
                    M = sparse.coo_matrix((r, (slot, line)), shape=(hi - lo, K))
                else:
                    M = sparse.coo_matrix((r[rows], (slot[rows] - lo, line[rows])), shape=(hi - lo, K))
                S.add(ids[lo:hi], M @ x)
        n_rows += m
    G = len(clusters.index) if clusters.index is not None else 0
    if G < 2:
        raise ValueError(f"{where}: cluster column '{cluster}' has {G} cluster(s); "
                         "cluster-robust SEs need many")
    return [S.meat() for S in sums], G, n_rows


def _cluster_robust_cov(
    fit,
    counts: pd.DataFrame,
    data: pd.DataFrame | str | Path | Sequence[str | Path],
    cluster: str = "item_id",
    refusal: str = "refusal",
    *,
    batch_rows: int = _BATCH_ROWS,
) -> pd.DataFrame:
    """CR1 cluster-robust covariance of a fit from counts, streaming the rows once more.

    ``rs.logit(path, cluster=...)`` does this itself (the fit, then this pass, also for
    ``anova()`` / ``drop1()``); this function is for counts computed elsewhere (DuckDB,
    Spark) with the rows still on disk. A clustered counts table
    (``collapse(..., cluster="item_id")``) has one line per item x pattern, which in a
    Monte Carlo design is one line per row. This computes the same
    covariance as ``rs.logit(formula, rows, cluster=cluster).cov_params()`` without it:
    fit the (small) unclustered counts, then stream the rows and accumulate each
    cluster's score sum ``sum_i x_i (y_i - p_i)``. Memory: clusters x coefficients, not rows.

    Parameters
    ----------
    fit : LogitResults
        ``rs.logit("refusals ~ ...", counts, trials="n", cluster=None)`` (maximum likelihood).
    counts : DataFrame
        The table ``fit`` was fitted on, from ``collapse(data, by=<the formula's variables>)``.
    data : DataFrame, path, glob or list of paths
        The rows ``counts`` was collapsed from.
    cluster : str
        The cluster column of ``data``.
    refusal : str
        The 0/1 response column of ``data``.
    batch_rows : int
        Rows per record batch of the streaming pass.

    Returns
    -------
    DataFrame
        The covariance (coefficients x coefficients); ``np.sqrt(np.diag(V))`` are the
        CR1 standard errors. Small-sample factor ``G/(G-1) (N-1)/(N-k)`` with N the rows.
        Rows and columns of terms the fit found separated are NaN.

    Examples
    --------
    >>> counts = rs.collapse("runs/big/", by=["persona", "task"])  # doctest: +SKIP
    >>> fit = rs.logit("refusals ~ persona + task", counts, trials="n", cluster=None)  # doctest: +SKIP
    >>> V = cluster_robust_cov(fit, counts, "runs/big/", cluster="item_id")  # doctest: +SKIP
    """
    from scipy.special import expit

    from .formula import fixed_design, parse_formula, prepare_factors

    if getattr(fit, "penalty", None) is not None or getattr(fit, "cluster", None) is not None:
        raise ValueError("cluster_robust_cov: give an unpenalized fit with cluster=None (the "
                         "sandwich's bread is its model-based covariance)")
    if not isinstance(cluster, str):
        raise TypeError(f"cluster must be one column name, got {cluster!r}")
    if not isinstance(counts, pd.DataFrame):
        raise TypeError(f"counts must be the DataFrame the fit used, got {type(counts).__name__}")
    parsed = parse_formula(fit.formula)
    variables = [v for v in parsed.fixed_variables if v in counts.columns]
    missing = [v for v in parsed.fixed_variables if v not in counts.columns]
    if missing:
        raise ValueError(f"cluster_robust_cov: the formula's column(s) {missing} are not in counts")
    if cluster in variables:
        raise ValueError(f"cluster_robust_cov: '{cluster}' is a predictor of the fit, not a cluster")
    reference = {k: v for k, v in dict(fit.reference or {}).items() if k in variables}
    frame = prepare_factors(counts[variables], variables, reference)
    X, names, _ = fixed_design(parsed.fixed, frame if variables else counts)
    if list(names) != list(map(str, fit.params.index)) or X.shape[0] != len(counts):
        raise ValueError("cluster_robust_cov: counts is not the table the fit was fitted on "
                         f"(its design has columns {names[:4]}..., the fit {list(fit.params.index)[:4]}...)")
    beta = fit.params.to_numpy(dtype=float)
    prob = expit(X @ beta)
    (meat,), G, n_rows = _stream_cluster_meats(
        data, frame, variables, cluster, refusal, X, [(prob, None)], batch_rows=batch_rows,
        where="cluster_robust_cov")
    total = int(counts[N_COLUMN].sum()) if N_COLUMN in counts.columns else None
    if total is not None and total != n_rows:
        raise ValueError(f"cluster_robust_cov: data has {n_rows:,} rows but counts sums to {total:,} "
                         "in 'n'; counts must come from the same data")
    k = X.shape[1]
    # bread: the inverse Fisher information at the fit, (X' W X)^-1 with W = n p (1 - p), as
    # logit computes it (its cov_params() hides separated terms, which the sandwich needs)
    w = counts[N_COLUMN].to_numpy(dtype=float) * prob * (1.0 - prob)
    info = X.T @ (X * w[:, None])
    try:
        chol = np.linalg.cholesky(info)
        inv_l = np.linalg.solve(chol, np.eye(k))
        bread = inv_l.T @ inv_l
    except np.linalg.LinAlgError:
        bread = np.linalg.pinv(info, hermitian=True)
    c = (G / (G - 1.0)) * ((n_rows - 1.0) / (n_rows - k))
    V = c * bread @ meat @ bread
    separated = [list(fit.params.index).index(t) for t in getattr(fit, "separated_terms", []) or []]
    V[separated, :] = np.nan  # not estimable: no interval, as logit reports them
    V[:, separated] = np.nan
    out = pd.DataFrame(V, index=fit.params.index, columns=fit.params.index)
    out.attrs["cluster_robust_cov"] = {"cluster": cluster, "n_clusters": G, "rows": n_rows}
    return out


def _one_blas_thread(fn):
    """Run ``fn`` with one BLAS thread: its matrices are small and many, and OpenBLAS
    threads cost more than they save (far more on a shared machine), as in regression."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


cluster_robust_cov = _one_blas_thread(_cluster_robust_cov)
cluster_robust_cov.__name__ = cluster_robust_cov.__qualname__ = "cluster_robust_cov"
