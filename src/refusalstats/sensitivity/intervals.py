"""Bootstrap confidence intervals for the W2 index from its replicates."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm


def _bca_interval(theta: float, boot: np.ndarray, jack: np.ndarray, mult: np.ndarray,
                  conf: float, name: str, fallback: list) -> tuple[float, float]:
    """BCa interval (Efron 1987); falls back to percentile when z0 is infinite."""
    alpha = (1.0 - conf) / 2.0
    below = np.mean(boot < theta) + 0.5 * np.mean(boot == theta)
    if below <= 0.0 or below >= 1.0:
        fallback.append(name)
        return tuple(np.quantile(boot, [alpha, 1.0 - alpha]))
    z0 = norm.ppf(below)
    ok = np.isfinite(jack)
    jack, mult = jack[ok], mult[ok]
    mean_j = np.sum(mult * jack) / np.sum(mult)
    u = mean_j - jack
    den = np.sum(mult * u ** 2)
    a = np.sum(mult * u ** 3) / (6.0 * den ** 1.5) if den > 0 else 0.0
    zs = norm.ppf([alpha, 1.0 - alpha])
    adj = norm.cdf(z0 + (z0 + zs) / (1.0 - a * (z0 + zs)))
    return tuple(np.quantile(boot, adj))


