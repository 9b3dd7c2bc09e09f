"""Shared by the research scripts: record the inputs of ``ppi._ustat_products`` (each
category's and the controls' rates and unit influences) while ``rs.disparity`` runs with
the "ustat" interval kind, so a script can recompute the test statistic from them."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from refusalstats import ppi

#: one (cat, ctrl, rate, T, moments) per category row of the last disparity call(s)
rec = []
#: the package's own function (the spy calls it)
ustat_products = ppi._ustat_products


def _spy(cat, ctrl, rate, ddof, T=None, moments=None):
    rec.append((cat.copy(), ctrl.copy(), np.asarray(rate, float).copy(), T if T is None else np.array(T), moments))
    return ustat_products(cat, ctrl, rate, ddof, T=T, moments=moments)


ppi._ustat_products = _spy
ppi._DISPARITY_INTERVAL = "ustat"


def set_matrices(cat, ctrl, P):
    """B_c, B_0 of the package (ddof 1)."""
    return ppi._set_matrices(cat, ctrl, P, 1)


def replicate(rng, sd, n_labels, cluster):
    """One table of ``calibration_ppi.disparity_table`` and its disparity (no interval):
    the recorded (cat, ctrl, rate, T, moments) of each category row, with its level."""
    import warnings

    import calibration_ppi as cp

    import refusalstats as rs

    df = cp.disparity_table(rng, sd, n_labels)
    rec.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = rs.disparity(df, control="control", labels="human", strata="persona", n_boot=0, cluster=cluster)
    return [(*r, lev) for r, lev in zip(rec, out["persona_group"])]
