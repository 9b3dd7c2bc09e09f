"""`refusalstats demo`: every step shows its section on the simulated full study."""

from __future__ import annotations

import inspect
import warnings

import pytest

import refusalstats as rs
from refusalstats import demo
from refusalstats.demo import FULL_STUDY


@pytest.fixture(scope="module")
def study():
    return rs.simulate_paper(scale=0.005, seed=0, **FULL_STUDY)


def test_demo_steps_show_every_section(tmp_path, capsys):
    steps = (demo.demo_rates, demo.demo_persona_free, demo.demo_answers, demo.demo_p2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = demo.run_demo(tmp_path, scale=0.005, seed=0, steps=steps)
    out = capsys.readouterr().out
    for heading in ("Refusal rate (%) by model x task", "With and without a persona",
                    "Refusal detectors on", "Cochran's Q across personas",
                    "Disparity: sd of the personas", "Kendall's W"):
        assert heading in out, heading
    assert "(no " not in out  # a step that finds nothing to show says "(no ...)"
    assert (run.out / "responses.parquet").exists()
    # P1 §4.4's published persona effects are printed next to the simulated ones
    assert "12.38" in out and "17.27" in out
    assert "misses 3% of refusals and flags 0.2% of answers" in out


@pytest.mark.usefixtures("undrawn_figures")  # tables and text are checked, not figures
def test_report_on_the_full_study_skips_no_section(study, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = rs.report(study, out=tmp_path, hierarchical=False, progress=False,
                        options={"w2": {"n_boot": 20, "n_perm": 20}})
    # the hierarchical model is left out here only to keep the test short (the demo fits it)
    assert set(rep.skipped) <= {"hierarchical"}, rep.skipped
    assert "persona_vs_free" in rep.tables


def test_demo_states_the_bayes_defaults_of_their_one_home():
    from refusalstats.bayes import HierarchicalModel
    from refusalstats.cli import build_parser

    params = inspect.signature(HierarchicalModel.fit).parameters
    assert demo._bayes_defaults() == {k: params[k].default for k in ("chains", "tune", "draws")}
    bayes = build_parser()._subparsers._group_actions[0].choices["bayes"]
    defaults = {a.dest: a.default for a in bayes._actions}
    assert {k: defaults[k] for k in ("chains", "tune", "draws")} == demo._bayes_defaults()
    assert "1000 + 1000" not in inspect.getsource(demo)
