"""The spread of persona rates that de Araujo & Roth's disparity compares.

Shared by :func:`refusalstats.disparity` (rates from the detector's flags) and
:func:`refusalstats.ppi_disparity` (label-corrected rates): which personas are the
control set (:func:`control_personas`), and the standard deviation of a set of persona
rates, optionally with its sampling noise taken out (:func:`spread`). It imports no
analysis, so both can import it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = ["CORRECTED_FLOOR", "control_personas", "corrected_variance", "spread"]

# the noise-corrected spread keeps at least this share of the observed sum of squares, so
# a spread that sampling noise explains entirely stays positive (and its ratio finite)
CORRECTED_FLOOR = 0.05


def control_personas(data, control, category, persona) -> tuple[set, str]:
    """Resolve ``control`` to a set of persona levels and a description (``data``: the counts)."""
    if isinstance(control, str):
        in_category = category in data.columns and (data[category].astype(object) == control).any()
        is_column = control in data.columns
        if in_category and is_column:
            raise ValueError(
                f"control={control!r} is both a level of {category!r} and a column; "
                "pass the control personas as a list instead"
            )
        if in_category:
            mask = (data[category].astype(object) == control).to_numpy()
            return set(
                pd.unique(data.loc[mask, persona].astype(object))
            ), f"{category} == {control!r}"
        if is_column:
            col = data[control]
            if col.isna().any() or not col.astype(object).isin([0, 1, True, False]).all():
                raise ValueError(
                    f"control column {control!r} must be True/False (or 0/1) for every row"
                )
            mask = col.astype(bool).to_numpy()
            ctrl = set(pd.unique(data.loc[mask, persona].astype(object)))
            other = set(pd.unique(data.loc[~mask, persona].astype(object)))
            both = sorted(ctrl & other, key=str)
            if both:
                raise ValueError(
                    f"control column {control!r} marks persona(s) {both[:5]} as control in "
                    "some rows and not in others; it must be constant within a persona"
                )
            return ctrl, f"{control} is True"
        control = [control]
    try:
        ctrl = list(control)
    except TypeError:
        raise TypeError(
            "control must be a list of control personas, a level of the category column, "
            "or the name of a True/False column"
        ) from None
    known = set(pd.unique(data[persona].astype(object)))
    missing = [c for c in ctrl if c not in known]
    if missing:
        raise ValueError(
            f"control persona(s) {missing[:5]} do not occur in column {persona!r} (nor as a level "
            f"of {category!r} or a column); known personas include {sorted(known, key=str)[:8]}"
        )
    return set(ctrl), "listed control personas"


def spread(rate, noise, ddof, corrected):
    """sd of ``rate`` (replicates x members, NaN for a persona without rows) per replicate.

    With ``corrected`` the sum of squares loses its noise term (method of moments),
    floored at ``CORRECTED_FLOOR`` of itself: sqrt(max(SS - noise, floor SS) / (k - ddof)).
    """
    k, ss = _sum_of_squares(rate)
    with np.errstate(invalid="ignore", divide="ignore"):
        if corrected:
            ss = np.maximum(ss - noise, CORRECTED_FLOOR * ss)
        return np.where(k > ddof, np.sqrt(ss / np.maximum(k - ddof, 1)), np.nan)


def corrected_variance(rate, noise, ddof):
    """The method-of-moments variance of the true rates, (SS - noise) / (k - ddof), not
    floored: unbiased, so it can be negative when noise explains the whole spread. The
    test-inversion interval of the disparity (ppi.ppi_disparity) is built on it."""
    k, ss = _sum_of_squares(rate)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > ddof, (ss - noise) / np.maximum(k - ddof, 1), np.nan)


def _sum_of_squares(rate):
    """Members with a rate, and the sum of squared deviations from their mean (last axis)."""
    k = np.isfinite(rate).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without these personas
        dev = rate - np.nanmean(rate, axis=-1, keepdims=True)
        return k, np.nansum(dev**2, axis=-1)
