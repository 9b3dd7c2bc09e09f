"""Calibration of the rates module: interval coverage and false-positive rates.

Exposes ``run(reps, seed) -> list[dict]`` for ``benchmarks/calibration.py``
(``python benchmarks/calibration.py --area rates``). Every check simulates tables
shaped like ours with :func:`refusalstats.simulate_items` (items answered many times,
an item random intercept of sd 1 on the logit scale unless the row says otherwise) and
runs the public function once on all replicates stacked (``by=["rep", ...]``, item ids
made unique per replicate), so what is measured is exactly what users call.

Targets: a 95% interval should cover the population-averaged rate of its cell
(``attrs["truth"]["marginal_rate_task_persona"]``) at least 93% of the time; a test at
level 0.05 should reject a true null at most 6% of the time (0.05 plus about 1.5 Monte
Carlo standard errors at 1,000 replicates).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

import refusalstats as rs

COVER = 0.93
FPR_MAX = 0.06
ALPHA = 0.05


def marginal_logit(rate: float, item_sd: float) -> float:
    """The conditional logit whose population-averaged rate (over u ~ N(0, sd^2)) is rate."""
    z, w = np.polynomial.hermite_e.hermegauss(61)
    w = w / w.sum()
    return brentq(lambda e: float(np.sum(w * expit(e + item_sd * z))) - rate, -20, 20)


def stacked(reps: int, seed: int, **kw) -> tuple[pd.DataFrame, dict]:
    """``reps`` simulate_items tables in one, with a ``rep`` column and unique item ids."""
    frames = []
    truth = None
    n_items = kw.get("n_items", 200)
    for r in range(reps):
        d = rs.simulate_items(seed=seed + r, **kw)
        truth = d.attrs["truth"]
        d.attrs = {}
        d["item_id"] = d["item_id"] + r * n_items
        d["rep"] = r
        frames.append(d)
    return pd.concat(frames, ignore_index=True), truth


def _row(check, data, statistic, hits, lo, hi, t0):
    hits = np.asarray(hits, dtype=bool)
    return {"check": check, "data": data, "statistic": statistic,
            "estimate": float(hits.mean()), "target_low": lo, "target_high": hi,
            "reps": int(hits.size), "seconds": time.perf_counter() - t0}  # fmt: skip


def rates_checks(reps: int, seed: int) -> list[dict]:
    """refusal_rates by task (item-level input) at about 2%, 10% and 50%."""
    targets = [0.02, 0.10, 0.50]
    rows = []
    for item_sd in (1.0, 0.0):
        t0 = time.perf_counter()
        logits = [marginal_logit(t, item_sd) for t in targets]
        df, truth = stacked(
            reps, seed, n_items=150, k=10, item_sd=item_sd, item_levels=3, row_levels=5,
            intercept=logits[0], item_effect=[v - logits[0] for v in logits],
        )  # fmt: skip
        true = {f"t{i}": truth["marginal_rate_task_persona"][f"t{i}|p0"] for i in range(3)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rs.ClusterNote)
            default = rs.refusal_rates(df, by=["rep", "task"])
            naive = rs.refusal_rates(df, by=["rep", "task"], cluster=None)
        data = (f"simulate_items: 150 items x 10 answers, 50 items per task, item sd "
                f"{item_sd:g}")  # fmt: skip
        for res, name in [(default, "default (cluster='auto')"), (naive, "cluster=None")]:
            tv = res["task"].astype(str).map(true).to_numpy()
            hit = (res["ci_low"].to_numpy() <= tv) & (tv <= res["ci_high"].to_numpy())
            if item_sd > 0 and name.startswith("default"):
                for i, t in enumerate(targets):
                    sel = res["task"].astype(str).to_numpy() == f"t{i}"
                    rows.append(_row(f"refusal_rates {name}, 95% Wilson, task rate {t:.0%}",
                                     data, "coverage", hit[sel], COVER, None, t0))  # fmt: skip
            elif item_sd > 0:
                rows.append(
                    _row(
                        "refusal_rates baseline (unclustered): cluster=None, tasks at "
                        "2/10/50% pooled",
                        data,
                        "coverage",
                        hit,
                        None,
                        1.0,
                        t0,
                    )
                )
            elif name.startswith("default"):
                rows.append(
                    _row(
                        f"refusal_rates {name} on independent rows, tasks at 2/10/50% pooled",
                        data,
                        "coverage",
                        hit,
                        COVER,
                        None,
                        t0,
                    )
                )
    return rows


def cell_checks(reps: int, seed: int) -> list[dict]:
    """task x persona cells: the persona varies within item (2 rows per item and cell)."""
    t0 = time.perf_counter()
    base = marginal_logit(0.05, 1.0)
    df, truth = stacked(reps, seed + 10_000, n_items=150, k=10, item_sd=1.0, item_levels=3,
                        row_levels=5, intercept=base, item_effect=1.0, row_effect=0.4)  # fmt: skip
    marg = truth["marginal_rate_task_persona"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.ClusterNote)
        res = rs.refusal_rates(df, by=["rep", "task", "persona"])
    key = res["task"].astype(str) + "|" + res["persona"].astype(str)
    tv = key.map(marg).to_numpy()
    hit = (res["ci_low"].to_numpy() <= tv) & (tv <= res["ci_high"].to_numpy())
    keep = tv >= 0.02
    lo_r, hi_r = min(v for v in marg.values()), max(v for v in marg.values())
    return [_row("refusal_rates default, task x persona cells (persona varies within item), "
                 f"cells {lo_r:.0%}-{hi_r:.0%} pooled", "simulate_items: 150 items x 10 "
                 "answers, item sd 1, 10 rows per item-level cell, 2 per item in a cell",
                 "coverage", hit[keep], COVER, None, t0)]  # fmt: skip


def persona_effect_checks(reps: int, seed: int) -> list[dict]:
    """Persona minus persona-free difference; persona p0 plays the persona-free prompt."""
    rows = []
    t0 = time.perf_counter()
    base = marginal_logit(0.10, 1.0)
    eff = [0.0, 0.6, 0.3, 0.9, 0.0]
    df, truth = stacked(reps, seed + 20_000, n_items=150, k=10, item_sd=1.0, item_levels=3,
                        row_levels=5, intercept=base, item_effect=[0.0, -1.0, 1.0],
                        row_effect=eff)  # fmt: skip
    marg = truth["marginal_rate_task_persona"]
    true = {f"t{i}": np.mean([marg[f"t{i}|p{j}"] for j in range(1, 5)]) - marg[f"t{i}|p0"]
            for i in range(3)}  # fmt: skip
    df["setting"] = np.where(df["persona"].astype(str) == "p0", "persona-free", "persona")
    data = (
        "simulate_items: 150 items x 10 answers, item sd 1, persona p0 as persona-free "
        "(2 of each item's 10 answers); tasks at 10% (free) and -1/+1 logit"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.ClusterNote)
        default = rs.persona_effect(df, by=["rep", "task"])
        naive = rs.persona_effect(df, by=["rep", "task"], cluster=None)
    for res, name, lo, hi in [(default, "default (cluster='auto', MOVER)", COVER, None),
                              (naive, "baseline (unclustered): cluster=None, Newcombe", None,
                               1.0)]:  # fmt: skip
        tv = res["task"].astype(str).map(true).to_numpy()
        hit = (res["ci_low"].to_numpy() <= tv) & (tv <= res["ci_high"].to_numpy())
        rows.append(_row(f"persona_effect {name}, 95%, tasks pooled", data, "coverage", hit,
                         lo, hi, t0))  # fmt: skip
    return rows


def complete_blocks(reps: int, seed: int, n_items: int, k: int, rate: float) -> pd.DataFrame:
    """Each item answered once under each of k conditions; no condition effect."""
    rng = np.random.default_rng(seed)
    eta = marginal_logit(rate, 1.0) + rng.normal(0.0, 1.0, (reps, n_items, 1))
    y = (rng.random((reps, n_items, k)) < expit(eta)).astype(np.int8)
    r, i, j = np.indices(y.shape)
    return pd.DataFrame({"rep": r.ravel(), "item_id": i.ravel(),
                         "persona": j.ravel(), "refusal": y.ravel()})  # fmt: skip


def cochran_checks(reps: int, seed: int) -> list[dict]:
    rows = []
    designs = [
        (40, 4, 0.20, "typical", ("chi2", "auto", "exact")),
        (60, 4, 0.03, "sparse", ("chi2", "auto", "exact", "permutation")),
        (100, 20, 0.01, "sparse, many conditions", ("chi2", "auto", "permutation")),
    ]
    for n_items, k, rate, label, methods in designs:
        df = complete_blocks(reps, seed + 30_000 + n_items, n_items, k, rate)
        data = (f"complete blocks, {n_items} items x {k} conditions, {label}: rate {rate:.0%}, "
                "item sd 1, no condition effect")  # fmt: skip
        for method in methods:
            t0 = time.perf_counter()
            kw = {"n_perm": 999, "seed": seed} if method == "permutation" else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # few informative blocks
                res = rs.cochran_q(df, cluster="item_id", by="rep", method=method, **kw)
            p = res["p_value"].to_numpy()
            reject = np.nan_to_num(p, nan=1.0) <= ALPHA  # no informative block: no rejection
            used = "/".join(sorted(set(res["method"]) - {"none"}))
            n_inf = res["n_informative"].median()
            rows.append(_row(f"cochran_q method={method!r} (used {used}), median "
                             f"{n_inf:g} informative blocks", data, "false-positive rate",
                             reject, None, FPR_MAX, t0))  # fmt: skip
    return rows


def disparity_checks(reps: int, seed: int) -> list[dict]:
    """Item-bootstrap percentile interval of de Araujo & Roth's disparity ratio.

    Complete designs (every item answered once by each persona), item sd 1. Design 1:
    10 personas, 4 in category G with logit effects 0, 0.5, 1, -0.5 and 6 controls with
    0, +-0.25, +-0.5, 0.1, base rate 15%, at 200 and 1,000 items. Design 2: 120 items, 14
    personas, 6 in G (0, +-0.6, 1.2, +-0.3) and 8 controls (0, +-0.3, +-0.15, +-0.45, 0.2),
    base rate 10%. Truth: the ratio of the sds of the personas' population-averaged
    rates. The default (noise-corrected) interval should cover 93-97%; the plug-in
    interval is reported as the contrast. The 1,000-item design takes about 2 minutes
    at 1,000 replicates (the correction's coverage there is near 0.94: all replicates).
    """
    rows = []
    eff1 = [0.0, 0.5, 1.0, -0.5, 0.0, 0.25, -0.25, 0.5, -0.5, 0.1]
    eff2 = [0.0, 0.6, -0.6, 1.2, 0.3, -0.3, 0.0, 0.3, -0.3, 0.15, -0.15, 0.45, -0.45, 0.2]
    designs = [(200, reps, eff1, 4, 0.15), (1000, reps, eff1, 4, 0.15),
               (120, reps, eff2, 6, 0.10)]  # fmt: skip
    for n_items, n_rep, eff, n_g, rate in designs:
        t0 = time.perf_counter()
        k = len(eff)
        df, truth = stacked(n_rep, seed + 40_000 + n_items, n_items=n_items, k=k, item_sd=1.0,
                            item_levels=1, row_levels=k, intercept=marginal_logit(rate, 1.0),
                            row_effect=eff)  # fmt: skip
        m = truth["marginal_rate_task_persona"]
        r = np.array([m[f"t0|p{j}"] for j in range(k)])
        true = float(np.std(r[:n_g], ddof=1) / np.std(r[n_g:], ddof=1))
        df["persona_group"] = np.where(df["persona"].cat.codes < n_g, "G", "control")
        data = (f"complete blocks, {n_items} items x {k} personas ({n_g} in the category, "
                f"{k - n_g} controls), item sd 1, rate {rate:.0%}")  # fmt: skip
        for est in ("corrected", "plug-in"):
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rs.ClusterNote)
                out = rs.disparity(df, by="rep", n_boot=300, seed=seed, estimator=est)
            hit = (out["ci_low"] <= true) & (true <= out["ci_high"])
            med = float(np.median(out["disparity"]))
            if est == "corrected":
                rows.append(_row("disparity default (estimator='corrected', cluster='auto': item "
                                 f"bootstrap), 95% percentile, true ratio {true:.2f}, median "
                                 f"estimate {med:.2f}", data, "coverage", hit, COVER, 0.97,
                                 t0))  # fmt: skip
            else:
                rows.append(_row("disparity baseline: estimator='plug-in' (de Araujo & Roth's "
                                 f"ratio), 95% percentile, median estimate {med:.2f}", data,
                                 "coverage", hit, None, 1.0, t1))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- shapes of real tables (#19)
# Generators of our own, not the package's simulators: heavy-tailed item sizes, few items per
# group, non-normal item effects, personas sampled from a population.
_HZ, _HW = np.polynomial.hermite_e.hermegauss(81)
_HW = _HW / _HW.sum()


def _effects(rng, kind: str, sd: float, size: int) -> np.ndarray:
    """Item effects on the logit scale with sd ``sd``: normal, two-point (+-sd) or scaled t(3)."""
    if kind == "normal":
        return rng.normal(0, sd, size)
    if kind == "two-point":
        return sd * rng.choice([-1.0, 1.0], size)
    return sd / np.sqrt(3.0) * rng.standard_t(3, size)


def _marginal(b: float, kind: str, sd: float) -> float:
    """Population-averaged rate E[expit(b + u)] of the item effects ``kind``."""
    from scipy import integrate, stats

    if kind == "normal":
        return float(np.sum(_HW * expit(b + sd * _HZ)))
    if kind == "two-point":
        return float(0.5 * (expit(b - sd) + expit(b + sd)))
    s = sd / np.sqrt(3.0)
    return float(integrate.quad(lambda t: stats.t.pdf(t, 3) * expit(b + s * t), -np.inf, np.inf,
                                limit=200)[0])


def items_table(reps: int, seed: int, n_items: int, sizes, kind: str, sd: float,
                targets: list[float]) -> pd.DataFrame:
    """``reps`` tables of len(targets) tasks x ``n_items`` items; answers per item ``sizes``
    (an int, or "heavy": log-uniform on 2-200), each task's population-averaged rate a target."""
    rng = np.random.default_rng(seed)
    logits = [brentq(lambda b, t=t: _marginal(b, kind, sd) - t, -20, 20) for t in targets]
    T = len(targets)
    G = reps * T * n_items
    m = (np.floor(np.exp(rng.uniform(np.log(2), np.log(201), G))).astype(np.int64)
         if sizes == "heavy" else np.full(G, int(sizes), dtype=np.int64))
    task = np.tile(np.repeat(np.arange(T), n_items), reps)
    y = rng.binomial(m, expit(np.asarray(logits)[task] + _effects(rng, kind, sd, G)))
    item = np.repeat(np.arange(G), m)
    within = np.arange(len(item)) - np.repeat(np.cumsum(m) - m, m)
    return pd.DataFrame({"rep": item // (T * n_items), "task": task[item], "item_id": item,
                         "refusal": (within < y[item]).astype(np.int8)})


def personas_table(reps: int, seed: int, n_items: int = 40, n_personas: int = 8,
                   b: float = -1.5, delta: float = 0.6, item_sd: float = 1.0,
                   persona_sd: float = 0.6, free_answers: int = 2):
    """Personas drawn from a population (persona effects N(0, persona_sd^2)), each item
    answered once by each drawn persona and ``free_answers`` times persona-free. Returns
    the table, the population persona effect and each replicate's effect for its drawn
    personas (the default target)."""
    rng = np.random.default_rng(seed)

    def pa(x, sd):
        return float(np.sum(_HW * expit(x + sd * _HZ)))

    frames, drawn = [], []
    for r in range(reps):
        u, v = rng.normal(0, item_sd, n_items), rng.normal(0, persona_sd, n_personas)
        it, pj = np.repeat(np.arange(n_items), n_personas), np.tile(np.arange(n_personas), n_items)
        yp = rng.random(len(it)) < expit(b + delta + u[it] + v[pj])
        itf = np.repeat(np.arange(n_items), free_answers)
        yf = rng.random(len(itf)) < expit(b + u[itf])
        frames.append(pd.DataFrame({
            "rep": r, "item_id": np.r_[it, itf] + r * n_items,
            "persona": np.r_[[f"r{r}p{j}" for j in pj], ["none"] * len(itf)],
            "setting": np.r_[["persona"] * len(it), ["persona-free"] * len(itf)],
            "refusal": np.r_[yp, yf].astype(np.int8)}))
        drawn.append(np.mean([pa(b + delta + vj, item_sd) for vj in v]) - pa(b, item_sd))
    population = pa(b + delta, np.hypot(item_sd, persona_sd)) - pa(b, item_sd)
    return pd.concat(frames, ignore_index=True), population, np.array(drawn)


def shape_checks(reps: int, seed: int) -> list[dict]:
    """refusal_rates and persona_effect on the shapes of issue #19 (audit: 0.857 and 0.862)."""
    rows = []
    targets = [0.05, 0.20, 0.50]
    cases = [("heavy", 50, "normal"), *[(10, n, k) for n in (12, 20, 40)
                                        for k in ("two-point", "t3")]]
    for sizes, n_items, kind in cases:
        t0 = time.perf_counter()
        df = items_table(reps, seed, n_items, sizes, kind, 1.5, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = rs.refusal_rates(df, by=["rep", "task"])
        true = np.asarray(targets)[out["task"].to_numpy()]
        hit = (out["ci_low"] <= true) & (true <= out["ci_high"])
        size_text = "2-200 answers per item (log-uniform)" if sizes == "heavy" else \
            f"{sizes} answers per item"
        data = (f"{n_items} items per task, {size_text}, {kind} item effects sd 1.5, rates "
                f"5/20/50%; median df {np.median(out['df']):.1f}")
        rows.append(_row("refusal_rates default (CR2 + Bell-McCaffrey df), 95%", data,
                         "coverage", hit, COVER, 0.97, t0))
    t0 = time.perf_counter()
    df, population, drawn = personas_table(reps, seed)
    data = ("8 personas drawn from a population (persona sd 0.6), 40 items, item sd 1, each "
            "item once per persona and twice persona-free")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = rs.persona_effect(df, by="rep")
        two_way = rs.persona_effect(df, by="rep", cluster=["item_id", "persona"])
    for out, name, truth, band in [
            (default, "persona_effect default (cluster='auto'), the 8 drawn personas", drawn,
             (COVER, 0.97)),
            (default, "persona_effect default, population of personas (wrong target)",
             population, (None, 1.0)),
            (two_way, "persona_effect cluster=['item_id', 'persona'] (two-way), population",
             population, (COVER, 0.97))]:
        hit = (out["ci_low"] <= truth) & (truth <= out["ci_high"])
        rows.append(_row(name + ", 95%", data, "coverage", hit, *band, t0))
    return rows


def run(reps: int = 1000, seed: int = 0) -> list[dict]:
    rows = []
    rows += rates_checks(reps, seed)
    rows += cell_checks(reps, seed)
    rows += persona_effect_checks(reps, seed)
    rows += cochran_checks(reps, seed)
    rows += disparity_checks(reps, seed)
    rows += shape_checks(reps, seed)
    return rows


if __name__ == "__main__":
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from calibration import table

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    # `python benchmarks/calibration_rates.py 1000 shapes`: only the #19 shapes (docs/validity.md)
    out = shape_checks(reps, 0) if sys.argv[2:3] == ["shapes"] else run(reps=reps)
    print(table([{**r, "area": "rates"} for r in out]))
