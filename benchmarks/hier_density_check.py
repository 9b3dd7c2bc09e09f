"""Are the old (pm.Binomial) and new (pm.Potential) hierarchical models the same density?

Builds the model with ``(1|item_id)`` with revision cc1759a's code and the current code on
the same table, and compares free variables, transforms, initial points, the "auto"
parametrization choices, and ``compile_logp`` / ``compile_dlogp`` at random points
(benchmarks/README.md, "Issue #15: speed of the hierarchical model": logp equal, dlogp to
1.1e-13). Run: ``.venv/bin/python benchmarks/hier_density_check.py 0.01``.
"""

import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_hierarchical as bh
import numpy as np

import refusalstats as rs
from refusalstats import bayes as new

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
old = bh._old_bayes("cc1759a")
df = rs.simulate_paper(scale=scale)
formula = bh.FORMULA + " + (1|item_id)"
t=time.time()
mo = old.HierarchicalModel(formula, df, reference=bh.REFERENCE)
print("old built", time.time()-t, flush=True); t=time.time()
mn = new.HierarchicalModel(formula, df, reference=bh.REFERENCE)
print("new built", time.time()-t, flush=True)
print("patterns equal:", mo.patterns.equals(mn.patterns), len(mn.patterns))
for go, gn in zip(mo.groups, mn.groups):
    print(go.name, "centred", int(go.centered.sum()), int(gn.centered.sum()), "/", len(gn.levels),
          "same:", np.array_equal(go.centered, gn.centered), np.array_equal(go.index, gn.index))
print("auto_rule old", {k: v for k, v in mo.auto_rule.items()})
print("auto_rule new", {k: v for k, v in mn.auto_rule.items()})
Mo, Mn = mo.model, mn.model
print("free old", [(v.name, str(Mo.rvs_to_transforms[v])) for v in Mo.free_RVs])
print("free new", [(v.name, str(Mn.rvs_to_transforms[v])) for v in Mn.free_RVs])
print("value vars same:", [v.name for v in Mo.value_vars] == [v.name for v in Mn.value_vars])
ipo, ipn = Mo.initial_point(0), Mn.initial_point(0)
print("initial point equal (seed 0):", all(np.array_equal(ipo[k], ipn[k]) for k in ipo) and ipo.keys() == ipn.keys())
from pymc.initial_point import make_initial_point_fn

fo = make_initial_point_fn(model=Mo, jitter_rvs=set(Mo.free_RVs), return_transformed=True)
fn = make_initial_point_fn(model=Mn, jitter_rvs=set(Mn.free_RVs), return_transformed=True)
for s in (1, 2, 3):
    a, b = fo(s), fn(s)
    print("jittered init seed", s, "equal:", all(np.array_equal(a[k], b[k]) for k in a))
lo, ln = Mo.compile_logp(), Mn.compile_logp()
go_, gn_ = Mo.compile_dlogp(), Mn.compile_dlogp()
rng = np.random.default_rng(0)
diffs = []
for i in range(6):
    pt_ = {k: v + rng.normal(0, 0.5 if i < 3 else 1.5, size=np.shape(v)) for k, v in ipo.items()}
    a, b = float(lo(pt_)), float(ln(pt_))
    ga, gb = go_(pt_), gn_(pt_)
    rel = np.max(np.abs(ga - gb)) / max(1.0, np.max(np.abs(ga)))
    diffs.append(a - b)
    print(f"point {i}: logp old-new = {a-b:.10f}; max|dgrad| = {np.max(np.abs(ga-gb)):.3e}, rel {rel:.3e}, |grad| max {np.max(np.abs(ga)):.3e}")
# constant expected
from scipy.special import gammaln

n = mn.patterns["trials"].to_numpy(float); k = mn.patterns["successes"].to_numpy(float)
print("expected constant sum log C(n,k) =", np.sum(gammaln(n+1)-gammaln(k+1)-gammaln(n-k+1)))
# nutpie compiled
import nutpie

co, cn = nutpie.compile_pymc_model(Mo), nutpie.compile_pymc_model(Mn)
print("nutpie n_dim", co.n_dim, cn.n_dim)
for attr in ("_coords", "dims"):
    pass
print([a for a in dir(cn) if not a.startswith("__")])
