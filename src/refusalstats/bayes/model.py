"""Bayesian hierarchical (multilevel) logistic model of refusal, in PyMC.

``hierarchical("refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)", df)``
fits

.. math::

    \\operatorname{logit} P(y_i = 1) = \\alpha + x_i^\\top \\beta
        + \\sum_t \\sigma_t z_{t, g_t(i)}, \\qquad z_{t, l} \\sim N(0, 1),

with the fixed part in R (Wilkinson) syntax, random intercepts in lme4 syntax and
non-centred group effects :math:`u_{t,l} = \\sigma_t z_{t,l}`. Rows are collapsed to
unique combinations of fixed-effect variables and grouping levels with binomial
counts (:func:`refusalstats.formula.collapse`), so two million rows of the paper's
design cost at most 6,480 binomial terms; the binomial likelihood differs from the
Bernoulli one only by the constant :math:`\\sum \\log\\binom{n}{k}`, so the posterior is
the same. Sampling uses nutpie (Rust NUTS on a numba-compiled log density) by default,
PyMC's NUTS as a fallback, or ADVI as an explicitly approximate shortcut.

The maths and the default priors are in ``docs/methods_hierarchical.md``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._summary import Summary
from ._validation import check_conf, check_random_state
from .formula import (
    FormulaError,
    ParsedFormula,
    RandomTerm,
    check_columns,
    collapse,
    fixed_design,
    group_index,
    new_design,
    parse_formula,
    prepare_factors,
)

__all__ = [
    "DEFAULT_PRIORS",
    "ConvergenceWarning",
    "HierarchicalModel",
    "HierarchicalResult",
    "hierarchical",
]


class ConvergenceWarning(UserWarning):
    """The sampler's diagnostics (R-hat, ESS, divergences) say the draws are not trustworthy."""


#: Default priors (logit scale). Keys: "Intercept", "fixed" (every other fixed effect),
#: "sd" (every group standard deviation). Override any of them, a single fixed effect by
#: its column name (e.g. ``"task[T.politeness]"``) or a single group sd by its term
#: (e.g. ``"sd(persona:model)"``) through ``priors=``.
DEFAULT_PRIORS: dict[str, tuple] = {
    "Intercept": ("normal", 0.0, 5.0),
    "fixed": ("normal", 0.0, 2.5),
    "sd": ("exponential", 1.0),
}

_FIXED_FAMILIES = {"normal": ("mu", "sigma"), "student_t": ("nu", "mu", "sigma")}
_SD_FAMILIES = {
    "halfnormal": ("sigma",),
    "exponential": ("lam",),
    "halfstudent_t": ("nu", "sigma"),
    "halfcauchy": ("beta",),
}

_DIAG = {"r_hat": 1.01, "ess": 400}

#: parametrization="auto": a group level is sampled centred when the data pin its effect
#: down, i.e. its observed Fisher information sum k(n-k)/n is at least this (likelihood
#: sd <= 0.2 on the logit scale); otherwise non-centred (levels with few or no refusals).
AUTO_CENTER_INFO = 25.0

#: parametrization="auto": a level is centred when its Fisher information times the low end
#: of its group variance (``I_l * sd_low**2``, see ``HierarchicalModel._auto_centre``) is at
#: least this: the data then outweigh the prior, and the non-centred form would be a ridge.
AUTO_CENTER_RATIO = 1.0


# --------------------------------------------------------------------------- priors
def _prior_spec(key: str, value: Any, families: Mapping[str, tuple[str, ...]]) -> tuple[str, dict]:
    """Normalise a prior given as ``("normal", 0, 2.5)`` or ``{"dist": "normal", ...}``."""
    allowed = ", ".join(f"({f!r}, {', '.join(p)})" for f, p in families.items())
    if isinstance(value, Mapping):
        value = dict(value)
        dist = value.pop("dist", None)
        params = value
    elif isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
        dist = value[0]
        names = families.get(str(value[0]).lower())
        if names is None:
            params = {}
        else:
            if len(value) - 1 != len(names):
                raise ValueError(
                    f"prior {key!r}: {value[0]!r} takes {len(names)} parameter(s) {names}, "
                    f"got {len(value) - 1}: {tuple(value)}; e.g. {key!r}: {allowed.split(', (')[0]}"
                )
            params = dict(zip(names, value[1:]))
    else:
        raise ValueError(
            f"prior {key!r} must be a tuple like ('normal', 0, 2.5) or a dict like "
            f"{{'dist': 'normal', 'mu': 0, 'sigma': 2.5}}; got {value!r}"
        )
    if not isinstance(dist, str) or dist.lower() not in families:
        raise ValueError(f"prior {key!r}: distribution {dist!r} is not available here; use one of {allowed}")
    dist = dist.lower()
    names = families[dist]
    if set(params) != set(names):
        raise ValueError(f"prior {key!r}: {dist!r} needs parameters {names}, got {sorted(params)}")
    out = {}
    for n in names:
        try:
            v = float(params[n])
        except (TypeError, ValueError):
            raise ValueError(f"prior {key!r}: parameter {n}={params[n]!r} is not a number") from None
        if not np.isfinite(v):
            raise ValueError(f"prior {key!r}: parameter {n}={v} must be finite")
        if n != "mu" and v <= 0:
            raise ValueError(f"prior {key!r}: parameter {n} must be > 0, got {v}")
        out[n] = v
    return dist, out


def _resolve_priors(
    priors: Mapping[str, Any] | None, fixed_names: Sequence[str], term_names: Sequence[str]
) -> dict[str, tuple[str, dict]]:
    """Resolve user priors to one spec per parameter: keys ``Intercept``, each fixed name,
    ``sd(<term>)``."""
    priors = dict(priors or {})
    sd_keys = {f"sd({t})": t for t in term_names}
    valid = {"Intercept", "fixed", "sd", *fixed_names, *sd_keys}
    unknown = [k for k in priors if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown prior key(s) {unknown}; valid keys are 'Intercept', 'fixed', 'sd', a fixed "
            f"effect {[n for n in fixed_names if n != 'Intercept']} or a group sd {list(sd_keys)}"
        )
    merged = {**DEFAULT_PRIORS, **priors}
    out: dict[str, tuple[str, dict]] = {}
    for name in fixed_names:
        if name == "Intercept":
            out[name] = _prior_spec("Intercept", merged["Intercept"], _FIXED_FAMILIES)
        else:
            key = name if name in priors else "fixed"
            out[name] = _prior_spec(key, merged[key], _FIXED_FAMILIES)
    for key in sd_keys:
        k = key if key in priors else "sd"
        out[key] = _prior_spec(k, merged[k], _SD_FAMILIES)
    return out


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
    if s.isna().any():
        raise ValueError(
            f"response '{response}' has {int(s.isna().sum())} missing value(s); drop those rows first"
        )
    if pd.api.types.is_bool_dtype(s):
        y = s.to_numpy(dtype=float)
    else:
        try:
            y = pd.to_numeric(s).to_numpy(dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"response '{response}' must hold 0/1 or True/False; found {s.dtype} values") from None
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"response '{response}' must hold 0/1 or True/False; found {int(bad.sum())} other "
                f"value(s), e.g. {pd.unique(s[bad])[:5].tolist()}"
            )
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
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        parsed = parse_formula(formula)
        if not parsed.random:
            raise FormulaError(
                f"formula {formula!r} has no random intercept such as '(1|persona)'; "
                "for a model with fixed effects only use refusalstats.logit"
            )
        check_columns(parsed, data)
        self.parsed: ParsedFormula = parsed
        self.formula = formula
        variables = parsed.variables
        if parsed.response in variables:
            raise FormulaError(f"the response '{parsed.response}' also appears on the right of '~'")
        y = _check_response(data, parsed.response)
        work = prepare_factors(data[variables], variables, reference)
        for g in parsed.group_variables:
            n_lev = work[g].nunique(dropna=True)
            if n_lev < 2:
                raise ValueError(
                    f"grouping factor '{g}' has a single level {pd.unique(work[g].dropna()).tolist()}; "
                    f"a random intercept needs at least two levels — remove '(1|{g})' from the formula"
                )
            if work[g].isna().any():
                raise ValueError(f"grouping column '{g}' has {int(work[g].isna().sum())} missing value(s)")
        work[parsed.response] = y
        self.reference = dict(reference or {})
        self.n_rows = len(work)
        self.observed_rate = float(y.mean())
        col = collapse(work, variables, parsed.response)
        self.patterns: pd.DataFrame = col.patterns
        self.inverse: np.ndarray = col.inverse
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
        self.auto_rule: dict[str, Any] = {}
        if parametrization == "auto":
            self._auto_centre()
        self.model = self._build()

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

        t0 = time.perf_counter()
        try:
            lap = _Laplace(self)
            theta, sds, nfev = lap.fit_theta(tol=1e-2)
            md = lap.mode(theta)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:  # pragma: no cover
            warnings.warn(f"parametrization='auto': the quick Laplace fit failed ({exc}); "
                          f"falling back to the information rule (>= {AUTO_CENTER_INFO})", stacklevel=3)
            for g in self.groups:
                g.centered[:] = g.information >= AUTO_CENTER_INFO
            return
        eta = lap.J @ md["x_d"] + md["x_b"][lap.bidx]
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
            self.auto_rule[g.name] = {"sd_mode": float(np.exp(theta[t])), "log_sd_se": float(sds[t]),
                                      "sd_low": sd_low, "centred": int(g.centered.sum()),
                                      "levels": len(g.levels)}
        self.auto_rule["seconds"] = time.perf_counter() - t0
        self.auto_rule["evaluations"] = int(nfev)

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
            obs = pm.Data("successes", successes, dims="pattern")
            pm.Binomial(self.parsed.response, n=trials, logit_p=eta, observed=obs, dims="pattern")
        return model

    def set_responses(self, data: pd.DataFrame) -> HierarchicalModel:
        """Replace the responses by those of ``data`` with the same design; returns ``self``.

        For simulation studies and resampling: ``data`` must collapse to exactly the same
        patterns (same covariate combinations, same trials per pattern); only the refusal
        counts change. The compiled sampler (nutpie) is reused, so a refit skips
        compilation. The parametrisation chosen for the first data is kept (it changes
        the sampler's geometry, not the posterior).
        """
        import pymc as pm

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        check_columns(self.parsed, data)
        variables = self.parsed.variables
        y = _check_response(data, self.parsed.response)
        work = prepare_factors(data[variables], variables, self.reference)
        work[self.parsed.response] = y
        col = collapse(work, variables, self.parsed.response)
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
        with self.model:
            pm.set_data({"successes": succ.astype(np.int64)})
        if getattr(self, "_compiled", None) is not None:
            self._compiled = self._compiled.with_data(successes=succ.astype(np.int64))
        return self

    @property
    def sd_names(self) -> list[str]:
        return [f"{g.var}_sigma" for g in self.groups]

    @property
    def free_names(self) -> list[str]:
        """Names of the sampled parameters (for diagnostics)."""
        return [v.name for v in self.model.free_RVs]

    def log_likelihood(self, point: Mapping[str, np.ndarray], bernoulli: bool = True) -> float:
        """Log-likelihood of the data at a parameter point, as the model computes it.

        ``point`` maps the model's value variables (``Intercept``, ``beta``,
        ``1|g_sigma_log__``, ``1|g_offset``) to values. PyMC's binomial log-probability
        includes :math:`\\sum \\log\\binom{n}{k}`; with ``bernoulli=True`` (default) that
        constant is subtracted, which gives exactly the row-level Bernoulli log-likelihood.
        """
        from scipy.special import gammaln

        f = self.model.compile_logp(vars=self.model.observed_RVs, sum=True, jacobian=False)
        ll = float(f(dict(point)))
        if bernoulli:
            n = self.patterns["trials"].to_numpy(dtype=float)
            k = self.patterns["successes"].to_numpy(dtype=float)
            ll -= float(np.sum(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)))
        return ll

    # ------------------------------------------------------------------ sampling
    def fit(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        sampler: str = "nutpie",
        seed: int | np.random.Generator | None = 0,
        target_accept: float = 0.9,
        method: str = "nuts",
        cores: int | None = None,
        progress: bool = True,
        low_rank: bool = True,
        _stacklevel: int = 2,
    ) -> HierarchicalResult:
        """Sample the posterior; see :func:`hierarchical` for the arguments."""
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
        if method not in ("nuts", "advi", "laplace"):
            raise ValueError(f"method must be 'nuts' (exact MCMC), 'laplace' or 'advi' (approximate), "
                             f"got {method!r}")
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
        """Nested Laplace approximation (see :class:`_Laplace`); ``draws`` independent draws.

        The log sd's ``theta`` get their posterior mode and a curvature sd each; the latent
        Gaussians are mixed over 2T+1 points (the mode and +-a sd along each axis, a =
        sqrt((2T+1)/2) so the design matches the Gaussian's variances), weighted by the
        Laplace posterior of theta relative to its Gaussian approximation (INLA's
        correction). Group sd draws are log-normal from the mode and curvature.
        """
        import arviz as az

        t0 = time.perf_counter()
        lap = _Laplace(self)
        theta, sds, nfev = lap.fit_theta()
        t1 = time.perf_counter()
        T = len(theta)
        a = np.sqrt((2 * T + 1) / 2)
        points = [theta] + [theta + sgn * a * sds[t] * np.eye(T)[t] for t in range(T) for sgn in (1, -1)]
        lps, modes = [], []
        for th in points:
            lp, md = lap.log_post_theta(th)
            lps.append(lp)
            modes.append(md)
        lq = np.array([0.0] + [-0.5 * a * a] * (2 * T))
        logw = np.array(lps) - lps[0] - lq
        w = np.exp(logw - logw.max())
        w /= w.sum()
        rng = check_random_state(seed)
        counts = rng.multinomial(draws, w)
        xd, xb = [], []
        for md, c in zip(modes, counts):
            if c == 0:
                continue
            z = rng.standard_normal((c, lap.nd))
            dd = np.linalg.solve(md["cho"].T, z.T).T
            db = -(dd @ md["B"]) / md["D"][None, :] + rng.standard_normal((c, lap.nb)) / np.sqrt(md["D"])[None, :]
            xd.append(md["x_d"][None, :] + dd)
            xb.append(md["x_b"][None, :] + db)
        xd, xb = np.vstack(xd), np.vstack(xb)
        perm = rng.permutation(draws)
        xd, xb = xd[perm], xb[perm]
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
            coords[g.dim] = g.levels
            post[f"{g.var}_sigma"] = np.exp(theta[t] + sds[t] * rng.standard_normal(draws))[None]
        idata = az.from_dict(posterior=post, dims=dims, coords=coords)
        t2 = time.perf_counter()
        self.laplace_info = {"theta_mode": theta.tolist(), "theta_sd": sds.tolist(),
                             "sd_mode": dict(zip([f"sd({g.name})" for g in self.groups],
                                                 np.exp(theta).tolist())),
                             "weights": w.tolist(), "evaluations": int(nfev + len(points))}
        if progress:
            print(f"laplace: sd mode in {t1 - t0:.1f} s ({nfev} evaluations), draws in {t2 - t1:.1f} s",
                  flush=True)
        return idata, {"theta_s": t1 - t0, "draws_s": t2 - t1}

    def _fit_advi(self, draws, seed, progress):
        import pymc as pm

        with self.model:
            approx = pm.fit(n=30000, method="advi", random_seed=int(seed), progressbar=progress,
                            callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3)])
            idata = approx.sample(draws, random_seed=int(seed))
        return idata


# --------------------------------------------------------------------------- Laplace
class _Laplace:
    """Nested Laplace approximation of the hierarchical posterior (INLA-like, labelled approximate).

    Given the log group sd's ``theta``, the latent vector ``x = (fixed effects, group
    effects)`` has a log-concave conditional posterior; its mode and the Hessian ``H``
    there give a Gaussian ``N(x_hat, H^-1)`` and the Laplace marginal
    ``log p(y, theta) ~ log p(y, x_hat, theta) - log det(H) / 2 + dim(x) log(2 pi) / 2``.
    The random term with the most levels (e.g. ``item_id``) forms a diagonal block ``D``
    of ``H``; everything else (fixed effects and the smaller terms) a dense block ``A``,
    so every solve and determinant goes through the small Schur complement
    ``S = A - B D^-1 B'``. Cost per Newton step: one pass over the collapsed patterns.
    """

    def __init__(self, m: HierarchicalModel):
        from scipy import sparse

        self.m = m
        self.s = m.patterns["successes"].to_numpy(dtype=float)
        self.n = m.patterns["trials"].to_numpy(dtype=float)
        n_pat = len(self.s)
        sizes = [len(g.levels) for g in m.groups]
        self.big = int(np.argmax(sizes))
        self.p = len(m.fixed_names)
        blocks = [sparse.csr_matrix(m.X)]
        self.slices: dict[int, slice] = {}
        start = self.p
        for t, g in enumerate(m.groups):
            if t == self.big:
                continue
            L = len(g.levels)
            blocks.append(sparse.csr_matrix((np.ones(n_pat), (np.arange(n_pat), g.index)), shape=(n_pat, L)))
            self.slices[t] = slice(start, start + L)
            start += L
        self.J = sparse.hstack(blocks, format="csr")
        self.JT = self.J.T.tocsr()
        self.nd = start
        self.bidx = m.groups[self.big].index
        self.nb = sizes[self.big]
        self.E = sparse.csr_matrix((np.ones(n_pat), (np.arange(n_pat), self.bidx)), shape=(n_pat, self.nb))
        # fixed-effect priors: normal (exact) or Student-t
        self.fx_prior = [m.priors[name] for name in m.fixed_names]
        self.x_d = np.zeros(self.nd)
        self.x_b = np.zeros(self.nb)
        rate = np.clip(self.s.sum() / self.n.sum(), 1e-6, 1 - 1e-6)
        if "Intercept" in m.fixed_names:
            self.x_d[m.fixed_names.index("Intercept")] = np.log(rate / (1 - rate))

    # latent prior pieces -------------------------------------------------
    def _fixed_prior(self, beta):
        lp = np.zeros(self.p)
        g = np.zeros(self.p)
        h = np.zeros(self.p)
        for j, (dist, q) in enumerate(self.fx_prior):
            r = beta[j] - q["mu"]
            if dist == "normal":
                lp[j] = -0.5 * (r / q["sigma"]) ** 2
                g[j] = -r / q["sigma"] ** 2
                h[j] = 1 / q["sigma"] ** 2
            else:
                nu, s2 = q["nu"], q["sigma"] ** 2
                lp[j] = -(nu + 1) / 2 * np.log1p(r * r / (nu * s2))
                g[j] = -(nu + 1) * r / (nu * s2 + r * r)
                h[j] = (nu + 1) / (nu * s2 + r * r)  # Fisher-type (positive) curvature
        return lp.sum(), g, h

    def _prec(self, theta):
        """Prior precision of the dense latent block (0 for fixed effects, set separately)."""
        prec = np.zeros(self.nd)
        for t, sl in self.slices.items():
            prec[sl] = np.exp(-2 * theta[t])
        return prec

    def _objective(self, x_d, x_b, theta):
        from scipy.special import log_expit

        eta = self.J @ x_d + x_b[self.bidx]
        ll = float(np.sum(self.s * log_expit(eta) + (self.n - self.s) * log_expit(-eta)))
        lpf, _, _ = self._fixed_prior(x_d[: self.p])
        prec = self._prec(theta)
        lpr = -0.5 * float(np.sum(prec * x_d**2)) - 0.5 * float(np.sum(x_b**2)) * np.exp(-2 * theta[self.big])
        return ll + lpf + lpr, eta

    def mode(self, theta, tol=1e-9, max_iter=100):
        """Conditional mode and Hessian blocks at ``theta`` (log sd's, one per term)."""
        from scipy.special import expit

        x_d, x_b = self.x_d.copy(), self.x_b.copy()
        f, eta = self._objective(x_d, x_b, theta)
        prec_b = np.exp(-2 * theta[self.big])
        for it in range(max_iter):
            q = expit(eta)
            w = self.n * q * (1 - q)
            r = self.s - self.n * q
            _, gf, hf = self._fixed_prior(x_d[: self.p])
            prec = self._prec(theta)
            prec[: self.p] = hf
            g_d = self.JT @ r - prec * x_d
            g_d[: self.p] = (self.JT @ r)[: self.p] + gf
            g_b = np.bincount(self.bidx, weights=r, minlength=self.nb) - prec_b * x_b
            Jw = self.J.multiply(w[:, None]).tocsr()
            A = (self.JT @ Jw).toarray() + np.diag(prec)
            B = (Jw.T @ self.E).toarray()
            D = np.bincount(self.bidx, weights=w, minlength=self.nb) + prec_b
            BDi = B / D[None, :]
            S = A - BDi @ B.T
            S = (S + S.T) / 2
            cho = np.linalg.cholesky(S + 1e-10 * np.eye(self.nd))
            rhs = g_d - BDi @ g_b
            dx_d = np.linalg.solve(cho.T, np.linalg.solve(cho, rhs))
            dx_b = (g_b - B.T @ dx_d) / D
            step = 1.0
            while True:
                f_new, eta_new = self._objective(x_d + step * dx_d, x_b + step * dx_b, theta)
                if f_new >= f - 1e-10 * abs(f) or step < 1e-6:
                    break
                step /= 2
            x_d, x_b = x_d + step * dx_d, x_b + step * dx_b
            decrement = float(g_d @ dx_d + g_b @ dx_b)  # Newton decrement: 2x the predicted gain
            done = step == 1.0 and decrement < tol
            f, eta = f_new, eta_new
            if done:
                break
        # Hessian at the final point
        q = expit(eta)
        w = self.n * q * (1 - q)
        _, _, hf = self._fixed_prior(x_d[: self.p])
        prec = self._prec(theta)
        prec[: self.p] = hf
        Jw = self.J.multiply(w[:, None]).tocsr()
        A = (self.JT @ Jw).toarray() + np.diag(prec)
        B = (Jw.T @ self.E).toarray()
        D = np.bincount(self.bidx, weights=w, minlength=self.nb) + prec_b
        S = A - (B / D[None, :]) @ B.T
        S = (S + S.T) / 2
        cho = np.linalg.cholesky(S + 1e-10 * np.eye(self.nd))
        self.x_d, self.x_b = x_d, x_b  # warm start for the next theta
        logdet = 2 * float(np.sum(np.log(np.diag(cho)))) + float(np.sum(np.log(D)))
        return {"x_d": x_d, "x_b": x_b, "f": f, "cho": cho, "B": B, "D": D, "logdet": logdet,
                "w": w, "iterations": it + 1}

    def log_post_theta(self, theta):
        """Laplace approximation of log p(theta | y) + const (theta = log sd's)."""
        from scipy import stats

        md = self.mode(theta)
        out = md["f"] - 0.5 * md["logdet"]
        # the normalising constants of the group-effect priors: -L_t log sd_t
        for t, g in enumerate(self.m.groups):
            out -= len(g.levels) * theta[t]
        for t, g in enumerate(self.m.groups):
            dist, q = self.m.priors[f"sd({g.name})"]
            sd = np.exp(theta[t])
            if dist == "halfnormal":
                lp = stats.halfnorm(scale=q["sigma"]).logpdf(sd)
            elif dist == "exponential":
                lp = stats.expon(scale=1 / q["lam"]).logpdf(sd)
            elif dist == "halfstudent_t":
                lp = stats.t(q["nu"], scale=q["sigma"]).logpdf(sd) + np.log(2)
            else:
                lp = stats.halfcauchy(scale=q["beta"]).logpdf(sd)
            out += lp + theta[t]  # Jacobian of sd = exp(theta)
        return float(out), md

    def fit_theta(self, tol=1e-3):
        """Posterior mode of theta and the curvature-based sd of each log sd."""
        from scipy.optimize import minimize

        T = len(self.m.groups)
        theta0 = np.full(T, np.log(0.5))
        cache = {}

        def neg(th):
            key = tuple(np.round(th, 10))
            if key not in cache:
                cache[key] = -self.log_post_theta(np.asarray(th))[0]
            return cache[key]

        def grad(th):  # central differences (the inner modes are solved to ~1e-9)
            h = 1e-3
            return np.array([(neg(th + h * e) - neg(th - h * e)) / (2 * h) for e in np.eye(T)])

        res = minimize(neg, theta0, jac=grad, method="L-BFGS-B", bounds=[(-12.0, 5.0)] * T,
                       options={"gtol": tol, "maxiter": 100})
        theta = np.asarray(res.x)
        f0 = neg(theta)
        h = 0.2
        sds = np.empty(T)
        for t in range(T):
            e = np.zeros(T)
            e[t] = h
            curv = (neg(theta + e) - 2 * f0 + neg(theta - e)) / h**2
            sds[t] = 1 / np.sqrt(curv) if curv > 1e-8 else 2.0
        return theta, np.minimum(sds, 2.0), len(cache)


def _fixed_rv(pm, name, dist, p, dims):
    if dist == "normal":
        return pm.Normal(name, mu=p["mu"], sigma=p["sigma"], dims=dims)
    return pm.StudentT(name, nu=p["nu"], mu=p["mu"], sigma=p["sigma"], dims=dims)


def _sd_rv(pm, name, dist, p):
    if dist == "halfnormal":
        return pm.HalfNormal(name, sigma=p["sigma"])
    if dist == "exponential":
        return pm.Exponential(name, lam=p["lam"])
    if dist == "halfstudent_t":
        return pm.HalfStudentT(name, nu=p["nu"], sigma=p["sigma"])
    return pm.HalfCauchy(name, beta=p["beta"])


# --------------------------------------------------------------------------- results
def _hdi(x: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval along axis 0 (shortest interval holding ``prob`` of draws)."""
    x = np.sort(np.asarray(x, dtype=float), axis=0)
    n = x.shape[0]
    k = int(np.floor(prob * n))
    if k < 1 or k >= n:
        return x[0], x[-1]
    widths = x[k:] - x[: n - k]
    i = np.argmin(widths, axis=0)
    lo = np.take_along_axis(x, i[None, ...], axis=0)[0]
    hi = np.take_along_axis(x, (i + k)[None, ...], axis=0)[0]
    return lo, hi


def _draws(idata, name: str) -> np.ndarray:
    """Posterior draws of a variable with chains and draws flattened into axis 0."""
    a = idata.posterior[name].to_numpy()
    return a.reshape((-1,) + a.shape[2:])


@dataclass
class HierarchicalResult:
    """A fitted hierarchical model: posterior draws and the questions they answer.

    ``idata`` is the ArviZ ``InferenceData`` (posterior, sample_stats); the other
    attributes describe the fit. Convergence problems were warned about when fitting;
    :meth:`diagnostics` reports them again.
    """

    model: HierarchicalModel
    idata: Any
    sampler: str
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._diag: dict[str, Any] | None = None
        self._summary: pd.DataFrame | None = None
        self._eta_cache: np.ndarray | None = None

    # ------------------------------------------------------------------ basics
    @property
    def approximate(self) -> bool:
        return self.sampler in ("advi", "laplace")

    @property
    def n_draws(self) -> int:
        p = self.idata.posterior
        return int(p.sizes["chain"] * p.sizes["draw"])

    def diagnostics(self) -> dict[str, Any]:
        """R-hat, bulk/tail ESS over all sampled parameters, divergences, timings.

        Returns
        -------
        dict
            ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ``worst_rhat`` (parameter
            name), ``divergences``, ``chains``, ``draws``, ``sampler``, ``seconds``.
        """
        if self._diag is not None:
            return self._diag
        import arviz as az

        names = self.model.free_names
        d: dict[str, Any] = {"sampler": self.sampler, "chains": int(self.idata.posterior.sizes["chain"]),
                             "draws": int(self.idata.posterior.sizes["draw"]),
                             "seconds": round(self.timings.get("total_s", float("nan")), 2)}
        if self.approximate:
            d.update(max_rhat=np.nan, min_ess_bulk=np.nan, min_ess_tail=np.nan, worst_rhat=None,
                     divergences=0)
            self._diag = d
            return d
        post = self.idata.posterior[names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rhat = az.rhat(post)
            ess_b = az.ess(post, method="bulk")
            ess_t = az.ess(post, method="tail")

        def flat(ds):
            out = {}
            for v in ds.data_vars:
                a = np.atleast_1d(ds[v].to_numpy()).ravel()
                for i, x in enumerate(a):
                    out[v if a.size == 1 else f"{v}[{i}]"] = float(x)
            return pd.Series(out)

        r, eb, et = flat(rhat), flat(ess_b), flat(ess_t)
        d["max_rhat"] = float(np.nanmax(r.to_numpy())) if r.notna().any() else np.nan
        d["worst_rhat"] = str(r.idxmax()) if r.notna().any() else None
        d["min_ess_bulk"] = float(np.nanmin(eb.to_numpy()))
        d["min_ess_tail"] = float(np.nanmin(et.to_numpy()))
        div = self.idata.sample_stats.get("diverging")
        d["divergences"] = int(div.to_numpy().sum()) if div is not None else 0
        self._diag = d
        return d

    def _warning_text(self) -> str:
        if self.approximate:
            return ""
        d = self.diagnostics()
        problems = []
        if not (d["max_rhat"] <= _DIAG["r_hat"]):
            problems.append(f"max R-hat {d['max_rhat']:.3f} > {_DIAG['r_hat']} (at {d['worst_rhat']})")
        if not (d["min_ess_bulk"] >= _DIAG["ess"]):
            problems.append(f"min bulk ESS {d['min_ess_bulk']:.0f} < {_DIAG['ess']}")
        if not (d["min_ess_tail"] >= _DIAG["ess"]):
            problems.append(f"min tail ESS {d['min_ess_tail']:.0f} < {_DIAG['ess']}")
        if d["divergences"] > 0:
            problems.append(f"{d['divergences']} divergent transition(s)")
        if not problems:
            return ""
        advice = []
        if d["divergences"] > 0:
            advice.append("raise target_accept (e.g. 0.95 or 0.99) or use tighter priors")
        if any("R-hat" in p or "ESS" in p for p in problems):
            advice.append("run longer (more draws and tune) or more chains")
        return ("the posterior draws may not be trustworthy: " + "; ".join(problems)
                + ". Try: " + "; ".join(advice) + ".")

    # ------------------------------------------------------------------ summary
    def to_frame(self, conf: float = 0.95) -> pd.DataFrame:
        """Fixed effects and group standard deviations (logit scale), one row per term.

        Parameters
        ----------
        conf : float
            Probability mass of the highest-density intervals.

        Returns
        -------
        DataFrame
            Index ``term``; columns ``mean``, ``sd``, ``ci_low``, ``ci_high`` (highest-density
            interval with mass ``conf``; ``attrs["interval"]`` says e.g. ``"95% HDI"``),
            ``p_gt_0`` (posterior probability the value exceeds 0), ``r_hat``, ``ess_bulk``,
            ``ess_tail``. Rows are the fixed-effect names and ``sd(<term>)`` for each random
            term. Divergences and the worst diagnostics over all parameters are in
            ``.attrs["diagnostics"]`` (see :meth:`diagnostics`).
        """
        import arviz as az

        conf = check_conf(conf)

        rows = []
        names = []
        stats: dict[str, pd.DataFrame] = {}
        m = self.model
        want = [v for v in ["Intercept", "beta", *m.sd_names] if v in self.idata.posterior]
        if not self.approximate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = az.summary(self.idata, var_names=want, kind="diagnostics")
            stats = s
        for n in m.fixed_names:
            if n == "Intercept":
                draws, key = _draws(self.idata, "Intercept"), "Intercept"
            else:
                j = [x for x in m.fixed_names if x != "Intercept"].index(n)
                draws, key = _draws(self.idata, "beta")[:, j], f"beta[{n}]"
            rows.append((draws, key))
            names.append(n)
        for g in m.groups:
            rows.append((_draws(self.idata, f"{g.var}_sigma"), f"{g.var}_sigma"))
            names.append(f"sd({g.name})")
        out = []
        for (dr, key), n in zip(rows, names):
            lo, hi = _hdi(dr, conf)
            rec = {"term": n, "mean": dr.mean(), "sd": dr.std(ddof=1), "ci_low": float(lo),
                   "ci_high": float(hi), "p_gt_0": float((dr > 0).mean())}
            if isinstance(stats, pd.DataFrame) and key in stats.index:
                rec.update(r_hat=stats.loc[key, "r_hat"], ess_bulk=stats.loc[key, "ess_bulk"],
                           ess_tail=stats.loc[key, "ess_tail"])
            else:
                rec.update(r_hat=np.nan, ess_bulk=np.nan, ess_tail=np.nan)
            out.append(rec)
        df = pd.DataFrame(out).set_index("term")
        df.attrs["diagnostics"] = self.diagnostics()
        df.attrs["conf"] = conf
        df.attrs["interval"] = f"{100 * conf:g}% HDI"
        return df

    def conf_int(self, conf: float = 0.95) -> pd.DataFrame:
        """Highest-density intervals of the fixed effects and group sd's (``ci_low``, ``ci_high``).

        Parameters
        ----------
        conf : float
            Probability mass of the intervals.

        Returns
        -------
        DataFrame
            Index ``term``; ``attrs["interval"]`` names the interval (e.g. ``"95% HDI"``).
        """
        tab = self.to_frame(conf)
        out = tab[["ci_low", "ci_high"]].copy()
        out.attrs = {"conf": tab.attrs["conf"], "interval": tab.attrs["interval"]}
        return out

    def summary(self, conf: float = 0.95) -> Summary:
        """The fit as text (sampler, diagnostics, the :meth:`to_frame` table) and, in notebooks, HTML.

        Parameters
        ----------
        conf : float
            Probability mass of the highest-density intervals.

        Returns
        -------
        Summary
            A string that prints as text and renders as an HTML table (``_repr_html_``).
        """
        tab = self.to_frame(conf)
        w = self._warning_text()
        return Summary(f"Bayesian hierarchical logistic model: {self.model.formula}",
                       self._text(tab), tab, notes=[w] if w else [])

    def __repr__(self) -> str:
        d = self.diagnostics()
        m = self.model
        diag = ("approximate, no convergence diagnostic" if self.approximate else
                f"max R-hat {d['max_rhat']:.3f}, {d['divergences']} divergences")
        return (f"<HierarchicalResult {m.formula!r}\n"
                f"  {self.sampler}: {d['chains']} chains x {d['draws']} draws, {diag}\n"
                f"  {m.n_rows:,} rows; groups: "
                + ", ".join(f"{g.name} ({len(g.levels)})" for g in m.groups) + ">")

    def __str__(self) -> str:
        return self._text(self.to_frame())

    def _text(self, s: pd.DataFrame) -> str:
        m = self.model
        d = self.diagnostics()
        lines = [
            "Bayesian hierarchical logistic model" + (f"  [APPROXIMATE: {self.sampler.upper()}, not MCMC]"
                                                     if self.approximate else ""),
            f"formula: {m.formula}",
            f"rows: {m.n_rows:,}   collapsed patterns: {len(m.patterns):,}   "
            "groups: " + ", ".join(f"{g.name} ({len(g.levels)})" for g in m.groups),
            (f"sampler: {self.sampler}, {d['chains']} chains x {d['draws']} draws, seed {self.seed}, "
             f"{self.timings.get('total_s', float('nan')):.1f} s"),
        ]
        if not self.approximate:
            lines.append(
                f"diagnostics (all parameters): max R-hat {d['max_rhat']:.4f}, min bulk ESS "
                f"{d['min_ess_bulk']:.0f}, min tail ESS {d['min_ess_tail']:.0f}, divergences "
                f"{d['divergences']}"
            )
            w = self._warning_text()
            if w:
                lines.append("WARNING: " + w)
        elif self.sampler == "laplace":
            lines.append("Nested Laplace approximation (INLA-like): Gaussian latent effects given the "
                         "group sd's, mixed over 2T+1 sd values; no convergence diagnostic applies; "
                         "use method='nuts' where it is affordable.")
        else:
            lines.append("ADVI is a fast approximation: intervals are typically too narrow and "
                         "no convergence diagnostic applies; use method='nuts' for inference.")
        lines.append("")
        lines.append(f"Fixed effects and group sd's (logit scale, {s.attrs['interval']}):")
        lines.append(s.round(3).to_string())
        return "\n".join(lines)

    # ------------------------------------------------------------------ linear predictor
    def _fixed_draws(self) -> np.ndarray:
        """(S, p) draws of the fixed effects in ``model.fixed_names`` order."""
        m = self.model
        S = self.n_draws
        out = np.zeros((S, len(m.fixed_names)))
        non_int = [n for n in m.fixed_names if n != "Intercept"]
        for j, n in enumerate(m.fixed_names):
            if n == "Intercept":
                out[:, j] = _draws(self.idata, "Intercept")
            else:
                out[:, j] = _draws(self.idata, "beta")[:, non_int.index(n)]
        return out

    def _eta(self, X: np.ndarray, group_idx: Sequence[np.ndarray | None], draws: slice | None = None
             ) -> np.ndarray:
        """(S, k) linear predictor for design X and per-term level indices (-1 = unseen level)."""
        B = self._fixed_draws()
        if draws is not None:
            B = B[draws]
        eta = B @ X.T
        for g, idx in zip(self.model.groups, group_idx):
            u = _draws(self.idata, g.var)
            if draws is not None:
                u = u[draws]
            if idx is None:
                continue
            ok = idx >= 0
            eta[:, ok] += u[:, idx[ok]]
        return eta

    def _pattern_eta(self) -> np.ndarray:
        if self._eta_cache is None:
            m = self.model
            self._eta_cache = self._eta(m.X, [g.index for g in m.groups])
        return self._eta_cache

    # ------------------------------------------------------------------ effects
    def effects(self, term: str, within: str | None = None, conf: float = 0.95) -> pd.DataFrame:
        """Per-level group effects, e.g. each persona's deviation within each model.

        The logit-scale effect of level ``l`` of ``term`` within level ``w`` of ``within``
        is the sum of the random intercepts of every random term built from ``term``
        (and ``within``): for ``effects("persona", within="model")`` with
        ``(1|persona) + (1|persona:model)`` it is :math:`u_p + v_{p,m}`, the persona's
        deviation from an average persona in that model. The probability-scale effect is
        the average over that cell's rows of ``expit(eta) - expit(eta - effect)``: how
        much the persona changes that model's refusal probability compared with an
        average persona, at the cell's own tasks and prompts.

        Parameters
        ----------
        term : str
            A grouping variable of a random term (e.g. ``"persona"``).
        within : str, optional
            A second grouping variable (e.g. ``"model"``): effects per (term, within)
            combination, including any ``(1|term:within)`` interaction.
        conf : float
            Probability mass of the highest-density intervals.

        Returns
        -------
        DataFrame
            ``[within,] term, effect, ci_low, ci_high, p_gt_0, prob_effect,
            prob_ci_low, prob_ci_high, observed_rate, n``: the logit-scale effect with its
            interval, then the probability-scale effect with its interval;
            ``attrs["interval"]`` names them (e.g. ``"95% HDI"``).

        Examples
        --------
        >>> fit.effects("persona", within="model")  # doctest: +SKIP
        """
        m = self.model
        gvars = m.parsed.group_variables
        if term not in gvars:
            raise ValueError(f"'{term}' is not a grouping variable of a random term; choose from {gvars}")
        if within is not None and within not in gvars and within not in m.patterns.columns:
            raise ValueError(f"within='{within}' is not a variable of the model; choose from {m.parsed.variables}")
        if within == term:
            raise ValueError("within must differ from term")
        allowed = {term} | ({within} if within else set())
        use = [g for g in m.groups if term in g.term.groups and set(g.term.groups) <= allowed]
        if not use:
            raise ValueError(f"no random term is built from '{term}'" + (f" and '{within}'" if within else ""))
        keys = [term] + ([within] if within else [])
        pat = m.patterns
        cell_codes, cell_labels = group_index(pat, RandomTerm(tuple(keys)))
        n_cells = len(cell_labels)
        # effect per cell (S, n_cells): each used term's level is a function of the cell
        S = self.n_draws
        eff = np.zeros((S, n_cells))
        first = np.full(n_cells, -1)
        first[cell_codes[::-1]] = np.arange(len(cell_codes))[::-1]
        for g in use:
            eff += _draws(self.idata, g.var)[:, g.index[first]]
        eta = self._pattern_eta()
        from scipy.special import expit

        w = pat["trials"].to_numpy(dtype=float)
        prob = np.zeros((S, n_cells))
        for c0 in range(0, S, 500):
            sl = slice(c0, min(S, c0 + 500))
            e = eta[sl]
            d = expit(e) - expit(e - eff[sl][:, cell_codes])
            prob[sl] = np.stack([np.bincount(cell_codes, weights=row * w, minlength=n_cells) for row in d])
        tot = np.bincount(cell_codes, weights=w, minlength=n_cells)
        prob /= tot
        obs = np.bincount(cell_codes, weights=pat["successes"].to_numpy(dtype=float), minlength=n_cells) / tot
        conf = check_conf(conf)
        lo, hi = _hdi(eff, conf)
        plo, phi = _hdi(prob, conf)
        out = pat.iloc[first][keys[::-1]].reset_index(drop=True)
        out = out.assign(effect=eff.mean(0), ci_low=lo, ci_high=hi, p_gt_0=(eff > 0).mean(0),
                         prob_effect=prob.mean(0), prob_ci_low=plo, prob_ci_high=phi,
                         observed_rate=obs, n=tot.astype(np.int64))
        out = out.sort_values(keys[::-1]).reset_index(drop=True)
        out.attrs["conf"] = conf
        out.attrs["interval"] = f"{100 * conf:g}% HDI"
        out.attrs["terms"] = [g.name for g in use]
        return out

    # ------------------------------------------------------------------ prediction
    def predict(self, data: pd.DataFrame | None = None, conf: float = 0.95) -> pd.DataFrame:
        """Posterior refusal probability with a credible interval per covariate pattern.

        Without ``data``: one row per collapsed pattern of the fitted table (with its
        observed ``successes`` and ``trials``). With ``data``: one row per row of
        ``data`` (computed once per unique pattern), using the fitted levels and coding;
        group levels not seen in fitting get the population-average effect 0 (warned).

        Parameters
        ----------
        data : DataFrame, optional
            New rows; default the fitted patterns.
        conf : float
            Probability mass of the highest-density intervals.

        Returns
        -------
        DataFrame
            the pattern columns plus ``prob`` (posterior mean probability), ``ci_low``,
            ``ci_high`` (``attrs["interval"]``, e.g. ``"95% HDI"``).
        """
        conf = check_conf(conf)
        from scipy.special import expit

        m = self.model
        if data is None:
            pat = m.patterns.copy()
            eta = self._pattern_eta()
            base = pat
            inverse = None
        else:
            variables = m.parsed.variables
            missing = [c for c in variables if c not in data.columns]
            if missing:
                raise FormulaError(f"predict: data lack column(s) {missing} used by the formula")
            sub = data[variables].copy()
            sub["_one"] = 0
            col = collapse(sub, variables, "_one")
            base = col.patterns[variables].copy()
            # fixed part with the fitted levels
            fixed_vars = m.parsed.fixed_variables
            fx = base.copy()
            for v in fixed_vars:
                if isinstance(m.patterns[v].dtype, pd.CategoricalDtype):
                    cats = m.patterns[v].cat.categories
                    bad = set(pd.unique(fx[v].astype(object))) - set(cats)
                    if bad:
                        raise FormulaError(f"predict: '{v}' has level(s) {sorted(map(str, bad))} not seen in fitting")
                    fx[v] = pd.Categorical(fx[v].astype(object), categories=cats)
            X = new_design(m.fixed_spec, fx)
            idxs = []
            unseen = {}
            for g in m.groups:
                lab = base[list(g.term.groups)].astype(str).agg(":".join, axis=1)
                pos = pd.Index(g.levels).get_indexer(lab)
                if (pos < 0).any():
                    unseen[g.name] = sorted(set(lab[pos < 0]))[:5]
                idxs.append(pos)
            if unseen:
                warnings.warn(f"predict: level(s) not seen in fitting get group effect 0: {unseen}", stacklevel=2)
            eta = self._eta(X, idxs)
            pat = base
            inverse = col.inverse
        p = expit(eta)
        lo, hi = _hdi(p, conf)
        out = pat.copy()
        out["prob"], out["ci_low"], out["ci_high"] = p.mean(0), lo, hi
        out.attrs["conf"] = conf
        out.attrs["interval"] = f"{100 * conf:g}% HDI"
        if inverse is not None:
            out = out.iloc[inverse].reset_index(drop=True)
            out.index = data.index
        return out

    # ------------------------------------------------------------------ checks
    def ppc(self, by: Sequence[str] | str | None = None, conf: float = 0.9,
            seed: int | np.random.Generator | None = None) -> pd.DataFrame:
        """Posterior predictive check of refusal rates per cell.

        For each posterior draw, replicate every pattern's refusal count from
        ``Binomial(n, p)`` and aggregate to the cells ``by`` (default: the random terms'
        grouping variables). Reports the observed rate, the mean and central ``conf``
        interval of the replicated rate (``ci_low``, ``ci_high``), whether the observed rate
        is inside, and the predictive p-value ``P(rep >= obs)``. ``seed`` (int, None or a
        Generator) defaults to the fit's seed.
        """
        conf = check_conf(conf)
        m = self.model
        if by is None:
            by = m.parsed.group_variables
        by = [by] if isinstance(by, str) else list(by)
        bad = [b for b in by if b not in m.patterns.columns]
        if bad:
            raise ValueError(f"ppc: by={bad} not among the model's variables {m.parsed.variables}")
        from scipy.special import expit

        rng = check_random_state(self.seed if seed is None else seed)
        pat = m.patterns
        codes, labels = group_index(pat, RandomTerm(tuple(by)))
        k = len(labels)
        n = pat["trials"].to_numpy(dtype=np.int64)
        tot = np.bincount(codes, weights=n, minlength=k)
        obs = np.bincount(codes, weights=pat["successes"].to_numpy(dtype=float), minlength=k)
        eta = self._pattern_eta()
        S = eta.shape[0]
        rep = np.empty((S, k))
        for c0 in range(0, S, 500):
            sl = slice(c0, min(S, c0 + 500))
            y = rng.binomial(n, expit(eta[sl]))
            rep[sl] = np.stack([np.bincount(codes, weights=r, minlength=k) for r in y])
        rate = rep / tot
        a = (1 - conf) / 2
        first = np.full(k, -1)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        out = pat.iloc[first][by].reset_index(drop=True)
        obs_rate = obs / tot
        out = out.assign(n=tot.astype(np.int64), observed=obs_rate, predicted=rate.mean(0),
                         ci_low=np.quantile(rate, a, axis=0), ci_high=np.quantile(rate, 1 - a, axis=0),
                         p_value=(rep >= obs[None, :]).mean(0))
        out["inside"] = (out["observed"] >= out["ci_low"]) & (out["observed"] <= out["ci_high"])
        out.attrs["conf"] = conf
        out.attrs["interval"] = f"{100 * conf:g}% central posterior predictive interval"
        return out.sort_values(by).reset_index(drop=True)

    def plot_ppc(self, by: Sequence[str] | str | None = None, conf: float = 0.9, ax=None):
        """Observed vs posterior-predicted refusal rate per cell (see :meth:`ppc`)."""
        import matplotlib.pyplot as plt

        t = self.ppc(by=by, conf=conf)
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        yerr = np.vstack([t["predicted"] - t["ci_low"], t["ci_high"] - t["predicted"]]).clip(0)
        colors = np.where(t["inside"], "tab:blue", "tab:red")
        ax.errorbar(t["observed"], t["predicted"], yerr=yerr, fmt="none", ecolor="0.7", lw=0.8)
        ax.scatter(t["observed"], t["predicted"], s=10, c=colors, zorder=3)
        lim = [0, max(t["observed"].max(), t["ci_high"].max()) * 1.05 or 1]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("observed refusal rate")
        ax.set_ylabel(f"posterior predicted rate ({100 * conf:g}% interval)")
        inside = t["inside"].mean()
        ax.set_title(f"Posterior predictive check: {inside:.0%} of {len(t)} cells inside")
        return ax.figure

    def plot_shrinkage(self, term: str, within: str | None = None, ax=None):
        """Raw cell refusal rates against the partially pooled estimates.

        x: the empirical logit ``log((k + 0.5) / (n - k + 0.5))`` of each (term, within)
        cell; y: the posterior mean logit of the model's predicted rate for that cell.
        Points off the identity line have been pulled toward their group's mean;
        cells with few rows or extreme raw rates move most.
        """
        import matplotlib.pyplot as plt
        from scipy.special import expit, logit

        m = self.model
        keys = [term] + ([within] if within else [])
        pat = m.patterns
        codes, labels = group_index(pat, RandomTerm(tuple(keys)))
        k = len(labels)
        n = pat["trials"].to_numpy(dtype=float)
        tot = np.bincount(codes, weights=n, minlength=k)
        obs = np.bincount(codes, weights=pat["successes"].to_numpy(dtype=float), minlength=k)
        raw = np.log((obs + 0.5) / (tot - obs + 0.5))
        p = expit(self._pattern_eta())
        pooled = np.stack([np.bincount(codes, weights=row * n, minlength=k) for row in p]) / tot
        pooled = logit(np.clip(pooled.mean(0), 1e-12, 1 - 1e-12))
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(raw, pooled, s=np.clip(np.sqrt(tot), 4, 60), alpha=0.6)
        lo, hi = min(raw.min(), pooled.min()), max(raw.max(), pooled.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("raw cell rate (empirical logit)")
        ax.set_ylabel("partially pooled estimate (logit)")
        ax.set_title(f"Shrinkage: {' x '.join(keys)} cells")
        return ax.figure


# --------------------------------------------------------------------------- entry point
def hierarchical(
    formula: str,
    data: pd.DataFrame,
    reference: Mapping[str, object] | None = None,
    priors: Mapping[str, Any] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    sampler: str = "nutpie",
    seed: int | np.random.Generator | None = 0,
    target_accept: float = 0.9,
    method: str = "nuts",
    cores: int | None = None,
    progress: bool = True,
    parametrization: str = "auto",
    low_rank: bool = True,
) -> HierarchicalResult:
    """Fit a Bayesian hierarchical logistic model of refusal with lme4-style random intercepts.

    Parameters
    ----------
    formula : str
        ``"refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)"``: the
        fixed part in R syntax (formulaic; treatment coding, ``reference=`` sets the
        reference levels), random intercepts ``(1|g)`` and ``(1|g1:g2)``. Random slopes
        are refused.
    data : DataFrame
        One row per response; the response column holds 0/1 (or booleans).
    reference : mapping, optional
        Reference level per fixed-effect factor, e.g. ``{"task": "nli", "prompt": "p1"}``.
    priors : mapping, optional
        Overrides of :data:`DEFAULT_PRIORS` (logit scale): ``"Intercept"``, ``"fixed"``,
        ``"sd"``, a fixed effect by name or a group sd as ``"sd(<term>)"``; values like
        ``("normal", 0, 2.5)``, ``("student_t", 3, 0, 2.5)``, ``("halfnormal", 1)``,
        ``("exponential", 1)``, ``("halfstudent_t", 3, 1)``, ``("halfcauchy", 1)``.
    draws, tune, chains : int
        Posterior draws and warm-up iterations per chain, number of chains.
    sampler : {"nutpie", "pymc"}
        nutpie (default; falls back to PyMC when not installed) or PyMC's NUTS.
    seed : int, None or numpy.random.Generator
        Seed of the sampler (results are reproducible for a given int seed and sampler); a
        Generator or None draws the int seed, which the result records as ``.seed``.
    target_accept : float
        NUTS target acceptance rate; raise it when there are divergences.
    method : {"nuts", "laplace", "advi"}
        ``"laplace"``: nested Laplace approximation (INLA-like, integrating over the group
        sd's), APPROXIMATE and labelled so; the practical way to fit ``(1|item_id)`` on
        large tables (docs/methods_hierarchical.md). ``"advi"``: mean-field variational
        approximation, fast but APPROXIMATE (intervals too narrow, no R-hat); labelled as
        such in every output.
    cores : int, optional
        Chains run in parallel on this many cores (default: min(chains, CPUs)).
    progress : bool
        Show the sampler's progress bar.
    parametrization : {"auto", "centered", "noncentered"}
        How group effects are sampled. "noncentered": every level as ``sd * z`` with
        ``z ~ N(0, 1)``; "centered": ``u ~ N(0, sd)``; "auto" (default): per level,
        centred when the data pin the level down (observed information sum k(n-k)/n
        >= :data:`AUTO_CENTER_INFO`) and non-centred otherwise (levels with few or no
        refusals). Same model and posterior, different geometry: on two million rows the
        all-non-centred form mixes badly (a ridge between each sd and its offsets).
    low_rank : bool
        nutpie only: adapt a low-rank modified mass matrix, which follows the
        correlation between the intercept and the group means (default True).

    Returns
    -------
    HierarchicalResult
        ``.idata`` (ArviZ InferenceData), ``.to_frame()``, ``.summary()``, ``.conf_int()``, ``.diagnostics()``,
        ``.effects(term, within=)``, ``.predict()``, ``.ppc()``, ``.plot_ppc()``,
        ``.plot_shrinkage()``. A :class:`ConvergenceWarning` is issued when any R-hat
        > 1.01, any bulk or tail ESS < 400 or any divergence occurred.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.05)
    >>> fit = rs.hierarchical(
    ...     "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)",
    ...     df, reference={"task": "nli", "prompt": "p1"})  # doctest: +SKIP
    >>> fit.effects("persona", within="model")  # doctest: +SKIP
    """
    if method == "laplace" and parametrization == "auto":
        # the centring choice only shapes the NUTS geometry; the Laplace fit does not use
        # it, so skip the auto rule's own quick Laplace fit (minutes with (1|item_id))
        parametrization = "noncentered"
    spec = HierarchicalModel(formula, data, reference=reference, priors=priors,
                             parametrization=parametrization)
    return spec.fit(draws=draws, tune=tune, chains=chains, sampler=sampler, seed=seed,
                    target_accept=target_accept, method=method, cores=cores, progress=progress,
                    low_rank=low_rank, _stacklevel=3)
