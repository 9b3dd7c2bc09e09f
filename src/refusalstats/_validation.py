"""Checks shared by every analysis: clustering choice, and (growing) conf, seeds, columns.

One place per idea: every engine that takes ``cluster=`` resolves it here, so the
default (``"auto"``) means the same thing in rates, logit, W2, the report and the CLI.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["AUTO_CLUSTER_COLUMN", "ClusterNote", "check_conf", "check_random_state",
           "cluster_from_block", "int_seed", "resolve_cluster"]

#: The column ``cluster="auto"`` looks for.
AUTO_CLUSTER_COLUMN = "item_id"


class ClusterNote(UserWarning):
    """One-line note naming the clustering that ``cluster="auto"`` chose.

    Silence it with ``warnings.simplefilter("ignore", rs.ClusterNote)``, or pass
    ``cluster="item_id"`` (or ``cluster=None``) explicitly.
    """


def resolve_cluster(
    data: pd.DataFrame,
    cluster: str | Sequence[str] | None,
    *,
    where: str = "",
    note: bool = True,
) -> str | list[str] | None:
    """Resolve a ``cluster=`` argument against a table.

    Parameters
    ----------
    data : DataFrame
        The response table (only its columns and the cluster column are read).
    cluster : "auto", str, list of str or None
        ``"auto"``: ``"item_id"`` when the table has that column and some item id
        repeats (items answered many times), else ``None``; a note
        (:class:`ClusterNote`) names the choice when clustering is switched on.
        A column name (or list of names) is checked to exist and returned as given.
        ``None`` turns clustering off.
    where : str
        The calling function, for messages (e.g. ``"refusal_rates"``).
    note : bool
        Emit the :class:`ClusterNote` when ``"auto"`` picks a column.

    Returns
    -------
    The column (or list of columns) to cluster by, or ``None``.
    """
    prefix = f"{where}: " if where else ""
    if cluster is None:
        return None
    if isinstance(cluster, str) and cluster == "auto":
        if not isinstance(data, pd.DataFrame) or AUTO_CLUSTER_COLUMN not in data.columns:
            return None
        col = data[AUTO_CLUSTER_COLUMN]
        if not col.duplicated().any():
            return None
        if col.isna().any():
            # a partially missing item id cannot define clusters; say so rather than guess
            raise ValueError(
                f"{prefix}cluster='auto' would cluster by '{AUTO_CLUSTER_COLUMN}', but it has "
                f"{int(col.isna().sum()):,} missing value(s); fill them, or pass cluster=None "
                "to treat rows as independent"
            )
        if note:
            n_items = int(col.nunique())
            warnings.warn(
                f"{prefix}clustering by '{AUTO_CLUSTER_COLUMN}' ({n_items:,} items answered "
                f"{len(col) / n_items:.3g} times on average); pass cluster=None for "
                "independent rows",
                ClusterNote,
                stacklevel=3,
            )
        return AUTO_CLUSTER_COLUMN
    names = [cluster] if isinstance(cluster, str) else (
        list(cluster) if isinstance(cluster, (list, tuple)) else None)
    if not names or not all(isinstance(c, str) for c in names):
        raise TypeError(
            f"{prefix}cluster must be 'auto', None, a column name or a list of column names; "
            f"got {cluster!r}"
        )
    if isinstance(data, pd.DataFrame):
        missing = [c for c in names if c not in data.columns]
        if missing:
            from .table import SchemaError

            msg = (f"{prefix}cluster column(s) {missing} not in the table; its columns are "
                   f"{list(map(str, data.columns))}. Pass cluster=None for independent rows.")
            raise SchemaError([msg])
    return cluster


def cluster_from_block(where: str, cluster, block, default):
    """``cluster`` after the deprecated ``block=`` spelling (a FutureWarning when it is used).

    Parameters
    ----------
    where : str
        The function's name, for the messages.
    cluster, block
        What the caller passed for each.
    default
        ``cluster``'s default: ``block`` may only come with ``cluster`` left at it.

    Returns
    -------
    The cluster column(s) to use.
    """
    if block is None:
        return cluster
    warnings.warn(f"{where}(block=...) is deprecated: pass cluster=... (the same columns); "
                  "block= goes in the next release", FutureWarning, stacklevel=3)
    if not (isinstance(cluster, str) and cluster == default):
        raise ValueError("pass cluster= or the deprecated block=, not both")
    return block


def check_conf(conf, name: str = "conf") -> float:
    """A confidence level strictly between 0 and 1 (e.g. 0.95), as a float.

    Parameters
    ----------
    conf : float
        The level to check.
    name : str
        The argument's name in the error message.

    Returns
    -------
    float

    Examples
    --------
    >>> check_conf(0.9)
    0.9
    """
    if isinstance(conf, bool) or not isinstance(conf, numbers.Real) or not 0 < float(conf) < 1:
        raise ValueError(f"{name} must be a confidence level between 0 and 1 (e.g. 0.95), "
                         f"got {conf!r}")
    return float(conf)


def check_random_state(seed) -> np.random.Generator:
    """One random generator from ``seed``: an int, None (fresh entropy) or a Generator.

    A :class:`numpy.random.Generator` is used as given (its state advances), as
    scikit-learn's ``check_random_state`` does with a ``RandomState``; an int gives a
    reproducible generator; ``None`` a fresh, unseeded one.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
        The seed.

    Returns
    -------
    numpy.random.Generator

    Examples
    --------
    >>> bool(check_random_state(1).integers(100) == check_random_state(1).integers(100))
    True
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool):
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, None or a "
                             f"numpy.random.Generator, got {seed!r}")
        return np.random.default_rng(int(seed))
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, None or a numpy.random.Generator, got "
                    f"{type(seed).__name__} {seed!r}")


def int_seed(seed) -> int:
    """An int seed as given; a Generator (or None) draws one, so a recorded seed replays.

    For results that record their seed (table ``attrs``, report headers), which must stay
    JSON: ``int_seed(np.random.default_rng(0))`` is an int drawn from the generator.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
        The seed.

    Returns
    -------
    int

    Examples
    --------
    >>> int_seed(7)
    7
    """
    if isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool):
        check_random_state(seed)  # one message for a negative seed
        return int(seed)
    return int(check_random_state(seed).integers(2**31 - 1))
