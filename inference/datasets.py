"""Task data: XNLI, POPQUORN and any local task file -> items with gold labels.

An *items* table has one row per unit to classify, with the columns

``item_id``      a string, unique within the task
``task``         the task name ("nli", "politeness", "offensiveness", or any other)
``premise``, ``hypothesis``   for NLI, or ``text`` for every other task
``gold_label``   the gold class ("entailment" / "neutral" / "contradiction" for NLI,
                 the integer rating 1-5 for the POPQUORN tasks)

Files are read from CSV, TSV, JSONL, JSON or Parquet (optionally ``.gz``) by
:func:`refusalstats.table.read_table`, the package's one table reader, with a column
mapping; XNLI can also come from the Hugging Face hub when the ``datasets`` package is
installed and online.
:func:`select_per_class` draws the per-class sample the way P1 did (1,000 items per class,
fewer where a class is short, and says so).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from refusalstats.table import read_table

__all__ = [
    "NLI_LABELS",
    "TASK_FIELDS",
    "load_items",
    "load_popquorn",
    "load_task",
    "load_xnli",
    "read_table",
    "select_per_class",
]

#: XNLI's label order: the integer labels 0, 1, 2 of the published files mean these.
NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")

#: The text fields shown to the model for each known task, in the order they are shown.
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "nli": ("premise", "hypothesis"),
    "politeness": ("text",),
    "offensiveness": ("text",),
}

_RATING_LABELS = (1, 2, 3, 4, 5)


def _rename(df: pd.DataFrame, columns: Mapping[str, str] | None, path_hint: str) -> pd.DataFrame:
    """Rename source columns to our names; ``columns`` maps our name -> source column."""
    if not columns:
        return df
    missing = [src for src in columns.values() if src not in df.columns]
    if missing:
        raise KeyError(
            f"column mapping names {missing} but {path_hint} has columns {list(df.columns)}; "
            "fix the mapping (our_name=source_column)"
        )
    return df.rename(columns={src: ours for ours, src in columns.items()})


def _check_missing(df: pd.DataFrame, cols: Sequence[str], drop_missing: bool, what: str):
    bad = df[list(cols)].isna().any(axis=1)
    for c in cols:
        if df[c].dtype == object:
            bad |= df[c].astype(str).str.strip().eq("")
    n_bad = int(bad.sum())
    if n_bad == 0:
        return df, 0
    rows = list(np.flatnonzero(bad.to_numpy())[:5])
    if not drop_missing:
        raise ValueError(
            f"{what}: {n_bad} row(s) have an empty or missing value in {list(cols)} "
            f"(first row numbers {rows}); clean the file or pass drop_missing=True to drop "
            "them (they are then counted in attrs['dropped'])"
        )
    warnings.warn(f"{what}: dropped {n_bad} row(s) with missing {list(cols)}", stacklevel=3)
    return df.loc[~bad].reset_index(drop=True), n_bad


def load_items(
    data: str | Path | pd.DataFrame,
    task: str,
    *,
    columns: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    labels: Sequence | None = None,
    id_column: str | None = "item_id",
    drop_missing: bool = False,
    format: str | None = None,
) -> pd.DataFrame:
    """Load any task's items from a file or DataFrame.

    Parameters
    ----------
    data : str, Path or DataFrame
        A task file (see :func:`read_table`) or a frame already in memory.
    task : str
        Task name stored in the ``task`` column.
    columns : mapping, optional
        Our column name -> the file's column, e.g. ``{"text": "comment", "gold_label":
        "rating"}``.
    fields : sequence of str, optional
        The text fields shown to the model. Defaults to :data:`TASK_FIELDS` for known
        tasks and ``("text",)`` otherwise.
    labels : sequence, optional
        The allowed gold labels; any other value is an error. Values are kept as they are.
    id_column : str or None
        Column holding item ids (after renaming). When absent the ids are
        ``"{task}-{row number}"``.
    drop_missing : bool
        Drop rows with a missing field or label (with a warning) instead of failing.
    format : str, optional
        File format override, see :func:`read_table`.

    Returns
    -------
    pandas.DataFrame
        ``item_id``, ``task``, the fields, ``gold_label``, plus any other source column.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"comment": ["hi there", "go away"], "y": ["polite", "rude"]})
    >>> items = load_items(df, "tone", columns={"text": "comment", "gold_label": "y"})
    >>> list(items.columns[:4]), items["item_id"].tolist()
    (['item_id', 'task', 'text', 'gold_label'], ['tone-0', 'tone-1'])
    """
    if isinstance(data, pd.DataFrame):
        df, hint = data.copy(), "the data frame"
    else:
        df, hint = read_table(data, format=format), repr(str(data))
    df = _rename(df, columns, hint)
    fields = tuple(fields or TASK_FIELDS.get(task, ("text",)))
    need = [*fields, "gold_label"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(
            f"task {task!r}: {hint} lacks column(s) {missing} (has {list(df.columns)}); "
            "map them with columns={'our_name': 'file_column', ...}"
        )
    df, n_dropped = _check_missing(df, need, drop_missing, f"task {task!r}")
    if labels is not None:
        allowed = set(labels)
        bad = sorted({v for v in df["gold_label"].unique() if v not in allowed}, key=str)
        if bad:
            raise ValueError(
                f"task {task!r}: gold_label has value(s) {bad[:10]} outside the label set "
                f"{list(labels)}; map them or change labels="
            )
    if id_column and id_column in df.columns:
        ids = df[id_column].astype(str)
    else:
        ids = pd.Series([f"{task}-{i}" for i in range(len(df))], index=df.index)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"task {task!r}: item ids are not unique ({len(dup)} repeated, e.g. {list(dup[:3])}); "
            "pass id_column=None to number the rows or fix the id column"
        )
    for f in fields:
        df[f] = df[f].astype(str)
    out = pd.DataFrame({"item_id": ids.to_numpy(), "task": task})
    for c in [*fields, "gold_label"]:
        out[c] = df[c].to_numpy()
    rest = [c for c in df.columns if c not in out.columns and c != id_column]
    for c in rest:
        out[c] = df[c].to_numpy()
    out.attrs["dropped"] = n_dropped
    return out


def _nli_labels(values: pd.Series) -> pd.Series:
    """Map XNLI labels (0/1/2 or their names, any case) to the label names."""
    def one(v):
        if isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()):
            i = int(v)
            if 0 <= i < len(NLI_LABELS):
                return NLI_LABELS[i]
            return None
        s = str(v).strip().lower()
        if s.isdigit() and int(s) < len(NLI_LABELS):
            return NLI_LABELS[int(s)]
        return s if s in NLI_LABELS else None

    mapped = values.map(one)
    bad = values[mapped.isna()].unique()
    if len(bad):
        raise ValueError(
            f"XNLI gold_label has value(s) {list(bad[:10])}; expected 0/1/2 or "
            f"{list(NLI_LABELS)} (XNLI order: 0 entailment, 1 neutral, 2 contradiction)"
        )
    return mapped


def load_xnli(
    path: str | Path | None = None,
    *,
    language: str = "en",
    split: str = "test",
    columns: Mapping[str, str] | None = None,
    hub_id: str = "facebook/xnli",
    drop_missing: bool = False,
) -> pd.DataFrame:
    """Load XNLI premise/hypothesis pairs with their labels.

    Parameters
    ----------
    path : str or Path, optional
        A local CSV/TSV/JSONL/Parquet file with ``premise``, ``hypothesis`` and ``label``
        (or ``gold_label``) columns; other names go through ``columns``. A ``language``
        column (the XNLI-1.0 TSVs) is filtered to ``language``. Without a path
        the data come from the Hugging Face hub (needs the ``datasets`` package and
        network access).
    language, split : str
        Hub configuration and split (P1 used English).
    columns : mapping, optional
        Our column name -> the file's column.
    hub_id : str
        Hub dataset id.
    drop_missing : bool
        Drop rows with missing fields (with a warning) instead of failing.

    Returns
    -------
    pandas.DataFrame
        ``item_id``, ``task`` ("nli"), ``premise``, ``hypothesis``, ``gold_label`` (label
        names).

    Examples
    --------
    >>> items = load_xnli("xnli.test.en.jsonl")  # doctest: +SKIP
    >>> items["gold_label"].value_counts()  # doctest: +SKIP
    """
    if path is None:
        try:
            import datasets as hf_datasets
        except ImportError as err:
            raise ImportError(
                "load_xnli() without a path reads the Hugging Face hub and needs the "
                "'datasets' package (pip install datasets); or pass a local file path"
            ) from err
        ds = hf_datasets.load_dataset(hub_id, language, split=split)
        df = ds.to_pandas() if hasattr(ds, "to_pandas") else pd.DataFrame(ds)
        source = f"{hub_id}/{language}/{split}"
    else:
        df = read_table(path)
        source = str(path)
    df = _rename(df, columns, repr(source))
    if path is not None and "language" in df.columns:
        # the XNLI-1.0 TSVs hold all 15 languages; keep the one asked for
        langs = set(df["language"].astype(str))
        if language not in langs:
            raise ValueError(
                f"XNLI file {source!r} has no rows with language {language!r} "
                f"(it has {sorted(langs)}); pass language=..."
            )
        df = df[df["language"].astype(str) == language].reset_index(drop=True)
    if "gold_label" not in df.columns and "label" in df.columns:
        df = df.rename(columns={"label": "gold_label"})
    for c in ("premise", "hypothesis", "gold_label"):
        if c not in df.columns:
            raise KeyError(
                f"XNLI data {source!r} lacks column {c!r} (has {list(df.columns)}); "
                "map it with columns={'" + c + "': 'file_column'}"
            )
    df, n_dropped = _check_missing(df, ["premise", "hypothesis", "gold_label"], drop_missing,
                                   "XNLI")
    df["gold_label"] = _nli_labels(df["gold_label"])
    id_col = "item_id" if "item_id" in df.columns else None
    items = load_items(df, "nli", fields=("premise", "hypothesis"), labels=NLI_LABELS,
                       id_column=id_col)
    items.attrs["dropped"] = n_dropped
    items.attrs["source"] = source
    return items


def load_popquorn(
    path: str | Path,
    task: str,
    *,
    columns: Mapping[str, str] | None = None,
    unit: str = "annotation",
    drop_missing: bool = False,
) -> pd.DataFrame:
    """Load POPQUORN politeness or offensiveness ratings (1-5) from the published CSV.

    The raw files (``dataset/offensiveness/raw_data.csv``,
    ``dataset/politeness_rating/raw_data.csv`` of Jiaxin-Pei/Potato-Prolific-Dataset) hold
    one row per annotation: ``instance_id``, ``user_id``, ``text`` and the rating column
    named after the task.

    Parameters
    ----------
    path : str or Path
        The file.
    task : {"politeness", "offensiveness"}
        Which rating; the rating column defaults to the task name.
    columns : mapping, optional
        Our column name -> the file's column (``text``, ``gold_label``, ``instance_id``,
        ``user_id``).
    unit : {"annotation", "text"}
        ``"annotation"``: every distinct (text, rating) pair is an item, the unit P1 drew
        1,000 per class from; repeated identical pairs are kept once (counted in
        ``attrs["duplicates"]``). ``"text"``: one item per text, labelled with its median
        rating rounded half up.
    drop_missing : bool
        Drop rows with missing text or rating (with a warning) instead of failing.

    Returns
    -------
    pandas.DataFrame
        ``item_id``, ``task``, ``text``, ``gold_label`` (int 1-5).

    Examples
    --------
    >>> items = load_popquorn("offensiveness/raw_data.csv", "offensiveness")  # doctest: +SKIP
    """
    df = read_table(path)
    df = _rename(df, columns, repr(str(path)))
    if "gold_label" not in df.columns:
        if task in df.columns:
            df = df.rename(columns={task: "gold_label"})
        else:
            raise KeyError(
                f"POPQUORN file {str(path)!r} has no rating column {task!r} or 'gold_label' "
                f"(has {list(df.columns)}); map it with columns={{'gold_label': 'your_column'}}"
            )
    if "text" not in df.columns:
        raise KeyError(
            f"POPQUORN file {str(path)!r} lacks a 'text' column (has {list(df.columns)}); "
            "map it with columns={'text': 'your_column'}"
        )
    df, n_dropped = _check_missing(df, ["text", "gold_label"], drop_missing, f"POPQUORN {task}")
    rating = pd.to_numeric(df["gold_label"], errors="coerce")
    bad = df.loc[rating.isna() | (rating < 1) | (rating > 5), "gold_label"].unique()
    if len(bad):
        raise ValueError(
            f"POPQUORN {task}: ratings must be numbers from 1 to 5; found {list(bad[:10])}"
        )
    df["gold_label"] = rating
    if unit == "annotation":
        if not np.allclose(rating, np.round(rating)):
            raise ValueError(
                f"POPQUORN {task}: unit='annotation' needs whole-number ratings; "
                "use unit='text' to aggregate averaged ratings"
            )
        df["gold_label"] = rating.round().astype(int)
        n_before = len(df)
        df = df.drop_duplicates(subset=["text", "gold_label"]).reset_index(drop=True)
        n_dup = n_before - len(df)
        if "instance_id" in df.columns:
            base = df["instance_id"].astype(str)
            if "user_id" in df.columns:
                base = base + ":" + df["user_id"].astype(str)
            df["item_id"] = base
            id_col = "item_id" if not df["item_id"].duplicated().any() else None
        else:
            id_col = None
    elif unit == "text":
        key = "instance_id" if "instance_id" in df.columns else "text"
        g = df.groupby(key, sort=False)
        agg = g.agg(text=("text", "first"), gold_label=("gold_label", "median"),
                    n_annotations=("gold_label", "size")).reset_index()
        agg["gold_label"] = np.floor(agg["gold_label"] + 0.5).astype(int)
        if key == "instance_id":
            agg["item_id"] = agg["instance_id"].astype(str)
            id_col = "item_id"
        else:
            id_col = None
        n_dup = 0
        df = agg
    else:
        raise ValueError(f"unit must be 'annotation' or 'text', got {unit!r}")
    items = load_items(df, task, fields=("text",), labels=_RATING_LABELS, id_column=id_col)
    items.attrs["dropped"] = n_dropped
    items.attrs["duplicates"] = n_dup
    items.attrs["source"] = str(path)
    return items


def load_task(
    task: str,
    path: str | Path | None,
    *,
    columns: Mapping[str, str] | None = None,
    labels: Sequence | None = None,
    drop_missing: bool = False,
    **kwargs,
) -> pd.DataFrame:
    """Load a task's items, picking the loader from the task name.

    ``"nli"`` -> :func:`load_xnli`, ``"politeness"`` / ``"offensiveness"`` ->
    :func:`load_popquorn`, anything else -> :func:`load_items`.

    Parameters
    ----------
    task : str
        The task name.
    path : str, Path or None
        The task file (read by :func:`refusalstats.table.read_table`); ``None`` only for
        ``"nli"``, which then comes from the Hugging Face hub.
    columns : mapping of str to str, optional
        Our column name -> the file's column name.
    labels : sequence, optional
        The allowed gold labels (for :func:`load_items`).
    drop_missing : bool
        Drop rows with a missing text or label (counted in ``attrs["dropped"]``) instead
        of raising.
    **kwargs
        Passed on to the loader.

    Returns
    -------
    DataFrame
        The items table (``item_id``, ``task``, the text fields, ``gold_label``).

    Examples
    --------
    >>> items = load_task("politeness", "politeness_rating/raw_data.csv")  # doctest: +SKIP
    """
    if task == "nli":
        return load_xnli(path, columns=columns, drop_missing=drop_missing, **kwargs)
    if task in ("politeness", "offensiveness"):
        if path is None:
            raise ValueError(f"task {task!r} needs a local POPQUORN file path")
        return load_popquorn(path, task, columns=columns, drop_missing=drop_missing, **kwargs)
    if path is None:
        raise ValueError(f"task {task!r} needs a task file path")
    return load_items(path, task, columns=columns, labels=labels, drop_missing=drop_missing,
                      **kwargs)


def select_per_class(
    items: pd.DataFrame,
    per_class: int = 1000,
    seed: int = 0,
    label_column: str = "gold_label",
) -> pd.DataFrame:
    """Draw up to ``per_class`` items of each gold class at random, as P1 did.

    Classes with fewer items keep all of them; a warning names them, and
    ``attrs["selection"]`` holds the available / selected counts per class as records
    (a list of dicts with plain values, so the table survives Parquet and JSON;
    ``pd.DataFrame(items.attrs["selection"])`` is the table).

    Parameters
    ----------
    items : DataFrame
        An items table (one task, or several: the draw is per task and class).
    per_class : int
        Items to draw from each class (P1: 1,000).
    seed : int
        Seed of the draw; the same seed gives the same items.
    label_column : str
        Column holding the class.

    Returns
    -------
    pandas.DataFrame
        The selected rows, ordered by task, class and draw.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"item_id": list("abcde"), "task": "t", "text": list("vwxyz"),
    ...                    "gold_label": [1, 1, 1, 2, 2]})
    >>> sel = select_per_class(df, per_class=2, seed=0)
    >>> sel["gold_label"].tolist()
    [1, 1, 2, 2]
    """
    if per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    for c in (label_column, "task"):
        if c not in items.columns:
            raise KeyError(f"select_per_class: items lack column {c!r}")
    rng = np.random.default_rng(seed)
    picks, rows = [], []
    groups = items.groupby(["task", label_column], sort=True).indices
    for (task, label) in sorted(groups, key=lambda k: (str(k[0]), str(k[1]))):
        idx = groups[(task, label)]
        n = len(idx)
        take = min(n, per_class)
        chosen = rng.choice(idx, size=take, replace=False) if take < n else rng.permutation(idx)
        picks.append(chosen)
        rows.append({"task": _plain(task), "class": _plain(label), "available": int(n),
                     "selected": int(take), "short": bool(n < per_class)})
    report = pd.DataFrame(rows)
    short = report[report["short"]]
    if len(short):
        desc = ", ".join(f"{r.task}/{r['class']}: {r.available}" for _, r in short.iterrows())
        warnings.warn(
            f"select_per_class: {len(short)} class(es) have fewer than {per_class} items and "
            f"keep all they have ({desc})",
            stacklevel=2,
        )
    out = items.iloc[np.concatenate(picks)].reset_index(drop=True) if picks else items.iloc[:0]
    out.attrs = dict(items.attrs)
    out.attrs["selection"] = rows  # JSON records: DataFrame attrs must survive to_parquet
    return out


def _plain(value):
    """A NumPy scalar as the Python value (JSON-able attrs)."""
    return value.item() if isinstance(value, np.generic) else value
