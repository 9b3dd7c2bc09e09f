
"""Step 1: decomposition of D = V_c - q0 V_0 at the true ratio across replicates."""
import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), ".."))
import calibration_ppi as cp

reps, seed, sd, nl = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
from _spy import replicate, set_matrices, ustat_products  # records the statistic's inputs

truth = cp.disparity_truth(sd)
rng = np.random.default_rng(seed)
t0 = time.time()
rows = {c: [] for c in truth}
rates_all = []
for _ in range(reps):
    recorded = replicate(rng, sd, nl, "item_id" if sd else None)
    for cat, ctrl, rate, T, mom, lev in recorded:
        q0 = truth[lev] ** 2
        P = len(rate)
        Bs = set_matrices(cat, ctrl, P)
        if T is not None:
            Sig = T @ T.T
            tg = T
        else:
            Sig = np.diag(mom[0])
            tg = None
        SSc, SS0 = rate @ Bs[0] @ rate, rate @ Bs[1] @ rate
        Nc, N0 = np.trace(Bs[0] @ Sig), np.trace(Bs[1] @ Sig)
        B = Bs[0] - q0 * Bs[1]
        an = 4 * rate @ B @ Sig @ B @ rate - 2 * np.trace(B @ Sig @ B @ Sig)
        comp = ustat_products(cat, ctrl, rate, 1, T=T, moments=mom)
        us = comp[0] - 2 * q0 * comp[1] + q0 ** 2 * comp[2]
        W = comp[3] - 2 * q0 * comp[4] + q0 ** 2 * comp[5]
        trBSBS = np.trace(B @ Sig @ B @ Sig)
        rows[lev].append((SSc, Nc, SS0, N0, an, us, W, trBSBS, 4 * rate @ B @ Sig @ B @ rate))
    rates_all.append(recorded[0][2])
print(f"{'clustered' if sd else 'iid'}, {nl} labels, {reps} reps, seed {seed}, {time.time()-t0:.0f} s")
bb = np.random.default_rng(0)
def mc(f, X, nb=300):
    v = f(X); b = [f(X[bb.integers(0, len(X), len(X))]) for _ in range(nb)]
    return v, np.std(b, axis=0)
rates_all = np.array(rates_all)
SigT = np.cov(rates_all.T)
mu = rates_all.mean(0)
for lev, R in rows.items():
    R = np.array(R); q0 = truth[lev] ** 2
    SSc, Nc, SS0, N0 = R[:, 0], R[:, 1], R[:, 2], R[:, 3]
    X = np.column_stack([SSc, -Nc, -q0 * SS0, q0 * N0])
    C, Ce = mc(lambda X: np.cov(X.T), X)
    names = ["SS_c", "-N_c", "-q0 SS_0", "q0 N_0"]
    D = X.sum(1)
    vD, vDe = mc(lambda X: np.var(X.sum(1), ddof=1), X)
    print(f"\n## {lev}: true ratio {truth[lev]:.3f}, q0 = {q0:.3f}; D mean {D.mean():.3e} ± {D.std()/np.sqrt(len(D)):.1e}; Var(D) = {vD:.3e} ± {vDe:.1e}")
    print("covariance matrix of the parts of D (x1e-6 ... raw), ± MC s.e. (bootstrap over replicates)")
    for i in range(4):
        print(f"| {names[i]} | " + " | ".join(f"{C[i,j]:.2e} ± {Ce[i,j]:.0e}" for j in range(4)) + " |")
    # contributions
    print(f"Var(SS_c)+Var(N_c)-2Cov(SS_c,N_c) = {C[0,0]:.2e}+{C[1,1]:.2e}+2({C[0,1]:.2e}) = {C[0,0]+C[1,1]+2*C[0,1]:.2e}")
    print(f"Var(q0 SS_0)+Var(q0 N_0)-2Cov = {C[2,2]:.2e}+{C[3,3]:.2e}+2({C[2,3]:.2e}) = {C[2,2]+C[3,3]+2*C[2,3]:.2e}; cross(c,0) total = {2*(C[0:2,2:4].sum()):.2e}")
    print(f"Var(D) if N fixed (SS parts only) = {C[0,0]+C[2,2]+2*C[0,2]:.2e}")
    for name, col in (("analytic 4r'BSBr-2tr(BSBS)", 4), ("U-statistic 4L-2W", 5), ("U-stat floored max(S,2W)", None)):
        e = np.maximum(R[:, 5], 2 * R[:, 6]) if col is None else R[:, col]
        print(f"  {name}: mean {e.mean():.3e} ± {e.std()/np.sqrt(len(e)):.1e} (ratio to Var D {e.mean()/vD:.2f}); z-test accepts truth {np.mean(D**2 <= 3.8415*np.maximum(e,1e-30)):.3f}")
    Bm = np.zeros((12, 12))
    # normal-theory with the replicates' own Sigma and mean
    P = 12
    cat = np.array([False] * 4 + [lev == "G1"] * 4 + [lev == "G2"] * 4); ctrl = np.array([True] * 4 + [False] * 8)
    Bs = set_matrices(cat, ctrl, P)
    B = Bs[0] - q0 * Bs[1]
    print(f"  normal theory at the replicates' mean and covariance of the rates: 2tr(BSBS) = {2*np.trace(B@SigT@B@SigT):.3e}, 4mu'BSBmu = {4*mu@B@SigT@B@mu:.3e}, sum {2*np.trace(B@SigT@B@SigT)+4*mu@B@SigT@B@mu:.3e}")
    print(f"  mean estimated 2tr(BS^BS^) = {2*R[:,7].mean():.3e}; mean 2W (U-stat) = {2*R[:,6].mean():.3e}; mean 4r'BS^Br = {R[:,8].mean():.3e}")
    from scipy import stats
    print(f"  D skewness {stats.skew(D):.2f}, excess kurtosis {stats.kurtosis(D):.2f}")
