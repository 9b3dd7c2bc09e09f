"""Parquet sources: counts per cluster x input level, never rows.

A 0/1 output with inputs cut into levels needs only, per input, the counts of rows and
refusals per (input level, cluster) line; :func:`_encode_stream` turns each such counts table
into weighted records that the table estimator treats exactly as the rows they stand for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..table import SchemaError
from .encode import (
    _Clusters,
    _encode_clusters,
    _factorize,
    _is_numeric,
    _Output,
    _Partition,
    default_partitions,
)


def _source_schema(data):
    """The Arrow schema of a Parquet file, shard folder, glob or list (read from metadata)."""
    from ..sources import open_dataset

    return open_dataset(data).schema


class RowsNeeded(ValueError):
    """w2_sensitivity on a Parquet source cannot stream this analysis: it needs the rows.

    ``what`` says what needs the rows; ``columns`` names the columns the analysis uses, so
    a caller can read just those into memory.
    """

    def __init__(self, message: str, what: str, columns: list[str]):
        super().__init__(message)
        self.what = what
        self.columns = list(columns)


def _rows_needed(data, what: str, columns: list[str]) -> RowsNeeded:
    """The error for an analysis that needs rows, with the way to get them."""
    src = repr(str(data)) if not isinstance(data, (list, tuple)) else "paths"
    return RowsNeeded(
        f"w2_sensitivity on a Parquet source streams counts per input level, which needs a 0/1 "
        f"output and categorical inputs; {what} needs the rows. Pass partitions={{name: 'levels'}} "
        "for a numeric input with few values, or read just the columns it uses into memory: "
        f"w2_sensitivity(pd.read_parquet({src}, columns={columns}), ...)",
        what,
        columns,
    )


def _collapse(data, by: list[str], cl_cols: list[str] | None, output: str, needed: list[str],
              exclude: dict | None = None):
    """``collapse`` with the output as the 0/1 response; other outputs need rows (say so).

    ``exclude`` ({column: values}): the columns are collapsed too, their lines holding
    those values dropped and the rest summed back, so the counts are those of the other
    rows (each line's rows share the column's value)."""
    from ..counts import collapse

    extra = [c for c in (exclude or {}) if c not in by and c not in (cl_cols or [])]
    try:
        counts = collapse(data, by=[*by, *extra], cluster=cl_cols or None, refusal=output)
    except SchemaError as exc:
        if "must hold 0/1" in str(exc):
            raise _rows_needed(data, f"an output {output!r} with values other than 0/1 "
                               "(ordinal or continuous)", needed) from None
        raise
    if not exclude:
        return counts
    keep = np.ones(len(counts), dtype=bool)
    for col, values in exclude.items():
        keep &= ~counts[col].astype(str).isin(values).to_numpy()
    counts = counts[keep]
    if counts.empty:
        raise ValueError(f"w2_sensitivity: no rows are left after leaving out {exclude}")
    keys = [*by, *(cl_cols or [])]
    for c in keys:
        if isinstance(counts[c].dtype, pd.CategoricalDtype):
            counts = counts.assign(**{c: counts[c].cat.remove_unused_categories()})
    if not keys:
        return pd.DataFrame({"n": [int(counts["n"].sum())],
                             "refusals": [int(counts["refusals"].sum())]})
    return (counts.groupby(keys, observed=True, sort=True)[["n", "refusals"]].sum()
            .reset_index())


def _check_stream(data, out_names: list[str], inputs: list[str], partitions: dict,
                  columns: list[str], needed: list[str]) -> None:
    """What a Parquet source can stream: a 0/1 output and inputs cut into levels."""
    import pyarrow as pa

    if len(out_names) != 1:
        raise _rows_needed(data, f"a multivariate output {out_names}", needed)
    name = out_names[0]
    if name not in columns:
        raise SchemaError(f"w2_sensitivity: output column {name!r} is not in the table; its "
                          f"columns are {columns}")
    schema = _source_schema(data)

    def value_type(col):
        t = schema.field(col).type
        return t.value_type if pa.types.is_dictionary(t) else t

    ot = value_type(name)
    if not (pa.types.is_integer(ot) or pa.types.is_floating(ot) or pa.types.is_boolean(ot)):
        raise _rows_needed(data, f"a non-numeric (nominal) output {name!r} of type {ot}", needed)
    for inp in inputs:
        t = value_type(inp)
        spec = partitions.get(inp)
        if isinstance(spec, str) and spec != "levels":
            raise ValueError(f"partitions[{inp!r}] must be 'levels' or an integer number of rank "
                             f"bins, got {spec!r}")
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            raise _rows_needed(data, f"cutting input {inp!r} into {int(spec)} rank bins", needed)
        if pa.types.is_floating(t) and spec != "levels":
            raise _rows_needed(data, f"the numeric input {inp!r} (equal-count rank bins)", needed)


def _encode_stream(data, name: str, inputs: list[str], partitions: dict, cl,
                   needed: list[str], exclude: dict | None = None):
    """Per input, the estimator's arrays from ``collapse(data, by=[input], cluster=cl)``.

    Each line of the counts table (input level x cluster) becomes two weighted records,
    output 0 (``n - refusals`` rows) and output 1 (``refusals`` rows); the levels and cluster
    ids are ordered as the in-memory path orders them (``_factorize`` on the counts
    columns), so the tables, the cluster matrix and hence every random draw are the same.
    One pass over the source per input: memory is clusters x levels, not rows.

    A generator of ``(_Output, _Partition, _Clusters | None)``, one input at a time: an
    input's counts and records are built when the caller asks for them and are freed once
    it moves on, so the peak holds one input's records, not all of them (issue #15).
    """
    cl_cols = [] if cl is None else ([cl] if isinstance(cl, str) else list(cl))
    state: dict = {}  # the first input's row count, for the others
    for inp in inputs:
        # yielded straight from the call: no local of this frame keeps the records alive
        yield _encode_stream_input(data, name, inp, partitions, cl, cl_cols, needed, exclude,
                                   state)


def _encode_stream_input(data, name: str, inp: str, partitions: dict, cl, cl_cols: list[str],
                         needed: list[str], exclude: dict | None, state: dict
                         ) -> tuple[_Output, _Partition, _Clusters | None]:
    """One input of :func:`_encode_stream` (its temporaries die with this frame);
    ``state["n_total"]``: the rows, set by the first input."""
    counts = _collapse(data, [inp], cl_cols, name, needed, exclude)
    n_lines = counts["n"].to_numpy(np.int64)
    r_lines = counts["refusals"].to_numpy(np.int64)
    n_total = state.get("n_total")
    if n_total is None:
        n_total = state["n_total"] = int(n_lines.sum())
        n_ref = int(r_lines.sum())
        if n_ref in (0, n_total):
            raise ValueError(
                f"output column {name!r} is constant (every row is {int(n_ref > 0)}): "
                "Var[Y] = 0 and the index is undefined. Check the column, or the subset "
                "you passed.")
    # records: every line twice (output 0, output 1), lines without such rows dropped;
    # the lines with answers 0, then those with answers 1 (no 2 x lines temporaries)
    n0_lines = n_lines - r_lines
    del n_lines
    k0, k1 = np.flatnonzero(n0_lines > 0), np.flatnonzero(r_lines > 0)
    line = np.concatenate([k0, k1])  # record -> its counts line
    out = _Output("ordinal", name, n_total,
                  np.repeat(np.array([0, 1], dtype=np.int64), [len(k0), len(k1)]),
                  np.array([0.0, 1.0]),
                  w=np.concatenate([n0_lines[k0], r_lines[k1]], dtype=np.float64))
    del n0_lines, r_lines, k0, k1
    col = counts[inp]
    spec = partitions.get(inp)
    if spec is None and _is_numeric(col) and not pd.api.types.is_bool_dtype(col) \
            and col.nunique() > default_partitions(n_total):
        raise _rows_needed(data, f"the integer input {inp!r} with {col.nunique():,} values "
                           f"(more than {default_partitions(n_total)}: equal-count rank bins)",
                           needed)
    codes, labels = _factorize(col)
    if len(labels) < 2:
        raise ValueError(
            f"input {inp!r} has a single level ({labels[0]!r}) in these data: a sensitivity "
            "index compares partitions, so it needs at least two. Drop the input or pass data "
            "where it varies.")
    part = _Partition(inp, codes[line], len(labels), "levels", labels)
    del codes, col
    clus = None
    if cl_cols:
        c = _encode_clusters(counts[cl_cols], cl)
        clus = _Clusters(c.name, c.codes[line], c.n)
    return out, part, clus
