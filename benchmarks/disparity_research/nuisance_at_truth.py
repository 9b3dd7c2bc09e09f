# ruff: noqa: SIM115, UP031  (research scratch: closures are called inside their loop)
"""Acceptance of the wild test at the true q0: oracle world rates, r-hat direction with the true spreads, WLS-fitted."""
import sys
import time

import numpy as np
from scipy.special import expit

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), ".."))
import calibration_ppi as cp

from refusalstats import ppi

reps, seed, sd, nl = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
weights = sys.argv[5] if len(sys.argv) > 5 else "rademacher"
from _spy import replicate, set_matrices, ustat_products  # records the statistic's inputs

orig_mom = ppi._unit_moments
truth = cp.disparity_truth(sd)
z, w = cp._gh()
mu_true = np.array([np.sum(w * expit(-1.5 + e + sd * z)) for _, (c, eff) in cp.DISP_PERSONAS.items() for e in eff])
# personas sorted by name in the estimate: c0..c3, g10..g13, g20..g23
names = [f"{key}{j}" for key, (_, eff) in cp.DISP_PERSONAS.items() for j in range(len(eff))]
order = np.argsort(names)
mu_sorted = mu_true[order]
rng = np.random.default_rng(seed)
V0S = {c: [] for c in truth}
# true Var(V_c), Var(V_0) over replicates from the clustered-40 diag (seed 20261400, 3000 reps): G1 6.0e-5 and 1.51e-3/q0^2...; computed below per row instead
import json
import os

TRUEW = json.load(open(f"/tmp/truew_{int(sd)}_{nl}.json")) if os.path.exists(f"/tmp/truew_{int(sd)}_{nl}.json") else {c: (1.0, 1.0) for c in truth}
wrng = np.random.default_rng(seed + 7)
acc = {c: {m: [] for m in ("oracle", "true-v", "wls", "wls-iter", "wls-deg", "wls-plug", "wls-true-w")} for c in truth}
stat = {c: [] for c in truth}
t0 = time.time()
for _ in range(reps):
    for cat, ctrl, rate, T, _, lev in replicate(rng, sd, nl, "item_id" if sd else None):
        q0 = truth[lev] ** 2
        P = len(rate)
        Bs = set_matrices(cat, ctrl, P)
        B = Bs[0] - q0 * Bs[1]
        d = [np.einsum("pg,pq,qg->g", T, M, T) for M in Bs]
        N = [x.sum() for x in d]
        V = [rate @ M @ rate - n for M, n in zip(Bs, N)]
        Dobs = V[0] - q0 * V[1]
        nw = 999
        if weights == "mammen":
            s5 = np.sqrt(5)
            E = np.where(wrng.random((nw, T.shape[1])) < (s5 + 1) / (2 * s5), -(s5 - 1) / 2, (s5 + 1) / 2)
        else:
            E = wrng.choice([-1.0, 1.0], size=(nw, T.shape[1]))
        Y = E @ T.T
        Nstar = [(E ** 2) @ dd for dd in d]
        Q = np.einsum("bp,pq,bq->b", Y, B, Y) - (Nstar[0] - q0 * Nstar[1])
        comp = ustat_products(cat, ctrl, rate, 1, T=T)
        s_c, s_0 = max(comp[0], 2 * comp[3]), max(comp[2], 2 * comp[5])
        Pc, P0 = rate @ Bs[0] @ rate, rate @ Bs[1] @ rate
        Vtrue0 = mu_sorted @ Bs[1] @ mu_sorted
        v0_wls = max((q0 * V[0] / s_c + V[1] / s_0) / (q0 ** 2 / s_c + 1 / s_0), 0)
        Lc = np.sum((T.T @ (Bs[0] @ rate)) ** 2) / Pc; L0 = np.sum((T.T @ (Bs[1] @ rate)) ** 2) / P0
        v0_it = v0_wls
        for _it in range(5):
            wc_, w0_ = 4 * q0 * v0_it * Lc + 2 * comp[3], 4 * v0_it * L0 + 2 * comp[5]
            v0_it = max((q0 * V[0] / wc_ + V[1] / w0_) / (q0 ** 2 / wc_ + 1 / w0_), 0)
        v0_deg = max((q0 * V[0] / comp[3] + V[1] / comp[5]) / (q0 ** 2 / comp[3] + 1 / comp[5]), 0)
        wc_, w0_ = 4 * max(V[0], 0) * Lc + 2 * comp[3], 4 * max(V[1], 0) * L0 + 2 * comp[5]
        v0_plug = max((q0 * V[0] / wc_ + V[1] / w0_) / (q0 ** 2 / wc_ + 1 / w0_), 0)
        tw = TRUEW[lev]
        v0_tw = max((q0 * V[0] / tw[0] + V[1] / tw[1]) / (q0 ** 2 / tw[0] + 1 / tw[1]), 0)
        v0s = {"true-v": Vtrue0, "wls": v0_wls, "wls-iter": v0_it, "wls-deg": v0_deg, "wls-plug": v0_plug, "wls-true-w": v0_tw}
        V0S[lev].append([Dobs] + [v0s[k] for k in v0s])
        for m, mu_w in (("oracle", mu_sorted),
                        ("true-v", None), ("wls", None), ("wls-iter", None), ("wls-deg", None), ("wls-plug", None), ("wls-true-w", None)):
            if m == "oracle":
                lin = 2 * Y @ B @ mu_w
                cen = 0.0
            else:
                if m == "true-v":
                    v0 = Vtrue0; vc = q0 * v0
                elif m in v0s:
                    v0 = v0s[m]; vc = q0 * v0
                elif m == "wls-iter":
                    v0 = v0_it; vc = q0 * v0
                elif m == "wls-deg":
                    v0 = v0_deg; vc = q0 * v0
                else:
                    v0, vc = max(V[1], 0), max(V[0], 0)
                sc, s0 = np.sqrt(vc / Pc), np.sqrt(v0 / P0)
                mu_w = sc * (Bs[0] * (4 - 1)) @ rate + s0 * (Bs[1] * 3) @ rate  # centred, shrunk (B*(k-1) = H)
                lin = 2 * Y @ B @ mu_w
                cen = vc - q0 * v0   # D_w(q0)
            Dstar = lin + Q
            lo, hi = np.quantile(Dstar, [0.025, 0.975])
            acc[lev][m].append(lo <= Dobs <= hi)
        stat[lev].append((Dobs, np.var(2 * Y @ B @ mu_sorted + Q)))
for lev in truth:
    a = np.array(V0S[lev]); 
    print(lev, "mean v0:", " ".join(f"{x:.2e}" for x in a[:, 1:].mean(0)), "corr(D, v0):", " ".join(f"{np.corrcoef(a[:,0], a[:,j])[0,1]:.2f}" for j in range(2, a.shape[1])))
print(f"{'clustered' if sd else 'iid'} {nl} labels, {reps} reps, seed {seed}, weights {weights}, {time.time()-t0:.0f} s")
for lev in truth:
    s = np.array(stat[lev])
    print(lev, "Var(D) over reps %.3e, mean oracle wild var %.3e" % (np.var(s[:, 0]), s[:, 1].mean()),
          " ".join(f"{m}: {np.mean(a):.3f}" for m, a in acc[lev].items()))
