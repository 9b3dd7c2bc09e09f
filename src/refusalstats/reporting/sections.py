"""The analyses of the report: each turns a response table into one :class:`Section`.

A section holds its figures (rendered to PNG/SVG bytes), its tables (the raw numbers for
CSV and a formatted copy for the page), a one-line "how to read", findings written from
the numbers, and — when the data cannot support the analysis, or the module it needs is
not available — the reason it was skipped.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import plot as F
from .. import vocabulary as V
from .export import format_p

#: The paper's reference levels (P1 Table 7), used when those levels exist in the table.
PAPER_REFERENCE: dict[str, str] = {"persona": "Atheist", "prompt": "p1", "task": "nli",
                                   "model": "Llama2-13B"}
#: Factors of P1's regression and W2 analysis, in the paper's order.
FACTORS: tuple[str, ...] = ("persona", "prompt", "task", "model")
#: The hierarchical model needs at least this many rows ...
HIER_MIN_ROWS = 1000
#: ... at least this many refusals ...
HIER_MIN_REFUSALS = 20
#: ... and at least this many levels of each grouping variable (model, persona).
HIER_MIN_LEVELS = 3
#: PNG resolution of saved and embedded figures.
DPI = 130

#: Errors that mean "the data cannot support this analysis" (reported as a skip); any
#: other exception is a bug and propagates.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, np.linalg.LinAlgError)


#: Section titles, in page order.
TITLES: dict[str, str] = {
    "rates": "Refusal rate by model and task (P1's Table 1)",
    "factors": "Refusal rate by each design factor",
    "persona_free": "With and without a persona (P1's Fig. 1)",
    "personas": "Refusal rate per persona (P1's Figs. 2–3, 7–9)",
    "response_type": "Refusal rate by response type (P1's Figs. 4, 10, 11)",
    "w2": "How much each factor explains refusal: W2 sensitivity (P1's Fig. 5)",
    "logit": "Logistic regression: which factors raise refusal (P1's Fig. 6, Table 7)",
    "hierarchical": "Hierarchical model: each persona within each model",
    "answers": "The models' answers",
    "detector": "The refusal detector against human labels",
}


@dataclass
class FigureItem:
    """A rendered figure: ``png`` and ``svg`` bytes, its caption and alt text."""

    key: str
    caption: str
    png: bytes
    svg: bytes


@dataclass
class TableItem:
    """A table: ``data`` (raw numbers, written to CSV) and ``display`` (formatted for HTML)."""

    key: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    collapsed: bool = False


@dataclass
class Section:
    """One analysis of the report."""

    key: str
    title: str
    how_to_read: str = ""
    figures: list[FigureItem] = field(default_factory=list)
    tables: list[TableItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    skipped: str | None = None
    text: str = ""  # preformatted text (e.g. an R-style summary)
    seconds: float = 0.0  # time the section took


@dataclass
class Context:
    """What every section builder sees.

    In memory, ``data`` holds the rows. For a Parquet source (``report(path)``) ``data``
    and ``persona_data`` are None, ``source`` is the path and ``design`` the counts per
    combination of the design columns (``n``, ``refusals``; from one
    :func:`~refusalstats.collapse`): levels and totals come from it, every rate table from
    ``refusal_rates(source, by=...)`` (one streamed pass each), so no section holds rows.
    """

    data: pd.DataFrame | None          # all rows (None for a streamed source)
    persona_data: pd.DataFrame | None  # rows with a persona (persona-free rows removed)
    formula: str | None
    inputs: list[str] | None
    hierarchical: bool | str
    seed: int
    results: dict[str, Any]
    options: dict[str, dict[str, Any]]
    progress: bool
    cluster: str | None = None  # resolved once by report(): every interval and test uses it
    source: Any = None  # a Parquet file, folder of shards, glob or list: streamed
    design: pd.DataFrame | None = None  # streamed: counts per design-column combination


# ----------------------------------------------------------------------------------------
# reading the table: rows in memory, or counts streamed from a Parquet source
# ----------------------------------------------------------------------------------------
def streamed(ctx: Context) -> bool:
    """True when the report reads a Parquet source through counts (no rows in memory)."""
    return ctx.source is not None


_persona_mask = V.persona_mask


def has_persona_rows(ctx: Context) -> bool:
    """Some rows name a persona (the rate sections then use those rows only)."""
    if streamed(ctx):
        return bool(ctx.design["n"].to_numpy()[_persona_mask(ctx.design)].sum() > 0)
    return len(ctx.persona_data) > 0


def view(ctx: Context, persona_only: bool) -> pd.DataFrame:
    """The rows (in memory) or the design counts (streamed), all or persona rows only."""
    t = ctx.design if streamed(ctx) else ctx.data
    if not persona_only:
        return t
    if streamed(ctx):
        return t[_persona_mask(t)]
    return ctx.persona_data


def n_rows(ctx: Context, persona_only: bool = False) -> int:
    t = view(ctx, persona_only)
    return int(t["n"].sum()) if streamed(ctx) else len(t)


def n_refusals(ctx: Context, persona_only: bool = False) -> int:
    t = view(ctx, persona_only)
    return int(t["refusals"].sum()) if streamed(ctx) else int(t["refusal"].sum())


def levels_of(ctx: Context, col: str, persona_only: bool = False) -> list:
    """Observed levels of ``col`` (categorical order, or first appearance)."""
    t = view(ctx, persona_only)
    if streamed(ctx) and col in t.columns:
        t = t[t["n"] > 0]
    return _levels(t, col)


def multi(ctx: Context, col: str, persona_only: bool = False) -> bool:
    return len(levels_of(ctx, col, persona_only)) >= 2


def columns_of(ctx: Context) -> list[str]:
    """The source's columns (streamed: from the Parquet schema)."""
    if streamed(ctx):
        from ..sources import scan_columns

        return scan_columns(ctx.source)
    return list(map(str, ctx.data.columns))


def _stream_filter(ctx: Context, by: list[str]) -> list[str]:
    """Key columns to add to ``by`` so that the persona rows are whole groups of a streamed
    rate table (a group's interval uses its own rows only, so the persona lines of the
    finer table are the persona-only table). Raises ValueError when that is impossible."""
    t = ctx.design
    drop = ~_persona_mask(t)
    if not drop.any():
        return []
    extra = []
    free = (t["setting"].astype(str) == V.PERSONA_FREE).to_numpy() if "setting" in t.columns \
        else np.zeros(len(t), bool)
    none = (t["persona"].astype(str) == V.NO_PERSONA).to_numpy() if "persona" in t.columns \
        else np.zeros(len(t), bool)
    if free.any() and "setting" not in by:
        kept = t.loc[~drop, "setting"].astype(str).unique()
        if len(kept) > 1:
            raise ValueError(
                "a streamed source cannot restrict this table to the rows with a persona: "
                f"'setting' has several persona levels {sorted(kept)}; pass a DataFrame")
        extra.append("setting")
    if (none & ~free).any() and "persona" not in by:
        raise ValueError(
            "a streamed source cannot restrict this table to the rows with a persona: persona "
            "'none' occurs outside setting 'persona-free'; write the persona rows to their own "
            "Parquet files or pass a DataFrame")
    return extra


def rates_of(ctx: Context, by: list[str], persona_only: bool = False) -> pd.DataFrame:
    """Refusal rate per ``by`` group (cluster-robust per ``ctx.cluster``): from the rows, or
    streamed with ``refusal_rates(source, by=...)`` (one pass; the persona rows selected by
    grouping on ``setting`` too and keeping its persona lines)."""
    by = list(by)
    if not streamed(ctx):
        d = view(ctx, persona_only)
        if not by:
            return _refusal_rates(d.assign(_all="all"), ["_all"], ctx.cluster).drop(columns="_all")
        return _refusal_rates(d, by, ctx.cluster)
    from ..rates import refusal_rates

    extra = _stream_filter(ctx, by) if persona_only else []
    tab = refusal_rates(ctx.source, by=[*by, *extra] or None, cluster=ctx.cluster)
    if persona_only:
        tab = tab[_persona_mask(tab)]
        for c in ("persona", "setting"):
            if c in by and isinstance(tab[c].dtype, pd.CategoricalDtype):
                tab = tab.assign(**{c: tab[c].cat.remove_unused_categories()})
    return tab.drop(columns=extra).reset_index(drop=True)


def _need_rows(ctx: Context, what: str) -> str:
    """Skip reason for an analysis that needs rows a streamed source does not provide."""
    return (f"{what} needs the rows, and this report streams the Parquet source "
            f"'{ctx.source}' into counts (memory independent of rows); pass a DataFrame "
            "(e.g. rs.read_responses(path)) to include it.")


# ----------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------
def pct(x: float) -> str:
    """A proportion as a percentage string with Table 1's precision ("—" when missing)."""
    out = F._pct(x)
    return "—" if out == "n/a" else out + "%"


def pct_ci(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"{F._pct(lo)}–{F._pct(hi)}%"


def fmt_p(p: float) -> str:
    """A p-value on the page: :func:`refusalstats.reporting.export.format_p` (``< 0.001``,
    else three decimals), with a dash where there is none."""
    if p is None or not np.isfinite(p):
        return "—"
    return format_p(float(p))


def fmt_num(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def fmt_sig(x: float, digits: int = 3) -> str:
    """A positive number (an odds ratio) to ``digits`` significant digits, never ``0.000``.

    >>> fmt_sig(0.000123), fmt_sig(2.5), fmt_sig(float("inf"))
    ('0.000123', '2.5', '—')
    """
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}g}"


def rate_display(tab: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``refusal_rates`` output formatted for the page: n, refusals, rate (%), 95% CI."""
    out = tab[by].astype(str).copy()
    out["n"] = [f"{int(v):,}" for v in tab["n"]]
    out["refusals"] = [f"{int(v):,}" for v in tab["refusals"]]
    out["rate"] = [pct(v) for v in tab["rate"]]
    out["95% CI"] = [pct_ci(a, b) for a, b in zip(tab["ci_low"], tab["ci_high"])]
    return out


def nested_progress(ctx: Context) -> bool:
    """Progress bars of an analysis inside the report's own bar: only on a terminal. In a
    log or a pipe, tqdm's cursor-up codes for a nested bar would show as stray '[A'."""
    import sys

    return bool(ctx.progress) and sys.stderr.isatty()


def render(fig, key: str, caption: str) -> FigureItem:
    """Render a matplotlib Figure to PNG and SVG bytes (the Figure is then released)."""
    png, svg = io.BytesIO(), io.BytesIO()
    with warnings.catch_warnings():
        # a small panel the constrained layout cannot fit is drawn anyway; the notice
        # ("constrained_layout not applied ...") says nothing a reader can act on
        warnings.filterwarnings("ignore", message=".*constrained_layout not applied.*")
        fig.savefig(png, format="png", dpi=DPI)
    fig.set_layout_engine("none")  # keep the layout just computed: no second layout pass
    fig.savefig(svg, format="svg")
    fig.clear()
    return FigureItem(key, caption, png.getvalue(), svg.getvalue())


def _levels(df: pd.DataFrame, col: str) -> list:
    return F._levels(df[col]) if col in df.columns else []


def _multi(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].nunique(dropna=True) >= 2


def _refusal_rates(df: pd.DataFrame, by: list[str], cluster: str | None) -> pd.DataFrame:
    return F._rate_table(df, by, cluster=cluster)


# ----------------------------------------------------------------------------------------
# 1. rates by model x task (Table 1)
# ----------------------------------------------------------------------------------------
def rates_section(ctx: Context) -> Section:
    s = Section("rates", TITLES["rates"],
                "Each cell is the share of answers that were refusals, with its 95% Wilson "
                "interval below (cluster-robust when answers are clustered by item: see the "
                "header); colour follows the square root of the rate so small rates "
                "stay visible.")
    po = has_persona_rows(ctx)
    n_po, n_all = n_rows(ctx, po), n_rows(ctx)
    if n_po < n_all:
        s.notes.append(f"Rows with a persona only ({n_po:,} of {n_all:,}); "
                       "persona-free rows are compared in the next section.")
    tab = rates_of(ctx, ["model", "task"], po)
    s.figures.append(render(F.rates(tab), "rates_model_task",
                            "Refusal rate (%) by model and task with 95% CIs."))
    s.tables.append(TableItem("rates_model_task", "Refusal rate by model and task.", tab,
                              rate_display(tab, ["model", "task"]), collapsed=len(tab) > 24))
    overall = rates_of(ctx, [], po).iloc[0]
    clustered = f", clustered by {ctx.cluster}" if ctx.cluster else ""
    base = (f"the {int(overall['n']):,} answers to prompts that name a persona (persona-free "
            "answers are compared in their own section)" if n_po < n_all
            else f"{int(overall['n']):,} answers")
    s.findings.append(
        f"Overall refusal rate {pct(overall['rate'])} (95% CI "
        f"{pct_ci(overall['ci_low'], overall['ci_high'])}{clustered}) over {base}."
    )
    safe = _safe_split(ctx, po)
    if safe:
        s.findings.append(safe)
    s.findings.append(_extremes(tab, ["model", "task"], "model × task rate"
                                + (" (persona rows)" if n_po < n_all else "")))
    never = tab.groupby("model", observed=True)["refusals"].sum()
    never = [str(m) for m, v in never.items() if v == 0]
    if never:
        one = len(never) == 1
        where = " in the rows with a persona" if n_po < n_all else ""
        text = (f"{len(never)} model{'' if one else 's'} never refused{where}: {', '.join(never)}"
                if len(never) < len(tab["model"].unique()) else
                ("The model never refused" if one else
                 f"None of the {len(never)} models ever refused") + f"{where}: {', '.join(never)}")
        if multi(ctx, "model", po) and len(never) < len(tab["model"].unique()):
            text += (f" — {'its' if one else 'their'} regression coefficient"
                     f"{'' if one else 's'} {'is' if one else 'are'} not identifiable by "
                     "maximum likelihood (separation); a penalised fit (Firth, the report's "
                     "default) gives a finite estimate")
        s.findings.append(text + ".")
    return s


def _safe_split(ctx: Context, po: bool) -> str | None:
    """The rate on safe prompts (false refusal) and on unsafe ones (refusal expected), when a
    ``safe`` column has both (XSTest): the overall rate mixes the two."""
    if "safe" not in columns_of(ctx) or not multi(ctx, "safe", po):
        return None
    tab = rates_of(ctx, ["safe"], po)
    key = tab["safe"].astype(str).str.lower()
    is_safe, unsafe = tab[key.isin(["true", "1", "safe"])], tab[key.isin(["false", "0", "unsafe"])]
    if len(is_safe) != 1 or len(unsafe) != 1:
        return None
    a, b = is_safe.iloc[0], unsafe.iloc[0]
    return (f"The overall rate mixes safe and unsafe prompts: on the {int(a['n']):,} safe prompts "
            f"(where a refusal is a false refusal) the rate is {pct(a['rate'])} (95% CI "
            f"{pct_ci(a['ci_low'], a['ci_high'])}); on the {int(b['n']):,} unsafe ones (where "
            f"refusing is expected) {pct(b['rate'])} ({pct_ci(b['ci_low'], b['ci_high'])}).")


def _label(row: pd.Series, by: list[str]) -> str:
    return " on ".join(str(row[c]) for c in by)


def _extremes(tab: pd.DataFrame, by: list[str], what: str) -> str:
    """"Highest ...: A x%; lowest ...: B y%" with ties named (or "all equal")."""
    rates = tab["rate"].to_numpy(float)
    ok = np.isfinite(rates)
    if not ok.any():
        return f"No {what} could be computed."
    hi, lo = np.nanmax(rates), np.nanmin(rates)
    if hi == lo:
        return f"Every {what} is the same: {pct(hi)} in all {int(ok.sum())}."

    def name(v: float) -> str:
        rows = tab[rates == v]
        names = [_label(r, by) for _, r in rows.iterrows()]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        ci = (f" (95% CI {pct_ci(rows['ci_low'].iloc[0], rows['ci_high'].iloc[0])})"
              if len(rows) == 1 else " each")
        return f"{shown}, {pct(v)}{ci}"

    return f"Highest {what}: {name(hi)}; lowest: {name(lo)}."


#: Schema columns that describe the design (what was varied), in display order.
DESIGN_COLUMNS: tuple[str, ...] = ("model", "task", "persona", "persona_group", "prompt",
                                   "response_type", "setting", "safe")
#: A non-schema categorical column with at most this many levels is treated as a design column.
MAX_DESIGN_LEVELS = 60


def design_columns(d: pd.DataFrame) -> list[str]:
    """The table's design columns with >= 2 levels: schema ones, then other categoricals."""
    cols = [c for c in DESIGN_COLUMNS if _multi(d, c)]
    skip = set(DESIGN_COLUMNS) | {"refusal", "item_id", "response", "prompt_text", "system_text",
                                  "gold_label", "predicted_label", "label", "label_refusal"}
    known = [c for c in DESIGN_COLUMNS if c in d.columns]
    for c in d.columns:
        if c in skip or not isinstance(d[c].dtype, pd.CategoricalDtype):
            continue
        if 2 <= d[c].nunique(dropna=True) <= MAX_DESIGN_LEVELS and not any(
                _relabels(d, c, k) for k in known + cols):
            cols.append(c)
    return cols


def _relabels(d: pd.DataFrame, a: str, b: str) -> bool:
    """Column ``a`` is a one-to-one renaming of column ``b`` (e.g. an importer's
    ``persona_original`` next to ``persona``): the same table twice, so shown once."""
    if a == b or b not in d.columns:
        return False
    n_a, n_b = d[a].nunique(dropna=True), d[b].nunique(dropna=True)
    if n_a != n_b:
        return False
    pairs = d[[a, b]].drop_duplicates().dropna()
    return len(pairs) == n_a


def factors_section(ctx: Context) -> Section:
    s = Section("factors", TITLES["factors"],
                "Refusal rate per level of each column that describes the design, levels "
                "sorted by rate, with 95% CIs (cluster-robust when answers are clustered).")
    # setting is compared within task x model in the persona-free section: pooled over all
    # rows it would mix tasks (persona-free prompts may exist for some tasks only)
    cols = [c for c in design_columns(view(ctx, False)) if c not in ("persona", "model", "setting")]
    if not cols:
        s.skipped = "no design column other than model, persona and setting has two or more levels."
        return s
    po = has_persona_rows(ctx) and n_rows(ctx, True) < n_rows(ctx)
    for col in cols:
        # one base per sentence: the persona rows (as the overall rate), except for the
        # columns that tell persona and persona-free answers apart
        po_col = po and col != "setting"
        tab = rates_of(ctx, [col], po_col).sort_values("rate", kind="stable")
        tab = tab.reset_index(drop=True)
        rows = " (rows with a persona)" if po_col else ""
        s.figures.append(render(F.rates_by(tab, col), f"rates_by_{col}",
                                f"Refusal rate by {col}{rows}, sorted, with 95% CIs."))
        s.tables.append(TableItem(f"rates_by_{col}", f"Refusal rate by {col}{rows}.", tab,
                                  rate_display(tab, [col]), collapsed=len(tab) > 24))
        if col != "safe":  # safe vs unsafe is stated, with its meaning, in the rates section
            s.findings.append(_extremes(tab, [col], f"{col} rate" + (
                " (persona rows)" if po_col else "")))
    return s


# ----------------------------------------------------------------------------------------
# 2. persona vs persona-free (Fig. 1)
# ----------------------------------------------------------------------------------------
def persona_free_section(ctx: Context) -> Section:
    s = Section("persona_free", TITLES["persona_free"],
                "Orange circles: refusal rate when the prompt names a persona; blue squares: "
                "the same prompts without one; whiskers are 95% CIs. The table gives the "
                "difference (persona − persona-free) with Newcombe's 95% interval.")
    d = view(ctx, False)
    if "setting" not in d.columns:
        s.skipped = ("the table has no 'setting' column, so persona and persona-free prompts "
                     "cannot be told apart (add setting = 'persona' / 'persona-free').")
        return s
    settings = set(map(str, levels_of(ctx, "setting")))
    missing = [v for v in V.SETTINGS if v not in settings]
    if missing:
        s.skipped = (f"no {' or '.join(missing)} rows: column 'setting' holds only "
                     f"{sorted(settings)}; the comparison needs both 'persona' and "
                     "'persona-free' answers.")
        return s
    by = ["task", "model"] if "task" in d.columns else ["model"]
    if not streamed(ctx) and "task" in by:
        # P1 asked the persona-free prompts of one task only: compare the tasks that have both
        has = d.groupby("task", observed=True)["setting"].agg(
            lambda v: set(V.SETTINGS) <= set(map(str, pd.unique(v))))
        if not has.all():
            if not has.any():
                s.skipped = ("no task has both persona and persona-free answers; the "
                             "comparison needs both for the same task.")
                return s
            d = d[d["task"].isin(list(has.index[has.to_numpy()]))]
            if isinstance(d["task"].dtype, pd.CategoricalDtype):
                d = d.assign(task=d["task"].cat.remove_unused_categories())
            s.notes.append("Only tasks with persona-free prompts are compared; left out: "
                           + ", ".join(map(str, has.index[~has.to_numpy()])) + ".")
    eff = _persona_effect(ctx.source if streamed(ctx) else d, by, ctx.cluster)
    # the figure from its rate table (what persona_vs_free computes from rows)
    fig_tab = rates_of(ctx, [*by, "setting"]) if streamed(ctx) else d
    s.figures.append(render(F.persona_vs_free(fig_tab, cluster=ctx.cluster), "persona_vs_free",
                            "Refusal rate with and without a persona, per model and task."))
    disp = eff[by].astype(str).copy()
    disp["persona"] = [pct(v) for v in eff["rate_persona"]]
    disp["persona-free"] = [pct(v) for v in eff["rate_free"]]
    disp["difference (pp)"] = [fmt_num(100 * v, 2) for v in eff["diff"]]
    disp["95% CI (pp)"] = [f"{fmt_num(100 * a, 2)} to {fmt_num(100 * b, 2)}"
                           for a, b in zip(eff["diff_low"], eff["diff_high"])]
    s.tables.append(TableItem("persona_vs_free", "Persona minus persona-free refusal rate, "
                              "percentage points, Newcombe 95% CI.", eff, disp,
                              collapsed=len(eff) > 24))
    up = eff[eff["diff_low"] > 0]
    down = eff[eff["diff_high"] < 0]
    s.findings.append(
        f"A persona raises the refusal rate in {len(up)} of {len(eff)} "
        f"{' × '.join(by)} cells and lowers it in {len(down)} (95% CI excludes 0)."
    )
    if len(eff):
        big = eff.loc[eff["diff"].abs().idxmax()]
        where = ", ".join(f"{c} {big[c]}" for c in by)
        s.findings.append(
            f"Largest persona effect: {where}: {pct(big['rate_persona'])} with vs. "
            f"{pct(big['rate_free'])} without a persona ({fmt_num(100 * big['diff'], 1)} pp, "
            f"95% CI {fmt_num(100 * big['diff_low'], 1)} to {fmt_num(100 * big['diff_high'], 1)})."
        )
    return s


def _persona_effect(d, by: list[str], cluster: str | None) -> pd.DataFrame:
    """Persona minus persona-free rate per group with Newcombe CIs (``rates.persona_effect``)."""
    from ..rates import persona_effect

    eff = persona_effect(d, by=by, cluster=cluster)
    return eff.rename(columns={"rate_persona_free": "rate_free", "difference": "diff",
                               "ci_low": "diff_low", "ci_high": "diff_high"})


# ----------------------------------------------------------------------------------------
# 3. per persona (Figs. 2-3, 7-9)
# ----------------------------------------------------------------------------------------
def personas_section(ctx: Context) -> Section:
    s = Section("personas", TITLES["personas"],
                "Points are each persona's refusal rate with its 95% CI, coloured by persona "
                "group; non-overlapping intervals indicate a clear difference. The heatmaps "
                "break the rate down by model, one per task.")
    d = view(ctx, True)
    if not has_persona_rows(ctx):
        s.skipped = ("no row names a persona (every prompt is persona-free, as in XSTest-style "
                     "tables); there are no personas to compare.")
        return s
    if not multi(ctx, "persona", True):
        s.skipped = ("fewer than two personas among the rows with a persona "
                     f"(found {levels_of(ctx, 'persona', True)}); nothing to compare.")
        return s
    by = (["task"] if "task" in d.columns else []) + ["persona"]
    tab = rates_of(ctx, by, True)
    if streamed(ctx):
        # the figure from rate tables: persona_group is a key that does not split personas
        grp = ["persona_group"] if "persona_group" in d.columns else []
        fig_data = rates_of(ctx, by + grp, True)
        s.notes.append("Streamed source: the per-persona figure is drawn from rate tables, "
                       "without the persona-free baseline line (the 'With and without a "
                       "persona' section compares them).")
    else:
        fig_data = ctx.data if "setting" in ctx.data.columns else d
    s.figures.append(render(F.personas(fig_data, cluster=ctx.cluster),
                            "personas", "Refusal rate per persona and task, with 95% CIs."))
    s.tables.append(TableItem("rates_persona", "Refusal rate per persona (and task).", tab,
                              rate_display(tab, by), collapsed=True))
    if multi(ctx, "model", True):
        tasks = levels_of(ctx, "task", True) or [None]
        mt = rates_of(ctx, ["model"] + by, True)
        for t in tasks:
            sub = d if t is None else d[d["task"].astype(str) == str(t)]
            if (sub["refusals"] if streamed(ctx) else sub["refusal"]).sum() == 0:
                s.notes.append(f"No refusals at all in task {t}: its model × persona heatmap "
                               "is left out.")
                continue
            heat = mt if streamed(ctx) else sub  # a rate table with task, or the rows
            s.figures.append(render(F.persona_heatmap(heat, cluster=ctx.cluster, task=None if t is None else str(t),
                                                      title=None),
                                    f"persona_model_{t or 'all'}",
                                    f"Refusal rate by model and persona{'' if t is None else f', task {t}'}."))
        s.tables.append(TableItem("rates_model_persona", "Refusal rate per model, task and "
                                  "persona.", mt, rate_display(mt, ["model"] + by),
                                  collapsed=True))
    pooled = rates_of(ctx, ["persona"], True).sort_values("rate")
    lo, hi = pooled.iloc[0], pooled.iloc[-1]
    text = _extremes(pooled, ["persona"], "persona refusal rate")
    if lo["rate"] < hi["rate"]:
        overlap = hi["ci_low"] <= lo["ci_high"]
        text = text[:-1] + ("; the extreme intervals overlap." if overlap
                            else "; the extreme intervals do not overlap.")
    s.findings.append(text)
    return s


# ----------------------------------------------------------------------------------------
# 4. response type (Figs. 4, 10, 11)
# ----------------------------------------------------------------------------------------
def response_type_section(ctx: Context) -> Section:
    s = Section("response_type", TITLES["response_type"],
                "Unforced prompts let the model answer freely, semi-forced ask for the label "
                "only, forced demand one of the labels; cells give the rate and its 95% CI.")
    po = has_persona_rows(ctx)
    d = view(ctx, po)
    if "response_type" not in d.columns:
        s.skipped = "the table has no 'response_type' column (unforced / semi-forced / forced)."
        return s
    if not multi(ctx, "response_type", po):
        s.skipped = (f"'response_type' has a single level ({levels_of(ctx, 'response_type', po)}); "
                     "nothing to compare.")
        return s
    by = (["task"] if "task" in d.columns else []) + ["model", "response_type"]
    tab = rates_of(ctx, by, po)
    s.figures.append(render(F.response_types(tab if streamed(ctx) else d, cluster=ctx.cluster),
                            "response_type", "Refusal rate by model and response type, per task."))
    s.tables.append(TableItem("rates_response_type", "Refusal rate by task, model and "
                              "response type.", tab, rate_display(tab, by), collapsed=True))
    pooled = rates_of(ctx, ["response_type"], po)
    s.findings.append("Refusal rate by response type: " + "; ".join(
        f"{r.response_type} {pct(r.rate)} ({pct_ci(r.ci_low, r.ci_high)})"
        for r in pooled.itertuples()) + ".")
    return s


# ----------------------------------------------------------------------------------------
# 5. W2 sensitivity (Fig. 5)
# ----------------------------------------------------------------------------------------
def _rows_subset(ctx: Context, what: str) -> str:
    """Skip reason: an analysis of the persona rows only, on a streamed source."""
    return (f"{what} is fitted on the rows with a persona only, and a streamed Parquet source "
            f"('{ctx.source}') cannot be filtered to them yet ({n_rows(ctx, True):,} of "
            f"{n_rows(ctx):,} rows have a persona); write the persona rows to their own Parquet "
            "files and report on those, or pass a DataFrame.")


def default_inputs(d: pd.DataFrame) -> list[str]:
    """P1's factors that the table (rows, or design counts) has with at least two levels."""
    return [c for c in ("model", "task", "persona", "prompt") if _multi(d, c)]


def w2_section(ctx: Context) -> Section:
    s = Section("w2", TITLES["w2"],
                "ι = E[W2²(P_Y, P_Y|X)] / (2 Var(Y)): how far, on average, knowing the "
                "input moves the distribution of refusal away from its overall distribution, "
                "as a share of its largest possible value (0: knowing the input changes "
                "nothing; 1: it determines refusal). Each input is scored on its own, so the "
                "indices of several inputs are not shares of one total and do not add up to "
                "1. Whiskers are bootstrap 95% CIs; the grey box is what an irrelevant input "
                "with the same number of levels would score (permutation null, up to its 95% "
                "quantile).")
    po = has_persona_rows(ctx)
    d = view(ctx, po)
    res = ctx.results.get("w2")
    if res is None:
        try:
            from ..sensitivity import w2_sensitivity
        except ImportError as exc:
            s.skipped = f"the W2 module (refusalstats.sensitivity) is not available: {exc}."
            return s
        inputs = list(ctx.inputs) if ctx.inputs else default_inputs(d)
        if not inputs:
            s.skipped = "no input column with at least two levels among model, task, persona, prompt."
            return s
        k, n = n_refusals(ctx, po), n_rows(ctx, po)
        if k in (0, n):
            s.skipped = f"refusal is constant (all {int(k > 0)}): no variability to explain."
            return s
        opts = {"n_boot": 1000, "n_perm": 200} | ctx.options.get("w2", {})
        opts.setdefault("cluster", ctx.cluster)
        if streamed(ctx) and n < n_rows(ctx):
            # the persona rows of a stream: counted with the persona-free lines left out
            res = w2_sensitivity(ctx.source, inputs=inputs, seed=ctx.seed,
                                 progress=nested_progress(ctx), **opts,
                                 exclude={"setting": [V.PERSONA_FREE],
                                          "persona": [V.NO_PERSONA]})
        else:
            res = w2_sensitivity(ctx.source if streamed(ctx) else d, inputs=inputs,
                                 seed=ctx.seed, progress=nested_progress(ctx), **opts)
    tab = res.table
    s.figures.append(render(F.w2(tab), "w2", "W2 sensitivity index per input with 95% "
                            "bootstrap CIs and the permutation null."))
    disp = pd.DataFrame({
        "input": tab["input"].astype(str),
        "levels": tab["n_partitions"].astype(int).astype(str),
        "ι": [fmt_num(v) for v in tab["iota"]],
        "95% CI": [f"{fmt_num(a)}–{fmt_num(b)}" for a, b in zip(tab["ci_low"], tab["ci_high"])],
        "null mean": [fmt_num(v, 4) for v in tab["null_mean"]],
        "null 95%": [fmt_num(v, 4) for v in tab["null_q95"]],
        "ι − null mean": [fmt_num(v) for v in tab["iota_corrected"]],
    })
    if "p_value" in tab.columns:
        disp["permutation p"] = [fmt_p(v) for v in tab["p_value"]]
    s.tables.append(TableItem("w2_indices", "W2 sensitivity indices.", tab, disp))
    srt = tab.sort_values("iota", ascending=False)
    if "distinguishable" in srt.columns:
        real = srt["distinguishable"].fillna(False).to_numpy(bool)
    else:
        real = (srt["iota"] > srt["null_q95"]).to_numpy(bool)
    weak, strong = srt[~real], srt[real]
    # lead with the null comparison: an input within its null explains nothing we can tell
    if len(weak):
        s.findings.append("Not distinguishable from an irrelevant input with the same number "
                          "of levels (ι within the permutation null's 95% quantile): "
                          + ", ".join(map(str, weak["input"])) + ".")
    if len(strong):
        first = strong.iloc[0]
        s.findings.append(
            f"Among inputs that beat the null, {first['input']} explains the most variation "
            f"(ι {fmt_num(first['iota'])}, 95% CI {fmt_num(first['ci_low'])}–"
            f"{fmt_num(first['ci_high'])}); order: "
            + " > ".join(f"{r.input} ({fmt_num(r.iota)})" for r in strong.itertuples())
            + (" (each input is scored on its own: the indices are not shares of one total "
               "and need not add up to 1)." if len(strong) > 1 else ".")
        )
    else:
        s.findings.append("No input's ι is distinguishable from its permutation null.")
    outside = srt[(srt["iota"] < srt["ci_low"]) | (srt["iota"] > srt["ci_high"])]
    for r in outside.itertuples():
        s.notes.append(f"The estimate for {r.input} lies outside its own bootstrap interval "
                       "(the estimator is biased upward for inputs with many small partitions; "
                       "read ι − null mean).")
    for name in getattr(res, "few_items", []):
        s.notes.append(f"The interval for {name} may be too narrow: it rests on fewer than 10 "
                       "effective items (in its smallest level, for an item-level input).")
    s.notes.append(f"{res.n:,} rows; {res.conf:.0%} {res.ci_method} bootstrap intervals; "
                   f"output treated as {res.output_kind}.")
    return s


# ----------------------------------------------------------------------------------------
# 6. logistic regression (Fig. 6, Table 7)
# ----------------------------------------------------------------------------------------
def default_formula(d: pd.DataFrame) -> tuple[str, list[str]]:
    """``refusal ~ persona + prompt + task + model`` over the factors with >= 2 levels."""
    terms = [c for c in FACTORS if _multi(d, c)]
    left_out = [c for c in FACTORS if c in d.columns and not _multi(d, c)]
    return ("refusal ~ " + " + ".join(terms) if terms else ""), left_out


def _reference(d: pd.DataFrame, formula: str) -> dict[str, str]:
    ref = {}
    for f, lvl in PAPER_REFERENCE.items():
        if f in formula and f in d.columns and lvl in set(d[f].astype(str)):
            ref[f] = lvl
    return ref


def logit_section(ctx: Context) -> Section:
    s = Section("logit", TITLES["logit"],
                "Coefficients are log-odds of refusal relative to the reference level of "
                "their factor (positive: more refusals); whiskers are 95% CIs, hollow markers "
                "are not significant at p < 0.01. The per-factor test asks whether a factor "
                "as a whole matters (a cluster-robust Wald F test when answers are clustered "
                "by item, a likelihood-ratio test otherwise).")
    po = has_persona_rows(ctx)
    d = view(ctx, po)
    fit = ctx.results.get("logit")
    if fit is None:
        try:
            from ..regression import logit
        except ImportError as exc:
            s.skipped = f"the regression module (refusalstats.regression) is not available: {exc}."
            return s
        formula = ctx.formula
        if formula is None:
            formula, left_out = default_formula(d)
            if not formula:
                s.skipped = ("no predictor with at least two levels among "
                             f"{', '.join(FACTORS)}.")
                return s
            if left_out:
                s.notes.append("Left out of the default formula (a single level): "
                               + ", ".join(left_out) + ".")
        k, n = n_refusals(ctx, po), n_rows(ctx, po)
        if k in (0, n):
            s.skipped = (f"refusal is constant (all {int(k > 0)}): a regression has nothing to "
                         "explain.")
            return s
        opts = {"penalty": "firth"} | ctx.options.get("logit", {})
        opts.setdefault("cluster", ctx.cluster)
        if "reference" not in opts:
            opts["reference"] = _reference(d, formula)
        data = ctx.source if streamed(ctx) else d
        if streamed(ctx) and n < n_rows(ctx):
            # the persona rows of a stream: fit their counts (the binomial fit from counts
            # equals the fit from rows; per item x pattern when clustered)
            formula, data = _persona_counts(ctx, formula, opts.get("cluster"))
            opts["trials"] = "n"
            s.notes.append("Streamed source with persona-free rows: the regression is fitted on "
                           f"the persona rows' counts per covariate pattern"
                           f"{' and ' + str(opts['cluster']) if opts.get('cluster') else ''} "
                           f"({len(data):,} lines).")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = logit(formula, data, **opts)
        for w in caught:
            s.notes.append(f"Warning from the fit: {w.message}")
    _logit_outputs(s, fit, d)
    return s


def _persona_counts(ctx: Context, formula: str, cluster) -> tuple[str, pd.DataFrame]:
    """``refusals ~ ...`` and the counts of the persona rows of a streamed source: collapsed
    by the formula's variables, the filter columns and the cluster, the persona-free lines
    dropped and the rest summed back."""
    from ..counts import collapse
    from ..formula import parse_formula

    parsed = parse_formula(formula)
    if parsed.response != "refusal":
        raise ValueError(f"a streamed source's persona rows are fitted from counts, which needs "
                         f"the response 'refusal'; the formula has {parsed.response!r}")
    clusters = [] if cluster is None else ([cluster] if isinstance(cluster, str) else list(cluster))
    keys = [v for v in parsed.fixed_variables if v not in clusters]
    extra = [c for c in ("setting", "persona") if c in ctx.design.columns and c not in keys]
    counts = collapse(ctx.source, by=[*keys, *extra], cluster=clusters or None)
    counts = counts[_persona_mask(counts)]
    for c in [*keys, *clusters]:
        if isinstance(counts[c].dtype, pd.CategoricalDtype):
            counts = counts.assign(**{c: counts[c].cat.remove_unused_categories()})
    counts = (counts.groupby([*keys, *clusters], observed=True, sort=True)[["n", "refusals"]]
              .sum().reset_index())
    return "refusals ~" + formula.split("~", 1)[1], counts


def _logit_outputs(s: Section, fit, data: pd.DataFrame | None = None) -> None:
    coef = fit.coef_table()
    cf = F.coef_frame(coef)
    cf_sep = cf.assign(separated=coef["separated"].to_numpy(bool)) if "separated" in \
        coef.columns else cf
    s.figures.append(render(F.coefficients(cf_sep, top_k=10, by_factor=True,
                                           reference=getattr(fit, "reference", None)),
                            "coefficients",
                            "Coefficients with 95% CIs, one panel per factor, each on its own "
                            "axis (up to ten most positive and ten most negative terms per "
                            "factor" + ("; the persona panel is P1's Fig. 6)." if any(
                                F._factor_of(t) == "persona" for t in cf["term"]) else ").")))
    penalty = getattr(fit, "penalty", None)
    sep = (coef["separated"].to_numpy(bool) if "separated" in coef.columns
           else np.zeros(len(cf), dtype=bool))
    odds = np.exp(cf["estimate"].to_numpy(float))
    with np.errstate(over="ignore"):
        or_lo, or_hi = np.exp(cf["ci_low"].to_numpy(float)), np.exp(cf["ci_high"].to_numpy(float))
    or_text, est_text = [], []
    for k in range(len(cf)):
        ci = (f" ({fmt_sig(or_lo[k])} to {fmt_sig(or_hi[k])})"
              if np.isfinite(or_lo[k]) and np.isfinite(or_hi[k]) else " (no finite CI)")
        if sep[k] and not penalty:
            or_text.append("separated; not estimable")
            est_text.append("separated; not estimable")
            continue
        label = f", {penalty}-penalised (separated)" if sep[k] else ""
        or_text.append(fmt_sig(odds[k]) + ci + label)
        est_text.append(fmt_num(cf["estimate"].iloc[k], 3))
    disp = pd.DataFrame({
        "term": [F._pretty_term(t) for t in cf["term"]],
        "estimate": est_text,
        "95% CI": [f"{fmt_num(a, 2)} to {fmt_num(b, 2)}" for a, b in zip(cf["ci_low"], cf["ci_high"])],
        "odds ratio (95% CI)": or_text,
        "p": [fmt_p(v) for v in cf["p_value"]],
    })
    if "separated" in coef.columns:
        disp["separation"] = np.where(sep, "yes", "")
    method = [f"penalty: {getattr(fit, 'penalty', None) or 'none (maximum likelihood)'}"]
    for attr, label in (("cov_type", "standard errors"), ("ci_method", "intervals")):
        if getattr(fit, attr, None):
            method.append(f"{label}: {getattr(fit, attr)}")
    if getattr(fit, "n_obs", None):
        method.append(f"{fit.n_obs:,} rows in {getattr(fit, 'n_patterns', 0):,} covariate patterns")
    s.notes.append(f"Formula {getattr(fit, 'formula', '')}; " + "; ".join(method) + ".")
    refs = getattr(fit, "reference", None)
    if refs:
        s.notes.append("Reference levels (each coefficient is relative to these): "
                       + ", ".join(f"{k} = {v}" for k, v in refs.items()) + ".")
    for sep in getattr(fit, "separation", None) or []:
        s.notes.append(f"Separation: {sep}")
    s.tables.append(TableItem("coefficients", "All coefficients (Table 7).",
                              coef.reset_index() if coef.index.name else coef, disp,
                              collapsed=True))
    an = None
    try:
        an = fit.drop1() if hasattr(fit, "drop1") else None
    except DATA_ERRORS as exc:  # e.g. a penalty without a likelihood (ridge, lasso)
        s.notes.append(f"No per-factor tests: {exc}")
    if an is not None and len(an):
        test = an.attrs.get("test", "")
        a = an[an["term"].astype(str) != "NULL"].reset_index(drop=True)
        is_f = "F" in a.columns
        stat = "F" if is_f else "lr"
        adisp = pd.DataFrame({"term": a["term"].astype(str)})
        adisp["F" if is_f else "χ²"] = [fmt_num(v, 3 if is_f else 1) for v in a[stat]]
        adisp["df"] = [str(int(v)) if np.isfinite(v) else "—" for v in a["df"].astype(float)]
        if is_f:
            # clusters - 1 (CR1), or the HTZ / Satterthwaite denominator df (CR2, not an integer)
            adisp["denominator df"] = [("—" if not np.isfinite(v) else str(int(v)) if float(v).is_integer()
                                        else f"{v:.1f}") for v in a["df_resid"].astype(float)]
        adisp["p"] = [fmt_p(v) for v in a["p_value"]]
        if "note" in a.columns and a["note"].astype(str).str.strip().any():
            adisp["note"] = a["note"].astype(str)
        kind = ("Cluster-robust Wald F test" if is_f else
                "Penalized likelihood-ratio test" if getattr(fit, "penalty", None) == "firth"
                else "Likelihood-ratio test")
        s.tables.append(TableItem("factor_tests", f"{kind} of each factor as a whole (the "
                                  f"factor dropped from the full model): {test}.", a, adisp))
        parts = []
        for _, r in a.iterrows():
            if not (np.isfinite(float(r[stat])) and np.isfinite(float(r["df"]))):
                continue
            if is_f:
                parts.append(f"{r['term']}: F({int(r['df'])}, {int(r['df_resid'])}) = "
                             f"{fmt_num(float(r['F']), 3)}, p {_p_phrase(float(r['p_value']))}")
            else:
                parts.append(f"{r['term']}: χ² = {fmt_num(float(r['lr']), 1)}, df = "
                             f"{int(r['df'])}, p {_p_phrase(float(r['p_value']))}")
        if parts:
            s.findings.append(f"{kind} of each factor as a whole — " + "; ".join(parts) + ".")
    r2 = getattr(fit, "pseudo_r2", None)
    r2 = r2() if callable(r2) else r2
    if r2 is not None and np.isfinite(r2):
        same = data is not None and is_paper_design(data)
        s.findings.append(f"McFadden pseudo-R² of the regression: {r2:.3f}"
                          + (" (P1 reported 0.573 on its data with this design)." if same
                             else "."))
    pos = cf[~cf["term"].str.lower().str.contains("intercept")]
    if len(pos):
        t = pos.loc[pos["estimate"].idxmax()]
        s.findings.append(
            f"Largest positive coefficient: {F._pretty_term(t['term'])} "
            f"{fmt_num(t['estimate'], 2)} (95% CI {fmt_num(t['ci_low'], 2)} to "
            f"{fmt_num(t['ci_high'], 2)}), odds ratio {fmt_num(np.exp(t['estimate']), 1)}."
        )
    summ = getattr(fit, "summary", None)
    if callable(summ):
        try:
            s.text = str(summ())
        except DATA_ERRORS:
            s.text = ""


def is_paper_design(d: pd.DataFrame) -> bool:
    """True when the table has P1's design: its tasks, its 15 personas, its 9 templates.

    Only then is a comparison with P1's published numbers (pseudo-R² 0.5733) meaningful.
    """
    from ..design import PERSONAS
    from ..simulate import PAPER_TASKS

    need = {"task": set(PAPER_TASKS), "persona": {p.name for p in PERSONAS},
            "prompt": {f"p{i}" for i in range(1, 10)}}
    for col, levels in need.items():
        if col not in d.columns:
            return False
        got = set(d[col].astype(str).unique())
        if not got or not got <= levels or len(got) < 2:
            return False
    return True


def _p_phrase(p: float) -> str:
    f = fmt_p(p)
    return f if f.startswith("<") else f"= {f}"


# ----------------------------------------------------------------------------------------
# 7. hierarchical model
# ----------------------------------------------------------------------------------------
#: The report adds (1|item) to the default hierarchical formula up to this many covariate
#: patterns. With an item term nothing collapses across items; above 20,000 patterns the fit
#: runs the nested Laplace approximation (``method="auto"``, #24): P1's full design (2,032,160
#: patterns, 12,700 items) in ~20 s of CPU, memory ~items x 280 x 8 bytes per design point
#: (benchmarks/README.md, hierarchical section). Beyond this the term is left out, with a note.
HIER_MAX_ITEM_PATTERNS = 5_000_000


def default_hier_formula(d: pd.DataFrame, cluster: str | None = None, source=None
                         ) -> tuple[str, str | None]:
    """The default formula, with ``(1|cluster)`` when it is affordable; and a note if not.

    Parameters
    ----------
    d : DataFrame
        The rows, or (with ``source``) the design counts of a streamed source.
    cluster : str, optional
        The cluster column (``(1|cluster)`` is added when the patterns are few enough).
    source : path, optional
        A streamed Parquet source: the patterns are counted by ``collapse``.

    Returns
    -------
    (str, str or None)
        The formula, and a note when the item term was left out.
    """
    fixed = [c for c in ("task", "prompt") if _multi(d, c)]
    rhs = (" + ".join(fixed) + " + ") if fixed else "1 + "
    base = f"refusal ~ {rhs}(1|model) + (1|persona) + (1|persona:model)"
    if not isinstance(cluster, str):
        return base, None
    cols = [c for c in (*fixed, "model", "persona", cluster) if c in d.columns or c == cluster]
    if source is not None:  # streamed: count the patterns (one line each), not the rows
        from ..counts import collapse

        keys = [c for c in cols if c != cluster]
        n_patterns = len(collapse(source, by=keys, cluster=cluster))
    else:
        n_patterns = len(d.groupby([c for c in cols if c in d.columns], observed=True).size())
    if n_patterns <= HIER_MAX_ITEM_PATTERNS:
        return f"{base} + (1|{cluster})", None
    return base, (
        f"The item random intercept (1|{cluster}) was left out of the default formula: with it "
        f"nothing collapses across items ({n_patterns:,} covariate patterns, more than "
        f"{HIER_MAX_ITEM_PATTERNS:,}), which needs too much memory for a report. Without it the "
        "intervals ignore that items are answered many times and are too narrow (about 1.6–1.8× "
        "for item-level factors, docs/validity.md); pass the formula with (1|item_id) to "
        "include it."
    )


def effects_display(eff: pd.DataFrame) -> pd.DataFrame:
    """``HierarchicalResult.effects`` formatted as the report and ``refusalstats bayes`` show it.

    The change in refusal probability in percentage points with its HDI first, then the
    log-odds effect; cells with an observed rate of 0% or 100% say "not assessed".

    Parameters
    ----------
    eff : DataFrame
        From ``fit.effects(term, within=...)``.

    Returns
    -------
    DataFrame
        Strings, one row per cell.
    """
    interval = str(eff.attrs.get("interval", "95% HDI"))
    keys = [c for c in eff.columns if c not in (
        "effect", "ci_low", "ci_high", "p_gt_0", "prob_effect", "prob_ci_low", "prob_ci_high",
        "observed_rate", "n")]
    out = eff[keys].astype(str).reset_index(drop=True)
    flat = F.unassessable(eff)
    out["Δ refusal probability (pp)"] = [fmt_num(100 * v, 2) for v in eff["prob_effect"]]
    out[f"{interval} (pp)"] = [f"{fmt_num(100 * a, 2)} to {fmt_num(100 * b, 2)}"
                               for a, b in zip(eff["prob_ci_low"], eff["prob_ci_high"])]
    out["effect (log-odds)"] = [fmt_num(v, 2) for v in eff["effect"]]
    out[f"{interval} (log-odds)"] = [f"{fmt_num(a, 2)} to {fmt_num(b, 2)}"
                                     for a, b in zip(eff["ci_low"], eff["ci_high"])]
    out["P(effect > 0)"] = [fmt_num(v, 3) for v in eff["p_gt_0"]]
    out["observed rate"] = [pct(v) for v in eff["observed_rate"]]
    out["n"] = [f"{int(v):,}" for v in eff["n"]]
    out["note"] = np.where(flat, "not assessed: observed rate 0% or 100%", "")
    return out


def hierarchical_section(ctx: Context) -> Section:
    s = Section("hierarchical", TITLES["hierarchical"],
                "Each point is how much naming a persona changes one model's refusal "
                "probability (percentage points) compared with an average persona in that "
                "model, from a Bayesian model that pools information across models and "
                "personas; whiskers are 95% highest-density intervals from the posterior "
                "draws, filled points exclude 0. A model that refused rarely can only move "
                "by a few points. Cells with an observed rate of 0% or 100% are not "
                "assessed. The second table isolates the persona × model deviations.")
    po = has_persona_rows(ctx)
    d = view(ctx, po)
    fit = ctx.results.get("hierarchical")
    if fit is None:
        if ctx.hierarchical is False:
            s.skipped = ("not requested (report(..., hierarchical=False); on the command line "
                         "'refusalstats report' fits it unless --no-hierarchical is given).")
            return s
        try:
            from ..bayes import hierarchical
        except ImportError as exc:
            s.skipped = f"the hierarchical module (refusalstats.bayes) is not available: {exc}."
            return s
        problems = []
        for g in ("model", "persona"):
            n_lv = d[g].nunique() if g in d.columns else 0
            if n_lv < HIER_MIN_LEVELS:
                problems.append(f"'{g}' has {n_lv} level(s), fewer than {HIER_MIN_LEVELS} "
                                "(too few to estimate a group standard deviation)")
        if n_rows(ctx, po) < HIER_MIN_ROWS:
            problems.append(f"{n_rows(ctx, po):,} rows, fewer than {HIER_MIN_ROWS:,}")
        n_ref = n_refusals(ctx, po)
        if n_ref < HIER_MIN_REFUSALS:
            problems.append(f"{n_ref} refusal(s), fewer than {HIER_MIN_REFUSALS}")
        if problems:
            s.skipped = "the table is too small for the hierarchical model: " + "; ".join(problems) + "."
            return s
        if streamed(ctx) and n_rows(ctx, po) < n_rows(ctx):
            s.skipped = _rows_subset(ctx, "The hierarchical model")
            return s
        if isinstance(ctx.hierarchical, str):
            formula = ctx.hierarchical
        else:
            formula, why = default_hier_formula(d, ctx.cluster, ctx.source)
            if why:
                s.notes.append(why)
        opts = {"seed": ctx.seed, "progress": nested_progress(ctx)} | ctx.options.get("hierarchical", {})
        if "reference" not in opts:
            opts["reference"] = {k: v for k, v in _reference(d, formula).items()
                                 if k in ("task", "prompt")}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if streamed(ctx):
                try:
                    fit = hierarchical(formula, ctx.source, **opts)
                except TypeError as exc:  # an analysis that does not stream (yet)
                    s.skipped = _need_rows(ctx, f"The hierarchical model ({exc})")
                    return s
            else:
                fit = hierarchical(formula, d, **opts)
        for w in caught:
            if "convergence" in type(w.category).__name__.lower() or "trustworthy" in str(w.message):
                s.notes.append(f"Convergence warning: {w.message}")
    used = str(getattr(getattr(fit, "model", None), "formula", "") or "")
    no_item = (isinstance(ctx.cluster, str) and bool(used)
               and f"(1|{ctx.cluster})" not in used.replace(" ", ""))
    if no_item and not any(ctx.cluster in n for n in s.notes):
        s.notes.append(f"This fit has no (1|{ctx.cluster}) term although answers are clustered by "
                       f"{ctx.cluster}: its intervals for item-level factors are too narrow "
                       "(docs/validity.md).")
    eff = fit.effects("persona", within="model")
    flat = F.unassessable(eff)
    s.figures.append(render(F.hierarchical_effects(eff, scale="probability"),
                            "hierarchical_effects",
                            "Change in refusal probability (percentage points) when a prompt "
                            "names each persona rather than an average persona, within each "
                            "model; 95% HDIs from the posterior draws. Grey crosses: cells "
                            "with an observed rate of 0% or 100%, not assessed."))
    s.tables.append(TableItem("hierarchical_effects", "Persona effect within each model: change "
                              "in refusal probability (pp) and on the log-odds scale.",
                              eff, effects_display(eff), collapsed=True))
    dev = None
    if any(sorted(g.term.groups) == ["model", "persona"] for g in fit.model.groups):
        dev = fit.deviations("persona:model")
        ddisp = pd.DataFrame({
            "model": dev["model"].astype(str), "persona": dev["persona"].astype(str),
            "deviation (log-odds)": [fmt_num(v, 2) for v in dev["effect"]],
            "95% HDI": [f"{fmt_num(a, 2)} to {fmt_num(b, 2)}"
                        for a, b in zip(dev["ci_low"], dev["ci_high"])],
            "P(deviation > 0)": [fmt_num(v, 3) for v in dev["p_gt_0"]],
        })
        s.tables.append(TableItem("hierarchical_deviations", "Persona × model deviations "
                                  "(1|persona:model) alone: how far a persona's effect in one "
                                  "model departs from its average effect over models (log-odds).",
                                  dev, ddisp, collapsed=True))
    summ = fit.to_frame()
    sdisp = pd.DataFrame({
        "term": [str(t) for t in summ.index],
        "mean": [fmt_num(v, 3) for v in summ["mean"]],
        "95% HDI": [f"{fmt_num(a, 3)} to {fmt_num(b, 3)}"
                    for a, b in zip(summ["ci_low"], summ["ci_high"])],
        "R-hat": [fmt_num(v, 3) for v in summ["r_hat"]],
        "bulk ESS": [fmt_num(v, 0) for v in summ["ess_bulk"]],
    })
    s.tables.append(TableItem("hierarchical_summary", "Fixed effects and group standard "
                              "deviations (logit scale).", summ.reset_index(), sdisp))
    diag = fit.diagnostics()
    lo, hi = 100 * eff["prob_ci_low"], 100 * eff["prob_ci_high"]
    excl = eff[((lo > 0) | (hi < 0)).to_numpy() & ~flat]
    caveat = (f" These intervals come from a fit without an item term (1|{ctx.cluster}): they "
              "are too narrow (about 1.6–1.8× for item-level factors, docs/validity.md), so "
              "this count is too high." if no_item else "")
    left = (f"; {int(flat.sum())} cells with an observed rate of 0% or 100% (e.g. a model that "
            "never refused) are not counted" if flat.any() else "")
    s.findings.append(
        f"Hierarchical model: {len(excl)} of {int((~flat).sum())} persona × model effects on the "
        f"refusal probability have a 95% HDI excluding 0 ({int((excl['prob_effect'] > 0).sum())} "
        f"raise, {int((excl['prob_effect'] < 0).sum())} lower refusal){left}.{caveat}"
    )
    if dev is not None:
        dflat = F.unassessable(dev.merge(eff[["model", "persona", "observed_rate"]],
                                         on=["model", "persona"], how="left"))
        dx = dev[((dev["ci_low"] > 0) | (dev["ci_high"] < 0)).to_numpy() & ~dflat]
        s.findings.append(
            f"Persona × model deviations (a persona's effect in one model minus its average "
            f"over models, log-odds): {len(dx)} of {int((~dflat).sum())} have a 95% HDI "
            "excluding 0." + (" Most persona effects are shared across models." if
                              len(dx) <= 0.05 * max(1, int((~dflat).sum())) else ""))
    if diag.get("sampler") == "laplace":
        s.notes.append("Fitted by the nested Laplace approximation (method='auto' on a large design: "
                       "Gaussian effects given the group sd's, sd's integrated over a small design; "
                       "checked against NUTS and lme4, docs/methods_hierarchical.md); no R-hat or ESS.")
    if diag.get("sampler") == "advi":
        s.notes.append("Fitted by ADVI, a fast approximation: intervals are typically too narrow.")
    else:
        s.notes.append(
            f"Sampler {diag['sampler']}, {diag['chains']} chains × {diag['draws']} draws: max R-hat "
            f"{fmt_num(diag['max_rhat'], 4)}, min bulk ESS {fmt_num(diag['min_ess_bulk'], 0)}, "
            f"divergences {diag['divergences']}."
        )
    sd_rows = [t for t in summ.index if str(t).startswith("sd(")]
    if sd_rows:
        s.findings.append("Group standard deviations (logit scale): " + "; ".join(
            f"{t} {fmt_num(summ.loc[t, 'mean'], 2)} (95% HDI {fmt_num(summ.loc[t, 'ci_low'], 2)}"
            f"–{fmt_num(summ.loc[t, 'ci_high'], 2)})" for t in sd_rows) + ".")
    return s


# ----------------------------------------------------------------------------------------
# 8. the models' answers
# ----------------------------------------------------------------------------------------
ANSWERS_PER_MODEL = 3
ANSWER_CHARS = 400
#: A streamed source's answers are sampled from its first this many rows.
ANSWERS_STREAM_ROWS = 20_000


def _head(source, columns: list[str], n: int) -> pd.DataFrame:
    """The first ``n`` rows of ``columns`` of a Parquet source (nothing else is read)."""
    from ..sources import open_dataset

    return open_dataset(source).head(n, columns=columns).to_pandas()


def answers_section(ctx: Context) -> Section:
    s = Section("answers", TITLES["answers"],
                f"Up to {ANSWERS_PER_MODEL} refusals and {ANSWERS_PER_MODEL} answers per "
                "model, drawn at random (seeded), so the numbers above can be checked "
                "against what the models actually wrote.")
    if "response" not in columns_of(ctx):
        s.skipped = ("the table has no 'response' column (answer text); simulated tables and "
                     "some imported dumps carry only the 0/1 refusal.")
        return s
    keep = [c for c in ("model", "task", "persona", "prompt", "prompt_text", "refusal", "response")
            if c in columns_of(ctx)]
    if streamed(ctx):
        d = _head(ctx.source, keep, ANSWERS_STREAM_ROWS)
        s.notes.append(f"Streamed source: answers are drawn from its first {len(d):,} rows "
                       f"(at most {ANSWERS_STREAM_ROWS:,}, only the columns shown are read), "
                       "not from every row.")
    else:
        d = ctx.data
    d = d[d["response"].notna()]
    if d.empty:
        s.skipped = "every value of 'response' is missing."
        return s
    rng = np.random.default_rng(ctx.seed)
    picks = []
    for _, g in d.groupby("model", observed=True):
        for flag in (1, 0):
            sub = g[g["refusal"] == flag]
            if len(sub):
                idx = rng.choice(len(sub), size=min(ANSWERS_PER_MODEL, len(sub)), replace=False)
                picks.append(sub.iloc[np.sort(idx)][keep])
    ex = pd.concat(picks, ignore_index=True)
    disp = ex.copy()
    for c in disp.columns:
        disp[c] = disp[c].astype(str)
    for c in ("response", "prompt_text"):
        if c in disp.columns:
            disp[c] = [v if len(v) <= ANSWER_CHARS else v[:ANSWER_CHARS] + " …" for v in disp[c]]
    disp["refusal"] = np.where(ex["refusal"].astype(int) == 1, "refusal", "answer")
    s.tables.append(TableItem("answers_sample", "Sampled answers.", ex, disp))
    return s


#: The label column the detector section looks for (rs.label_sample / rs.join_labels).
LABEL_COLUMN = "human"
#: Target full width of the corrected rates' 95% intervals in the label-budget table.
LABEL_TARGET_WIDTH = 0.05


def detector_section(ctx: Context) -> Section | None:
    """The detector's report card (#22); None (no section) when the table has no labels."""
    from ..labels import detector_card
    from ..ppi import label_budget

    if LABEL_COLUMN not in columns_of(ctx):
        return None
    s = Section("detector", TITLES["detector"],
                f"Rows with a human label (column '{LABEL_COLUMN}') score the refusal detector: "
                "sensitivity (refusals it flags) and specificity (answers it leaves alone) per "
                "model with 95% Wilson intervals. 'raw' is the detector's rate as the sections "
                "above report it; 'corrected' is the prediction-powered estimate (PPI++) that "
                "carries the detector's error into its interval (a score interval, as Wilson's "
                "for labels alone; docs/methods_ppi.md). 'changed' marks models whose "
                "corrected rate falls outside the raw interval.")
    if streamed(ctx):
        s.skipped = _need_rows(ctx, "the detector section (human labels are joined row by row)")
        return s
    d = ctx.data
    if d[LABEL_COLUMN].notna().sum() < 2 or "model" not in d.columns:
        s.skipped = f"fewer than two human labels in '{LABEL_COLUMN}', or no model column."
        return s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = detector_card(d, "model", labels=LABEL_COLUMN, cluster=ctx.cluster)
        budget = label_budget(d, LABEL_TARGET_WIDTH, "model", labels=LABEL_COLUMN)
    disp = card[["model"]].astype(str).copy()
    disp["labels"] = [f"{int(v):,}" for v in card["n_labelled"]]
    disp["sensitivity"] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                           zip(card["sensitivity"], card["sensitivity_ci_low"], card["sensitivity_ci_high"])]
    disp["specificity"] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                           zip(card["specificity"], card["specificity_ci_low"], card["specificity_ci_high"])]
    disp["raw rate"] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                        zip(card["rate_detector"], card["detector_ci_low"], card["detector_ci_high"])]
    disp["corrected rate"] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                              zip(card["rate"], card["ci_low"], card["ci_high"])]
    disp["changed"] = np.where(card["changed"], "yes", "")
    s.tables.append(TableItem("detector_card", "The detector per model: errors, raw and corrected rates.",
                              card, disp, collapsed=len(card) > 24))
    if "task" in d.columns and d["task"].nunique() > 1:  # errors differ by task too (refusal style)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_task = detector_card(d, ["model", "task"], labels=LABEL_COLUMN, cluster=ctx.cluster)
        dt = by_task[["model", "task"]].astype(str).copy()
        dt["labels"] = by_task["n_labelled"].astype(int)
        for col in ("sensitivity", "specificity"):
            dt[col] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                       zip(by_task[col], by_task[f"{col}_ci_low"], by_task[f"{col}_ci_high"])]
        dt["raw rate"] = [pct(v) for v in by_task["rate_detector"]]
        dt["corrected rate"] = [f"{pct(v)} ({pct_ci(a, b)})" for v, a, b in
                                zip(by_task["rate"], by_task["ci_low"], by_task["ci_high"])]
        s.tables.append(TableItem("detector_card_task", "The detector per model and task.", by_task, dt,
                                  collapsed=True))
    bd = budget[["model"]].astype(str).copy()
    bd["labels now"] = budget["n_labelled"].astype(int)
    bd[f"labels for ±{LABEL_TARGET_WIDTH / 2:.1%}"] = budget["labels_needed"].astype(int)
    bd["labels alone would need"] = budget["labels_needed_labels_only"].astype(int)
    bd["to label"] = budget["to_label"].astype(int)
    s.tables.append(TableItem("label_budget", f"Labels per model for corrected-rate intervals of width "
                              f"{LABEL_TARGET_WIDTH:.0%} (from the estimated error rates).", budget, bd,
                              collapsed=True))
    ok = card.dropna(subset=["sensitivity"])
    if len(ok):
        s.findings.append(
            f"Detector sensitivity {pct(ok['sensitivity'].min())}–{pct(ok['sensitivity'].max())} and "
            f"specificity {pct(card['specificity'].min())}–{pct(card['specificity'].max())} across "
            f"{len(card)} models ({int(card['n_labelled'].sum()):,} human labels).")
    shift = card["shift"].dropna()
    if len(shift):
        s.findings.append(f"Corrected minus raw rate: {100 * shift.min():+.1f} to {100 * shift.max():+.1f} "
                          "percentage points.")
    changed = card.loc[card["changed"], "model"].astype(str).tolist()
    s.findings.append(
        f"Corrected rate outside the raw interval for {len(changed)} of {len(card)} models"
        + (f": {', '.join(changed)}." if changed else ".")
    )
    moved = card.loc[card["rank"].astype("float") != card["rank_detector"], "model"].astype(str).tolist()
    if moved:
        s.findings.append(f"The models' order by refusal rate changes for {', '.join(moved)}.")
    return s


#: The sections, in page order.
SECTIONS: list[tuple[str, Callable[[Context], Section]]] = [
    ("rates", rates_section),
    ("factors", factors_section),
    ("persona_free", persona_free_section),
    ("personas", personas_section),
    ("response_type", response_type_section),
    ("w2", w2_section),
    ("logit", logit_section),
    ("hierarchical", hierarchical_section),
    ("answers", answers_section),
    ("detector", detector_section),
]


def build(ctx: Context) -> list[Section]:
    """Run every section builder; a data problem becomes a skipped section with the reason."""
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(SECTIONS, desc="report", unit="section", disable=not ctx.progress)
    for key, fn in bar:
        bar.set_postfix_str(key)
        t0 = time.perf_counter()
        try:
            sec = fn(ctx)
            if sec is None:  # nothing to report on this table (e.g. no human labels)
                continue
        except DATA_ERRORS as exc:
            sec = Section(key, TITLES.get(key, key), skipped=f"the analysis failed on this table: "
                                            f"{type(exc).__name__}: {exc}")
            warnings.warn(f"report section '{key}' skipped: {exc}", stacklevel=2)
        sec.seconds = time.perf_counter() - t0
        out.append(sec)
    return out
