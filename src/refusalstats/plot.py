"""Figures of the report, each a public function returning a matplotlib ``Figure``.

Exposed as ``refusalstats.plot``::

    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.02)
    >>> fig = rs.plot.rates(df)              # Table 1 as an annotated heatmap
    >>> fig.savefig("rates.png")             # doctest: +SKIP

Every function accepts either a response table (one row per answer, with a 0/1
``refusal`` column; rates and Wilson CIs are computed with
:func:`refusalstats.rates.refusal_rates`) or an already computed result table. Every
figure draws the uncertainty of what it shows: CI whiskers on points and bars, the CI
range written in every heatmap cell. Colours are colour-blind safe (Okabe-Ito for
categories, viridis for sequential scales) and categories also differ by marker.
Figures are created without pyplot (no global state, any backend; PNG/SVG via Agg).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .table import SchemaError, its_columns
from .vocabulary import CATEGORICAL_COLOURS as _CAT
from .vocabulary import COLOUR_MAP as _CMAP
from .vocabulary import FIGURE_RC as _RC
from .vocabulary import MARKERS as _MARKERS
from .vocabulary import NO_PERSONA as _NO_PERSONA  # noqa: F401 (old name)
from .vocabulary import OKABE_ITO, PERSONA_FREE
from .vocabulary import persona_rows as _persona_rows

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the package
    from matplotlib import colors as mcolors
    from matplotlib.figure import Figure

__all__ = [
    "OKABE_ITO",
    "coefficients",
    "hierarchical_effects",
    "hierarchical_ppc",
    "hierarchical_shrinkage",
    "persona_heatmap",
    "persona_vs_free",
    "personas",
    "rates",
    "rates_by",
    "response_types",
    "w2",
]

# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{what} needs column(s) {missing}, which the table lacks; "
            f"{its_columns(df.columns, missing)}"
        )


def _is_response_table(df: pd.DataFrame) -> bool:
    return "refusal" in df.columns and "rate" not in df.columns


def _levels(s: pd.Series) -> list:
    """Observed levels in categorical order (or order of first appearance)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        present = set(s.dropna().unique())
        return [c for c in s.cat.categories if c in present]
    return list(pd.unique(s.dropna()))


def _rate_table(df: pd.DataFrame, by: list[str], method: str = "wilson", cluster="auto"
                ) -> pd.DataFrame:
    """Refusal rate with CI per group: computed from a response table, or checked and passed.

    ``cluster`` is passed to :func:`refusalstats.rates.refusal_rates` ("auto": item_id when
    it repeats, so intervals account for items answered many times).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if _is_response_table(df):
        from .rates import refusal_rates

        _need(df, by, "this figure")
        return refusal_rates(df, by=by, method=method, cluster=cluster)
    _need(df, list(by) + ["rate", "ci_low", "ci_high"], "this figure (given a rate table)")
    return df


def _pct(x: float) -> str:
    """A rate in percent with the precision a reader needs (Table 1 style)."""
    if not np.isfinite(x):
        return "n/a"
    v = max(100.0 * x, 0.0)  # -0.00 from rounding reads as a bug
    if v == 0:
        return "0"
    if v < 10:
        return f"{v:.2f}"
    return f"{v:.1f}"


def _ci_text(lo: float, hi: float) -> str:
    return f"{_pct(lo)}–{_pct(hi)}"


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if lum > 0.5 else "white"


def _rate_norm(vmax: float) -> mcolors.Normalize:
    """Square-root colour scale in percent: small rates stay distinguishable from zero."""
    from matplotlib import colors as mcolors

    vmax = float(vmax) if np.isfinite(vmax) and vmax > 0 else 1.0
    return mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)


def _heatmap(ax, rate: np.ndarray, lo: np.ndarray, hi: np.ndarray, rows: list, cols: list,
             norm: mcolors.Normalize, *, ci: bool = True, fontsize: float = 7.0):
    """Annotated rate heatmap (rate in %, CI range below it); empty cells hatched grey."""
    import matplotlib

    cmap = matplotlib.colormaps[_CMAP].with_extremes(bad="#dddddd")
    masked = np.ma.masked_invalid(100.0 * rate)
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for i in range(rate.shape[0]):
        for j in range(rate.shape[1]):
            if not np.isfinite(rate[i, j]):
                ax.text(j, i, "no data", ha="center", va="center", fontsize=fontsize - 1,
                        color="0.3", in_layout=False)
                continue
            colour = _text_colour(cmap(norm(100.0 * rate[i, j])))
            label = _pct(rate[i, j])
            if ci:
                label += "\n" + _ci_text(lo[i, j], hi[i, j])
            # cell labels stay inside their cells: keep them out of the layout pass (speed)
            ax.text(j, i, label, ha="center", va="center", fontsize=fontsize, color=colour,
                    linespacing=1.1, in_layout=False)
    ax.set_xticks(np.arange(len(cols)), [str(c) for c in cols])
    ax.set_yticks(np.arange(len(rows)), [str(r) for r in rows])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def _matrix(tab: pd.DataFrame, row: str, col: str, rows: list, cols: list, value: str
            ) -> np.ndarray:
    wide = tab.pivot_table(index=row, columns=col, values=value, observed=False,
                           aggfunc="first", dropna=False)
    wide = wide.reindex(index=rows, columns=cols)
    return wide.to_numpy(dtype=float)


# ----------------------------------------------------------------------------------------
# Table 1: rate by model x task
# ----------------------------------------------------------------------------------------
def rates(data: pd.DataFrame, row: str = "model", col: str = "task", *,
          method: str = "wilson", cluster: str | None = "auto", title: str | None = None) -> Figure:
    """Refusal rate by ``row`` x ``col`` as an annotated heatmap (P1's Table 1).

    Each cell shows the rate in percent and its confidence interval below it; the colour
    scale is the square root of the rate so that rates near zero remain distinguishable.

    Parameters
    ----------
    data : DataFrame
        A response table (with ``refusal``), or a rate table with columns ``row``, ``col``,
        ``rate``, ``ci_low``, ``ci_high`` (fractions), e.g. from ``refusal_rates``.
    row, col : str
        Grouping columns for the rows and columns of the heatmap.
    method : {"wilson", "clopper-pearson", "jeffreys"}
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> fig = rs.plot.rates(rs.simulate_paper(scale=0.02))
    >>> fig.axes[0].get_xlabel()
    'task'
    """
    tab = _rate_table(data, [row, col], method, cluster)
    rows, cols = _levels(tab[row]), _levels(tab[col])
    rate = _matrix(tab, row, col, rows, cols, "rate")
    lo = _matrix(tab, row, col, rows, cols, "ci_low")
    hi = _matrix(tab, row, col, rows, cols, "ci_high")
    fig = _figure(1.35 * len(cols) + 3.0, 0.42 * len(rows) + 1.4)
    ax = fig.subplots()
    im = _heatmap(ax, rate, lo, hi, rows, cols, _rate_norm(np.nanmax(100 * hi)))
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    cb = fig.colorbar(im, ax=ax, shrink=0.6, pad=0.02)
    cb.set_label("refusal rate (%)")
    ax.set_title(title or f"Refusal rate (%) by {row} and {col}, with 95% CI", loc="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Fig. 1: persona vs persona-free
# ----------------------------------------------------------------------------------------
def persona_vs_free(data: pd.DataFrame, by: str = "model", facet: str | None = "task", *,
                    method: str = "wilson", cluster: str | None = "auto", title: str | None = None) -> Figure:
    """Refusal rate with and without a persona, per ``by`` level (P1's Fig. 1).

    Two points per level (persona: orange circles; persona-free: blue squares) with CI
    whiskers, one panel per ``facet`` level.

    Parameters
    ----------
    data : DataFrame
        A response table with a ``setting`` column holding both ``"persona"`` and
        ``"persona-free"``, or a rate table with columns ``by``, ``setting``, (``facet``),
        ``rate``, ``ci_low``, ``ci_high``.
    by : str
        Column on the vertical axis (default ``model``).
    facet : str or None
        One panel per level of this column (default ``task``); None pools.
    method : str
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.02)
    >>> fig = rs.plot.persona_vs_free(df)  # doctest: +SKIP
    """
    if facet is not None and facet not in data.columns:
        facet = None
    by_cols = ([facet] if facet else []) + [by, "setting"]
    _need(data, by_cols, "persona_vs_free")
    settings = set(data["setting"].astype(str).unique())
    if not {"persona", PERSONA_FREE} <= settings:
        raise ValueError(
            "persona_vs_free needs rows of both settings in column 'setting' "
            f"('persona' and 'persona-free'); found {sorted(settings)}"
        )
    tab = _rate_table(data, by_cols, method, cluster)
    tab = tab.assign(setting=tab["setting"].astype(str))
    levels = _levels(tab[by])
    panels = _levels(tab[facet]) if facet else [None]
    fig = _figure(max(4.0, 2.9 * len(panels) + 1.6), max(2.8, 0.34 * len(levels) + 1.9))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    styles = {"persona": (_CAT[1], "o", 0.17), PERSONA_FREE: (_CAT[0], "s", -0.17)}
    y0 = np.arange(len(levels))[::-1]
    for ax, panel in zip(axes, panels):
        sub = tab if panel is None else tab[tab[facet].astype(str) == str(panel)]
        for setting, (colour, marker, dy) in styles.items():
            s = sub[sub["setting"] == setting].set_index(by).reindex(levels)
            r = 100 * s["rate"].to_numpy(float)
            lo = 100 * s["ci_low"].to_numpy(float)
            hi = 100 * s["ci_high"].to_numpy(float)
            ok = np.isfinite(r)
            ax.errorbar(r[ok], y0[ok] + dy, xerr=[r[ok] - lo[ok], hi[ok] - r[ok]], fmt=marker,
                        color=colour, ms=4, capsize=2, lw=1, label=setting)
        ax.set_yticks(y0, [str(v) for v in levels])
        ax.set_ylim(-0.6, len(levels) - 0.4)
        ax.set_xlabel("refusal rate (%)")
        ax.set_xlim(left=0)
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        if panel is not None:
            ax.set_title(f"{facet}: {panel}")
        _style(ax)
    axes[0].set_ylabel(by)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, [f"{lb} (95% CI)" for lb in labels], loc="outside lower center",
               ncol=2, frameon=False)
    fig.suptitle(title or "Refusal rate with and without a persona", x=0.01, ha="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Figs. 2, 3: rate per persona
# ----------------------------------------------------------------------------------------
def personas(data: pd.DataFrame, facet: str | None = "task", *, method: str = "wilson", cluster: str | None = "auto",
             title: str | None = None) -> Figure:
    """Refusal rate per persona with CIs, coloured by persona group (P1's Figs. 2-3).

    Personas are listed by group, and within a group from the highest refusal rate (mean
    over the panels) to the lowest, top to bottom.

    When the table has persona-free rows their rate is drawn as a dashed vertical line
    with its CI as a grey band, the baseline each persona is compared against.

    Parameters
    ----------
    data : DataFrame
        A response table (``persona``; ``persona_group`` and ``setting`` are used when
        present), or a rate table with ``persona``, (``facet``), ``rate``, ``ci_low``,
        ``ci_high``.
    facet : str or None
        One panel per level of this column (default ``task``); None pools.
    method : str
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> fig = rs.plot.personas(rs.simulate_paper(scale=0.02))
    >>> fig.axes[0].get_xlabel()
    'refusal rate (%)'
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if facet is not None and facet not in data.columns:
        facet = None
    fcols = [facet] if facet else []
    baseline = None
    group_order = None  # persona groups in the column's level order (categorical) or first appearance
    if _is_response_table(data):
        _need(data, ["persona"] + fcols, "personas")
        rows = _persona_rows(data)
        if rows.empty:
            raise ValueError("personas: the table has no rows with a persona")
        has_group = "persona_group" in rows.columns
        tab = _rate_table(rows, fcols + ["persona"], method, cluster)
        if has_group:
            group_order = [str(g) for g in _levels(rows["persona_group"])]
            groups = (rows[["persona", "persona_group"]].drop_duplicates("persona")
                      .set_index("persona")["persona_group"].astype(str))
            tab = tab.assign(persona_group=tab["persona"].map(groups).astype(str))
        if "setting" in data.columns:
            free = data[data["setting"].astype(str) == PERSONA_FREE]
            if len(free):
                baseline = _rate_table(free, fcols or ["setting"], method, cluster)
    else:
        tab = _rate_table(data, fcols + ["persona"], method, cluster)
    if "persona_group" in tab.columns:
        if group_order is None:
            group_order = [str(g) for g in _levels(tab["persona_group"])]
        tab = tab.assign(persona_group=tab["persona_group"].astype(str))
        present = set(tab["persona_group"])
        group_levels = [g for g in group_order if g in present]
        group_levels += [g for g in pd.unique(tab["persona_group"]) if g not in group_levels]
        mean_rate = tab.groupby("persona", observed=True, sort=False)["rate"].mean()
        order = (tab[["persona", "persona_group"]].drop_duplicates("persona")
                 .assign(g=lambda t: t["persona_group"].map(group_levels.index),
                         r=lambda t: -t["persona"].astype(object).map(mean_rate).astype(float))
                 .sort_values(["g", "r"], kind="stable")["persona"].tolist())
    else:
        group_levels = []
        mean_rate = tab.groupby("persona", observed=True, sort=False)["rate"].mean()
        order = list(mean_rate.sort_values(ascending=False, kind="stable").index)
    panels = _levels(tab[facet]) if facet else [None]
    fig = _figure(max(4.2, 2.8 * len(panels) + 2.0), 0.26 * len(order) + 1.9)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    y = np.arange(len(order))[::-1]
    for ax, panel in zip(axes, panels):
        sub = tab if panel is None else tab[tab[facet].astype(str) == str(panel)]
        s = sub.set_index("persona").reindex(order)
        r = 100 * s["rate"].to_numpy(float)
        lo = 100 * s["ci_low"].to_numpy(float)
        hi = 100 * s["ci_high"].to_numpy(float)
        if baseline is not None:
            b = baseline if panel is None else baseline[baseline[facet].astype(str) == str(panel)]
            if len(b):
                ax.axvspan(100 * b["ci_low"].iloc[0], 100 * b["ci_high"].iloc[0], color="0.88",
                           lw=0, zorder=0)
                ax.axvline(100 * b["rate"].iloc[0], color="0.35", ls="--", lw=1, zorder=1)
        if group_levels:
            g = s["persona_group"].to_numpy()
            for k, grp in enumerate(group_levels):
                m = (g == grp) & np.isfinite(r)
                ax.errorbar(r[m], y[m], xerr=[r[m] - lo[m], hi[m] - r[m]],
                            fmt=_MARKERS[k % len(_MARKERS)], color=_CAT[k % len(_CAT)], ms=4,
                            capsize=2, lw=1, label=grp, zorder=3)
        else:
            m = np.isfinite(r)
            ax.errorbar(r[m], y[m], xerr=[r[m] - lo[m], hi[m] - r[m]], fmt="o", color=_CAT[0],
                        ms=4, capsize=2, lw=1, zorder=3)
        ax.set_yticks(y, [str(p) for p in order])
        ax.set_xlabel("refusal rate (%)")
        ax.set_xlim(left=0)
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        if panel is not None:
            ax.set_title(f"{facet}: {panel}")
        _style(ax)
    axes[0].set_ylabel("persona")
    handles = [Line2D([], [], color=_CAT[k % len(_CAT)], marker=_MARKERS[k % len(_MARKERS)],
                      ls="", label=grp) for k, grp in enumerate(group_levels)]
    if baseline is not None:
        handles += [Line2D([], [], color="0.35", ls="--", label="persona-free"),
                    Patch(color="0.88", label="persona-free 95% CI")]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                   frameon=False)
    fig.suptitle(title or "Refusal rate per persona (95% CI)", x=0.01, ha="left", wrap=True)
    return fig


def rates_by(data: pd.DataFrame, column: str, *, method: str = "wilson",
             cluster: str | None = "auto", title: str | None = None) -> Figure:
    """Refusal rate per level of any column with CIs, levels sorted by rate (a forest plot).

    Parameters
    ----------
    data : DataFrame
        A response table, or a rate table with ``column``, ``rate``, ``ci_low``, ``ci_high``.
    column : str
        The design column (e.g. ``"prompt"``, XSTest's prompt type, or ``"persona_group"``).
    method : str
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> fig = rs.plot.rates_by(rs.simulate_paper(scale=0.02), "prompt")
    >>> fig.axes[0].get_xlabel()
    'refusal rate (%)'
    """
    _need(data, [column], "rates_by")
    tab = _rate_table(data, [column], method, cluster).sort_values("rate", kind="stable")
    labels = [str(v) for v in tab[column]]
    r, lo, hi = (100 * tab[c].to_numpy(float) for c in ("rate", "ci_low", "ci_high"))
    width = max(4.6, 0.055 * max(len(t) for t in labels) + 3.6)
    fig = _figure(width, 0.24 * len(labels) + 1.5)
    ax = fig.subplots()
    y = np.arange(len(labels))
    ok = np.isfinite(r)
    ax.errorbar(r[ok], y[ok], xerr=[np.maximum(r - lo, 0)[ok], np.maximum(hi - r, 0)[ok]],
                fmt="o", color=_CAT[0], ms=4, capsize=2, lw=1, zorder=3)
    ax.set_yticks(y, labels)
    ax.set_xlabel("refusal rate (%)")
    ax.set_ylabel(column)
    ax.set_xlim(left=0)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    _style(ax)
    fig.suptitle(title or f"Refusal rate by {column} (95% CI)", x=0.01, ha="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Figs. 7-9: model x persona
# ----------------------------------------------------------------------------------------
#: persona_heatmap puts personas on the rows when there are more than this many ...
_MAX_HEATMAP_COLUMNS = 18
#: ... and at most this many ``row`` levels (models), which then fit across the page.
_MAX_HEATMAP_ROWS_TO_TURN = 10


def persona_heatmap(data: pd.DataFrame, row: str = "model", *, task: str | None = None,
                    method: str = "wilson", cluster: str | None = "auto", title: str | None = None) -> Figure:
    """Refusal rate per ``row`` x persona as an annotated heatmap (P1's Figs. 7-9).

    Personas are the columns; with more than 18 personas and at most 10 ``row`` levels
    they are the rows, so that the figure stays readable at page width.

    Parameters
    ----------
    data : DataFrame
        A response table, or a rate table with ``row``, ``persona``, ``rate``,
        ``ci_low``, ``ci_high``.
    row : str
        Column of the heatmap rows (default ``model``).
    task : str, optional
        Keep only this task (column ``task``); default: all rows.
    method : str
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> fig = rs.plot.persona_heatmap(rs.simulate_paper(scale=0.02), task="offensiveness")
    """
    if task is not None:
        _need(data, ["task"], "persona_heatmap(task=...)")
        if task not in set(data["task"].astype(str)):
            raise ValueError(f"task {task!r} is not in column 'task'; levels: "
                             f"{sorted(set(data['task'].astype(str)))}")
        data = data[data["task"].astype(str) == task]
    if _is_response_table(data):
        data = _persona_rows(data)
    tab = _rate_table(data, [row, "persona"], method, cluster)
    rows, cols = _levels(tab[row]), _levels(tab["persona"])
    rate = _matrix(tab, row, "persona", rows, cols, "rate")
    lo = _matrix(tab, row, "persona", rows, cols, "ci_low")
    hi = _matrix(tab, row, "persona", rows, cols, "ci_high")
    norm = _rate_norm(np.nanmax(100 * hi))
    if len(cols) > _MAX_HEATMAP_COLUMNS and len(rows) <= _MAX_HEATMAP_ROWS_TO_TURN:
        # many personas: one line per persona (a page-wide figure stays readable)
        fig = _figure(1.05 * len(rows) + 3.6, 0.34 * len(cols) + 2.2)
        ax = fig.subplots()
        im = _heatmap(ax, rate.T, lo.T, hi.T, cols, rows, norm, fontsize=6.6)
        ax.set_xticks(np.arange(len(rows)), [str(r) for r in rows], rotation=30, ha="right")
        ax.set_xlabel(row)
        ax.set_ylabel("persona")
    else:
        fig = _figure(0.62 * len(cols) + 2.6, 0.36 * len(rows) + 2.0)
        ax = fig.subplots()
        im = _heatmap(ax, rate, lo, hi, rows, cols, norm, fontsize=6.6)
        ax.set_xticks(np.arange(len(cols)), [str(c) for c in cols], rotation=40, ha="right")
        ax.set_xlabel("persona")
        ax.set_ylabel(row)
    cb = fig.colorbar(im, ax=ax, shrink=0.6, pad=0.01)
    cb.set_label("refusal rate (%)")
    what = f"task {task}" if task else "all tasks"
    ax.set_title(title or f"Refusal rate (%) by {row} and persona, {what} (95% CI below)",
                 loc="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Figs. 4, 10, 11: model x response type
# ----------------------------------------------------------------------------------------
def response_types(data: pd.DataFrame, row: str = "model", facet: str | None = "task", *,
                   method: str = "wilson", cluster: str | None = "auto", title: str | None = None) -> Figure:
    """Refusal rate per ``row`` x response type, one heatmap per ``facet`` level.

    P1's Figs. 4, 10 and 11 (unforced, semi-forced, forced prompts); all panels share
    one colour scale.

    Parameters
    ----------
    data : DataFrame
        A response table with ``response_type``, or a rate table with ``row``,
        ``response_type``, (``facet``), ``rate``, ``ci_low``, ``ci_high``.
    row : str
        Heatmap rows (default ``model``).
    facet : str or None
        One panel per level (default ``task``).
    method : str
        Interval method when rates are computed here.
    cluster : "auto", str or None
        Clustering of the intervals when rates are computed here (passed to
        :func:`refusalstats.refusal_rates`; ``"auto"``: ``item_id`` when it repeats).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import refusalstats as rs
    >>> fig = rs.plot.response_types(rs.simulate_paper(scale=0.02))
    >>> len(fig.axes)  # three tasks and a colour bar
    4
    """
    if facet is not None and facet not in data.columns:
        facet = None
    fcols = [facet] if facet else []
    if _is_response_table(data):
        data = _persona_rows(data) if "setting" not in data.columns else data
    tab = _rate_table(data, fcols + [row, "response_type"], method, cluster)
    rows, cols = _levels(tab[row]), _levels(tab["response_type"])
    panels = _levels(tab[facet]) if facet else [None]
    norm = _rate_norm(np.nanmax(100 * tab["ci_high"].to_numpy(float)))
    fig = _figure(2.9 * len(panels) + 2.4, 0.42 * len(rows) + 1.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    im = None
    for k, (ax, panel) in enumerate(zip(axes, panels)):
        sub = tab if panel is None else tab[tab[facet].astype(str) == str(panel)]
        mats = [_matrix(sub, row, "response_type", rows, cols, v)
                for v in ("rate", "ci_low", "ci_high")]
        im = _heatmap(ax, *mats, rows, cols, norm, fontsize=6.2)
        ax.set_xlabel("response type")
        if panel is not None:
            ax.set_title(f"{facet}: {panel}")
        if k > 0:
            ax.tick_params(labelleft=False)
    axes[0].set_ylabel(row)
    cb = fig.colorbar(im, ax=list(axes), shrink=0.6, pad=0.01)
    cb.set_label("refusal rate (%)")
    fig.suptitle(title or f"Refusal rate (%) by {row} and response type (95% CI below)",
                 x=0.01, ha="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Fig. 5: W2 sensitivity indices
# ----------------------------------------------------------------------------------------
def w2(result, *, ax=None, sort: bool = True, title: str | None = None) -> Figure:
    """W2 sensitivity index per input with bootstrap CIs and the permutation null (Fig. 5).

    Bars are iota with CI whiskers and the value written above; behind each bar a grey
    box spans 0 to the 95% quantile of iota under permutation (an input whose bar stays
    inside it is indistinguishable from an irrelevant one) and a dashed tick marks the
    null mean (the estimator's bias at that partition size). An input that is not
    distinguishable from its permutation null (column ``distinguishable`` False, or
    ``p_value`` > 0.05 when that column is absent) is drawn grey and hatched and labelled
    "~ null"; an estimate outside its own CI gets a dagger, explained under the axes.

    Parameters
    ----------
    result : W2SensitivityResult or DataFrame
        ``w2_sensitivity(...)`` or its ``.table`` (``input, iota, ci_low, ci_high``;
        ``null_mean``, ``null_q95``, ``p_value``, ``distinguishable`` optional). The legend
        names the result's interval (``conf``, ``ci_method``); a bare table's is read from
        ``attrs["interval"]`` when set, else called a 95% bootstrap CI.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new figure.
    sort : bool
        Order the bars by decreasing iota (default); False keeps the table's order.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> tab = pd.DataFrame({"input": ["model", "task"], "iota": [0.4, 0.1],
    ...                     "ci_low": [0.38, 0.09], "ci_high": [0.42, 0.11]})
    >>> fig = rs.plot.w2(tab)
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    tab = getattr(result, "table", result)
    if not isinstance(tab, pd.DataFrame):
        raise TypeError("w2() takes a W2SensitivityResult or its .table DataFrame, "
                        f"got {type(result).__name__}")
    _need(tab, ["input", "iota", "ci_low", "ci_high"], "w2")
    interval = tab.attrs.get("interval", "95% bootstrap")
    if hasattr(result, "conf") and hasattr(result, "ci_method"):
        method = {"bca": "BCa", "bc": "BC", "percentile": "percentile",
                  "expanded": "expanded percentile",
                  "studentized": "studentized"}.get(result.ci_method, "")
        interval = f"{result.conf:.0%} {method} bootstrap".replace("  ", " ")
    if sort:
        tab = tab.sort_values("iota", ascending=False, kind="stable")
    tab = tab.reset_index(drop=True)
    n = len(tab)
    if ax is None:
        fig = _figure(max(4.5, 1.2 * n + 2.2) + 2.6, 3.8)  # + the legend at the right
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = np.arange(n)
    iota = tab["iota"].to_numpy(float)
    lo = tab["ci_low"].to_numpy(float)
    hi = tab["ci_high"].to_numpy(float)
    has_null = "null_q95" in tab.columns and np.isfinite(tab["null_q95"].to_numpy(float)).any()
    if has_null:
        for xi_, q95, mean in zip(x, tab["null_q95"], tab.get("null_mean", tab["null_q95"])):
            ax.add_patch(Rectangle((xi_ - 0.42, 0.0), 0.84, q95, color="0.85", lw=0, zorder=0))
            ax.hlines(mean, xi_ - 0.42, xi_ + 0.42, colors="0.3", linestyles="--", lw=1,
                      zorder=3)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if "distinguishable" in tab.columns:
        dist = tab["distinguishable"].astype("boolean").fillna(True).to_numpy(bool)
    elif "p_value" in tab.columns:
        pv = tab["p_value"].to_numpy(float)
        dist = ~(np.isfinite(pv) & (pv > 0.05))
    else:
        dist = np.ones(n, dtype=bool)
    outside = ok & ((iota < lo) | (iota > hi))
    bars = ax.bar(x, iota, width=0.55, color=[_CAT[0] if d else "0.62" for d in dist],
                  zorder=2)
    for bar, d in zip(bars, dist):
        if not d:
            bar.set_hatch("//")
            bar.set_gid("null-like")
    # Draw each interval from its ends: the given-data estimator is biased upward, so a
    # bootstrap CI need not contain the estimate (errorbar would reject negative lengths).
    ax.vlines(x[ok], lo[ok], hi[ok], colors="black", lw=1.2, zorder=4, gid="ci")
    for end in (lo, hi):
        ax.hlines(end[ok], x[ok] - 0.08, x[ok] + 0.08, colors="black", lw=1.2, zorder=4)
    top = np.nanmax(np.concatenate([hi[ok] if ok.any() else iota, iota]))
    for xi_, v, a, b, good, d, o in zip(x, iota, lo, hi, ok, dist, outside):
        label = (f"{v:.3f}" + (" \u2020" if o else "") + (f"\n[{a:.3f}, {b:.3f}]" if good else "")
                 + ("" if d else "\n~ null"))
        ax.text(xi_, (max(b, v) if good else v) + 0.02 * max(top, 1e-3), label, ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, tab["input"].astype(str).tolist())
    ax.set_xlabel("input")
    ax.set_ylabel("W2 sensitivity index ι (0 to 1)")
    ax.set_ylim(0, min(1.0, 1.3 * top) if np.isfinite(top) and top > 0 else 1.0)
    # the CI's legend entry is an error bar like the drawn ones (a whisker with caps)
    ci_key = ax.errorbar([np.nan], [np.nan], yerr=[[np.nan], [np.nan]], fmt="none",
                         ecolor="black", elinewidth=1.2, capsize=3)
    handles = [Patch(color=_CAT[0], label="ι (value above the bar)"),
               (ci_key, f"{interval} CI ([low, high] above the bar)")]
    if has_null:
        handles += [Patch(color="0.85", label="permutation null, 0 to 95% quantile"),
                    Line2D([], [], color="0.3", ls="--", label="null mean (bias)")]
    if not dist.all():
        handles.append(Patch(facecolor="0.62", hatch="//",
                             label="~ null: not distinguishable from the permutation null "
                                   "(p > 0.05)"))
    labels = [h[1] if isinstance(h, tuple) else h.get_label() for h in handles]
    handles = [h[0] if isinstance(h, tuple) else h for h in handles]
    # outside the axes, right: inside it covered the values written above the bars
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize=7)
    if outside.any():
        ax.annotate("\u2020 estimate outside its own CI: the estimator's bias is large relative "
                    "to its spread (see iota_corrected, p_value)", xy=(0, 0),
                    xycoords="axes fraction", xytext=(0, -32), textcoords="offset points",
                    fontsize=7, color="0.3", va="top", gid="w2-footnote")
    _style(ax)
    ax.set_title(title or "How much each input explains refusal (W2 index)", loc="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# Fig. 6: coefficient forest plot
# ----------------------------------------------------------------------------------------
_TERM = ("term", "name", "coef_name")
_EST = ("estimate", "coef", "Estimate", "log_odds")
_LO = ("ci_low", "conf_low", "lower", "ci_lower", "2.5%")
_HI = ("ci_high", "conf_high", "upper", "ci_upper", "97.5%")
_P = ("p_value", "pvalue", "P>|z|", "Pr(>|z|)")


def _pick(df: pd.DataFrame, names: Sequence[str], what: str) -> str | None:
    for n in names:
        if n in df.columns:
            return n
    return None


def coef_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Normalise a coefficient table to ``term, estimate, ci_low, ci_high, p_value``.

    Parameters
    ----------
    table : LogitResults or DataFrame
        A fitted ``logit`` result (its ``coef_table()`` is used) or any DataFrame with a
        term column (or index) and estimate / interval columns under common names
        (``estimate``/``coef``, ``ci_low``/``conf_low``/``2.5%``, ``p_value``/``Pr(>|z|)``).

    Returns
    -------
    DataFrame
        ``term, estimate, ci_low, ci_high, p_value`` (``p_value`` NaN when the table has none).
    """
    tab = getattr(table, "coef_table", None)
    if callable(tab):
        table = tab()
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a coefficient DataFrame, got {type(table).__name__}")
    df = table.copy()
    term = _pick(df, _TERM, "term")
    if term is None:
        df = df.reset_index().rename(columns={"index": "term"})
        term = "term" if "term" in df.columns else df.columns[0]
    est, lo, hi = _pick(df, _EST, ""), _pick(df, _LO, ""), _pick(df, _HI, "")
    if est is None or lo is None or hi is None:
        raise SchemaError("a coefficient table needs an estimate and CI columns (e.g. 'estimate', "
                          f"'ci_low', 'ci_high'); {its_columns(df.columns)}")
    p = _pick(df, _P, "")
    out = pd.DataFrame({
        "term": df[term].astype(str).to_numpy(),
        "estimate": df[est].to_numpy(float),
        "ci_low": df[lo].to_numpy(float),
        "ci_high": df[hi].to_numpy(float),
        "p_value": df[p].to_numpy(float) if p else np.full(len(df), np.nan),
    })
    if "separated" in df.columns:
        out["separated"] = df["separated"].fillna(False).astype(bool).to_numpy()
    return out


def _pretty_one(term: str) -> str:
    if "[T." in term and term.endswith("]"):
        f, lvl = term.split("[T.", 1)
        f = f.removeprefix("C(").split(",")[0].rstrip(")")
        return f"{f}: {lvl[:-1]}"
    return term


def _pretty_term(term: str) -> str:
    """``persona[T.Black person]`` -> ``persona: Black person``; interactions joined by ×.

    >>> _pretty_term("prompt[T.p2]:model[T.Gemma-2B]")
    'prompt: p2 × model: Gemma-2B'
    """
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(term):  # split on ':' outside [...] (levels may contain ':')
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(term[start:i])
            start = i + 1
    parts.append(term[start:])
    return " × ".join(_pretty_one(p) for p in parts)


def _factor_of(term: str) -> str:
    """The factor a coefficient belongs to: ``persona[T.Man]`` -> ``persona``; an
    interaction's factors joined by ×; anything else is its own name.

    >>> _factor_of("C(model, Treatment('A'))[T.B]"), _factor_of("x")
    ('model', 'x')
    """
    return " × ".join(p.split(":", 1)[0] for p in _pretty_term(term).split(" × "))


def _top(tab: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The ``top_k`` most positive terms (descending) then the ``top_k`` most negative; all
    terms, by estimate, when there are at most ``2 * top_k``."""
    if len(tab) <= 2 * top_k:
        return tab.sort_values("estimate", ascending=False, kind="stable").reset_index(drop=True)
    pos = tab[tab["estimate"] > 0].nlargest(top_k, "estimate")
    neg = tab[tab["estimate"] <= 0].nsmallest(top_k, "estimate")
    return pd.concat([pos, neg.iloc[::-1]]).reset_index(drop=True)


def _forest(ax, show: pd.DataFrame, scale: str, sig_level: float, strip: str | None = None
            ) -> None:
    """One forest of coefficients (top row first) into ``ax``."""
    n = len(show)
    y = np.arange(n)[::-1]
    est = show["estimate"].to_numpy(float)
    lo = show["ci_low"].to_numpy(float)
    hi = show["ci_high"].to_numpy(float)
    sig = show["p_value"].to_numpy(float) < sig_level
    colour = np.where(est > 0, _CAT[4], _CAT[0])
    if scale == "odds":
        with np.errstate(over="ignore"):
            est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
    for k in range(n):
        ok = np.isfinite(lo[k]) and np.isfinite(hi[k])
        ax.errorbar(est[k], y[k], xerr=[[est[k] - lo[k]], [hi[k] - est[k]]] if ok else None,
                    fmt="o", color=colour[k], mfc=colour[k] if sig[k] else "white", ms=5,
                    capsize=2, lw=1.1)
    ax.axvline(1.0 if scale == "odds" else 0.0, color="0.4", lw=0.8)
    labels = [_pretty_term(t) for t in show["term"]]
    if strip:  # the panel title names the factor: drop it from the tick labels
        labels = [t.removeprefix(f"{strip}: ") for t in labels]
    if "separated" in show.columns:
        labels = [f"{t} (separated)" if sep else t
                  for t, sep in zip(labels, show["separated"].fillna(False).astype(bool))]
    ax.set_yticks(y, labels)
    if scale == "odds":
        ax.set_xscale("log")
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    _style(ax)


def coefficients(data, top_k: int = 10, *, sig_level: float = 0.01, scale: str = "log-odds",
                 by_factor: bool = False, reference: dict | None = None,
                 title: str | None = None) -> Figure:
    """Forest plot of the ``top_k`` largest positive and negative coefficients (P1's Fig. 6).

    Log-odds estimates with their CIs (whiskers); filled markers are significant at
    ``sig_level`` (P1 uses 0.01), hollow ones are not. The intercept is left out. With
    ``by_factor=True`` each factor (persona, prompt, task, model, ...) gets its own panel
    and its own axis, so that large terms of one factor (a model that never refuses) do
    not squash the others; P1's Fig. 6 is the persona panel.

    Parameters
    ----------
    data : LogitResults or DataFrame
        A fitted ``logit`` result (its ``coef_table()`` is used) or a coefficient table
        (``term``, ``estimate``, ``ci_low``, ``ci_high``, optional ``p_value``).
    top_k : int
        How many of the most positive and of the most negative terms to show (per panel
        with ``by_factor``).
    sig_level : float
        Significance level of the filled markers (not ``alpha``, which is logit's penalty).
    scale : {"log-odds", "odds"}
        Plot the coefficients (log-odds, reference line at 0) or the odds ratios
        ``exp(estimate)`` with their intervals on a log axis (reference line at 1).
    by_factor : bool
        One panel per factor, each with its own x axis (the report's choice).
    reference : dict, optional
        Reference level per factor (``{"persona": "Atheist"}``), named in the panel titles;
        default the fit's ``reference`` when ``data`` is a fitted result.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> tab = pd.DataFrame({"term": ["a", "b"], "estimate": [1.0, -0.5],
    ...                     "ci_low": [0.5, -0.9], "ci_high": [1.5, -0.1]})
    >>> fig = rs.plot.coefficients(tab, top_k=1)
    >>> fig = rs.plot.coefficients(tab, top_k=1, scale="odds")
    >>> fig.axes[0].get_xscale()
    'log'
    >>> tab = pd.DataFrame({"term": ["persona[T.x]", "persona[T.y]", "model[T.B]"],
    ...                     "estimate": [1.0, 0.5, -9.0], "ci_low": [0.5, 0.1, -12.0],
    ...                     "ci_high": [1.5, 0.9, -6.0]})
    >>> [ax.get_title(loc="left") for ax in rs.plot.coefficients(tab, by_factor=True).axes]
    ['persona', 'model']
    """
    from matplotlib.lines import Line2D

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if scale not in ("log-odds", "odds"):
        raise ValueError(f"scale must be 'log-odds' or 'odds', got {scale!r}")
    if reference is None:
        reference = getattr(data, "reference", None)
    reference = dict(reference or {})
    tab = coef_frame(data)
    tab = tab[~tab["term"].str.lower().isin(["intercept", "(intercept)"])]
    tab = tab[np.isfinite(tab["estimate"])]
    if by_factor:
        factor = tab["term"].map(_factor_of)
        groups = [(f, _top(tab[factor == f], top_k)) for f in pd.unique(factor)]
    else:
        groups = [(None, _top(tab, top_k))]
    sizes = [max(len(g), 1) for _, g in groups]
    fig = _figure(6.4, 0.26 * sum(sizes) + 0.75 * len(groups) + 1.1)
    axes = fig.subplots(len(groups), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [s + 1.2 for s in sizes]})[:, 0]
    for ax, (f, show) in zip(axes, groups):
        _forest(ax, show, scale, sig_level, strip=f)
        if f is not None:
            ref = f" (vs. {reference[f]})" if f in reference else ""
            ax.set_title(f"{f}{ref}", loc="left", fontsize=9)
            ax.set_ylabel("")
        else:
            ax.set_ylabel("term")
    if scale == "odds":
        axes[-1].set_xlabel("odds ratio of refusal vs. reference level\n(log axis), 95% CI")
    else:
        axes[-1].set_xlabel("coefficient: log-odds of refusal vs. reference level\n95% CI"
                            + ("; each panel has its own axis" if by_factor and len(axes) > 1
                               else ""))
    handles = [Line2D([], [], color=_CAT[4], marker="o", ls="", label="raises refusal"),
               Line2D([], [], color=_CAT[0], marker="o", ls="", label="lowers refusal"),
               Line2D([], [], color="0.3", marker="o", mfc="white", ls="",
                      label=f"hollow: p ≥ {sig_level:g}")]
    if by_factor:  # below the panels, where it hides no point
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    else:
        axes[0].legend(handles=handles, loc="best", frameon=False)
    if by_factor:
        fig.suptitle(title or "Coefficients by factor (log-odds vs. the reference level)",
                     x=0.01, ha="left", wrap=True)
    else:
        axes[0].set_title(title or f"Largest {top_k} positive and negative coefficients",
                          loc="left", wrap=True)
    return fig


# ----------------------------------------------------------------------------------------
# hierarchical effects
# ----------------------------------------------------------------------------------------
_MEAN = ("effect", "mean", "estimate", "median")
_HLO = ("ci_low", "hdi_3%", "hdi_2.5%", "lower")
_HHI = ("ci_high", "hdi_97%", "hdi_97.5%", "upper")


def unassessable(data: pd.DataFrame) -> np.ndarray:
    """Cells whose observed refusal rate is 0 or 1 (``observed_rate`` column; False without it).

    Such a cell (e.g. every persona of a model that never refused) shows no variation,
    so a persona effect there is the prior and the pooling speaking, not the cell's data:
    figures draw it as a grey cross and the report does not count it among effects whose
    interval excludes 0.
    """
    if "observed_rate" not in data.columns:
        return np.zeros(len(data), dtype=bool)
    obs = data["observed_rate"].to_numpy(float)
    return (obs <= 0) | (obs >= 1)


def hierarchical_effects(data: pd.DataFrame, term: str = "persona", within: str = "model",
                         *, scale: str = "auto", title: str | None = None) -> Figure:
    """Posterior effect of each level of ``term`` within each ``within`` group with HDIs.

    One small panel per ``within`` level (e.g. per model), each a forest of the level's
    posterior mean effect with its highest-density interval, on a shared axis; filled
    markers are intervals that exclude zero. Cells with an observed rate of 0 or 1
    (``observed_rate`` column, e.g. a model that never refused) are grey crosses without
    an interval: the data say nothing about a persona effect there.

    Parameters
    ----------
    data : DataFrame
        From ``HierarchicalResult.effects("persona", within="model")``: the columns named
        by ``term`` and ``within``, the posterior mean (``effect``, or ``mean``) and interval bounds
        ``ci_low``/``ci_high``; on the probability scale ``prob_effect``,
        ``prob_ci_low``, ``prob_ci_high``; the interval's name is read from
        ``data.attrs["interval"]`` (default ``"95% HDI"``).
    term, within : str
        Column names of the effect levels and the panel grouping.
    scale : {"auto", "probability", "log-odds"}
        ``"probability"``: the change in refusal probability in percentage points (the
        ``prob_*`` columns); ``"log-odds"``: the logit-scale effect; ``"auto"``:
        probability when the ``prob_*`` columns are there.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> eff = pd.DataFrame({"model": ["A", "A", "B", "B"], "persona": ["x", "y", "x", "y"],
    ...                     "mean": [0.2, -0.1, 0.5, 0.0], "ci_low": [0.0, -0.3, 0.3, -0.2],
    ...                     "ci_high": [0.4, 0.1, 0.7, 0.2]})
    >>> fig = rs.plot.hierarchical_effects(eff)
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected an effects DataFrame, got {type(data).__name__}")
    if scale not in ("auto", "probability", "log-odds"):
        raise ValueError(f"scale must be 'auto', 'probability' or 'log-odds', got {scale!r}")
    prob_cols = ("prob_effect", "prob_ci_low", "prob_ci_high")
    if scale == "auto":
        scale = "probability" if all(c in data.columns for c in prob_cols) else "log-odds"
    if scale == "probability":
        _need(data, prob_cols, "hierarchical_effects(scale='probability')")
        m, lo_c, hi_c = prob_cols
        factor = 100.0
    else:
        m, lo_c, hi_c = _pick(data, _MEAN, ""), _pick(data, _HLO, ""), _pick(data, _HHI, "")
        factor = 1.0
    if m is None or lo_c is None or hi_c is None:
        raise SchemaError("hierarchical_effects needs a mean and interval columns (e.g. 'mean', "
                          f"'ci_low', 'ci_high'); {its_columns(data.columns)}")
    cols = [term] + ([within] if within else [])
    _need(data, cols, "hierarchical_effects")
    interval = str(data.attrs.get("interval", "95% HDI"))
    flat = unassessable(data)
    data = data.assign(_flat=flat)
    groups = _levels(data[within]) if within else [None]
    levels = _levels(data[term])
    ncol = min(4, len(groups))
    nrow = int(np.ceil(len(groups) / ncol))
    fig = _figure(2.3 * ncol + 1.4, (0.15 * len(levels) + 0.7) * nrow + 1.0)
    axes = np.atleast_2d(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False))
    y = np.arange(len(levels))[::-1]
    for k, g in enumerate(groups):
        ax = axes.flat[k]
        sub = data if g is None else data[data[within].astype(str) == str(g)]
        s = sub.set_index(term).reindex(levels)
        mu = factor * s[m].to_numpy(float)
        lo = factor * s[lo_c].to_numpy(float)
        hi = factor * s[hi_c].to_numpy(float)
        no_var = s["_flat"].fillna(False).to_numpy(bool)
        ok = np.isfinite(mu)
        excl = ok & ((lo > 0) | (hi < 0)) & ~no_var
        colour = np.where(mu > 0, _CAT[4], _CAT[0])
        ax.axvline(0, color="0.5", lw=0.7)
        for i in np.flatnonzero(ok & ~no_var):
            ax.errorbar(mu[i], y[i], xerr=[[mu[i] - lo[i]], [hi[i] - mu[i]]], fmt="o",
                        ms=3, lw=0.9, color=colour[i], mfc=colour[i] if excl[i] else "white")
        if (ok & no_var).any():
            ax.plot(np.zeros(int((ok & no_var).sum())), y[ok & no_var], "x", color="0.6", ms=3)
        ax.set_yticks(y, [str(v) for v in levels])
        ax.tick_params(labelsize=6.5)
        if g is not None:
            rate = sub["observed_rate"] if "observed_rate" in sub.columns else None
            note = ""
            if rate is not None and len(sub) and no_var[ok].all():
                note = " (never refused)" if (rate <= 0).all() else " (no variation)"
            ax.set_title(f"{g}{note}", fontsize=8)
        _style(ax)
    for k in range(len(groups), nrow * ncol):
        axes.flat[k].set_visible(False)
    label = ("Δ refusal probability (pp)" if scale == "probability" else "effect (log-odds)")
    for ax in axes[-1]:
        ax.set_xlabel(f"{label}, {interval}", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(term)
    what = (f"change in refusal probability vs. an average {term}" if scale == "probability"
            else f"log-odds vs. an average {term}")
    extra = "; grey ×: observed rate 0% or 100%, not assessed" if flat.any() else ""
    fig.suptitle(title or f"{term.capitalize()} effect within each {within}: {what} "
                 f"(filled: HDI excludes 0{extra})", x=0.01, ha="left", wrap=True, fontsize=9)
    return fig


def _axes(ax, width: float = 4.2, height: float = 4.2):
    if ax is not None:
        return ax
    fig = _figure(width, height)
    return fig.subplots()


def hierarchical_ppc(data: pd.DataFrame, *, ax=None, title: str | None = None) -> Figure:
    """Posterior predictive check: observed vs predicted refusal rate per cell.

    One point per cell at (observed rate, posterior predicted rate) with the predictive
    interval as a vertical whisker; cells whose observed rate falls outside their interval
    are drawn in vermillion; the dashed line is y = x.

    Parameters
    ----------
    data : DataFrame
        From ``HierarchicalResult.ppc()``: columns ``observed``, ``predicted``, ``ci_low``,
        ``ci_high`` and ``inside``; ``attrs["conf"]`` is the interval level.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new figure.
    title : str, optional
        Axes title; default says how many cells lie inside their interval.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> t = pd.DataFrame({"observed": [0.1, 0.4], "predicted": [0.12, 0.35],
    ...                   "ci_low": [0.08, 0.3], "ci_high": [0.16, 0.38], "inside": [True, False]})
    >>> fig = rs.plot.hierarchical_ppc(t)
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a ppc DataFrame, got {type(data).__name__}")
    _need(data, ["observed", "predicted", "ci_low", "ci_high", "inside"], "hierarchical_ppc")
    ax = _axes(ax)
    t = data
    yerr = np.vstack([t["predicted"] - t["ci_low"], t["ci_high"] - t["predicted"]]).clip(0)
    colors = np.where(t["inside"].to_numpy(bool), _CAT[0], _CAT[4])
    ax.errorbar(t["observed"], t["predicted"], yerr=yerr, fmt="none", ecolor="0.7", lw=0.8)
    ax.scatter(t["observed"], t["predicted"], s=10, c=colors, zorder=3)
    lim = [0, max(t["observed"].max(), t["ci_high"].max()) * 1.05 or 1]
    ax.plot(lim, lim, "k--", lw=0.8)
    conf = t.attrs.get("conf")
    ax.set_xlabel("observed refusal rate")
    ax.set_ylabel("posterior predicted rate" + (f" ({100 * conf:g}% interval)" if conf else ""))
    ax.set_title(title or f"Posterior predictive check: {t['inside'].mean():.0%} of {len(t)} cells inside")
    _style(ax)
    return ax.figure


def hierarchical_shrinkage(data: pd.DataFrame, *, ax=None, title: str | None = None) -> Figure:
    """Raw cell rates against partially pooled estimates (logit scale).

    Points off the dashed identity line have been pulled toward their group's mean by the
    hierarchical model; marker area grows with the cell's rows.

    Parameters
    ----------
    data : DataFrame
        From ``HierarchicalResult.shrinkage(term, within)``: the cell columns, ``n``,
        ``raw_logit`` and ``pooled_logit``.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new figure.
    title : str, optional
        Axes title; default names the cells.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> t = pd.DataFrame({"persona": ["a", "b"], "n": [10, 400], "raw_logit": [-3.0, -1.0],
    ...                   "pooled_logit": [-2.0, -1.05]})
    >>> fig = rs.plot.hierarchical_shrinkage(t)
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a shrinkage DataFrame, got {type(data).__name__}")
    _need(data, ["n", "raw_logit", "pooled_logit"], "hierarchical_shrinkage")
    ax = _axes(ax)
    raw, pooled = data["raw_logit"].to_numpy(float), data["pooled_logit"].to_numpy(float)
    ax.scatter(raw, pooled, s=np.clip(np.sqrt(data["n"].to_numpy(float)), 4, 60), alpha=0.6,
               color=_CAT[0])
    lo, hi = min(raw.min(), pooled.min()), max(raw.max(), pooled.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("raw cell rate (empirical logit)")
    ax.set_ylabel("partially pooled estimate (logit)")
    keys = [c for c in data.columns if c not in ("n", "raw_logit", "pooled_logit")]
    ax.set_title(title or f"Shrinkage: {' x '.join(map(str, keys))} cells")
    _style(ax)
    return ax.figure
