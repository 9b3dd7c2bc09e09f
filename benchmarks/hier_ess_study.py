"""Paired-seed study: does the Potential likelihood mix sd(persona:model) worse than the old Binomial?

The hierarchical model with ``(1|item_id)`` is built once with the code of revision cc1759a
(``pm.Binomial`` on pattern counts, loaded by ``bench_hierarchical._old_bayes``) and once
with the current code (``pm.Potential``), on the same simulated table; each seed is then
fitted by both, alternating which goes first. One JSON line per fit: wall time, tail/bulk
ESS and R-hat of sd(persona:model), the worst diagnostics, divergences, leapfrog steps.

Run (the numbers in benchmarks/README.md, "Issue #15: speed of the hierarchical model"):
``nice .venv/bin/python benchmarks/hier_ess_study.py 0.005 500 500 0,1,2,3,4,5,6,7,8,9,10,11``
(arguments: scale, tune, draws, comma-separated seeds).
"""

import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arviz as az
import bench_hierarchical as bh

import refusalstats as rs
from refusalstats import bayes as new

scale = float(sys.argv[1]); tune = int(sys.argv[2]); draws = int(sys.argv[3]); seeds = [int(s) for s in sys.argv[4].split(",")]
old = bh._old_bayes("cc1759a")
df = rs.simulate_paper(scale=scale)
formula = bh.FORMULA + " + (1|item_id)"
mods = {}
for lab, mod in (("old", old), ("new", new)):
    t = time.time()
    mods[lab] = mod.HierarchicalModel(formula, df, reference=bh.REFERENCE)
    m = mods[lab]
    print(lab, "built", round(time.time() - t, 1), "s; patterns", len(m.patterns), "centred",
          [(g.name, int(g.centered.sum()), len(g.levels)) for g in m.groups], flush=True)
v = "1|persona:model_sigma"
for s in seeds:
    for lab in (("old", "new") if s % 2 == 0 else ("new", "old")):
        m = mods[lab]
        t = time.time()
        r = m.fit(draws=draws, tune=tune, chains=4, seed=s, progress=False)
        w = time.time() - t
        d = r.diagnostics()
        tail = float(az.ess(r.idata, method="tail", var_names=[v])[v])
        bulk = float(az.ess(r.idata, method="bulk", var_names=[v])[v])
        rh = float(az.rhat(r.idata, var_names=[v])[v])
        steps = float(r.idata.sample_stats["n_steps"].mean())
        rec = {"code": lab, "seed": s, "wall": round(w, 1), "tail_pm": round(tail, 1), "tail_per_draw": round(tail / (4 * draws), 3),
                   "bulk_pm": round(bulk, 1), "rhat_pm": round(rh, 4), "max_rhat": round(d["max_rhat"], 4),
                   "min_tail": round(d["min_ess_tail"], 1), "min_bulk": round(d["min_ess_bulk"], 1),
                   "div": int(d["divergences"]), "steps": round(steps, 1)}
        print(json.dumps(rec), flush=True)
