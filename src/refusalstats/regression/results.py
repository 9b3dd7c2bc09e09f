"""The fitted model: :class:`LogitResults` (tables, R-style summary, tests, prediction)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from .._summary import Summary
from .._validation import check_conf
from ..formula import FormulaError, new_design
from ..multiplicity import adjust_pvalues
from .covariance import _cluster_cov, _ClusterCov, _cr1_many, _StreamedCluster, _t_quantile
from .firth import _firth
from .irls import _irls
from .likelihood import _loglik
from .linalg import _inv_spd, _single_blas, _xtwx


def _signif(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, code in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return code
    return ""


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "NA"
    if p < 2e-16:
        return "<2e-16"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"


@dataclass(eq=False, repr=False)
class LogitResults:
    """A fitted logistic regression: estimates, uncertainty and tests, R style.

    Attributes
    ----------
    params, bse, zvalues, pvalues : Series
        Estimates, standard errors, Wald z statistics and p-values by term name
        (``statistic`` is the one behind the p-value: z, or Firth's penalized LR
        chi-square; ridge / lasso / elastic net have no p-values).
    p_method : str
        "wald", "plr" (penalized likelihood ratio) or "none".
    loglik, loglik_null, deviance, null_deviance, aic, bic : float
        Log-likelihood (unpenalized; R's, with binomial constants for ``trials=``
        input), of the null model, deviances and information criteria as R.
    pseudo_r2 : float
        McFadden's ``1 - l(b) / l_0`` on the row-level Bernoulli log-likelihood
        (unpenalized, at the fitted coefficients; ``l_0`` intercept-only): the same for
        rows and ``trials=`` input, in [0, 1] (a Firth fit below the null reports 0 and a note).
    iterations : int
        Newton / Fisher scoring iterations of the fit.
    separation : list of str
        Separated levels or cells found after the fit (empty when none).
    reference : dict
        Reference level of every factor (treatment coding).
    """

    model: Any                   # the LogitModel it was fitted from
    formula: str
    penalty: str | None
    alpha: float | None
    l1_ratio: float | None
    cluster: str | None
    conf: float
    params: pd.Series
    bse: pd.Series
    pvalues: pd.Series
    _ci: pd.DataFrame
    _cov: np.ndarray
    _cov_cluster: np.ndarray | None
    cov_type: str
    ci_method: str
    p_method: str                # "wald", "wald-t", "plr" or "none"
    _ccov: Any                   # covariance._ClusterCov or None
    df: pd.Series                # degrees of freedom of each coefficient's t (inf: z)
    vcov: str | None             # "CR2", "CR3", "CR2-glm", "CR1", "CR1-2way", "GEE-MD" or None
    _stat: np.ndarray
    loglik: float
    loglik_null: float
    deviance: float
    null_deviance: float
    aic: float
    bic: float
    pseudo_r2: float
    penalized_loglik: float
    df_resid: int
    df_null: int
    iterations: int
    converged: bool
    n_obs: int
    n_patterns: int
    n_clusters: int
    separation: list[str]
    separated_terms: list[str]
    reference: dict
    levels: dict
    notes: list[str]
    cv: pd.DataFrame | None
    boot: np.ndarray | None
    _design: Any
    _term_of: dict
    _ll_const: float
    _call_extra: str
    _opts: dict

    # -------------------------------------------------------------- basics
    def __repr__(self) -> str:
        clus = f", {self.n_clusters:,} clusters of '{self.cluster}'" if self.cluster else ""
        return (f"<LogitResults {self.formula!r}\n"
                f"  {len(self.params)} coefficients, penalty={self.penalty}, tests: {self.p_method}\n"
                f"  {self.n_obs:,} rows in {self.n_patterns:,} patterns{clus}\n"
                f"  intervals: {self.ci_method}>")

    def to_frame(self) -> pd.DataFrame:
        """The tidy coefficient table (:meth:`coef_table` without adjustment).

        Returns
        -------
        DataFrame
            ``term, estimate, std_error``, the statistic, ``p_value``, ``ci_low``, ``ci_high``,
            odds ratios and ``separated``.
        """
        return self.coef_table()

    @property
    def zvalues(self) -> pd.Series:
        """Wald z = estimate / SE (NaN for ridge / lasso / elastic net: no test holds there).

        Returns
        -------
        Series
            One z per coefficient, named ``z``, indexed by ``term``.
        """
        if self.p_method == "none":
            return pd.Series(np.nan, index=self.params.index, name="z")
        return (self.params / self.bse).rename("z")

    @property
    def statistic(self) -> pd.Series:
        """The statistic behind each p-value: Wald z (``p_method="wald"``), the penalized
        likelihood-ratio chi-square on 1 df (``"plr"``, Firth without clusters), or NaN.

        Returns
        -------
        Series
            One value per coefficient, named ``z``, ``chisq`` or ``statistic``.
        """
        return pd.Series(self._stat, index=self.params.index, name=self._stat_column or "statistic")

    @property
    def _stat_column(self) -> str | None:
        return {"wald": "z", "wald-t": "t", "plr": "chisq"}.get(self.p_method)

    @property
    def _p_test(self) -> str:
        if self.p_method == "plr":
            return "penalized likelihood-ratio chi-square (1 df), as logistf"
        if self.p_method == "wald-t":
            return self._ccov.test_label() + f" by '{self.cluster}'"
        if self.p_method == "wald":
            return "Wald z" + (f" with the CR1 covariance by '{self.cluster}'" if self.cluster else "")
        return "none (penalized estimates have no frequentist test)"

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the estimates (model based or cluster-robust).

        Returns
        -------
        DataFrame
            Coefficients x coefficients: the inverse Fisher information, or the CR1
            sandwich with ``cluster=`` (for a Parquet source, from the streamed cluster
            score sums); NaN rows and columns for separated terms.
        """
        return pd.DataFrame(self._cov, index=self.params.index, columns=self.params.index)

    def _contrast_df(self, C: np.ndarray) -> np.ndarray:
        """Degrees of freedom of the t statistic of each row of ``C`` (inf: normal)."""
        C = np.atleast_2d(C)
        if self._ccov is None or not self._ccov.t_tests or self.p_method == "none":
            return np.full(len(C), np.inf)
        eng = self._ccov.engine
        if eng is not None and not eng.exact and len(C) > 4 * C.shape[1]:
            # large design, many rows: each row's df costs a pass over the (cluster, pattern)
            # pairs; they are all in the thousands there, so the smallest coefficient df is used
            return np.full(len(C), float(np.nanmin(self.df.to_numpy())))
        with np.errstate(invalid="ignore"):
            return self._ccov.df(C)

    def conf_int(self, conf: float | None = None) -> pd.DataFrame:
        """Intervals for the coefficients (columns ``ci_low``, ``ci_high``, index ``term``).

        Parameters
        ----------
        conf : float, optional
            Interval level; default the fit's ``conf``. Wald (and ridge posterior) intervals
            are recomputed from the estimates and standard errors; profile and bootstrap
            intervals at another level refit the model with that level (same seed).

        Returns
        -------
        DataFrame
            ``ci_low``, ``ci_high``; ``attrs["interval"]`` names the method and level.
        """
        conf = self.conf if conf is None else check_conf(conf)
        if conf == self.conf:
            out = self._ci.copy()
            method = self.ci_method
        elif self._opts["ci"] == "wald" or self._opts["ci"] == "none":
            zq = _t_quantile(conf, self.df.to_numpy())
            b, se = self.params.to_numpy(), self.bse.to_numpy()
            if self._opts["ci"] == "none":
                se = np.full_like(b, np.nan)
            out = pd.DataFrame({"ci_low": b - zq * se, "ci_high": b + zq * se}, index=self.params.index)
            method = self.ci_method.replace(f"{100 * self.conf:g}%", f"{100 * conf:g}%")
        else:  # the same estimator at another level, through the fit's model (no import cycle)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refit = self.model._fit_design(self._design, {**self._opts, "conf": conf, "progress": False})
            out, method = refit._ci.copy(), refit.ci_method
        out.attrs["interval"] = method
        return out

    def _no_tests(self, what: str) -> ValueError:
        name = {"l2": "ridge", "l1": "lasso", "elasticnet": "elastic net"}.get(self.penalty, self.penalty)
        return ValueError(
            f"{what}: penalty={self.penalty!r} ({name}) gives no p-values or tests — a penalized estimate "
            "is biased toward 0 and has no valid frequentist null distribution. Refit with penalty=None "
            "or penalty='firth' for tests; the intervals here are "
            + ("posterior / sandwich intervals of the shrunken estimate" if self.penalty == "l2"
               else "bootstrap intervals (ci='bootstrap') or none")
        )

    def coef_table(self, adjust: str | None = None, family: str = "term") -> pd.DataFrame:
        """Coefficient table with CIs and odds ratios.

        Columns ``term, estimate, std_error``, the test statistic (``z`` for Wald tests,
        ``chisq`` for Firth's penalized likelihood-ratio tests), ``p_value``, ``ci_low``,
        ``ci_high``, odds ratios and ``separated``; ``attrs["test"]`` names the test.
        Ridge / lasso / elastic-net fits have no statistic or p-value columns.

        Parameters
        ----------
        adjust : {"holm", "bh"}, optional
            Adjust p-values within families of coefficients (column ``p_adjusted``).
        family : {"term", "all"}
            A family is each formula term's coefficients (e.g. all persona levels), or
            all coefficients but the intercept.

        Returns
        -------
        DataFrame
            One row per coefficient, the columns above (``p_adjusted`` with ``adjust``);
            ``attrs["test"]`` and ``attrs["intervals"]`` name the test and the intervals.

        Examples
        --------
        >>> fit.coef_table(adjust="holm")  # doctest: +SKIP
        """
        if family not in ("term", "all"):
            raise ValueError(f"family must be 'term' or 'all', got {family!r}")
        if adjust is not None and self.p_method == "none":
            raise self._no_tests("coef_table(adjust=...)")
        ci = self._ci
        cols = {"term": self.params.index, "estimate": self.params.to_numpy(),
                "std_error": self.bse.to_numpy()}
        if self._stat_column is not None:
            cols[self._stat_column] = np.asarray(self._stat, float)
            if self.p_method == "wald-t":
                cols["df"] = self.df.to_numpy()
            cols["p_value"] = self.pvalues.to_numpy()
        cols.update({"ci_low": ci["ci_low"].to_numpy(), "ci_high": ci["ci_high"].to_numpy()})
        tab = pd.DataFrame(cols)
        tab["odds_ratio"] = np.exp(tab["estimate"])
        tab["or_ci_low"] = np.exp(tab["ci_low"])
        tab["or_ci_high"] = np.exp(tab["ci_high"])
        tab["separated"] = tab["term"].isin(self.separated_terms)
        if adjust is not None:
            padj = np.full(len(tab), np.nan)
            groups = self._term_of if family == "term" else {nm: "all" for nm in tab["term"]}
            fam = tab["term"].map(groups)
            for key in fam.dropna().unique():
                if key == "1":
                    continue
                m = (fam == key).to_numpy() & (tab["term"] != "Intercept").to_numpy()
                padj[m] = adjust_pvalues(tab["p_value"].to_numpy()[m], adjust)
            tab["p_adjusted"] = padj
        tab.attrs["test"] = self._p_test
        tab.attrs["intervals"] = self.ci_method
        return tab

    @property
    def odds_ratios(self) -> pd.Series:
        """Odds ratios ``exp(estimate)``.

        Returns
        -------
        Series
            One odds ratio per coefficient, indexed by ``term``.
        """
        return np.exp(self.params)

    # -------------------------------------------------------------- summary
    def summary(self) -> Summary:
        """The fit printed like R's ``summary(glm(..., family = binomial))``.

        Returns a :class:`~refusalstats._summary.Summary`: a string that prints as the R-style
        text and renders as an HTML coefficient table in notebooks.

        The statistic column is the one behind the p-value: ``z value`` for Wald tests,
        ``Chisq`` (with ``Pr(>Chisq)``) for Firth's penalized likelihood-ratio tests, as
        logistf prints them; ridge / lasso / elastic net show neither (nor stars).

        Returns
        -------
        Summary
            Prints as text, renders as HTML; its table is :meth:`coef_table`.
        """
        tab = self.coef_table()
        testing = self._stat_column is not None

        def num(v, f):
            return "NA" if not np.isfinite(v) else format(v, f)

        pct = f"{100 * self.conf:g}%"
        cols = [("", list(tab["term"]), "l"), ("Estimate", [f"{v:.5g}" for v in tab["estimate"]], "r"),
                ("Std. Error", [num(v, ".5g") for v in tab["std_error"]], "r")]
        if testing:
            if self.p_method == "plr":
                cols += [("Chisq", [num(v, ".3f") for v in tab["chisq"]], "r"),
                         ("Pr(>Chisq)", [_fmt_p(v) for v in tab["p_value"]], "r")]
            elif self.p_method == "wald-t":
                cols += [("t value", [num(v, ".3f") for v in tab["t"]], "r"),
                         ("df", [num(v, ".1f") for v in tab["df"]], "r"),
                         ("Pr(>|t|)", [_fmt_p(v) for v in tab["p_value"]], "r")]
            else:
                cols += [("z value", [num(v, ".3f") for v in tab["z"]], "r"),
                         ("Pr(>|z|)", [_fmt_p(v) for v in tab["p_value"]], "r")]
            codes = [_signif(v) + (" (sep)" if sep else "") for v, sep in zip(tab["p_value"], tab["separated"])]
        else:
            codes = [("(sep)" if sep else "") for sep in tab["separated"]]
        cols.append(("", codes, "l"))
        cols += [(f"{pct} low", [num(v, ".4g") for v in tab["ci_low"]], "r"),
                 (f"{pct} high", [num(v, ".4g") for v in tab["ci_high"]], "r")]
        widths = [max(len(h), *(len(str(x)) for x in vals)) for h, vals, _ in cols]

        def fmt(cells):
            return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                             for c, w, (_, _, a) in zip(cells, widths, cols)).rstrip()

        lines = ["", "Call:", f"logit(formula = {self.formula!r}{self._call_extra})", ""]
        if self.penalty is None:
            pen = "none (maximum likelihood)"
        elif self.penalty == "firth":
            pen = "Firth (Jeffreys prior)"
        else:
            pen = {"l2": "ridge", "l1": "lasso", "elasticnet": "elastic net"}[self.penalty]
            pen += f", alpha = {self.alpha:.4g}" + (f", l1_ratio = {self.l1_ratio:g}"
                                                    if self.penalty == "elasticnet" else "")
        lines.append(f"Penalty: {pen}")
        lines.append(f"Standard errors: {self.cov_type}; intervals: {self.ci_method}")
        lines.append(f"Tests: {self._p_test}")
        lines += ["", "Coefficients:", fmt([h for h, _, _ in cols])]
        lines += [fmt([vals[i] for _, vals, _ in cols]) for i in range(len(tab))]
        if testing:
            lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
        else:
            lines += ["---", ("No p-values: a penalized estimate is biased toward 0 and has no valid "
                              "frequentist test (refit with penalty=None or 'firth' for tests).")]
        lines += ["", "(Dispersion parameter for binomial family taken to be 1)", "",
                  f"    Null deviance: {self.null_deviance:.{_dp(self.null_deviance)}f}  on {self.df_null}  degrees of freedom",
                  f"Residual deviance: {self.deviance:.{_dp(self.deviance)}f}  on {self.df_resid}  degrees of freedom",
                  (f"AIC: {self.aic:.{_dp(self.aic)}f}   BIC: {self.bic:.{_dp(self.bic)}f}   "
                  f"McFadden pseudo-R2: {self.pseudo_r2:.4f}")]
        if self.penalty == "firth":
            lines.append(f"Penalized log-likelihood: {self.penalized_loglik:.4f} (deviance/AIC use the "
                         "unpenalized log-likelihood)")
        lines += ["", (f"Number of {'Fisher Scoring' if self.penalty is None else 'Newton'} iterations: "
                  f"{self.iterations}{'' if self.converged else ' (did NOT converge)'}"),
                  f"{self.n_obs:,} rows in {self.n_patterns:,} covariate patterns"
                  + (f"; {self.n_clusters:,} clusters of '{self.cluster}'" if self.cluster else "")]
        if self.separation:
            lines += ["", "Separation (the maximum likelihood estimate does not exist for the terms "
                      "marked 'sep'):" if self.penalty is None else
                      "Separation in the data (the penalty keeps the estimates finite):"]
            lines += [f"  - {t}" for t in self.separation]
            if self.penalty is None:
                lines.append("  Their estimates are where the fit stopped, not estimates; refit with "
                             "penalty='firth' (or 'l2') for finite values.")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return Summary(f"Logistic regression: {self.formula}", "\n".join(lines) + "\n", tab,
                       notes=[f"Tests: {self._p_test}", f"Intervals: {self.ci_method}", *self.notes])

    # -------------------------------------------------------------- tests
    def _refit_dropping(self, cols: list[int]) -> tuple[float, int]:
        """Log-likelihood (penalized for Firth) with columns ``cols`` removed/fixed at 0."""
        d = self._design
        if self.penalty == "firth":
            beta0 = self.params.to_numpy().copy()
            beta0[cols] = 0.0
            _, _, _, pll = _firth(d.Xf, d.s, d.n, beta0=beta0, fixed={c: 0.0 for c in cols})
            return pll, len(cols)
        keep = [j for j in range(d.X.shape[1]) if j not in set(cols)]
        Xr = d.Xf[:, keep]
        if Xr.shape[1] == 0:
            return _loglik(np.zeros(len(d.s)), d.s, d.n), len(cols)
        beta, _, _ = _irls(Xr, d.s, d.n, dev_sat=d.dev_sat, start=d.start)
        return _loglik(Xr @ beta, d.s, d.n), len(cols)

    def _check_tests(self, what: str):
        if self.penalty not in (None, "firth"):
            raise self._no_tests(what)

    def _wald_label(self) -> str:
        cc = self._ccov
        if cc.kind == "GEE-MD":
            return (f"robust Wald F by '{self.cluster}' (GEE exchangeable, Mancl-DeRouen covariance; F = W/q "
                    f"on (q, G - p) = (q, {int(cc.df_resid)}) df)")
        if cc.kind in ("CR2", "CR3", "CR2-glm"):
            return (f"cluster-robust HTZ Wald test by '{self.cluster}' ({cc.kind} covariance; Hotelling's T^2 "
                    f"with Zhang's degrees of freedom, Pustejovsky & Tipton 2018; G = {cc.n_clusters} clusters)")
        if cc.kind == "CR1-2way":
            G = min(cc.sizes)
            return (f"two-way cluster-robust Wald F by {self.cluster!r} (CGM 2011 covariance, F = W/q on "
                    f"(q, min(G) - 1) = (q, {G - 1}) df)")
        G = cc.n_clusters
        return (f"cluster-robust Wald F by '{self.cluster}' (CR1 covariance, F = W/q on (q, G-1) = "
                f"(q, {G - 1}) df, G = {G} clusters)")

    def _cluster_test(self, term: str, cols: list[int], beta: np.ndarray, V: np.ndarray,
                      separated: bool, ccov=None) -> dict:
        """Cluster-robust test of the coefficients ``cols`` of a fit with ``beta``, ``V``."""
        ccov = self._ccov if ccov is None else ccov
        if separated:
            return {"term": term, "df": float(len(cols)), "df_resid": np.nan, "F": np.nan,
                    "p_value": np.nan, "note": "separated coefficient(s): the maximum likelihood estimate "
                    "does not exist, so no Wald test; refit with penalty='firth'"}
        C = np.zeros((len(cols), len(beta)))
        C[np.arange(len(cols)), cols] = 1.0
        return {"term": term, **ccov.wald(C, beta, V)}

    def _cluster_frame(self, rows: list[dict]) -> pd.DataFrame:
        out = pd.DataFrame(rows, columns=["term", "df", "df_resid", "F", "p_value", "note"])
        out.attrs["test"] = self._wald_label()
        return out

    @_single_blas
    def drop1(self) -> pd.DataFrame:
        """Test of each term as a whole, dropped from the full model (marginality respected).

        * Unclustered maximum likelihood: R's ``drop1(fit, test = "LRT")``; columns
          ``term, df, deviance, lr, p_value``.
        * Unclustered Firth: the penalized likelihood ratio with the full model's penalty
          (logistf's ``drop1``); same columns (``deviance`` NaN).
        * Clustered (``cluster=``): the likelihood ratio assumes independent rows and is
          not shown. Each term gets the cluster-robust Wald test
          ``W = b' V_CR1^-1 b`` with ``F = W / q`` on ``(q, G - 1)`` df (Cameron & Miller
          2015; Stata's ``test`` after ``vce(cluster)``); columns
          ``term, df, df_resid, F, p_value, note``. A singular CR1 block is inverted by
          pseudo-inverse with ``q`` its rank (noted); with ``q > G - 1`` the test is not
          available (NaN, noted).

        ``attrs["test"]`` names the test. Ridge / lasso / elastic net: no tests (error).

        Returns
        -------
        DataFrame
            One row per term that can be dropped, with the columns above.

        Examples
        --------
        >>> fit.drop1()  # doctest: +SKIP
        """
        self._check_tests("drop1()")
        d = self._design
        terms = [t for t in d.term_columns if t != "1"]
        kept = [t for t in terms if not any(u != t and set(d.term_factors[t]) < set(d.term_factors[u])
                                            for u in terms)]
        if self.cluster is not None:
            beta = self.params.to_numpy()
            V = self._cov_cluster
            sep = {self.params.index.get_loc(nm) for nm in self.separated_terms} if self.penalty is None \
                else set()
            return self._cluster_frame([
                self._cluster_test(t, d.term_columns[t], beta, V, bool(sep & set(d.term_columns[t])))
                for t in kept])
        full = self.penalized_loglik if self.penalty == "firth" else self.loglik - self._ll_const
        out = []
        for t in kept:
            ll, df_ = self._refit_dropping(d.term_columns[t])
            lr = max(2.0 * (full - ll), 0.0)
            out.append({"term": t, "df": df_, "deviance": 2.0 * (d.dev_sat - ll) if self.penalty is None else np.nan,
                        "lr": lr, "p_value": float(stats.chi2.sf(lr, df_))})
        res = pd.DataFrame(out, columns=["term", "df", "deviance", "lr", "p_value"])
        res.attrs["test"] = ("penalized likelihood ratio (chi-square), full model's penalty" if self.penalty
                             == "firth" else "likelihood ratio (chi-square), as R's drop1(test = 'LRT')")
        return res

    @_single_blas
    def anova(self) -> pd.DataFrame:
        """Sequential tests: terms added in formula order, each given those before it.

        * Unclustered maximum likelihood: R's ``anova(fit, test = "Chisq")``; columns
          ``term, df, deviance, resid_df, resid_dev, p_value`` with a ``NULL`` first row.
        * Unclustered Firth: each row is the penalized likelihood ratio of fixing that
          term's coefficients (and those of later terms) at zero.
        * Clustered: row ``k`` fits the model with the first ``k`` terms (same estimator)
          and gives the cluster-robust Wald F test of term ``k`` in it, as :meth:`drop1`
          (columns ``term, df, df_resid, F, p_value, note``). No likelihood ratio is shown.
          For a fit from a Parquet source too large for CR2 (streamed CR1) the sub-models'
          CR1 covariances come from one more streaming pass over the rows, all at once.

        ``attrs["test"]`` names the test. Ridge / lasso / elastic net: no tests (error).

        Returns
        -------
        DataFrame
            One row per term in formula order (after a ``NULL`` row when unclustered).
        """
        self._check_tests("anova()")
        d = self._design
        terms = list(d.term_columns)
        has_int = "1" in terms
        order = [t for t in terms if t != "1"]
        if self.cluster is not None:
            return self._cluster_frame(self._sequential_wald(order, has_int))
        rows = []
        prev_ll = None
        prev_df = None
        for k in range(len(order) + 1):
            incl = (["1"] if has_int else []) + order[:k]
            cols = [c for t in incl for c in d.term_columns[t]]
            drop = [j for j in range(d.X.shape[1]) if j not in set(cols)]
            if drop:
                ll, _ = self._refit_dropping(drop)
            else:
                ll = self.penalized_loglik if self.penalty == "firth" else self.loglik - self._ll_const
            dev = 2.0 * (d.dev_sat - ll)
            df_resid = self.n_obs - len(cols)
            if k == 0:
                rows.append({"term": "NULL", "df": np.nan, "deviance": np.nan, "resid_df": df_resid,
                             "resid_dev": dev, "p_value": np.nan})
            else:
                lr = max(2.0 * (ll - prev_ll), 0.0)
                dfk = prev_df - df_resid
                rows.append({"term": order[k - 1], "df": dfk, "deviance": lr, "resid_df": df_resid,
                             "resid_dev": dev, "p_value": float(stats.chi2.sf(lr, dfk))})
            prev_ll, prev_df = ll, df_resid
        res = pd.DataFrame(rows)
        res.attrs["test"] = ("penalized likelihood ratio (chi-square), full model's penalty" if self.penalty
                             == "firth" else "likelihood ratio (chi-square), as R's anova(test = 'Chisq')")
        return res

    def _sequential_wald(self, order: list[str], has_int: bool) -> list[dict]:
        """Cluster-robust Wald F of each term in the model of the terms up to it."""
        d = self._design
        cl = d.cluster
        sep_full = {self.params.index.get_loc(nm) for nm in self.separated_terms} if self.penalty is None \
            else set()
        sub = []  # the sub-models' fits, then their CR1 covariances in one go
        beta_prev = None
        for k in range(1, len(order)):
            incl = (["1"] if has_int else []) + order[:k]
            cols = [c for t in incl for c in d.term_columns[t]]
            Xs = d.X[:, cols]
            Xsf = d.Xf[:, cols]
            start = None if beta_prev is None else np.append(beta_prev, np.zeros(len(cols) - len(beta_prev)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.penalty == "firth":
                    bs, _, _, _ = _firth(Xsf, d.s, d.n, beta0=start)
                else:
                    bs, _, _ = _irls(Xsf, d.s, d.n, dev_sat=d.dev_sat, start=d.start,
                                     eps=self._opts["epsilon"], maxit=self._opts["maxit"])
            beta_prev = bs
            mu = expit(Xs @ bs)
            sub.append((bs, _inv_spd(_xtwx(Xsf, d.n * mu * (1 - mu))), cols))
        n_obs = round(float(d.n.sum()))
        if self._ccov.kind == "GEE-MD":  # each sub-model by GEE too
            from .gee import _gee_exchangeable

            covs, refit = [], []
            for bs, bread, cols in sub:
                g = _gee_exchangeable(d.X[:, cols], d.Xf[:, cols], cl, bs)
                refit.append((g["beta"], bread, cols))
                covs.append(_ClusterCov("GEE-MD", g["cov"], g["n_clusters"], rho=g["rho"],
                                        df_resid=g["n_clusters"] - len(cols)))
            sub = refit
        elif isinstance(cl, _StreamedCluster) or self._ccov.kind == "CR1":
            # CR1 of every sub-model (for a streamed source: all in one pass over the rows)
            covs = [_ClusterCov("CR1", V, self._ccov.n_clusters)
                    for V in (_cr1_many(d.X, cl, sub, n_obs) if sub else [])]
        else:
            covs = [_cluster_cov(d.X[:, cols], d.Xf[:, cols], cl, bs, bread, n_obs, self.penalty,
                                 self._ccov.kind)[0]  # the full fit's CR2 / CR3
                    for bs, bread, cols in sub]
        rows = []
        for k in range(1, len(order) + 1):
            tested = d.term_columns[order[k - 1]]
            if k == len(order):
                b_t, V_t, cc, pos = self.params.to_numpy(), self._cov_cluster, self._ccov, tested
            else:
                bs, _, cols = sub[k - 1]
                pos = [cols.index(c) for c in tested]
                b_t, V_t, cc = bs, covs[k - 1].V, covs[k - 1]
            rows.append(self._cluster_test(order[k - 1], pos, b_t, V_t, bool(sep_full & set(tested)), cc))
        return rows

    # -------------------------------------------------------------- prediction
    def _new_X(self, newdata: pd.DataFrame) -> np.ndarray:
        d = self._design
        missing = [v for v in d.variables if v not in newdata.columns]
        if missing:
            raise FormulaError(f"newdata lacks column(s) {missing} used by {self.formula!r}")
        nd = newdata[d.variables].copy()
        for v, levels in d.factors.items():
            vals = nd[v]
            known = pd.Index(levels)
            as_str = {str(x): x for x in levels}
            mapped = vals.map(lambda x, _k=known, _s=as_str: x if x in _k else _s.get(str(x), x))
            bad = ~mapped.isin(known)
            if bad.any():
                raise ValueError(
                    f"column '{v}' of newdata has level(s) {pd.unique(mapped[bad]).tolist()[:5]} the model "
                    f"was not fitted on; fitted levels: {levels}"
                )
            nd[v] = pd.Categorical(mapped, categories=levels)
        if nd.isna().any().any():
            raise ValueError("newdata has missing values in the model's columns")
        return new_design(d.spec, nd)

    def predict(self, newdata: pd.DataFrame | None = None, *, conf: float | None = None,
                type: str = "response") -> np.ndarray | pd.DataFrame:
        """Predicted refusal probability (or log-odds), with a Wald interval on request.

        The same signature as :meth:`refusalstats.HierarchicalResult.predict`. New data
        reuse the fitted factor levels; an unknown level is an error.

        Parameters
        ----------
        newdata : DataFrame, optional
            Rows to predict; default the fitted rows (one value per input row, NaN for
            rows with weight 0).
        conf : float, optional
            Without it, point predictions only; with it, also a Wald interval of level
            ``conf``: ``eta +- z se(eta)`` on the log-odds scale with ``se(eta)^2 = x' V x``
            and ``V`` the fit's covariance (cluster-robust CR1 when the fit has
            ``cluster=``), mapped to probabilities for ``type="response"``. Lasso and
            elastic-net fits have no valid Wald interval: a ``ValueError``.
        type : {"response", "link"}
            Probability (default) or log-odds.

        Returns
        -------
        ndarray or DataFrame
            Without ``conf``: a 1-D array. With ``conf``: a DataFrame with ``prediction``,
            ``ci_low``, ``ci_high`` (``attrs["interval"]`` names them), indexed like
            ``newdata``.

        Examples
        --------
        >>> fit.predict(pd.DataFrame({"persona": ["Man"], "task": ["nli"], ...}), conf=0.95)  # doctest: +SKIP
        """
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        if conf is not None:
            conf = check_conf(conf)
            if self.penalty in ("l1", "elasticnet"):
                raise ValueError(f"predict(conf=...): a penalty={self.penalty!r} fit has no valid Wald "
                                 "interval; refit with penalty=None, 'firth' or 'l2', or bootstrap it")
        X = self._design.X if newdata is None else self._new_X(newdata)
        eta = X @ self.params.to_numpy()
        se = None
        dfs = None
        if conf is not None:
            se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", X, self._cov, X), 0.0))
            dfs = self._contrast_df(X)
        if newdata is None:  # one value per input row (NaN for rows with weight 0)
            from .design_matrix import _row_patterns

            inv = _row_patterns(self._design)
            eta = np.where(inv >= 0, eta[np.maximum(inv, 0)], np.nan)
            if se is not None:
                se = np.where(inv >= 0, se[np.maximum(inv, 0)], np.nan)
                dfs = np.where(inv >= 0, dfs[np.maximum(inv, 0)], np.nan)
        link = (lambda v: v) if type == "link" else expit
        if conf is None:
            return link(eta)
        z = _t_quantile(conf, dfs)
        out = pd.DataFrame({"prediction": link(eta), "ci_low": link(eta - z * se),
                            "ci_high": link(eta + z * se)})
        if newdata is not None:
            out.index = newdata.index
        out.attrs["conf"] = conf
        out.attrs["interval"] = (f"{100 * conf:g}% Wald interval on the log-odds scale"
                                 + (f" ({self._ccov.kind} by '{self.cluster}'"
                                    + (", t with Satterthwaite df" if self._ccov.kind in ("CR2", "CR3", "CR2-glm") else "") + ")"
                                    if self._ccov is not None else ""))
        if self._ccov is not None and self._ccov.t_tests:
            out["df"] = dfs
        return out

    @_single_blas
    def marginal_means(self, factor: str, by: str | None = None, conf: float | None = None) -> pd.DataFrame:
        """Average predicted refusal probability per level of ``factor`` (emmeans style).

        For each level, every observed row is set to that level and the predicted
        probabilities are averaged over the observed distribution of the other
        predictors (within each level of ``by``). Intervals by the delta method on the
        logit of the mean, with the fit's covariance (model based or CR1).

        Parameters
        ----------
        factor : str
            A factor of the model.
        by : str, optional
            Another factor: marginal means within each of its levels.
        conf : float, optional
            Interval level; default the fit's ``conf``.

        Returns
        -------
        DataFrame
            One row per level of ``factor`` (x ``by``): ``prob`` (the mean predicted
            probability), ``std_error`` (delta method), ``ci_low``, ``ci_high``.

        Examples
        --------
        >>> fit.marginal_means("persona")  # doctest: +SKIP
        """
        d = self._design
        if factor not in d.factors:
            raise ValueError(f"'{factor}' is not a factor of the model; factors: {list(d.factors)}")
        if by is not None and by not in d.factors:
            raise ValueError(f"by='{by}' is not a factor of the model; factors: {list(d.factors)}")
        conf = self.conf if conf is None else check_conf(conf)
        beta = self.params.to_numpy()
        V = self._cov
        pats = d.patterns
        groups = [(None, np.ones(len(pats), bool))] if by is None else [
            (lv, (pats[by].cat.codes == i).to_numpy()) for i, lv in enumerate(d.factors[by])]
        out = []
        for lv in d.factors[factor]:
            newp = pats[d.variables].copy()
            newp[factor] = pd.Categorical([lv] * len(newp), categories=d.factors[factor])
            Xl = new_design(d.spec, newp)
            pr = expit(Xl @ beta)
            for g, m in groups:
                if factor == by and g != lv:
                    continue
                wts = d.n[m] / d.n[m].sum()
                mean = float(wts @ pr[m])
                grad = (wts * pr[m] * (1 - pr[m])) @ Xl[m]
                se = float(np.sqrt(max(grad @ V @ grad, 0.0)))
                df_ = float(self._contrast_df(grad[None, :])[0])
                zq = float(_t_quantile(conf, np.array([df_]))[0])
                lg = np.log(mean / (1 - mean))
                se_l = se / (mean * (1 - mean))
                row = {factor: lv}
                if by is not None:
                    row[by] = g
                row.update({"prob": mean, "std_error": se, "ci_low": float(expit(lg - zq * se_l)),
                            "ci_high": float(expit(lg + zq * se_l))})
                if self._ccov is not None and self._ccov.t_tests:
                    row["df"] = df_
                out.append(row)
        return pd.DataFrame(out)


def _dp(x: float) -> int:
    return 2 if abs(x) >= 100 else 4
