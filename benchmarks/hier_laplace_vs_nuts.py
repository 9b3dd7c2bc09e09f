"""Nested Laplace vs NUTS with ``(1|item_id)``: 95% HDI endpoints in units of the NUTS width.

Issue #24's check ("interval endpoints within 10% of the interval width"). Reads a NUTS
reference written by ``benchmarks/hier_nuts_reference.py`` (its draws of the fixed effects,
the group sd's and the persona effects), fits ``method="laplace"`` to the same
``simulate_paper(scale)`` table with the current code and, with ``--before REV``, with the
``bayes`` code of git revision ``REV`` in the same run, and prints per term both intervals
and the endpoint differences / NUTS width (target: within 0.10), the largest per group of
terms, and the CPU seconds of each Laplace fit. Run:
``nice -n 10 .venv/bin/python benchmarks/hier_laplace_vs_nuts.py /tmp/nuts_0.1.npz --before 7b3e6b4``.
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
from bench_hierarchical import ITEM_FORMULA, REFERENCE, _old_bayes, _uptime
from hier_nuts_reference import posterior_columns


def hdis(cols: dict[str, np.ndarray], conf: float = 0.95) -> dict[str, tuple[float, float]]:
    import arviz as az

    return {k: tuple(float(v) for v in az.hdi(x, hdi_prob=conf)) for k, x in cols.items()}


def group(term: str) -> str:
    if term.startswith("persona["):
        return "persona effects u_persona"
    if term.startswith("prompt"):
        return "prompt contrasts"
    if term.startswith("sd("):
        return term
    return "intercept and task contrasts"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", help=".npz written by hier_nuts_reference.py")
    ap.add_argument("--before", metavar="REV", help="also fit the bayes code of this git revision")
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import refusalstats as rs

    ref = np.load(args.reference)
    info = json.loads(str(ref["info"]))
    nuts = hdis(dict(zip([str(n) for n in ref["names"]], ref["draws"].T)))
    print(f"NUTS reference: {json.dumps(info)}")
    print(f"uptime before: {_uptime()}", flush=True)
    df = rs.simulate_paper(scale=info["scale"])
    fits = {}
    mods = ([("before (" + args.before + ")", _old_bayes(args.before))] if args.before else [])
    from refusalstats import bayes

    mods.append(("now", bayes))
    for label, mod in mods:
        t0, c0 = time.perf_counter(), time.process_time()
        fit = mod.HierarchicalModel(ITEM_FORMULA, df, reference=REFERENCE).fit(
            method="laplace", draws=args.draws, seed=args.seed, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{label}: nested Laplace, {args.draws} draws: {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"(model build included)", flush=True)
        fits[label] = hdis(posterior_columns(fit))
    labels = list(fits)
    print("\n| term | NUTS 95% HDI | " + " | ".join(f"Laplace {lb}: HDI, low / high diff / width"
                                                   for lb in labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    worst: dict[str, dict[str, float]] = {lb: {} for lb in labels}
    for t, (lo, hi) in nuts.items():
        w = hi - lo
        cells = []
        for lb in labels:
            a, b = fits[lb][t]
            dl, dh = (a - lo) / w, (b - hi) / w
            g = group(t)
            worst[lb][g] = max(worst[lb].get(g, 0.0), abs(dl), abs(dh))
            cells.append(f"{a:.3f} to {b:.3f}, {dl:+.3f} / {dh:+.3f}")
        print(f"| {t} | {lo:.3f} to {hi:.3f} | " + " | ".join(cells) + " |")
    print("\n| terms | " + " | ".join(f"largest |diff| / width, {lb}" for lb in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for g in worst[labels[-1]]:
        print(f"| {g} | " + " | ".join(f"{worst[lb][g]:.3f}" for lb in labels) + " |")
    print("| all | " + " | ".join(f"{max(worst[lb].values()):.3f}" for lb in labels) + " |")
    print(f"\ntarget: <= 0.10 for every term; uptime after: {_uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
