"""What kind of table source an analysis was given, and the files behind it.

Every analysis takes ``data`` as one of:

* a DataFrame (``"frame"``);
* a text table file, ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` (optionally ``.gz``),
  read into a DataFrame by :func:`refusalstats.read_responses` (``"table-file"``);
* a Parquet file (``"parquet-file"``), a folder of Parquet shards (``"folder"``, searched
  recursively), a glob such as ``"runs/**/part-*.parquet"`` (``"glob"``), a generation run
  directory written by ``refusalstats generate`` (``"run-dir"``), or a list of those
  (``"list"``): these are streamed, never read whole.

:func:`source_of` tells them apart once, for every analysis. Reading folders and globs
follows one rule: each file is read once (files are identified by their real path), a
symbolic link is never followed out of the folder given (or out of a glob's fixed leading
folders), folder links are not descended at all (what they point to inside the folder is
read through its own path; a link loop is harmless), and files or folders whose names
start with ``.`` or ``_`` are skipped. Links that are left out are named in a warning.

:func:`read_responses` (``refusalstats.read_responses``) reads any of them whole into a
validated response table; one file goes through :mod:`refusalstats.table`'s reader.
"""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .rundir import (
    RESPONSES_FILE,
    RUN_FILE,
    SHARD_GLOB,
    SHARD_METADATA_KEY,
    SHARDS_DIR,
    is_run_dir,
)

__all__ = [
    "SOURCE_KINDS",
    "Source",
    "frame_or_path",
    "is_dataset",
    "open_dataset",
    "parquet_files",
    "read_responses",
    "read_source",
    "scan_columns",
    "source_of",
]

#: The kinds :func:`source_of` tells apart.
SOURCE_KINDS = ("frame", "table-file", "parquet-file", "folder", "glob", "run-dir", "list")

#: File name prefixes that are never read from a folder or a glob (as pyarrow's
#: ``ignore_prefixes`` default: hidden files, ``_SUCCESS``/``_metadata`` side files).
IGNORE_PREFIXES = (".", "_")

_PARQUET_SUFFIXES = (".parquet", ".pq")
_TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Source:
    """A table source, classified once.

    Attributes
    ----------
    kind : str
        One of :data:`SOURCE_KINDS`.
    frame : DataFrame or None
        The rows, for ``"frame"`` and ``"table-file"`` (read by
        :func:`refusalstats.read_responses`, not validated).
    files : tuple of Path
        The Parquet files to stream, for the other kinds (sorted, each once).
    label : str
        How messages name the source (the path as given, ``"DataFrame"``, ...).
    """

    kind: str
    frame: pd.DataFrame | None
    files: tuple[Path, ...]
    label: str

    @property
    def streamed(self) -> bool:
        """True when the rows are streamed from Parquet files rather than held in memory."""
        return self.frame is None

    def __repr__(self) -> str:  # the frame may be large: never print it
        what = f"{len(self.frame):,} rows" if self.frame is not None else f"{len(self.files)} file(s)"
        return f"Source(kind={self.kind!r}, {what}, label={self.label!r})"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_text_table(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _TEXT_SUFFIXES


def source_of(data, *, where: str = "", read: bool = True) -> Source:
    """Classify ``data`` as a table source (the one place every analysis asks).

    Parameters
    ----------
    data : DataFrame, str, os.PathLike or list of them
        What the analysis was given.
    where : str
        The calling function, for messages.
    read : bool
        Read a text table file into ``frame`` (``False``: leave ``frame`` None; only
        the kind is wanted).

    Returns
    -------
    Source

    Raises
    ------
    TypeError
        ``data`` is none of the above.
    FileNotFoundError
        No such file or folder, or nothing matches a glob.
    ValueError
        A folder mixing run directories and other Parquet files; a text table inside a
        list of Parquet sources.

    Examples
    --------
    >>> import pandas as pd
    >>> source_of(pd.DataFrame({"refusal": [0, 1]})).kind
    'frame'
    """
    prefix = f"{where}: " if where else ""
    if isinstance(data, pd.DataFrame):
        return Source("frame", data, (), "DataFrame")
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if _is_glob(text):
            return Source("glob", None, tuple(parquet_files(text)), text)
        p = Path(text).expanduser()
        if p.is_dir():
            kind = "run-dir" if _is_run_dir(p) else "folder"
            return Source(kind, None, tuple(parquet_files(p)), text)
        if _is_text_table(p):
            if not p.exists():
                raise FileNotFoundError(f"{prefix}no table file at '{p}'")
            frame = None
            if read:
                from .table import read_response_file, read_table

                if p.name.lower().endswith((".json", ".json.gz")):  # records: read as they are
                    frame = read_table(p)
                else:
                    frame = read_response_file(p, validate_table=False)
                frame.attrs = {}
            return Source("table-file", frame, (), text)
        return Source("parquet-file", None, tuple(parquet_files(p)), text)
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, (str, os.PathLike)) for x in data):
        text_tables = [os.fspath(x) for x in data if _is_text_table(Path(os.fspath(x)))]
        if text_tables:
            raise ValueError(f"{prefix}a list of paths must name Parquet files, folders or globs; "
                             f"'{text_tables[0]}' is a text table: read it with "
                             "rs.read_responses(...) (or pass it alone)")
        return Source("list", None, tuple(parquet_files(list(data))), f"{len(data)} path(s)")
    raise TypeError(f"{prefix}expected a pandas DataFrame, a table file, a Parquet file, a "
                    f"folder of shards, a glob or a list of paths; got {type(data).__name__}")


def is_dataset(data) -> bool:
    """True for a source that is streamed from Parquet files (not a DataFrame or text file).

    Parameters
    ----------
    data : object
        What an analysis was given as its table.

    Returns
    -------
    bool
        True for a path, glob or non-empty list of paths that does not name a text table
        (CSV, TSV, JSON lines), which :func:`source_of` reads into a DataFrame instead.

    Examples
    --------
    >>> is_dataset("runs/big/"), is_dataset(["a.parquet", "b.parquet"]), is_dataset("t.csv")
    (True, True, False)
    """
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        return _is_glob(text) or not _is_text_table(Path(text))
    return isinstance(data, (list, tuple)) and bool(data) and all(
        isinstance(x, (str, os.PathLike)) for x in data)


def frame_or_path(data, *, where: str = ""):
    """A text table file (CSV, TSV, JSON lines) read into a DataFrame; anything else as given.

    For analyses that branch on "DataFrame or streamed Parquet source": a CSV path becomes
    its rows (read by :func:`refusalstats.read_responses`, not validated), so
    ``rs.logit(formula, "t.csv")`` reads what ``refusalstats fit t.csv`` reads.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        What the analysis was given.
    where : str
        The calling function, for messages.

    Returns
    -------
    DataFrame, or ``data`` unchanged
    """
    if isinstance(data, (str, os.PathLike)) and not is_dataset(data):
        return source_of(data, where=where).frame
    return data


def read_responses(path: str | Path, *, format: str | None = None, validate_table: bool = True,
                   sep: str | None = None, error_rows: str = "exclude") -> pd.DataFrame:
    """Read a response table written by :func:`refusalstats.write_responses` (or any file in the schema).

    One file is read by :func:`refusalstats.table.read_response_file` (through
    :func:`refusalstats.read_table`); a folder, glob or run directory through
    :func:`read_source` (each file once, links kept inside the folder). Run metadata comes back in
    ``df.attrs["metadata"]``; categorical columns stay categorical with their levels in
    their stored order (Parquet natively, CSV/JSONL through the ``.meta.json`` sidecar
    :func:`refusalstats.write_responses` writes). Labels round-trip exactly: in a CSV only empty cells
    are missing in label (text) columns, so a persona called "None" or "NA" stays one;
    the spellings pandas reads as missing ("NA", "null", ...) are missing only in
    ``refusal`` and numeric columns.

    Parameters
    ----------
    path : str or Path
        A ``.parquet``, ``.csv``, ``.tsv`` or ``.jsonl`` file (text formats may end in ``.gz``);
        or a folder of Parquet shards, a glob, or a run directory written by
        ``refusalstats generate`` (its labelled shards; :func:`source_of`).
    format : {"parquet", "csv", "tsv", "jsonl"}, optional
        Overrides the extension.
    validate_table : bool
        Check the schema (:func:`refusalstats.validate`) and return the validated table.
    sep : str, optional
        Field delimiter of a CSV file; by default the most frequent of ``,`` ``;`` tab
        ``|`` in the header line (semicolon CSVs from spreadsheet locales read as they are).
    error_rows : {"exclude", "keep"}
        Rows of prompts that got no answer (``refusal_source == "error"``) are left out
        with a warning saying how many (``attrs["n_error_rows"]``), or kept.

    Returns
    -------
    DataFrame
        The table (validated and in canonical form when ``validate_table``), with the run
        metadata (a dict, empty when the file has none) in ``attrs["metadata"]``.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ValueError
        As :func:`refusalstats.read_table`: no file, a folder, an unknown extension, an empty,
        truncated or unparsable file, two columns of one name.
    SchemaError
        With ``validate_table``, every problem of the table at once.

    Examples
    --------
    >>> table = rs.read_responses("runs/table.parquet")  # doctest: +SKIP
    >>> table.attrs["metadata"]["seed"]  # doctest: +SKIP
    0
    """
    from .table import finish_responses, read_response_file

    # a folder of Parquet shards, a `refusalstats generate` run directory or a glob: its
    # rows through read_source; one file: the table's own reader
    streamed = format is None and (Path(path).is_dir() or any(ch in str(path) for ch in "*?["))
    if not streamed:
        return read_response_file(path, format=format, validate_table=validate_table, sep=sep,
                                  error_rows=error_rows, stacklevel=3)
    if error_rows not in ("exclude", "keep"):
        raise ValueError(f"error_rows must be one of ('exclude', 'keep'), got {error_rows!r}")
    df = read_source(path, where="read_responses")
    meta = df.attrs.pop("metadata", {})
    return finish_responses(df, meta, Path(path), error_rows=error_rows,
                            validate_table=validate_table, stacklevel=3)


def read_source(data, columns: Sequence[str] | None = None, *, where: str = "") -> pd.DataFrame:
    """The rows of any source as a DataFrame (only ``columns`` when given).

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        As :func:`source_of` takes it.
    columns : list of str, optional
        Read only these columns.
    where : str
        The calling function, for messages.

    Returns
    -------
    DataFrame
        The rows, not validated. Parquet run metadata of a single file is in
        ``attrs["metadata"]``.
    """
    src = source_of(data, where=where)
    if src.frame is not None:
        if columns is None:
            return src.frame
        from .table import missing_columns

        missing_columns(src.frame, columns, where=where)
        return src.frame[list(columns)]
    dataset = _dataset(list(src.files))
    if columns is not None:
        from .table import SchemaError, its_columns

        absent = [c for c in columns if c not in dataset.schema.names]
        if absent:
            raise SchemaError([(f"{where + ': ' if where else ''}column(s) {absent} are not in "
                               f"'{src.label}'; {its_columns(dataset.schema.names, absent)}")])
    df = dataset.to_table(columns=None if columns is None else list(columns)).to_pandas()
    meta = {}
    if len(src.files) == 1:
        import pyarrow.parquet as pq

        from .table import METADATA_KEY

        kv = pq.read_metadata(src.files[0]).metadata or {}
        if METADATA_KEY in kv:
            meta = json.loads(kv[METADATA_KEY].decode())
    df.attrs["metadata"] = meta
    return df


# --------------------------------------------------------------------------- file lists
def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: Path, skipped: list[str]) -> list[Path]:
    """Regular files under ``root`` (each once, by real path), never leaving ``root``.

    Folder links are not descended (their targets inside ``root`` are reached through
    their own paths); file links that resolve outside ``root`` are left out and named in
    ``skipped``.
    """
    real_root = os.path.realpath(root)
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if d.startswith(IGNORE_PREFIXES):
                continue
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _inside(target, real_root):
                    skipped.append(f"'{full}' -> '{target}' (outside '{root}')")
                elif _inside(real_root, target):
                    skipped.append(f"'{full}' -> '{target}' (a link loop)")
                continue  # inside the folder: read through its own path
            keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            if f.startswith(IGNORE_PREFIXES):
                continue
            full = os.path.join(dirpath, f)
            real = os.path.realpath(full)
            if os.path.islink(full) and not _inside(real, real_root):
                skipped.append(f"'{full}' -> '{real}' (outside '{root}')")
                continue
            if not os.path.isfile(real):
                continue
            out.setdefault(real, Path(full))
    return sorted(out.values(), key=str)


def _glob_parts(pattern: str) -> tuple[Path, list[str]]:
    """The fixed leading folder of a glob and its remaining components."""
    parts = Path(pattern).expanduser().parts
    fixed: list[str] = []
    for i, part in enumerate(parts):
        if _is_glob(part):
            return (Path(*fixed) if fixed else Path(".")), list(parts[i:])
        fixed.append(part)
    return Path(*fixed), []  # pragma: no cover - callers check _is_glob first


def _match(rel: tuple[str, ...], pats: list[str]) -> bool:
    """``fnmatch`` of path components, ``**`` matching zero or more folders (as glob)."""
    if not pats:
        return not rel
    head, rest = pats[0], pats[1:]
    if head == "**":
        return any(_match(rel[i:], rest) for i in range(len(rel) + 1))
    if not rel:
        return False
    name = rel[0]
    if name.startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, head) and _match(rel[1:], rest)


def _glob_files(pattern: str, skipped: list[str]) -> list[Path]:
    """Files matching ``pattern`` (``**`` recursive), each once, links never followed out
    of the pattern's fixed leading folder and folder links never descended."""
    base, pats = _glob_parts(pattern)
    if not base.is_dir():
        return []
    found = []
    for f in _walk(base, skipped):
        rel = f.relative_to(base).parts
        if _match(rel, pats):
            found.append(f)
    return found


def _warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(f"reading '{where}': left out symbolic link(s) {', '.join(skipped[:3])}{more}; "
                      "links are never followed out of the folder given, and folder links are not "
                      "descended, so each file is read once", UserWarning, stacklevel=4)


def parquet_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files behind a file, a folder (recursive), a glob or a list, sorted.

    Each file comes once (by its real path, so a link ``latest -> run3`` beside ``run3``
    adds nothing); links out of the folder given are left out with a warning; a
    generation run directory gives its labelled shards (see :func:`_run_dir_files`).

    Parameters
    ----------
    path : str, Path or list of them
        The source.

    Returns
    -------
    list of Path
    """
    if isinstance(path, (list, tuple)):
        files: dict[str, Path] = {}
        for p in path:
            for f in parquet_files(p):
                files.setdefault(os.path.realpath(f), f)
        if not files:
            raise FileNotFoundError("the list of paths is empty")
        return list(files.values())
    text = os.fspath(path)
    skipped: list[str] = []
    if _is_glob(text):
        files = _glob_files(text, skipped)
        _warn_skipped(skipped, text)
        if not files:
            raise FileNotFoundError(f"no file matches the pattern '{text}'")
        return files
    p = Path(text).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no Parquet file or folder at '{p}'")
    if p.is_file():
        return [p]
    if _is_run_dir(p):
        return _run_dir_files(p, [p])
    found = _walk(p, skipped)
    _warn_skipped(skipped, text)
    runs = sorted({f.parent for f in found if f.name == RUN_FILE and _is_run_dir(f.parent)}, key=str)
    files = [f for f in found if f.suffix.lower() in _PARQUET_SUFFIXES]
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


# --------------------------------------------------------------------------- run directories
_SHARD_METADATA_KEY = SHARD_METADATA_KEY  # the run-directory layout: refusalstats.rundir
_warned_partial: set[tuple] = set()


_is_run_dir = is_run_dir


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
    import pyarrow.parquet as pq

    files: list[Path] = []
    unlabelled: list[Path] = []
    detectors: dict[str, Path] = {}
    groups: dict[str, dict] = {}  # experiment (prompts fingerprint) -> rows expected and found
    for run in runs:
        skipped: list[str] = []
        parts = [f for f in _walk(run / SHARDS_DIR, skipped)
                 if fnmatch.fnmatchcase(f.name, SHARD_GLOB)] if (run / SHARDS_DIR).is_dir() else []
        _warn_skipped(skipped, str(run / SHARDS_DIR))
        footers = [pq.read_metadata(f) for f in parts]
        infos = [json.loads((m.metadata or {}).get(_SHARD_METADATA_KEY, b"{}")) for m in footers]
        labelled = bool(parts) and all({"model", "refusal"} <= set(m.schema.names) for m in footers)
        if labelled:
            files.extend(parts)
            for info in infos:
                if info.get("detector") is not None:
                    detectors.setdefault(str(info["detector"]), run)
            n_found = sum(m.num_rows for m in footers)
        elif (run / RESPONSES_FILE).is_file():
            files.append(run / RESPONSES_FILE)
            n_found = pq.read_metadata(run / RESPONSES_FILE).num_rows
        else:
            unlabelled.append(run)
            continue
        try:
            meta = json.loads((run / RUN_FILE).read_text())
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


# --------------------------------------------------------------------------- datasets
def scan_pool():
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
        As :func:`source_of` takes them (streamed kinds).

    Returns
    -------
    pyarrow.dataset.Dataset
    """
    return _dataset(parquet_files(path))


def scan_columns(path: str | Path | Sequence[str | Path]) -> list[str]:
    """Column names of any table source, read from the schema only where it is Parquet.

    Parameters
    ----------
    path : path, glob, list of paths or DataFrame
        A Parquet file, a folder of Parquet shards (searched recursively), a glob, a
        list of those, a text table file (its header) or a DataFrame.

    Returns
    -------
    list of str
        The source's column names (the unified schema of its files), no rows read.

    Raises
    ------
    FileNotFoundError
        No such file or folder, or no file matching the glob.

    Examples
    --------
    >>> rs.scan_columns("runs/big/")  # doctest: +SKIP
    ['item_id', 'model', 'task', 'persona', 'prompt', 'refusal']
    """
    if isinstance(path, pd.DataFrame):
        return list(map(str, path.columns))
    if not is_dataset(path):
        return list(map(str, source_of(path).frame.columns))
    return list(open_dataset(path).schema.names)


#: The column that marks a row whose prompt got no answer, and the mark
#: (``refusalstats.table.ERROR_SOURCE``): such rows have no ``refusal`` and are left out.
ERROR_COLUMN = "refusal_source"
ERROR_MARK = "error"

_warned_errors: set[tuple] = set()


def _error_mask(arr):
    """Boolean pyarrow mask of the error rows of a ``refusal_source`` column (None: none can be).

    As :func:`refusalstats.table.is_error_row`: the string ``"error"``; a missing value or
    any other value (or a column that is not text) is not an error row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
            or getattr(pa.types, "is_string_view", lambda t: False)(arr.type)):
        return None
    return pc.fill_null(pc.equal(arr, pa.scalar(ERROR_MARK, arr.type)), False)


def _source_state(src: Source) -> tuple:
    """What identifies a source's rows for the once-only warnings (files and their stamps)."""
    if src.frame is not None:
        return ("frame", id(src.frame), len(src.frame))
    state = []
    for f in src.files:
        try:
            st = os.stat(f)
            state.append((os.path.realpath(f), st.st_mtime_ns, st.st_size))
        except OSError:
            state.append((str(f), None, None))
    return tuple(state)


def _warn_error_rows(src: Source, n_err: int, n_rows: int) -> None:
    """The warning :func:`refusalstats.validate` gives for error rows, once per source state."""
    key = (_source_state(src), n_err, n_rows)
    if key in _warned_errors:
        return
    _warned_errors.add(key)
    where = "DataFrame" if src.kind == "frame" else f"'{src.label}'"
    warnings.warn(
        f"{where}: {n_err:,} of {n_rows:,} row(s) are left out as errors (refusal_source "
        f"'error': the prompt got no answer, its error text is in column 'error'); the "
        "analyses use the other rows", UserWarning, stacklevel=4)


def _without_errors(batch, columns: list[str], flagged: bool):
    """``batch`` without its error rows, projected to ``columns``; and how many it had."""
    import pyarrow.compute as pc

    if not flagged:
        return batch, 0
    mask = _error_mask(batch.column(ERROR_COLUMN))
    n_err = 0 if mask is None else int(pc.sum(mask).as_py() or 0)
    if n_err:
        batch = batch.filter(pc.invert(mask))
    if ERROR_COLUMN not in columns:
        batch = batch.select(columns)
    return batch, n_err


def source_batches(src: Source, columns: list[str], batch_rows: int, *, where: str,
                   stats: dict | None = None):
    """(record batch, file) pairs of ``columns`` from a source, one batch at a time.

    Rows of prompts that got no answer (``refusal_source == "error"``, no ``refusal``)
    are left out, as :func:`refusalstats.validate` and :func:`refusalstats.read_responses`
    leave them out of a table in memory: one warning (once per source state) says how
    many. ``stats``, when given, receives ``"rows"`` (rows read, errors included) and
    ``"n_error_rows"`` once the batches are exhausted.
    """
    import pyarrow as pa

    columns = list(columns)
    n_err = n_rows = 0
    if src.frame is not None:
        flagged = ERROR_COLUMN in src.frame.columns
        read = [*columns, ERROR_COLUMN] if flagged and ERROR_COLUMN not in columns else columns
        for start in range(0, len(src.frame), int(batch_rows)):
            chunk = src.frame.iloc[start:start + int(batch_rows)][read]
            try:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ValueError(f"{where}: cannot read the columns {read}: {exc}") from None
            for batch in table.to_batches():
                n_rows += batch.num_rows
                batch, k = _without_errors(batch, columns, flagged)
                n_err += k
                yield batch, None
    else:
        dataset = _dataset(list(src.files))
        flagged = ERROR_COLUMN in dataset.schema.names
        read = [*columns, ERROR_COLUMN] if flagged and ERROR_COLUMN not in columns else columns
        for fragment in dataset.get_fragments():
            path = getattr(fragment, "path", None)
            try:
                for batch in fragment.to_batches(schema=dataset.schema, columns=read,
                                                 batch_size=int(batch_rows), batch_readahead=1,
                                                 fragment_readahead=1, memory_pool=scan_pool()):
                    n_rows += batch.num_rows
                    batch, k = _without_errors(batch, columns, flagged)
                    n_err += k
                    yield batch, path
            except pa.ArrowException as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{where}: could not read '{path}': {detail}") from None
    if stats is not None:
        stats["rows"] = n_rows
        stats["n_error_rows"] = n_err
    if n_err:
        _warn_error_rows(src, n_err, n_rows)
