"""Calibration harness: coverage and false-positive rates of every interval and test.

Each area lives in ``benchmarks/calibration_<area>.py`` and exposes

    run(reps: int, seed: int) -> list[dict]

returning one dict per check with keys ``check`` (what is tested), ``data`` (how the
data were simulated), ``statistic`` ("coverage" or "false-positive rate"),
``estimate`` (the proportion over ``reps`` replicates), ``target_low``/``target_high``
(the acceptance band), ``reps`` and ``seconds``, optionally ``mc_se``. This driver adds the
Monte Carlo standard error sqrt(p(1-p)/reps) where a row gives no ``mc_se``, prints one markdown table and, with
``--write-docs``, replaces the generated table in ``docs/validity.md``.

Usage::

    python benchmarks/calibration.py                  # every area, default replicates
    python benchmarks/calibration.py --area logit --reps 400
    python benchmarks/calibration.py --write-docs     # refresh docs/validity.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import math
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AREAS = ("rates", "logit", "w2", "hierarchical", "ppi")
BEGIN = "<!-- calibration:begin -->"
END = "<!-- calibration:end -->"


def _load(area: str):
    sys.path.insert(0, str(HERE))
    try:
        return importlib.import_module(f"calibration_{area}")
    finally:
        sys.path.remove(str(HERE))


def _fmt_band(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo:.2f}–{hi:.2f}"
    if hi is not None:
        return f"≤ {hi:.2f}"
    return f"≥ {lo:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| area | check | data | statistic | estimate | MC s.e. | target | meets | reps | s |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        p, n = r["estimate"], r["reps"]
        # an area may give its own s.e. (e.g. the replicate as the unit when intervals share data)
        se = r["mc_se"] if r.get("mc_se") is not None else (math.sqrt(p * (1 - p) / n) if n else float("nan"))
        lo, hi = r.get("target_low"), r.get("target_high")
        ok = (lo is None or p >= lo) and (hi is None or p <= hi)
        lines.append(
            f"| {r['area']} | {r['check']} | {r['data']} | {r['statistic']} | {p:.3f} | {se:.3f} "
            f"| {_fmt_band(lo, hi)} | {'yes' if ok else '**no**'} | {n} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--area", choices=AREAS, action="append",
                    help="run only this area (repeatable); default: all")
    ap.add_argument("--reps", type=int, default=None,
                    help="replicates per check (default: each area's own)")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the generated table in docs/validity.md")
    args = ap.parse_args(argv)
    areas = args.area or list(AREAS)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for area in areas:
        mod = _load(area)
        kw = {"seed": args.seed}
        if args.reps is not None:
            kw["reps"] = args.reps
        for r in mod.run(**kw):
            r.setdefault("area", area)
            rows.append(r)
    total = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = (f"Run {dt.date.today().isoformat()} on {platform.node() or 'this machine'} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}), areas "
            f"{', '.join(areas)}, seed {args.seed}, {total:.0f} s total, load average at the end "
            f"{load:.1f}. Command: `python benchmarks/calibration.py"
            f"{''.join(' --area ' + a for a in (args.area or []))}"
            f"{' --reps ' + str(args.reps) if args.reps else ''}`.")
    out = meta + "\n\n" + table(rows)
    print(out)
    if args.write_docs:
        path = HERE.parent / "docs" / "validity.md"
        text = path.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{path} lacks the {BEGIN} / {END} markers")
        pre, rest = text.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        path.write_text(pre + BEGIN + "\n" + out + "\n" + END + post)
        print(f"wrote {path}")
    bad = [r for r in rows if not ((r.get("target_low") is None or r["estimate"] >= r["target_low"])
                                   and (r.get("target_high") is None
                                        or r["estimate"] <= r["target_high"]))]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
