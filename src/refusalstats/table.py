"""The tidy response table: one row per generated (or imported) answer.

Every analysis in refusalstats reads this one table. Required columns are
``model``, ``task``, ``persona``, ``prompt`` and ``refusal`` (0/1). Known optional
columns are listed in :data:`OPTIONAL_COLUMNS`; any other column passes through
untouched. Parquet is the native format and keeps run metadata (model revision,
decoding settings, package versions, seed) in the file's key-value metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("model", "task", "persona", "prompt", "refusal")

#: Known optional columns and whether they are categorical.
OPTIONAL_COLUMNS: dict[str, bool] = {
    "item_id": False,
    "persona_group": True,
    "response_type": True,
    "setting": True,
    "prompt_text": False,
    "system_text": False,
    "response": False,
    "gold_label": True,
    "predicted_label": True,
    "n_new_tokens": False,
    "finish_reason": True,
    "refusal_source": True,
    "provider_refusal": False,
    "error": False,
    "empty_response": False,
}

#: ``refusal_source`` of a row whose prompt got no answer (an API's 4xx for that prompt):
#: it has no refusal value and analyses leave it out, saying how many.
ERROR_SOURCE = "error"

#: Error rows handling of :func:`validate` and :func:`refusalstats.read_responses`.
_ERROR_ROWS = ("exclude", "keep")

#: Cells that mean "missing" in the numeric columns (and ``refusal``) of a CSV; label
#: columns keep them as text ("None", "NA" are labels too).
_NA_TOKENS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"})

#: Columns stored as pandas categoricals.
CATEGORICAL_COLUMNS: tuple[str, ...] = ("model", "task", "persona", "prompt") + tuple(
    c for c, is_cat in OPTIONAL_COLUMNS.items() if is_cat
)

#: Key under which refusalstats stores run metadata in Parquet key-value metadata.
METADATA_KEY = b"refusalstats"

#: Environment variables that raise the limits on what a table file may hold, checked
#: before it is parsed (a CSV with 10^6 columns would otherwise exhaust memory).
MAX_COLUMNS_ENV = "REFUSALSTATS_MAX_COLUMNS"
MAX_BYTES_ENV = "REFUSALSTATS_MAX_BYTES"
#: Default limits: ten times the widest published matrix (P2: 58,493 columns), 8 GiB.
DEFAULT_MAX_COLUMNS = 600_000
DEFAULT_MAX_BYTES = 8 * 2**30


class TableTooLarge(ValueError):
    """A file holds more columns or bytes than the limits allow (see :func:`read_limits`)."""


def read_limits() -> tuple[int, int]:
    """The most columns and bytes a table file may hold: ``(max_columns, max_bytes)``.

    ``$REFUSALSTATS_MAX_COLUMNS`` and ``$REFUSALSTATS_MAX_BYTES`` raise (or lower) the
    defaults, :data:`DEFAULT_MAX_COLUMNS` and :data:`DEFAULT_MAX_BYTES`.

    Examples
    --------
    >>> read_limits() == (DEFAULT_MAX_COLUMNS, DEFAULT_MAX_BYTES)  # doctest: +SKIP
    True
    """
    out = []
    for env, default in ((MAX_COLUMNS_ENV, DEFAULT_MAX_COLUMNS), (MAX_BYTES_ENV, DEFAULT_MAX_BYTES)):
        raw = os.environ.get(env)
        if not raw:
            out.append(default)
            continue
        try:
            value = int(float(raw))
        except ValueError:
            raise ValueError(f"${env} must be a whole number, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"${env} must be >= 1, got {raw!r}")
        out.append(value)
    return out[0], out[1]


def check_size(path: str | Path, *, n_columns: int | None = None, label: str | None = None
               ) -> None:
    """Raise :class:`TableTooLarge` when a file is over the byte limit or ``n_columns`` over
    the column limit (:func:`read_limits`), naming the file and how to raise the limit.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = f.write_text("a,b\\n1,2\\n")
    >>> check_size(f, n_columns=2)
    """
    max_columns, max_bytes = read_limits()
    name = label or str(path)
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise TableTooLarge(
            f"{name}: {size:,} bytes, more than the limit of {max_bytes:,}; if the file is "
            f"what you mean to read, raise the limit: export {MAX_BYTES_ENV}={size}")
    if n_columns is not None and n_columns > max_columns:
        raise TableTooLarge(
            f"{name}: {n_columns:,} columns, more than the limit of {max_columns:,}; if the "
            f"file is what you mean to read, raise the limit: export {MAX_COLUMNS_ENV}={n_columns}")


class SchemaError(ValueError, KeyError):
    """A table lacks a column an analysis needs, or does not follow the schema.

    Every analysis (rates, models, W2, figures, the report) raises it for a missing
    column, naming the table's real columns. It is a :class:`ValueError` and, as a
    missing column is a missing key, a :class:`KeyError` too (its message prints plainly,
    not quoted as a ``KeyError``'s would be). ``problems`` lists every problem found, so
    a user fixes them all at once.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"the table has {len(self.problems)} problem(s):\n{lines}"
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def column_hint(missing: Iterable[str], columns: Iterable) -> str:
    """" (did you mean ...?)" for missing column names that look like the table's.

    A name differing in case or a few letters gets the closest column (difflib); a
    comma-separated name whose parts are all columns gets "pass a list".

    Parameters
    ----------
    missing : iterable of str
        The names not found.
    columns : iterable
        The table's columns.

    Returns
    -------
    str
        The hint, starting with a space, or "" when nothing is close.

    Examples
    --------
    >>> column_hint(["Refusal"], ["model", "refusal"])
    " (did you mean 'refusal'?)"
    """
    import difflib

    cols = [str(c) for c in columns]
    lower = {c.lower(): c for c in cols}
    missing = [str(m) for m in missing]
    means, lists = [], []
    for name in missing:
        parts = [p.strip() for p in name.split(",")]
        if len(parts) > 1 and all(p in cols for p in parts):
            lists.append(f"{name!r} is several columns: pass a list, {parts!r}")
            continue
        close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.7)
        close = [lower[c] for c in close]
        if close:
            means.append(repr(close[0]) if len(missing) == 1 else f"{close[0]!r} for {name!r}")
    out = ([f"did you mean {', '.join(means)}?"] if means else []) + lists
    return f" ({'; '.join(out)})" if out else ""


def its_columns(columns: Iterable, missing: Iterable[str] = ()) -> str:
    """The end of every missing-column message: ``its columns are [...]`` and a did-you-mean.

    Parameters
    ----------
    columns : iterable
        The table's (or file's) columns.
    missing : iterable of str
        The names asked for that are not there (for :func:`column_hint`).

    Returns
    -------
    str

    Examples
    --------
    >>> its_columns(["model", "persona"], ["persnoa"])
    "its columns are ['model', 'persona'] (did you mean 'persona'?)"
    """
    columns = list(map(str, columns))
    return f"its columns are {columns}{column_hint(list(missing), columns)}"


def missing_columns(data: pd.DataFrame, columns: Iterable[str], where: str = "") -> None:
    """Raise :class:`SchemaError` when ``data`` lacks any of ``columns``, listing its columns.

    Parameters
    ----------
    data : DataFrame
        The table.
    columns : iterable of str
        The columns it must have.
    where : str
        What needs them (a function's name), to start the message with.

    Returns
    -------
    None
        When every column is there.

    Raises
    ------
    SchemaError
        Naming the missing columns and the table's real ones.

    Examples
    --------
    >>> import pandas as pd
    >>> missing_columns(pd.DataFrame({"a": [1]}), ["a", "b"], "demo")
    Traceback (most recent call last):
    ...
    refusalstats.table.SchemaError: demo: column(s) ['b'] not in the table; its columns are ['a']
    """
    missing = [c for c in dict.fromkeys(columns) if c not in data.columns]
    if missing:
        prefix = f"{where}: " if where else ""
        raise SchemaError(f"{prefix}column(s) {missing} not in the table; "
                          f"{its_columns(data.columns, missing)}")


def is_error_row(data: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows whose prompt got no answer (``refusal_source == "error"``).

    Examples
    --------
    >>> import pandas as pd
    >>> is_error_row(pd.DataFrame({"refusal_source": ["detector", "error"]})).tolist()
    [False, True]
    """
    if "refusal_source" not in data.columns:
        return np.zeros(len(data), dtype=bool)
    return data["refusal_source"].astype(object).eq(ERROR_SOURCE).to_numpy(dtype=bool)


def _drop_error_rows(df: pd.DataFrame, where: str, stacklevel: int = 3) -> pd.DataFrame:
    """``df`` without its error rows; a warning says how many, ``attrs["n_error_rows"]`` too."""
    err = is_error_row(df)
    n = int(err.sum())
    if not n:
        return df
    out = df.loc[~err].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    out.attrs["n_error_rows"] = n
    warnings.warn(
        f"{where}: {n:,} of {len(df):,} row(s) are left out as errors (refusal_source "
        f"'error': the prompt got no answer, its error text is in column 'error'); the "
        "analyses use the other rows", stacklevel=stacklevel)
    return out


def binary_problem(values, name: str = "refusal", where: str = "", *,
                   positions: bool = True) -> str | None:
    """Describe values of a 0/1 column outside {0, 1, True, False}, or return None.

    The one check of a 0/1 response (#23): :func:`validate`, the streamed counts
    (:func:`refusalstats.collapse`), :func:`refusalstats.logit` and
    :func:`refusalstats.hierarchical` all word a bad response with it; each raises its own
    error type with this text.

    Parameters
    ----------
    values : Series or array-like
        The column.
    name : str
        Its name, for the message.
    where : str
        Appended after the counts (e.g. ``" in 'part-0.parquet'"``).
    positions : bool
        Name the first rows with a missing value (their positions in ``values``).

    Returns
    -------
    str or None
        The problem, or None when every value is 0/1 or True/False.

    Examples
    --------
    >>> binary_problem(pd.Series([0, 1, 1])) is None
    True
    >>> binary_problem(pd.Series([0, 2, 1]))
    "column 'refusal' must hold 0/1 or True/False; found 1 other value(s), e.g. [2]"
    """
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    missing = s.isna().to_numpy()
    if missing.any():
        first = (f" (first rows {[int(i) for i in np.flatnonzero(missing)[:5]]})"
                 if positions else "")
        return (f"column '{name}' has {int(missing.sum()):,} missing value(s){where}; {name} "
                f"must be 0/1 or True/False{first}")
    if pd.api.types.is_bool_dtype(s):
        return None
    if pd.api.types.is_numeric_dtype(s):
        bad = ~s.isin([0, 1])
    else:
        bad = ~s.astype(object).isin([0, 1, True, False])
    if bad.any():
        examples = pd.unique(s[bad])[:5].tolist()
        return (f"column '{name}' must hold 0/1 or True/False; found {int(bad.sum()):,} other "
                f"value(s){where}, e.g. {examples}")
    return None


def _refusal_problem(values: pd.Series) -> str | None:
    """Describe refusal values outside {0, 1, True, False}, or return None."""
    msg = binary_problem(values, "refusal")
    if msg and values.isna().any():
        msg += (" (rows of prompts that got no answer, refusal_source 'error', have none: "
                "rs.validate(table) or rs.read_responses leave them out)")
    return msg


def validate(
    data: pd.DataFrame,
    *,
    required: Iterable[str] = REQUIRED_COLUMNS,
    predictors: Iterable[str] | None = None,
    needs_levels: Iterable[str] = (),
    table_columns: Iterable[str] | None = None,
    error_rows: str = "exclude",
) -> pd.DataFrame:
    """Check a response table and return it in canonical form.

    Every problem is collected and raised together as one :class:`SchemaError`:
    missing required columns, refusal values other than 0/1/True/False, an empty
    table, NaNs in a predictor, and a factor with a single level where a model needs
    two (``needs_levels``).

    The returned table is a copy in which ``refusal`` is ``int8`` and the known
    categorical columns are pandas categoricals (levels in order of first
    appearance for strings; an existing categorical keeps its levels). No value is
    changed and no column is dropped. Rows whose prompt got no answer
    (``refusal_source == "error"``, recorded by ``generate --on-error record``) have no
    refusal value: they are left out with a warning saying how many (the count is in
    ``attrs["n_error_rows"]``), or kept with ``error_rows="keep"`` (``refusal`` is then a
    nullable ``Int8``, missing on exactly those rows).

    Parameters
    ----------
    data : DataFrame
        The response table.
    required : iterable of str
        Columns that must exist (default: model, task, persona, prompt, refusal).
    predictors : iterable of str, optional
        Columns used as predictors; they must exist and hold no NaN. Defaults to the
        required columns other than ``refusal`` that are present.
    needs_levels : iterable of str
        Columns that must have at least two distinct values.
    table_columns : iterable of str, optional
        The user's full column list, for messages when ``data`` is a column subset.
    error_rows : {"exclude", "keep"}
        What to do with rows of prompts that got no answer (see above).

    Returns
    -------
    DataFrame
        A validated copy in canonical form.

    Raises
    ------
    SchemaError
        Every problem found, listed in ``problems``.
    TypeError
        ``data`` is not a DataFrame.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> t = rs.validate(pd.DataFrame({"model": ["a", "b"], "task": "nli",
    ...     "persona": "Man", "prompt": "p1", "refusal": [True, False]}))
    >>> t["refusal"].tolist()
    [1, 0]
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(data).__name__}")
    if error_rows not in _ERROR_ROWS:
        raise ValueError(f"error_rows must be one of {_ERROR_ROWS}, got {error_rows!r}")
    df = data
    err = is_error_row(df)
    if err.any() and error_rows == "exclude":
        df = _drop_error_rows(df, "validate")
        err = np.zeros(len(df), dtype=bool)
    required = list(required)
    problems: list[str] = []
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems.append(
            f"missing required column(s) {missing}; the table has "
            f"{list(df.columns) if table_columns is None else list(table_columns)}"
            f"{column_hint(missing, df.columns if table_columns is None else table_columns)}. "
            "Rename your columns (e.g. df.rename(columns={...})) or map them with "
            "refusalstats.dumps.read_generic(path, mapping={...})"
        )
    if len(df) == 0:
        problems.append("the table is empty (0 rows)")
    if "refusal" in df.columns and len(df):
        msg = _refusal_problem(df["refusal"][~err] if err.any() else df["refusal"])
        if msg:
            problems.append(msg)
        if err.any() and df["refusal"][err].notna().any():
            problems.append("rows with refusal_source 'error' (no answer) must have no refusal "
                            "value; found 0/1 on some")
    preds = (
        [c for c in required if c != "refusal" and c in df.columns]
        if predictors is None
        else list(predictors)
    )
    for c in preds:
        if c not in df.columns:
            if c not in missing:
                problems.append(f"predictor column '{c}' is not in the table")
            continue
        n_nan = int(df[c].isna().sum())
        if n_nan:
            rows = [int(i) for i in np.flatnonzero(df[c].isna().to_numpy())[:5]]
            problems.append(
                f"predictor column '{c}' has {n_nan} missing value(s) (first rows {rows}); "
                "drop or fill those rows explicitly before fitting"
            )
    for c in needs_levels:
        if c in df.columns and len(df):
            levels = pd.unique(df[c].dropna())
            if len(levels) < 2:
                problems.append(
                    f"factor '{c}' has a single level {list(levels)}; a model needs at least two "
                    f"levels to estimate its effect — remove '{c}' from the formula"
                )
    if problems:
        raise SchemaError(problems)
    return _canonical(df, nullable_refusal=bool(err.any()))


def default_levels(values: Iterable) -> list:
    """The levels a column of plain values gets as a factor: sorted, as R's ``factor()``.

    Missing values are dropped; values of different types (numbers and strings in one
    column) sort by type name first. This is the one rule for level order: it is used by
    :func:`refusalstats.formula.prepare_factors` (every model) and by :func:`validate` when it
    turns string columns into categoricals, so a table gives the same levels and
    reference whether it is passed raw (e.g. from ``pd.read_csv``) or validated.

    Examples
    --------
    >>> default_levels(["zeta", "mid", None, "alpha", "mid"])
    ['alpha', 'mid', 'zeta']
    """
    s = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    return sorted(s.dropna().unique().tolist(), key=lambda v: (str(type(v)), v))


def _canonical(df: pd.DataFrame, nullable_refusal: bool = False) -> pd.DataFrame:
    """The validated table: 0/1 ``refusal`` as int8, the categorical columns as categoricals.

    A column that is already categorical keeps its level order (the user's, like R's
    ``factor(x, levels = ...)``); plain values get sorted levels by the models' rule
    (:func:`default_levels`), so a validated table and the raw one
    give the same reference levels.
    """
    out = df.copy()
    if "refusal" in out.columns:
        out["refusal"] = out["refusal"].astype("Int8" if nullable_refusal else "int8")
    for c in CATEGORICAL_COLUMNS:
        if c in out.columns and not isinstance(out[c].dtype, pd.CategoricalDtype):
            col = out[c]
            if col.isna().all():
                continue
            out[c] = pd.Categorical(col, categories=default_levels(col))
    out.attrs = dict(df.attrs)
    return out


#: File extensions and the table format each names; text formats may also end in ``.gz``.
TABLE_FORMATS: dict[str, str] = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
}

#: Formats :func:`write_responses` writes (``json``, a list of records, is read only).
_WRITE_FORMATS = ("parquet", "csv", "tsv", "jsonl")


def _format_of(path: Path, fmt: str | None, *, formats: Iterable[str] = _WRITE_FORMATS) -> str:
    """The format of ``path``: ``fmt`` when given, else the one its extension names."""
    formats = tuple(formats)
    if fmt:
        return fmt.lower()
    suffixes = [s.lower() for s in Path(path).suffixes]
    for s in reversed(suffixes):
        if TABLE_FORMATS.get(s) in formats:
            return TABLE_FORMATS[s]
    exts = [e for e, f in TABLE_FORMATS.items() if f in formats and e not in (".pq", ".ndjson")]
    raise ValueError(
        f"cannot tell the format of '{path}' from its extension; use "
        f"{', '.join(exts[:-1])} or {exts[-1]} (text formats optionally .gz), or pass "
        f"format={'|'.join(repr(f) for f in formats)}"
    )


def _categorical_levels(df: pd.DataFrame) -> dict[str, list]:
    return {
        c: [x if not isinstance(x, np.generic) else x.item() for x in df[c].cat.categories]
        for c in df.columns
        if isinstance(df[c].dtype, pd.CategoricalDtype)
    }


def write_responses(
    data: pd.DataFrame,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
) -> Path:
    """Write a response table to Parquet, CSV or JSONL.

    Parquet keeps categorical dtypes natively and stores ``metadata`` (merged over
    ``data.attrs["metadata"]``) as JSON in the file's key-value metadata. CSV and JSONL
    write a sidecar ``<path>.meta.json`` with the metadata, the categorical levels and
    the SHA-256 of the data file it describes, so a round trip restores dtypes there too
    (a sidecar that does not match its file is ignored with a warning). Both files are
    written to temporary names and moved into place. Rows of prompts that got no answer
    (``refusal_source == "error"``) are written as they are.

    Parameters
    ----------
    data : DataFrame
        The table (validated first; a :class:`SchemaError` lists every problem).
    path : str or Path
        Destination; the format follows the extension unless ``format`` is given.
    metadata : mapping, optional
        Run metadata (model revision, decoding settings, versions, seed, ...); must
        be JSON-serialisable.
    format : {"parquet", "csv", "tsv", "jsonl"}, optional
        Overrides the format the extension names (``.parquet``/``.pq``, ``.csv``,
        ``.tsv``, ``.jsonl``/``.ndjson``; CSV and TSV may end in ``.gz``).

    Returns
    -------
    Path
        The written file (written to a temporary name first, then moved into place).

    Examples
    --------
    >>> rs.write_responses(table, "runs/table.parquet", metadata={"seed": 0})  # doctest: +SKIP
    """
    path = Path(path)
    fmt = _format_of(path, format)
    table = validate(data, error_rows="keep")
    meta = dict(data.attrs.get("metadata", {}) or {})
    if metadata:
        meta.update(dict(metadata))
    try:
        meta_json = json.dumps(meta, default=str)
    except TypeError as exc:  # pragma: no cover - default=str handles most
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table.attrs = {}  # run metadata goes in under METADATA_KEY; attrs may not be JSON
        at = pa.Table.from_pandas(table, preserve_index=False)
        kv = dict(at.schema.metadata or {})
        kv[METADATA_KEY] = meta_json.encode()
        at = at.replace_schema_metadata(kv)
        pq.write_table(at, tmp)
    else:
        if fmt in ("csv", "tsv"):
            table.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",",
                         compression="gzip" if path.suffix == ".gz" else None)
        elif fmt == "jsonl":
            table.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise ValueError(f"unknown format '{fmt}'; use 'parquet', 'csv' or 'jsonl'")
        side = {"metadata": meta, "categories": _categorical_levels(table),
                "dtypes": {c: str(t) for c, t in table.dtypes.items()},
                "data_sha256": _file_sha256(tmp)}
        side_path = Path(str(path) + ".meta.json")
        side_tmp = side_path.with_name(f".{side_path.name}.{os.getpid()}.tmp")
        side_tmp.write_text(json.dumps(side, default=str, indent=1))
        # the data first: a kill between the two renames leaves the new file with the old
        # sidecar, whose data_sha256 no longer matches (read_responses ignores it, saying so)
        os.replace(tmp, path)
        os.replace(side_tmp, side_path)
        return path
    os.replace(tmp, path)
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sniff_sep(path: Path) -> str:
    """The delimiter of a delimited text file: the most frequent of , ; tab | in its first line."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError as exc:
        raise ValueError(f"could not read '{path}': {exc}") from None
    counts = {sep: first.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _read_error(path: Path, fmt: str, exc: Exception | None) -> ValueError:
    """A one-line, user-facing reason why a table file could not be read."""
    text = str(exc).strip() if exc is not None else ""
    detail = text.splitlines()[0] if text else type(exc).__name__
    if path.stat().st_size == 0:
        why = "the file is empty (0 bytes)"
    elif fmt == "parquet":
        why = ("it is not a valid Parquet file (truncated, or another format with a .parquet "
               f"name: {detail})")
    else:
        why = f"it is not valid {fmt.upper()} ({detail})"
    return ValueError(f"could not read '{path}' as {fmt.upper()}: {why}")


def _csv_header(path: Path, delim: str) -> list[str]:
    """The header cells of a delimited text file, as the csv module parses them."""
    import csv
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        return next(csv.reader(fh, delimiter=delim), [])


def _duplicate_columns(path: Path, names: Iterable[str]) -> None:
    """Raise when two columns share a name (pandas would rename one, 'x.1', or pick one)."""
    from collections import Counter

    dup = [n for n, k in Counter(str(x).strip() for x in names).items() if k > 1]
    if dup:
        raise SchemaError(f"'{path}': column name(s) {dup} appear more than once in the "
                          "header; rename them apart (which of them holds the data?)")


def _absent_columns(path: Path, have: Iterable[str], want: list[str]) -> None:
    have = list(map(str, have))
    missing = [c for c in want if c not in have]
    if missing:
        raise SchemaError(f"'{path}': column(s) {missing} not in the file; "
                          f"{its_columns(have, missing)}")


def read_table(
    path: str | Path,
    *,
    sep: str | None = None,
    format: str | None = None,
    columns: Iterable[str] | None = None,
    dtype: Mapping[str, Any] | None = None,
    keep_default_na: bool = True,
) -> pd.DataFrame:
    """Read a CSV, TSV, JSONL, JSON or Parquet file into a DataFrame, as it is.

    The one table reader of refusalstats: :func:`refusalstats.read_responses`, the dump loaders
    (:mod:`refusalstats.dumps`) and the inference task files all read through it, so
    every file gives the same errors. Nothing is validated or converted; see
    :func:`refusalstats.read_responses` for a response table.

    Parameters
    ----------
    path : str or Path
        The file: ``.parquet``/``.pq``, ``.csv``, ``.tsv``, ``.jsonl``/``.ndjson`` or
        ``.json`` (a list of records, or JSON lines); text formats may end in ``.gz``.
    sep : str, optional
        Field delimiter of a CSV file. By default the most frequent of ``,`` ``;`` tab
        ``|`` in the first line (semicolon CSVs from spreadsheet locales read as they
        are); a TSV file uses tab.
    format : {"parquet", "csv", "tsv", "jsonl", "json"}, optional
        Overrides the format the extension names.
    columns : iterable of str, optional
        Read only these columns (Parquet and CSV skip the others while reading).
    dtype : mapping of str to dtype, optional
        Column dtypes for the text formats (as in :func:`pandas.read_csv`).
    keep_default_na : bool
        CSV/TSV: read pandas' missing-value spellings ("NA", "None", "null", ...) as
        missing (default); False reads only empty cells as missing.

    Returns
    -------
    DataFrame
        The file's rows and columns. A Parquet file written by :func:`write_responses`
        brings its run metadata in ``df.attrs["metadata"]``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    IsADirectoryError
        ``path`` is a folder.
    ValueError
        An unknown extension or format, an empty file (``the file is empty (0 bytes)``),
        a truncated or invalid Parquet file (``not a valid Parquet file``), a text file
        that does not parse, or two columns of one name (named); the message names the file.
    SchemaError
        A column of ``columns`` is not in the file (the message lists the file's columns).

    Examples
    --------
    >>> import pandas as pd, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = f.write_text("model;refusal\\nm1;1\\nm2;0\\n")
    >>> read_table(f)
      model  refusal
    0    m1        1
    1    m2        0
    >>> read_table(f, columns=["refusal"])["refusal"].tolist()
    [1, 0]
    >>> _ = f.with_suffix(".xlsx").write_text("model;refusal\\n")
    >>> read_table(f.with_suffix(".xlsx"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: cannot tell the format of '...t.xlsx' from its extension; use .parquet, ...
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no table file at '{path}'")
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a folder; give a table file inside it")
    readable = tuple(dict.fromkeys(TABLE_FORMATS.values()))
    fmt = _format_of(path, format, formats=readable)
    if fmt not in readable:
        raise ValueError(f"unknown format '{fmt}'; use one of {list(readable)}")
    if path.stat().st_size == 0:
        raise _read_error(path, fmt, None)
    check_size(path)
    want = None if columns is None else list(dict.fromkeys(columns))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            check_size(path, n_columns=len(names))
            if want is not None:
                _absent_columns(path, names, want)
            at = pq.read_table(path, columns=want)
        except (pa.ArrowException, OSError, ValueError) as exc:
            if isinstance(exc, (SchemaError, TableTooLarge)):
                raise
            raise _read_error(path, fmt, exc) from None
        _duplicate_columns(path, at.schema.names)
        kv = at.schema.metadata or {}
        df = at.to_pandas()
        if METADATA_KEY in kv:
            df.attrs["metadata"] = json.loads(kv[METADATA_KEY].decode())
        return df
    if dtype and want is not None:
        dtype = {c: t for c, t in dtype.items() if c in want}
    try:
        if fmt in ("csv", "tsv"):
            delim = sep or ("\t" if fmt == "tsv" else _sniff_sep(path))
            header = _csv_header(path, delim)
            check_size(path, n_columns=len(header))
            _duplicate_columns(path, header)
            usecols = None
            if want is not None:
                _absent_columns(path, pd.read_csv(path, sep=delim, nrows=0).columns, want)
                usecols = want
            na = {} if keep_default_na else {"keep_default_na": False, "na_values": [""]}
            df = pd.read_csv(path, sep=delim, usecols=usecols, dtype=dtype or None, **na)
            return df if want is None else df[want]
        if fmt == "jsonl":
            df = pd.read_json(path, orient="records", lines=True, dtype=dtype or None)
        else:
            try:
                df = pd.read_json(path, orient="records", dtype=dtype or None)
            except ValueError:  # JSON lines under a .json name
                df = pd.read_json(path, orient="records", lines=True, dtype=dtype or None)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise _read_error(path, fmt, exc) from None
    except ValueError as exc:
        if isinstance(exc, (SchemaError, TableTooLarge)):
            raise
        raise _read_error(path, fmt, exc) from None
    if want is not None:
        _absent_columns(path, df.columns, want)
        df = df[want]
    return df


def read_response_file(path: str | Path, *, format: str | None = None, validate_table: bool = True,
                       sep: str | None = None, error_rows: str = "exclude",
                       stacklevel: int = 2) -> pd.DataFrame:
    """Read one response table file (Parquet, CSV, TSV, JSON lines).

    The one-file reader behind :func:`refusalstats.read_responses`, which also reads a
    folder of shards, a glob or a run directory (through :mod:`refusalstats.sources`);
    the parameters and the table returned are the same.

    Parameters
    ----------
    path : str or Path
        A ``.parquet``, ``.csv``, ``.tsv`` or ``.jsonl`` file (text formats may end in ``.gz``).
    format, validate_table, sep, error_rows
        As in :func:`refusalstats.read_responses`.
    stacklevel : int
        ``stacklevel`` of the error-row warning, counted from this function (2: its caller).

    Returns
    -------
    DataFrame
        The table, with the run metadata in ``attrs["metadata"]``.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ValueError
        As :func:`read_table`.
    SchemaError
        With ``validate_table``, every problem of the table at once.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no response table at '{path}'")
    if error_rows not in _ERROR_ROWS:
        raise ValueError(f"error_rows must be one of {_ERROR_ROWS}, got {error_rows!r}")
    fmt = _format_of(path, format)
    if fmt not in _WRITE_FORMATS:
        raise ValueError(f"unknown format '{fmt}'; use 'parquet', 'csv', 'tsv' or 'jsonl'")
    if fmt == "parquet":
        df = read_table(path, format=fmt)
        meta = df.attrs.pop("metadata", {})
    else:
        side = _sidecar(path, stacklevel=stacklevel + 1)
        meta = side.get("metadata", {})
        dtypes = side.get("dtypes", {})
        if fmt in ("csv", "tsv"):
            df = read_table(path, format=fmt, sep=sep, dtype=str, keep_default_na=False)
            df = _typed_text_columns(df, dtypes)
        else:
            str_cols = {c: str for c, t in dtypes.items()
                        if t in ("object", "category", "str", "string")}
            df = read_table(path, format=fmt, sep=sep, dtype=str_cols or None)
        for c, levels in side.get("categories", {}).items():
            if c in df.columns:
                df[c] = _as_categorical(df[c], levels)
        for c, t in dtypes.items():
            if c in df.columns and t not in ("category", "object", "str", "string"):
                try:
                    df[c] = df[c].astype(t)
                except (TypeError, ValueError):
                    pass
    return finish_responses(df, meta, path, error_rows=error_rows, validate_table=validate_table,
                            stacklevel=stacklevel + 1)


def finish_responses(df: pd.DataFrame, metadata: dict, path, *, error_rows: str = "exclude",
                     validate_table: bool = True, stacklevel: int = 2) -> pd.DataFrame:
    """Rows read from a response table, as :func:`refusalstats.read_responses` returns them.

    The last step of every reader of a whole table, one file or many: error rows left out
    (or kept), the schema checked, the run metadata put in ``attrs["metadata"]``.

    Parameters
    ----------
    df : DataFrame
        The rows as read.
    metadata : dict
        The run metadata of the file (or files).
    path : str or Path
        Where the rows came from, for the error-row warning.
    error_rows : {"exclude", "keep"}
        As in :func:`refusalstats.read_responses`.
    validate_table : bool
        Check the schema (:func:`validate`) and return the validated table.
    stacklevel : int
        ``stacklevel`` of the error-row warning, counted from this function (2: its caller).

    Returns
    -------
    DataFrame
    """
    if error_rows not in _ERROR_ROWS:
        raise ValueError(f"error_rows must be one of {_ERROR_ROWS}, got {error_rows!r}")
    if error_rows == "exclude":
        df = _drop_error_rows(df, f"'{path}'", stacklevel=stacklevel + 1)
    n_err = df.attrs.get("n_error_rows")
    if validate_table:
        df = validate(df, error_rows="keep")
    df.attrs["metadata"] = metadata
    if n_err:
        df.attrs["n_error_rows"] = n_err
    return df


def _as_categorical(col: pd.Series, levels: list) -> pd.Categorical:
    """``col`` with the stored ``levels``: text read back as the levels' own type."""
    if all(isinstance(x, str) for x in levels):
        return pd.Categorical(col.astype(object).where(col.notna(), None), categories=levels)
    if not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        col = pd.to_numeric(col, errors="coerce")
    return pd.Categorical(col, categories=pd.Series(levels).astype(col.dtype).tolist())


def _sidecar(path: Path, stacklevel: int = 3) -> dict:
    """The ``.meta.json`` of a text table, or {} when absent or written for another file."""
    side_path = Path(str(path) + ".meta.json")
    if not side_path.exists():
        return {}
    try:
        side = json.loads(side_path.read_text())
    except ValueError as exc:
        warnings.warn(f"'{side_path}' is not valid JSON ({exc}); read without it", stacklevel=stacklevel)
        return {}
    want = side.get("data_sha256")
    if want and want != _file_sha256(path):
        warnings.warn(f"'{side_path}' does not describe '{path}' (the file changed after the "
                      "sidecar was written); its levels and metadata are ignored", stacklevel=stacklevel)
        return {}
    return side


def _typed_text_columns(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Columns of a CSV read as text (only empty cells missing), typed column by column.

    Label columns (the schema's categorical columns, and text columns by the sidecar)
    stay text: "None", "NA" are labels. ``refusal`` and every other column become
    numeric (or boolean) when all their cells are numbers (True/False) or missing-value
    spellings; otherwise they stay text as written.
    """
    labels = set(CATEGORICAL_COLUMNS) | {
        c for c, t in dtypes.items() if t in ("object", "category", "str", "string")}
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if c in labels and c != "refusal":
            continue
        cleaned = col.where(~col.isin(_NA_TOKENS))
        present = cleaned.dropna()
        num = pd.to_numeric(cleaned, errors="coerce")
        if int(num.notna().sum()) == len(present):  # every present cell is a number
            out[c] = num
        elif len(present) and present.isin(["True", "False", "true", "false"]).all():
            out[c] = cleaned.map({"True": True, "False": False, "true": True, "false": False})
        elif c == "refusal":
            out[c] = cleaned
    out.attrs = dict(df.attrs)
    return out
