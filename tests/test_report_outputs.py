"""Issue 20: the report's files are written atomically, named safely, and labels cannot
reorder the text around them."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.reporting import html as H

W2_OPTS = {"w2": {"n_boot": 50, "n_perm": 20}}


def _table(task_names=("nli", "politeness"), personas=("Man", "Woman", "Atheist"), seed=0):
    rng = np.random.default_rng(seed)
    n = 240
    return pd.DataFrame({
        "model": rng.choice(["m1", "m2"], n),
        "task": rng.choice(list(task_names), n),
        "persona": rng.choice(list(personas), n),
        "prompt": rng.choice(["p1", "p2"], n),
        "item_id": rng.integers(0, 40, n),
        "refusal": rng.integers(0, 2, n),
    })


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _report(df, out, **kw):
    return rs.report(df, out=out, hierarchical=False, options=W2_OPTS, progress=False,
                     cluster=None, **kw)


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A report folder of ``_table()`` (figures built, not rasterized), made once; tests that
    need an earlier report in place copy it (the same files report() wrote)."""
    from refusalstats.reporting import sections

    def undrawn(fig, key, caption):  # as conftest's undrawn_figures, for a module fixture
        fig.clear()
        return sections.FigureItem(key, caption, b"\x89PNG\r\n\x1a\n", b"<svg/>")

    out = tmp_path_factory.mktemp("previous") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sections, "render", undrawn)
        _report(_table(), out)
    return out


def _copy_of(previous, out):
    shutil.copytree(previous, out)
    return out


@pytest.mark.usefixtures("undrawn_figures")  # files and text are checked, not drawings
@pytest.mark.parametrize("fail_at", ["sections", "page"])
def test_a_report_killed_midway_leaves_the_previous_report_intact(tmp_path, monkeypatch,
                                                                  fail_at, previous):
    out = _copy_of(previous, tmp_path / "report")
    before = _files(out)
    assert "report.html" in before and any(k.startswith("figures/") for k in before)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed")

    # 'page' fails after every figure and table is made (the old code had written them)
    monkeypatch.setattr(H, "_page" if fail_at == "page" else "S", _Boom() if fail_at == "sections"
                        else boom)
    with pytest.raises(KeyboardInterrupt):
        _report(_table(seed=1), out, title="another report")
    assert _files(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no leftovers


class _Boom:
    """Stands in for the sections module: building the sections is killed."""

    def __getattr__(self, name):
        from refusalstats.reporting import sections

        if name == "build":
            def build(ctx):
                raise KeyboardInterrupt("killed")
            return build
        return getattr(sections, name)


@pytest.mark.usefixtures("undrawn_figures")  # files and text are checked, not drawings
def test_a_new_report_replaces_the_old_one_whole_and_keeps_other_files(tmp_path, previous):
    out = _copy_of(previous, tmp_path / "report")
    stale = out / "figures" / "stale_figure.png"
    stale.write_bytes(b"old")
    _report(_table(seed=1), out)
    assert not stale.exists()  # the folder is the new report, not old + new
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine")
    rep = _report(_table(), mixed)
    assert (mixed / "notes.txt").read_text() == "mine" and rep.path.exists()


def test_labels_with_slashes_make_safe_file_names_and_fail_nothing(tmp_path):
    df = _table(task_names=("a/b", "../up"))
    out = tmp_path / "report"
    rep = _report(df, out)
    for p in [*rep.figures.values(), *rep.tables.values()]:
        assert p.exists() and p.parent.parent == out, p
    assert not (tmp_path / "up").exists() and not list(out.rglob("*/a/*"))
    page = rep.path.read_text()
    for p in rep.figures.values():
        assert f'href="figures/{p.name}"' in page
    assert H._file_stem("a/b") != H._file_stem("a_b")


def test_an_unwritable_output_fails_before_the_analyses(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("x")
    called = []
    monkeypatch.setattr(H.S, "build", lambda ctx: called.append(1) or [])
    with pytest.raises(NotADirectoryError, match="is a file"):
        _report(_table(), target)
    assert called == []


@pytest.mark.usefixtures("undrawn_figures")  # files and text are checked, not drawings
def test_a_right_to_left_override_in_a_label_is_isolated(tmp_path):
    evil = "Man\u202e"
    df = _table(personas=(evil, "Woman", "Atheist"))
    rep = _report(df, tmp_path / "r")
    page = rep.path.read_text()
    n = page.count("\u202e")
    assert n > 0
    # every occurrence sits inside an isolate that closes right after the label
    assert page.count(f"\u2068{evil}\u2069") == n
    assert "unicode-bidi: isolate" in page
    assert H._esc("x\u202ey") == "x\u202ey\u202c"


def test_a_cli_figure_killed_while_saving_leaves_the_previous_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from refusalstats.cli import main

    table = tmp_path / "t.parquet"
    rs.write_responses(_table(), table)
    plot = tmp_path / "w2.png"
    plot.write_bytes(b"the previous figure")
    real = Figure.savefig

    def killed(self, fname, *a, **k):
        with open(fname, "wb") as fh:
            fh.write(b"half a pn")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(Figure, "savefig", killed)
    rc = main(["sensitivity", str(table), "--inputs", "task", "--boot", "20", "--perm", "10",
               "--no-progress", "--cluster", "none", "--plot", str(plot)])
    assert rc != 0
    assert plot.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(Figure, "savefig", real)
    assert main(["sensitivity", str(table), "--inputs", "task", "--boot", "20", "--perm", "10",
                 "--no-progress", "--cluster", "none", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
