"""Formula logistic regression: MLE, ridge / lasso / elastic net, Firth; R-style results.

:func:`logit` fits ``refusal ~ persona + task + prompt + model`` (any R/Wilkinson
formula formulaic understands) to a tidy response table. Rows are collapsed to unique
covariate patterns with binomial counts (refusals, n) before fitting: the binomial
likelihood equals the Bernoulli one, so the paper's 2,032,160 rows cost ~6,500
patterns. Estimators:

* ``penalty=None``: maximum likelihood by iteratively reweighted least squares, step
  for step as R's ``glm.fit`` (same start, same convergence rule on the deviance,
  epsilon 1e-8, at most 25 iterations), Cholesky solves;
* ``penalty="firth"``: Jeffreys-prior (Firth 1993) bias reduction, finite under
  separation, with profile penalized-likelihood intervals and penalized
  likelihood-ratio p-values as R's ``logistf``;
* ``penalty="l2" | "l1" | "elasticnet"``: the glmnet objective
  ``-loglik/N + alpha * ((1 - l1_ratio)/2 * ||b||^2 + l1_ratio * ||b||_1)`` (intercept
  unpenalized) by proximal Newton with coordinate descent on the collapsed patterns;
  ``alpha="cv"`` picks alpha by K-fold cross-validation with folds grouped by
  ``cluster``.

Standard errors are model based, or cluster-robust by ``cluster=`` (default ``"auto"``:
``item_id`` when items repeat): CR2 with Satterthwaite t by default, CR3 when the clusters'
Kish effective number is below 20 and half their number (``vcov="CR1"``: CR1 with z), from the (cluster, pattern) counts, for a DataFrame and a Parquet source alike;
with clusters, ``anova()`` / ``drop1()`` are cluster-robust Wald tests (HTZ for CR2 / CR3, F on
(q, G - 1) df for CR1) instead of likelihood-ratio tests, which assume independent rows. ``ci="bootstrap"`` resamples clusters (or rows). The maths is in
``docs/methods_logit.md``; ``benchmarks/calibration_logit.py`` measures the tests' level
and the intervals' coverage.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from .._validation import check_conf
from .covariance import _bootstrap, _cluster_cov, _ClusterCov, _StreamedCluster, _t_quantile
from .design_matrix import _build, _Cluster, _Design, _row_patterns
from .firth import _firth, _firth_profile_bound
from .irls import _irls, _mle_profile, _Start
from .likelihood import _loglik, _mcfadden
from .linalg import _inv_spd, _single_blas, _xtwx
from .penalized import _cv_alpha, _enet
from .results import LogitResults
from .separation import SeparationWarning, _separation

__all__ = ["LogitModel", "LogitResults", "SeparationWarning", "logit"]

_PENALTIES = (None, "l2", "l1", "elasticnet", "firth")
_VCOVS = ("CR2", "CR3", "CR1", "CR2-glm")


def logit(
    formula: str,
    data: pd.DataFrame | str,
    reference: Mapping[str, object] | None = None,
    penalty: str | None = None,
    alpha: float | str | None = None,
    l1_ratio: float | None = None,
    cluster: str | None = "auto",
    weights: str | np.ndarray | None = None,
    ci: str | None = None,
    conf: float = 0.95,
    *,
    vcov: str | None = None,
    working: str = "independence",
    trials: str | None = None,
    n_boot: int = 999,
    n_folds: int = 5,
    seed: int | np.random.Generator | None = 0,
    collapse: bool = True,
    maxit: int = 25,
    epsilon: float = 1e-8,
    progress: bool = True,
    labels: str | None = None,
    strata: str | None = None,
) -> LogitResults:
    """Fit a logistic regression from an R formula, on collapsed covariate patterns.

    Parameters
    ----------
    formula : str
        ``"refusal ~ persona + task + prompt + model"``; interactions (``persona:model``,
        ``persona*task``), ``C()`` and numeric covariates as in R / formulaic.
    data : DataFrame or path
        The tidy response table (or any table with the formula's columns); or a Parquet
        file, a folder of Parquet shards, a glob or a list of them, streamed into counts
        per covariate pattern by :func:`refusalstats.collapse`, so memory does not grow
        with rows; the fit equals the fit on the rows. With a cluster, the CR1 covariance
        comes from a second streaming pass that sums each cluster's scores (memory:
        clusters x coefficients), and ``anova()`` / ``drop1()`` work as on rows (anova
        streams once more for its sub-models); a cluster bootstrap (``ci="bootstrap"``)
        or ``alpha="cv"`` resamples clusters and collapses per cluster x pattern instead.
    reference : mapping, optional
        Treatment-coding reference level per factor, e.g. the paper's
        ``{"persona": "Atheist", "prompt": "p1", "task": "nli", "model": "Llama2-13B"}``
        (``refusalstats.simulate.PAPER_REFERENCE``). Default: first level of a
        categorical, else the alphabetically first (R's default).
    penalty : {None, "firth", "l2", "l1", "elasticnet"}
        None: maximum likelihood. "firth": Jeffreys-prior bias reduction (finite under
        separation; profile penalized-likelihood CIs). "l2"/"l1"/"elasticnet": glmnet's
        objective with strength ``alpha`` (intercept unpenalized). ``"none"`` (any case,
        as on the command line) means None.
    alpha : float or "cv"
        Penalty strength for "l2"/"l1"/"elasticnet"; "cv" chooses it by K-fold
        cross-validation (folds grouped by ``cluster`` when given).
    l1_ratio : float, optional
        Elastic-net mixing in (0, 1) (default 0.5 for "elasticnet").
    cluster : "auto", str, list of two str, or None
        Column of clusters (e.g. ``"item_id"``): cluster-robust covariance (``vcov``),
        cluster-robust Wald tests in ``anova()`` / ``drop1()``, the unit resampled by
        ``ci="bootstrap"`` and grouped by cross-validation. ``"auto"`` (default): by
        ``item_id`` when the table has it and items repeat (a one-line
        :class:`~refusalstats.ClusterNote` says so), else none. ``None``: rows are
        independent (R's ``glm`` tests). Two columns, e.g. ``["item_id", "persona"]``:
        two-way cluster-robust covariance (Cameron, Gelbach & Miller 2011) for claims
        about a population of personas (and of items) rather than the personas in the
        table; tests on ``min(G_1, G_2) - 1`` degrees of freedom.
    weights : str or array, optional
        Frequency weights per row (a column name or an array).
    ci : {"wald", "profile", "bootstrap", "none"}, optional
        Interval method. Default: "profile" for Firth without ``cluster``, "wald" for
        MLE (and for Firth with ``cluster``: CR1 Wald), "none" for lasso / elastic net
        (no Wald interval holds there; use "bootstrap").
    conf : float
        Confidence level (default 0.95).
    vcov : {"CR2", "CR3", "CR1", "CR2-glm"}, optional
        The cluster-robust covariance (with ``cluster``). ``"CR2"``: bias-reduced
        linearization (Bell & McCaffrey 2002) with Satterthwaite degrees of freedom for
        every coefficient, contrast, prediction and marginal mean (t intervals and tests)
        and the HTZ test (Pustejovsky & Tipton 2018) in ``drop1()`` / ``anova()``.
        ``"CR3"``: the same with the jackknife-type adjustment ``(I - H_jj)^-1`` in place
        of ``(I - H_jj)^(-1/2)`` (clubSandwich's ``type = "CR3"``), larger where a few
        large clusters carry the fit. ``"CR2-glm"``: CR2 in clubSandwich's form for a GLM
        (``vcovCR(glm_fit, type = "CR2")``: the square root taken on the response scale;
        within about 0.1% of ``"CR2"``; small and mid-sized designs). Default (None,
        maximum likelihood and Firth): CR3 when the Kish effective number of clusters
        ``(sum m_g)^2 / sum m_g^2`` is below 20 and below half the number of clusters (very
        unequal sizes), else CR2 (the rule measured in ``benchmarks/calibration_logit.py``;
        the summary says which ran and why). ``"CR1"``: the Stata / statsmodels sandwich with
        the factor ``G/(G-1) (N-1)/(N-k)``, z intervals and Wald F tests on ``(q, G-1)``
        df (the default for ridge, for a streamed Parquet source and for two-way
        clustering, where CR2 does not apply).
    working : {"independence", "exchangeable"}
        Working correlation of the rows of a cluster. "independence" (default): the
        logistic regression itself (GLM estimates, ``vcov`` inference). "exchangeable"
        (with one ``cluster`` column, ``penalty=None``): GEE (Liang & Zeger 1986) with a
        common within-cluster correlation, which weights clusters more evenly than
        answers when cluster sizes are very unequal; robust covariance with the Mancl &
        DeRouen (2001) correction, t and F on ``G - p`` df. Same marginal (population-
        averaged) target as the default; ``benchmarks/calibration_logit.py`` measures both.
    trials : str, optional
        The response counts refusals out of ``data[trials]`` (aggregated input).
    n_boot : int
        Bootstrap replicates (``ci="bootstrap"``).
    seed : int, None or numpy.random.Generator
        Randomness of the bootstrap and the CV folds (default 0: reproducible).
    n_folds : int
        Cross-validation folds for ``alpha="cv"``.
    collapse : bool
        Fit on unique covariate patterns (default). False fits on the rows (same
        result; for checking).
    maxit, epsilon : int, float
        IRLS iteration limit and convergence tolerance on the deviance (R's defaults).
    progress : bool
        Show a progress bar for the bootstrap and cross-validation.
    labels : str, optional
        A column of human labels (0/1, NaN where unlabelled): the coefficients are then
        those of the human-label model, powered by the detector's flags (the formula's
        response) through prediction-powered inference, PPI++ for GLMs
        (:func:`refusalstats.ppi_logit`, which returns a
        :class:`~refusalstats.PPILogitResult`; maximum likelihood, Wald intervals only).
    strata : str, optional
        With ``labels``: the strata the labels were drawn in.

    Returns
    -------
    LogitResults
        Coefficients, standard errors, tests and intervals (``to_frame()``,
        ``summary()``, ``conf_int()``, ``anova()``, ``drop1()``, ``predict()``).

    Examples
    --------
    >>> import refusalstats as rs
    >>> from refusalstats.simulate import PAPER_REFERENCE
    >>> df = rs.simulate_paper(scale=0.02, calibrate="table7", item_sd=0)
    >>> fit = rs.logit("refusal ~ persona + task + prompt + model", df,
    ...                reference=PAPER_REFERENCE, penalty="firth", ci="wald")
    >>> round(float(fit.params["task[T.offensiveness]"]), 1)  # doctest: +SKIP
    4.2
    """
    if isinstance(penalty, str):  # the command line's spelling, and any case
        penalty = None if penalty.strip().lower() == "none" else penalty.strip().lower()
    if reference is not None and not isinstance(reference, Mapping):
        from ..formula import normalize_reference, parse_formula

        variables = parse_formula(formula).variables if isinstance(formula, str) else ()
        reference = normalize_reference(reference, data, variables)
    if labels is not None:  # the detector's error carried in by human labels (#22)
        from ..ppi import ppi_logit

        if penalty is not None or ci not in (None, "wald") or weights is not None or trials is not None:
            raise ValueError("logit(labels=...) fits maximum likelihood with Wald intervals on row-level "
                             "data; drop penalty=, ci=, weights= and trials=")
        return ppi_logit(formula, data, labels=labels, reference=reference, cluster=cluster, strata=strata,
                         conf=conf)
    model = LogitModel(formula, data, reference=reference, cluster=cluster, weights=weights, trials=trials,
                       collapse=collapse,
                       per_cluster=ci == "bootstrap" or (isinstance(alpha, str) and alpha == "cv"), _frames=2)
    return model.fit(penalty=penalty, alpha=alpha, l1_ratio=l1_ratio, ci=ci, conf=conf, vcov=vcov,
                     working=working, n_boot=n_boot, n_folds=n_folds, seed=seed, maxit=maxit,
                     epsilon=epsilon, progress=progress)


class LogitModel:
    """A formula logistic regression specified on a table, before it is fitted.

    The table is checked, factors and reference levels set, rows collapsed to covariate
    patterns and clusters resolved once (``cluster="auto"`` decided here, with its note);
    :meth:`fit` then runs one estimator on that design, as often as asked. This is the
    split of bambi's ``Model(...).fit()``; :func:`logit` is ``LogitModel(...).fit(...)``.

    Parameters
    ----------
    formula, data, reference, cluster, weights, trials, collapse
        As :func:`logit`.
    per_cluster : bool
        For a Parquet source: collapse per cluster x pattern (what a cluster bootstrap
        and cross-validation folds need) instead of streaming the cluster sums later.
        :meth:`fit` rebuilds the model this way by itself when asked for those.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.02, item_sd=0)
    >>> model = LogitModel("refusal ~ persona + task", df, cluster="item_id")  # doctest: +SKIP
    >>> mle, firth = model.fit(), model.fit(penalty="firth")  # doctest: +SKIP
    """

    def __init__(self, formula: str, data, reference: Mapping[str, object] | None = None,
                 cluster: str | list[str] | None = "auto", *, weights: str | np.ndarray | None = None,
                 trials: str | None = None, collapse: bool = True, per_cluster: bool = False,
                 _frames: int = 1):
        from ..counts import choose_cluster
        from ..sources import frame_or_path, is_dataset

        def resolve_cluster(data, cluster, where):  # the ClusterNote points at the user's call
            return choose_cluster(data, cluster, where=where, stacklevel=4 + _frames).column

        self.formula, self.reference, self.weights, self.collapse = formula, reference, weights, collapse
        data = frame_or_path(data, where="logit")  # a CSV/JSONL path: its rows
        self._source = (data, cluster, trials)
        stream = None
        if is_dataset(data):
            # "auto" is decided here, before any fit, by the one rule for frames and sources (#23);
            # a cluster bootstrap and cluster-grouped CV folds resample clusters: they need the
            # counts per cluster x pattern; every other clustered fit streams the CR1 meat
            cluster = resolve_cluster(data, cluster, where="logit")
            if isinstance(cluster, (list, tuple)):
                cluster = _one_cluster(cluster)
            data, trials, cluster, stream = _counts_from_dataset(formula, data, cluster, trials, weights,
                                                                 per_cluster=per_cluster)
        from_rows = is_dataset(self._source[0])
        two_way = None
        if stream is None:
            resolved = resolve_cluster(data, cluster, where="logit")
            if isinstance(resolved, (list, tuple)) and len(resolved) == 2:
                data, cluster, two_way = _two_way_column(data, list(resolved), formula)
            else:
                cluster = _one_cluster(resolved)
        self.cluster = cluster
        self._stream, self._two_way = stream, two_way
        self.design = _single_blas(_build_design)(formula, data, reference, trials, weights, cluster, collapse,
                                                  stream, two_way, from_rows=from_rows)

    @classmethod
    def _of_design(cls, design: _Design, formula: str, reference, cluster) -> LogitModel:
        """A model around a design built elsewhere (new responses on the same rows)."""
        self = cls.__new__(cls)
        self.formula, self.reference, self.weights, self.collapse = formula, reference, None, True
        self.cluster, self.design = cluster, design
        self._source, self._stream, self._two_way = None, None, getattr(design.cluster, "two_way", None)
        return self

    def fit(self, penalty: str | None = None, alpha: float | str | None = None, l1_ratio: float | None = None,
            ci: str | None = None, conf: float = 0.95, *, vcov: str | None = None,
            working: str = "independence", n_boot: int = 999, n_folds: int = 5,
            seed: int | np.random.Generator | None = 0, maxit: int = 25, epsilon: float = 1e-8,
            progress: bool = True) -> LogitResults:
        """Fit one estimator to the model's design.

        Parameters
        ----------
        penalty, alpha, l1_ratio, ci, conf, vcov, working, n_boot, n_folds, seed, maxit, epsilon, progress
            As :func:`logit`.

        Returns
        -------
        LogitResults
            The fit; ``results.model`` is this model.
        """
        wants_per_cluster = ci == "bootstrap" or (isinstance(alpha, str) and alpha == "cv")
        if self._stream is not None and wants_per_cluster and self._source is not None:
            data, cluster, trials = self._source
            again = LogitModel(self.formula, data, self.reference, cluster, weights=self.weights, trials=trials,
                               collapse=self.collapse, per_cluster=True)
            return again.fit(penalty, alpha, l1_ratio, ci, conf, vcov=vcov, working=working, n_boot=n_boot,
                             n_folds=n_folds, seed=seed, maxit=maxit, epsilon=epsilon, progress=progress)
        opts = _check_fit_args(penalty, alpha, l1_ratio, ci, conf, vcov, working, cluster=self.cluster,
                               two_way=self._two_way, stream=self._stream)
        opts.update({"formula": self.formula, "reference": self.reference, "cluster": self.cluster,
                     "n_boot": n_boot, "n_folds": n_folds, "seed": seed, "maxit": maxit, "epsilon": epsilon,
                     "progress": progress, "vcov": vcov, "working": working})
        return self._fit_design(self.design, opts)

    @_single_blas
    def _fit_design(self, design: _Design, opts: dict) -> LogitResults:
        """The estimator of ``opts`` on ``design`` (this model's, or new responses on its rows)."""
        return _estimate(design, model=self, **opts)


#: (cluster, pattern) count lines above which a streamed source falls back from CR2 (which
#: needs them) to the CR1 sandwich streamed from the rows (memory: clusters x coefficients)
_CR2_MAX_PAIRS = 20_000_000


def _counts_from_dataset(formula, source, cluster, trials, weights, *, per_cluster=False):
    """A Parquet file / shard folder / glob streamed into the counts the fit needs.

    Counts per covariate pattern equal the rows for the fit: coefficients, standard
    errors and tests are the row fit's. With a cluster the counts are per (cluster,
    pattern), streamed batch by batch (memory: those lines, never the rows), which is
    what the CR2 default, a cluster bootstrap and CV folds grouped by cluster need, so a
    Parquet source gets the same covariance, tests and intervals as the same rows in a
    DataFrame (#19, #23). When there are more than ``_CR2_MAX_PAIRS`` such lines the
    counts stay per pattern and a :class:`_StreamedCluster` streams each cluster's CR1
    score sums after the fit (memory: clusters x coefficients), with a note saying so;
    ``per_cluster`` (cluster bootstrap, CV folds) always collapses per cluster x pattern.

    Returns ``(counts, trials column, cluster column or None, _StreamedCluster or None)``.
    """
    from ..counts import _cluster_columns, _collapse, _TooManyLines
    from ..counts import collapse as collapse_dataset
    from ..formula import parse_formula
    from ..sources import scan_columns

    if trials is not None or weights is not None:
        raise ValueError("trials= and weights= are for a DataFrame; a Parquet dataset is "
                         "collapsed to counts here (pass a DataFrame of counts with trials= "
                         "instead)")
    parsed = parse_formula(formula)
    if parsed.random:
        raise ValueError("logit has no random terms; use rs.hierarchical for '(1|group)'")
    stream = None
    if not per_cluster and cluster is not None:  # cluster: a column, "auto" already resolved
        cols = _cluster_columns(cluster)
        if cols:
            col = _one_cluster(cols)
            if col in parsed.fixed_variables or col == parsed.response:
                raise ValueError(f"logit: the cluster column '{col}' is also in the formula")
            try:
                counts = _collapse(source, parsed.fixed_variables, cluster, parsed.response, where="logit",
                                   max_lines=_CR2_MAX_PAIRS)
            except _TooManyLines as many:
                note = (f"logit: the source has more than {_CR2_MAX_PAIRS:,} (cluster, pattern) pairs "
                        f"({int(many.args[0]):,} counted before stopping), too many to hold for CR2: the "
                        "covariance is CR1 streamed from the rows, with z tests (the same rows as a "
                        "DataFrame get CR2 with Satterthwaite t)")
                warnings.warn(note, UserWarning, stacklevel=5)
            else:
                counts = counts.rename(columns={"refusals": parsed.response, "n": "_trials"})
                return counts, "_trials", counts.attrs["collapse"]["cluster"], None
            stream = _StreamedCluster(name=col, source=source, variables=list(parsed.fixed_variables),
                                      refusal=parsed.response, note=note)
        if stream is not None:
            from ..counts import _missing_columns

            _missing_columns([stream.name], scan_columns(source), f"the dataset '{source}'")
        counts = collapse_dataset(source, by=parsed.fixed_variables, cluster=None,
                                  refusal=parsed.response)
        used = stream.name if stream is not None else None
    else:
        counts = collapse_dataset(source, by=parsed.fixed_variables, cluster=cluster,
                                  refusal=parsed.response)
        used = counts.attrs["collapse"]["cluster"]
    counts = counts.rename(columns={"refusals": parsed.response, "n": "_trials"})
    return counts, "_trials", used, stream


def _one_cluster(resolved) -> str | None:
    """The resolved ``cluster=``: logit clusters by one column."""
    if resolved is None or isinstance(resolved, str):
        return resolved
    if len(resolved) == 1:
        return resolved[0]
    raise ValueError(
        f"logit: cluster-robust covariance by one column or two crossed columns, got {list(resolved)}; "
        "for nested clusters pass the outer one (e.g. 'item_id')"
    )


def _two_way_column(data: pd.DataFrame, cols: list[str], formula: str):
    """Two crossed cluster columns as one intersection key (a new column) and the map from
    each intersection cluster to its two components (Cameron, Gelbach & Miller 2011)."""
    from .covariance import _TwoWay

    if not isinstance(data, pd.DataFrame):
        raise TypeError("logit: two-way clustering needs a DataFrame (a Parquet source streams one "
                         "cluster column); read the columns with rs.read_responses first")
    if cols[0] == cols[1]:
        raise ValueError(f"logit: the two cluster columns are the same ('{cols[0]}')")
    for c in cols:
        if data[c].isna().any():
            raise ValueError(f"logit: cluster column '{c}' has missing values; drop or fill those rows")
    ca, ua = pd.factorize(data[cols[0]], sort=True)
    cb, ub = pd.factorize(data[cols[1]], sort=True)
    key = f"{cols[0]} x {cols[1]}"
    while key in data.columns:
        key = "_" + key
    data = data.assign(**{key: ca.astype(np.int64) * len(ub) + cb})
    return data, key, _TwoWay(names=cols, n_second=len(ub), sizes=(len(ua), len(ub)))


def _check_fit_args(penalty, alpha, l1_ratio, ci, conf, vcov, working, *, cluster, two_way, stream) -> dict:
    """The estimator's arguments checked and completed (l1_ratio, the default ci)."""
    if penalty not in _PENALTIES:
        raise ValueError(f"penalty must be one of {list(_PENALTIES)}, got {penalty!r}")
    if vcov is not None and vcov not in _VCOVS:
        raise ValueError(f"vcov must be one of {list(_VCOVS)} (or None for the default), got {vcov!r}")
    if working not in ("independence", "exchangeable"):
        raise ValueError(f"working must be 'independence' or 'exchangeable', got {working!r}")
    if working == "exchangeable" and (cluster is None or two_way is not None or stream is not None
                                      or penalty is not None or ci not in (None, "wald", "none")):
        raise ValueError("working='exchangeable' (GEE) needs one cluster column of a DataFrame, penalty=None "
                         "and Wald intervals (ci='wald'); got "
                         f"cluster={cluster!r}, penalty={penalty!r}, ci={ci!r}")
    conf = check_conf(conf)
    if penalty in ("l2", "l1", "elasticnet"):
        if alpha is None:
            raise ValueError(f"penalty={penalty!r} needs alpha=<strength> (glmnet's lambda) or alpha='cv'")
        if not (alpha == "cv" or (isinstance(alpha, (int, float)) and alpha >= 0)):
            raise ValueError(f"alpha must be a non-negative number or 'cv', got {alpha!r}")
        if penalty == "l2":
            if l1_ratio not in (None, 0, 0.0):
                raise ValueError("penalty='l2' has l1_ratio 0; use penalty='elasticnet' to mix")
            l1_ratio = 0.0
        elif penalty == "l1":
            l1_ratio = 1.0
        else:
            l1_ratio = 0.5 if l1_ratio is None else float(l1_ratio)
            if not (0 < l1_ratio < 1):
                raise ValueError(f"l1_ratio must be in (0, 1) for elastic net, got {l1_ratio}")
    elif alpha is not None or l1_ratio is not None:
        raise ValueError(f"alpha / l1_ratio apply to penalty 'l2', 'l1' or 'elasticnet', not {penalty!r}")
    if ci is None:
        if penalty == "firth":
            ci = "wald" if cluster else "profile"
        elif penalty in ("l1", "elasticnet"):
            ci = "none"
        else:
            ci = "wald"
    if ci not in ("wald", "profile", "bootstrap", "none"):
        raise ValueError(f"ci must be 'wald', 'profile', 'bootstrap' or 'none', got {ci!r}")
    if ci == "wald" and penalty in ("l1", "elasticnet"):
        raise ValueError(
            f"no Wald interval holds for penalty={penalty!r} (the estimator is not asymptotically normal "
            "around the truth); use ci='bootstrap' or ci='none'"
        )
    if two_way is not None and (ci == "bootstrap" or alpha == "cv"):
        raise ValueError("logit: a cluster bootstrap and cross-validation folds resample one clustering; "
                         "with two cluster columns use ci='wald' and a numeric alpha")
    if ci == "profile" and penalty not in (None, "firth"):
        raise ValueError("profile intervals are available for penalty=None or 'firth'")
    return {"penalty": penalty, "alpha": alpha, "l1_ratio": l1_ratio, "ci": ci, "conf": conf}


def _build_design(formula, data, reference, trials, weights, cluster, collapse, stream, two_way, *,
                  from_rows: bool = False) -> _Design:
    """The collapsed design, with the streamed or two-way clusters attached.

    ``from_rows``: ``data`` are counts of a source's 0/1 rows (a Parquet source), so the
    fit is the rows' fit: its row count, log-likelihood (no binomial constants), deviance
    and IRLS start are those of the rows, as for the same rows in a DataFrame.
    """
    d, _parsed = _build(formula, data, reference, trials, weights, None if stream else cluster, collapse)
    if from_rows:
        n_rows = float(np.sum(d.n))
        d.n_obs, d.dev_sat, d.ll_const = round(n_rows), 0.0, 0.0
        # R's glm.fit start on 0/1 rows (mustart 3/4 or 1/4), summed to the patterns
        d.start = _Start(0.1875 * d.n, 0.1875 * (np.log(3.0) + 4.0 / 3.0) * (2.0 * d.s - d.n),
                         -2.0 * n_rows * np.log(0.75))
    if stream is not None:  # CR1 from the rows on disk, streamed after the fit
        stream.patterns = d.patterns
        d.cluster = stream
    if two_way is not None:
        d.cluster.two_way = two_way
    return d


def _estimate(d: _Design, *, formula, reference, penalty, alpha, l1_ratio, cluster, ci, conf, n_boot, n_folds,
              seed, maxit, epsilon, progress, vcov=None, working="independence", model=None) -> LogitResults:
    """Fit, covariance, tests and intervals on a built design (:meth:`LogitModel.fit`)."""
    notes: list[str] = []
    X, s, n = d.Xf, d.s, d.n
    K, p = X.shape
    names = d.names
    N = float(np.sum(n))
    pen_mask = np.array([nm != "Intercept" for nm in names])

    # ---------------------------------------------------------------- fit
    beta, iters, conv, penalized_ll, alpha, cv_table = _coefficients(
        d, penalty, alpha, l1_ratio, pen_mask, n_folds=n_folds, seed=seed, progress=progress, maxit=maxit,
        epsilon=epsilon)
    gee = None
    if working == "exchangeable":
        from .gee import _gee_exchangeable

        gee = _gee_exchangeable(d.X, d.Xf, d.cluster, beta, maxit=max(maxit, 50))
        beta, conv, iters = gee["beta"], gee["converged"], gee["iterations"]
        notes.append(f"GEE with an exchangeable working correlation (rho = {gee['rho']:.3f}) within "
                     f"'{cluster}': estimates weight clusters more evenly than the logistic regression "
                     "(working='independence'); robust SEs with the Mancl-DeRouen correction")
    if not conv:
        warnings.warn(f"logit({formula!r}) did not converge in {iters} iterations; the estimates are "
                      "unreliable (raise maxit, or check for separation)", RuntimeWarning, stacklevel=4)
        notes.append(f"the fit did not converge in {iters} iterations")
    eta = X @ beta
    mu = expit(eta)
    w = n * mu * (1 - mu)
    info = _xtwx(X, w)
    if penalty in ("l2", "l1", "elasticnet"):
        bread = _inv_spd(info + np.diag(np.where(pen_mask, N * float(alpha) * (1 - l1_ratio), 0.0)))
    else:
        bread = _inv_spd(info)
    cov = bread
    cov_cluster = None
    ccov = None
    cov_type = "model-based (inverse Fisher information)"
    if cluster is not None:
        # counted in Bernoulli rows: a fit from trials= counts equals the fit from its rows
        if gee is not None:
            ccov, cnotes = _ClusterCov("GEE-MD", gee["cov"], gee["n_clusters"], rho=gee["rho"],
                                       df_resid=gee["n_clusters"] - p), []
        else:
            ccov, cnotes = _cluster_cov(d.X, d.Xf, d.cluster, beta, bread, round(float(d.n.sum())), penalty,
                                        vcov)
        notes.extend(cnotes)
        cov = cov_cluster = ccov.V
        if ccov.reason:
            notes.append(ccov.reason)
    if cluster is not None:
        cov_type = ccov.label(cluster if d.cluster.two_way is None else " x ".join(
            repr(c) for c in d.cluster.two_way.names)) if isinstance(d.cluster, _Cluster) else ccov.label(cluster)
    bse = np.sqrt(np.maximum(np.diag(cov), 0.0))

    # ---------------------------------------------------------------- separation
    sep_desc, sep_terms = _separation(d, beta, bse)
    if sep_desc and penalty is None:
        warnings.warn(
            "separation: the maximum likelihood estimate does not exist — "
            + "; ".join(sep_desc[:5]) + (" ..." if len(sep_desc) > 5 else "")
            + f". Terms {sep_terms[:6]} diverge; their estimates, SEs and intervals are not reported as "
            "valid. Refit with penalty='firth' (finite estimates, profile intervals) or penalty='l2'",
            SeparationWarning, stacklevel=4)
    sep_idx = [names.index(t) for t in sep_terms] if penalty is None else []

    # ---------------------------------------------------------------- tests and intervals
    z = beta / bse
    p_method = "wald"
    stat = z.copy()  # the statistic behind each p-value: Wald z (or t), or the penalized LR chi-square
    df_coef = np.full(p, np.inf)
    if ccov is not None and ccov.t_tests and penalty not in ("l2", "l1", "elasticnet"):
        with np.errstate(invalid="ignore"):
            df_coef = ccov.df(np.eye(p))
        p_method = "wald-t"
    zq = _t_quantile(conf, df_coef)
    pvals = 2 * stats.t.sf(np.abs(z), df_coef)
    ci_low, ci_high = beta - zq * bse, beta + zq * bse
    ci_method = f"Wald {100 * conf:g}%" + (
        " (t with Satterthwaite df)" if p_method == "wald-t" and ccov.kind in ("CR2", "CR3", "CR2-glm") else
        " (t on G - p df)" if p_method == "wald-t" and ccov.kind == "GEE-MD" else
        " (t on min(G) - 1 df)" if p_method == "wald-t" else "")
    if penalty in ("l2", "l1", "elasticnet"):
        # a penalized estimate is biased toward 0: no frequentist test holds, so none is given
        stat = np.full(p, np.nan)
        pvals = np.full(p, np.nan)
        p_method = "none"
    if penalty == "l2":
        ci_method = (
            f"{100 * conf:g}% posterior intervals under the Gaussian prior N(0, 1/(N alpha)) the ridge "
            "penalty implies (Laplace approximation; not confidence intervals)" if cluster is None else
            f"{100 * conf:g}% intervals from the CR1 sandwich around the shrunken ridge estimate (not "
            "confidence intervals: ridge is biased toward 0)")
    if penalty in ("l1", "elasticnet"):
        bse = np.full(p, np.nan)
        pvals = np.full(p, np.nan)
        ci_low = ci_high = np.full(p, np.nan)
        ci_method = "none (no valid Wald interval for lasso / elastic net; use ci='bootstrap')"
        cov = np.full((p, p), np.nan)
    if penalty == "firth" and cluster is None:
        # penalized likelihood-ratio p-values (as logistf)
        pvals = np.empty(p)
        for j in range(p):
            b0 = beta.copy()
            b0[j] = 0.0
            _, _, _, pll0 = _firth(X, s, n, beta0=b0, fixed={j: 0.0})
            stat[j] = max(2 * (penalized_ll - pll0), 0.0)
            pvals[j] = float(stats.chi2.sf(stat[j], 1))
        p_method = "plr"
    elif penalty == "firth":
        notes.append(f"p-values are {ccov.kind} Wald tests (penalized likelihood-ratio tests assume "
                     "independent rows)")
        firth_sep = [names.index(t) for t in sep_terms]
        if firth_sep and ci == "wald":
            df_coef[firth_sep] = np.inf
            # CR1 is degenerate along a separating direction (rows that never refuse carry almost
            # no score): use the model-based SE, the profile penalized-likelihood interval and the
            # penalized LR test there, and say so.
            q = float(stats.chi2.ppf(conf, 1))
            for j in firth_sep:
                bse[j] = np.sqrt(bread[j, j])
                cov[j, :] = bread[j, :]
                cov[:, j] = bread[:, j]
                ci_low[j], _ = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=False)
                ci_high[j], _ = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=True)
                b0 = beta.copy()
                b0[j] = 0.0
                _, _, _, pll0 = _firth(X, s, n, beta0=b0, fixed={j: 0.0})
                pvals[j] = float(stats.chi2.sf(max(2 * (penalized_ll - pll0), 0.0), 1))
                stat[j] = np.nan  # the p-value is not from a z: no z is shown beside it
            notes.append(
                f"separated term(s) {[names[j] for j in firth_sep]}: the sandwich is degenerate along a separating "
                "direction, so their SE is model based, their interval the profile penalized likelihood "
                "and their p-value the penalized LR test (no z value shown)"
            )
    if ci == "none":
        ci_low = ci_high = np.full(p, np.nan)
        if penalty not in ("l1", "elasticnet"):
            ci_method = "none (ci='none')"
    if ci == "profile":
        q = float(stats.chi2.ppf(conf, 1))
        ci_low, ci_high = np.empty(p), np.empty(p)
        bad = []
        if penalty == "firth":
            for j in range(p):
                ci_low[j], ok1 = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=False)
                ci_high[j], ok2 = _firth_profile_bound(X, s, n, beta, penalized_ll, j, q, upper=True)
                if not (ok1 and ok2):
                    bad.append(names[j])
        else:
            ll_hat = _loglik(eta, s, n)
            for j in range(p):
                lo, hi, ok = _mle_profile(d, beta, bse[j], ll_hat, j, q, sep=j in sep_idx)
                ci_low[j], ci_high[j] = lo, hi
                if not ok:
                    bad.append(names[j])
        if bad:
            notes.append(f"profile interval search did not converge for {bad}")
        ci_method = f"profile {'penalized ' if penalty == 'firth' else ''}likelihood {100 * conf:g}%"
        if cluster is not None:
            notes.append("profile intervals assume independent rows; with clustered rows use ci='bootstrap'")
    boot = None
    if ci == "bootstrap":
        boot = _bootstrap(d, beta, penalty, float(alpha) if penalty in ("l2", "l1", "elasticnet") else 0.0,
                          l1_ratio, pen_mask, n_boot, seed, progress)
        ok_b = np.isfinite(boot).all(1)
        bb = boot[ok_b]
        ci_low = np.quantile(bb, (1 - conf) / 2, axis=0)
        ci_high = np.quantile(bb, 1 - (1 - conf) / 2, axis=0)
        ci_method = (f"{'cluster ' if cluster else ''}bootstrap percentile {100 * conf:g}% "
                     f"({len(bb)} replicates{', by ' + repr(cluster) if cluster else ''})")
        if penalty in ("l2", "l1", "elasticnet"):
            ci_method += (" of the penalized estimator (its sampling spread around a shrunken centre; not "
                          "confidence intervals for the unpenalized coefficients)")
        if penalty in ("l1", "elasticnet"):
            bse = bb.std(0, ddof=1)
    if sep_idx:
        bse[sep_idx] = np.nan
        pvals[sep_idx] = np.nan
        stat[sep_idx] = np.nan
        ci_low = np.asarray(ci_low, float).copy()
        ci_high = np.asarray(ci_high, float).copy()
        ci_low[sep_idx] = np.nan
        ci_high[sep_idx] = np.nan
        cov = cov.copy()
        cov[sep_idx, :] = np.nan
        cov[:, sep_idx] = np.nan

    # ---------------------------------------------------------------- fit statistics
    fstats = _fit_statistics(d, eta, penalty, notes)
    has_int = "Intercept" in names
    call_extra = ""
    if reference:
        call_extra += f", reference={dict(reference)!r}"
    if penalty:
        call_extra += f", penalty={penalty!r}"
    if cluster:
        tw = getattr(d.cluster, "two_way", None) if d.cluster is not None else None
        call_extra += f", cluster={tw.names if tw is not None else cluster!r}"
    if vcov is not None:
        call_extra += f", vcov={vcov!r}"
    if working != "independence":
        call_extra += f", working={working!r}"
    term_of = {}
    for t, cols in d.term_columns.items():
        for c in cols:
            term_of[names[c]] = t
    if penalty in ("l2", "l1", "elasticnet"):
        notes.append("AIC/BIC count every coefficient; they are not the penalized model's effective df")
    idx = pd.Index(names, name="term")
    return LogitResults(
        model=model, formula=formula, penalty=penalty, alpha=None if alpha is None else float(alpha),
        l1_ratio=l1_ratio, cluster=cluster, conf=conf,
        params=pd.Series(beta, index=idx, name="estimate"),
        bse=pd.Series(bse, index=idx, name="std_error"),
        pvalues=pd.Series(pvals, index=idx, name="p_value"),
        _ci=pd.DataFrame({"ci_low": ci_low, "ci_high": ci_high}, index=idx),
        _cov=cov, _cov_cluster=cov_cluster, cov_type=cov_type, ci_method=ci_method, p_method=p_method,
        _ccov=ccov, df=pd.Series(df_coef, index=idx, name="df"), vcov=None if ccov is None else ccov.kind,
        _stat=stat,
        **fstats,
        penalized_loglik=penalized_ll + d.ll_const if penalty == "firth" else np.nan,
        df_resid=d.n_obs - p, df_null=d.n_obs - (1 if has_int else 0),
        iterations=iters, converged=conv, n_obs=d.n_obs, n_patterns=K,
        n_clusters=d.cluster.n_clusters if d.cluster else 0,
        separation=sep_desc, separated_terms=sep_terms,
        reference={v: lv[0] for v, lv in d.factors.items()}, levels=dict(d.factors),
        notes=notes, cv=cv_table, boot=boot,
        _design=d, _term_of=term_of, _ll_const=d.ll_const, _call_extra=call_extra,
        _opts={"formula": formula, "reference": reference, "penalty": penalty,
               "alpha": alpha if penalty in ("l2", "l1", "elasticnet") else None, "l1_ratio": l1_ratio,
               "cluster": cluster, "ci": ci, "conf": conf, "n_boot": n_boot, "n_folds": n_folds, "seed": seed,
               "maxit": maxit, "epsilon": epsilon, "progress": progress, "vcov": vcov, "working": working},
    )


def _coefficients(d: _Design, penalty, alpha, l1_ratio, pen_mask, *, n_folds, seed, progress, maxit, epsilon):
    """One estimator per penalty: IRLS (R's glm.fit), Firth, or the elastic net (alpha by CV on
    request). Returns ``(beta, iterations, converged, penalized loglik, alpha, cv table)``."""
    X, s, n = d.Xf, d.s, d.n
    penalized_ll = np.nan
    cv_table = None
    if penalty is None:
        beta, iters, conv = _irls(X, s, n, dev_sat=d.dev_sat, start=d.start, eps=epsilon, maxit=maxit)
    elif penalty == "firth":
        beta0, _, _ = _irls(X, s, n, dev_sat=d.dev_sat, start=d.start, maxit=4)
        beta0 = np.clip(beta0, -10, 10)
        beta, iters, conv, penalized_ll = _firth(X, s, n, beta0=beta0)
    else:
        if alpha == "cv":
            alpha, cv_table = _cv_alpha(d, l1_ratio, pen_mask, n_folds, seed, progress)
        beta, iters, conv = _enet(X, s, n, float(alpha), l1_ratio, pen_mask)
    return beta, iters, conv, penalized_ll, alpha, cv_table


def _fit_statistics(d: _Design, eta: np.ndarray, penalty, notes: list[str]) -> dict:
    """Log-likelihoods (R's, with the binomial constants of ``trials=`` input), deviances, AIC,
    BIC and McFadden's pseudo-R² at the linear predictor ``eta``."""
    s, n = d.s, d.n
    N = float(np.sum(n))
    K, p = len(s), len(d.names)
    ll_b = _loglik(eta, s, n)
    loglik = ll_b + d.ll_const
    if "Intercept" in d.names:
        pbar = float(np.sum(s)) / N
        ll0_b = _loglik(np.full(K, np.log(pbar / (1 - pbar))), s, n)
    else:
        ll0_b = _loglik(np.zeros(K), s, n)
    return {"loglik": loglik, "loglik_null": ll0_b + d.ll_const,
            "deviance": 2.0 * (d.dev_sat - ll_b), "null_deviance": 2.0 * (d.dev_sat - ll0_b),
            "aic": -2 * loglik + 2 * p, "bic": -2 * loglik + np.log(d.n_obs) * p,
            "pseudo_r2": _mcfadden(ll_b, float(np.sum(s)), N, penalty, notes)}


@_single_blas
def _refit_responses(fit: LogitResults, y: np.ndarray) -> LogitResults:
    """The same model refitted to new 0/1 responses on the same rows (for simulation studies).

    Only the counts change: the formula, factors, patterns and clusters are the fit's, so
    a replicate costs the estimation alone (no parsing, validation or collapsing). For
    plain 0/1 row input (no ``trials=``, no weights).
    """
    d = fit._design
    inverse = _row_patterns(d)
    y = np.asarray(y, dtype=float)
    if d.ll_const != 0.0 or d.row_pair is None and d.cluster is not None or len(y) != len(inverse):
        raise ValueError("_refit_responses needs a fit to plain 0/1 rows and one response per row")
    if (d.start is None or not np.allclose(d.start.w, 0.1875 * d.n) or not np.isin(y, (0.0, 1.0)).all()
            or (inverse < 0).any()):
        raise ValueError("_refit_responses needs 0/1 responses and no weights")
    if y.sum() in (0.0, len(y)):
        raise ValueError("the new responses are constant: nothing to model")
    K = len(d.s)
    s = np.bincount(inverse, weights=y, minlength=K)
    start = _Start(d.start.w, 0.1875 * (np.log(3.0) + 4.0 / 3.0) * (2.0 * s - d.n), d.start.dev)
    cl = d.cluster
    if cl is not None:
        cl = _Cluster(name=cl.name, labels=cl.labels, g=cl.g, j=cl.j, n=cl.n,
                      s=np.bincount(d.row_pair, weights=y, minlength=len(cl.n)), two_way=cl.two_way)
    patterns = d.patterns.copy()
    patterns["successes"] = s
    nd = _Design(**{**d.__dict__, "s": s, "start": start, "cluster": cl, "patterns": patterns})
    opts = dict(fit._opts)
    if opts["penalty"] in ("l2", "l1", "elasticnet") and opts["alpha"] is None:
        opts["alpha"] = fit.alpha
    return LogitModel._of_design(nd, fit.formula, opts["reference"], opts["cluster"])._fit_design(nd, opts)
