"""One BLAS thread for small matrices: the decorator every solver here runs under.

OpenBLAS starts one thread per core; on matrices of a few thousand rows by a few dozen
columns its threads cost far more than they save, and on a busy machine they spin
(measured 100-200x slower: the simulator's 6,075 x 39 Newton fit took 2.2 s with two
threads at load 10 and 0.011 s with one). Used by ``regression`` (IRLS, covariance) and
``simulate`` (the population-limit fit of the marginal truth).
"""

from __future__ import annotations

import functools


def single_blas(fn):
    """Run ``fn`` with one BLAS thread: the matrices here are small (p x p, K x p) and
    OpenBLAS threading costs far more than it saves on them (100x on a busy machine)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if blas_single_by_env():
            return fn(*args, **kwargs)
        with blas_controller().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def blas_single_by_env() -> bool:
    """True when the environment already gives BLAS one thread (``OPENBLAS_NUM_THREADS=1``,
    or ``OMP_NUM_THREADS=1`` with no BLAS-specific setting above 1): then there is nothing
    to limit, and threadpoolctl's scan of the loaded libraries (40 ms on the first fit of
    a process here) is skipped."""
    import os

    env = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    if env["OPENBLAS_NUM_THREADS"] is not None:
        own = [env["OPENBLAS_NUM_THREADS"], env["MKL_NUM_THREADS"] or "1"]
    else:
        own = [env["OMP_NUM_THREADS"] or "", env["MKL_NUM_THREADS"] or env["OMP_NUM_THREADS"] or ""]
    return all(v.strip() == "1" for v in own)


@functools.lru_cache(maxsize=1)
def blas_controller():
    """One threadpoolctl controller for the process: finding the BLAS libraries reads
    /proc and costs ~10 ms, more than a whole small fit."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
