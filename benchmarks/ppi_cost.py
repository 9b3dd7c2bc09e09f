"""Time and peak memory of label-corrected rates on P1's full simulated table.

``rs.ppi_rates(df, by=..., cluster="item_id")`` on ``rs.simulate_paper(scale=1, seed=1)``
(2,032,160 rows, 12,701 items) with 0.2% of rows given a human label at random, for four
``by`` groupings, each in a fresh process (peak RSS is per process, the table included).

    python benchmarks/ppi_cost.py

To compare with an older version of the estimator, put that version's
``src/refusalstats/ppi.py`` in place (``git show COMMIT:src/refusalstats/ppi.py``) and run
the script again.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
import refusalstats as rs
df = rs.simulate_paper(scale=1.0, seed=1)
rng = np.random.default_rng(0)
df["human"] = np.where(rng.random(len(df)) < 0.002, df["refusal"], np.nan)
by = sys.argv[1].split(",")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    r = rs.ppi_rates(df, by=by, cluster="item_id")
    s = time.perf_counter() - t
print(json.dumps({"cells": len(r), "seconds": s, "labels": int(df["human"].notna().sum()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    print("| by | cells | seconds | peak RSS (process, table included) |\n|---|---:|---:|---:|")
    for by in ("model", "model,task", "model,persona", "model,persona,prompt"):
        out = subprocess.run([sys.executable, "-c", CHILD, by], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {by.replace(',', ', ')} | {r['cells']:,} | {r['seconds']:.2f} s | {r['peak_mb']:,.0f} MB |", flush=True)
    print(f"\n{r['labels']:,} labels; command: `python benchmarks/ppi_cost.py`")


if __name__ == "__main__":
    main()
