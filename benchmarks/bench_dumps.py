"""Benchmark: importing P2's persona x item matrices at their published size.

Writes one model's matrices at the real sizes of peluz/persona-behavior (163 personas +
30 control personas; off 626, rac 626, truthfulqa 817, mmlu 14,042, bbq 58,492 items,
attitude 27 x 31), then times

* ``refusalstats.dumps.persona_behavior`` (strict parsing by the one matrix parser,
  ``dumps.parse_matrix``: ragged rows and non-0/1 cells are errors; categories, display
  names, validation, and the SHA-256 of every file read, recorded in
  ``attrs["metadata"]["sha256"]``), and
* the peer: what one writes by hand with pandas, ``read_csv(index_col=0)`` + ``stack()``
  to long format per file (no checks; attitude vectors left as strings).

Each loader runs in its own child process; peak memory is that process's maximum
resident set size minus its size after imports. Prints a markdown table.
Run: ``nice python benchmarks/bench_dumps.py [--models 1]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))

from refusalstats import dumps

SIZES = {"off": 626, "rac": 626, "truthfulqa": 817, "mmlu": 14042, "bbq": 58492, "attitude": 27}
MODELS = ["gemma-2b-it", "gemma-7b-it", "Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1",
          "zephyr-7b-beta", "gpt-3.5-turbo-0125", "gpt-4-0125-preview"]


def write_tree(root: Path, n_models: int, seed: int = 0) -> tuple[int, int]:
    import json

    from make_p2_fixture import CATEGORIES, CONTROL, _matrix_csv

    rng = np.random.default_rng(seed)
    personas = [p for _, ps in CATEGORIES.values() for p in ps]
    # pad to P2's 163 regular personas with extra names in one category
    personas += [f"a_person_number_{i}" for i in range(163 - len(personas))]
    cats = {p: c for c, (_, ps) in CATEGORIES.items() for p in ps}
    cats.update({p: "profession_specific" for p in personas if p not in cats})
    controls = CONTROL + [f"a_helper_number_{i}" for i in range(30 - len(CONTROL))]
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "persona_cat.json").write_text(json.dumps(cats))
    rows = 0
    for model in MODELS[:n_models]:
        for setting, who in (("zero", personas), ("control/zero", controls)):
            for d, n in SIZES.items():
                shape = (len(who), n, 31) if d == "attitude" else (len(who), n)
                flags = (rng.random(shape) < 0.08).astype(np.int8)
                _matrix_csv(root / "results" / setting / model / f"{d}_refusals.csv", who, flags)
                rows += flags.size
    size = sum(f.stat().st_size for f in root.rglob("*.csv"))
    return rows, size


def naive(root: Path) -> pd.DataFrame:
    parts = []
    for f in sorted(root.glob("results/**/*_refusals.csv")):
        m = pd.read_csv(f, index_col=0)
        long = m.stack().rename("refusal").reset_index()
        long.columns = ["persona", "item_id", "refusal"]
        long["task"] = f.name.removesuffix("_refusals.csv")
        long["model"] = f.parent.name
        parts.append(long)
    return pd.concat(parts, ignore_index=True)


def worker(which: str, root: Path) -> None:
    """Run one loader in this (fresh) process and print its measurements as JSON."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if which == "ours":
        df = dumps.persona_behavior(root, control=True, progress=False)
    else:
        df = naive(root)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({"rows": len(df), "secs": secs, "peak_mb": peak / 1024,
                      "table_mb": df.memory_usage(deep=True).sum() / 1e6}))


def run_worker(which: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", which, str(root)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=1, help="how many of P2's 7 models (default 1)")
    ap.add_argument("--worker", nargs=2, metavar=("WHICH", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cells, size = write_tree(root, args.models)
        print(f"wrote {cells:,} persona-item cells ({size / 1e6:.0f} MB of CSV) for "
              f"{args.models} model(s) in {time.perf_counter() - t0:.0f} s", flush=True)
        ours = run_worker("ours", root)
        peer = run_worker("peer", root)
    print()
    print("| loader | rows | time (s) | peak RSS (MB) | table memory (MB) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| refusalstats.dumps.persona_behavior (strict) | {ours['rows']:,} | {ours['secs']:.1f} | "
          f"{ours['peak_mb']:,.0f} | {ours['table_mb']:,.0f} |")
    print(f"| pandas read_csv + stack (no checks) | {peer['rows']:,} | {peer['secs']:.1f} | "
          f"{peer['peak_mb']:,.0f} | {peer['table_mb']:,.0f} |")
    print(f"| ratio (pandas / refusalstats) | | {peer['secs'] / ours['secs']:.2f}x | "
          f"{peer['peak_mb'] / ours['peak_mb']:.2f}x | {peer['table_mb'] / ours['table_mb']:.2f}x |")
    print("\n(pandas keeps each attitude vector as one string cell: 27 rows per persona "
          "where refusalstats has 837.)")


if __name__ == "__main__":
    main()
