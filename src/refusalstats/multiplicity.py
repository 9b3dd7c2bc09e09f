"""Multiple-testing adjustment of p-values (Holm, Benjamini–Hochberg).

One implementation, used by :meth:`refusalstats.LogitResults.coef_table` (``adjust=``)
and by the rates functions that test many groups or pairs (``cochran_q``,
``rank_agreement``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import false_discovery_control

__all__ = ["adjust_pvalues"]


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple testing (Holm or Benjamini–Hochberg).

    Parameters
    ----------
    p : sequence of float
        The family's p-values. NaN entries are left out of the family and stay NaN.
    method : {"holm", "bh"}
        Holm's step-down family-wise error control, or Benjamini–Hochberg's false
        discovery rate (``"fdr_bh"`` is accepted as statsmodels spells it).

    Returns
    -------
    ndarray
        Adjusted p-values, in the input order, capped at 1. Benjamini–Hochberg is
        :func:`scipy.stats.false_discovery_control`.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.02, 0.03], "holm").round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    if method in ("bh", "fdr_bh"):
        out[ok] = false_discovery_control(q, method="bh")  # scipy: capped at 1
        return out
    if method != "holm":
        raise ValueError(f"adjust must be 'holm' or 'bh', got {method!r}")
    # Holm (scipy has no step-down FWER adjustment): sorted p times m, m-1, ..., 1, made
    # monotone, capped at 1; = statsmodels multipletests(method='holm')
    order = np.argsort(q)
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out
