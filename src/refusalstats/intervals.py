"""Binomial confidence intervals for proportions (Wilson, Clopper–Pearson, Jeffreys).

The one home of the interval formulas of a single proportion: :func:`proportion_ci`,
used by :func:`refusalstats.refusal_rates`, the persona effects' Newcombe intervals,
the detector card's sensitivity and specificity (:mod:`refusalstats.ppi`) and the
detector evaluation (:mod:`refusalstats.detect`). It imports no analysis, so every
analysis can import it. ``refusalstats.rates.proportion_ci`` is the same function.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ._validation import check_conf

__all__ = ["CI_METHODS", "check_ci_method", "proportion_ci"]

CI_METHODS = ("wilson", "clopper-pearson", "jeffreys")
_ALIASES = {
    "beta": "clopper-pearson",
    "exact": "clopper-pearson",
    "clopper_pearson": "clopper-pearson",
}


def proportion_ci(
    refusals: np.ndarray | int,
    n: np.ndarray | int,
    method: str = "wilson",
    conf: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided confidence interval for binomial proportions (vectorized).

    Parameters
    ----------
    refusals, n : array-like of int
        Successes and trials (``n > 0``).
    method : {"wilson", "clopper-pearson", "jeffreys"}
        Wilson score interval; Clopper–Pearson "exact" interval; Jeffreys interval
        (equal-tailed Beta(k + 1/2, n - k + 1/2) quantiles, with the lower limit set
        to 0 when k = 0 and the upper to 1 when k = n, as Brown, Cai & DasGupta 2001
        recommend, so that the interval always contains the estimate).
    conf : float
        Confidence level.

    Returns
    -------
    ci_low, ci_high : ndarray
        The lower and upper limits, one per proportion.

    Examples
    --------
    >>> lo, hi = proportion_ci(3, 50)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.0206, 0.1622)
    """
    method = check_ci_method(method)
    conf = check_conf(conf)
    k = np.asarray(refusals, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= refusals <= n and n > 0 for every group")
    alpha = 1 - conf
    if method == "wilson":
        z = stats.norm.ppf(1 - alpha / 2)
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        # the Wilson bounds at k = 0 and k = n are exactly 0 and 1; rounding in
        # centre -/+ half leaves ~1e-17 there, which prints as a spurious positive bound
        lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
        hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
        return lo, hi
    if method == "clopper-pearson":
        with np.errstate(invalid="ignore"):
            lo = stats.beta.ppf(alpha / 2, k, n - k + 1)
            hi = stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
        return np.where(k == 0, 0.0, lo), np.where(k == n, 1.0, hi)
    lo = stats.beta.ppf(alpha / 2, k + 0.5, n - k + 0.5)
    hi = stats.beta.ppf(1 - alpha / 2, k + 0.5, n - k + 0.5)
    return np.where(k == 0, 0.0, lo), np.where(k == n, 1.0, hi)


def check_ci_method(method: str) -> str:
    """The interval method's canonical name (aliases "exact", "beta" -> "clopper-pearson")."""
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {list(CI_METHODS)}")
    m = _ALIASES.get(method.lower(), method.lower())
    if m not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {list(CI_METHODS)}")
    return m
