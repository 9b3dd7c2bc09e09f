"""Bayesian hierarchical (multilevel) logistic model of refusal, in PyMC.

``hierarchical("refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)", df)``
fits

.. math::

    \\operatorname{logit} P(y_i = 1) = \\alpha + x_i^\\top \\beta
        + \\sum_t \\sigma_t z_{t, g_t(i)}, \\qquad z_{t, l} \\sim N(0, 1),

with the fixed part in R (Wilkinson) syntax, random intercepts in lme4 syntax and
non-centred group effects :math:`u_{t,l} = \\sigma_t z_{t,l}`. Rows are collapsed to
unique combinations of fixed-effect variables and grouping levels with binomial
counts (:func:`refusalstats.counts.row_patterns`), so two million rows of the paper's
design cost at most 6,480 binomial terms; the binomial likelihood differs from the
Bernoulli one only by the constant :math:`\\sum \\log\\binom{n}{k}`, so the posterior is
the same. Sampling uses nutpie (Rust NUTS on a numba-compiled log density) by default,
PyMC's NUTS as a fallback, or ADVI as an explicitly approximate shortcut. Above 20,000
patterns (``(1|item_id)`` on large tables, where nothing collapses across items) the default
``method="auto"`` runs the nested Laplace approximation (:mod:`.laplace`), labelled
APPROXIMATE in every output.

The maths and the default priors are in ``docs/methods_hierarchical.md``.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_random_state
from ..counts import row_patterns
from ..formula import (
    FormulaError,
    ParsedFormula,
    RandomTerm,
    check_columns,
    fixed_design,
    group_index,
    normalize_reference,
    parse_formula,
    prepare_factors,
)
from ..table import binary_problem
from .laplace import _Laplace
from .priors import _fixed_rv, _resolve_priors, _sd_rv
from .results import ConvergenceWarning, HierarchicalResult

__all__ = ["AUTO_CENTER_INFO", "AUTO_CENTER_RATIO", "AUTO_LAPLACE_PATTERNS", "HierarchicalModel", "fit_options",
           "hierarchical"]


#: parametrization="auto": a group level is sampled centred when the data pin its effect
#: down, i.e. its observed Fisher information sum k(n-k)/n is at least this (likelihood
#: sd <= 0.2 on the logit scale); otherwise non-centred (levels with few or no refusals).
AUTO_CENTER_INFO = 25.0

#: method="auto": the nested Laplace approximation above this many collapsed binomial
#: patterns, NUTS at or below. NUTS costs grow with the patterns (one gradient is a pass over
#: them) and with the levels to sample; with ``(1|item_id)`` nothing collapses across items
#: (P1's scale 0.1: 203,200 patterns, 1,270 items; full scale 2,032,160 and 12,700).
AUTO_LAPLACE_PATTERNS = 20_000

#: parametrization="auto": a level is centred when its Fisher information times the low end
#: of its group variance (``I_l * sd_low**2``, see ``HierarchicalModel._auto_centre``) is at
#: least this: the data then outweigh the prior, and the non-centred form would be a ridge.
AUTO_CENTER_RATIO = 1.0


# --------------------------------------------------------------------------- model
@dataclass
class _GroupTerm:
    term: RandomTerm
    index: np.ndarray  # per collapsed pattern
    levels: list[str]
    centered: np.ndarray  # per level: sampled centred (True) or non-centred (False)
    information: np.ndarray  # per level: observed Fisher information sum k(n-k)/n

    @property
    def name(self) -> str:
        return self.term.name

    @property
    def var(self) -> str:
        return f"1|{self.name}"

    @property
    def dim(self) -> str:
        return f"{self.name}__level"


def _check_response(data: pd.DataFrame, response: str) -> np.ndarray:
    s = data[response]
    problem = binary_problem(s, response)  # the one 0/1 check (table.py)
    if problem:
        raise ValueError(problem + ("; drop those rows first" if s.isna().any() else ""))
    y = s.astype(object).astype(float).to_numpy() if s.dtype == object else s.to_numpy(dtype=float)
    if len(y) == 0:
        raise ValueError("the data have no rows")
    if y.sum() == 0 or y.sum() == len(y):
        which = "0 (no refusals at all)" if y.sum() == 0 else "1 (every row refuses)"
        raise ValueError(
            f"every value of '{response}' is {which}: a logistic model has nothing to learn; "
            "check the refusal detector or the column, or report the rate with its interval instead"
        )
    return y


class HierarchicalModel:
    """A hierarchical logistic model built from a formula and a table (not yet sampled).

    Building collapses the rows to unique patterns and writes the PyMC model; call
    :meth:`fit` to sample. :func:`hierarchical` does both.

    Parameters
    ----------
    formula : str
        lme4-style formula, e.g. ``"refusal ~ task + (1|model) + (1|persona)"``.
    data : DataFrame, path or glob
        One row per response, or a Parquet file / shard folder / glob streamed into
        counts (see :func:`hierarchical`).
    reference : mapping, optional
        Reference level per fixed-effect factor.
    priors : mapping, optional
        Overrides of :data:`~refusalstats.bayes.DEFAULT_PRIORS`.
    parametrization : {"auto", "centered", "noncentered"}
        How group effects are sampled (see :func:`hierarchical`).

    Attributes
    ----------
    parsed : ParsedFormula
    patterns : DataFrame
        One row per unique combination of the formula's variables, with ``successes``
        and ``trials``.
    X : ndarray
        Fixed-effect design matrix on ``patterns`` (treatment coding).
    fixed_names : list of str
        Its column names (``"Intercept"``, ``"task[T.politeness]"``, ...).
    groups : list
        The random terms with their per-pattern level index and level labels.
    model : pymc.Model
        The PyMC model (binomial likelihood on ``patterns``).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01)
    >>> m = HierarchicalModel("refusal ~ task + (1|model) + (1|persona)", df)
    >>> m.patterns.shape[0] <= 3 * 16 * 15
    True
    """

    def __init__(
        self,
        formula: str,
        data: pd.DataFrame,
        reference: Mapping[str, object] | None = None,
        priors: Mapping[str, Any] | None = None,
        parametrization: str = "auto",
    ):
        from ..sources import frame_or_path, is_dataset

        data = frame_or_path(data, where="hierarchical")  # a CSV/JSONL path: its rows
        if not (isinstance(data, pd.DataFrame) or is_dataset(data)):
            raise TypeError("data must be a pandas DataFrame or the path of a Parquet file, a folder "
                            f"of Parquet shards or a glob; got {type(data).__name__}")
        parsed = parse_formula(formula)
        if not parsed.random:
            raise FormulaError(
                f"formula {formula!r} has no random intercept such as '(1|persona)'; "
                "for a model with fixed effects only use refusalstats.logit"
            )
        if isinstance(data, pd.DataFrame) and data.attrs:
            # pandas deep-copies .attrs into every derived frame (simulate_paper's truth holds
            # 12,700 item effects: ~3 s of copies at full scale); drop them once, shallowly
            data = data.copy(deep=False)
            data.attrs = {}
        if isinstance(data, pd.DataFrame):
            check_columns(parsed, data)
        self.parsed: ParsedFormula = parsed
        self.formula = formula
        if parsed.response in parsed.variables:
            raise FormulaError(f"the response '{parsed.response}' also appears on the right of '~'")
        self.reference = normalize_reference(reference, data, parsed.variables)
        if isinstance(data, pd.DataFrame):
            col = self._collapse_rows(data)
            #: row i of ``data`` is pattern ``inverse[i]`` (None when built from a path)
            self.inverse: np.ndarray | None = col.inverse
        else:
            col = self._collapse_dataset(data)
            self.inverse = None
        self.patterns: pd.DataFrame = col.patterns
        self.n_rows = round(float(self.patterns["trials"].sum()))
        self.observed_rate = float(self.patterns["successes"].sum() / self.patterns["trials"].sum())
        X, names, spec = fixed_design(parsed.fixed, self.patterns)
        self.X = X
        self.fixed_names: list[str] = names
        self.fixed_spec = spec
        if parametrization not in ("auto", "centered", "noncentered"):
            raise ValueError(
                f"parametrization must be 'auto', 'centered' or 'noncentered', got {parametrization!r}"
            )
        self.parametrization = parametrization
        k = self.patterns["successes"].to_numpy(dtype=float)
        n = self.patterns["trials"].to_numpy(dtype=float)
        info = k * (n - k) / n  # observed Fisher information of each pattern's logit
        self.groups: list[_GroupTerm] = []
        for term in parsed.random:
            idx, levels = group_index(self.patterns, term)
            lev_info = np.bincount(idx, weights=info, minlength=len(levels))
            if parametrization == "centered":
                cen = np.ones(len(levels), dtype=bool)
            else:
                cen = np.zeros(len(levels), dtype=bool)
            self.groups.append(_GroupTerm(term, idx, levels, cen, lev_info))
        self.priors = _resolve_priors(priors, names, [g.name for g in self.groups])
        self._auto_rule: dict[str, Any] | None = None
        self._model = None

    @property
    def model(self):
        """The PyMC model (binomial likelihood on ``patterns``), written on first use.

        Only NUTS and ADVI need it; the nested Laplace fit does not, so a large design
        fitted by ``method="laplace"`` never pays for writing (or auto-centring) it.
        """
        if self._model is None:
            self._resolve_centring()
            self._model = self._build()
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    @property
    def auto_rule(self) -> dict[str, Any]:
        """``parametrization="auto"``: per term the sd mode, its low end and the centred levels
        (computed on first use, with the PyMC model); empty for the other parametrisations."""
        self._resolve_centring()
        return self._auto_rule

    def _resolve_centring(self) -> None:
        if self._auto_rule is None:
            self._auto_rule = {}
            if self.parametrization == "auto":
                self._auto_centre()

    def _check_groups(self, work: pd.DataFrame) -> None:
        for g in self.parsed.group_variables:
            n_lev = work[g].nunique(dropna=True)
            if n_lev < 2:
                raise ValueError(
                    f"grouping factor '{g}' has a single level {pd.unique(work[g].dropna()).tolist()}; "
                    f"a random intercept needs at least two levels — remove '(1|{g})' from the formula"
                )
            if work[g].isna().any():
                raise ValueError(f"grouping column '{g}' has {int(work[g].isna().sum())} missing value(s)")

    def _collapse_rows(self, data: pd.DataFrame):
        """Rows of a DataFrame -> binomial patterns (:func:`refusalstats.counts.row_patterns`)."""
        variables = self.parsed.variables
        y = _check_response(data, self.parsed.response)
        work = prepare_factors(data[variables], variables, self.reference)
        self._check_groups(work)
        work[self.parsed.response] = y
        return row_patterns(work, variables, self.parsed.response)

    def _collapse_dataset(self, path):
        """A Parquet file, shard folder or glob -> the same binomial patterns as the rows.

        The rows are streamed into counts per unique combination of the formula's variables
        by :func:`refusalstats.scan.collapse` (never materialised); those counts are then
        collapsed by :func:`refusalstats.formula.collapse` exactly as rows are, so the
        patterns (and their order, for factor variables) equal the in-memory ones.
        """
        from ..counts import collapse as collapse_dataset

        variables = self.parsed.variables
        response = self.parsed.response
        counts = collapse_dataset(path, by=variables, cluster=None, refusal=response)
        k, n = counts["refusals"].to_numpy(dtype=float), counts["n"].to_numpy(dtype=float)
        if k.sum() == 0 or k.sum() == n.sum():
            which = "0 (no refusals at all)" if k.sum() == 0 else "1 (every row refuses)"
            raise ValueError(
                f"every value of '{response}' is {which}: a logistic model has nothing to learn; "
                "check the refusal detector or the column, or report the rate with its interval instead"
            )
        work = prepare_factors(counts[variables], variables, self.reference)
        self._check_groups(work)
        work["_successes"], work["_trials"] = k, n
        return row_patterns(work, variables, "_successes", trials="_trials")

    def _auto_centre(self) -> None:
        """Choose centred levels from a quick Laplace fit (``parametrization="auto"``).

        A level is sampled centred when its data outweigh its prior even at the low end of
        its group sd's plausible range: ``I_l * sd_low**2 >= AUTO_CENTER_RATIO`` with
        ``I_l`` the Fisher information of the level's patterns at the Laplace mode (capped
        by the observed ``K(N-K)/N`` of the level's totals, 0 for a level without refusals) and
        ``sd_low = exp(theta_hat - 2 se(theta_hat))`` (theta = log sd, posterior mode and
        curvature sd from the nested Laplace approximation). A group sd near zero
        (e.g. persona:model when the data hold no interaction) therefore keeps every level
        non-centred, where the centred form would be a funnel.
        """
        from scipy.special import expit
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        try:
            with threadpool_limits(1, user_api="blas"):  # see _fit_laplace
                lap = _Laplace(self)
                theta, H, nfev = lap.fit_theta(tol=1e-2)
                sds = _theta_sd(H)
                md = lap.mode(theta)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:  # pragma: no cover
            warnings.warn(f"parametrization='auto': the quick Laplace fit failed ({exc}); "
                          f"falling back to the information rule (>= {AUTO_CENTER_INFO})", stacklevel=3)
            for g in self.groups:
                g.centered[:] = g.information >= AUTO_CENTER_INFO
            return
        eta = lap._eta(md["x_d"], md["x_b"])
        q = expit(eta)
        w = lap.n * q * (1 - q)
        for t, g in enumerate(self.groups):
            # expected information at the mode, but never more than the observed k(n-k)/n:
            # a level with no (or only) refusals has a one-sided likelihood and stays non-centred
            # (observed at the level's totals: with one row per pattern k(n-k)/n is 0 everywhere)
            K = np.bincount(g.index, weights=lap.s, minlength=len(g.levels))
            N = np.bincount(g.index, weights=lap.n, minlength=len(g.levels))
            info = np.minimum(np.bincount(g.index, weights=w, minlength=len(g.levels)), K * (N - K) / N)
            sd_low = float(np.exp(theta[t] - 2 * sds[t]))
            g.centered[:] = info * sd_low**2 >= AUTO_CENTER_RATIO
            self._auto_rule[g.name] = {"sd_mode": float(np.exp(theta[t])), "log_sd_se": float(sds[t]),
                                      "sd_low": sd_low, "centred": int(g.centered.sum()),
                                      "levels": len(g.levels)}
        self._auto_rule["seconds"] = time.perf_counter() - t0
        self._auto_rule["evaluations"] = int(nfev)

    # ------------------------------------------------------------------ pymc
    def _build(self):
        import pymc as pm
        import pytensor.tensor as pt

        coords = {"pattern": np.arange(len(self.patterns))}
        non_int = [n for n in self.fixed_names if n != "Intercept"]
        if non_int:
            coords["fixed"] = non_int
        for g in self.groups:
            coords[g.dim] = g.levels
        successes = self.patterns["successes"].to_numpy(dtype=np.int64)
        trials = self.patterns["trials"].to_numpy(dtype=np.int64)
        with pm.Model(coords=coords) as model:
            eta = 0.0
            if "Intercept" in self.fixed_names:
                dist, p = self.priors["Intercept"]
                icpt = _fixed_rv(pm, "Intercept", dist, p, None)
                eta = eta + icpt
            if non_int:
                fams = {self.priors[n][0] for n in non_int}
                if len(fams) > 1:
                    raise ValueError(
                        f"the non-intercept fixed effects must share one prior family, got {sorted(fams)}"
                    )
                dist = fams.pop()
                params = {k: np.array([self.priors[n][1][k] for n in non_int])
                          for k in self.priors[non_int[0]][1]}
                beta = _fixed_rv(pm, "beta", dist, params, "fixed")
                cols = [self.fixed_names.index(n) for n in non_int]
                Xc = pt.as_tensor_variable(np.ascontiguousarray(self.X[:, cols]))
                eta = eta + pt.dot(Xc, beta)
            for g in self.groups:
                dist, p = self.priors[f"sd({g.name})"]
                sd = _sd_rv(pm, f"{g.var}_sigma", dist, p)
                cen = g.centered
                if cen.all():
                    u = pm.Normal(g.var, 0.0, sd, dims=g.dim)
                elif not cen.any():
                    z = pm.Normal(f"{g.var}_offset", 0.0, 1.0, dims=g.dim)
                    u = pm.Deterministic(g.var, sd * z, dims=g.dim)
                else:
                    ic, inc = np.flatnonzero(cen), np.flatnonzero(~cen)
                    model.add_coord(f"{g.dim}_c", [g.levels[i] for i in ic])
                    model.add_coord(f"{g.dim}_nc", [g.levels[i] for i in inc])
                    uc = pm.Normal(f"{g.var}_centered", 0.0, sd, dims=f"{g.dim}_c")
                    z = pm.Normal(f"{g.var}_offset", 0.0, 1.0, dims=f"{g.dim}_nc")
                    u = pt.zeros(len(g.levels))
                    u = pt.set_subtensor(u[ic], uc)
                    u = pt.set_subtensor(u[inc], sd * z)
                    u = pm.Deterministic(g.var, u, dims=g.dim)
                eta = eta + u[g.index]
            # The collapsed log-likelihood sum_j k_j log p_j + (n_j - k_j) log(1 - p_j): the
            # row-level Bernoulli one, without the binomial coefficients log C(n_j, k_j) (a
            # constant that pm.Binomial would recompute at every gradient, as the counts are
            # mutable data for set_responses).
            obs = pm.Data("successes", successes.astype(float), dims="pattern")
            n_t = pt.as_tensor_variable(trials.astype(float))
            pm.Potential("loglik", pt.sum(obs * eta - n_t * pt.softplus(eta)))  # k log p + (n-k) log(1-p)
        return model

    def set_responses(self, data: pd.DataFrame) -> HierarchicalModel:
        """Replace the responses by those of ``data`` with the same design; returns ``self``.

        For simulation studies and resampling: ``data`` must collapse to exactly the same
        patterns (same covariate combinations, same trials per pattern); only the refusal
        counts change. The compiled sampler (nutpie) is reused, so a refit skips
        compilation. The parametrisation chosen for the first data is kept (it changes
        the sampler's geometry, not the posterior).

        Parameters
        ----------
        data : DataFrame
            Rows with the same design as the data the model was built on.

        Returns
        -------
        HierarchicalModel
            ``self``, with the new counts.
        """
        import pymc as pm

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        check_columns(self.parsed, data)
        variables = self.parsed.variables
        y = _check_response(data, self.parsed.response)
        work = prepare_factors(data[variables], variables, self.reference)
        work[self.parsed.response] = y
        col = row_patterns(work, variables, self.parsed.response)
        new, old = col.patterns, self.patterns
        same = len(new) == len(old) and np.array_equal(new["trials"].to_numpy(), old["trials"].to_numpy())
        if same:
            for v in variables:
                if not np.array_equal(new[v].astype(str).to_numpy(), old[v].astype(str).to_numpy()):
                    same = False
                    break
        if not same:
            raise ValueError("set_responses: the new data do not have the same design (covariate "
                             "patterns and rows per pattern) as the data the model was built on; "
                             "build a new HierarchicalModel instead")
        succ = new["successes"].to_numpy()
        self.patterns = old.assign(successes=succ)
        self.inverse = col.inverse
        self.n_rows = len(work)
        self.observed_rate = float(y.mean())
        if self._model is not None:
            with self._model:
                pm.set_data({"successes": succ.astype(float)})
        if getattr(self, "_compiled", None) is not None:
            self._compiled = self._compiled.with_data(successes=succ.astype(float))
        return self

    @property
    def sd_names(self) -> list[str]:
        """Names of the group standard deviations in the posterior (``"1|g_sigma"``)."""
        return [f"{g.var}_sigma" for g in self.groups]

    @property
    def free_names(self) -> list[str]:
        """Names of the sampled parameters (for diagnostics)."""
        return [v.name for v in self.model.free_RVs]

    def log_likelihood(self, point: Mapping[str, np.ndarray], bernoulli: bool = True) -> float:
        """Log-likelihood of the data at a parameter point, as the model computes it.

        Parameters
        ----------
        point : mapping
            The model's value variables (``Intercept``, ``beta``, ``1|g_sigma_log__``,
            ``1|g_offset``, ...) to values.
        bernoulli : bool
            True (default): the row-level Bernoulli log-likelihood, which is what the model
            samples with. False: the binomial log-likelihood of the collapsed counts, which
            adds the constant :math:`\\sum \\log\\binom{n}{k}`.

        Returns
        -------
        float
        """
        from scipy.special import gammaln

        # compiled once per PyMC model (the responses are shared data, so set_responses
        # needs no recompile); each compile is a pytensor graph rewrite of ~0.3-1 s
        cached = getattr(self, "_loglik_fn", None)
        if cached is None or cached[0] is not self.model:
            cached = self._loglik_fn = (self.model, self.model.compile_logp(
                vars=list(self.model.potentials), sum=True, jacobian=False))
        ll = float(cached[1](dict(point)))
        if not bernoulli:
            n = self.patterns["trials"].to_numpy(dtype=float)
            k = self.patterns["successes"].to_numpy(dtype=float)
            ll += float(np.sum(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)))
        return ll

    # ------------------------------------------------------------------ sampling
    def fit(
        self,
        draws: int = 1000,
        tune: int = 500,
        chains: int = 4,
        sampler: str = "nutpie",
        seed: int | np.random.Generator | None = 0,
        target_accept: float = 0.9,
        method: str = "auto",
        cores: int | None = None,
        progress: bool = True,
        low_rank: bool = True,
        _stacklevel: int = 2,
    ) -> HierarchicalResult:
        """Sample the posterior (or approximate it). The one home of the sampler options.

        :func:`hierarchical` passes its ``**fit_kwargs`` here, as bambi's ``Model.fit``.

        Parameters
        ----------
        draws, tune, chains : int
            Posterior draws and warm-up iterations per chain, number of chains. With
            500 warm-up iterations (nutpie's adaptation; its own default is 300) P1's
            design without ``(1|item_id)`` met R-hat <= 1.01 and bulk and tail ESS >= 400
            in 5 of 5 runs (full scale, seeds 0-2; scale 0.1, seeds 0-1: R-hat <= 1.0077,
            ESS >= 648), in 24 s on an idle 2-core machine against 33 s with 1000
            (benchmarks/README.md). With ``(1|item_id)``, ``sd(persona:model)`` mixes
            slowly whatever the warm-up (tail ESS >= 400 in 4-5 of 12 seeds at 500 + 500;
            304 at 1000 + 1000): the ConvergenceWarning says when a fit falls short, and
            more ``draws`` is the remedy. The nested Laplace fit returns ``draws``
            independent draws in one chain (``tune`` and ``chains`` do not apply).
        sampler : {"nutpie", "pymc"}
            nutpie (default; falls back to PyMC when not installed) or PyMC's NUTS.
        seed : int, None or numpy.random.Generator
            Seed of the sampler (results are reproducible for a given int seed and
            sampler); a Generator or None draws the int seed, which the result records
            as ``.seed``.
        target_accept : float
            NUTS target acceptance rate; raise it when there are divergences.
        method : {"auto", "nuts", "laplace", "advi"}
            Which method runs (the result's ``sampler`` and ``settings["method"]`` say which
            did). ``"auto"`` (default): ``"nuts"`` when the table collapses to at most
            :data:`AUTO_LAPLACE_PATTERNS` (20,000) binomial patterns, ``"laplace"`` above
            that. Patterns are many when nothing collapses across a large random term: with
            ``(1|item_id)`` P1's full design keeps 2,032,160 patterns (12,700 items), where
            NUTS takes hours on 2 cores and the nested Laplace fit about a minute; without
            the item term it has 6,480 patterns and NUTS runs (~25 s).
            ``"nuts"``: exact MCMC (nutpie or PyMC). ``"laplace"``: nested Laplace
            approximation (INLA-like: Gaussian latent effects given the group sd's, the sd's
            integrated over 2T+1 design points), APPROXIMATE and labelled so in every
            output; ``draws`` independent draws, no R-hat. Checked against NUTS, lme4 and
            by calibration (docs/methods_hierarchical.md, "Nested Laplace"). ``"advi"``:
            mean-field variational approximation, fast but APPROXIMATE (intervals too
            narrow, no R-hat); labelled as such in every output.
        cores : int, optional
            Chains run in parallel on this many cores (default: min(chains, CPUs)).
        progress : bool
            Show the sampler's progress bar.
        low_rank : bool
            nutpie only: adapt a low-rank modified mass matrix, which follows the
            correlation between the intercept and the group means (default True).

        Returns
        -------
        HierarchicalResult
            A :class:`ConvergenceWarning` is issued when any R-hat > 1.01, any bulk or
            tail ESS < 400 or any divergence occurred.
        """
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            # a Generator (or None) gives the samplers an int seed, recorded on the result
            seed = int(check_random_state(seed).integers(2**31 - 1))
        elif seed < 0:
            check_random_state(seed)  # raises the one message for negative seeds
        for name, v in (("draws", draws), ("tune", tune), ("chains", chains)):
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "tune" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        if method not in ("auto", "nuts", "advi", "laplace"):
            raise ValueError(f"method must be 'auto', 'nuts' (exact MCMC), 'laplace' or 'advi' "
                             f"(approximate), got {method!r}")
        requested = method
        if method == "auto":
            method = "laplace" if len(self.patterns) > AUTO_LAPLACE_PATTERNS else "nuts"
        if sampler not in ("nutpie", "pymc"):
            raise ValueError(f"sampler must be 'nutpie' or 'pymc', got {sampler!r}")
        cores = int(cores or min(chains, os.cpu_count() or 1))
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        used = sampler
        if method == "advi":
            idata = self._fit_advi(draws, seed, progress)
            used = "advi"
        elif method == "laplace":
            idata, timings = self._fit_laplace(draws, seed, progress)
            used = "laplace"
        else:
            if sampler == "nutpie":
                try:
                    import nutpie  # noqa: F401
                except ImportError:
                    warnings.warn("nutpie is not installed; sampling with PyMC's NUTS instead", stacklevel=2)
                    used = "pymc"
            if used == "nutpie":
                idata, timings = self._fit_nutpie(draws, tune, chains, cores, seed, target_accept,
                                                  progress, low_rank)
            else:
                idata, timings = self._fit_pymc(draws, tune, chains, cores, seed, target_accept, progress)
        timings["total_s"] = time.perf_counter() - t0
        res = HierarchicalResult(self, idata, sampler=used, seed=seed, timings=timings,
                                  settings={"draws": draws, "tune": tune, "chains": chains,
                                            "target_accept": target_accept, "method": method,
                                            "method_requested": requested,
                                            "low_rank": low_rank,
                                            "parametrization": self.parametrization})
        msg = res._warning_text()
        if msg:
            warnings.warn(msg, ConvergenceWarning, stacklevel=_stacklevel)
        return res

    def _fit_nutpie(self, draws, tune, chains, cores, seed, target_accept, progress, low_rank):
        import nutpie

        t0 = time.perf_counter()
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            compiled = self._compiled = nutpie.compile_pymc_model(self.model)
        t1 = time.perf_counter()
        if progress:
            print(f"nutpie: model compiled in {t1 - t0:.1f} s; sampling {chains} chains x "
                  f"({tune} tune + {draws} draws) on {cores} core(s) ...", flush=True)
        idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores,
                              seed=int(seed), progress_bar=progress, target_accept=target_accept,
                              save_warmup=False, low_rank_modified_mass_matrix=low_rank)
        t2 = time.perf_counter()
        return idata, {"compile_s": t1 - t0, "sample_s": t2 - t1}

    def _fit_pymc(self, draws, tune, chains, cores, seed, target_accept, progress):
        import pymc as pm

        t0 = time.perf_counter()
        with self.model:
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=int(seed),
                              target_accept=target_accept, progressbar=progress,
                              compute_convergence_checks=False, nuts_sampler="pymc")
        return idata, {"sample_s": time.perf_counter() - t0}

    def _fit_laplace(self, draws, seed, progress):
        """Nested Laplace approximation (see :class:`~refusalstats.bayes.laplace._Laplace`).

        theta (the log group sd's) gets its posterior mode and the Hessian there (exact
        Laplace gradient, differences of gradients). The latent Gaussians N(x_hat(theta) +
        dx(theta), H(theta)^-1), with ``dx`` the second-order mean correction
        (:meth:`~refusalstats.bayes.laplace._Laplace.mean_shift`), are mixed over 2T+1 theta
        values: the mode and +-a along each eigenvector of the Hessian in standardised units
        (a = sqrt((2T+1)/2), so that equal weights reproduce the Gaussian's covariance),
        weighted by the Laplace posterior of theta relative to that Gaussian (INLA's
        correction). Each group sd's draws come from its log sd's Laplace marginal on a
        grid (:meth:`~refusalstats.bayes.laplace._Laplace.theta_marginal`), joined by the
        Gaussian's correlation. ``draws`` independent draws.
        """
        from threadpoolctl import threadpool_limits

        # one BLAS thread: the products are small (~280 x 12,700) and, on a loaded 2-core
        # machine, OpenBLAS's second thread made them ~10x slower (measured: 282^2 x 12,700
        # product 0.95 s with 2 threads, 0.09 s with 1, load average 9)
        with threadpool_limits(1, user_api="blas"):
            return self._fit_laplace_inner(draws, seed, progress)

    def _fit_laplace_inner(self, draws, seed, progress):
        import arviz as az

        t0 = time.perf_counter()
        lap = _Laplace(self)
        theta, H, nfev = lap.fit_theta()
        t1 = time.perf_counter()
        xd, xb, theta_draws, info = lap.sample(theta, H, draws, check_random_state(seed))
        post: dict[str, np.ndarray] = {}
        dims: dict[str, list[str]] = {}
        coords: dict[str, Any] = {}
        names = self.fixed_names
        non_int = [j for j, n in enumerate(names) if n != "Intercept"]
        if "Intercept" in names:
            post["Intercept"] = xd[None, :, names.index("Intercept")]
        if non_int:
            post["beta"] = xd[None, :, non_int]
            dims["beta"] = ["fixed"]
            coords["fixed"] = [names[j] for j in non_int]
        for t, g in enumerate(self.groups):
            vals = xb if t == lap.big else xd[:, lap.slices[t]]
            post[g.var] = vals[None]
            dims[g.var] = [g.dim]
            coords[g.dim] = np.asarray(g.levels)  # (arviz deep-copies coords: an array is cheap)
            post[f"{g.var}_sigma"] = np.exp(theta_draws[:, t])[None]
        idata = az.from_dict(posterior=post, dims=dims, coords=coords)
        t2 = time.perf_counter()
        self.laplace_info = {"theta_mode": theta.tolist(), "theta_sd": _theta_sd(H).tolist(),
                             "sd_mode": dict(zip([f"sd({g.name})" for g in self.groups],
                                                 np.exp(theta).tolist())),
                             "theta_hessian": H.tolist(), **info, "evaluations": int(lap.evaluations),
                             "newton_steps": int(lap.newton_steps), "big_term": self.groups[lap.big].name,
                             "cells": int(lap.J.shape[0]), "dense": int(lap.nd)}
        if progress:
            print(f"laplace: theta mode and curvature in {t1 - t0:.1f} s ({nfev} evaluations), "
                  f"design points and draws in {t2 - t1:.1f} s", flush=True)
        return idata, {"theta_s": t1 - t0, "draws_s": t2 - t1}

    def _fit_advi(self, draws, seed, progress):
        import pymc as pm

        with self.model:
            approx = pm.fit(n=30000, method="advi", random_seed=int(seed), progressbar=progress,
                            callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3)])
            idata = approx.sample(draws, random_seed=int(seed))
        return idata


def _theta_sd(H: np.ndarray) -> np.ndarray:
    """Marginal posterior sd of each log sd from the Hessian of -log p(theta | y) (capped at 2)."""
    try:
        cov = np.linalg.inv(H)
        sd = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), 4.0))
    except np.linalg.LinAlgError:  # pragma: no cover
        sd = np.full(len(H), 2.0)
    return np.minimum(sd, 2.0)


# --------------------------------------------------------------------------- entry point
def fit_options() -> list[str]:
    """The sampler options :func:`hierarchical` passes on to :meth:`HierarchicalModel.fit`.

    Returns
    -------
    list of str
        The keyword names, in the order of :meth:`HierarchicalModel.fit`'s signature.

    Examples
    --------
    >>> fit_options()[:3]
    ['draws', 'tune', 'chains']
    """
    return [n for n in inspect.signature(HierarchicalModel.fit).parameters
            if n != "self" and not n.startswith("_")]


def hierarchical(
    formula: str,
    data: pd.DataFrame | str | os.PathLike,
    *,
    reference: Mapping[str, object] | None = None,
    priors: Mapping[str, Any] | None = None,
    parametrization: str = "auto",
    **fit_kwargs: Any,
) -> HierarchicalResult:
    """Fit a Bayesian hierarchical logistic model of refusal with lme4-style random intercepts.

    Builds a :class:`HierarchicalModel` and calls its :meth:`~HierarchicalModel.fit`, as
    bambi's ``Model(formula, data).fit(...)``: model options are named here, sampler
    options (``draws``, ``tune``, ``chains``, ``sampler``, ``seed``, ``target_accept``,
    ``method``, ``cores``, ``progress``, ``low_rank``) go to ``.fit()`` and are documented
    there.

    Parameters
    ----------
    formula : str
        ``"refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)"``: the
        fixed part in R syntax (formulaic; treatment coding, ``reference=`` sets the
        reference levels), random intercepts ``(1|g)`` and ``(1|g1:g2)``. Random slopes
        are refused.
    data : DataFrame, path or glob
        One row per response (the response column holds 0/1 or booleans); or a Parquet
        file, a folder of Parquet shards or a glob, streamed into binomial counts by
        :func:`refusalstats.collapse` without loading the rows (same posterior).
    reference : mapping, optional
        Reference level per fixed-effect factor, e.g. ``{"task": "nli", "prompt": "p1"}``.
    priors : mapping, optional
        Overrides of :data:`~refusalstats.bayes.DEFAULT_PRIORS` (logit scale):
        ``"Intercept"``, ``"fixed"``, ``"sd"``, a fixed effect by name or a group sd as
        ``"sd(<term>)"``; values like ``("normal", 0, 2.5)``, ``("student_t", 3, 0, 2.5)``,
        ``("halfnormal", 1)``, ``("exponential", 1)``, ``("halfstudent_t", 3, 1)``,
        ``("halfcauchy", 1)``.
    parametrization : {"auto", "centered", "noncentered"}
        How group effects are sampled. "noncentered": every level as ``sd * z`` with
        ``z ~ N(0, 1)``; "centered": ``u ~ N(0, sd)``; "auto" (default): per level, centred
        when the data outweigh the prior (a quick Laplace fit decides, see
        :data:`AUTO_CENTER_RATIO`), non-centred otherwise. Same posterior, different
        geometry.
    **fit_kwargs
        Sampler options passed to :meth:`HierarchicalModel.fit` (:func:`fit_options`
        lists them); any other name is a ``TypeError``.

    Returns
    -------
    HierarchicalResult
        ``.idata`` (ArviZ InferenceData), ``.to_frame()``, ``.summary()``, ``.conf_int()``,
        ``.diagnostics()``, ``.effects(term, within=)``, ``.predict()``, ``.ppc()``,
        ``.plot_ppc()``, ``.plot_shrinkage()``. A :class:`ConvergenceWarning` is issued
        when any R-hat > 1.01, any bulk or tail ESS < 400 or any divergence occurred.

    Raises
    ------
    TypeError
        A keyword that is neither a model option nor a sampler option (the message lists
        the valid ones).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.05)
    >>> fit = rs.hierarchical(
    ...     "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)",
    ...     df, reference={"task": "nli", "prompt": "p1"}, chains=4)  # doctest: +SKIP
    >>> fit.effects("persona", within="model")  # doctest: +SKIP
    """
    valid = fit_options()
    unknown = sorted(k for k in fit_kwargs if k not in valid)
    if unknown:
        raise TypeError(
            f"hierarchical() got unexpected keyword argument(s) {unknown}; model options are "
            f"'reference', 'priors', 'parametrization' and sampler options (passed to .fit()) are "
            f"{valid}"
        )
    spec = HierarchicalModel(formula, data, reference=reference, priors=priors,
                             parametrization=parametrization)
    return spec.fit(**fit_kwargs, _stacklevel=3)
