"""Fixtures shared by the test modules."""

from __future__ import annotations

import atexit
import gc
import os

import pytest


def _exit_without_teardown() -> None:
    """The last exit handler of an xdist worker: leave without the interpreter's teardown."""
    import logging
    import sys

    logging.shutdown()  # the one handler registered before this one (pytest imports logging)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# make test's xdist workers: registered here, before the test modules import the libraries,
# this handler runs after theirs (atexit is last in, first out: PyMC's, numba's, weakref
# finalizers' and the rest run as usual) and then skips the interpreter's teardown of the
# modules: 2-2.5 s a worker, which the controller waited for at the end of every run (last
# test to the end of make test: 3.5 s -> 1.2 s, one-off measurement). A worker gets here after it sent its
# results to the controller and tore its fixtures down.
if os.environ.get("PYTEST_XDIST_WORKER"):
    atexit.register(_exit_without_teardown)


def _freeze_after_full_collection(phase: str, info: dict) -> None:
    """After each full (generation 2) garbage collection, move its survivors to the
    permanent generation (gc.freeze): the next full collection scans only what was
    allocated since, not the whole heap of torch, PyMC, pandas and matplotlib again."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


# A test process holds a large, long-lived heap; each full collection walked all of it,
# 0.2-0.3 s each, about 50 a run (some called by libraries: statsmodels' Holm runs
# gc.collect()): 11 s of CPU in all. Frozen survivors are reached from live objects at the
# time; the cost is that a frozen cycle that becomes garbage later is not freed (peak RSS of
# a make test worker: 1.14 / 1.01 GB before, 1.20 / 1.00 GB after). make test: 71 s -> 64 s
# wall, 124 s -> 109 s CPU (two alternating pairs, idle machine; a one-off measurement).
gc.callbacks.append(_freeze_after_full_collection)


def pytest_configure(config):
    # gc.get_referrers does not search frozen objects, so Hypothesis' check that the PRNG it
    # registers is referenced (its own thread-local Random, held by a frozen object) comes up
    # empty and warns; it registers the PRNG all the same (hypothesis/internal/entropy.py)
    config.addinivalue_line(
        "filterwarnings", "ignore:It looks like `register_random` was passed:hypothesis.errors.HypothesisWarning")

#: Stand-ins for a drawn figure's bytes: a PNG signature and an empty SVG.
UNDRAWN_PNG = b"\x89PNG\r\n\x1a\n"
UNDRAWN_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"/>'


@pytest.fixture
def undrawn_figures(monkeypatch):
    """Reports in this test build every figure but do not rasterize it (PNG + SVG drawing
    is about 70% of a report's time). For tests that check a report's tables, findings and
    header text only; the drawn page is checked by tests/test_report.py's ``sim_report``
    tests and tests/test_report_outputs.py."""
    from refusalstats.reporting import sections

    def undrawn(fig, key, caption):
        fig.clear()  # as render() releases it
        return sections.FigureItem(key, caption, UNDRAWN_PNG, UNDRAWN_SVG)

    monkeypatch.setattr(sections, "render", undrawn)



@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """With ``-n 2 --dist loadgroup`` (``make test``): tests that share an expensive fixture
    run on one worker, so it is built once. Under plain ``--dist load`` each worker built it:
    the drawn paper report (8-10 s) and the hierarchical fits were made twice.

    * a module-scoped fixture of the test's own module: the module's group;
    * a session-scoped fixture of a sub-folder's conftest (tests/inference's tiny model and
      backend, ~2 s to train and save): that folder's group.

    Other tests are distributed one by one."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        module = getattr(item, "module", None)
        if info is None or module is None or item.get_closest_marker("xdist_group"):
            continue
        path = item.nodeid.split("::")[0]
        for name in info.names_closure:
            defs = info.name2fixturedefs.get(name)
            if not defs:
                continue
            scope, base = defs[-1].scope, defs[-1].baseid
            if scope == "module" and base == path:
                item.add_marker(pytest.mark.xdist_group(name=module.__name__))
                break
            if scope == "session" and base not in ("", "tests") and path.startswith(base + "/"):
                item.add_marker(pytest.mark.xdist_group(name=base))
                break


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the ids to the scheduler
def pytest_collection_finish(session):
    """pytest-xdist 3.8 tells the scheduler a test's group by appending ``@group`` to
    ``item._nodeid``; pytest 9 reads node ids from ``item._id``, so the suffix was lost and
    ``loadgroup`` ran as ``load``. Apply the suffix where it is missing (workers only)."""
    if not (hasattr(session.config, "workerinput") and session.config.getvalue("loadgroup")):
        return
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        if mark is None or "@" in item.nodeid.rsplit("]", 1)[-1].rsplit("::", 1)[-1]:
            continue
        group = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
        ident = getattr(item, "_id", None)
        if ident is not None and hasattr(type(ident), "parse"):
            item._id = type(ident).parse(f"{item.nodeid}@{group}")
