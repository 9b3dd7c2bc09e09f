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
    return rows


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    for r in run(n):
        print(r)
