"""Calibration of refusalstats.logit: false-positive rates of its tests, coverage of its intervals.

Run through the driver: ``python benchmarks/calibration.py --area logit [--reps 400]``.

Every replicate is a fresh ``rs.simulate_items`` table shaped like ours: 250 items, each
answered 10 times; ``task`` is an item-level input (constant within an item), ``persona``
a row-level input (each item gets every persona twice), ``prompt`` a row-level input with
no effect, and an item random intercept ``u ~ N(0, item_sd^2)`` on the logit scale.

Checks (one dict each, see ``benchmarks/calibration.py``):

(a) false-positive rate at 5% of ``drop1()`` and ``anova()`` for a null item-level factor
    (task) with ``cluster="item_id"`` (the default: CR2 + HTZ F here), item_sd 1;
(b) the same for a null row-level factor (persona);
(c) 95% interval coverage of ``task[T.t1]``: model-based Wald on independent rows
    (item_sd 0; the conditional and marginal coefficients coincide), and the default
    clustered interval (CR2 + Satterthwaite t) with
    item_sd 1, where the target is the *marginal* (population-averaged) log-odds ratio
    ``logit(m_t1) - logit(m_t0)``, ``m_t`` the rate of task t averaged over the item
    intercepts (``attrs["truth"]``, Gauss-Hermite) — what a working-independence fit
    with a cluster-robust covariance estimates (Zeger, Liang & Albert 1988);
(d) Firth profile penalized-likelihood interval coverage on rare events (about 2% refusals,
    independent rows);
(e) contrast: the unadjusted likelihood-ratio test (``cluster=None``) of the null
    item-level factor on the item_sd 1 tables of (a) — the known-bad baseline.

Shapes of real tables (issue #19; generators of our own, not ``simulate_items``), each
fitted with the default (``vcov=None``: CR3 when the Kish effective number of clusters is
below 20, else CR2), with ``vcov="CR2"``, ``"CR3"``, ``"CR1"`` and with
``working="exchangeable"`` (GEE, Mancl-DeRouen) on the same tables (``SHAPE_FITS``):

(f) heavy-tailed item sizes: 3 tasks x 50 items, answers per item ``2 * U^(-1/0.9)``
    rounded and clipped to 2-200 (median 4, a few items with 100+), item intercepts
    ``N(0, 1.5^2)``, personas (4, no effect) drawn per answer, and a null item-level
    factor ``domain`` (2 levels drawn per item);
(g) the same with two-point item effects ``+-1.5`` and 20 items per task;
(h) 12 items per task, 10 answers each (balanced), item sd 1.5;
(i) as (g) with 8 items per task (a Kish effective number of about 6 clusters: too few);
(j) 5 items per task, 10 answers each (balanced, 15 clusters);
(k) as (g) with 30 items per task.

For each: 95% coverage of the interval of ``task[T.t1]`` (target: the marginal log-odds
ratio, exact for a normal or two-point item effect) and the 5% false-positive rate of
``drop1()`` for the null item-level factor (``domain``) and the null row-level factor
(``persona``).
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
        _row("drop1() default (CR2 + HTZ F; Kish 250 effective clusters) of a null item-level factor (task), cluster='item_id'", data,
             "false-positive rate", drop, reps, None, 0.07, t0),
        _row("anova() default (CR2 + HTZ F; Kish 250 effective clusters) of a null item-level factor (task), cluster='item_id'", data,
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
        _row("drop1() default (CR2 + HTZ F; Kish 250 effective clusters) of a null row-level factor (persona), cluster='item_id'", data,
             "false-positive rate", drop, reps, None, 0.07, t0),
        _row("anova() default (CR2 + HTZ F; Kish 250 effective clusters) of a null row-level factor (persona), cluster='item_id'", data,
             "false-positive rate", seq, reps, None, 0.07, t0),
    ]


def _coverage_task(reps: int, seed: int) -> list[dict]:
    """(c): Wald (independent rows) and the default clustered interval (item_sd 1, marginal target) coverage of task[T.t1]."""
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
            check_name = (f"95% default (CR2 + Satterthwaite t) CI of task[T.t1] covers the marginal (population-averaged) "
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


# ----------------------------------------------------------------------------- shapes (#19)
SHAPE_FORMULA = "refusal ~ task + domain + persona"
SHAPE_BETA = np.array([0.0, 0.8, -0.5])  # tasks t0, t1, t2 (t0 the reference)
SHAPE_ALPHA = -0.5


def _heavy_sizes(rng, n: int) -> np.ndarray:
    return np.clip(np.round(2.0 * rng.random(n) ** (-1 / 0.9)), 2, 200).astype(int)


def _shape_table(rng, items_per_task: int, sizes: str, effect: str, sd: float = 1.5):
    """One table of a shape: items x answers with an item intercept (normal or two-point)."""
    n_items = 3 * items_per_task
    size = _heavy_sizes(rng, n_items) if sizes == "heavy" else np.full(n_items, 10)
    task = np.repeat(np.arange(3), items_per_task)
    if effect == "normal":
        u = rng.normal(0.0, sd, n_items)
    else:
        u = sd * rng.choice([-1.0, 1.0], n_items)
    domain = rng.integers(0, 2, n_items)
    while all(len(set(domain[task == t])) == 1 for t in range(3)):  # aliased with task: redraw
        domain = rng.integers(0, 2, n_items)
    item = np.repeat(np.arange(n_items), size)
    n = len(item)
    eta = SHAPE_ALPHA + SHAPE_BETA[task[item]] + u[item]
    import pandas as pd

    return pd.DataFrame({
        "item_id": item,
        "task": pd.Categorical.from_codes(task[item], ["t0", "t1", "t2"]),
        "domain": pd.Categorical.from_codes(domain[item], ["d0", "d1"]),
        "persona": pd.Categorical.from_codes(rng.integers(0, 4, n), ["p0", "p1", "p2", "p3"]),
        "refusal": (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int8),
    })


def _shape_truth(effect: str, sd: float = 1.5) -> float:
    """Marginal log-odds ratio of task t1 vs t0 (population-averaged over the item effect)."""
    if effect == "normal":
        x, w = np.polynomial.hermite_e.hermegauss(80)
        w = w / w.sum()
        m = [float(w @ (1 / (1 + np.exp(-(SHAPE_ALPHA + b + sd * x))))) for b in SHAPE_BETA[:2]]
    else:
        m = [0.5 * sum(1 / (1 + np.exp(-(SHAPE_ALPHA + b + e))) for e in (-sd, sd)) for b in SHAPE_BETA[:2]]
    return _logit(m[1]) - _logit(m[0])


SHAPES = {
    "f": ("heavy-tailed sizes (2-200 answers/item), 50 items/task, item sd 1.5", 50, "heavy", "normal"),
    "g": ("two-point item effects +-1.5, 20 items/task, heavy-tailed sizes", 20, "heavy", "two-point"),
    "h": ("12 items/task x 10 answers (balanced), item sd 1.5", 12, "balanced", "normal"),
    "i": ("two-point item effects +-1.5, 8 items/task, heavy-tailed sizes (too few effective clusters)", 8,
          "heavy", "two-point"),
    "j": ("5 items/task x 10 answers (balanced, 15 clusters), item sd 1.5", 5, "balanced", "normal"),
    "k": ("two-point item effects +-1.5, 30 items/task, heavy-tailed sizes", 30, "heavy", "two-point"),
}
#: thresholds of the default's rule (CR3 below min(T, G/2) effective clusters) whose calibration is
#: recomputed from the vcov='CR2' and vcov='CR3' fits of the same tables (printed, not in the table)
RULE_THRESHOLDS = (10.0, 15.0, 20.0, 25.0, 30.0)


#: the fits of each shape: key -> (logit keywords, label of the interval, label of the test)
SHAPE_FITS = {
    "default": ({}, ("default (vcov=None: CR3 below min(20, G/2) Kish effective clusters, else CR2) + "
                     "Satterthwaite t"),
                "default (CR3 / CR2 by the Kish rule) + HTZ"),
    "CR2": ({"vcov": "CR2"}, "CR2 + Satterthwaite t (vcov='CR2')", "CR2 + HTZ (vcov='CR2')"),
    "CR3": ({"vcov": "CR3"}, "CR3 + Satterthwaite t (vcov='CR3')", "CR3 + HTZ (vcov='CR3')"),
    "CR1": ({"vcov": "CR1"}, "CR1 z (vcov='CR1')", "CR1 Wald F(q, G-1) (vcov='CR1')"),
    "GEE": ({"working": "exchangeable"}, "GEE exchangeable + Mancl-DeRouen t(G-p) (working='exchangeable')",
            "GEE exchangeable + Mancl-DeRouen F(q, G-p) (working='exchangeable')"),
}


def _shape_checks(key: str, reps: int, seed: int) -> list[dict]:
    desc, per_task, sizes, effect = SHAPES[key]
    truth = _shape_truth(effect)
    t0 = time.perf_counter()
    hits = dict.fromkeys(SHAPE_FITS, 0)
    fp_item = dict.fromkeys(SHAPE_FITS, 0)
    fp_row = dict.fromkeys(SHAPE_FITS, 0)
    chose_cr3 = 0
    kish = []
    per_rep = {k: [] for k in ("CR2", "CR3")}  # (covered, fp item, fp row) per replicate
    done = 0
    for s in _seeds(seed, 100 + ord(key), reps):
        rng = np.random.default_rng(s)
        df = _shape_table(rng, per_task, sizes, effect)
        m = df.groupby("item_id").size().to_numpy()
        kish.append(m.sum() ** 2 / np.sum(m * m))
        for kind, (kw, _, _) in SHAPE_FITS.items():
            f = _fit(df, formula=SHAPE_FORMULA, cluster="item_id", **kw)
            if kind == "default":
                chose_cr3 += f.vcov == "CR3"
            ci = f.conf_int().loc["task[T.t1]"]
            hits[kind] += ci["ci_low"] <= truth <= ci["ci_high"]
            d1 = f.drop1().set_index("term")["p_value"]
            fp_item[kind] += d1["domain"] < 0.05
            fp_row[kind] += d1["persona"] < 0.05
            if kind in per_rep:
                per_rep[kind].append((ci["ci_low"] <= truth <= ci["ci_high"], d1["domain"] < 0.05,
                                      d1["persona"] < 0.05))
        done += 1
    _rule_sensitivity(key, np.array(kish), 3 * per_task, {k: np.array(v, float) for k, v in per_rep.items()})
    data = (f"{desc} (own generator; 3 tasks, 4 personas per answer, null item-level 'domain'; Kish effective "
            f"clusters median {np.median(kish):.1f}, default chose CR3 in {chose_cr3}/{done})")
    out = []
    for kind, (_, label, _) in SHAPE_FITS.items():
        out.append(_row(f"95% {label} interval of task[T.t1] covers the marginal log-odds ratio "
                        f"{truth:.3f}", data, "coverage", hits[kind], done, 0.93, 0.97, t0))
    for kind, (_, _, label) in SHAPE_FITS.items():
        out.append(_row(f"drop1() {label} of a null item-level factor (domain)", data,
                        "false-positive rate", fp_item[kind], done, None, 0.07, t0))
        out.append(_row(f"drop1() {label} of a null row-level factor (persona)", data,
                        "false-positive rate", fp_row[kind], done, None, 0.07, t0))
    return out


def _rule_sensitivity(key: str, kish: np.ndarray, n_clusters: int, per_rep: dict) -> None:
    """Print the default rule's coverage and false-positive rates had its threshold been each of
    RULE_THRESHOLDS (from the forced CR2 / CR3 fits of the same tables)."""
    import sys

    parts = []
    for t in RULE_THRESHOLDS:
        cr3 = kish < min(t, 0.5 * n_clusters)
        pick = np.where(cr3[:, None], per_rep["CR3"], per_rep["CR2"]).mean(0)
        parts.append(f"T={t:g}: {pick[0]:.3f} / {pick[1]:.3f} / {pick[2]:.3f}")
    print(f"shape ({key}) rule threshold sensitivity, coverage / fp item / fp row: " + "; ".join(parts),
          file=sys.stderr)


def run_shapes(reps: int = 400, seed: int = 0) -> list[dict]:
    """The #19 shapes (f)-(h) only."""
    rows: list[dict] = []
    for key in SHAPES:
        rows += _shape_checks(key, reps, seed)
    return rows


def run(reps: int = 400, seed: int = 0) -> list[dict]:
    """All logit calibration checks; one dict per check (see the module docstring)."""
    rows: list[dict] = []
    rows += run_shapes(reps, seed)
    rows += _null_item_factor(reps, seed)
    rows += _null_row_factor(reps, seed)
    rows += _coverage_task(reps, seed)
    rows += _coverage_firth(reps, seed)
    return rows


if __name__ == "__main__":  # pragma: no cover - use benchmarks/calibration.py
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from calibration import table

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    only_shapes = len(sys.argv) > 2 and sys.argv[2] == "shapes"  # python calibration_logit.py 400 shapes
    print(table([dict(r, area="logit") for r in (run_shapes(reps) if only_shapes else run(reps=reps))]))
