"""Calibration of the hierarchical model: credible-interval coverage under item clustering.

Data: ``rs.simulate_items`` — items answered k = 10 times each, an item-level input
``task`` (3 levels, constant within item), a row-level input ``persona`` (5 levels) and
an item random intercept u ~ N(0, item_sd^2) with item_sd = 1; the shape of the paper's
design at a few hundred items. Per replicate the same design gets new item effects and
new refusals.

Checks (95% highest-density intervals of the task effect ``task[T.t1]``):

* ``refusal ~ task + (1|persona) + (1|item_id)``, NUTS (nutpie, 2 chains x (300 tune +
  300 draws); short chains to afford many fits: the compiled model is reused across
  replicates through ``HierarchicalModel.set_responses``). Target: the *conditional*
  effect given the item (``attrs["truth"]["task"]["t1"]``), the model's own parameter.
* the same model with ``method="laplace"`` (the nested Laplace approximation offered for
  tables too large for NUTS). Same target.
* baseline (no item term): ``refusal ~ task + (1|persona)``, NUTS. Its target is the
  *population-averaged* effect (what a model without an item term estimates: the
  pooled logistic fit to the marginal cell rates, item intercept integrated out), so a
  miss is a too-narrow interval, not a different estimand. A contrast row
  (target_high = 1.0): it shows what the item term buys.

Run: ``.venv/bin/python benchmarks/calibration.py --area hierarchical``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

N_ITEMS, K, ITEM_SD = 150, 10, 1.0
EFFECTS = {"intercept": -1.0, "item_effect": 0.5, "row_effect": 0.3}
TERM = "task[T.t1]"
DRAWS = TUNE = 300
CHAINS = 2
DATA = (f"simulate_items: {N_ITEMS} items x {K} answers, task (item-level, 3 levels, "
        f"effect t1 = 0.5), persona (row-level, 5), item_sd = {ITEM_SD}")


def _marginal_effect(truth: dict) -> float:
    """Population-averaged task[T.t1]: pooled main-effects logistic fit to the marginal
    (task, persona) cell rates (balanced design: equal cell weights)."""
    from refusalstats.simulate import _weighted_logistic

    rates = truth["marginal_rate_task_persona"]
    tasks = sorted({k.split("|")[0] for k in rates})
    personas = sorted({k.split("|")[1] for k in rates})
    rows, p = [], []
    for t in tasks:
        for q in personas:
            rows.append([1.0] + [float(t == x) for x in tasks[1:]] + [float(q == x) for x in personas[1:]])
            p.append(rates[f"{t}|{q}"])
    b = _weighted_logistic(np.array(rows), np.array(p), np.ones(len(p)))
    return float(b[1 + tasks[1:].index("t1")])


def _covers(fit, truth: float) -> bool:
    s = fit.to_frame(conf=0.95)
    return bool(s.loc[TERM, "ci_low"] <= truth <= s.loc[TERM, "ci_high"])


def run(reps: int = 40, seed: int = 0) -> list[dict]:
    import refusalstats as rs
    from refusalstats.bayes import ConvergenceWarning, HierarchicalModel

    warnings.filterwarnings("ignore", category=FutureWarning)
    specs = {
        "item": ("refusal ~ task + (1|persona) + (1|item_id)", "nuts"),
        "laplace": ("refusal ~ task + (1|persona) + (1|item_id)", "laplace"),
        "pooled": ("refusal ~ task + (1|persona)", "nuts"),
    }
    models: dict[str, HierarchicalModel] = {}
    hits = {k: 0 for k in specs}
    secs = {k: 0.0 for k in specs}
    width = {k: [] for k in specs}
    rhat = []
    rng = np.random.default_rng(seed)
    for r in range(reps):
        df = rs.simulate_items(n_items=N_ITEMS, k=K, item_sd=ITEM_SD, seed=int(rng.integers(2**31)),
                               **EFFECTS)
        truth = df.attrs["truth"]
        cond = truth["task"]["t1"]
        marg = _marginal_effect(truth)
        for key, (formula, method) in specs.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if key == "laplace":
                    m = models.setdefault(key, HierarchicalModel(formula, df, parametrization="noncentered"))
                    if r:
                        m.set_responses(df)
                    fit = m.fit(method="laplace", draws=2000, seed=r, progress=False)
                else:
                    if key not in models:
                        models[key] = HierarchicalModel(formula, df)
                    else:
                        models[key].set_responses(df)
                    fit = models[key].fit(draws=DRAWS, tune=TUNE, chains=CHAINS, cores=1, seed=r,
                                          progress=False)
                    if key == "item":
                        rhat.append(fit.diagnostics()["max_rhat"])
            s = fit.to_frame()
            width[key].append(s.loc[TERM, "ci_high"] - s.loc[TERM, "ci_low"])
            hits[key] += _covers(fit, marg if key == "pooled" else cond)
            secs[key] += time.perf_counter() - t0
    rows = [
        {"check": f"95% HDI of task effect, (1|item_id), NUTS {CHAINS}x({TUNE}+{DRAWS}); target: "
                  f"conditional effect (mean width {np.mean(width['item']):.2f}, median max R-hat "
                  f"{np.median(rhat):.3f})",
         "estimate": hits["item"] / reps, "target_low": 0.88, "target_high": 1.0, "seconds": secs["item"]},
        {"check": f"95% HDI of task effect, (1|item_id), method='laplace' (approximate); target: "
                  f"conditional effect (mean width {np.mean(width['laplace']):.2f})",
         "estimate": hits["laplace"] / reps, "target_low": 0.88, "target_high": 1.0,
         "seconds": secs["laplace"]},
        {"check": f"baseline (no item term): 95% HDI of task effect, refusal ~ task + (1|persona); "
                  f"target: population-averaged effect (mean width {np.mean(width['pooled']):.2f})",
         "estimate": hits["pooled"] / reps, "target_low": None, "target_high": 1.0,
         "seconds": secs["pooled"]},
    ]
    for row in rows:
        row.update(data=DATA, statistic="coverage", reps=reps)
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from calibration import table

    out = run(reps=int(sys.argv[1]) if len(sys.argv) > 1 else 40)
    for row in out:
        row["area"] = "hierarchical"
    print(table(out))
