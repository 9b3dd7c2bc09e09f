"""Benchmark: refusalstats.hierarchical (module refusalstats.bayes) vs bambi on P1's full design.

Fits ``refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)`` to
``simulate_paper(scale=1.0)`` (2,032,160 rows) with refusalstats (collapsed binomial
likelihood, nutpie) and reports wall time, max R-hat, min bulk/tail ESS and divergences.

bambi (row-level Bernoulli likelihood, its default PyMC NUTS sampler) cannot fit two
million rows in any reasonable time on 2 cores, so it is fitted on a random subsample
of rows in a child process, and its full-data time is extrapolated as

    (gradient evaluations per NUTS iteration, measured on bambi's own subsample fit)
  x (iterations refusalstats used: chains x (tune + draws))
  x (seconds per gradient evaluation at 2,032,160 rows),

the last from timing bambi's compiled log-density gradient at two subsample sizes and
extending the straight line (the cost of a row-level gradient is linear in rows). The
extrapolation ignores compilation and parallelism and assumes the full-data posterior
needs no more leapfrog steps per iteration than the subsample's, so it is a lower bound
on bambi's real time. refusalstats is also fitted on the same subsample for a direct,
same-rows comparison.

Run: ``nice .venv/bin/python benchmarks/bench_hierarchical.py`` (bambi is looked up on
``--bambi-path``, default ``/tmp/bambilib``, then on the normal path).

Issue #11 (item clustering, convergence of the default formula):

* ``--skip-bambi --draws 1000 --tune 1000 --scale 0.1`` (and 1.0): the default formula
  with ``hierarchical()``'s defaults (4 chains x (1000 + 1000)); ``--parametrization
  legacy`` applies the previous "auto" rule (centre when observed information >= 25).
* ``--item``: adds ``(1|item_id)`` (the recommended formula); ``--method laplace`` for the
  nested Laplace approximation (the only affordable route at full scale on 2 cores).

Issue #15 (speed; goal <= 30 s at full scale on 2 cores with the same diagnostics):

* ``--skip-bambi --draws 1000 --tune 1000 --compare-old 7ccac46``: also fits the code of
  that git revision (its ``bayes.py`` or ``bayes/``, imported under another name) with the
  same settings in the same run, interleaved (old, new, old, new with ``--repeat 2``), and
  reports wall and CPU seconds of both: CPU seconds are less sensitive than wall time to
  the other jobs on a shared machine. ``uptime`` is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

FORMULA = "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)"
REFERENCE = {"task": "nli", "prompt": "p1"}


def _bambi_child(path: str, out: str, draws: int, tune: int, chains: int, sizes: list[int],
                 subsample: int) -> None:
    """Fit bambi on the table at ``path`` and time its gradient at several row counts."""
    warnings.filterwarnings("ignore")
    import bambi as bmb
    import pandas as pd

    df = pd.read_parquet(path)
    res: dict = {"bambi_version": bmb.__version__, "rows": min(subsample, len(df))}
    grad = {}
    for n in sizes:
        sub = df.iloc[:n]
        m = bmb.Model(FORMULA, sub, family="bernoulli")
        m.build()
        f = m.backend.model.logp_dlogp_function(ravel_inputs=True)
        f.set_extra_values({})
        from pymc.blocking import DictToArrayBijection

        x = DictToArrayBijection.map(
            {k: v for k, v in m.backend.model.initial_point().items() if k in f._grad_vars_names}
            if hasattr(f, "_grad_vars_names") else m.backend.model.initial_point()).data
        f(x)
        reps = 50
        t0 = time.perf_counter()
        for _ in range(reps):
            f(x)
        grad[n] = (time.perf_counter() - t0) / reps
    res["grad_s"] = grad
    m = bmb.Model(FORMULA, df.iloc[:subsample], family="bernoulli")
    t0 = time.perf_counter()
    idata = m.fit(draws=draws, tune=tune, chains=chains, cores=min(chains, os.cpu_count() or 1),
                  random_seed=0, progressbar=False)
    res["fit_s"] = time.perf_counter() - t0
    st = idata.sample_stats
    res["steps_per_iter"] = float(st["n_steps"].mean()) if "n_steps" in st else float("nan")
    res["divergences"] = int(st["diverging"].sum())
    import arviz as az

    s = az.summary(idata, kind="diagnostics")
    res["max_rhat"] = float(s["r_hat"].max())
    res["min_ess_bulk"] = float(s["ess_bulk"].min())
    with open(out, "w") as fh:
        json.dump(res, fh)


def _old_bayes(rev: str):
    """The hierarchical module of git revision ``rev``, imported as ``refusalstats._bayes_old``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="bayes_old_")
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src/refusalstats/"],
                             cwd=root, check=True, capture_output=True, text=True).stdout.split()
    files = [f for f in listing if f == "src/refusalstats/bayes.py" or f.startswith("src/refusalstats/bayes/")]
    if not files:
        raise SystemExit(f"revision {rev} has no src/refusalstats/bayes.py or bayes/")
    for f in files:
        dest = os.path.join(tmp, os.path.relpath(f, "src/refusalstats"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as fh:
            fh.write(subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, check=True,
                                    capture_output=True, text=True).stdout)
    single = os.path.join(tmp, "bayes.py")
    path = single if os.path.exists(single) else os.path.join(tmp, "bayes", "__init__.py")
    import refusalstats  # noqa: F401  (the parent package of the relative imports)

    kw = {} if path == single else {"submodule_search_locations": [os.path.dirname(path)]}
    spec = importlib.util.spec_from_file_location("refusalstats._bayes_old", path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {os.getloadavg()}"


def _fit_ours(df, draws, tune, chains, seed=0, formula=FORMULA, parametrization="auto", method="nuts",
              module=None, target_accept=0.9):
    if module is None:
        from refusalstats import bayes as module
    HierarchicalModel, AUTO_CENTER_INFO = module.HierarchicalModel, module.AUTO_CENTER_INFO

    t0 = time.perf_counter()
    c0 = time.process_time()
    legacy = parametrization == "legacy"
    m = HierarchicalModel(formula, df, reference=REFERENCE,
                          parametrization="noncentered" if legacy else parametrization)
    if legacy:  # the rule before issue #11: centred when the observed information >= 25
        for g in m.groups:
            g.centered[:] = g.information >= AUTO_CENTER_INFO
        m.model = m._build()
    t_build = time.perf_counter() - t0
    print(f"built in {t_build:.1f} s: {len(m.patterns):,} patterns; centred levels "
          + ", ".join(f"{g.name} {int(g.centered.sum())}/{len(g.levels)}" for g in m.groups), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = m.fit(draws=draws, tune=tune, chains=chains, seed=seed, progress=False, method=method,
                  target_accept=target_accept)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    d = r.diagnostics()
    if r.sampler == "laplace":
        s = r.to_frame()
        print(s.round(3).to_string())
        print("laplace:", json.dumps(m.laplace_info))
        return {"wall_s": wall, "cpu_s": cpu, "build_s": t_build, "compile_s": np.nan, "sample_s": np.nan,
                "patterns": len(m.patterns), "steps_per_iter": np.nan, "max_rhat": np.nan,
                "min_ess_bulk": np.nan, "min_ess_tail": np.nan, "divergences": 0}, r
    steps = float(r.idata.sample_stats["n_steps"].mean())
    print(f"worst R-hat at {d['worst_rhat']}", flush=True)
    print(r.to_frame().round(3).to_string(), flush=True)
    return {"wall_s": wall, "cpu_s": cpu, "build_s": t_build, "compile_s": r.timings.get("compile_s", np.nan),
            "sample_s": r.timings.get("sample_s", np.nan), "patterns": len(m.patterns),
            "steps_per_iter": steps, **{k: d[k] for k in ("max_rhat", "min_ess_bulk", "min_ess_tail",
                                                          "divergences")}}, r


ITEM_FORMULA = FORMULA + " + (1|item_id)"


def _intervals(fit) -> dict:
    """95% HDIs of the fixed effects, the group sd's and each persona's effect (u_persona)."""
    s = fit.to_frame(conf=0.95)
    out = {t: [float(s.loc[t, "ci_low"]), float(s.loc[t, "ci_high"])] for t in s.index}
    dev = fit.deviations("persona", conf=0.95)
    for r in dev.itertuples():
        out[f"persona[{r.persona}]"] = [float(r.ci_low), float(r.ci_high)]
    return out


def check_nuts(scale: float, draws: int, tune: int, chains: int, seed: int) -> int:
    """Nested Laplace vs NUTS with (1|item_id) on simulate_paper(scale): 95% HDI endpoints.

    Prints, per term, both intervals and the endpoint differences in units of the NUTS
    interval's width (target: within 0.10), the NUTS diagnostics and the timings, and the
    NUTS intervals as a Python dict (pasted into tests/test_hierarchical.py).
    """
    import refusalstats as rs
    from refusalstats.bayes import HierarchicalModel

    df = rs.simulate_paper(scale=scale)
    print(f"simulate_paper(scale={scale}): {len(df):,} rows, {df['item_id'].nunique():,} items; "
          f"uptime {_uptime()}", flush=True)
    m = HierarchicalModel(ITEM_FORMULA, df, reference=REFERENCE)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = m.fit(method="nuts", draws=draws, tune=tune, chains=chains, seed=seed, progress=False)
    t_nuts, c_nuts = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    lap = HierarchicalModel(ITEM_FORMULA, df, reference=REFERENCE).fit(method="laplace", draws=4000,
                                                                       seed=seed, progress=False)
    t_lap, c_lap = time.perf_counter() - t0, time.process_time() - c0
    d = nuts.diagnostics()
    print(f"NUTS {chains} x ({tune} + {draws}): {t_nuts:.0f} s wall, {c_nuts:.0f} s CPU (this process; "
          f"nutpie's chains run in threads); max R-hat {d['max_rhat']:.4f}, min bulk ESS "
          f"{d['min_ess_bulk']:.0f}, min tail ESS {d['min_ess_tail']:.0f}, divergences {d['divergences']}")
    print(f"nested Laplace (4000 draws): {t_lap:.1f} s wall, {c_lap:.1f} s CPU")
    a, b = _intervals(nuts), _intervals(lap)
    print("\n| term | NUTS 95% HDI | Laplace 95% HDI | low diff / width | high diff / width |")
    print("|---|---|---|---:|---:|")
    worst = 0.0
    for t in a:
        w = a[t][1] - a[t][0]
        dl, dh = (b[t][0] - a[t][0]) / w, (b[t][1] - a[t][1]) / w
        worst = max(worst, abs(dl), abs(dh))
        print(f"| {t} | {a[t][0]:.3f} to {a[t][1]:.3f} | {b[t][0]:.3f} to {b[t][1]:.3f} | {dl:+.3f} | {dh:+.3f} |")
    print(f"\nlargest endpoint difference: {worst:.3f} of the NUTS width (target <= 0.10)")
    print("NUTS_HDI = " + json.dumps({t: [round(v, 4) for v in iv] for t, iv in a.items()}))
    print(f"uptime after: {_uptime()}")
    return 0


def _glmer_unfinished(df, args, ours: dict, fit, load_before: float, wall: float, r0) -> int:
    """glmer stopped at ``--glmer-timeout``: its wall and CPU seconds so far are lower bounds,
    and so are the ratios to our fit (the CPU seconds include R's start and reading the CSV,
    a few seconds)."""
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"\n| fit | rows | wall (s) | CPU (s) | load (1 min) |\n|---|---:|---:|---:|---|\n"
          f"| refusalstats hierarchical ({fit.sampler}; method={args.method}) | {len(df):,} | "
          f"{ours['wall_s']:.1f} | {ours['cpu_s']:.1f} | {load_before:.1f} before |\n"
          f"| R lme4 glmer(nAGQ=0), this run: stopped unfinished at --glmer-timeout "
          f"{args.glmer_timeout:.0f} s | {len(df):,} | > {wall:.0f} | > {cpu:.0f} | "
          f"{os.getloadavg()[0]:.1f} at the stop |")
    print(f"\nglmer / refusalstats: wall > {wall / ours['wall_s']:.0f}x, CPU > {cpu / ours['cpu_s']:.0f}x "
          f"(lower bounds: glmer did not finish); goal: refusalstats <= 60 s and faster than glmer. "
          f"uptime after: {_uptime()}")
    return 0


def _versus_glmer(df, args, ours: dict, fit, load_before: float) -> int:
    """Ours vs R lme4 glmer(nAGQ = 0) on the same formula and table: wall and CPU seconds."""
    import pandas as pd

    if not args.item:
        raise SystemExit("--glmer compares the formula with (1|item_id): add --item")
    root = os.path.dirname(os.path.abspath(__file__))
    if args.glmer_csv:
        g = pd.read_csv(args.glmer_csv)
        label = f"recorded earlier ({args.glmer_csv}), not this run"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            counts = (df.groupby(["item_id", "task", "prompt", "model", "persona"], observed=True)["refusal"]
                      .agg(n="size", refusals="sum").reset_index())
            path, out = os.path.join(tmp, "counts.csv"), os.path.join(tmp, "glmer.csv")
            counts.to_csv(path, index=False)
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.Popen(["Rscript", os.path.join(root, "peer_glmer.R"), path, out, "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                stdout, stderr = proc.communicate(timeout=args.glmer_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return _glmer_unfinished(df, args, ours, fit, load_before, time.perf_counter() - t0, r0)
            print(stdout[-3000:], stderr[-2000:], flush=True)
            if proc.returncode != 0:
                raise SystemExit("peer_glmer.R failed")
            g = pd.read_csv(out)
        label = "this run"
    gs, gc = float(g["glmer_s"].iloc[0]), float(g.get("glmer_cpu_s", pd.Series([np.nan])).iloc[0])
    s = fit.to_frame()
    ref = g.set_index("term")
    print("\n| term | refusalstats (mean, 95% HDI) | glmer nAGQ=0 (estimate +- 1.96 se) |")
    print("|---|---|---|")
    for t in s.index:
        key = {"Intercept": "(Intercept)"}.get(t, t.replace("[T.", "").replace("]", ""))
        if t.startswith("sd("):
            key = t
        if key in ref.index:
            e, se = ref.loc[key, "estimate"], ref.loc[key, "std_error"]
            gtxt = f"{e:.3f}" + ("" if pd.isna(se) else f" ({e - 1.96 * se:.3f} to {e + 1.96 * se:.3f})")
        else:
            gtxt = "-"
        print(f"| {t} | {s.loc[t, 'mean']:.3f} ({s.loc[t, 'ci_low']:.3f} to {s.loc[t, 'ci_high']:.3f}) | {gtxt} |")
    print(f"\n| fit | rows | wall (s) | CPU (s) | load (1 min) |\n|---|---:|---:|---:|---|\n"
          f"| refusalstats hierarchical ({fit.sampler}; method={args.method}) | {len(df):,} | "
          f"{ours['wall_s']:.1f} | {ours['cpu_s']:.1f} | {load_before:.1f} before |\n"
          f"| R lme4 {g['lme4'].iloc[0]} glmer(nAGQ=0), {label} | {int(g['rows'].iloc[0]):,} | {gs:.1f} | "
          f"{gc:.1f} | {float(g.get('load_1min', pd.Series([np.nan])).iloc[0]):.1f} at its end |")
    print(f"\nglmer / refusalstats: wall {gs / ours['wall_s']:.1f}x, CPU {gc / ours['cpu_s']:.1f}x; "
          f"goal: refusalstats <= 60 s and faster than glmer. uptime after: {_uptime()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--draws", type=int, default=700)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--subsample", type=int, default=10_000, help="rows for bambi's fit")
    ap.add_argument("--bambi-draws", type=int, default=300)
    ap.add_argument("--bambi-path", default="/tmp/bambilib")
    ap.add_argument("--skip-bambi", action="store_true")
    ap.add_argument("--item", action="store_true", help="add (1|item_id) to the formula")
    ap.add_argument("--method", choices=["auto", "nuts", "laplace"], default="nuts")
    ap.add_argument("--effects", action="store_true",
                    help="also time what the report computes from the fit (effects, deviations)")
    ap.add_argument("--glmer", action="store_true",
                    help="with --item: also fit R lme4 glmer(nAGQ=0) on the same table in the same "
                         "run (benchmarks/peer_glmer.R) and print wall and CPU ratios (issue #24)")
    ap.add_argument("--glmer-timeout", type=float, metavar="SECONDS",
                    help="with --glmer: stop glmer after this many wall seconds and print its time "
                         "so far as a lower bound (at full scale it ran > 3,500 CPU s)")
    ap.add_argument("--glmer-csv", metavar="CSV",
                    help="with --item: compare with a glmer result recorded earlier by peer_glmer.R "
                         "(e.g. a full-scale run in the background), labelled as not the same run")
    ap.add_argument("--parametrization", choices=["auto", "legacy", "centered", "noncentered"],
                    default="auto")
    ap.add_argument("--target-accept", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-old", metavar="REV", help="also fit the bayes code of this git revision")
    ap.add_argument("--repeat", type=int, default=1, help="with --compare-old: old/new pairs")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="10000,40000", help="row counts for timing bambi's gradient")
    ap.add_argument("--check-nuts", type=float, metavar="SCALE",
                    help="nested Laplace vs NUTS with (1|item_id) on simulate_paper(SCALE) (issue #24)")
    args = ap.parse_args()
    if args.check_nuts:
        return check_nuts(args.check_nuts, args.draws, args.tune, args.chains, args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        _bambi_child(args.child[0], args.child[1], args.bambi_draws, args.bambi_draws, args.chains,
                     sizes, args.subsample)
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)
    import refusalstats as rs

    t0 = time.perf_counter()
    df = rs.simulate_paper(scale=args.scale)
    print(f"simulated {len(df):,} rows in {time.perf_counter() - t0:.1f} s; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    formula = FORMULA + (" + (1|item_id)" if args.item else "")
    print(f"formula: {formula}; method {args.method}; parametrization {args.parametrization}", flush=True)
    print(f"uptime before: {_uptime()}", flush=True)
    if args.compare_old:
        old = _old_bayes(args.compare_old)
        rows = [("| code | chains x (tune + draws) | wall (s) | CPU (s) | build / compile / sample (s) | "
                 "max R-hat | min bulk ESS | min tail ESS | div. | load (1 min) before -> after |"),
                "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
        for _ in range(args.repeat):
            for label, mod in ((f"before ({args.compare_old})", old), ("now", None)):
                l0 = os.getloadavg()[0]
                res, _fit = _fit_ours(df, args.draws, args.tune, args.chains, seed=args.seed, formula=formula,
                                      parametrization=args.parametrization, method=args.method,
                                      module=mod, target_accept=args.target_accept)
                rows.append(f"| {label}, seed {args.seed} | {args.chains} x ({args.tune} + {args.draws}) | "
                            f"{res['wall_s']:.1f} | "
                            f"{res['cpu_s']:.1f} | {res['build_s']:.1f} / {res['compile_s']:.1f} / "
                            f"{res['sample_s']:.1f} | {res['max_rhat']:.4f} | {res['min_ess_bulk']:.0f} | "
                            f"{res['min_ess_tail']:.0f} | {res['divergences']} | {l0:.2f} -> "
                            f"{os.getloadavg()[0]:.2f} |")
                print(rows[-1], flush=True)
        print("\n" + "\n".join(rows))
        print(f"\nuptime after: {_uptime()}")
        return 0
    l0 = os.getloadavg()[0]
    ours, _fit = _fit_ours(df, args.draws, args.tune, args.chains, seed=args.seed, formula=formula,
                           parametrization=args.parametrization, method=args.method,
                           target_accept=args.target_accept)
    print(f"refusalstats full: {json.dumps({k: round(v, 4) for k, v in ours.items()})}", flush=True)
    if args.effects:  # what the report computes from the fit
        t1, c1 = time.perf_counter(), time.process_time()
        eff = _fit.effects("persona", within="model")
        _fit.deviations("persona:model")
        _fit.to_frame()
        print(f"report's use of the fit (effects('persona', within='model'), deviations, to_frame): "
              f"{time.perf_counter() - t1:.1f} s wall, {time.process_time() - c1:.1f} s CPU; "
              f"{len(eff)} cells, probability scale on {eff.attrs['prob_draws']} draws; load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.glmer or args.glmer_csv:
        return _versus_glmer(df, args, ours, _fit, l0)
    iters = args.chains * (args.tune + args.draws)

    rows = ["| fit | rows | wall (s) | max R-hat | min bulk ESS | divergences |",
            "|---|---:|---:|---:|---:|---:|",
            (f"| refusalstats ({'nested Laplace, APPROXIMATE' if _fit.sampler == 'laplace' else 'nutpie'}, "
            f"collapsed to {ours['patterns']:,} patterns; {args.chains}x"
            f"({args.tune}+{args.draws})) | {len(df):,} | {ours['wall_s']:.1f} (compile "
            f"{ours['compile_s']:.1f}, sample {ours['sample_s']:.1f}) | {ours['max_rhat']:.4f} | "
            f"{ours['min_ess_bulk']:.0f} | {ours['divergences']} |")]
    if not args.skip_bambi:
        rng = np.random.default_rng(1)
        n_max = max([args.subsample, *sizes])
        sub = df.iloc[rng.choice(len(df), n_max, replace=False)].reset_index(drop=True)
        sub.attrs = {}  # the simulation truth (tuple keys) cannot go into Parquet metadata
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sub.parquet")
            sub.to_parquet(path)
            out = os.path.join(tmp, "bambi.json")
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (args.bambi_path, env.get("PYTHONPATH")) if p)
            t1 = time.perf_counter()
            cmd = [sys.executable, "-W", "ignore", __file__, "--child", path, out,
                   "--bambi-draws", str(args.bambi_draws), "--chains", str(args.chains),
                   "--sizes", ",".join(map(str, sizes)), "--subsample", str(args.subsample)]
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit("bambi child failed")
            with open(out) as fh:
                b = json.load(fh)
            b["child_s"] = time.perf_counter() - t1
        print(f"bambi: {json.dumps(b)}", flush=True)
        ns = np.array(sorted(int(k) for k in b["grad_s"]), dtype=float)
        ts = np.array([b["grad_s"][str(int(k))] for k in ns])
        slope, icpt = np.polyfit(ns, ts, 1)
        per_eval_full = icpt + slope * len(df)
        est = b["steps_per_iter"] * iters * per_eval_full / min(args.chains, os.cpu_count() or 1)
        # refusalstats on the same subsample for a same-rows comparison
        ours_sub, _ = _fit_ours(sub.iloc[:b["rows"]], args.bambi_draws, args.bambi_draws, args.chains)
        rows.append(f"| refusalstats, same subsample, {args.chains}x({args.bambi_draws}+"
                    f"{args.bambi_draws}) | {b['rows']:,} | {ours_sub['wall_s']:.1f} | "
                    f"{ours_sub['max_rhat']:.4f} | {ours_sub['min_ess_bulk']:.0f} | "
                    f"{ours_sub['divergences']} |")
        rows.append(f"| bambi {b['bambi_version']} (row-level Bernoulli, PyMC NUTS), "
                    f"{args.chains}x({args.bambi_draws}+{args.bambi_draws}) | {b['rows']:,} | "
                    f"{b['fit_s']:.1f} | {b['max_rhat']:.4f} | {b['min_ess_bulk']:.0f} | "
                    f"{b['divergences']} |")
        rows.append(f"| bambi, extrapolated to the full table ({b['steps_per_iter']:.1f} gradient "
                    f"evals/iteration x {iters:,} iterations x {per_eval_full * 1e3:.1f} ms/eval "
                    f"/ {min(args.chains, os.cpu_count() or 1)} cores) | {len(df):,} | "
                    f"~{est:,.0f} (lower bound) | | | |")
        print("\nbambi gradient time per evaluation: " + ", ".join(
            f"{int(n):,} rows {t * 1e3:.2f} ms" for n, t in zip(ns, ts))
              + f"; linear fit -> {per_eval_full * 1e3:.1f} ms at {len(df):,} rows")
        print(f"speed-up on the full table (extrapolated bambi / refusalstats): "
              f"{est / ours['wall_s']:.0f}x; on the same {b['rows']:,}-row subsample: "
              f"{b['fit_s'] / ours_sub['wall_s']:.1f}x")
    print("\n" + "\n".join(rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (2 cores); uptime after: {_uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
