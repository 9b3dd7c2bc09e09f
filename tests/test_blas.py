"""refusalstats._blas.single_blas: the one BLAS thread small solves run under."""

from __future__ import annotations

import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from refusalstats._blas import blas_single_by_env, single_blas


def _blas_threads() -> list[int]:
    return [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]


@pytest.mark.parametrize("env, single", [
    ({}, False),
    ({"OPENBLAS_NUM_THREADS": "1"}, True),
    ({"OPENBLAS_NUM_THREADS": "2"}, False),
    ({"OMP_NUM_THREADS": "1"}, True),
    ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4"}, False),
    ({"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}, False),
])  # fmt: skip
def test_environment_that_already_gives_one_thread(monkeypatch, env, single):
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert blas_single_by_env() is single


def test_decorated_function_runs_with_one_blas_thread_and_restores(monkeypatch):
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        seen = single_blas(_blas_threads)()
        assert seen == [1] * len(seen)
        assert _blas_threads() == before


def test_the_simulator_and_the_solvers_share_it():
    """One home: regression's solvers and the simulator's population-limit fit use the same
    decorator (a wrapped function carries its original as __wrapped__)."""
    from refusalstats import simulate
    from refusalstats.regression import linalg

    assert linalg._single_blas is single_blas
    assert simulate._weighted_logistic.__wrapped__ is not None
