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

Issue #24 (the nested Laplace fit that ``method="auto"`` runs on large designs): a design
of P1's shape drawn from the model itself (``_p1_like``: items nested in tasks, each item
answered under k (persona, prompt) pairs by every model; random model, persona,
persona:model and item intercepts drawn anew in every replicate), fitted by
``refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model) + (1|item_id)``
with ``method="laplace"``. Checks, target 0.93-0.97:

* the 95% HDI of the task effect covers its true value;
* the 95% HDI of each persona's effect ``u_persona`` covers the value drawn for that
  replicate (pooled over the personas; the check text gives the between-replicate Monte
  Carlo s.e., which allows for the personas of one replicate sharing a fit).

Run: ``.venv/bin/python benchmarks/calibration.py --area hierarchical`` (all rows), or
``.venv/bin/python benchmarks/calibration_hierarchical.py --p1 300`` (the #24 rows only), or
``... calibration_hierarchical.py --laplace 40`` (the simulate_items ``method='laplace'`` row only).
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


P1_SHAPE = {"items_per_task": 100, "k": 4, "models": 8, "personas": 15, "prompts": 4}
P1_SD = {"model": 1.5, "persona": 0.8, "persona:model": 0.3, "item_id": 1.0}
P1_FIXED = {"intercept": -1.5, "task": [0.0, 0.5, 1.0], "prompt": [0.0, -0.3, 0.2, -0.5]}
P1_FORMULA = "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model) + (1|item_id)"
P1_DATA = (f"P1-shaped, drawn from the model: 3 tasks x {P1_SHAPE['items_per_task']} items, each "
           f"answered under {P1_SHAPE['k']} (persona, prompt) pairs by {P1_SHAPE['models']} models "
           f"({P1_SHAPE['personas']} personas, {P1_SHAPE['prompts']} prompts; 9,600 rows); sd's model "
           f"{P1_SD['model']}, persona {P1_SD['persona']}, persona:model {P1_SD['persona:model']}, "
           f"item {P1_SD['item_id']}; task effects 0.5, 1.0")


def _p1_like(rng: np.random.Generator):
    """One replicate of the P1-shaped design with its true effects."""
    import pandas as pd
    from scipy.special import expit

    sh = P1_SHAPE
    n_items = 3 * sh["items_per_task"]
    task = np.repeat(np.arange(3), sh["items_per_task"])
    u = {t: rng.normal(0, P1_SD[t], n) for t, n in
         (("model", sh["models"]), ("persona", sh["personas"]), ("item_id", n_items))}
    u_pm = rng.normal(0, P1_SD["persona:model"], (sh["personas"], sh["models"]))
    rows = []
    for i in range(n_items):
        pairs = rng.choice(sh["personas"] * sh["prompts"], sh["k"], replace=False)
        for pq in pairs:
            p, q = divmod(int(pq), sh["prompts"])
            for m in range(sh["models"]):
                rows.append((i, task[i], p, q, m))
    a = np.array(rows)
    i, t, p, q, m = a.T
    eta = (P1_FIXED["intercept"] + np.array(P1_FIXED["task"])[t] + np.array(P1_FIXED["prompt"])[q]
           + u["model"][m] + u["persona"][p] + u_pm[p, m] + u["item_id"][i])
    y = (rng.random(len(eta)) < expit(eta)).astype(np.int8)
    df = pd.DataFrame({"item_id": i, "task": [f"t{x}" for x in t], "prompt": [f"p{x}" for x in q],
                       "model": [f"m{x:02d}" for x in m], "persona": [f"q{x:02d}" for x in p],
                       "refusal": y})
    truth = {"task[T.t1]": P1_FIXED["task"][1], "task[T.t2]": P1_FIXED["task"][2],
             "persona": pd.Series(u["persona"], index=[f"q{x:02d}" for x in range(sh["personas"])])}
    return df, truth


def run_p1(reps: int = 300, seed: int = 0, progress: bool = False) -> list[dict]:
    """Coverage of the nested Laplace fit's task and persona intervals (issue #24)."""
    from refusalstats.bayes import HierarchicalModel

    rng = np.random.default_rng(seed + 24)
    hits_task, hits_pers, frac_pers, widths, secs = 0, 0, [], [], 0.0
    n_pers = 0
    for r in range(reps):
        df, truth = _p1_like(rng)
        t0 = time.perf_counter()
        fit = HierarchicalModel(P1_FORMULA, df).fit(method="laplace", draws=2000, seed=r, progress=False)
        s = fit.to_frame(conf=0.95)
        dev = fit.deviations("persona", conf=0.95).set_index("persona")
        secs += time.perf_counter() - t0
        for term in ("task[T.t1]",):
            hits_task += bool(s.loc[term, "ci_low"] <= truth[term] <= s.loc[term, "ci_high"])
            widths.append(s.loc[term, "ci_high"] - s.loc[term, "ci_low"])
        tv = truth["persona"].reindex(dev.index.astype(str))
        inside = (dev["ci_low"].to_numpy() <= tv.to_numpy()) & (tv.to_numpy() <= dev["ci_high"].to_numpy())
        hits_pers += int(inside.sum())
        n_pers += len(inside)
        frac_pers.append(inside.mean())
        if progress and (r + 1) % 10 == 0:
            print(f"rep {r + 1}: task {hits_task}/{r + 1}, persona {hits_pers}/{n_pers}, "
                  f"{secs:.0f} s", flush=True)
    se_between = float(np.std(frac_pers, ddof=1) / np.sqrt(reps)) if reps > 1 else float("nan")
    return [
        {"check": f"95% HDI of task effect t1, (1|item_id), method='laplace' (nested Laplace, "
                  f"the default above 20,000 patterns); target: true effect (mean width "
                  f"{np.mean(widths):.2f})",
         "estimate": hits_task / reps, "reps": reps, "target_low": 0.93, "target_high": 0.97,
         "seconds": secs / 2, "data": P1_DATA, "statistic": "coverage"},
        {"check": f"95% HDI of each persona effect u_persona, (1|item_id), method='laplace'; target: "
                  f"the drawn effect, pooled over {P1_SHAPE['personas']} personas x {reps} replicates "
                  f"(between-replicate MC s.e. {se_between:.3f})",
         "estimate": hits_pers / n_pers, "reps": n_pers, "target_low": 0.93, "target_high": 0.97,
         "seconds": secs / 2, "data": P1_DATA, "statistic": "coverage"},
    ]


def run(reps: int = 40, seed: int = 0, p1_reps: int = 300,
        fits: tuple[str, ...] = ("item", "laplace", "pooled")) -> list[dict]:
    """All rows; ``fits`` picks the simulate_items rows (``p1_reps=0`` skips the #24 rows)."""
    import refusalstats as rs
    from refusalstats.bayes import ConvergenceWarning, HierarchicalModel

    warnings.filterwarnings("ignore", category=FutureWarning)
    specs = {
        "item": ("refusal ~ task + (1|persona) + (1|item_id)", "nuts"),
        "laplace": ("refusal ~ task + (1|persona) + (1|item_id)", "laplace"),
        "pooled": ("refusal ~ task + (1|persona)", "nuts"),
    }
    specs = {k: v for k, v in specs.items() if k in fits}
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
    checks = {  # key: (what the row says, lower end of the target)
        "item": ((f"95% HDI of task effect, (1|item_id), NUTS {CHAINS}x({TUNE}+{DRAWS}); target: "
                 f"conditional effect (mean width {{w:.2f}}, median max R-hat "
                 f"{np.median(rhat) if rhat else np.nan:.3f})"), 0.88),
        "laplace": (("95% HDI of task effect, (1|item_id), method='laplace' (approximate); target: "
                    "conditional effect (mean width {w:.2f})"), 0.88),
        "pooled": (("baseline (no item term): 95% HDI of task effect, refusal ~ task + (1|persona); "
                   "target: population-averaged effect (mean width {w:.2f})"), None),
    }
    rows = [{"check": text.format(w=np.mean(width[key])), "estimate": hits[key] / reps,
             "target_low": low, "target_high": 1.0, "seconds": secs[key]}
            for key, (text, low) in checks.items() if key in specs]
    for row in rows:
        row.update(data=DATA, statistic="coverage", reps=reps)
    return rows + (run_p1(p1_reps, seed) if p1_reps else [])


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from calibration import table

    if len(sys.argv) > 2 and sys.argv[1] == "--p1":
        out = run_p1(reps=int(sys.argv[2]), seed=int(sys.argv[3]) if len(sys.argv) > 3 else 20261128,
                     progress=True)
    elif len(sys.argv) > 2 and sys.argv[1] == "--laplace":  # the simulate_items laplace row only
        out = run(reps=int(sys.argv[2]), seed=int(sys.argv[3]) if len(sys.argv) > 3 else 20261128,
                  p1_reps=0, fits=("laplace",))
    else:
        out = run(reps=int(sys.argv[1]) if len(sys.argv) > 1 else 40)
    for row in out:
        row["area"] = "hierarchical"
    print(table(out))
