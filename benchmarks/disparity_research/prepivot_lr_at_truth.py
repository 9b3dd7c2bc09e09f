# ruff: noqa: B023  (research scratch: closures are called inside their loop)
import sys

import numpy as np

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), ".."))
import calibration_ppi as cp

reps, seed, sd, nl = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
from _spy import replicate, set_matrices, ustat_products  # records the statistic's inputs

truth = cp.disparity_truth(sd)
rng = np.random.default_rng(seed); wr = np.random.default_rng(1)
out_rows = {c: [] for c in truth}
for _ in range(reps):
    for cat, ctrl, rate, T, _, lev in replicate(rng, sd, nl, "item_id"):
        q = truth[lev] ** 2
        B = set_matrices(cat, ctrl, len(rate))
        comp = ustat_products(cat, ctrl, rate, 1, T=T)
        Wcc, W00 = comp[3], comp[5]
        Pc, P0 = rate @ B[0] @ rate, rate @ B[1] @ rate
        d = [np.einsum("pg,pq,qg->g", T, M, T) for M in B]; N = [x.sum() for x in d]
        Vc, V0 = Pc - N[0], P0 - N[1]
        lc = np.sum((T.T @ (B[0] @ rate)) ** 2) / Pc; l0 = np.sum((T.T @ (B[1] @ rate)) ** 2) / P0
        def fit(vc, v0):
            wc = 4 * np.maximum(vc, 0) * lc + 2 * Wcc; w0 = 4 * np.maximum(v0, 0) * l0 + 2 * W00
            return np.maximum((q * vc / wc + v0 / w0) / (q ** 2 / wc + 1 / w0), 0.0)
        def draws(n):
            E = wr.choice([-1.0, 1.0], size=(n, T.shape[1])); Y = E @ T.T
            return [Y @ M @ rate for M in B], [np.einsum("bp,pq,bq->b", Y, M, Y) - nn for M, nn in zip(B, N)]
        (lco, l0o), (Qco, Q0o) = draws(400); (lci, l0i), (Qci, Q0i) = draws(400)
        v0 = float(fit(Vc, V0))
        Lam = 2 * (np.sqrt(q / Pc) * lci - q * l0i / np.sqrt(P0)); Qd = Qci - q * Q0i
        def pval(x, v):
            F = np.mean(np.sqrt(v)[:, None] * Lam[None] + Qd[None] <= x[:, None], axis=1)
            return 2 * np.minimum(F, 1 - F)
        Dobs = Vc - q * V0
        pobs = pval(np.array([Dobs]), np.array([v0]))[0]
        sc, s0 = np.sqrt(q * v0 / Pc), np.sqrt(v0 / P0)
        Vco = q * v0 + 2 * sc * lco + Qco; V0o = v0 + 2 * s0 * l0o + Q0o
        pst = pval(Vco - q * V0o, fit(Vco, V0o))
        wc = 4 * max(Vc, 0) * lc + 2 * Wcc; w0 = 4 * max(V0, 0) * l0 + 2 * W00
        se = np.sqrt(1 / (q ** 2 / wc + 1 / w0))
        bb = []
        for beta in (0.005, 0.01, 0.025):
            z = 2.5758 if beta == 0.005 else (2.3263 if beta == 0.01 else 1.96)  # two-sided 1-beta set... use one-sided z for upper
            grid = np.linspace(max(v0 - z * se, 0), v0 + z * se, 9)
            pm = pval(np.full(len(grid), Dobs), grid).max()
            bb.append(pm > 0.05 - beta)
        vg = np.concatenate([[0.0], np.geomspace(1e-6, 1.0, 3000)])
        def ll(x, v, l, W):
            sv = 4 * v * l + 2 * W
            return -0.5 * np.log(sv) - (x - v) ** 2 / (2 * sv)
        llc, ll0 = ll(Vc, vg, lc, Wcc), ll(V0, vg, l0, W00)
        full = llc.max() + ll0.max()
        restr = (ll(Vc, q * vg, lc, Wcc) + ll0).max()
        LR = 2 * (full - restr)
        out_rows[lev].append((pobs, np.quantile(pst, 0.05), np.mean(pst <= 0.05), v0, Dobs, *bb, LR))
for lev in truth:
    a = np.array(out_rows[lev])
    print(lev, f"single-level accept {np.mean(a[:,0] > 0.05):.3f}; prepivot accept {np.mean(a[:,0] > a[:,1]):.3f}; "
          f"world size of single-level test mean {a[:,2].mean():.3f} (sd {a[:,2].std():.3f}); alpha_adj mean {a[:,1].mean():.3f}; mean v0 {a[:,3].mean():.2e}")
    print("   Berger-Boos accept (beta .005/.01/.025):", " ".join(f"{a[:, j].mean():.3f}" for j in (5, 6, 7)))
    print("   LR accept (chi2_1 3.84):", f"{np.mean(a[:, 8] <= 3.8415):.3f}", "(2.71):", f"{np.mean(a[:, 8] <= 2.7055):.3f}")
    # real size as a function of v0 tercile
    t = np.quantile(a[:, 3], [1/3, 2/3]); g = np.digitize(a[:, 3], t)
    print("   by v0 tercile: real rejection", [f"{np.mean(a[g==i,0] <= 0.05):.3f}" for i in range(3)], "world size", [f"{a[g==i,2].mean():.3f}" for i in range(3)])
