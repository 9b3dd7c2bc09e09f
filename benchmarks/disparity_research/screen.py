
"""Screen several disparity interval kinds on the same tables (calibration_ppi.py's four rows)."""
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), ".."))
import calibration_ppi as cp

import refusalstats as rs
from refusalstats import ppi

reps, seed = int(sys.argv[1]), int(sys.argv[2])
kinds = sys.argv[3].split(",")
nb = int(sys.argv[4]) if len(sys.argv) > 4 else 100
rows = [(1.0, 40, None, 150), (1.0, 100, None, 150), (0.0, 40, None, 150), (1.0, 100, cp.DISP_PERSONAS_WIDE, 200)]
if len(sys.argv) > 5:
    rows = [rows[int(i)] for i in sys.argv[5].split(",")]
t00 = time.time()
print(f"reps {reps}, seed {seed}, n_boot {nb}")
print("| data | labels | cat (ratio) | " + " | ".join(f"{k} coverage | median interval" for k in kinds) + " |")
for k_row, (sd, n, personas, n_items) in enumerate(rows):
    rng = np.random.default_rng(seed + 200 + k_row)
    truth = cp.disparity_truth(sd, -1.5, personas)
    hits = {(k, c): [] for k in kinds for c in truth}
    ends = {(k, c): [] for k in kinds for c in truth}
    for _ in range(reps):
        df = cp.disparity_table(rng, sd, n, personas, n_items, -1.5)
        bseed = int(rng.integers(2**31))
        for kind in kinds:
            ppi._DISPARITY_INTERVAL = kind
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = rs.disparity(df, control="control", labels="human", strata="persona", n_boot=nb,
                                   cluster="item_id" if sd else None, seed=bseed)
            for _, r in out.iterrows():
                t = truth[r["persona_group"]]
                hits[(kind, r["persona_group"])].append(r["ci_low"] <= t <= r["ci_high"])
                ends[(kind, r["persona_group"])].append((r["ci_low"], r["ci_high"]))
    for c in truth:
        cells = []
        for k in kinds:
            h = np.mean(hits[(k, c)]); lo, hi = np.median(np.array(ends[(k, c)], float), 0)
            cells.append(f"{h:.3f} ± {np.sqrt(h*(1-h)/reps):.3f} | {lo:.2f}–{hi:.2f}")
        print(f"| {'clustered' if sd else 'iid'}{'' if personas is None else ' wide'} | {n} | {c} ({truth[c]:.2f}) | " + " | ".join(cells) + " |", flush=True)
print(f"{time.time()-t00:.0f} s")
