"""The uncertainty-aware report: one self-contained HTML page, PNG/SVG figures, CSV tables.

:func:`report` runs every analysis the table's columns support (see
:mod:`refusalstats.reporting.sections`) and writes::

    out/report.html             the page (figures embedded; no external requests)
    out/figures/<name>.png|svg  every figure
    out/tables/<name>.csv       every table, unrounded
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..table import SchemaError, its_columns
from ..vocabulary import FIGURE_RC, persona_rows
from . import sections as S

__all__ = ["Report", "report"]


@dataclass
class Report:
    """What :func:`report` wrote.

    Attributes
    ----------
    path : Path
        The HTML page.
    out : Path
        The output folder.
    sections : list of Section
        Every analysis, in page order (``skipped`` holds the reason when it did not run).
    findings : list of str
        The findings summary at the top of the page.
    figures, tables : dict of str -> Path
        Written PNG figures and CSV tables by name.
    """

    path: Path
    out: Path
    sections: list[S.Section]
    findings: list[str]
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)

    @property
    def skipped(self) -> dict[str, str]:
        """Section key -> reason, for the analyses that did not run."""
        return {s.key: s.skipped for s in self.sections if s.skipped}

    def print_summary(self, seconds: float | None = None) -> None:
        """Print the findings, the skipped sections and what was written (the CLI's output).

        Parameters
        ----------
        seconds : float, optional
            The time the report took, shown when given.
        """
        print("\nFindings:")
        for f in self.findings:
            print(f"  - {f}")
        for key, why in self.skipped.items():
            print(f"  skipped {key}: {why}")
        took = "" if seconds is None else f"; {seconds:.1f} s"
        print(f"wrote {self.path} ({len(self.figures)} figures, {len(self.tables)} CSV tables"
              f"{took})")

    def __repr__(self) -> str:
        ran = [s.key for s in self.sections if not s.skipped]
        return (f"Report({str(self.path)!r}: sections {ran}, skipped {list(self.skipped)}, "
                f"{len(self.figures)} figures, {len(self.tables)} tables)")


# ----------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------
def report(
    data: pd.DataFrame | str | Path | list,
    out: str | Path = "report/",
    formula: str | None = None,
    inputs: list[str] | None = None,
    hierarchical: bool | str = True,
    seed: int | np.random.Generator | None = 0,
    *,
    results: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "False refusal report",
    source: str | None = None,
    progress: bool = True,
    cluster: str | None = "auto",
) -> Report:
    """Run every analysis the table supports and write an HTML report with figures and CSVs.

    Sections, in order: refusal rate by model x task (P1 Table 1); persona vs
    persona-free (Fig. 1, when ``setting`` has both); rate per persona (Figs. 2-3, 7-9);
    rate by response type (Figs. 4, 10-11); W2 sensitivity indices with bootstrap CIs and
    permutation null (Fig. 5); logistic regression, Firth-penalised by default with
    cluster-robust SEs on ``item_id`` when present, its coefficient forest plot (Fig. 6),
    full coefficient table (Table 7) and a test per factor (cluster-robust Wald F when
    clustered, likelihood ratio otherwise); the Bayesian hierarchical
    model's persona-within-model effects; sampled answers when a ``response`` column
    exists. An analysis the data cannot support is skipped and the page says why.

    Parameters
    ----------
    data : DataFrame, path, glob or list of paths
        A response table; a Parquet file, a folder of Parquet shards, a glob or a list of
        them, which is streamed: one :func:`~refusalstats.collapse` by the design columns
        gives the levels and totals, every rate table is ``refusal_rates(path, by=...)``,
        W2 and the regression read counts, so no analysis holds the rows (the tables
        equal those of the DataFrame; sampled answers come from the first 20,000 rows,
        and an analysis that cannot stream says so on the page); or a CSV/TSV/JSONL file,
        read whole by :func:`refusalstats.read_responses`.
    out : str or Path
        Output folder (created).
    formula : str, optional
        Formula of the regression; default ``refusal ~ persona + prompt + task + model``
        over the factors that have at least two levels.
    inputs : list of str, optional
        Inputs of the W2 analysis; default model, task, persona, prompt (those present
        with at least two levels).
    hierarchical : bool or str
        Fit the hierarchical model (default formula ``refusal ~ task + prompt +
        (1|model) + (1|persona) + (1|persona:model)``); a string is used as its formula;
        False skips it. It is also skipped when the table is too small (fewer than
        1,000 rows, 20 refusals, or 3 models / personas).
    seed : int, None or numpy.random.Generator
        Seed of every random step (bootstrap, permutations, sampler, answer samples); a
        Generator or None first draws an int seed, which the report records.
    results : mapping, optional
        Already computed results to reuse instead of fitting again: ``"logit"`` (a
        ``logit`` result), ``"w2"`` (a ``w2_sensitivity`` result), ``"hierarchical"``.
    options : mapping, optional
        Keyword arguments per analysis, e.g. ``{"w2": {"n_boot": 200}, "hierarchical":
        {"draws": 500}, "logit": {"penalty": None}}``.
    title : str
        Page title.
    source : str, optional
        Where the data came from, for the header (default: the path, the table's
        metadata ``source``, or "in-memory table").
    progress : bool
        Show progress bars.
    cluster : str or None
        Column of correlated answers, used by every interval and test of the report
        (rates, persona effects, W2 bootstrap and permutation null, regression
        standard errors and per-factor tests). ``"auto"`` (default): ``item_id`` when the
        table has it and it repeats; ``None``: rows treated as independent. The page
        header says which.

    Returns
    -------
    Report
        ``.path`` (the HTML file), ``.sections``, ``.skipped`` (key -> reason),
        ``.findings``, ``.figures`` and ``.tables`` (written files).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.02)
    >>> rep = rs.report(df, out="report/", hierarchical=False)  # doctest: +SKIP
    >>> rep.skipped  # doctest: +SKIP
    {'persona_free': "no persona-free rows: ...", ...}
    """
    from ..sources import read_responses
    from ..table import validate

    stream = _parquet_source(data)
    df = None
    if stream is not None:
        source = source or (str(data) if not isinstance(data, (list, tuple))
                            else f"{len(data)} Parquet path(s)")
    elif isinstance(data, (str, Path)):
        path_in = Path(data)
        df = read_responses(path_in)
        source = source or str(path_in)
    elif isinstance(data, pd.DataFrame):
        df = validate(data)
        n_err = df.attrs.get("n_error_rows")
        df.attrs = dict(data.attrs)
        if n_err:
            df.attrs["n_error_rows"] = n_err
    else:
        raise TypeError(f"data must be a DataFrame or a path to a response table, "
                        f"got {type(data).__name__}")
    if not isinstance(hierarchical, (bool, str)):
        raise TypeError(f"hierarchical must be True, False or a formula string, got {hierarchical!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        from .._validation import check_random_state

        seed = int(check_random_state(seed).integers(2**31 - 1))
    results = dict(results or {})
    unknown = set(results) - {"logit", "w2", "hierarchical"}
    if unknown:
        raise ValueError(f"results has unknown key(s) {sorted(unknown)}; "
                         "use 'logit', 'w2', 'hierarchical'")
    for key, need, made_by in (("logit", "coef_table", "rs.logit(...)"),
                               ("w2", "table", "rs.w2_sensitivity(...)"),
                               ("hierarchical", "effects", "rs.hierarchical(...)")):
        if results.get(key) is not None and not hasattr(results[key], need):
            raise TypeError(f"results['{key}'] must be a result of {made_by}, got "
                            f"{type(results[key]).__name__}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = set(options) - {"logit", "w2", "hierarchical"}
    if unknown:
        raise ValueError(f"options has unknown key(s) {sorted(unknown)}; "
                         "use 'logit', 'w2', 'hierarchical'")
    columns = _stream_columns(stream) if stream is not None else list(map(str, df.columns))
    if inputs is not None:
        missing = [c for c in inputs if c not in columns]
        if missing:
            raise SchemaError(f"report: inputs {missing} are not columns of the table; "
                              f"{its_columns(columns, missing)}")

    from .._validation import resolve_cluster

    if stream is not None:
        cluster, n_clusters, design = _stream_design(stream, cluster, columns)
        ctx = S.Context(data=None, persona_data=None, formula=formula,
                        inputs=list(inputs) if inputs else None, hierarchical=hierarchical,
                        seed=seed, results=results, options=options, progress=progress,
                        cluster=cluster, source=stream, design=design)
    else:
        cluster = resolve_cluster(df, cluster, where="report", note=False)
        ctx = S.Context(data=df, persona_data=persona_rows(df), formula=formula,
                        inputs=list(inputs) if inputs else None, hierarchical=hierarchical,
                        seed=seed, results=results, options=options, progress=progress,
                        cluster=cluster)
    out = Path(out)
    if df is not None:
        df = _isolate_bidi(df)
        ctx.data = _isolate_bidi(ctx.data)
        ctx.persona_data = _isolate_bidi(ctx.persona_data)
    # the output folder is checked and a staging folder made before any analysis runs:
    # an unwritable place fails now, not after the analyses
    staging = _stage(out)
    try:
        import matplotlib

        with matplotlib.rc_context(_rc()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tight_layout.*")
            secs = S.build(ctx)

        figures: dict[str, Path] = {}
        tables: dict[str, Path] = {}
        for sec in secs:
            for f in sec.figures:
                stem = _file_stem(f.key)
                (staging / "figures" / f"{stem}.png").write_bytes(f.png)
                (staging / "figures" / f"{stem}.svg").write_bytes(f.svg)
                figures[f.key] = out / "figures" / f"{stem}.png"
            for t in sec.tables:
                stem = _file_stem(t.key)
                t.data.to_csv(staging / "tables" / f"{stem}.csv", index=False)
                tables[t.key] = out / "tables" / f"{stem}.csv"
        findings = [f for sec in secs if not sec.skipped for f in sec.findings]
        meta = (_header(df, source, seed, cluster) if stream is None
                else _stream_header(ctx, source, seed, n_clusters, columns))
        n_err = (df.attrs.get("n_error_rows") if df is not None  # streamed: left out by collapse
                 else (getattr(ctx.design, "attrs", {}).get("collapse") or {}).get("n_error_rows"))
        if n_err:
            note = (f"{n_err:,} (prompts without an answer: "
                    "refusal_source 'error', text in column 'error')")
            meta.append(("Error rows left out", note))
        page = _page(title, meta, findings, secs)
        (staging / "report.html").write_text(page, encoding="utf-8")
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Report(path=out / "report.html", out=out, sections=secs, findings=findings,
                  figures=figures, tables=tables)


#: What a report folder holds (and what a new report replaces).
_REPORT_ENTRIES = ("figures", "tables", "report.html")


def _file_stem(key: str) -> str:
    """A safe file name for a figure or table key built from labels ("a/b", "..", spaces).

    Keys that are already safe stay as they are; any other gets its unsafe characters
    replaced and a hash of the exact key appended, so two keys never share a file.

    Examples
    --------
    >>> _file_stem("rates_by_prompt")
    'rates_by_prompt'
    >>> _file_stem("persona_model_a/b") != _file_stem("persona_model_a_b")
    True
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._")[:80] or "item"
    if safe == key:
        return safe
    return f"{safe}-{hashlib.sha256(str(key).encode()).hexdigest()[:8]}"


def _stage(out: Path) -> Path:
    """A fresh staging folder beside ``out`` (same file system, so renames are atomic)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report output {out} is a file; give a folder (-o report/)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name or 'report'}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
    (staging / "figures").mkdir(parents=True)
    (staging / "tables").mkdir()
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Move a finished report from ``staging`` into ``out``.

    A new folder, or one that holds nothing but a report, is swapped whole (two renames;
    the previous report stays complete under ``.<name>.old-*`` until the new one is in
    place). A folder with other files keeps them: its report entries are replaced one
    by one, ``report.html`` last. Either way a run killed before this point leaves the
    previous report untouched.
    """
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old-{tag}"
    if all(p.name in _REPORT_ENTRIES for p in out.iterdir()):
        os.replace(out, old)
        os.replace(staging, out)
    else:
        old.mkdir()
        for name in _REPORT_ENTRIES:
            dst = out / name
            if dst.exists():
                os.replace(dst, old / name)
            os.replace(staging / name, dst)
    shutil.rmtree(old, ignore_errors=True)


#: Unicode bidirectional controls: embeddings, overrides, isolates and marks.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _isolate_bidi(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """Labels holding bidi controls wrapped in FIRST STRONG ISOLATE ... POP DIRECTIONAL
    ISOLATE, so a right-to-left override in a label cannot reverse the text and numbers
    printed after it (in tables, findings, figures)."""
    if df is None:
        return None
    out = None
    for c in df.columns:
        col = df[c]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            continue
        cats = [str(x) for x in col.cat.categories]
        if not any(_BIDI.search(x) for x in cats):
            continue
        out = df.copy() if out is None else out
        out[c] = col.cat.rename_categories(
            [f"\u2068{x}\u2069" if _BIDI.search(x) else x for x in cats])
    return df if out is None else out


def _parquet_source(data):
    """``data`` when it is a Parquet source to stream (a .parquet/.pq file, a folder, a glob
    or a list of them), else None (a DataFrame, or a CSV/TSV/JSONL file read as rows)."""
    from ..sources import is_dataset

    if not is_dataset(data):
        return None
    if isinstance(data, (list, tuple)):
        return list(data)
    text = str(data)
    if any(ch in text for ch in "*?["):
        return data
    p = Path(text)
    if p.is_dir() or p.suffix.lower() in (".parquet", ".pq"):
        return data
    return None


def _stream_columns(source) -> list[str]:
    from ..sources import scan_columns

    columns = scan_columns(source)
    if "refusal" not in columns:
        raise SchemaError(f"report: the table needs a 0/1 'refusal' column; "
                          f"{its_columns(columns, ['refusal'])}")
    return columns


def _stream_design(source, cluster, columns: list[str]):
    """Cluster column, number of clusters and the design counts of a Parquet source.

    The design counts are one :func:`~refusalstats.collapse` by the schema's design
    columns and the source's other dictionary-typed (categorical) columns, without the
    cluster: as many lines as design cells, whatever the number of rows.
    """
    import pyarrow as pa

    from ..counts import choose_cluster, collapse
    from ..sources import open_dataset

    n_clusters = None
    if isinstance(cluster, str) and cluster == "auto":  # the one "auto" rule (counts.py)
        choice = choose_cluster(source, "auto", where="report", note=False)
        cluster, n_clusters = choice.column, choice.n_clusters
    elif cluster is not None:
        names = [cluster] if isinstance(cluster, str) else list(cluster)
        missing = [c for c in names if c not in columns]
        if missing:
            raise SchemaError(f"report: cluster column(s) {missing} are not in the table; its "
                              f"columns are {columns}")
        n_clusters = len(collapse(source, by=[], cluster=names))
    schema = open_dataset(source).schema
    skip = {"refusal", "item_id", "response", "prompt_text", "system_text", "gold_label",
            "predicted_label", "label", "label_refusal"}
    cats = [c for c in columns if c not in skip and c not in S.DESIGN_COLUMNS
            and pa.types.is_dictionary(schema.field(c).type)]
    keys = [c for c in S.DESIGN_COLUMNS if c in columns] + cats
    clusters = [] if cluster is None else ([cluster] if isinstance(cluster, str) else list(cluster))
    keys = [c for c in keys if c not in clusters]
    design = collapse(source, by=keys, cluster=None)
    return cluster, n_clusters, design


def _stream_header(ctx, source: str, seed: int, n_clusters, columns: list[str]
                   ) -> list[tuple[str, str]]:
    """The page header of a streamed source: levels and totals from its design counts."""
    from ..counts import collapse

    cluster = ctx.cluster
    n_items = None
    if "item_id" in columns:
        n_items = n_clusters if cluster == "item_id" else len(
            collapse(ctx.source, by=[], cluster="item_id"))
    return _header_rows(
        f"{source} (Parquet, streamed into counts: no analysis holds the rows)",
        S.n_rows(ctx), S.n_refusals(ctx), lambda col: S.levels_of(ctx, col), columns,
        cluster, n_clusters, n_items, {}, seed)


def _rc() -> dict:
    return dict(FIGURE_RC)


# ----------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------
def _header(df: pd.DataFrame, source: str | None, seed: int, cluster=None
            ) -> list[tuple[str, str]]:
    meta = df.attrs.get("metadata") or {}
    truth = df.attrs.get("truth")
    if source is None:
        if meta.get("source"):
            source = str(meta["source"])
        elif truth:
            source = (f"simulated: refusalstats.simulate_paper(scale={truth.get('scale')}, "
                      f"seed={truth.get('seed')}, calibrate={truth.get('calibrate')!r})")
        else:
            source = "in-memory table"
    n_clusters = None
    if cluster:
        cols = [cluster] if isinstance(cluster, str) else list(cluster)
        n_clusters = len(df.groupby(cols, observed=True).size())
    n_items = df["item_id"].nunique() if "item_id" in df.columns else None
    return _header_rows(source, len(df), int(df["refusal"].sum()),
                        lambda col: S._levels(df, col), list(df.columns), cluster, n_clusters,
                        n_items, meta, seed)


def _header_rows(data: str, n: int, k: int, levels, columns: list[str], cluster,
                 n_clusters: int | None, n_items: int | None, meta: dict, seed: int
                 ) -> list[tuple[str, str]]:
    """The page header's rows, from rows or from streamed counts alike."""
    from .. import __version__

    def lv(col: str) -> str:
        if col not in columns:
            return "— (no column)"
        levels_ = levels(col)
        shown = ", ".join(map(str, levels_[:20])) + (" …" if len(levels_) > 20 else "")
        return f"{len(levels_)}: {shown}"

    rows = [
        ("Data", data),
        ("Rows", f"{n:,} answers, {k:,} refusals"),
        ("Models", lv("model")),
        ("Tasks", lv("task")),
        ("Personas", lv("persona")),
        ("Prompts", lv("prompt")),
    ]
    if "setting" in columns:
        rows.append(("Settings", lv("setting")))
    if cluster:
        cols = [cluster] if isinstance(cluster, str) else list(cluster)
        text = (f"answers clustered by {'+'.join(cols)} ({n_clusters:,} clusters, "
                f"{n / n_clusters:.3g} answers each on average): every interval and test is "
                "cluster-robust")
        rows.append(("Clustering", text))
    else:
        rows.append(("Clustering", "none: rows are treated as independent answers"))
    if n_items is not None:
        rows.append(("Items", f"{n_items:,}"))
    for key in ("model_revision", "decoding", "seed"):
        if key in meta:
            rows.append((f"Run {key.replace('_', ' ')}", str(meta[key])))
    rows += [
        ("Generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("refusalstats", __version__),
        ("Seed", str(seed)),
    ]
    return rows


_CSS = """
:root { --fg:#1b1b1b; --muted:#5a5a5a; --line:#d9d9d9; --bg2:#f5f6f8; --accent:#0072B2; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 40px 0 6px; padding-top: 12px; border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0;
          background: var(--bg2); padding: 12px 16px; border-radius: 6px; font-size: 13.5px; }
dl.meta dt { font-weight: 600; color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
nav ol { columns: 2; font-size: 14px; padding-left: 20px; }
nav a, a { color: var(--accent); text-decoration: none; }
.findings { background: #eef5fb; border-left: 4px solid var(--accent); padding: 10px 18px;
            border-radius: 0 6px 6px 0; }
.findings li { margin: 4px 0; }
.howto { color: var(--muted); font-size: 14px; margin: 4px 0 12px; }
.howto b { color: var(--fg); }
.skipped { background: #fff6e5; border-left: 4px solid #E69F00; padding: 8px 14px;
           border-radius: 0 6px 6px 0; }
.note { font-size: 13.5px; color: var(--muted); margin: 4px 0; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13.5px; color: var(--muted); margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 14px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th, td, dd, li, figcaption, code { unicode-bidi: isolate; }
th { background: var(--bg2); position: sticky; top: 0; }
tbody tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; white-space: nowrap; }
.scroll { max-height: 520px; overflow: auto; border: 1px solid var(--line); border-radius: 4px;
          display: inline-block; max-width: 100%; }
details { margin: 6px 0 14px; }
summary { cursor: pointer; color: var(--accent); font-size: 14px; }
pre { background: var(--bg2); padding: 10px 12px; font-size: 12px; overflow: auto;
      border-radius: 4px; max-height: 520px; }
footer { margin-top: 48px; font-size: 13px; color: var(--muted); border-top: 1px solid var(--line);
         padding-top: 10px; }
@media print { .scroll { max-height: none; overflow: visible; } details { display: block; } }
"""

_NUMERIC_HINT = ("n", "refusals", "rate", "95% CI", "estimate", "p", "ι", "df", "χ² (LR)",
                 "mean", "R-hat", "bulk ESS", "odds ratio", "levels", "null mean", "null 95%",
                 "ι − null mean", "permutation p", "effect (log-odds)", "95% HDI",
                 "P(effect > 0)", "Δ refusal probability", "observed rate", "persona",
                 "persona-free", "difference (pp)", "95% CI (pp)", "Δ refusal probability (pp)",
                 "95% HDI (pp)", "95% HDI (log-odds)", "deviation (log-odds)",
                 "P(deviation > 0)", "odds ratio (95% CI)")


def _esc(x: Any) -> str:
    text = str(x)
    if _BIDI.search(text):  # close whatever the text opens: nothing leaks past it
        opened = sum(text.count(ch) for ch in "\u202a\u202b\u202d\u202e")
        isolates = sum(text.count(ch) for ch in "\u2066\u2067\u2068")
        text = text + "\u202c" * opened + "\u2069" * isolates
    return html.escape(text, quote=True)


def _clean(v: Any) -> str:
    """Cell text; missing values read as an em dash (never 'nan')."""
    if v is None:
        return "—"
    if isinstance(v, float) and not np.isfinite(v):
        return "—"
    s = str(v)
    return "—" if s.lower() in ("nan", "none", "<na>", "nat") else s


def _table_html(t: S.TableItem, numeric_cols: set[str]) -> str:
    d = t.display
    head = "".join(f"<th>{_esc(c)}</th>" for c in d.columns)
    body = []
    for row in d.itertuples(index=False):
        cells = []
        for c, v in zip(d.columns, row):
            cls = ' class="num"' if c in numeric_cols else ""
            cells.append(f"<td{cls}>{_esc(_clean(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    tab = (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
           f"<tbody>{''.join(body)}</tbody></table></div>")
    csv = (f'<p class="note">{_esc(t.caption)} CSV: '
           f'<code>tables/{_esc(_file_stem(t.key))}.csv</code></p>')
    if t.collapsed:
        return (f"<details><summary>Table: {_esc(t.caption)} ({len(d):,} rows)</summary>"
                f"{tab}{csv}</details>")
    return tab + csv


def _section_html(sec: S.Section, fig_no: list[int]) -> str:
    parts = [f'<section id="{_esc(sec.key)}"><h2>{_esc(sec.title)}</h2>']
    if sec.skipped:
        parts.append(f'<p class="skipped"><b>Skipped:</b> {_esc(sec.skipped)}</p></section>')
        return "".join(parts)
    if sec.how_to_read:
        parts.append(f'<p class="howto"><b>How to read:</b> {_esc(sec.how_to_read)}</p>')
    if sec.findings:
        parts.append("<ul>" + "".join(f"<li>{_esc(f)}</li>" for f in sec.findings) + "</ul>")
    for f in sec.figures:
        fig_no[0] += 1
        b64 = base64.b64encode(f.png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(f.caption)}">'
            f"<figcaption>Figure {fig_no[0]}. {_esc(f.caption)} Full size: "
            f'<a href="figures/{_esc(_file_stem(f.key))}.png">figures/'
            f'{_esc(_file_stem(f.key))}.png</a>, '
            f'<a href="figures/{_esc(_file_stem(f.key))}.svg">.svg</a></figcaption></figure>'
        )
    numeric = set(_NUMERIC_HINT)
    for t in sec.tables:
        parts.append(_table_html(t, numeric))
    for n in sec.notes:
        parts.append(f'<p class="note">{_esc(n)}</p>')
    if sec.text:
        parts.append(f"<details><summary>Full model summary</summary><pre>{_esc(sec.text)}"
                     "</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _page(title: str, meta: list[tuple[str, str]], findings: list[str],
          secs: list[S.Section]) -> str:
    fig_no = [0]
    body = "".join(_section_html(s, fig_no) for s in secs)
    toc = "".join(
        f'<li><a href="#{_esc(s.key)}">{_esc(s.title)}</a>'
        + (" <span class=\"note\">(skipped)</span>" if s.skipped else "") + "</li>"
        for s in secs
    )
    skipped = [s for s in secs if s.skipped]
    find = "".join(f"<li>{_esc(f)}</li>" for f in findings) or "<li>No analysis could run.</li>"
    if skipped:
        find += "<li>Not run:<ul>" + "".join(
            f"<li>{_esc(s.title)}: {_esc(s.skipped)}</li>" for s in skipped) + "</ul></li>"
    metahtml = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>{_esc(title)}</h1>
<p class="sub">Every rate, coefficient and index below comes with its 95% interval.
Figures and tables are also written as PNG/SVG and CSV next to this page.</p>
<dl class="meta">{metahtml}</dl>
</header>
<nav><h2 id="contents">Contents</h2><ol>{toc}</ol></nav>
<section id="findings"><h2>Findings</h2><ul class="findings">{find}</ul></section>
{body}
<footer>Methods. When answers are clustered (the header says by what), every interval and
test is cluster-robust: rates use the Korn–Graubard effective-sample-size Wilson interval,
persona minus persona-free differences a MOVER interval from the clustered arms, the
regression CR1 standard errors and a cluster-robust Wald F test per factor (F = W/q on
(q, clusters − 1) df), the W2 bootstrap resamples whole items and its permutation null
permutes labels at item level (or within item for inputs that vary within item). Without
clustering: Wilson intervals, Newcombe differences, likelihood-ratio tests. Regression:
logistic regression on collapsed covariate patterns, Firth-penalised by default — the
section's note states the penalty, standard errors and interval method used. W2 indices:
exact empirical Wasserstein-2 index (Borgonovo, Figalli, Plischke &amp; Savaré 2024) with
bootstrap intervals and a permutation null. Calibration of each: docs/validity.md. Hierarchical model:
Bayesian logistic model with random intercepts (PyMC / nutpie), highest-density intervals.
Reference design: Plaza-del-Arco et al. (2025), "No for Some, Yes for Others".</footer>
</main>
</body>
</html>
"""
