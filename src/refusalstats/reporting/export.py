"""Result tables as Markdown or LaTeX, with p-values formatted for papers.

Any tidy result table (``coef_table()``, ``anova()``, ``refusal_rates``, ``cochran_q``,
W2 tables) goes in; columns named like p-values (``p_value``, ``p_adjusted``)
print as ``< 0.001`` below 0.001 and with three decimals otherwise; other floats with
``digits`` significant digits; integers as integers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["format_p", "format_table", "to_latex", "to_markdown"]

#: Column names that hold p-values.
P_COLUMNS = ("p_value", "p_adjusted", "pvalue", "Pr(>Chi)", "Pr(>F)", "Pr(>|z|)")


def format_p(p: float, threshold: float = 0.001) -> str:
    """``"< 0.001"`` below ``threshold``, else three decimals; blank for NaN.

    Parameters
    ----------
    p : float
        The p-value (None or NaN: blank).
    threshold : float
        Values below it print as ``"< threshold"``.

    Returns
    -------
    str

    Examples
    --------
    >>> format_p(2e-9), format_p(0.0312), format_p(float("nan"))
    ('< 0.001', '0.031', '')
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    p = float(p)
    if p < threshold:
        return f"< {threshold:g}"
    return f"{p:.3f}"


def _format_value(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10_000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{float(v):.{digits}g}"
    return str(v)


def format_table(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """All cells as display strings (p-value columns as ``< 0.001``); the index becomes a column.

    Parameters
    ----------
    frame : DataFrame
        A result table; a named index (or MultiIndex) becomes column(s).
    digits : int
        Significant digits of floats other than p-values.

    Returns
    -------
    DataFrame
        The same columns as strings (missing values blank, booleans "yes"/"no").
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a DataFrame (a result's table), got {type(frame).__name__}")
    df = frame.reset_index() if frame.index.name or isinstance(frame.index, pd.MultiIndex) else frame
    out = pd.DataFrame(index=range(len(df)))
    for col in df.columns:
        values = df[col].tolist()
        if str(col) in P_COLUMNS:
            out[str(col)] = [format_p(v) if v is not None else "" for v in values]
        else:
            out[str(col)] = [_format_value(v, digits) for v in values]
    return out


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned).

    Parameters
    ----------
    frame : DataFrame
        A result table (formatted by :func:`format_table`).
    digits : int
        Significant digits of floats other than p-values.

    Returns
    -------
    str
        The table, one line per row.
    """
    t = format_table(frame, digits)
    numeric = [pd.api.types.is_numeric_dtype(frame.reset_index()[c])
               if c in frame.reset_index().columns else False for c in t.columns]

    def esc(x: str) -> str:
        return x.replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in t.columns) + " |"
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    rows = ["| " + " | ".join(esc(x) for x in r) + " |" for r in t.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\\": r"\textbackslash{}", "<": r"$<$", ">": r"$>$", "−": "$-$", "∞": r"$\infty$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(frame: pd.DataFrame, digits: int = 4, caption: str | None = None) -> str:
    """A LaTeX ``tabular`` (booktabs rules), special characters escaped.

    Parameters
    ----------
    frame : DataFrame
        A result table (formatted by :func:`format_table`).
    digits : int
        Significant digits of floats other than p-values.
    caption : str, optional
        Wrap the tabular in a ``table`` environment with this caption.

    Returns
    -------
    str
        LaTeX source (needs ``\\usepackage{booktabs}``).
    """
    t = format_table(frame, digits)
    base = frame.reset_index() if frame.index.name or isinstance(frame.index, pd.MultiIndex) else frame
    align = "".join("r" if pd.api.types.is_numeric_dtype(base[c]) else "l" for c in base.columns)
    lines = [r"\begin{table}[ht]", r"\centering"] if caption else []
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(_latex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(x) for x in r) + r" \\" for r in t.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines += [rf"\caption{{{_latex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines)
