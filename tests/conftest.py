"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

#: Stand-ins for a drawn figure's bytes: a PNG signature and an empty SVG.
UNDRAWN_PNG = b"\x89PNG\r\n\x1a\n"
UNDRAWN_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"/>'


@pytest.fixture
def undrawn_figures(monkeypatch):
    """Reports in this test build every figure but do not rasterize it (PNG + SVG drawing
    is about 70% of a report's time). For tests that check a report's tables, findings and
    header text only; the drawn page is checked by tests/test_report.py's ``sim_report``
    tests and tests/test_report_outputs.py."""
    from refusalstats.reporting import sections

    def undrawn(fig, key, caption):
        fig.clear()  # as render() releases it
        return sections.FigureItem(key, caption, UNDRAWN_PNG, UNDRAWN_SVG)

    monkeypatch.setattr(sections, "render", undrawn)
