"""Checks shared by every analysis: conf, seeds, column-name arguments, the deprecated ``block=``.

The ``cluster=`` rule has its home in :mod:`refusalstats.counts` (``resolve_cluster``,
for DataFrames and streamed sources alike); its names are re-exported here so old
imports keep working.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np

from .counts import AUTO_CLUSTER_COLUMN, ClusterNote, resolve_cluster

__all__ = ["AUTO_CLUSTER_COLUMN", "ClusterNote", "check_conf", "check_random_state",
           "cluster_from_block", "column_names", "int_seed", "resolve_cluster"]

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


def column_names(value: str | Sequence[str] | None, arg: str) -> list[str]:
    """Column names from None, one name, a comma-separated string ("model,task", as on the
    command line) or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()] if "," in value else [value]
    try:
        cols = list(value)
    except TypeError:
        raise TypeError(f"{arg} must be a column name or a list of column names") from None
    bad = [c for c in cols if not isinstance(c, str)]
    if bad:
        raise TypeError(f"{arg} must hold column names (strings); got {bad!r}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"{arg} names a column twice: {cols}")
    return cols
