"""The result of :func:`~refusalstats.w2_sensitivity`: table, intervals, summary, plot."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._summary import Summary
from .._validation import check_conf

TABLE_COLUMNS = [
    "input", "n_partitions", "xi", "iota", "ci_low", "ci_high",
    "null_mean", "null_q95", "iota_corrected", "p_value", "distinguishable", "note",
]

_SCHEME_WORDS = {
    "rows": "",
    "items": "; labels permuted across items",
    "within items": "; labels permuted within items",
}



@dataclass
class W2SensitivityResult:
    """Result of :func:`w2_sensitivity`.

    Attributes
    ----------
    table : DataFrame
        One row per input: ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean,
        null_q95, iota_corrected, p_value, distinguishable, note``.
    output, output_kind : str
        The output column(s) and how they were treated (``binary``: two values; ``ordinal``: a
        1-d output with at most 256 distinct values; both handled as a contingency table;
        ``continuous``: sorted rows; ``nominal``: one-hot labels; ``multivariate``).
    n : int
        Rows used (all of them).
    conf, ci_method : float, str
        Confidence level and interval type of ``ci_low``/``ci_high``.
    boot, null : dict of str -> ndarray
        Bootstrap and permutation replicates of iota, per input.
    partitions : dict of str -> list
        The partition labels per input (levels, or value ranges of rank bins).
    cluster, n_clusters : str or None, int or None
        The clustering used (``None``: rows independent) and the number of clusters.
    bootstrap : str
        The ``bootstrap=`` argument; ``boot_scheme`` says per input what was resampled
        (``rows``, ``rows within partitions``, ``items``, ``items within levels``).
    null_scheme : dict of str -> str
        Per input, what the permutation null permuted: ``rows``, ``items`` (labels moved
        across items) or ``within items``.
    notes : list of str
        One line per input that is not distinguishable from its permutation null or whose
        estimate lies outside its own CI.
    few_items : list of str
        Inputs whose interval rests on fewer than 10 effective items (Kish's effective
        number of clusters; for an item-level input, in its level with the fewest): their
        intervals may be too narrow (a warning and a note say so; the report too).
    units : dict of str -> (float, float)
        Per input, ``(G, df)`` of the expanded interval (:func:`.intervals.expansion`): the
        fewest resampling units in a bootstrap stratum and the effective units less the
        strata.
    se, boot_se : dict of str -> float, dict of str -> ndarray
        With ``ci="studentized"``: per input, the linearization standard error of iota and
        that of every bootstrap replicate (empty otherwise).
    """

    table: pd.DataFrame
    output: str
    output_kind: str
    n: int
    conf: float
    ci_method: str
    boot: dict[str, np.ndarray]
    null: dict[str, np.ndarray]
    partitions: dict[str, list]
    cluster: str | None = None
    n_clusters: int | None = None
    bootstrap: str = "auto"
    boot_scheme: dict[str, str] = field(default_factory=dict)
    null_scheme: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    few_items: list[str] = field(default_factory=list)
    units: dict[str, tuple[float, float]] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)
    boot_se: dict[str, np.ndarray] = field(default_factory=dict)

    def _header(self) -> str:
        by = (f", clustered by {self.cluster!r} ({self.n_clusters:,} clusters)"
              if self.cluster else ", rows independent")
        return (f"W2SensitivityResult(output={self.output!r} [{self.output_kind}], n={self.n:,}, "
                f"{self.conf:.0%} {self.ci_method} CIs, bootstrap={self.bootstrap!r}{by})")

    def __repr__(self) -> str:
        # a few lines: the header and iota per input (the full table is .to_frame())
        tab = self.table
        per = ", ".join(f"{r.input} {r.iota:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]"
                        for r in tab.head(6).itertuples())
        more = f", ... ({len(tab)} inputs)" if len(tab) > 6 else ""
        return f"{self._header()}\n  iota: {per}{more}"

    def to_frame(self) -> pd.DataFrame:
        """The tidy table, one row per input (a copy of :attr:`table`).

        Returns
        -------
        DataFrame
            ``input, n_partitions, xi, iota, ci_low, ci_high, null_mean, null_q95,
            iota_corrected, p_value, distinguishable, note``.
        """
        return self.table.copy()

    def conf_int(self, conf: float | None = None, ci: str | None = None) -> pd.DataFrame:
        """Intervals for iota per input (``ci_low``, ``ci_high``, index ``input``).

        Parameters
        ----------
        conf : float, optional
            Interval level; default the fit's ``conf``.
        ci : {"expanded", "percentile", "bc", "studentized", "bca"}, optional
            Interval type; default the fit's ``ci_method``. Expanded, percentile and
            bias-corrected (``bc``) intervals at any level come from the stored bootstrap
            replicates,
            studentized ones from the stored replicates and standard errors of a fit with
            ``ci="studentized"``; BCa intervals only at the fitted level and type (rerun
            :func:`w2_sensitivity` with ``conf=``, ``ci=``).

        Returns
        -------
        DataFrame
            ``attrs["interval"]`` names the interval (e.g. ``"95% percentile bootstrap"``).
        """
        from .intervals import (
            bc_interval,
            expanded_interval,
            expansion,
            percentile_interval,
            studentized_interval,
        )

        conf = self.conf if conf is None else check_conf(conf)
        ci = self.ci_method if ci is None else ci
        if ci not in ("expanded", "percentile", "bc", "studentized", "bca"):
            raise ValueError("ci must be 'expanded', 'percentile', 'bc', 'studentized' or "
                             f"'bca', got {ci!r}")
        if conf == self.conf and ci == self.ci_method:
            out = self.table.set_index("input")[["ci_low", "ci_high"]].copy()
        elif ci == "bca" or (ci == "studentized" and not self.boot_se):
            raise ValueError(
                f"conf_int(conf={conf}, ci={ci!r}): these intervals need what only a fit with "
                f"ci={ci!r} keeps (the jackknife; the replicates' standard errors); rerun "
                f"w2_sensitivity(..., conf={conf}, ci={ci!r})")
        else:
            rows = {}
            for name, iota in zip(self.table["input"], self.table["iota"]):
                b = np.asarray(self.boot.get(name, []), float)
                ok = np.isfinite(b)
                got = None
                if ok.any() and ci == "expanded":
                    got = expanded_interval(b[ok], conf, expansion(*self.units[name], conf))
                elif ok.any() and ci == "bc":
                    got = bc_interval(float(iota), b[ok], conf)
                elif ok.any() and ci == "studentized":
                    got = studentized_interval(float(iota), self.se[name], b[ok],
                                               self.boot_se[name][ok], conf)
                    got = None if got is None else (max(got[0], 0.0), min(got[1], 1.0))
                if got is None and ok.any():
                    got = percentile_interval(b[ok], conf)
                rows[name] = got if got is not None else (np.nan, np.nan)
            out = pd.DataFrame.from_dict(rows, orient="index", columns=["ci_low", "ci_high"])
            out.index.name = "input"
        out.attrs["interval"] = f"{100 * conf:g}% {ci} bootstrap"
        return out

    def summary(self) -> Summary:
        """The result as text (header, table, notes) and, in notebooks, an HTML table.

        Returns
        -------
        Summary
            A string that prints as text and renders as HTML (``_repr_html_``).
        """
        tab = self.table.drop(columns="note")
        text = self._header() + "\n" + tab.to_string(index=False) + "".join(
            f"\nnote: {t}" for t in self.notes)
        return Summary(f"W2 sensitivity of {self.output!r}", text, tab, notes=self.notes)

    def plot(self, ax=None, sort: bool = False):
        """Bar chart of iota per input with CI whiskers and the permutation-null band.

        Draws with :func:`refusalstats.plot.w2` (the one home of the figures): an input not
        distinguishable from its permutation null (``distinguishable`` False) gets a grey,
        hatched bar marked "~ null"; an estimate outside its own CI is marked with a
        dagger, explained under the axes; the legend names this result's interval.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw into this axes; a new Figure is created otherwise.
        sort : bool
            Order the bars by decreasing iota (default: the order of ``inputs``).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from ..plot import w2

        return w2(self, ax=ax, sort=sort,
                  title=f"W2 sensitivity of {self.output} (N = {self.n:,})")
