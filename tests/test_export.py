"""One p-value formatter (#23): the page, the findings and the exported tables agree."""

from __future__ import annotations

import numpy as np
import pytest

from refusalstats.reporting import export, sections


@pytest.mark.parametrize("p", [0.25, 0.05, 0.0312, 0.001, 0.000999, 1e-12, 0.9999, 1.0])
def test_page_and_export_format_p_alike(p):
    assert sections.fmt_p(p) == export.format_p(p)


def test_three_decimals_and_the_threshold():
    assert export.format_p(0.25) == "0.250" and export.format_p(0.0312) == "0.031"
    assert export.format_p(0.001) == "0.001" and export.format_p(0.000999) == "< 0.001"
    assert export.format_p(float("nan")) == "" and sections.fmt_p(np.nan) == "—"
    assert sections.fmt_p(1e-5) == "< 0.001" and sections.fmt_p(None) == "—"
