"""The binomial log-likelihood on covariate patterns, and McFadden's pseudo-R²."""

from __future__ import annotations

import numpy as np


def _log_p(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p and log(1 - p) for p = expit(eta), stable for large |eta|."""
    return -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta)


def _loglik(eta: np.ndarray, s: np.ndarray, n: np.ndarray) -> float:
    """Bernoulli log-likelihood of ``s`` successes out of ``n`` at linear predictor ``eta``."""
    lp, lq = _log_p(eta)
    f = n - s
    return float(np.sum(np.where(s > 0, s * lp, 0.0)) + np.sum(np.where(f > 0, f * lq, 0.0)))


def _mcfadden(ll: float, successes: float, total: float, penalty, notes: list[str]) -> float:
    """McFadden's pseudo-R², ``1 - l(b) / l_0``, on the row-level Bernoulli log-likelihood.

    ``ll`` is the unpenalized Bernoulli log-likelihood at the fitted coefficients (no
    binomial coefficients, so rows and aggregated ``trials=`` input agree) and ``l_0``
    that of the intercept-only model (closed form). ``l(b) <= 0`` makes it at most 1. It
    is at least 0 for the MLE of any model containing the constant and, with an
    unpenalized intercept, for ridge / lasso / elastic net (their objective at ``b`` is at
    most its value at the intercept-only point). A Firth estimate (or a model without the
    constant in its span) can fall below the null: then 0 is reported and a note gives
    the raw value.
    """
    pbar = successes / total
    ll0 = successes * np.log(pbar) + (total - successes) * np.log1p(-pbar)
    r2 = 1.0 - ll / ll0
    if r2 >= 0.0:
        return float(min(r2, 1.0))
    if r2 > -1e-9:  # rounding of two equal log-likelihoods
        return 0.0
    what = {"firth": "Firth", None: "maximum-likelihood"}.get(penalty, "penalized")
    notes.append(
        f"McFadden pseudo-R2 reported as 0: the unpenalized log-likelihood at the {what} estimate "
        f"({ll:.6g}) is below the intercept-only model's ({ll0:.6g}); raw value {r2:.3g}")
    return 0.0
