"""Report figures, tables and the HTML page.

``report(data, out)`` runs every analysis the table supports and writes one
self-contained HTML page with PNG/SVG figures and CSV tables; the figure functions are
public as ``refusalstats.plot`` (``rs.plot.rates(df)``, ``rs.plot.w2(res)``, ...).
"""

from . import figures
from .html import Report, report

__all__ = ["Report", "figures", "report"]
