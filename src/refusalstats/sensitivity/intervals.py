"""Bootstrap confidence intervals for the W2 index from its replicates.

Four intervals, chosen by ``ci=`` (the measured coverage behind the default is in
``docs/methods_w2.md`` and ``benchmarks/calibration_w2.py``):

* ``expanded`` (the default): the percentile interval with the bootstrap distribution's
  spread about its median scaled by ``sqrt(G / (G - 1)) t_df / z`` (:func:`expansion`):
  ``G`` the fewest resampling units (items; rows without clusters) in a stratum of the
  bootstrap, ``df`` the effective number of units (Kish) less the strata, so few or
  unequal items widen it and many leave it the percentile interval;
* ``percentile``: the ``alpha`` and ``1 - alpha`` quantiles of the replicates;
* ``bc``: bias-corrected percentile (Efron 1981), the quantiles at
  ``Phi(2 z0 + z_alpha)`` with ``z0 = Phi^-1(share of replicates below the estimate)``;
* ``bca``: bias-corrected and accelerated (Efron 1987), the acceleration from a jackknife;
* ``studentized``: bootstrap-t (Hall 1988), ``[t - q_hi se, t - q_lo se]`` with ``q`` the
  quantiles of ``(t* - t) / se*`` and ``se`` the linearization (delta-method) standard
  error of the estimate, computed the same way in every replicate.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm


def expansion(units: float, df: float, conf: float) -> float:
    """Small-sample scale of the bootstrap spread: ``sqrt(G / (G - 1)) * t_df / z``.

    The bootstrap variance of a mean over ``G`` units drawn with replacement is ``(G - 1)
    / G`` of the unbiased one, and with few effective units the estimate's sampling
    distribution has t-like tails with ``df`` degrees of freedom.

    Parameters
    ----------
    units : float
        The fewest resampling units in a stratum of the bootstrap (at least 2).
    df : float
        Degrees of freedom (effective units less the strata; at least 1).
    conf : float
        Interval level.

    Returns
    -------
    float
        At least 1; tends to 1 as ``units`` and ``df`` grow.

    Examples
    --------
    >>> round(expansion(12, 33, 0.95), 3), round(expansion(10_000, 10_000, 0.95), 4)
    (1.084, 1.0002)
    """
    from scipy.stats import t

    q = (1.0 + conf) / 2.0
    g = max(float(units), 2.0)
    return float(np.sqrt(g / (g - 1.0)) * t.ppf(q, max(float(df), 1.0)) / norm.ppf(q))


def expanded_interval(boot: np.ndarray, conf: float, scale: float) -> tuple[float, float]:
    """The percentile interval of the replicates spread about their median by ``scale``
    (``median + scale * (q - median)``), kept inside [0, 1] where iota lives."""
    lo, hi = percentile_interval(boot, conf)
    mid = float(np.median(boot))
    return max(mid + scale * (lo - mid), 0.0), min(mid + scale * (hi - mid), 1.0)


def percentile_interval(boot: np.ndarray, conf: float) -> tuple[float, float]:
    """The ``(1 - conf) / 2`` and ``(1 + conf) / 2`` quantiles of the replicates."""
    alpha = (1.0 - conf) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _z0(theta: float, boot: np.ndarray) -> float:
    """Bias correction: ``Phi^-1`` of the share of replicates below the estimate (ties
    count half, as scipy.stats.bootstrap); infinite when all lie on one side."""
    below = np.mean(boot < theta) + 0.5 * np.mean(boot == theta)
    if below <= 0.0 or below >= 1.0:
        return np.inf
    return float(norm.ppf(below))


def acceleration(jack: np.ndarray, mult: np.ndarray | None = None) -> float:
    """BCa acceleration from jackknife values (with multiplicities ``mult``):
    ``sum m (mean - jack)^3 / (6 (sum m (mean - jack)^2)^1.5)``, as scipy.stats.bootstrap."""
    jack = np.asarray(jack, float)
    mult = np.ones(len(jack)) if mult is None else np.asarray(mult, float)
    ok = np.isfinite(jack)
    jack, mult = jack[ok], mult[ok]
    mean_j = np.sum(mult * jack) / np.sum(mult)
    u = mean_j - jack
    den = np.sum(mult * u ** 2)
    return float(np.sum(mult * u ** 3) / (6.0 * den ** 1.5)) if den > 0 else 0.0


def bca_interval(theta: float, boot: np.ndarray, jack: np.ndarray, mult: np.ndarray | None,
                 conf: float) -> tuple[float, float] | None:
    """BCa interval (Efron 1987); ``None`` when the bias correction is infinite.

    With ``a = 0`` it is the bias-corrected (BC) percentile interval.
    """
    z0 = _z0(theta, boot)
    if not np.isfinite(z0):
        return None
    a = 0.0 if jack is None else acceleration(jack, mult)
    alpha = (1.0 - conf) / 2.0
    zs = norm.ppf([alpha, 1.0 - alpha])
    adj = norm.cdf(z0 + (z0 + zs) / (1.0 - a * (z0 + zs)))
    lo, hi = np.quantile(boot, adj)
    return float(lo), float(hi)


def bc_interval(theta: float, boot: np.ndarray, conf: float) -> tuple[float, float] | None:
    """Bias-corrected percentile interval (BCa with zero acceleration); ``None`` when the
    bias correction is infinite."""
    return bca_interval(theta, boot, None, None, conf)


def studentized_interval(theta: float, se: float, boot: np.ndarray, boot_se: np.ndarray,
                         conf: float) -> tuple[float, float] | None:
    """Bootstrap-t interval; ``None`` when the estimate's standard error is 0 or no
    replicate has a positive one."""
    ok = np.isfinite(boot) & np.isfinite(boot_se) & (boot_se > 0)
    if not (np.isfinite(se) and se > 0) or ok.sum() < 2:
        return None
    t = (boot[ok] - theta) / boot_se[ok]
    alpha = (1.0 - conf) / 2.0
    q_lo, q_hi = np.quantile(t, [alpha, 1.0 - alpha])
    return float(theta - q_hi * se), float(theta - q_lo * se)
