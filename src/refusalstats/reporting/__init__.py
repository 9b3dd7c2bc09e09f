"""The report: tables, the HTML page and table export.

``report(data, out)`` (re-exported as ``refusalstats.report``) runs every analysis the
table supports and writes one self-contained HTML page with PNG/SVG figures and CSV
tables. Modules: :mod:`~refusalstats.reporting.sections` (the analyses, one section
each), :mod:`~refusalstats.reporting.html` (the page) and
:mod:`~refusalstats.reporting.export` (Markdown / LaTeX tables). The figure functions
live in :mod:`refusalstats.plot` (``rs.plot.rates(df)``, ``rs.plot.w2(res)``, ...).
"""

from .html import Report, report

__all__ = ["Report", "report"]
