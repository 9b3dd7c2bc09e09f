"""One summary object for every result: prints as text, renders as an HTML table in notebooks.

``result.summary()`` of :class:`~refusalstats.LogitResults`,
:class:`~refusalstats.HierarchicalResult`, :class:`~refusalstats.W2SensitivityResult`
and :class:`~refusalstats.agreement.RankAgreement` returns a :class:`Summary`.
"""

from __future__ import annotations

import html

import pandas as pd

__all__ = ["Summary"]


class Summary(str):
    """A result's summary: a string (``print`` shows the text) that notebooks render as HTML.

    It is the text itself (every ``str`` method works), with the title, the tidy table and
    notes kept for ``_repr_html_``.

    Parameters
    ----------
    title : str
        One line naming the result.
    text : str
        The plain-text summary (what ``print`` shows).
    table : DataFrame, optional
        The tidy table shown under the title in HTML (``_repr_html_``).
    notes : list of str
        Lines shown under the table in HTML.

    Examples
    --------
    >>> import pandas as pd
    >>> s = Summary("demo", "demo\\n  a 1", pd.DataFrame({"a": [1]}))
    >>> print(s)
    demo
      a 1
    >>> "<table" in s._repr_html_()
    True
    """

    def __new__(cls, title: str, text: str, table: pd.DataFrame | None = None,
                notes: list[str] | None = None):
        self = super().__new__(cls, text)
        self.title = str(title)
        self.table = table
        self.notes = list(notes or [])
        return self

    @property
    def text(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return str.__str__(self)

    def _repr_html_(self) -> str:
        parts = [f"<div class='refusalstats-summary'><strong>{html.escape(self.title)}</strong>"]
        if self.table is not None:
            parts.append(self.table.to_html(float_format=lambda v: f"{v:.4g}", na_rep="NA",
                                            border=0, index=not isinstance(self.table.index, pd.RangeIndex)))
        else:
            parts.append(f"<pre>{html.escape(self.text)}</pre>")
        parts += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        parts.append("</div>")
        return "\n".join(parts)
