"""NUTS reference posterior for the nested Laplace check (issue #24), saved for reuse.

Fits ``refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model) + (1|item_id)``
to ``simulate_paper(scale=SCALE)`` by NUTS (nutpie) and writes the posterior draws of the
fixed effects, the group sd's and the persona effects, with the diagnostics and timings, to
``OUT`` (``.npz``). ``benchmarks/hier_laplace_vs_nuts.py`` compares the nested Laplace fit
with it. Run (slow: run it niced, in the background):
``nice -n 10 .venv/bin/python benchmarks/hier_nuts_reference.py 0.1 /tmp/nuts_0.1.npz
--draws 500 --tune 500 --chains 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hierarchical import ITEM_FORMULA, REFERENCE, _uptime


def posterior_columns(fit) -> dict[str, np.ndarray]:
    """Flat draws (chains x draws) of the fixed effects, sd's and persona effects of a fit."""
    post = fit.idata.posterior
    out: dict[str, np.ndarray] = {}
    m = fit.model
    if "Intercept" in post:
        out["Intercept"] = post["Intercept"].to_numpy().ravel()
    if "beta" in post:
        b = post["beta"].to_numpy()
        b = b.reshape(-1, b.shape[-1])
        for j, name in enumerate(post["beta"].coords["fixed"].to_numpy()):
            out[str(name)] = b[:, j]
    for g in m.groups:
        out[f"sd({g.name})"] = post[f"{g.var}_sigma"].to_numpy().ravel()
        if g.name == "persona":
            u = post[g.var].to_numpy()
            u = u.reshape(-1, u.shape[-1])
            for j, lev in enumerate(g.levels):
                out[f"persona[{lev}]"] = u[:, j]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scale", type=float)
    ap.add_argument("out")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import refusalstats as rs
    from refusalstats.bayes import HierarchicalModel

    up = _uptime()
    df = rs.simulate_paper(scale=args.scale)
    print(f"simulate_paper(scale={args.scale}): {len(df):,} rows, {df['item_id'].nunique():,} items; "
          f"uptime {up}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = HierarchicalModel(ITEM_FORMULA, df, reference=REFERENCE)
    print(f"{len(m.patterns):,} patterns", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = m.fit(method="nuts", draws=args.draws, tune=args.tune, chains=args.chains,
                    seed=args.seed, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    d = fit.diagnostics()
    info = {"scale": args.scale, "draws": args.draws, "tune": args.tune, "chains": args.chains,
            "seed": args.seed, "wall_s": wall, "cpu_s": cpu, "patterns": len(m.patterns),
            "max_rhat": float(d["max_rhat"]), "min_ess_bulk": float(d["min_ess_bulk"]),
            "min_ess_tail": float(d["min_ess_tail"]), "divergences": int(d["divergences"]),
            "worst_rhat": str(d.get("worst_rhat")), "uptime_before": up,
            "uptime_after": _uptime(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(info), flush=True)
    cols = posterior_columns(fit)
    np.savez_compressed(args.out, info=json.dumps(info), names=np.array(list(cols)),
                        draws=np.stack(list(cols.values()), 1))
    print(fit.to_frame().round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
