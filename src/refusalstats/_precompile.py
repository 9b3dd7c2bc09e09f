"""Compile the package's numba kernels into their on-disk cache, once, at install time.

``make install`` runs ``python -m refusalstats._precompile``. Every kernel is decorated
``@njit(cache=True)``, so the machine code is written next to the source (``__pycache__``)
the first time a kernel runs and loaded from there afterwards. Without this step the first
analysis after an install (and each of the test workers of the first ``make test``) spends
10-15 s compiling. The calls below are tiny analyses through the public API that together
reach every kernel with the argument types the package uses; ``main`` checks that every
kernel has been compiled and names any that were not.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pandas as pd


def _tables(n_items: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    per = 12
    n = n_items * per
    df = pd.DataFrame({
        "item_id": np.repeat([f"i{i:02d}" for i in range(n_items)], per),
        "model": np.tile(["m0", "m1", "m2"], n // 3),
        "persona": np.tile(["a", "b", "c", "d"], n // 4),
        "task": np.repeat(["t0", "t1"], n // 2),
    })
    df["refusal"] = (rng.random(n) < 0.3).astype(int)
    df["score"] = rng.normal(size=n)
    df["label"] = rng.choice(["x", "y", "z"], n)
    df["likert"] = rng.integers(1, 6, n)
    df["length"] = rng.normal(size=n)  # a numeric input, cut into rank bins
    return df


def _sensitivity_runs(df: pd.DataFrame) -> None:
    from .sensitivity import w2_sensitivity

    # task is constant within item (permuted across clusters), model and persona vary within
    kw = {"inputs": ("model", "persona", "task", "length"), "partitions": {"length": 4},
          "n_boot": 20, "n_perm": 10, "seed": 0, "progress": False}
    for output in ("refusal", "score", "label", "likert"):
        for cluster in (None, "item_id"):
            for bootstrap in ("unstratified", "stratified"):
                w2_sensitivity(df, output=output, cluster=cluster, bootstrap=bootstrap, **kw)
            w2_sensitivity(df, output=output, cluster=cluster, ci="bca", **kw)
            if output == "refusal":
                w2_sensitivity(df, output=output, cluster=cluster, ci="studentized", **kw)
    # enough minority answers for the threaded within-cluster kernel (work x 1,000 > 2e6)
    w2_sensitivity(_tables(800), output="refusal", cluster="item_id",
                   **{**kw, "inputs": ("model",), "partitions": None, "n_perm": 1000})


def _hierarchical_runs(df: pd.DataFrame) -> None:
    from .bayes import hierarchical

    fit = hierarchical("refusal ~ task + (1|persona) + (1|item_id)", df, method="laplace", draws=50,
                       seed=0, progress=False)
    fit.effects("persona")


#: The kernels the package calls from Python (the others run inside these and are compiled,
#: and cached, with them). tests/test_precompile.py keeps the list equal to the calls in the source.
ENTRY_KERNELS = (
    "_kernels.boot_clusters_continuous", "_kernels.boot_continuous", "_kernels.cells_xi_weighted",
    "_kernels.cluster_weights", "_kernels.group_sorted", "_kernels.jack_continuous",
    "_kernels.perm_clusters_continuous", "_kernels.perm_clusters_table", "_kernels.perm_continuous",
    "_kernels.perm_within_continuous", "_kernels.rank_cells", "_kernels.table_xi_1d_batch",
    "_kernels.table_xi_nominal_batch", "_kernels.within_counts", "_kernels.within_counts_par",
    "bayes.laplace._pass", "bayes.laplace._var_pass", "bayes.results._prob_effect",
)


def kernels() -> dict[str, object]:
    """The dispatchers of ``ENTRY_KERNELS``, by name."""
    import importlib

    out = {}
    for name in ENTRY_KERNELS:
        mod, attr = name.rsplit(".", 1)
        out[name] = getattr(importlib.import_module(f"{__package__}.{mod}"), attr)
    return out


def main() -> int:
    t0 = time.perf_counter()
    df = _tables()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _sensitivity_runs(df)
        _hierarchical_runs(df)
    missing = [name for name, d in kernels().items() if not d.signatures]
    print(f"refusalstats: numba kernels compiled and cached in {time.perf_counter() - t0:.1f} s"
          + (f"; not reached: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
