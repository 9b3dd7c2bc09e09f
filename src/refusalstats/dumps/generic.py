"""Any response file (CSV, TSV, JSONL, JSON, Parquet) mapped onto the tidy schema."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..table import SchemaError, read_table, validate
from .classify import _resolve_detector, _run_detector
from .download import _local, sha256_of
from .errors import DumpError, _schema_error


def _read_file(path: Path, label: str, format: str | None = None) -> pd.DataFrame:
    """``path`` read by :func:`refusalstats.table.read_table`; its errors name ``label``
    (a URL's address rather than its cache file) and are :class:`DumpError`."""
    try:
        return read_table(path, format=format)
    except SchemaError:
        raise
    except IsADirectoryError:
        raise DumpError(f"{label} is a folder; give a file") from None
    except ValueError as exc:
        msg = str(exc).replace(f"'{path}'", f"'{label}'") if str(path) != label else str(exc)
        raise DumpError(msg if label in msg else f"{label}: {msg}") from None


def read_generic(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    detector: Any = None,
    text_column: str = "response",
    constants: Mapping[str, Any] | None = None,
    format: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Read any response file and map its columns onto the tidy schema.

    Parameters
    ----------
    path : str or Path
        A CSV, TSV, JSONL, JSON (list of records) or Parquet file, optionally
        gzip-compressed, or an http(s) URL of one.
    mapping : mapping of str to str, optional
        Schema column -> column in the file, e.g. ``{"model": "llm", "response":
        "output"}``. Every source column must exist.
    detector : str, Detector or callable, optional
        Classify ``text_column`` (after mapping) with this detector and store the result
        in ``refusal``; an existing ``refusal`` column is kept as ``refusal_original``.
        Without a detector the file must provide ``refusal``.
    text_column : str
        The column holding the answers (default ``response``).
    constants : mapping, optional
        Columns to add with one value for every row, for required columns the file
        lacks (e.g. ``{"task": "qa", "persona": "none", "prompt": "p1"}``).
    format : {"csv", "tsv", "jsonl", "json", "parquet"}, optional
        Override the format guessed from the extension.
    sha256 : str, optional
        Pin the file to this SHA-256 (64 hex digits); another content raises
        :class:`~refusalstats.dumps.ChecksumError`.
    progress : bool
        Show a progress bar while downloading a URL.

    Returns
    -------
    DataFrame
        The validated tidy table; columns not named in ``mapping`` pass through.
        ``attrs["metadata"]`` records the source, mapping, detector, constants and the
        file's SHA-256.

    Raises
    ------
    DumpError
        A mapping naming absent columns, a mapped name clashing with an existing
        column, missing answers for the detector, or a table that fails
        :func:`refusalstats.validate` (every problem listed).

    Examples
    --------
    >>> t = read_generic("answers.csv", {"model": "llm", "response": "output"},
    ...                  constants={"task": "nli", "persona": "none", "prompt": "p1"},
    ...                  detector="paper")  # doctest: +SKIP
    """
    label = str(path)
    local = _local(path, progress=progress, sha256=sha256)
    if local.is_dir():
        raise DumpError(f"{label} is a folder; read_generic() reads one file")
    df = _read_file(local, label, format)
    mapping = dict(mapping or {})
    absent = sorted({src for src in mapping.values() if src not in df.columns})
    if absent:
        raise DumpError(
            f"{label}: the mapping names column(s) {absent} that the file does not have; its "
            f"columns are {list(df.columns)}"
        )
    clash = [dst for dst, src in mapping.items()
             if dst != src and dst in df.columns and dst not in mapping.values()]
    if clash:
        raise DumpError(
            f"{label}: mapping onto {clash} would overwrite the file's own column(s) of that "
            f"name; map those too (e.g. {clash[0]}_original={clash[0]}) or drop the mapping"
        )
    srcs = list(mapping.values())
    dup_src = sorted({s for s in srcs if srcs.count(s) > 1})
    if dup_src:
        raise DumpError(f"{label}: column(s) {dup_src} are mapped twice; map each column once")
    df = df.rename(columns={src: dst for dst, src in mapping.items()})
    for col, value in dict(constants or {}).items():
        if col in df.columns:
            raise DumpError(
                f"{label}: constants sets column '{col}', which the file already has; drop it "
                "from constants or map the file's column to another name"
            )
        df[col] = value
    det_name = None
    if detector is not None:
        det, det_name = _resolve_detector(detector)
        if text_column not in df.columns:
            raise DumpError(
                f"{label}: no text column '{text_column}' to run the detector on; map one "
                f"(mapping={{'{text_column}': '<column>'}}) or pass text_column=. Columns: "
                f"{list(df.columns)}"
            )
        texts = df[text_column]
        bad = texts.isna().to_numpy() | ~texts.map(lambda t: isinstance(t, str)).to_numpy()
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise DumpError(
                f"{label}: {int(bad.sum())} row(s) of '{text_column}' are missing or not text "
                f"(first rows {rows}); a missing answer is neither refusal nor compliance — fill "
                "or drop them in the file"
            )
        if "refusal" in df.columns:
            df = df.rename(columns={"refusal": "refusal_original"})
        df["refusal"] = _run_detector(det, texts.tolist(), label)
    elif "refusal" not in df.columns:
        raise DumpError(
            f"{label}: no 'refusal' column; map one (mapping={{'refusal': '<column>'}}) or pass "
            f"detector='default' (or 'paper', 'xstest', 'hedge') to classify '{text_column}'"
        )
    try:
        out = validate(df)
    except SchemaError as exc:
        raise _schema_error(exc, label) from None
    out.attrs["metadata"] = {"source": label, "mapping": mapping, "detector": det_name,
                             "constants": {k: str(v) for k, v in dict(constants or {}).items()},
                             "sha256": sha256_of(local)}
    return out


