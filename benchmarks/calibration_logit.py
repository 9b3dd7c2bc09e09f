"""Calibration of refusalstats.logit: false-positive rates of its tests, coverage of its intervals.

Run through the driver: ``python benchmarks/calibration.py --area logit [--reps 400]``.

Every replicate is a fresh ``rs.simulate_items`` table shaped like ours: 250 items, each
answered 10 times; ``task`` is an item-level input (constant within an item), ``persona``
a row-level input (each item gets every persona twice), ``prompt`` a row-level input with
no effect, and an item random intercept ``u ~ N(0, item_sd^2)`` on the logit scale.

Checks (one dict each, see ``benchmarks/calibration.py``):

(a) false-positive rate at 5% of ``drop1()`` and ``anova()`` for a null item-level factor
    (task) with ``cluster="item_id"`` (cluster-robust Wald F on (q, G-1) df), item_sd 1;
(b) the same for a null row-level factor (persona);
(c) 95% interval coverage of ``task[T.t1]``: model-based Wald on independent rows
    (item_sd 0; the conditional and marginal coefficients coincide), and CR1 Wald with
    item_sd 1, where the target is the *marginal* (population-averaged) log-odds ratio
    ``logit(m_t1) - logit(m_t0)``, ``m_t`` the rate of task t averaged over the item
    intercepts (``attrs["truth"]``, Gauss-Hermite) — what a working-independence fit
    with a cluster-robust covariance estimates (Zeger, Liang & Albert 1988);
(d) Firth profile penalized-likelihood interval coverage on rare events (about 2% refusals,
    independent rows);
(e) contrast: the unadjusted likelihood-ratio test (``cluster=None``) of the null
    item-level factor on the item_sd 1 tables of (a) — the known-bad baseline.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

import refusalstats as rs
from refusalstats import logit

N_ITEMS, K = 250, 10
FORMULA = "refusal ~ task + persona + prompt"


def _seeds(seed: int, check: int, reps: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence([seed, check]).generate_state(reps)]


def _data(**kw) -> str:
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    return f"simulate_items({N_ITEMS} items x {K} answers, {args})"


def _logit(m: float) -> float:
    return float(np.log(m / (1 - m)))


def _fit(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logit(FORMULA if "formula" not in kw else kw.pop("formula"), df, progress=False, **kw)


def _row(check, data, statistic, hits, reps, lo, hi, t0):
    return {"check": check, "data": data, "statistic": statistic, "estimate": hits / reps,
            "target_low": lo, "target_high": hi, "reps": reps, "seconds": time.perf_counter() - t0}


def _null_item_factor(reps: int, seed: int) -> list[dict]:
    """(a) and (e): task has no effect; item intercepts sd 1."""
    kw = {"item_sd": 1.0, "intercept": -1.0, "row_effect": 0.3}
    t0 = time.perf_counter()
    drop, seq, lr = 0, 0, 0
    t_cl = t_lr = 0.0
    for s in _seeds(seed, 1, reps):
        df = rs.simulate_items(N_ITEMS, K, seed=s, **kw)
        ta = time.perf_counter()
        f = _fit(df, cluster="item_id")
        drop += f.drop1().set_index("term").loc["task", "p_value"] < 0.05
        seq += f.anova().set_index("term").loc["task", "p_value"] < 0.05
        tb = time.perf_counter()
        g = _fit(df, cluster=None)
        lr += g.drop1().set_index("term").loc["task", "p_value"] < 0.05
        t_cl += tb - ta
        t_lr += time.perf_counter() - tb
    sim = (time.perf_counter() - t0) - t_cl - t_lr
    data = _data(**kw)
    rows = [
        _row("drop1() CR1 Wald F(q, G-1) of a null item-level factor (task), cluster='item_id'", data,
             "false-positive rate", drop, reps, None, 0.07, t0),
        _row("anova() CR1 Wald F(q, G-1) of a null item-level factor (task), cluster='item_id'", data,
             "false-positive rate", seq, reps, None, 0.07, t0),
        _row("baseline (unclustered), expected to fail: drop1() likelihood-ratio test of the null "
             "item-level factor, cluster=None", data, "false-positive rate", lr, reps, None, 1.0, t0),
    ]
    rows[0]["seconds"] = rows[1]["seconds"] = t_cl + sim
    rows[2]["seconds"] = t_lr
    return rows


def _null_row_factor(reps: int, seed: int) -> list[dict]:
    """(b): persona has no effect; task has one; item intercepts sd 1."""
    kw = {"item_sd": 1.0, "intercept": -1.0, "item_effect": 0.4}
    t0 = time.perf_counter()
    drop, seq = 0, 0
    for s in _seeds(seed, 2, reps):
        df = rs.simulate_items(N_ITEMS, K, seed=s, **kw)
        f = _fit(df, cluster="item_id")
        drop += f.drop1().set_index("term").loc["persona", "p_value"] < 0.05
        seq += f.anova().set_index("term").loc["persona", "p_value"] < 0.05
    data = _data(**kw)
    return [
        _row("drop1() CR1 Wald F(q, G-1) of a null row-level factor (persona), cluster='item_id'", data,
             "false-positive rate", drop, reps, None, 0.07, t0),
        _row("anova() CR1 Wald F(q, G-1) of a null row-level factor (persona), cluster='item_id'", data,
             "false-positive rate", seq, reps, None, 0.07, t0),
    ]


def _coverage_task(reps: int, seed: int) -> list[dict]:
    """(c): Wald (independent rows) and CR1 (item_sd 1, marginal target) coverage of task[T.t1]."""
    out = []
    for check, item_sd, cluster in ((3, 0.0, None), (4, 1.0, "item_id")):
        kw = {"item_sd": item_sd, "intercept": -1.0, "item_effect": 0.5}
        t0 = time.perf_counter()
        hits = 0
        target = None
        for s in _seeds(seed, check, reps):
            df = rs.simulate_items(N_ITEMS, K, seed=s, **kw)
            if target is None:  # the same for every replicate
                m = df.attrs["truth"]["marginal_rate_task_persona"]
                target = _logit(m["t1|p0"]) - _logit(m["t0|p0"])
            f = _fit(df, cluster=cluster)
            ci = f.conf_int().loc["task[T.t1]"]
            hits += ci["ci_low"] <= target <= ci["ci_high"]
        if cluster is None:
            check_name = (f"95% model-based Wald CI of task[T.t1] covers the truth ({target:.3f}; "
                          "conditional = marginal with item_sd 0), cluster=None")
        else:
            check_name = (f"95% CR1 Wald CI of task[T.t1] covers the marginal (population-averaged) "
                          f"log-odds ratio {target:.3f} (conditional 0.5), cluster='item_id'")
        out.append(_row(check_name, _data(**kw), "coverage", hits, reps, 0.93, 0.97, t0))
    return out


def _coverage_firth(reps: int, seed: int) -> list[dict]:
    """(d): Firth profile penalized-likelihood interval, rare events, independent rows."""
    kw = {"item_sd": 0.0, "intercept": -4.5, "item_effect": 0.5}
    t0 = time.perf_counter()
    hits = 0
    events = []
    for s in _seeds(seed, 5, reps):
        df = rs.simulate_items(N_ITEMS, K, seed=s, **kw)
        events.append(int(df["refusal"].sum()))
        f = _fit(df, formula="refusal ~ task", penalty="firth", ci="profile", cluster=None)
        ci = f.conf_int().loc["task[T.t1]"]
        hits += ci["ci_low"] <= 0.5 <= ci["ci_high"]
    return [_row(f"95% Firth profile penalized-likelihood CI of task[T.t1] covers the truth 0.5 "
                 f"(rare events: median {int(np.median(events))} refusals in {N_ITEMS * K} rows), "
                 "cluster=None", _data(**kw), "coverage", hits, reps, 0.93, 0.97, t0)]


def run(reps: int = 400, seed: int = 0) -> list[dict]:
    """All logit calibration checks; one dict per check (see the module docstring)."""
    rows: list[dict] = []
    rows += _null_item_factor(reps, seed)
    rows += _null_row_factor(reps, seed)
    rows += _coverage_task(reps, seed)
    rows += _coverage_firth(reps, seed)
    return rows


if __name__ == "__main__":  # pragma: no cover - use benchmarks/calibration.py
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from calibration import table

    print(table([dict(r, area="logit") for r in run(reps=int(sys.argv[1]) if len(sys.argv) > 1 else 400)]))
