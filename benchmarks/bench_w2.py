"""Benchmark of ``w2_sensitivity`` against a straightforward pandas groupby implementation.

Cases
-----
A. ``simulate_paper(scale=1.0)``: 2,032,160 rows, 0/1 refusal, inputs model, task, persona,
   prompt, 1,000 bootstrap replicates (the DESIGN.md target: under 5 s), rows independent
   (``cluster=None``).
A2. The same table clustered by ``item_id`` (12,701 items, 160 answers each; what
   ``cluster="auto"`` picks): items resampled, permutation null across / within items.
B. 100,000 rows, a simulated 5-point Likert output and one numeric input (48 rank bins).
C. 100,000 rows, a continuous output and one numeric input (the numba row kernels).

The naive implementation resamples rows within each partition with
``groupby(...).sample(frac=1, replace=True)`` once per replicate and recomputes the index with
groupby means (0/1 output) or the exact quantile-merge W2 in NumPy (numeric output). It is
run for a few replicates only and **extrapolated linearly** to 1,000; the table says how many.
Both sides do the same work (bootstrap only, ``n_perm=0``); the full call with the default
200 permutations is timed as well.

Numba compile time is reported separately: "first call, cold" runs in a fresh process with
an empty numba cache (JIT compile), "first call, cached" in a fresh process reading the
on-disk cache (``cache=True``), "warm" is the best of three calls in an already warm process.
The import of the package (numpy, pandas, matplotlib, ...) is timed apart from the first call.
All times are wall-clock; on a shared machine they vary with its load (the CPU time of the
process is printed as well).

The naive comparison is run for A, B and C (row resampling); A2 is timed against A.

Run: ``nice .venv/bin/python benchmarks/bench_w2.py`` (about 2-4 minutes on 2 cores).

``--parquet [K ...]`` (default 1 10) measures instead the peak RSS and wall time of
``w2_sensitivity`` on a folder of K Parquet shards of ``simulate_paper(scale=1.0,
seed=i)`` (2.03 M rows each; clustered by item, 200 bootstrap replicates, 100 and 0
permutations), streamed from the folder and read into a DataFrame first, each in a fresh
process (docs/methods_w2.md, "Parquet sources").
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_BOOT = 1000
NAIVE_REPS = {"A": 3, "B": 5, "C": 5}


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
CLUSTER = {"A": None, "A2": "item_id", "B": None, "C": None}


def case_data(case: str) -> tuple[pd.DataFrame, str, list[str]]:
    if case in ("A", "A2"):
        from refusalstats.simulate import simulate_paper

        return simulate_paper(scale=1.0, seed=0), "refusal", ["model", "task", "persona", "prompt"]
    rng = np.random.default_rng(1)
    n = 100_000
    x = rng.normal(size=n)
    latent = 0.8 * x + rng.normal(size=n)
    if case == "B":
        y = np.digitize(latent, [-1.5, -0.5, 0.5, 1.5]) + 1  # Likert 1..5
        return pd.DataFrame({"x": x, "likert": y.astype(np.int64)}), "likert", ["x"]
    return pd.DataFrame({"x": x, "score": latent}), "score", ["x"]


# ----------------------------------------------------------------------------------------
# naive implementation
# ----------------------------------------------------------------------------------------
def _w2sq_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2^2 between two empirical samples by merging quantile breakpoints."""
    a = np.sort(a)
    b = np.sort(b)
    ca = np.arange(1, len(a) + 1) / len(a)
    cb = np.arange(1, len(b) + 1) / len(b)
    brk = np.union1d(np.concatenate([[0.0], ca]), cb)
    mid = (brk[:-1] + brk[1:]) / 2
    qa = a[np.minimum(np.searchsorted(ca, mid), len(a) - 1)]
    qb = b[np.minimum(np.searchsorted(cb, mid), len(b) - 1)]
    return float(np.sum(np.diff(brk) * (qa - qb) ** 2))


def naive_iota(df: pd.DataFrame, output: str, by: str, binary: bool) -> float:
    y = df[output].astype(float)
    var = y.var(ddof=0)
    if binary:
        p = y.mean()
        g = df.groupby(by, observed=True)[output].agg(["mean", "size"])
        return float((g["size"] / len(df) * (g["mean"] - p).abs()).sum() / (2 * var))
    yv = y.to_numpy()
    xi = 0.0
    for _, grp in df.groupby(by, observed=True)[output]:
        xi += len(grp) / len(df) * _w2sq_numpy(yv, grp.to_numpy(float))
    return xi / (2 * var)


def naive_bootstrap(df: pd.DataFrame, output: str, inputs: list[str], reps: int,
                    binary: bool) -> float:
    """Seconds for ``reps`` stratified bootstrap replicates of every input, row resampling."""
    rng = np.random.default_rng(0)
    frame = df[[output, *inputs]].copy()
    for col in inputs:  # numeric inputs: the same equal-count rank bins as refusalstats
        if pd.api.types.is_float_dtype(frame[col]):
            r = frame[col].rank(method="first").to_numpy() - 1
            frame[col] = (r * 48 // len(frame)).astype(int)
    t0 = time.perf_counter()
    for _ in range(reps):
        for col in inputs:
            boot = frame.groupby(col, observed=True, group_keys=False).sample(
                frac=1.0, replace=True, random_state=rng)
            naive_iota(boot, output, col, binary)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------
# refusalstats
# ----------------------------------------------------------------------------------------
def time_refusalstats(df, output, inputs, n_boot, n_perm, repeat=3, case="A"):
    from refusalstats.sensitivity import w2_sensitivity

    best, cpu, res = np.inf, np.inf, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = w2_sensitivity(df, output=output, inputs=inputs, n_boot=n_boot, n_perm=n_perm,
                             seed=0, progress=False, cluster=CLUSTER[case])
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return best, cpu, res


def child(path: str, case: str) -> None:
    """One first call in a fresh process: prints its seconds as JSON."""
    df = pd.read_parquet(path)
    _, output, inputs = case_meta(case)
    t0 = time.perf_counter()
    from refusalstats.sensitivity import w2_sensitivity

    t1 = time.perf_counter()
    w2_sensitivity(df, output=output, inputs=inputs, n_boot=N_BOOT, n_perm=0, seed=0,
                   progress=False, cluster=CLUSTER[case])
    print(json.dumps({"import": t1 - t0, "seconds": time.perf_counter() - t1}))


def case_meta(case: str):
    return {"A": (None, "refusal", ["model", "task", "persona", "prompt"]),
            "A2": (None, "refusal", ["model", "task", "persona", "prompt"]),
            "B": (None, "likert", ["x"]), "C": (None, "score", ["x"])}[case]


def first_call(df: pd.DataFrame, case: str, cold: bool, tmp: Path) -> float:
    path = tmp / f"case_{case}.parquet"
    if not path.exists():
        _, output, inputs = case_meta(case)
        keep = [output, *inputs] + ([CLUSTER[case]] if CLUSTER[case] else [])
        sub = df[keep].copy()
        sub.attrs = {}  # simulate_paper's truth (tuple keys) is not JSON metadata
        sub.to_parquet(path)
    env = dict(os.environ)
    if cold:
        cache = tempfile.mkdtemp(prefix="numba_cold_")
        env["NUMBA_CACHE_DIR"] = cache
    out = subprocess.run([sys.executable, __file__, "--child", str(path), case], env=env,
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["seconds"], got["import"]


def main() -> None:
    rows = []
    tables = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for case, label in [("A", "simulate_paper(1.0), 0/1 refusal, 4 categorical inputs"),
                            ("A2", "the same, clustered by item_id (12,701 items)"),
                            ("B", "Likert 1-5 output, 1 numeric input (48 bins)"),
                            ("C", "continuous output, 1 numeric input (48 bins)")]:
            df, output, inputs = case_data(case)
            print(f"case {case}: {len(df):,} rows ...", flush=True)
            cold, _ = first_call(df, case, cold=True, tmp=tmp)
            cached, imp = first_call(df, case, cold=False, tmp=tmp)
            warm, warm_cpu, _ = time_refusalstats(df, output, inputs, N_BOOT, 0, case=case)
            full, _, res = time_refusalstats(df, output, inputs, N_BOOT, 200, repeat=2,
                                             case=case)
            tables[case] = res.table
            if case in NAIVE_REPS:
                k = NAIVE_REPS[case]
                naive = naive_bootstrap(df, output, inputs, k, binary=(case == "A")) / k * N_BOOT
                naive_txt, speed = f"{naive:,.0f} (from {k} reps)", f"{naive / warm:,.0f}x"
            else:
                naive_txt, speed = "(row resampling: as A)", ""
            rows.append({
                "case": f"{case}. {label}", "rows": f"{len(df):,}",
                "refusalstats warm (s)": f"{warm:.2f}",
                "warm CPU time (s)": f"{warm_cpu:.2f}",
                "first call, cached / cold compile (s)": f"{cached:.1f} / {cold:.1f}",
                "import refusalstats (s)": f"{imp:.1f}",
                "with 200 permutations (s)": f"{full:.2f}",
                f"naive pandas (s, {N_BOOT} reps)": naive_txt,
                "speed-up (warm)": speed,
            })
    print()
    print(f"W2 sensitivity, {N_BOOT} bootstrap replicates per input (default scheme); "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    print()
    print("case A indices (P1's Fig. 5 ordering: model > task > persona > prompt):")
    print(tables["A"].drop(columns="note").round(4).to_string(index=False))
    print()
    print("case A2 (clustered by item_id):")
    print(tables["A2"].drop(columns="note").round(4).to_string(index=False))


def parquet_child(folder: str, mode: str, n_perm: int) -> None:
    """One streamed (or read-then-analysed) call in this fresh process: JSON on stdout."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    import refusalstats as rs

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    data = pd.read_parquet(folder) if mode == "DataFrame" else folder
    res = rs.w2_sensitivity(data, inputs=["model", "task", "persona", "prompt"], n_boot=200,
                            n_perm=n_perm, seed=0, progress=False, cluster="item_id")
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": res.n,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "import_mb": base}))


def parquet_write(folder: str, k: int) -> None:
    """Write the K shards (in a child: a child process's peak RSS starts from its parent's)."""
    from refusalstats.simulate import simulate_paper

    for i in range(k):
        df = simulate_paper(scale=1.0, seed=i)
        df.attrs = {}
        df.to_parquet(Path(folder) / f"part-{i:02d}.parquet")


def parquet_main(shards: list[int]) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for k in shards:
            folder = Path(tmpdir) / f"k{k}"
            folder.mkdir()
            subprocess.run([sys.executable, __file__, "--parquet-write", str(folder), str(k)],
                           check=True)
            for mode, n_perm in [("DataFrame", 100), ("streamed", 100), ("streamed", 0)]:
                out = subprocess.run([sys.executable, __file__, "--parquet-child", str(folder),
                                      mode, str(n_perm)], capture_output=True, text=True,
                                     check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"rows": f"{got['rows']:,} ({k} shards)", "source": mode,
                             "permutations": n_perm, "peak RSS (MB)": f"{got['peak_mb']:,.0f}",
                             "of which imports (MB)": f"{got['import_mb']:,.0f}",
                             "wall (s)": f"{got['seconds']:.1f}"})
                print(rows[-1], flush=True)
    print()
    print(f"w2_sensitivity on Parquet shards; {platform.machine()}, {os.cpu_count()} cores, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--parquet-child":
        parquet_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--parquet-write":
        parquet_write(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--parquet":
        parquet_main([int(a) for a in sys.argv[2:]] or [1, 10])
    else:
        main()
