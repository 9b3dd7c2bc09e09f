"""Benchmark: streaming collapse of Parquet shards, peak memory vs rows, and the fair peers.

The paper design (``rs.simulate_paper(scale=s)``, 2,032,160 rows at s = 1) is written as
20 Parquet shards (``rs.write_responses``, one per 1/20 of the rows) for each scale in
``--scales`` (default 1, 5, 10, 20: 2.0 M, 10.2 M, 20.3 M, 40.6 M rows; the simulator
stops at scale 10, so scale 20 is two independent scale-10 replicates, seeds 0 and 1,
with distinct item ids). Each configuration then
runs in a fresh subprocess that reads the shard folder and reports its wall time and
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: interpreter,
imports and data; times start after each tool's modules are imported):

* ``baseline``        — ``import refusalstats`` and nothing else (the floor of every RSS);
* ``rs``              — ``rs.collapse(folder, by=[persona, task, prompt, model])`` then
                        ``rs.logit("refusals ~ ...", counts, trials="n", cluster=None)``;
* ``rs-cluster``      — the same keeping ``item_id`` (``cluster="item_id"``) and the CR1 fit
                        (in the paper design one count line per row: grows with rows);
* ``rs-cluster-stream`` — ``rs`` plus ``refusalstats.scan.cluster_robust_cov``: the CR1
                        covariance from cluster score sums streamed in a second pass;
* ``rs-logit-path``   — ``rs.logit("refusal ~ ...", folder, cluster="item_id")``: the same
                        two passes inside ``logit`` (counts per pattern, CR1 meat streamed),
                        plus ``drop1()`` (CR1 Wald F tests, no further pass);
* ``rs-rates``        — ``rs.refusal_rates(folder, by="model", cluster="item_id")`` alone;
* ``rs-w2``           — ``rs.w2_sensitivity(folder, inputs=[the four], cluster="item_id",
                        n_boot=20, n_perm=20)`` alone (with ``rs-rates`` and ``rs-logit-path``:
                        the memory of each part of ``rs-all`` apart);
* ``rs-all``          — from the folder: ``rs.refusal_rates(by="model", cluster="item_id")``,
                        the clustered ``rs.logit`` above and ``rs.w2_sensitivity`` of the
                        four inputs (``cluster="item_id"``, ``n_boot=20``, ``n_perm=20``:
                        replicates cost time, not memory);
* ``duckdb``          — DuckDB ``GROUP BY`` over ``read_parquet('<folder>/**/*.parquet')``
                        (the other embedded engine ``collapse`` could have used; counts only);
* ``statsmodels``     — the expert's path: ``pd.read_parquet(columns=...)``, pandas
                        ``groupby``, ``smf.glm(..., family=Binomial())`` on the counts;
* ``bincount-floor``  — ``pyarrow.parquet.read_table`` of the four key columns plus
                        ``refusal`` and a bare ``np.bincount`` on the dictionary codes
                        (no checks, no levels, no table): the floor for any collapse.

It prints one markdown table (time and peak RSS per configuration and scale) plus the
ratios the issue asks for (times: median of ``--repeats`` fresh processes): ``rs`` end to end against ``statsmodels`` end to end, and
``rs`` collapse time against the bincount floor (read + count). Coefficients of ``rs`` and
``statsmodels`` are compared on identified terms.

Run: ``nice .venv/bin/python benchmarks/bench_scale.py`` (``--scales 0.1 0.5`` for a quick
check; shards are cached under ``--data``, default ``/tmp/refusalstats_bench_scale``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

FACTORS = ["persona", "task", "prompt", "model"]
REFERENCE = {"persona": "Atheist", "prompt": "p1", "task": "nli", "model": "Llama2-13B"}
RHS = "persona + task + prompt + model"
CONFIGS = ["baseline", "rs", "rs-cluster", "rs-cluster-stream", "rs-logit-path", "rs-rates", "rs-w2",
           "rs-all", "duckdb", "statsmodels", "bincount-floor"]
N_SHARDS = 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------- child side
def _warm_imports(config: str) -> None:
    """Import what a configuration uses, so its time is the work, not the imports (the
    lazy imports of refusalstats, statsmodels' and DuckDB's own)."""
    if config.startswith("rs"):
        import formulaic  # noqa: F401
        import pyarrow.dataset
        import scipy.optimize
        import scipy.sparse  # noqa: F401

        import refusalstats.regression
        import refusalstats.scan
        if config in ("rs-all", "rs-w2"):
            import refusalstats.sensitivity  # noqa: F401
    elif config == "statsmodels":
        import pandas  # noqa: F401
        import patsy  # noqa: F401
        import pyarrow.parquet
        import statsmodels.api
        import statsmodels.formula.api  # noqa: F401
    elif config == "duckdb":
        import duckdb  # noqa: F401
    elif config == "bincount-floor":
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401


def _child(config: str, folder: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np

    import refusalstats as rs

    out: dict = {"config": config}
    _warm_imports(config)  # every tool's modules are loaded before the clock starts
    t0 = time.perf_counter()
    if config == "baseline":
        pass
    elif config in ("rs", "rs-cluster"):
        clustered = config == "rs-cluster"
        counts = rs.collapse(folder, by=FACTORS, cluster="item_id" if clustered else None)
        t1 = time.perf_counter()
        fit = rs.logit(f"refusals ~ {RHS}", counts, trials="n", reference=REFERENCE,
                       cluster="item_id" if clustered else None)
        t2 = time.perf_counter()
        out.update(collapse_s=t1 - t0, fit_s=t2 - t1, lines=len(counts), rows=int(counts["n"].sum()),
                   params={k: float(v) for k, v in fit.params.items()},
                   bse={k: float(v) for k, v in fit.bse.items()},
                   separated=list(fit.separated_terms))
        if not clustered and os.environ.get("BENCH_COUNTS_CSV"):  # the counts R's glm fits
            counts.to_csv(os.environ["BENCH_COUNTS_CSV"], index=False)
    elif config == "rs-logit-path":
        fit = rs.logit(f"refusal ~ {RHS}", folder, reference=REFERENCE, cluster="item_id")
        t1 = time.perf_counter()
        d1 = fit.drop1()
        t2 = time.perf_counter()
        out.update(fit_s=t1 - t0, drop1_s=t2 - t1, lines=fit.n_patterns, rows=int(fit._design.n.sum()),
                   clusters=fit.n_clusters, drop1_F=[float(x) for x in d1["F"]],
                   bse={k: float(v) for k, v in fit.bse.items()}, separated=list(fit.separated_terms))
    elif config == "rs-rates":
        rates = rs.refusal_rates(folder, by="model", cluster="item_id")
        out.update(rates_s=time.perf_counter() - t0, lines=len(rates), rows=int(rates["n"].sum()),
                   clusters=int(rates["n_clusters"].max()))  # every model answers every item here
    elif config == "rs-w2":
        w2 = rs.w2_sensitivity(folder, inputs=FACTORS, cluster="item_id", n_boot=20, n_perm=20,
                               progress=False)
        out.update(w2_s=time.perf_counter() - t0, w2=str(type(w2).__name__))
    elif config == "rs-all":
        rates = rs.refusal_rates(folder, by="model", cluster="item_id")
        t1 = time.perf_counter()
        fit = rs.logit(f"refusal ~ {RHS}", folder, reference=REFERENCE, cluster="item_id")
        t2 = time.perf_counter()
        w2 = rs.w2_sensitivity(folder, inputs=FACTORS, cluster="item_id", n_boot=20, n_perm=20,
                               progress=False)
        t3 = time.perf_counter()
        out.update(rates_s=t1 - t0, logit_s=t2 - t1, w2_s=t3 - t2, lines=len(rates),
                   rows=int(fit._design.n.sum()), w2=str(type(w2).__name__))
    elif config == "rs-cluster-stream":
        from refusalstats.scan import cluster_robust_cov

        counts = rs.collapse(folder, by=FACTORS)
        t1 = time.perf_counter()
        fit = rs.logit(f"refusals ~ {RHS}", counts, trials="n", reference=REFERENCE, cluster=None)
        t2 = time.perf_counter()
        V = cluster_robust_cov(fit, counts, folder, cluster="item_id")
        t3 = time.perf_counter()
        out.update(collapse_s=t1 - t0, fit_s=t3 - t1, logit_s=t2 - t1, cov_s=t3 - t2, lines=len(counts),
                   rows=int(counts["n"].sum()),
                   bse={k: float(v) for k, v in zip(fit.params.index, np.sqrt(np.diag(V.to_numpy())))},
                   separated=list(fit.separated_terms))
    elif config == "duckdb":
        import duckdb

        cols = ", ".join(FACTORS)
        counts = duckdb.sql(f"SELECT {cols}, count(*) AS n, sum(refusal)::BIGINT AS refusals "
                            f"FROM read_parquet('{folder}/**/*.parquet') GROUP BY ALL").df()
        out.update(collapse_s=time.perf_counter() - t0, lines=len(counts), rows=int(counts["n"].sum()))
    elif config == "statsmodels":
        import pandas as pd
        import statsmodels.api as sm
        import statsmodels.formula.api as smf

        rows = pd.read_parquet(folder, columns=[*FACTORS, "refusal"])
        counts = (rows.groupby(FACTORS, observed=True)["refusal"].agg(n="size", refusals="sum")
                  .reset_index())
        del rows
        counts["fails"] = counts["n"] - counts["refusals"]
        t1 = time.perf_counter()
        rhs = " + ".join(f"C({c}, Treatment({REFERENCE[c]!r}))" for c in FACTORS)
        fit = smf.glm(f"refusals + fails ~ {rhs}", counts, family=sm.families.Binomial()).fit()
        t2 = time.perf_counter()
        names = {k: re.sub(r"C\((\w+), Treatment\('.*?'\)\)\[T\.(.*)\]", r"\1[T.\2]", k)
                 for k in fit.params.index}
        out.update(collapse_s=t1 - t0, fit_s=t2 - t1, lines=len(counts), rows=int(counts["n"].sum()),
                   params={names[k]: float(v) for k, v in fit.params.items()})
    elif config == "bincount-floor":
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(folder, columns=[*FACTORS, "refusal"])
        t1 = time.perf_counter()
        codes, sizes = [], []
        for c in FACTORS:
            col = table[c]
            col = col.combine_chunks() if col.num_chunks > 1 else col.chunk(0)
            if not hasattr(col, "indices"):
                col = pc.dictionary_encode(col)
            codes.append(col.indices.to_numpy(zero_copy_only=False))
            sizes.append(len(col.dictionary))
        y = table["refusal"].to_numpy()
        key = np.ravel_multi_index(codes, sizes)
        n = np.bincount(key, minlength=int(np.prod(sizes)))
        r = np.bincount(key, weights=y, minlength=int(np.prod(sizes)))
        t2 = time.perf_counter()
        out.update(read_s=t1 - t0, count_s=t2 - t1, collapse_s=t2 - t0, lines=int((n > 0).sum()),
                   rows=int(n.sum()), refusals=int(r.sum()))
    else:
        raise SystemExit(f"unknown config {config!r}")
    out["total_s"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_mb()
    return out


# ----------------------------------------------------------------------------- parent side
def _write_shards(scale: float, root: Path, same_items: bool = False) -> tuple[Path, int]:
    """20 shards of the paper design at ``scale``; above the simulator's limit of 10, k
    independent replicates at scale/k (seeds 0..k-1, item ids offset so items stay distinct).
    With ``same_items``: ``scale`` independent replicates of the scale-1 design (seeds
    0..scale-1) that keep the item ids, so the items stay 12,701 and each is answered
    ``scale`` times as often (memory against rows at a fixed number of clusters)."""
    if same_items:
        if scale != int(scale) or not 1 <= scale <= N_SHARDS:
            raise RuntimeError(f"--same-items needs whole scales from 1 to {N_SHARDS}")
        folder = root / f"same-items-{scale:g}"
    else:
        folder = root / f"scale-{scale:g}"
    marker = folder / "_rows.json"  # '_' files are skipped by every reader used here
    if marker.exists():
        return folder, json.loads(marker.read_text())["rows"]
    code = (
        "import math, sys, numpy as np, refusalstats as rs\n"
        "from pathlib import Path\n"
        "scale, out = float(sys.argv[1]), Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)\n"
        "same = bool(int(sys.argv[3]))\n"
        "k = int(scale) if same else math.ceil(scale / 10); per = N // k; total = 0; offset = 0; shard = 0\n"
        "for rep in range(k):\n"
        "    df = rs.simulate_paper(scale=1.0 if same else scale / k, seed=rep); df.attrs = {}\n"
        "    if not same:\n"
        "        df['item_id'] = df['item_id'] + offset; offset = int(df['item_id'].max()) + 1\n"
        "    n_here = per if rep < k - 1 else N - per * (k - 1)\n"
        "    b = np.linspace(0, len(df), n_here + 1).astype(int)\n"
        "    for i in range(n_here):\n"
        "        rs.write_responses(df.iloc[b[i]:b[i + 1]], out / f'part-{shard:05d}.parquet'); shard += 1\n"
        "    total += len(df); del df\n"
        "print(total)\n"
    ).replace("N", str(N_SHARDS))
    res = subprocess.run([sys.executable, "-c", code, str(scale), str(folder), str(int(same_items))],
                         capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"writing the shards for scale {scale:g} failed: "
                           f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    rows = int(res.stdout.strip().splitlines()[-1])
    marker.write_text(json.dumps({"rows": rows}))
    return folder, rows


def _run(config: str, folder: Path, timeout: float, counts_csv: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", config, str(folder)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if counts_csv is not None:
        env["BENCH_COUNTS_CSV"] = str(counts_csv)
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"config": config, "error": f"timeout after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return {"config": config, "error": tail[0][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """Median of each time over repeated runs, maximum of the peak RSS."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in out:
        if key.endswith("_s"):
            out[key] = float(sorted(r[key] for r in ok)[len(ok) // 2])
    out["peak_mb"] = max(r["peak_mb"] for r in ok)
    out["repeats"] = len(ok)
    return out


def _max_coef_diff(a: dict, b: dict, skip: list[str]) -> float:
    common = [k for k in a if k in b and k not in skip]
    return max(abs(a[k] - b[k]) for k in common) if common else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 5.0, 10.0, 20.0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--data", type=Path, default=Path("/tmp/refusalstats_bench_scale"))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration run")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per configuration (median time, max peak RSS); rs-cluster runs once")
    ap.add_argument("--same-items", action="store_true",
                    help="scale k = k replicates of the scale-1 design keeping its 12,701 item ids: "
                         "rows grow, clusters do not")
    ap.add_argument("--cluster-max-rows", type=float, default=3e6,
                    help="skip rs-cluster above this many rows (its counts grow with the rows)")
    args = ap.parse_args()
    try:
        import duckdb  # noqa: F401
    except ImportError:
        args.configs = [c for c in args.configs if c != "duckdb"]
    started = time.time()
    load0 = os.getloadavg()
    results: dict[float, dict[str, dict]] = {}
    rows_at: dict[float, int] = {}
    for scale in args.scales:
        t = time.perf_counter()
        try:
            folder, rows = _write_shards(scale, args.data, args.same_items)
        except RuntimeError as exc:
            print(f"# {exc}; scale skipped", file=sys.stderr, flush=True)
            args.scales = [x for x in args.scales if x != scale]
            continue
        rows_at[scale] = rows
        print(f"# scale {scale:g}: {rows:,} rows in {N_SHARDS} shards at {folder} "
              f"(ready in {time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
        results[scale] = {}
        for config in args.configs:
            if config == "rs-cluster" and rows > args.cluster_max_rows:
                results[scale][config] = {"config": config, "error": "skipped"}
                continue
            reps = 1 if config in ("baseline", "rs-cluster", "rs-all", "rs-w2", "rs-rates") else args.repeats
            csv = args.data / f"counts-scale-{scale:g}.csv" if config == "rs" else None  # for peer_glm.R
            r = _median_run([_run(config, folder, args.timeout, csv) for _ in range(reps)])
            results[scale][config] = r
            (args.data / "results.json").write_text(json.dumps({str(k): v for k, v in results.items()}))
            print(f"#   {config}: {json.dumps({k: v for k, v in r.items() if k not in ('params', 'bse')})}",
                  file=sys.stderr, flush=True)
    load1 = os.getloadavg()

    print(f"\n{_dt.date.today().isoformat()} · {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()} · load average (1/5/15 min) at start "
          f"{load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, at end {load1[0]:.1f}/{load1[1]:.1f}/"
          f"{load1[2]:.1f} · total {time.time() - started:.0f} s\n")
    head = "| configuration | " + " | ".join(f"{rows_at[s] / 1e6:.1f} M rows" for s in args.scales) + " |"
    print("Peak RSS (MB, whole process)\n")
    print(head)
    print("|---|" + "---:|" * len(args.scales))
    for config in args.configs:
        cells = []
        for s in args.scales:
            r = results[s][config]
            cells.append(r["error"] if "error" in r else f"{r['peak_mb']:.0f}")
        print(f"| {config} | " + " | ".join(cells) + " |")
    print("\nWall time (s): collapse + fit = total\n")
    print(head)
    print("|---|" + "---:|" * len(args.scales))
    for config in args.configs:
        if config == "baseline":
            continue
        cells = []
        for s in args.scales:
            r = results[s][config]
            if "error" in r:
                cells.append(r["error"])
            elif config == "bincount-floor":
                cells.append(f"{r['read_s']:.2f} read + {r['count_s']:.2f} count = {r['total_s']:.2f}")
            elif config == "rs-all":
                cells.append(f"{r['rates_s']:.2f} rates + {r['logit_s']:.2f} logit + {r['w2_s']:.2f} W2 "
                             f"= {r['total_s']:.2f}")
            elif config == "rs-logit-path":
                cells.append(f"{r['fit_s']:.2f} + {r['drop1_s']:.2f} drop1 = {r['total_s']:.2f}")
            elif config == "rs-rates":
                cells.append(f"{r['rates_s']:.2f} ({r['clusters']:,} items)")
            elif "cov_s" in r:
                cells.append(f"{r['collapse_s']:.2f} + {r['logit_s']:.2f} + {r['cov_s']:.2f} stream "
                             f"= {r['total_s']:.2f}")
            elif "fit_s" in r:
                cells.append(f"{r['collapse_s']:.2f} + {r['fit_s']:.2f} = {r['total_s']:.2f}")
            else:
                cells.append(f"{r['total_s']:.2f}")
        print(f"| {config} | " + " | ".join(cells) + " |")
    print("\nRatios and checks\n")
    print(head.replace("configuration", "measure"))
    print("|---|" + "---:|" * len(args.scales))
    lines = {"statsmodels total / rs total (goal >= 5)": [],
             "rs collapse / bincount floor total (goal <= 2)": [],
             "duckdb collapse / rs collapse": [],
             "rs peak RSS - baseline (MB)": [],
             "rs-cluster count lines": [],
             "max |CR1 SE stream - rs-cluster| (identified terms)": [],
             "rs-cluster-stream peak RSS - baseline (MB)": [],
             "rs-logit-path peak RSS - baseline (MB)": [],
             "rs-rates peak RSS - baseline (MB)": [],
             "rs-w2 peak RSS - baseline (MB)": [],
             "rs-all (rates + clustered logit + W2) peak RSS (MB)": [],
             "max |CR1 SE logit(path) - rs-cluster| (identified terms)": [],
             "max |coef rs - statsmodels| (identified terms)": []}
    for s in args.scales:
        R = results[s]

        def ok(c: str, R: dict = R) -> bool:
            return c in R and "error" not in R[c]

        lines["statsmodels total / rs total (goal >= 5)"].append(
            f"{R['statsmodels']['total_s'] / R['rs']['total_s']:.1f}" if ok("rs") and ok("statsmodels") else "–")
        lines["rs collapse / bincount floor total (goal <= 2)"].append(
            f"{R['rs']['collapse_s'] / R['bincount-floor']['total_s']:.2f}"
            if ok("rs") and ok("bincount-floor") else "–")
        lines["duckdb collapse / rs collapse"].append(
            f"{R['duckdb']['collapse_s'] / R['rs']['collapse_s']:.2f}" if ok("rs") and ok("duckdb") else "–")
        lines["rs peak RSS - baseline (MB)"].append(
            f"{R['rs']['peak_mb'] - R['baseline']['peak_mb']:.0f}" if ok("rs") and ok("baseline") else "–")
        lines["rs-cluster count lines"].append(f"{R['rs-cluster']['lines']:,}" if ok("rs-cluster") else "–")
        lines["max |CR1 SE stream - rs-cluster| (identified terms)"].append(
            f"{_max_coef_diff(R['rs-cluster-stream']['bse'], R['rs-cluster']['bse'], R['rs']['separated']):.1e}"
            if ok("rs-cluster") and ok("rs-cluster-stream") and ok("rs") else "–")
        lines["rs-cluster-stream peak RSS - baseline (MB)"].append(
            f"{R['rs-cluster-stream']['peak_mb'] - R['baseline']['peak_mb']:.0f}"
            if ok("rs-cluster-stream") and ok("baseline") else "–")
        lines["rs-logit-path peak RSS - baseline (MB)"].append(
            f"{R['rs-logit-path']['peak_mb'] - R['baseline']['peak_mb']:.0f}"
            if ok("rs-logit-path") and ok("baseline") else "–")
        for c in ("rs-rates", "rs-w2"):
            lines[f"{c} peak RSS - baseline (MB)"].append(
                f"{R[c]['peak_mb'] - R['baseline']['peak_mb']:.0f}" if ok(c) and ok("baseline") else "–")
        lines["rs-all (rates + clustered logit + W2) peak RSS (MB)"].append(
            f"{R['rs-all']['peak_mb']:.0f}" if ok("rs-all") else "–")
        lines["max |CR1 SE logit(path) - rs-cluster| (identified terms)"].append(
            f"{_max_coef_diff(R['rs-logit-path']['bse'], R['rs-cluster']['bse'], R['rs']['separated']):.1e}"
            if ok("rs-cluster") and ok("rs-logit-path") and ok("rs") else "–")
        lines["max |coef rs - statsmodels| (identified terms)"].append(
            f"{_max_coef_diff(R['rs']['params'], R['statsmodels']['params'], R['rs']['separated']):.1e}"
            if ok("rs") and ok("statsmodels") else "–")
        for c in ("rs", "rs-cluster", "rs-cluster-stream", "rs-logit-path", "rs-all", "duckdb", "statsmodels",
                  "bincount-floor"):
            if ok(c) and R[c].get("rows") is not None and R[c]["rows"] != rows_at[s]:
                raise SystemExit(f"{c} counted {R[c]['rows']:,} rows at scale {s:g}, not {rows_at[s]:,}")
    for name, cells in lines.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3])))
    else:
        main()
