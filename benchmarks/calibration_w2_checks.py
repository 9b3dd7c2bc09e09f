"""Simulation checks of W2 sensitivity that used to run inside tests/test_sensitivity.py (#23).

Each study is a coverage, false-positive-rate or spread-ratio study over hundreds of
simulated tables (together ~3,000 w2_sensitivity fits, minutes on 2 cores), so it lives
here as calibration and the test suite keeps the fast exact checks. Each study prints
its estimate with the Monte Carlo standard error and checks the band the test used::

    python benchmarks/calibration_w2_checks.py            # the test's replicate counts
    python benchmarks/calibration_w2_checks.py --reps 50  # a quick look (wide MC error)

Studies (bands as the tests had them):

- ``coverage_random_sizes``: random partition sizes, iota = 0.50505; BCa and percentile
  bootstrap intervals cover 0.93-0.975 (400 data sets of 6,400 rows).
- ``item_null_fpr``: item random intercept sd 1, a null item-level input; the item
  permutation rejects <= 0.075 at 5%, the row permutation >= 0.15 (audit: 28-32%).
- ``row_null_fpr``: a null row-level input under item clustering rejects 0.02-0.075.
- ``item_bootstrap_coverage_task`` / ``_persona``: the item bootstrap covers an item-level
  and a row-level input's true iota 0.925-0.985 (audit: 72% with the row bootstrap).
- ``item_bootstrap_spread``: the items-within-levels bootstrap sd over the sampling sd of
  iota is 0.90-1.005 (1,500 data sets).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import refusalstats as rs
from refusalstats.sensitivity import w2_sensitivity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_w2 import true_iota


def _items(n_items=120, k=10, seed=0, **kw):
    return rs.simulate_items(n_items, k, item_sd=1.0, intercept=-1.0, seed=seed, **kw)


def _rate(fn, reps):
    return sum(bool(fn(s)) for s in range(reps)) / reps


def _mc(p: float, reps: int) -> float:
    return float(np.sqrt(max(p * (1 - p), 1e-12) / reps))


def coverage_random_sizes(reps: int = 400) -> dict[str, tuple[float, tuple[float, float]]]:
    truth = 0.25 / (2 * 0.2475)
    probs = np.array([0.1, 0.3, 0.5, 0.9])
    rng = np.random.default_rng(18)
    hits = {"bca": 0, "percentile": 0}
    for r in range(reps):
        g = rng.integers(0, 4, 6400)
        y = (rng.random(6400) < probs[g]).astype(int)
        df = pd.DataFrame({"g": g.astype(str), "refusal": y})
        for method in hits:
            t = w2_sensitivity(df, inputs=["g"], n_boot=400, n_perm=0, seed=r, ci=method,
                               progress=False).table.iloc[0]
            hits[method] += t["ci_low"] <= truth <= t["ci_high"]
    return {f"coverage {m}": (h / reps, (0.93, 0.975)) for m, h in hits.items()}


def item_null_fpr(reps: int = 400):
    def reject(s, cluster):
        df = _items(90, 10, seed=1000 + s)
        t = w2_sensitivity(df, inputs=["task"], n_boot=0, n_perm=100, seed=s,
                           cluster=cluster, progress=False).table.iloc[0]
        return t["p_value"] <= 0.05

    return {"item permutation FPR": (_rate(lambda s: reject(s, "item_id"), reps), (0.0, 0.075)),
            "row permutation FPR": (_rate(lambda s: reject(s, None), reps), (0.15, 1.0))}


def row_null_fpr(reps: int = 400):
    def reject(s):
        df = _items(90, 10, seed=2000 + s)
        t = w2_sensitivity(df, inputs=["persona"], n_boot=0, n_perm=100, seed=s,
                           cluster="item_id", progress=False).table.iloc[0]
        return t["p_value"] <= 0.05

    return {"row-level null FPR (clustered)": (_rate(reject, reps), (0.02, 0.075))}


def item_bootstrap_coverage(reps: int = 400):
    out = {}
    for which, effects in [("task", {"item_effect": [0.0, 0.3, 2.0]}),
                           ("persona", {"row_effect": [0.0, 0.0, 1.2, 1.2, 1.2]})]:
        def covers(s, which=which, effects=effects):
            df = _items(150, 10, seed=3000 + s, **effects)
            truth = true_iota(df.attrs["truth"], which)
            t = w2_sensitivity(df, inputs=[which], n_boot=300, n_perm=0, seed=s,
                               cluster="item_id", progress=False).table.iloc[0]
            return t["ci_low"] <= truth <= t["ci_high"]

        out[f"item bootstrap coverage ({which})"] = (_rate(covers, reps), (0.925, 0.985))
    return out


def item_bootstrap_spread(reps: int = 1500):
    iotas, sds = [], []
    for s in range(reps):
        df = _items(90, 6, seed=5000 + s, item_effect=[0.0, 0.3, 2.0])
        res = w2_sensitivity(df, inputs=["task"], n_boot=200, n_perm=0, seed=s,
                             cluster="item_id", progress=False)
        iotas.append(res.table["iota"].iloc[0])
        sds.append(res.boot["task"].std())
    assert res.boot_scheme == {"task": "items within levels"}
    ratio = float(np.mean(sds) / np.std(iotas))  # MC error ~0.018 at 1,500
    return {"bootstrap sd / sampling sd": (ratio, (0.90, 1.005))}


STUDIES = {"coverage_random_sizes": (coverage_random_sizes, 400),
           "item_null_fpr": (item_null_fpr, 400), "row_null_fpr": (row_null_fpr, 400),
           "item_bootstrap_coverage": (item_bootstrap_coverage, 400),
           "item_bootstrap_spread": (item_bootstrap_spread, 1500)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, help="replicates per study (default: the test's)")
    ap.add_argument("--only", nargs="*", choices=list(STUDIES), help="run these studies only")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # the cluster notes, once per fit
    bad = 0
    for name, (fn, default) in STUDIES.items():
        if args.only and name not in args.only:
            continue
        reps = args.reps or default
        t0 = time.perf_counter()
        for label, (value, (lo, hi)) in fn(reps).items():
            ok = lo <= value <= hi
            bad += not ok
            mc = "" if "sd /" in label else f" (MC se {_mc(value, reps):.3f})"
            print(f"{name}: {label} = {value:.3f}{mc}, band [{lo}, {hi}]: "
                  f"{'ok' if ok else 'OUTSIDE'}; {reps} reps, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
