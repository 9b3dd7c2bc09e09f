"""The fitted hierarchical model: :class:`HierarchicalResult` (tables, diagnostics, effects,
prediction, posterior predictive checks)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._summary import Summary
from .._validation import check_conf, check_random_state
from ..counts import row_patterns
from ..formula import FormulaError, RandomTerm, group_index, new_design

if TYPE_CHECKING:
    from .model import HierarchicalModel

__all__ = ["ConvergenceWarning", "HierarchicalResult"]


class ConvergenceWarning(UserWarning):
    """The sampler's diagnostics (R-hat, ESS, divergences) say the draws are not trustworthy."""



_DIAG = {"r_hat": 1.01, "ess": 400}

#: Largest (draws x patterns) linear-predictor matrix kept in memory (400 MB of float64);
#: larger ones (``(1|item_id)`` on P1's full design: 2 million patterns) are computed in chunks.
_ETA_CACHE_MAX = 50_000_000
#: Probability-scale summaries over all patterns (``effects``' ``prob_*`` columns, ``ppc``)
#: use at most this many (draw, pattern) pairs: evenly spaced draws, at least 100 (all when
#: fewer); ``attrs["prob_draws"]`` says how many were used.
_PROB_WORK_MAX = 100_000_000


# --------------------------------------------------------------------------- kernels
def _prob_effect_py(F, xinv, U, gidx, E, ecell, w, n_cells):
    """Per draw s and cell c: sum over the cell's patterns k of
    ``w_k (expit(eta_sk) - expit(eta_sk - E[s, c]))`` with ``eta_sk = F[s, xinv[k]] +
    sum_g U[s, gidx[g, k]]`` (the probability-scale effect of :meth:`HierarchicalResult.effects`)."""
    S, K, G = F.shape[0], xinv.shape[0], gidx.shape[0]
    out = np.zeros((S, n_cells))
    for s in range(S):
        for k in range(K):
            e = F[s, xinv[k]]
            for g in range(G):
                e += U[s, gidx[g, k]]
            c = ecell[k]
            d = 1.0 / (1.0 + np.exp(-e)) - 1.0 / (1.0 + np.exp(-(e - E[s, c])))
            out[s, c] += d * w[k]
    return out


try:
    import numba as _nb

    _prob_effect = _nb.njit(cache=True)(_prob_effect_py)
except ImportError:  # pragma: no cover
    _prob_effect = None


# --------------------------------------------------------------------------- results
def _hdi(x: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval of draws along axis 0, by :func:`arviz.hdi`.

    ``x`` has the draws (chains flattened) first; the result has the shape of ``x[0]``.
    """
    import arviz as az

    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        lo, hi = az.hdi(x, hdi_prob=conf)
        return lo, hi
    r = az.hdi(x[None], hdi_prob=conf)  # (chain=1, draw, *shape) -> (*shape, 2)
    return r[..., 0], r[..., 1]


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
        """True for the Laplace and ADVI approximations (no MCMC diagnostics apply)."""
        return self.sampler in ("advi", "laplace")

    @property
    def n_draws(self) -> int:
        """Posterior draws over all chains."""
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

        d: dict[str, Any] = {"sampler": self.sampler, "chains": int(self.idata.posterior.sizes["chain"]),
                             "draws": int(self.idata.posterior.sizes["draw"]),
                             "seconds": round(self.timings.get("total_s", float("nan")), 2)}
        if self.approximate:
            d.update(max_rhat=np.nan, min_ess_bulk=np.nan, min_ess_tail=np.nan, worst_rhat=None,
                     divergences=0)
            self._diag = d
            return d
        # (after the approximate case: free_names builds the PyMC model, which the nested
        # Laplace fit never needs -- 2.8 s of a report's hierarchical section at scale 0.01)
        post = self.idata.posterior[self.model.free_names]
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
        eta = B @ X.T  # (S, k)
        for g, idx in zip(self.model.groups, group_idx):
            u = _draws(self.idata, g.var)
            if draws is not None:
                u = u[draws]
            if idx is None:
                continue
            ok = idx >= 0
            eta[:, ok] += u[:, idx[ok]]
        return eta

    def _pattern_eta(self, draws: np.ndarray | slice | None = None) -> np.ndarray:
        """(S, patterns) linear predictor, cached when it is small (see ``_ETA_CACHE_MAX``);
        ``draws`` selects rows (draw indices or a slice) without building the whole matrix."""
        m = self.model
        small = self.n_draws * len(m.patterns) <= _ETA_CACHE_MAX
        if small:
            if self._eta_cache is None:
                self._eta_cache = self._eta(m.X, [g.index for g in m.groups])
            return self._eta_cache if draws is None else self._eta_cache[draws]
        if draws is None:
            raise MemoryError(f"{self.n_draws:,} draws x {len(m.patterns):,} patterns do not fit in "
                              "memory as one matrix; compute by chunks of draws")
        return self._eta(m.X, [g.index for g in m.groups], draws=draws)

    def _eta_parts(self, draws: np.ndarray):
        """The pattern linear predictor in parts, for the kernels: fixed part per unique design
        row ``F`` (draws x rows) and the row of each pattern ``xinv``; every group's draws side
        by side ``U`` (draws x levels) and each pattern's column in it per term ``gidx``."""
        m = self.model
        if getattr(self, "_xrows", None) is None:
            X = np.ascontiguousarray(m.X)
            rows, xinv = np.unique(X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel(),
                                   return_inverse=True)
            self._xrows = (np.frombuffer(rows.tobytes(), dtype=X.dtype).reshape(len(rows), X.shape[1]),
                           xinv.ravel().astype(np.int64))
        Xu, xinv = self._xrows
        F = np.ascontiguousarray(self._fixed_draws()[draws] @ Xu.T)
        Us, gidx, off = [], [], 0
        for g in m.groups:
            Us.append(_draws(self.idata, g.var)[draws])
            gidx.append(g.index.astype(np.int64) + off)
            off += len(g.levels)
        U = np.ascontiguousarray(np.hstack(Us)) if Us else np.zeros((len(draws), 1))
        G = np.vstack(gidx) if gidx else np.zeros((0, len(xinv)), dtype=np.int64)
        return F, xinv, U, np.ascontiguousarray(G)

    def _draw_chunks(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Draw indices for a probability-scale summary over all patterns, and chunks of them
        whose (draws x patterns) blocks stay near 20 million values."""
        S, k = self.n_draws, max(len(self.model.patterns), 1)
        max_pairs = _PROB_WORK_MAX
        n_use = S if S * k <= max_pairs else min(S, max(100, max_pairs // k))
        idx = np.unique(np.linspace(0, S - 1, n_use).round().astype(np.int64))
        per = max(1, 20_000_000 // k)
        return idx, [idx[i:i + per] for i in range(0, len(idx), per)]

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
        w = pat["trials"].to_numpy(dtype=float)
        pidx, chunks = self._draw_chunks()
        if _prob_effect is not None:  # one pass over the patterns per draw (numba)
            F, xinv, U, gidx = self._eta_parts(pidx)
            prob = _prob_effect(F, xinv, U, gidx, np.ascontiguousarray(eff[pidx]),
                                np.ascontiguousarray(cell_codes, dtype=np.int64), w, n_cells)
        else:  # pragma: no cover
            from scipy.special import expit

            prob = np.zeros((len(pidx), n_cells))
            row0 = 0
            for ch in chunks:
                e = self._pattern_eta(ch)
                d = expit(e) - expit(e - eff[ch][:, cell_codes])
                prob[row0:row0 + len(ch)] = np.stack([np.bincount(cell_codes, weights=row * w,
                                                                  minlength=n_cells) for row in d])
                row0 += len(ch)
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
        out.attrs["prob_draws"] = len(pidx)
        return out

    def deviations(self, term: str, conf: float = 0.95) -> pd.DataFrame:
        """The random intercepts of one random term alone, e.g. each ``persona:model`` deviation.

        :meth:`effects` adds up every random term built from its variables (for
        ``effects("persona", within="model")``: :math:`u_p + v_{p,m}`); this returns one
        term's draws only (:math:`v_{p,m}`): how far a persona's effect in one model departs
        from that persona's average effect over models, on the logit scale.

        Parameters
        ----------
        term : str
            A random term of the formula, by its grouping variables joined with ``:``
            (``"persona:model"``, ``"model:persona"`` or ``"persona"``).
        conf : float
            Probability mass of the highest-density intervals.

        Returns
        -------
        DataFrame
            One row per level: the term's variables, ``effect`` (posterior mean, logit
            scale), ``ci_low``, ``ci_high`` (HDI) and ``p_gt_0``.

        Examples
        --------
        >>> fit.deviations("persona:model")  # doctest: +SKIP
        """
        want = tuple(v.strip() for v in str(term).split(":"))
        match = [g for g in self.model.groups if sorted(g.term.groups) == sorted(want)]
        if not match:
            raise ValueError(f"no random term ({term}) in the model; its random terms are "
                             f"{[g.name for g in self.model.groups]}")
        g = match[0]
        u = _draws(self.idata, g.var)
        conf = check_conf(conf)
        lo, hi = _hdi(u, conf)
        first = np.full(len(g.levels), -1)
        first[g.index[::-1]] = np.arange(len(g.index))[::-1]
        labels = self.model.patterns.iloc[first][list(want)].reset_index(drop=True)
        out = labels.assign(effect=u.mean(0), ci_low=lo, ci_high=hi,
                                        p_gt_0=(u > 0).mean(0))
        out.attrs["conf"] = conf
        out.attrs["interval"] = f"{100 * conf:g}% HDI"
        return out

    # ------------------------------------------------------------------ prediction
    def predict(self, newdata: pd.DataFrame | None = None, *, conf: float | None = None
                ) -> np.ndarray | pd.DataFrame:
        """Posterior refusal probability, with a highest-density interval on request.

        The same signature as :meth:`refusalstats.LogitResults.predict`. Predictions are
        computed once per unique covariate pattern and spread to the rows. New data use the
        fitted levels and coding; a group level not seen in fitting gets the
        population-average effect 0 (warned), an unseen fixed-effect level is an error.

        Parameters
        ----------
        newdata : DataFrame, optional
            Rows to predict; default the fitted rows (one value per row of the fitted
            table; one per row of ``model.patterns`` when the model was built from a
            Parquet path, which has no rows in memory).
        conf : float, optional
            Without it, point predictions only; with it, also the highest-density interval
            holding ``conf`` of the posterior of each probability.

        Returns
        -------
        ndarray or DataFrame
            Without ``conf``: a 1-D array of posterior mean probabilities. With ``conf``: a
            DataFrame with ``prediction`` (posterior mean), ``ci_low``, ``ci_high``
            (``attrs["interval"]``, e.g. ``"95% HDI"``), indexed like ``newdata``.

        Examples
        --------
        >>> fit.predict(df.head(3), conf=0.9)  # doctest: +SKIP
        """
        from scipy.special import expit

        if conf is not None:
            conf = check_conf(conf)
        m = self.model
        index = None
        if newdata is None:
            X, idxs = m.X, [g.index for g in m.groups]
            inverse = m.inverse
        else:
            if not isinstance(newdata, pd.DataFrame):
                raise TypeError(f"newdata must be a pandas DataFrame, got {type(newdata).__name__}")
            variables = m.parsed.variables
            missing = [c for c in variables if c not in newdata.columns]
            if missing:
                raise FormulaError(f"predict: newdata lack column(s) {missing} used by the formula")
            sub = newdata[variables].copy()
            sub["_one"] = 0
            col = row_patterns(sub, variables, "_one")
            base = col.patterns[variables].copy()
            fx = base.copy()
            for v in m.parsed.fixed_variables:  # the fixed part with the fitted levels
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
            inverse = col.inverse
            index = newdata.index
        # all draws, by chunks of patterns (2 million patterns x 1,000 draws would be 16 GB)
        k = X.shape[0]
        per = max(1, 20_000_000 // max(self.n_draws, 1))
        mean, lo, hi = np.empty(k), np.empty(k), np.empty(k)
        for c0 in range(0, k, per):
            sl = slice(c0, min(k, c0 + per))
            if newdata is None and self.n_draws * k <= _ETA_CACHE_MAX:
                p = expit(self._pattern_eta()[:, sl])
            else:
                p = expit(self._eta(X[sl], [None if i is None else i[sl] for i in idxs]))
            mean[sl] = p.mean(0)
            if conf is not None:
                lo[sl], hi[sl] = _hdi(p, conf)
        if conf is None:
            return mean if inverse is None else mean[inverse]
        out = pd.DataFrame({"prediction": mean, "ci_low": lo, "ci_high": hi})
        if inverse is not None:
            out = out.iloc[inverse].reset_index(drop=True)
        if index is not None:
            out.index = index
        out.attrs["conf"] = conf
        out.attrs["interval"] = f"{100 * conf:g}% HDI"
        return out

    # ------------------------------------------------------------------ checks
    def ppc(self, by: Sequence[str] | str | None = None, conf: float = 0.9,
            seed: int | np.random.Generator | None = None) -> pd.DataFrame:
        """Posterior predictive check of refusal rates per cell.

        For each posterior draw, replicate every pattern's refusal count from
        ``Binomial(n, p)`` and aggregate to the cells ``by``.

        Parameters
        ----------
        by : str or list of str, optional
            Cell variables; default the random terms' grouping variables.
        conf : float
            Level of the central posterior predictive interval of each cell's rate.
        seed : int, None or numpy.random.Generator
            Randomness of the replicated counts; default the fit's seed.

        Returns
        -------
        DataFrame
            One row per cell: the ``by`` columns, ``n``, ``observed`` (rate), ``predicted``
            (mean replicated rate), ``ci_low``, ``ci_high``, ``p_value`` (``P(rep >= obs)``)
            and ``inside`` (observed rate within the interval).
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
        pidx, chunks = self._draw_chunks()
        rep = np.empty((len(pidx), k))
        row0 = 0
        for ch in chunks:
            y = rng.binomial(n, expit(self._pattern_eta(ch)))
            rep[row0:row0 + len(ch)] = np.stack([np.bincount(codes, weights=r, minlength=k) for r in y])
            row0 += len(ch)
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
        out = out.sort_values(by).reset_index(drop=True)
        out.attrs["prob_draws"] = len(pidx)
        return out

    def plot_ppc(self, by: Sequence[str] | str | None = None, conf: float = 0.9, ax=None):
        """Observed vs posterior-predicted refusal rate per cell (see :meth:`ppc`).

        Parameters
        ----------
        by : str or list of str, optional
            Cells, as in :meth:`ppc`.
        conf : float
            Level of the posterior predictive intervals.
        ax : matplotlib Axes, optional
            Draw into this axes; default a new figure.

        Returns
        -------
        matplotlib.figure.Figure
            Drawn by :func:`refusalstats.plot.hierarchical_ppc`.
        """
        from ..plot import hierarchical_ppc

        return hierarchical_ppc(self.ppc(by=by, conf=conf), ax=ax)

    def shrinkage(self, term: str, within: str | None = None) -> pd.DataFrame:
        """Raw cell refusal rates next to the partially pooled estimates, per cell.

        Parameters
        ----------
        term : str
            A variable of the model (e.g. ``"persona"``).
        within : str, optional
            A second variable: cells are (term, within) combinations.

        Returns
        -------
        DataFrame
            The cell columns, ``n`` (rows), ``raw_logit`` (empirical logit
            ``log((k + 0.5) / (n - k + 0.5))``) and ``pooled_logit`` (logit of the
            posterior mean of the cell's predicted rate).
        """
        from scipy.special import expit, logit

        m = self.model
        keys = [term] + ([within] if within else [])
        bad = [k for k in keys if k not in m.patterns.columns]
        if bad:
            raise ValueError(f"shrinkage: {bad} not among the model's variables {m.parsed.variables}")
        pat = m.patterns
        codes, labels = group_index(pat, RandomTerm(tuple(keys)))
        k = len(labels)
        n = pat["trials"].to_numpy(dtype=float)
        tot = np.bincount(codes, weights=n, minlength=k)
        obs = np.bincount(codes, weights=pat["successes"].to_numpy(dtype=float), minlength=k)
        _, chunks = self._draw_chunks()
        pooled = np.vstack([np.stack([np.bincount(codes, weights=row * n, minlength=k)
                                      for row in expit(self._pattern_eta(ch))]) for ch in chunks]) / tot
        first = np.full(k, -1)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        out = pat.iloc[first][keys].reset_index(drop=True)
        return out.assign(n=tot.astype(np.int64), raw_logit=np.log((obs + 0.5) / (tot - obs + 0.5)),
                          pooled_logit=logit(np.clip(pooled.mean(0), 1e-12, 1 - 1e-12)))

    def plot_shrinkage(self, term: str, within: str | None = None, ax=None):
        """Raw cell refusal rates against the partially pooled estimates (see :meth:`shrinkage`).

        Points off the identity line have been pulled toward their group's mean; cells
        with few rows or extreme raw rates move most.

        Parameters
        ----------
        term, within : str
            The cells, as in :meth:`shrinkage`.
        ax : matplotlib Axes, optional
            Draw into this axes; default a new figure.

        Returns
        -------
        matplotlib.figure.Figure
            Drawn by :func:`refusalstats.plot.hierarchical_shrinkage`.
        """
        from ..plot import hierarchical_shrinkage

        return hierarchical_shrinkage(self.shrinkage(term, within), ax=ax)
