"""Calibration of the prediction-powered (human-label corrected) refusal rates.

Exposes ``run(reps, seed) -> list[dict]`` for ``benchmarks/calibration.py``
(``python benchmarks/calibration.py --area ppi``); ``python benchmarks/calibration_ppi.py``
prints the fuller table of docs/methods_ppi.md (coverage with z and t quantiles, the
labels-only interval, Rogan-Gladen, widths relative to labels only).

Simulated tables: 3 models x 100 items x 10 answers per item and model (3,000 rows),
personas with effects -0.5..0.5 on the logit scale (two answers per persona per item),
population-averaged human-label refusal rates 0.10, 0.20 and 0.35 by model. Rows of one
item share an item random intercept (sd 1, "clustered"; intervals with
``cluster="item_id"``) or none ("i.i.d."; ``cluster=None``). The detector's flag is made
from the human label with errors that

* ``good``: sensitivity 0.95, specificity 0.98 for every model;
* ``differ``: differ by model (sensitivity 0.95 / 0.75 / 0.5, specificity 0.97 / 0.9 /
  0.8) and depend on the persona (sensitivity -0.1 and specificity -0.03 per persona
  step) and, clustered, on the item (logit-scale item effect of sd 0.5 on both);
* ``useless``: flags drawn at 0.3 independently of the label.

Human labels: a stratified sample of 30, 60 or 200 rows per model (``strata="model"``).
The target is each model's population-averaged rate (Gauss-Hermite over the item
effect, averaged over personas); a 95% interval should cover it 93-97% of the time.
The Monte Carlo s.e. takes the replicate as the unit (:func:`replicate_se`): the models
(or coefficients) of one replicate share its items and labels.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit, logit

import refusalstats as rs
from refusalstats import ppi as _ppi

N_MODELS, N_ITEMS, PER_ITEM = 3, 100, 10
RATES = (0.10, 0.20, 0.35)
PERSONA = np.array([-0.5, -0.25, 0.0, 0.25, 0.5])
COVER_LO, COVER_HI = 0.93, 0.97
DETECTORS = {
    "good": ((0.95, 0.95, 0.95), (0.98, 0.98, 0.98), 0.0, 0.0),
    "differ": ((0.95, 0.75, 0.5), (0.97, 0.9, 0.8), 0.1, 0.03),
}
BATCH = 40
#: ``--unbalanced``: few items answered unequally often, one model refusing 3% of the time
#: (its 30 labels hold no refusal 40% of the time)
UNBALANCED_ITEMS = 30
UNBALANCED_RATES = (0.03, 0.10, 0.35)
UNBALANCED = [(1.0, "differ", 30), (1.0, "differ", 60), (1.0, "good", 30), (1.0, "useless", 30),
              (0.0, "differ", 30), (0.0, "good", 30)]


def _gh(n=61):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


def base_logits(item_sd: float, rates=RATES) -> np.ndarray:
    """Per-model intercepts whose rate averaged over items and personas is ``rates``."""
    from scipy.optimize import brentq

    z, w = _gh()

    def marginal(b):
        return float(np.mean([np.sum(w * expit(b + d + item_sd * z)) for d in PERSONA]))

    return np.array([brentq(lambda b, r=r: marginal(b) - r, -20, 20) for r in rates])


def simulate(rng, reps: int, item_sd: float, detector: str, n_labels: int, base: np.ndarray,
             sizes: np.ndarray | None = None) -> pd.DataFrame:
    """``reps`` tables stacked (``rep`` column, item ids unique per replicate). ``sizes``:
    answers per item and model (default ``PER_ITEM`` for each of ``N_ITEMS`` items)."""
    sizes = np.full(N_ITEMS, PER_ITEM) if sizes is None else np.asarray(sizes)
    n_items, per_model = len(sizes), int(sizes.sum())
    rows = N_MODELS * per_model
    rep = np.repeat(np.arange(reps), rows)
    model = np.tile(np.repeat(np.arange(N_MODELS), per_model), reps)
    item_local = np.tile(np.repeat(np.arange(n_items), sizes), N_MODELS * reps)
    item = rep * n_items + item_local
    persona = np.tile(personas_of(sizes), N_MODELS * reps)
    u = rng.normal(0, item_sd, reps * n_items)[item] if item_sd else 0.0
    truth = rng.random(len(rep)) < expit(base[model] + PERSONA[persona] + u)
    if detector == "useless":
        flag = rng.random(len(rep)) < 0.3
    else:
        se, sp, dse, dsp = DETECTORS[detector]
        v = rng.normal(0, 0.5, reps * n_items)[item] if item_sd else 0.0
        step = persona - 2
        sens = expit(logit(np.clip(np.array(se)[model] - dse * step, 0.05, 0.995)) + v)
        spec = expit(logit(np.clip(np.array(sp)[model] - dsp * step, 0.05, 0.995)) - v)
        flag = np.where(truth, rng.random(len(rep)) < sens, rng.random(len(rep)) > spec)
    human = np.full(len(rep), np.nan)
    per_stratum = per_model
    # n_labels rows at random in each (replicate, model) stratum
    order = np.argsort(rng.random((reps * N_MODELS, per_stratum)), axis=1)[:, :n_labels]
    picked = (order + (np.arange(reps * N_MODELS) * per_stratum)[:, None]).ravel()
    human[picked] = truth[picked]
    return pd.DataFrame({"rep": rep, "model": model, "item_id": item, "persona": persona,
                         "refusal": flag.astype(np.int8), "human": human})


def personas_of(sizes) -> np.ndarray:
    """The persona of each answer: an item's k answers take personas 0, 1, ... in turn."""
    return np.concatenate([np.arange(k) % len(PERSONA) for k in sizes])


def truth_rates(item_sd: float, base: np.ndarray, sizes=None) -> np.ndarray:
    """Each model's expected refusal rate over its answers (the rates' estimand). With
    ``sizes`` the answers' persona mix is the design's: items answered fewer than five
    times hold the first personas only (24% persona 0, 16% persona 4 in ``--unbalanced``),
    which puts the 0.35 model's target at 0.341, not 0.35."""
    z, w = _gh()
    mix = np.full(len(PERSONA), 1 / len(PERSONA)) if sizes is None else (
        np.bincount(personas_of(sizes), minlength=len(PERSONA)) / np.sum(sizes))
    return np.array([np.sum(mix * [np.sum(w * expit(b + d + item_sd * z)) for d in PERSONA]) for b in base])


def batches(reps: int, seed: int, item_sd: float, detector: str, n_labels: int, sizes=None, rates=RATES):
    """A scenario's ``reps`` simulated tables, ``BATCH`` replicates stacked at a time (one
    random stream per scenario)."""
    rng = np.random.default_rng(seed)
    base = base_logits(item_sd, rates)
    for start in range(0, reps, BATCH):
        yield simulate(rng, min(BATCH, reps - start), item_sd, detector, n_labels, base, sizes)


def replicate_se(hits: np.ndarray, per_rep: int) -> float:
    """Monte Carlo s.e. of a coverage with the replicate as the unit.

    The ``per_rep`` intervals of one replicate (the models, or coefficients, of one
    simulated table) share its items and labels, so they are not independent: the s.e. is
    the standard deviation of the per-replicate coverages over sqrt(replicates).
    """
    per = np.nanmean(np.asarray(hits, dtype=float).reshape(-1, per_rep), axis=1)
    per = per[np.isfinite(per)]
    return float(np.std(per, ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")


def scenario(reps: int, seed: int, item_sd: float, detector: str, n_labels: int, sizes=None,
             rates=RATES) -> dict:
    """Coverage and widths of one scenario over ``reps`` replicates (3 models each); ``sizes``
    and ``rates`` as in :func:`simulate` and :func:`base_logits`."""
    target = truth_rates(item_sd, base_logits(item_sd, rates), sizes)
    cluster = "item_id" if item_sd else None
    out = {k: [] for k in ("t", "z", "lab", "rg", "w_ppi", "w_lab", "w_z", "lam")}
    t0 = time.perf_counter()
    for df in batches(reps, seed, item_sd, detector, n_labels, sizes, rates):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = rs.ppi_rates(df, by=["rep", "model"], cluster=cluster, strata=["rep", "model"])
            plain = rs.ppi_rates(df, by=["rep", "model"], cluster=cluster, strata=["rep", "model"], ci="z")
            # the labels alone, as the package gives them (lam = 0: Wilson's interval, scaled
            # by the design effect with clusters; until 2026-12-08 this column was the t
            # interval rate_labels_only +- q se_labels_only and the widths 2 q se)
            alone = rs.ppi_rates(df, by=["rep", "model"], cluster=cluster, strata=["rep", "model"], lam=0)
            rg = rs.rogan_gladen(df, by=["rep", "model"], strata=["rep", "model"])
        truth = target[res["model"].to_numpy()]
        out["t"].append((res["ci_low"] <= truth) & (truth <= res["ci_high"]))
        out["z"].append((plain["ci_low"] <= truth) & (truth <= plain["ci_high"]))
        out["w_z"].append(2 * stats.norm.ppf(0.975) * plain["std_error"])
        out["lab"].append((alone["ci_low"] <= truth) & (truth <= alone["ci_high"]))
        out["rg"].append((rg["ci_low"] <= truth) & (truth <= rg["ci_high"]))
        out["w_ppi"].append(res["ci_high"] - res["ci_low"])
        out["w_lab"].append(alone["ci_high"] - alone["ci_low"])
        out["lam"].append(res["lam"])
    cat = {k: np.concatenate([np.asarray(v, dtype=float) for v in vs]) for k, vs in out.items()}
    return {
        "coverage_t": np.nanmean(cat["t"]), "mc_se": replicate_se(cat["t"], N_MODELS),
        "coverage_by_model": np.nanmean(cat["t"].reshape(-1, N_MODELS), axis=0),
        "coverage_z": np.nanmean(cat["z"]),
        "coverage_labels_only": np.nanmean(cat["lab"]), "coverage_rogan_gladen": np.nanmean(cat["rg"]),
        "width_ratio": np.nanmean(cat["w_ppi"]) / np.nanmean(cat["w_lab"]),
        "width": np.nanmean(cat["w_ppi"]), "lam": np.nanmean(cat["lam"]),
        "width_ratio_z": np.nanmean(cat["w_z"]) / np.nanmean(cat["w_lab"]),
        "n": int(np.isfinite(cat["t"]).sum()), "seconds": time.perf_counter() - t0,
    }


def scenario_effect_logit(reps: int, seed: int, item_sd: float, detector: str, n_labels: int) -> dict:
    """Coverage of persona_effect(labels=) (model 0 vs model 1 as the two settings, items
    shared: correlated arms) and of logit("refusal ~ model", labels=) coefficients (the
    population-averaged log odds ratios logit(rate_m) - logit(rate_0))."""
    target, cluster = truth_rates(item_sd, base_logits(item_sd)), ("item_id" if item_sd else None)
    eff_hits, eff_w, eff_w_lab, logit_hits = [], [], [], []
    t0 = time.perf_counter()
    for df in batches(reps, seed, item_sd, detector, n_labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            two = df[df["model"] < 2].assign(setting=lambda d: np.where(d["model"] == 0, "persona", "persona-free"))
            eff = rs.persona_effect(two, by="rep", labels="human", cluster=cluster, strata=["rep", "model"])
            truth = target[0] - target[1]
            eff_hits.append((eff["ci_low"] <= truth) & (truth <= eff["ci_high"]))
            q = (eff["ci_high"] - eff["ci_low"]) / (2 * eff["std_error"])
            eff_w.append(2 * q * eff["std_error"])
            eff_w_lab.append(2 * q * eff["se_labels_only"])
            for rep_id, d in df.groupby("rep"):
                fit = rs.logit("refusal ~ C(model)", d.assign(model=d["model"].astype(str)), labels="human",
                               cluster=cluster, strata="model")
                ci = fit.conf_int().to_numpy()[1:]
                lo = logit(target[1:]) - logit(target[0])
                logit_hits.append((ci[:, 0] <= lo) & (lo <= ci[:, 1]))
    eh = np.concatenate([np.asarray(h, float) for h in eff_hits])
    lh = np.concatenate(logit_hits).astype(float)
    return {"coverage_effect": np.nanmean(eh), "n_effect": int(np.isfinite(eh).sum()),
            "mc_se_effect": replicate_se(eh, 1), "mc_se_logit": replicate_se(lh, N_MODELS - 1),
            "width_ratio_effect": np.nanmean(np.concatenate(eff_w)) / np.nanmean(np.concatenate(eff_w_lab)),
            "coverage_logit": np.nanmean(lh), "n_logit": int(np.isfinite(lh).sum()),
            "seconds": time.perf_counter() - t0}


def scenario_by_disagreements(reps: int, seed: int, item_sd: float, detector: str, n_labels: int) -> dict:
    """Coverage of the default rate interval by model and by the number of labelled rows
    whose label disagrees with the flag (0, 1, 2, 3+): where the conservativeness sits."""
    target, cluster = truth_rates(item_sd, base_logits(item_sd)), ("item_id" if item_sd else None)
    hits, ks, models = [], [], []
    for df in batches(reps, seed, item_sd, detector, n_labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = rs.ppi_rates(df, by=["rep", "model"], cluster=cluster, strata=["rep", "model"])
        lab = df[df["human"].notna()]
        k = (lab["human"] != lab["refusal"]).groupby([lab["rep"], lab["model"]]).sum()
        k = k.reindex(pd.MultiIndex.from_frame(res[["rep", "model"]]), fill_value=0).to_numpy()
        truth = target[res["model"].to_numpy()]
        hits.append(((res["ci_low"] <= truth) & (truth <= res["ci_high"])).to_numpy())
        ks.append(k)
        models.append(res["model"].to_numpy())
    hits, ks, models = (np.concatenate(v) for v in (hits, ks, models))
    out = {}
    for m in range(N_MODELS):
        for lo, hi, name in ((0, 0, "0"), (1, 1, "1"), (2, 2, "2"), (3, 10**9, "3+")):
            sel = (models == m) & (ks >= lo) & (ks <= hi)
            out[(m, name)] = (float(sel.sum() / (models == m).sum()), float(hits[sel].mean()) if sel.any() else np.nan)
    return out


EXTRA = [(1.0, "differ", 30), (1.0, "differ", 60), (1.0, "differ", 200), (0.0, "differ", 60),
         (1.0, "useless", 60), (0.0, "differ", 30), (0.0, "useless", 30), (0.0, "good", 30)]


SCENARIOS = [(sd, det, n) for sd in (0.0, 1.0) for det in ("differ", "useless", "good") for n in (30, 60, 200)]


def run(reps: int = 300, seed: int = 20261128) -> list[dict]:
    """Rows for benchmarks/calibration.py: coverage of the PPI++ rate per scenario."""
    rows = []
    for k, (sd, det, n) in enumerate(SCENARIOS):
        s = scenario(reps, seed + k, sd, det, n)
        rows.append({
            "check": "refusal_rates(labels=) PPI++ 95% CI",
            "data": (f"{'clustered' if sd else 'i.i.d.'}, detector {det}, {n} labels/model; "
                     f"width {s['width_ratio']:.2f} x labels-only"),
            "statistic": "coverage", "estimate": float(s["coverage_t"]), "mc_se": s["mc_se"],
            "target_low": COVER_LO, "target_high": COVER_HI, "reps": s["n"], "seconds": s["seconds"],
        })
    for k, (sd, det, n) in enumerate(EXTRA):
        s = scenario_effect_logit(reps, seed + 100 + k, sd, det, n)
        data = f"{'clustered' if sd else 'i.i.d.'}, detector {det}, {n} labels/model"
        rows.append({"check": "persona_effect(labels=) PPI++ 95% CI", "data": data, "statistic": "coverage",
                     "estimate": float(s["coverage_effect"]), "mc_se": s["mc_se_effect"], "target_low": COVER_LO,
                     "target_high": COVER_HI, "reps": s["n_effect"], "seconds": s["seconds"]})
        rows.append({"check": "logit(labels=) PPI++ 95% CI (2 coefficients)", "data": data,
                     "statistic": "coverage", "estimate": float(s["coverage_logit"]), "mc_se": s["mc_se_logit"],
                     "target_low": COVER_LO, "target_high": COVER_HI, "reps": s["n_logit"], "seconds": 0.0})
    return rows


def scenario_logit_scale(reps: int, seed: int, item_sd: float, detector: str, n_labels: int, sizes=None,
                         rates=RATES) -> dict:
    """Coverage of the default rate interval (the score interval; Hall's skewness-corrected t
    from 2026-12-07 to 2026-12-08, ``--score off``), of the symmetric
    ``p +- q se`` (the default until 2026-12-07) and of the same s.e. on the logit scale,
    ``expit(logit(p) +- q se / (p (1 - p)))`` (the symmetric interval where p is not in
    (0, 1)), overall (± replicate s.e.) and by model."""
    target = truth_rates(item_sd, base_logits(item_sd, rates), sizes)
    hits = {"default": [], "wald": [], "logit": []}
    for df in batches(reps, seed, item_sd, detector, n_labels, sizes, rates):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = rs.ppi_rates(df, by=["rep", "model"], cluster="item_id" if item_sd else None, strata=["rep", "model"])
        t = target[r["model"].to_numpy()]
        q = np.asarray(r.attrs["quantile"])
        p, se = r["rate"].to_numpy(), r["std_error"].to_numpy()
        inside = (p > 0) & (p < 1)
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        half = q * se / (pc * (1 - pc))
        lo = np.where(inside, expit(logit(pc) - half), r["ci_low"])
        hi = np.where(inside, expit(logit(pc) + half), r["ci_high"])
        hits["default"].append(((r["ci_low"] <= t) & (t <= r["ci_high"])).to_numpy())
        hits["wald"].append(np.abs(p - t) <= q * se)
        hits["logit"].append((lo <= t) & (t <= hi))
    out = {}
    for k, v in hits.items():
        v = np.concatenate(v).astype(float)
        out[k] = (v.mean(), replicate_se(v, N_MODELS), v.reshape(-1, N_MODELS).mean(0))
    return out


def binomial_exact(n: int) -> dict:
    """Exact coverage of the labels-only interval (every row labelled, so lam plays no
    part) over binomial label samples: the package's interval for each count k = 0..n of
    n labels, then sum_k P(k) [p in CI_k] for each rate p of ``grid``; the default (the
    score interval: Wilson's here), Hall's skewness-corrected t (the default from 2026-12-07
    to 2026-12-08) and the symmetric t. Mean over the grid, share of rates below 0.93, lowest."""
    out = {}
    for name, score, skew in (("default", _ppi._SCORE, True), ("hall", False, True), ("symmetric", False, False)):
        old = _ppi._SCORE, _ppi._SKEW
        _ppi._SCORE, _ppi._SKEW = score, skew
        try:
            ends = []
            for k in range(n + 1):
                y = (np.arange(n) < k).astype(int)
                r = rs.ppi_rates(pd.DataFrame({"refusal": y, "human": y.astype(float)}), cluster=None, lam=0)
                ends.append((r["ci_low"].item(), r["ci_high"].item()))
        finally:
            _ppi._SCORE, _ppi._SKEW = old
        lo, hi = np.array(ends).T
        k = np.arange(n + 1)
        grid = np.linspace(0.03, 0.5, 48)
        cov = np.array([np.sum(stats.binom.pmf(k, n, p) * ((lo <= p) & (p <= hi))) for p in grid])
        out[name] = (cov.mean(), (cov < COVER_LO).mean(), cov.min())
    return out


def main() -> None:
    import argparse
    import os
    import platform

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--disparity", action="store_true",
                    help="only the disparity(labels=) rows (100 bootstrap replicates each)")
    ap.add_argument("--small-sample", choices=["floor", "bp"], default="floor",
                    help="small-sample rule of ci='t': the default floor, or the Bonett-Price pseudo-labels "
                         "measured as an alternative (docs/methods_ppi.md section 4)")
    ap.add_argument("--mass", type=float, default=1.0, help="with bp: pseudo-labels per discordant cell")
    ap.add_argument("--quantile", choices=["z", "t"], default="z",
                    help="with bp: z (as Bonett-Price) or t quantile with the m / (m - 1) factor")
    ap.add_argument("--unbalanced", action="store_true",
                    help="only: rates on few, unequally answered items (30 items, 1-60 answers each) "
                         "with a rarely refusing model (rates 0.03 / 0.10 / 0.35)")
    ap.add_argument("--logit-scale", action="store_true",
                    help="the default rate intervals against the symmetric t "
                         "interval and the same s.e. on the logit scale, balanced and --unbalanced rows")
    ap.add_argument("--disparity-interval", choices=["percentile", "basic-log", "bc", "fieller",
                                                     "fieller-corrected", "fieller-analytic", "ustat", "boot-t",
                                                     "boot-t-qw", "wild-null", "wild-null-t", "wild-pp", "lr", "wild-lr",
                                                     "wild-lr-full", "wild-lr-mammen"],
                    default="percentile",
                    help="with --disparity: the bootstrap interval (percentile is the default; the others "
                         "were measured and not adopted)")
    ap.add_argument("--disparity-diagnose", action="store_true",
                    help="only: the Fieller-type disparity test's statistic at the truth against its "
                         "variance estimates, and the corrected variances' bias (40 labels, clustered)")
    ap.add_argument("--binomial-exact", action="store_true",
                    help="only: exact coverage of the labels-only interval over binomial label samples "
                         "(30, 60, 200 labels; rates 0.03-0.5), default and symmetric")
    ap.add_argument("--skew-cap", type=float, default=None,
                    help="the cap on the skewness of the default interval (ppi._SKEW_CAP, 0.3); for any table")
    ap.add_argument("--score", choices=["constrained", "simple", "off"], default=None,
                    help="the rates' score-type (Wilson-like) interval (ppi._SCORE): constrained (the default "
                         "since 2026-12-08), simple (measured, not adopted) or off (Hall's skewness-corrected t "
                         "interval, the default before), for any table")
    ap.add_argument("--score-pseudo", type=float, default=None,
                    help="with --score constrained: the pseudo-count per (label, flag) cell (ppi._SCORE_PSEUDO, 0.5)")
    ap.add_argument("--score-cluster-q", choices=["t", "z"], default=None,
                    help="with --score constrained and clusters: the quantile (ppi._SCORE_CLUSTER_Q, t)")
    ap.add_argument("--symmetric", action="store_true",
                    help="the symmetric t intervals (the default until 2026-12-07) instead of Hall's "
                         "skewness-corrected ones, for any table")
    ap.add_argument("--by-disagreements", action="store_true",
                    help="only: coverage by model and by the number of labels that disagree with the flag "
                         "(i.i.d., 30 labels per model, good and differing detectors)")
    args = ap.parse_args()
    # the measured alternatives: private switches of the estimator, one table each
    switches = {"_DISPARITY_INTERVAL": (args.disparity_interval != "percentile", args.disparity_interval),
                "_SKEW_CAP": (args.skew_cap is not None, args.skew_cap),
                "_SKEW": (args.symmetric, False),
                "_SCORE": (args.score is not None, False if args.score == "off" else args.score),
                "_SCORE_PSEUDO": (args.score_pseudo is not None, args.score_pseudo),
                "_SCORE_CLUSTER_Q": (args.score_cluster_q is not None, args.score_cluster_q)}
    for name, (on, value) in switches.items():
        if on:
            setattr(_ppi, name, value)
            print(f"ppi.{name} = {value!r}")
    if args.small_sample == "bp":
        _ppi._SMALL_SAMPLE.update(rule="bp", mass=args.mass, quantile=args.quantile,
                                  factor=args.quantile == "t")
        print(f"small-sample rule: Bonett-Price pseudo-labels, mass {args.mass:g}, {args.quantile} quantile")
    t0 = time.perf_counter()
    if args.by_disagreements:
        print("| detector | model (rate) | share / coverage with 0 disagreements | 1 | 2 | 3+ |\n|---|---|---|---|---|---|")
        for k, det in enumerate(("good", "differ")):
            s = scenario_by_disagreements(args.reps, args.seed + 300 + k, 0.0, det, 30)
            for m in range(N_MODELS):
                cells = " | ".join(f"{s[(m, b)][0]:.2f} / {s[(m, b)][1]:.3f}" for b in ("0", "1", "2", "3+"))
                print(f"| {det} | {m} ({RATES[m]:.2f}) | {cells} |", flush=True)
        print(f"\ni.i.d., 30 labels per model, {args.reps} replicates per detector, seed {args.seed}, "
              f"{time.perf_counter() - t0:.0f} s. Command: "
              f"`python benchmarks/calibration_ppi.py --by-disagreements --reps {args.reps} --seed {args.seed}`")
        return
    if args.disparity_diagnose:
        disparity_diagnosis(args.reps, args.seed)
        print(f"\n{time.perf_counter() - t0:.0f} s. Command: `python benchmarks/calibration_ppi.py "
              f"--disparity-diagnose --reps {args.reps} --seed {args.seed}`")
        return
    if args.binomial_exact:
        print("| labels | default (score): mean coverage | share of rates < 0.93 | lowest | Hall's t: mean "
              "| share < 0.93 | lowest | symmetric t: mean | share < 0.93 | lowest |\n|---|---|---|---|---|---|---|"
              "---|---|---|")
        for n in (30, 60, 200):
            b = binomial_exact(n)
            print(f"| {n} | " + " | ".join(f"{b[k][0]:.3f} | {b[k][1]:.2f} | {b[k][2]:.3f}"
                                          for k in ("default", "hall", "symmetric")) + " |", flush=True)
        print(f"\nrates 0.03-0.50 in steps of 0.01, exact (no simulation), {time.perf_counter() - t0:.0f} s. "
              "Command: `python benchmarks/calibration_ppi.py --binomial-exact`")
        return
    if args.logit_scale:
        sizes = np.clip(np.random.default_rng(2026).geometric(0.1, UNBALANCED_ITEMS), 1, 60)
        print("| design | data | detector | labels/model | default | by model | symmetric t | by model "
              "| logit scale | by model |\n|---|---|---|---|---|---|---|---|---|---|")
        rows = [("balanced", *sc, None, RATES, args.seed + 700 + k) for k, sc in enumerate(SCENARIOS)]
        rows += [("unbalanced", *sc, sizes, UNBALANCED_RATES, args.seed + 800 + k) for k, sc in enumerate(UNBALANCED)]
        for design, sd, det, n, sz, rates, seed in rows:
            s = scenario_logit_scale(args.reps, seed, sd, det, n, sz, rates)
            cells = " | ".join(f"{s[k][0]:.3f} ± {s[k][1]:.3f} | {' / '.join(f'{c:.2f}' for c in s[k][2])}"
                               for k in ("default", "wald", "logit"))
            print(f"| {design} | {'clustered' if sd else 'i.i.d.'} | {det} | {n} | {cells} |", flush=True)
        print(f"\n{args.reps} replicates x {N_MODELS} models per row, seeds {args.seed} + 700 (balanced) and + 800 "
              f"(unbalanced), {time.perf_counter() - t0:.0f} s. Command: "
              f"`python benchmarks/calibration_ppi.py --logit-scale --reps {args.reps} --seed {args.seed}`")
        return
    if args.unbalanced:
        sizes = np.clip(np.random.default_rng(2026).geometric(0.1, UNBALANCED_ITEMS), 1, 60)
        print(f"{UNBALANCED_ITEMS} items answered {sizes.min()}-{sizes.max()} times each (median "
              f"{np.median(sizes):.0f}; {sizes.sum()} answers per model), rates {UNBALANCED_RATES}\n")
        print("| data | detector | labels/model | PPI++ (default) | by model | labels only | width / labels-only "
              "| mean lam |\n|---|---|---|---|---|---|---|---|")
        for k, (sd, det, n) in enumerate(UNBALANCED):
            s = scenario(args.reps, args.seed + 400 + k, sd, det, n, sizes, UNBALANCED_RATES)
            print(f"| {'clustered' if sd else 'i.i.d.'} | {det} | {n} | {s['coverage_t']:.3f} ± {s['mc_se']:.3f} "
                  f"| {' / '.join(f'{c:.2f}' for c in s['coverage_by_model'])} | {s['coverage_labels_only']:.3f} "
                  f"| {s['width_ratio']:.2f} | {s['lam']:.2f} |", flush=True)
        print(f"\n{args.reps} replicates x {N_MODELS} models per row, seed {args.seed}, "
              f"{time.perf_counter() - t0:.0f} s. Command: "
              f"`python benchmarks/calibration_ppi.py --unbalanced --reps {args.reps} --seed {args.seed}`")
        return
    if args.disparity:
        print("| data | labels/persona | category (true ratio) | coverage | median interval |\n|---|---|---|---|---|")
        rows = [(1.0, 40, None, 150), (1.0, 100, None, 150), (0.0, 40, None, 150), (1.0, 100, DISP_PERSONAS_WIDE, 200)]
        for k, (sd, n, personas, n_items) in enumerate(rows):
            s = scenario_disparity(args.reps, args.seed + 200 + k, sd, n, personas=personas, n_items=n_items)
            for cat in s["truth"]:
                c = s["coverage"][cat]
                lo, hi = s["median_interval"][cat]
                design = "4 + 4 controls, 150 items" if personas is None else "4 + 6 wider controls, 200 items"
                print(f"| {'clustered' if sd else 'i.i.d.'}, {design} | {n} | {cat} ({s['truth'][cat]:.2f}) "
                      f"| {c:.3f} ± {np.sqrt(c * (1 - c) / s['n']):.3f} | {lo:.2f}–{hi:.2f} |", flush=True)
        print(f"\n{args.reps} replicates per row, seed {args.seed}, {time.perf_counter() - t0:.0f} s. Command: "
              f"`python benchmarks/calibration_ppi.py --disparity --reps {args.reps} --seed {args.seed}"
              + (f" --disparity-interval {args.disparity_interval}`" if args.disparity_interval != "percentile" else "`"))
        return
    lines = [("| data | detector | labels/model | PPI++ (default) | by model (rates 0.10 / 0.20 / 0.35) "
              "| PPI++ (ci='z', as ppi_python) | labels only | Rogan-Gladen | width / labels-only | mean lam |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k, (sd, det, n) in enumerate(SCENARIOS):
        s = scenario(args.reps, args.seed + k, sd, det, n)
        lines.append(
            f"| {'clustered' if sd else 'i.i.d.'} | {det} | {n} | {s['coverage_t']:.3f} ± {s['mc_se']:.3f} "
            f"| {' / '.join(f'{c:.2f}' for c in s['coverage_by_model'])} | {s['coverage_z']:.3f} | {s['coverage_labels_only']:.3f} | {s['coverage_rogan_gladen']:.3f} "
            f"| {s['width_ratio']:.2f} | {s['lam']:.2f} |"
        )
        print(lines[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.reps} replicates x {N_MODELS} models per row (coverage ± one Monte Carlo s.e., the replicate "
          "as the unit: the sd of the per-replicate coverages / sqrt(replicates)); "
          f"seed {args.seed}; {time.perf_counter() - t0:.0f} s on {platform.node()} "
          f"({os.cpu_count()} cores, load {load:.1f}). Command: "
          f"`python benchmarks/calibration_ppi.py --reps {args.reps} --seed {args.seed}`\n")
    print("\n".join(lines))
    lines = [("| data | detector | labels/model | persona_effect coverage | width / labels-only "
             "| logit coverage (2 coefficients) |"), "|---|---|---|---|---|---|"]
    for k, (sd, det, n) in enumerate(EXTRA):
        s = scenario_effect_logit(args.reps, args.seed + 100 + k, sd, det, n)
        me, ml = s["mc_se_effect"], s["mc_se_logit"]
        lines.append(f"| {'clustered' if sd else 'i.i.d.'} | {det} | {n} | {s['coverage_effect']:.3f} ± {me:.3f} "
                     f"| {s['width_ratio_effect']:.2f} | {s['coverage_logit']:.3f} ± {ml:.3f} |")
        print(lines[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{time.perf_counter() - t0:.0f} s in all (load {load:.1f} at the end); persona_effect: one interval "
          f"per replicate, logit: 2 coefficients per replicate (± with the replicate as the unit)\n")
    print("\n".join(lines))



# ----------------------------------------------------------------------- disparity (#22)
DISP_PERSONAS = {"g1": ("G1", [-0.9, -0.3, 0.3, 0.9]), "g2": ("G2", [-0.3, -0.1, 0.1, 0.3]),
                 "c": ("control", [-0.25, -0.08, 0.08, 0.25])}


#: ``--disparity``'s last row: the design of calibration_rates.py's disparity design 1 (10
#: personas, 4 in the category, 6 controls whose spread is larger), 200 items, where the
#: ratio without labels is pinned down (its interval covers 0.953 there)
DISP_PERSONAS_WIDE = {"g": ("G", [0.0, 0.5, 1.0, -0.5]), "c": ("control", [0.0, 0.25, -0.25, 0.5, -0.5, 0.1])}


def disparity_truth(item_sd: float, base: float = -1.5, personas=None) -> dict:
    """sd of the personas' population-averaged rates per category over the controls' sd."""
    z, w = _gh()
    sds = {}
    for (cat, effects) in (personas or DISP_PERSONAS).values():
        rates = [float(np.sum(w * expit(base + e + item_sd * z))) for e in effects]
        sds[cat] = np.std(rates, ddof=1)
    return {cat: sds[cat] / sds["control"] for cat in sds if cat != "control"}


def disparity_table(rng, item_sd: float, n_labels: int, personas=None, n_items: int = 150,
                    base: float = -1.5) -> pd.DataFrame:
    """One table of ``scenario_disparity``'s design: every persona answers every item;
    detector sensitivity 0.9 - 0.1 per persona index within its category, 5% false flags;
    ``n_labels`` labels drawn per persona."""
    names, cats, effects = [], [], []
    for key, (cat, eff) in (personas or DISP_PERSONAS).items():
        for j, e in enumerate(eff):
            names.append(f"{key}{j}")
            cats.append(cat)
            effects.append(e)
    P = len(names)
    item = np.repeat(np.arange(n_items), P)
    pi = np.tile(np.arange(P), n_items)
    u = rng.normal(0, item_sd, n_items)[item] if item_sd else 0.0
    y = rng.random(len(item)) < expit(base + np.array(effects)[pi] + u)
    sens = 0.9 - 0.1 * (pi % 4)
    flag = np.where(y, rng.random(len(item)) < sens, rng.random(len(item)) < 0.05)
    human = np.full(len(item), np.nan)
    for p in range(P):
        rows = np.flatnonzero(pi == p)
        pick = rng.choice(rows, n_labels, replace=False)
        human[pick] = y[pick]
    return pd.DataFrame({"item_id": item, "persona": np.array(names)[pi], "persona_group": np.array(cats)[pi],
                         "refusal": flag.astype(int), "human": human})


def scenario_disparity(reps: int, seed: int, item_sd: float, n_labels: int, n_boot: int = 100,
                       personas=None, n_items: int = 150) -> dict:
    """Coverage of disparity(labels=) bootstrap intervals: by default 12 personas (4 per
    category, 4 controls), 150 items answered under every persona; detector errors depend
    on the persona (sensitivity 0.9 - 0.1 per persona index within its category);
    ``n_labels`` labels per persona."""
    rng = np.random.default_rng(seed)
    personas = personas or DISP_PERSONAS
    base = -1.5
    truth = disparity_truth(item_sd, base, personas)
    hits = {cat: [] for cat in truth}
    ends = {cat: [] for cat in truth}
    t0 = time.perf_counter()
    for _ in range(reps):
        df = disparity_table(rng, item_sd, n_labels, personas, n_items, base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = rs.disparity(df, control="control", labels="human", strata="persona", n_boot=n_boot,
                               cluster="item_id" if item_sd else None, seed=int(rng.integers(2**31)))
        for _, r in out.iterrows():
            t = truth[r["persona_group"]]
            hits[r["persona_group"]].append(r["ci_low"] <= t <= r["ci_high"])
            ends[r["persona_group"]].append((r["ci_low"], r["ci_high"]))
    return {"coverage": {cat: float(np.mean(h)) for cat, h in hits.items()},
            "median_interval": {cat: tuple(np.median(np.array(e), 0)) for cat, e in ends.items()},
            "n": reps, "seconds": time.perf_counter() - t0, "truth": truth}


def _at_q(q: float, moments) -> np.ndarray:
    """Var(X - q Y) from rows of (Var X, Cov(X, Y), Var Y)."""
    m = np.asarray(moments, dtype=float)
    return m[:, 0] - 2 * q * m[:, 1] + q**2 * m[:, 2]


def disparity_diagnosis(reps: int, seed: int, n_labels: int = 40, item_sd: float = 1.0) -> None:
    """Why the Fieller-type disparity intervals are mis-sized (``--disparity-diagnose``):
    on ``scenario_disparity``'s design, the test statistic V_c - q0 V_0 at the true ratio
    (q0 = ratio^2) over replicates against its bootstrap variance (raw, and less the excess
    second-order noise); the unfloored corrected variances' means against the truth; and
    the per-persona PPI variances against the variance of the rates over replicates."""
    rec = []
    orig = _ppi._ratio_test_inversion

    def spy(a, c, A, C, alpha, kind="normal", noise=None):
        rec.append((a, c, np.cov(A, C), np.asarray(noise, dtype=float)))
        return orig(a, c, A, C, alpha, kind, noise)

    _ppi._ratio_test_inversion, old_kind = spy, _ppi._DISPARITY_INTERVAL
    _ppi._DISPARITY_INTERVAL = "fieller-corrected"
    try:
        s = scenario_disparity(reps, seed, item_sd, n_labels)
    finally:
        _ppi._ratio_test_inversion, _ppi._DISPARITY_INTERVAL = orig, old_kind
    z, w = _gh()
    true_var = {cat: np.var([np.sum(w * expit(-1.5 + e + item_sd * z)) for e in eff], ddof=1)
                for cat, eff in DISP_PERSONAS.values()}
    cats = list(s["truth"])
    print(f"{'clustered' if item_sd else 'i.i.d.'}, {n_labels} labels per persona, {reps} replicates, seed {seed}")
    print("| category | statistic at the truth: mean | sd over replicates | sd from the bootstrap "
          "| sd, bootstrap less 4T | sd, analytic | test accepts the truth: bootstrap / less 4T / analytic "
          "| V_c mean (truth) | V_0 mean (truth) |\n|---|---|---|---|---|---|---|---|---|")
    for j, cat in enumerate(cats):
        q0 = s["truth"][cat] ** 2
        R = rec[j::len(cats)]
        th = np.array([a - q0 * c for a, c, _, _ in R])
        vb = _at_q(q0, [(S[0, 0], S[0, 1], S[1, 1]) for _, _, S, _ in R])
        vt = _at_q(q0, [T[:3] for _, _, _, T in R])
        vc = np.maximum(vb - 4 * vt, 2 * vt)
        vr = _at_q(q0, [T[3:6] for _, _, _, T in R])
        va = np.maximum(4 * vr - 2 * vt, 2 * vt)  # no bootstrap: 2T + 4 (r'ASAr - T)
        z2 = stats.norm.ppf(0.975) ** 2
        print(f"| {cat} | {th.mean():.2e} | {th.std():.2e} | {np.sqrt(vb.mean()):.2e} | {np.sqrt(vc.mean()):.2e} "
              f"| {np.sqrt(va.mean()):.2e} | {np.mean(th ** 2 <= z2 * vb):.3f} / {np.mean(th ** 2 <= z2 * vc):.3f} "
              f"/ {np.mean(th ** 2 <= z2 * va):.3f} "
              f"| {np.mean([r[0] for r in R]):.2e} ({true_var[cat]:.2e}) "
              f"| {np.mean([r[1] for r in R]):.2e} ({true_var['control']:.2e}) |")
    # the per-persona PPI variances against the replicates' variance of the rates
    rng = np.random.default_rng(seed + 1)
    names = [f"{key}{j}" for key, (_, eff) in DISP_PERSONAS.items() for j in range(len(eff))]
    est, se2 = [], []
    for _ in range(2 * reps):
        df = disparity_table(rng, item_sd, n_labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = rs.ppi_rates(df, by="persona", strata="persona", cluster="item_id" if item_sd else None)
        r = r.set_index("persona").loc[names]
        est.append(r["rate"].to_numpy())
        se2.append(r["std_error"].to_numpy() ** 2)
    ratio = np.array(est).var(0) / np.array(se2).mean(0)
    print(f"\nper persona, variance of the rate over {2 * reps} replicates / mean estimated variance: "
          + " ".join(f"{x:.2f}" for x in ratio))


if __name__ == "__main__":
    main()
