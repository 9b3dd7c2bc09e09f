"""adjust_pvalues (#23): Benjamini–Hochberg is scipy's false_discovery_control; both methods
equal statsmodels' multipletests and the hand-written step-up/step-down they replaced."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from refusalstats.multiplicity import adjust_pvalues


def _old(p, method):
    """The implementation before #23 (kept here as the reference it must still equal)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    else:
        adj = np.minimum.accumulate((m / np.arange(m, 0, -1)) * p[order][::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


@pytest.mark.parametrize("ours,theirs", [("holm", "holm"), ("bh", "fdr_bh"),
                                         ("fdr_bh", "fdr_bh")])
@pytest.mark.parametrize("seed", range(5))
def test_equals_statsmodels_and_the_old_code(ours, theirs, seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 20), rng.uniform(0, 0.01, 5), [0.04, 0.04, 1.0]])
    got = adjust_pvalues(p, ours)
    np.testing.assert_allclose(got, multipletests(p, method=theirs)[1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got, _old(p, "holm" if ours == "holm" else "bh"),
                               rtol=1e-12, atol=1e-15)


def test_nan_left_out_of_the_family_and_bad_method_named():
    p = [0.01, np.nan, 0.03, 0.02]
    got = adjust_pvalues(p, "bh")
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], [0.03, 0.03, 0.03])
    assert np.isnan(adjust_pvalues([np.nan], "holm")).all()
    assert adjust_pvalues([], "bh").shape == (0,)
    with pytest.raises(ValueError, match="'holm' or 'bh'"):
        adjust_pvalues([0.1], "bonferroni")
