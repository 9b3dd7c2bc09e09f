"""Persona x item 0/1 matrices, the form P2 publishes its refusal and hedge flags in.

One strict parser, :func:`parse_matrix`, on pandas' C reader: a header row ``,0,1,...``
(an empty first cell, then one column per item), then one row per persona whose cells
are 0/1 flags (``0``/``1``, ``0.0``/``1.0``, ``True``/``False``) or numpy-printed vectors
of them (``[0 1 0]``, the attitude matrices: one vector of paraphrases per statement).
A well-formed scalar matrix is read straight into int8 (a 193 x 58,492 matrix never
exists as strings); any other file is read once more as text, to convert spellings and
vectors or to name the first problem: its line, persona and item column.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DumpError

_TRUE = ("1", "1.0", "True", "true")
_FALSE = ("0", "0.0", "False", "false")


@dataclass
class PersonaItemMatrix:
    """A parsed persona x item matrix (what :func:`parse_matrix` returns).

    ``personas`` are the row names as stored, ``items`` the header labels (ints when they
    all are), ``values`` the flags, int8 of shape (P, N) or, for vector cells, (P, N, W);
    ``label`` names the source in messages.
    """

    personas: list[str]
    items: list  # column labels (ints when they all are)
    values: np.ndarray
    label: str

    @property
    def width(self) -> int:
        """Flags per cell: 1 for scalar cells, W for vectors of W."""
        return 1 if self.values.ndim == 2 else self.values.shape[2]


def _header(path: Path, label: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if not header or len(header) < 2:
        raise DumpError(
            f"{label}: expected a header row ',0,1,...,N-1' (an empty first cell, then "
            f"one column per item); got {header!r}"
        )
    return header


def _ragged(label: str, line: int, persona: str, n_cells: int, n_items: int) -> DumpError:
    return DumpError(
        f"{label}, line {line} (persona {persona!r}): {n_cells} cell(s) but the header has "
        f"{n_items} item columns — a ragged row; the file is truncated or corrupted, "
        "download it again"
    )


def parse_matrix(path: str | Path, label: str | None = None) -> PersonaItemMatrix:
    """Read a persona x item matrix CSV strictly: every row as long as the header, every cell 0/1.

    Parameters
    ----------
    path : str or Path
        The CSV file (P2's ``<dataset>_refusals.csv`` or ``_hedges.csv``).
    label : str, optional
        How messages name the file (e.g. its URL); default the path.

    Returns
    -------
    PersonaItemMatrix
        ``personas`` (row names as stored), ``items`` (header labels, ints when they all
        are), ``values`` (int8, personas x items, or personas x items x vector width).

    Raises
    ------
    DumpError
        A missing header, duplicate item columns or persona rows, a ragged row, a cell
        other than 0/1, ragged vectors, or no persona rows; the message names the line,
        persona and item column.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "off_refusals.csv"
    >>> _ = f.write_text(",0,1\\na_man,0,1\\na_woman,1,1\\n")
    >>> m = parse_matrix(f)
    >>> m.personas, m.items, m.values.tolist()
    (['a_man', 'a_woman'], [0, 1], [[0, 1], [1, 1]])
    """
    from ..table import TableTooLarge, check_size

    path = Path(path)
    label = str(path) if label is None else label
    try:
        check_size(path, label=label)
        header = _header(path, label)
        check_size(path, n_columns=len(header), label=label)
    except TableTooLarge as exc:
        raise DumpError(str(exc)) from None
    items = [h.strip() for h in header[1:]]
    if len(set(items)) != len(items):
        dup = sorted(h for h, k in Counter(items).items() if k > 1)
        raise DumpError(f"{label}: item column(s) {dup[:5]} appear more than once in the header")
    n = len(header)
    values = None
    try:  # the common case: plain 0/1 cells, parsed straight into int8
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            flags = pd.read_csv(path, header=0, usecols=range(1, n), dtype=np.int8,
                                engine="c").to_numpy()
        # usecols lets a row longer than the header pass, a shorter one fails int8 (NaN):
        # with every row complete, as many commas as header-long rows means none is longer
        # (a quoted comma only adds to the count, and sends the file to the text pass)
        commas = path.read_text(encoding="utf-8").count(",")
        if (flags.dtype == np.int8 and flags.shape[1] == n - 1
                and commas == (n - 1) * (len(flags) + 1) and np.isin(flags, (0, 1)).all()):
            names = pd.read_csv(path, header=0, usecols=[0], dtype=str, keep_default_na=False,
                                engine="c").iloc[:, 0]
            if len(names) == len(flags):
                personas = [p.strip() for p in names]
                values = np.ascontiguousarray(flags)
    except (ValueError, TypeError, pd.errors.ParserError, pd.errors.ParserWarning):
        pass
    if values is None:  # spellings, vectors, or a problem to name
        personas, values = _parse_text(path, label, items)
    if not personas:
        raise DumpError(f"{label}: the matrix has a header but no persona rows")
    if len(set(personas)) != len(personas):
        dups = sorted(p for p, k in Counter(personas).items() if k > 1)
        raise DumpError(f"{label}: persona row(s) {dups[:5]} appear more than once")
    try:
        item_ids: list = [int(h) for h in items]
    except ValueError:
        item_ids = list(items)
    return PersonaItemMatrix(personas, item_ids, values, label)


def _parse_text(path: Path, label: str, items: list[str]) -> tuple[list[str], np.ndarray]:
    """The matrix read as text, row by row in file order; the first problem raises."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            body = pd.read_csv(path, header=None, skiprows=1, names=list(range(len(items) + 1)),
                               index_col=False, dtype=str, keep_default_na=False,
                               skip_blank_lines=False, engine="c")
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        for k, fields in enumerate(csv.reader(lines[1:]), start=2):  # name the ragged row
            if fields and any(f.strip() for f in fields) and len(fields) != len(items) + 1:
                raise _ragged(label, k, fields[0].strip(), len(fields) - 1, len(items)) from None
        raise DumpError(f"{label}: not a valid CSV matrix ({exc})") from None
    cells_all = body.to_numpy(dtype=object)
    personas: list[str] = []
    row_lines: list[int] = []
    scalar_rows: list[np.ndarray] = []
    vector_rows: list[np.ndarray] = []
    vector_mode: bool | None = None
    for r, row in enumerate(cells_all):
        line = r + 2  # the header is line 1; pandas keeps blank lines as rows here
        if all(not str(c).strip() for c in row):
            continue  # a blank line (e.g. at the end of the file)
        persona = str(row[0]).strip()
        cells = row[1:]
        if (cells == "").any() and line <= len(lines):
            n_fields = len(next(csv.reader([lines[line - 1]])))
            if n_fields != len(items) + 1:
                raise _ragged(label, line, persona, n_fields - 1, len(items))
        personas.append(persona)
        row_lines.append(line)
        if vector_mode is None:
            vector_mode = str(cells[0]).lstrip().startswith("[")
        if vector_mode:
            vector_rows.append(cells)
            continue
        is_true = np.isin(cells, _TRUE)
        ok = is_true | np.isin(cells, _FALSE)
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            raise DumpError(
                f"{label}, line {line} (persona {persona!r}), item column "
                f"{items[j]!r}: value {str(cells[j])!r} is not 0/1 ({int((~ok).sum())} such "
                "cell(s) in this row). Refusal and hedge matrices hold one 0/1 flag per "
                "persona and item"
            )
        scalar_rows.append(is_true.astype(np.int8))
    if not personas:
        return [], np.zeros((0, len(items)), dtype=np.int8)
    if vector_mode:
        values = _parse_vector_cells(np.array(vector_rows, dtype=str), personas, items,
                                     row_lines, label)
    else:
        values = np.stack(scalar_rows)
    return personas, values


_VECTOR = re.compile(r"^\s*\[([^\]]*)\]\s*$")


def _parse_vector_cells(cells: np.ndarray, personas: list[str], items: list[str],
                        lines: list[int], label: str) -> np.ndarray:
    n_p, n_i = cells.shape
    width = None
    out = None
    for i in range(n_p):
        for j in range(n_i):
            m = _VECTOR.match(cells[i, j])
            where = f"{label}, line {lines[i]} (persona {personas[i]!r}), item column {items[j]!r}"
            if m is None:
                raise DumpError(
                    f"{where}: value {str(cells[i, j])!r} is not a vector like '[0 1 0]' although the "
                    "first cell of the matrix is one; all cells must have the same form"
                )
            parts = m.group(1).replace(",", " ").split()
            if width is None:
                width = len(parts)
                if width == 0:
                    raise DumpError(f"{where}: empty vector '[]'")
                out = np.zeros((n_p, n_i, width), dtype=np.int8)
            if len(parts) != width:
                raise DumpError(
                    f"{where}: vector of {len(parts)} values, but the first cell has {width} — "
                    "ragged vectors; the file is corrupted"
                )
            for k, v in enumerate(parts):
                if v in _TRUE:
                    out[i, j, k] = 1
                elif v not in _FALSE:
                    raise DumpError(f"{where}, position {k}: value {v!r} is not 0/1")
    assert out is not None
    return out

