"""Calibration of ``w2_sensitivity``: permutation false-positive rates and bootstrap coverage.

Run through the driver: ``.venv/bin/python benchmarks/calibration.py --area w2``.

Data
----
``rs.simulate_items(n_items=300, k=10, item_sd=1.0, intercept=-1.0)``: 300 items answered 10
times each (3,000 rows), an item random intercept with sd 1 on the logit scale, an
item-level input ``task`` (3 levels, 100 items each, constant within item) and a row-level
input ``persona`` (5 levels; every item sees each persona twice). A fresh data set (new
item effects, new answers) is drawn for every replicate.

Checks
------
* permutation false-positive rate at 5% (``p_value <= 0.05``) for a null item-level input
  (``task``, no effect) and a null row-level input (``persona``, no effect), clustered by item
  (the default ``cluster="auto"`` picks ``item_id``); target <= 0.07;
* the same item-level null with ``cluster=None`` (rows treated as independent), a contrast
  row that is expected to fail: its permutation null ignores the item effect;
* bootstrap 95% CI coverage (percentile, the default ``bootstrap="auto"``: items drawn
  with replacement within each level of the item-level ``task``, whose items per level are
  fixed by the design; whole items for the row-level ``persona``) for ``task`` with log-odds
  effects (0, 0.3, 2.0) and for ``persona`` with effects (0, 0, 1.2, 1.2, 1.2); target
  0.93-0.97;
* coverage of the default interval (expanded percentile) on the shapes real tables take
  (:func:`shaped_items`, a generator of its own): 12, 20 and 40 items per level of an
  item-level input, balanced or unbalanced (0.5x/1x/1.5x items per level, heavy-tailed
  answers per item), 5 items per level (too few: the warning is measured, not a target),
  and a row-level input over 36 items; ``--intervals`` compares every interval type;
* coverage with random partition sizes (no clusters, so the default is the unstratified
  row bootstrap): four equally likely categories with
  refusal probabilities .1, .3, .5, .9, N = 6,400 (the case of ``docs/methods_w2.md``), true
  iota = 0.25 / (2 * 0.2475) = 0.50505; target 0.93-0.97.

True iota
---------
For a 0/1 output, W2^2 between Bernoulli(p) and Bernoulli(q) is |p - q|, so

    iota = sum_c w_c |p_c - p| / (2 p (1 - p))

with ``w_c`` the share of rows in level c (1/3 per task, 1/5 per persona, fixed by the design)
and ``p_c`` the *population-averaged* refusal rate of level c: the rate averaged over the
item random intercept (Gauss-Hermite quadrature with 61 nodes, ``attrs["truth"]
["marginal_rate_task_persona"]`` of ``simulate_items``) and over the other input's levels
with their design shares; ``p = sum_c w_c p_c``. This is the limit of the estimator as the
number of items grows; ``tests/test_sensitivity.py`` checks it against one simulation with
20,000 items.

Cost: each coverage replicate runs the default 1,000 bootstrap replicates, each
false-positive replicate the default 200 permutations; the whole module takes about a minute
at reps=400 on one core (the clustered paths are contingency tables per item).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

import refusalstats as rs
from refusalstats.sensitivity import w2_sensitivity

N_ITEMS, K, ITEM_SD, INTERCEPT = 300, 10, 1.0, -1.0
N_BOOT, N_PERM = 1000, 200
TASK_EFFECT = [0.0, 0.3, 2.0]
PERSONA_EFFECT = [0.0, 0.0, 1.2, 1.2, 1.2]
FOUR_PROBS = np.array([0.1, 0.3, 0.5, 0.9])
FOUR_TRUTH = 0.25 / (2 * 0.2475)
FOUR_N = 6400


def _data(seed: int, task_effect=0.0, persona_effect=0.0) -> pd.DataFrame:
    return rs.simulate_items(N_ITEMS, K, item_sd=ITEM_SD, intercept=INTERCEPT,
                             item_effect=task_effect, row_effect=persona_effect, seed=seed)


def true_iota(truth: dict, which: str) -> float:
    """Population iota of ``task`` or ``persona`` from ``attrs["truth"]`` of simulate_items
    (equal design shares of the levels of both inputs, as in ``_data``)."""
    rates = truth["marginal_rate_task_persona"]
    tasks = sorted({k.split("|")[0] for k in rates})
    personas = sorted({k.split("|")[1] for k in rates})
    grid = np.array([[rates[f"{t}|{p}"] for p in personas] for t in tasks])
    p_c = grid.mean(axis=1) if which == "task" else grid.mean(axis=0)
    p = p_c.mean()
    return float(np.mean(np.abs(p_c - p)) / (2 * p * (1 - p)))


def _seeds(seed: int, check: int, reps: int) -> list[int]:
    ss = np.random.SeedSequence([seed, check])
    return [int(s.generate_state(1)[0]) for s in ss.spawn(reps)]


def _fpr(name, data_txt, reps, seed, check, inputs, cluster, **effects):
    t0 = time.perf_counter()
    hits = 0
    for s in _seeds(seed, check, reps):
        df = _data(s, **effects)
        tab = w2_sensitivity(df, inputs=[inputs], n_boot=0, n_perm=N_PERM, seed=s,
                             cluster=cluster, progress=False).table
        hits += bool(tab["p_value"].iloc[0] <= 0.05)
    return {"check": name, "data": data_txt, "statistic": "false-positive rate",
            "estimate": hits / reps, "target_low": None,
            "target_high": 1.0 if cluster is None else 0.07, "reps": reps,
            "seconds": time.perf_counter() - t0}


def _coverage_items(name, data_txt, reps, seed, check, which, **effects):
    t0 = time.perf_counter()
    hits = 0
    for s in _seeds(seed, check, reps):
        df = _data(s, **effects)
        truth = true_iota(df.attrs["truth"], which)
        row = w2_sensitivity(df, inputs=[which], n_boot=N_BOOT, n_perm=0, seed=s,
                             cluster="item_id", progress=False).table.iloc[0]
        hits += bool(row["ci_low"] <= truth <= row["ci_high"])
    return {"check": name, "data": data_txt, "statistic": "coverage", "estimate": hits / reps,
            "target_low": 0.93, "target_high": 0.97, "reps": reps,
            "seconds": time.perf_counter() - t0}


def _coverage_four(reps, seed, check):
    t0 = time.perf_counter()
    hits = 0
    for s in _seeds(seed, check, reps):
        rng = np.random.default_rng(s)
        g = rng.integers(0, 4, FOUR_N)
        y = (rng.random(FOUR_N) < FOUR_PROBS[g]).astype(int)
        df = pd.DataFrame({"g": g.astype(str), "refusal": y})
        row = w2_sensitivity(df, inputs=["g"], n_boot=N_BOOT, n_perm=0, seed=s,
                             progress=False).table.iloc[0]
        hits += bool(row["ci_low"] <= FOUR_TRUTH <= row["ci_high"])
    return {"check": "bootstrap 95% CI, random partition sizes (default: unstratified)",
            "data": f"4 categories p = .1/.3/.5/.9, N = {FOUR_N:,} rows, level drawn per row "
                    "(iota = 0.50505)",
            "statistic": "coverage", "estimate": hits / reps, "target_low": 0.93,
            "target_high": 0.97, "reps": reps, "seconds": time.perf_counter() - t0}


def run(reps: int = 400, seed: int = 0) -> list[dict]:
    """One dict per check (see the module docstring); ``reps`` data sets per check."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    shape = f"simulate_items {N_ITEMS} items x {K}, item sd {ITEM_SD:g}"
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.ClusterNote)
        rows.append(_fpr("permutation test 5%, item-level input (task), clustered",
                         f"{shape}, task null", reps, seed, 1, "task", "item_id"))
        rows.append(_fpr("permutation test 5%, row-level input (persona), clustered",
                         f"{shape}, persona null", reps, seed, 2, "persona", "item_id"))
        rows.append(_fpr("baseline (unclustered), expected high: permutation test 5%, "
                         "item-level input, cluster=None",
                         f"{shape}, task null", reps, seed, 1, "task", None))
        rows.append(_coverage_items(
            "bootstrap 95% CI (items drawn within task), item-level input (task)",
            f"{shape}, task log-odds 0/0.3/2.0 (iota 0.328)", reps, seed, 3, "task",
            task_effect=TASK_EFFECT))
        rows.append(_coverage_items(
            "bootstrap 95% CI (item bootstrap), row-level input (persona)",
            f"{shape}, persona log-odds 0/0/1.2/1.2/1.2 (iota 0.231)", reps, seed, 4,
            "persona", persona_effect=PERSONA_EFFECT))
        rows.append(_coverage_four(reps, seed, 5))
        for label, which in ([(lb, "task") for lb in SHAPES]
                             + [("12 balanced", "persona"), ("12 unbalanced", "persona")]):
            check = (10 if which == "task" else 20) + list(SHAPES).index(label)
            rows.append(_coverage_shape(label, which, reps, seed, check))
    return rows


def _coverage_shape(label: str, which: str, reps: int, seed: int, check: int) -> dict:
    """Coverage of the default interval (expanded percentile, default bootstrap) on one
    shape of :func:`shaped_items`; a shape with too few items carries the warning instead
    of a target (the share of data sets that warned is in the row)."""
    per_level, unbalanced = SHAPES[label]
    truth = shaped_truth(per_level, unbalanced, which)
    t0 = time.perf_counter()
    hits = warned = 0
    for s in _seeds(seed, check, reps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = w2_sensitivity(shaped_items(s, per_level, unbalanced), inputs=[which],
                                 n_boot=N_BOOT, n_perm=0, seed=s, cluster="item_id",
                                 progress=False)
        row = res.table.iloc[0]
        hits += bool(row["ci_low"] <= truth <= row["ci_high"])
        warned += bool(res.few_items)
    few = "too few" in label
    level = "item-level input (task)" if which == "task" else "row-level input (persona)"
    return {"check": f"bootstrap 95% CI (default: expanded), {level}"
                     + ("; warns: too few effective items" if few else ""),
            "data": f"shaped_items: {label.replace(' (too few)', '')} items per task level"
                    f" (iota {truth:.3f}); warned in {warned / reps:.0%}",
            "statistic": "coverage", "estimate": hits / reps,
            "target_low": None if few else 0.93, "target_high": None if few else 0.97,
            "reps": reps, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------
# few or unbalanced items per level (#19): which bootstrap interval, by measured coverage
# ----------------------------------------------------------------------------------------
#: The designs of the interval study: items per level of ``task`` and how unbalanced.
SHAPES = {
    "12 balanced": (12, False), "20 balanced": (20, False), "40 balanced": (40, False),
    "12 unbalanced": (12, True), "20 unbalanced": (20, True), "40 unbalanced": (40, True),
    "5 balanced (too few)": (5, False), "5 unbalanced (too few)": (5, True),
}
#: (ci, bootstrap) pairs compared; ("expanded", "auto") is the default since #19.
METHODS = [("expanded", "auto"), ("percentile", "auto"), ("bc", "auto"), ("bca", "auto"),
           ("studentized", "auto"), ("percentile", "unstratified"),
           ("studentized", "unstratified")]
LEVEL_SHARES = np.array([0.5, 1.0, 1.5])  # unbalanced: items per level relative to the mean
ROW_EFFECT = np.array([0.0, 0.0, 1.2, 1.2, 1.2])


def shaped_items(seed: int, per_level: int, unbalanced: bool, item_sd: float = ITEM_SD,
                 intercept: float = INTERCEPT) -> pd.DataFrame:
    """A generator of its own (not the package's simulators) for the shapes real tables take.

    Three ``task`` levels (log-odds effects 0, 0.3, 2.0, constant within item) with
    ``per_level`` items each, or (``unbalanced``) 0.5x, 1x and 1.5x ``per_level`` items and
    heavy-tailed answers per item (``2 + floor(lognormal(1.5, 1.1))`` capped at 200: median
    6, mean about 10, a few items with 100+); balanced items have 10 answers. Each answer
    draws one of five personas uniformly (log-odds 0, 0, 1.2, 1.2, 1.2); item intercepts are
    Normal(0, ``item_sd``). Rows: item_id, task, persona, refusal.
    """
    rng = np.random.default_rng(seed)
    counts = (np.rint(per_level * LEVEL_SHARES).astype(int) if unbalanced
              else np.full(3, per_level))
    task = np.repeat(np.arange(3), counts)
    n_items = len(task)
    size = (np.minimum(200, 2 + np.floor(rng.lognormal(1.5, 1.1, n_items))).astype(int)
            if unbalanced else np.full(n_items, K))
    u = rng.normal(0.0, item_sd, n_items)
    item = np.repeat(np.arange(n_items), size)
    persona = rng.integers(0, 5, len(item))
    eta = intercept + np.asarray(TASK_EFFECT)[task[item]] + ROW_EFFECT[persona] + u[item]
    y = (rng.random(len(item)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int8)
    return pd.DataFrame({
        "item_id": item, "task": pd.Categorical.from_codes(task[item], ["t0", "t1", "t2"]),
        "persona": pd.Categorical.from_codes(persona, [f"p{i}" for i in range(5)]),
        "refusal": y})


def shaped_truth(per_level: int, unbalanced: bool, which: str, item_sd: float = ITEM_SD,
                 intercept: float = INTERCEPT) -> float:
    """Population iota of ``task`` or ``persona`` in :func:`shaped_items`: rates averaged
    over the item intercept (Gauss-Hermite, 61 nodes), levels weighted by their expected
    share of rows (answers per item are independent of the level and the intercept)."""
    x, wq = np.polynomial.hermite_e.hermegauss(61)
    wq = wq / wq.sum()
    counts = (np.rint(per_level * LEVEL_SHARES) if unbalanced else np.full(3, per_level))
    w_task = counts / counts.sum()
    eta = (intercept + np.asarray(TASK_EFFECT)[:, None, None] + ROW_EFFECT[None, :, None]
           + item_sd * x[None, None, :])
    rate = (1.0 / (1.0 + np.exp(-eta)) * wq).sum(axis=2)  # task x persona
    if which == "task":
        w, p_c = w_task, rate.mean(axis=1)
    else:
        w, p_c = np.full(5, 0.2), w_task @ rate
    p = float(w @ p_c)
    return float(w @ np.abs(p_c - p) / (2 * p * (1 - p)))


def _intervals_of(df: pd.DataFrame, which: str, s: int) -> tuple[dict, bool]:
    """Every compared interval of one data set: three fits share their bootstrap draws
    within a scheme (``conf_int(ci=...)`` reads them back); and whether the few-items
    warning came."""
    got = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for boot in ("auto", "unstratified"):
            res = w2_sensitivity(df, inputs=[which], n_boot=N_BOOT, n_perm=0, seed=s,
                                 cluster="item_id", ci="studentized", bootstrap=boot,
                                 progress=False)
            cis = ["expanded", "percentile", "bc", "studentized"] if boot == "auto" else \
                ["percentile", "studentized"]
            for ci in cis:
                got[(ci, boot)] = tuple(res.conf_int(ci=ci).iloc[0])
            if boot == "auto":
                warned = bool(res.few_items)
        res = w2_sensitivity(df, inputs=[which], n_boot=N_BOOT, n_perm=0, seed=s,
                             cluster="item_id", ci="bca", progress=False)
        got[("bca", "auto")] = tuple(res.conf_int().iloc[0])
    del caught
    return got, warned


def interval_study(reps: int = 300, seed: int = 0, shapes=None, which: str = "task",
                   methods=METHODS) -> pd.DataFrame:
    """Coverage of every (ci, bootstrap) pair on every shape: one row per pair and shape,
    with the Monte Carlo standard error, the mean width and the share of data sets that
    carried the few-items warning (``res.few_items``). Each data set is analysed with every
    method from the same seed (the bootstrap draws are shared within a scheme)."""
    rows = []
    for label in shapes or SHAPES:
        per_level, unbalanced = SHAPES[label]
        truth = shaped_truth(per_level, unbalanced, which)
        hits = {m: 0 for m in methods}
        width = {m: 0.0 for m in methods}
        warned = 0
        t0 = time.perf_counter()
        for s in _seeds(seed, 100 + list(SHAPES).index(label), reps):
            got, w = _intervals_of(shaped_items(s, per_level, unbalanced), which, s)
            warned += w
            for m in methods:
                lo, hi = got[m]
                hits[m] += bool(lo <= truth <= hi)
                width[m] += (hi - lo) / reps
        secs = time.perf_counter() - t0
        for m in methods:
            p = hits[m] / reps
            rows.append({"shape": label, "input": which, "truth": round(truth, 4), "ci": m[0],
                         "bootstrap": m[1], "coverage": p,
                         "mc_se": float(np.sqrt(p * (1 - p) / reps)), "mean_width": width[m],
                         "warned": warned / reps, "reps": reps, "seconds": secs})
    return pd.DataFrame(rows)


def scaling_study(reps: int = 300, seed: int = 20261207, shapes=None, which: str = "task"
                  ) -> pd.DataFrame:
    """The scalings of the stratified percentile interval tried before ``"expanded"`` was
    chosen, on the data sets of :func:`interval_study` (same seeds): about the estimate,
    by ``sqrt(G/(G-1))`` alone, times ``t`` on the effective items less the strata (the
    rule ``"expanded"`` adopted, there about the replicates' median), or times ``t`` on the
    effective items of the smallest level less one."""
    from scipy.stats import norm
    from scipy.stats import t as tdist

    from refusalstats.counts import effective_clusters

    z = norm.ppf(0.975)
    names = {"p": "percentile", "a": "x sqrt(G/(G-1))", "b": "x sqrt(G/(G-1)) t(Geff - strata)/z",
             "c": "x sqrt(G/(G-1)) t(Geff of smallest level - 1)/z"}
    rows = []
    for label in shapes or SHAPES:
        per, ub = SHAPES[label]
        truth = shaped_truth(per, ub, which)
        hits = dict.fromkeys(names, 0)
        for s in _seeds(seed, 100 + list(SHAPES).index(label), reps):
            df = shaped_items(s, per, ub)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = w2_sensitivity(df, inputs=[which], n_boot=N_BOOT, n_perm=0, seed=s,
                                     cluster="item_id", ci="percentile", progress=False)
            th, b = res.table["iota"].iloc[0], res.boot[which]
            lo, hi = np.quantile(b, [0.025, 0.975])
            sizes = df.groupby("item_id").size()
            if which == "task":
                lev = df.groupby("item_id")["task"].first()
                gmin, strata = lev.value_counts().min(), lev.nunique()
                eff_min = min(effective_clusters(sizes[lev == c].to_numpy()) for c in lev.unique())
            else:
                gmin, strata, eff_min = len(sizes), 1, effective_clusters(sizes.to_numpy())
            ca = np.sqrt(gmin / (gmin - 1))
            scale = {"p": 1.0, "a": ca,
                     "b": ca * tdist.ppf(0.975, max(effective_clusters(sizes.to_numpy())
                                                    - strata, 1)) / z,
                     "c": ca * tdist.ppf(0.975, max(eff_min - 1, 1)) / z}
            for k, c in scale.items():
                hits[k] += max(th - c * (th - lo), 0) <= truth <= min(th + c * (hi - th), 1)
        for k, name in names.items():
            p = hits[k] / reps
            rows.append({"shape": label, "input": which, "interval": name, "coverage": p,
                         "mc_se": float(np.sqrt(p * (1 - p) / reps)), "reps": reps})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    # python benchmarks/calibration_w2.py [REPS]: the driver's rows;
    # python benchmarks/calibration_w2.py --intervals REPS [SHAPE,SHAPE,...] [task|persona]:
    # the interval study (docs/methods_w2.md, "Few or unbalanced items")
    import sys

    args = sys.argv[1:]
    if args and args[0] == "--scalings":
        args = args[1:]
        out = scaling_study(int(args[0]) if args else 300,
                            shapes=args[1].split(",") if len(args) > 1 else None,
                            which=args[2] if len(args) > 2 else "task")
        print(out.to_markdown(index=False, floatfmt=".3f"))
    elif args and args[0] == "--intervals":
        args = args[1:]
        out = interval_study(int(args[0]) if args else 300, seed=20261207,
                             shapes=args[1].split(",") if len(args) > 1 else None,
                             which=args[2] if len(args) > 2 else "task")
        print(out.to_markdown(index=False, floatfmt=".3f"))
    else:
        for r in run(int(args[0]) if args else 400):
            print(r)
