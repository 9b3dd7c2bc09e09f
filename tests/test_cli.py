"""The command line's error contract: user errors exit 2 with one line `error: ...` on stderr.

Each case is a kind of bad input a new user tried (issue: "a command line that never shows
a traceback"); `--debug` brings the traceback back for bug reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.cli import main


@pytest.fixture
def table(tmp_path):
    df = rs.simulate_items(n_items=60, k=5, seed=3)
    df["model"] = "m"
    return rs.write_responses(df, tmp_path / "t.parquet")


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_empty_csv(tmp_path, capsys):
    f = tmp_path / "empty.csv"
    f.write_text("")
    rc, _, err = _run(["rates", str(f)], capsys)
    _assert_one_line_error(rc, err, "empty.csv", "empty (0 bytes)")


def test_truncated_parquet(table, tmp_path, capsys):
    bad = tmp_path / "trunc.parquet"
    bad.write_bytes(table.read_bytes()[:300])
    rc, _, err = _run(["rates", str(bad)], capsys)
    _assert_one_line_error(rc, err, "not a valid Parquet file")


def test_missing_file(tmp_path, capsys):
    rc, _, err = _run(["fit", "refusal ~ task", str(tmp_path / "nope.csv")], capsys)
    _assert_one_line_error(rc, err, "nope.csv")


def test_output_equal_to_input_is_refused(table, capsys):
    before = table.read_bytes()
    rc, _, err = _run(["rates", str(table), "--csv", str(table)], capsys)
    _assert_one_line_error(rc, err, "--csv", "input table")
    assert table.read_bytes() == before


@pytest.mark.parametrize("value", ["-5", "0", "x"])
def test_replicates_must_be_positive(table, capsys, value):
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error: status 2
        main(["sensitivity", str(table), "--boot", value])
    assert exc.value.code == 2
    assert "--boot" in capsys.readouterr().err


def test_bad_output_extension_fails_before_the_work(tmp_path, capsys):
    rc, out, err = _run(["simulate", "-o", str(tmp_path / "keep.xlsx"), "--scale", "0.01"], capsys)
    _assert_one_line_error(rc, err, "keep.xlsx")
    assert not (tmp_path / "keep.xlsx").exists() and out == ""


def test_unknown_cluster_column_speaks_cli(table, capsys):
    rc, _, err = _run(["rates", str(table), "--by", "task", "--cluster", "itemid"], capsys)
    _assert_one_line_error(rc, err, "itemid", "--cluster none")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["rates", str(tmp_path / "nope.parquet"), "--debug"])


def test_semicolon_csv_is_read(tmp_path, capsys):
    df = rs.simulate_items(n_items=30, k=4, seed=1)
    df["model"] = "m"
    f = tmp_path / "semi.csv"
    df.to_csv(f, sep=";", index=False)
    rc, out, err = _run(["rates", str(f), "--by", "task", "--cluster", "none"], capsys)
    assert rc == 0, err
    got = out
    expect = df.groupby("task", observed=True)["refusal"].sum()
    for level, k in expect.items():
        assert f"{level} " in got and f" {k} " in got
    # an explicit --sep wins over the guess (here: wrong on purpose, so the table is one column)
    rc, _, err = _run(["rates", str(f), "--by", "task", "--sep", ","], capsys)
    assert rc == 2 and "Traceback" not in err


def test_warnings_are_one_line_without_source(table, capsys):
    rc, _, err = _run(["rates", str(table), "--by", "task"], capsys)
    assert rc == 0
    warn = [ln for ln in err.splitlines() if ln.strip()]
    assert warn and all(ln.startswith("warning:") for ln in warn), err
    assert "--cluster none" in warn[0]


# ------------------------------------------------------------------ analysis subcommands
@pytest.fixture
def blocks(tmp_path):
    """Complete blocks: 40 items x 4 personas per model, two of them control personas."""


    rng = np.random.default_rng(0)
    rows = [{"model": m, "task": "t", "persona": p, "prompt": "p1", "item_id": i,
                 "refusal": int(rng.random() < 0.2), "persona_group": "control" if p in "xy" else "g"}
            for m in "abc" for i in range(40) for p in "xyzw"]
    return rs.write_responses(pd.DataFrame(rows), tmp_path / "blocks.parquet"), pd.DataFrame(rows)


def test_cochran_command_matches_the_function(blocks, tmp_path, capsys):
    path, df = blocks
    out = tmp_path / "q.csv"
    rc, _text, err = _run(["cochran", str(path), "--by", "model", "--method", "chi2",
                          "--csv", str(out)], capsys)
    assert rc == 0, err
    got = pd.read_csv(out)
    want = rs.cochran_q(df, by="model", method="chi2")
    np.testing.assert_allclose(got["Q"], want["Q"])
    np.testing.assert_allclose(got["p_value"], want["p_value"])


def test_agreement_and_disparity_commands(blocks, capsys):
    path, df = blocks
    rc, text, err = _run(["agreement", str(path), "--format", "markdown"], capsys)
    assert rc == 0, err
    w = rs.rank_agreement(df).concordance["W"].iloc[0]
    assert f"| {w:.4g} |" in text
    rc, text, err = _run(["disparity", str(path), "--cluster", "none"], capsys)
    assert rc == 0, err
    d = rs.disparity(df, cluster=None)["disparity"].iloc[0]
    assert f"{d:.6g}" in text



def test_markdown_and_latex_format_p_values():
    from refusalstats.reporting.export import format_p, to_latex, to_markdown

    df = pd.DataFrame({"term": ["persona", "task_x"], "F": [2.5, 10.0], "df": [14, 2],
                       "p_value": [0.0312, 1e-9]})
    md = to_markdown(df)
    assert md.splitlines()[1] == "|---|---:|---:|---:|"
    assert "| task_x | 10 | 2 | < 0.001 |" in md and "| persona | 2.5 | 14 | 0.031 |" in md
    tex = to_latex(df)
    assert r"task\_x & 10 & 2 & $<$ 0.001 \\" in tex and r"\begin{tabular}{lrrr}" in tex
    assert format_p(0.001) == "0.001" and format_p(0.000999) == "< 0.001"


def test_sensitivity_command_clusters_by_default(table, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rc, text, err = _run(["sensitivity", str(table), "--inputs", "task,persona", "--boot", "50",
                          "--perm", "50", "--no-progress", "--csv", str(a)], capsys)
    assert rc == 0, err
    assert "clustered by item_id (60 clusters)" in text
    rc, text, err = _run(["sensitivity", str(table), "--inputs", "task,persona", "--boot", "50",
                          "--perm", "50", "--no-progress", "--cluster", "none", "--csv", str(b)],
                         capsys)
    assert rc == 0 and "rows independent" in text
    clustered, plain = pd.read_csv(a), pd.read_csv(b)
    np.testing.assert_allclose(clustered["iota"], plain["iota"])  # same estimate
    direct = rs.w2_sensitivity(rs.read_responses(table), inputs=["task", "persona"], n_boot=50,
                               n_perm=50, seed=0, progress=False, cluster="item_id")
    np.testing.assert_allclose(clustered["null_q95"], direct.table["null_q95"])
    np.testing.assert_allclose(clustered["ci_low"], direct.table["ci_low"])


def test_sensitivity_command_streams_a_folder_of_shards(table, tmp_path, capsys):
    df = rs.read_responses(table)
    folder = tmp_path / "w2"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(folder / f"part-{i}.parquet")
    out = tmp_path / "w2.csv"
    rc, _, err = _run(["sensitivity", str(folder), "--inputs", "task,persona", "--boot", "40",
                       "--perm", "40", "--no-progress", "--csv", str(out)], capsys)
    assert rc == 0, err
    direct = rs.w2_sensitivity(df, inputs=["task", "persona"], n_boot=40, n_perm=40, seed=0,
                               progress=False, cluster="item_id")
    got = pd.read_csv(out)
    for col in ("iota", "ci_low", "ci_high", "p_value"):
        np.testing.assert_allclose(got[col], direct.table[col], rtol=1e-12)


def test_sensitivity_reads_the_columns_a_numeric_input_needs(tmp_path, capsys):
    # a numeric input cannot stream as counts: the command reads the columns it uses (the
    # cluster column included, so clustering is the same as in memory) and says so
    df = rs.simulate_items(n_items=40, k=4, seed=1)
    df["x"] = np.random.default_rng(0).normal(size=len(df))
    df["model"] = "m"
    path = tmp_path / "x.parquet"
    df.to_parquet(path)
    out = tmp_path / "w2.csv"
    rc, _, err = _run(["sensitivity", str(path), "--inputs", "task,x", "--boot", "30",
                       "--perm", "30", "--no-progress", "--csv", str(out)], capsys)
    assert rc == 0, err
    assert "numeric input 'x'" in err and "into memory" in err
    want = rs.w2_sensitivity(df, inputs=["task", "x"], n_boot=30, n_perm=30, seed=0,
                             progress=False, cluster="item_id").table
    np.testing.assert_allclose(pd.read_csv(out)["ci_high"], want["ci_high"], rtol=1e-12)


def test_nan_only_matters_in_columns_the_command_uses(tmp_path, capsys):
    df = rs.simulate_items(n_items=30, k=4, seed=2)
    df["model"] = "m"
    df["persona"] = df["persona"].astype(str)
    df.loc[3, "persona"] = None
    f = tmp_path / "nan.csv"
    df.to_csv(f, index=False)
    rc, _, err = _run(["rates", str(f), "--by", "task"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["fit", "refusal ~ task", str(f)], capsys)
    assert rc == 0, err
    rc, _, err = _run(["rates", str(f), "--by", "persona"], capsys)
    _assert_one_line_error(rc, err, "'persona' has 1 missing value(s) (first rows [3])")


def test_rates_and_fit_read_a_folder_of_shards(tmp_path, capsys):
    df = rs.simulate_items(n_items=40, k=5, seed=4)
    df["model"] = "m"
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(folder / f"part-{i}.parquet")
    csv = tmp_path / "r.csv"
    rc, _, err = _run(["rates", str(folder), "--by", "task", "--csv", str(csv)], capsys)
    assert rc == 0, err
    want = rs.refusal_rates(df, by="task", cluster="item_id")
    np.testing.assert_allclose(pd.read_csv(csv)["ci_low"], want["ci_low"], rtol=1e-12)
    rc, out, err = _run(["fit", "refusal ~ task + persona", str(folder)], capsys)
    assert rc == 0, err
    # the default CR2 and its HTZ test, as for the same rows in a DataFrame (#19)
    assert "cluster-robust HTZ Wald test" in out and "Satterthwaite" in out


def test_analysis_commands_read_a_folder_of_shards(blocks, tmp_path, capsys):
    _, df = blocks
    folder = tmp_path / "blocks"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(folder / f"part-{i}.parquet")
    for argv, want in [
        (["cochran", "--by", "model", "--method", "chi2"],
         rs.cochran_q(df, by="model", method="chi2")["Q"]),
        (["cochran", "--by", "model", "--method", "chi2", "--block", "item_id"],  # old spelling
         rs.cochran_q(df, by="model", method="chi2")["Q"]),
        (["disparity", "--n-boot", "20"],
         rs.disparity(df, n_boot=20, seed=0)["ci_high"]),
    ]:
        out = tmp_path / "out.csv"
        rc, _, err = _run([argv[0], str(folder), *argv[1:], "--csv", str(out)], capsys)
        assert rc == 0, err
        np.testing.assert_allclose(pd.read_csv(out)[want.name], want, rtol=1e-12)
    rc, text, err = _run(["agreement", str(folder / "*.parquet"), "--format", "markdown"], capsys)
    assert rc == 0, err
    assert f"| {rs.rank_agreement(df).concordance['W'].iloc[0]:.4g} |" in text
    rc, _, err = _run(["cochran", str(folder), "--cluster", "none"], capsys)
    _assert_one_line_error(rc, err, "Cochran's Q needs blocks")


def test_disparity_estimator_option(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rates = {"x": 0.20, "y": 0.26, "z": 0.10, "w": 0.45}  # x, y control; z, w the category
    rows = [{"model": "m", "task": "t", "persona": p, "prompt": "p1", "item_id": i,
             "refusal": int(rng.random() < r), "persona_group": "control" if p in "xy" else "g"}
            for i in range(150) for p, r in rates.items()]
    df = pd.DataFrame(rows)
    path = rs.write_responses(df, tmp_path / "d.parquet")
    plug = rs.disparity(df, cluster=None, estimator="plug-in")["disparity"].iloc[0]
    corrected = rs.disparity(df, cluster=None)["disparity"].iloc[0]
    assert abs(plug - corrected) > 0.05  # the option matters on this table
    for option, want in (("plug-in", plug), ("corrected", corrected)):
        out = tmp_path / f"{option}.csv"
        rc, _, err = _run(["disparity", str(path), "--cluster", "none", "--estimator", option,
                           "--csv", str(out)], capsys)
        assert rc == 0, err
        assert pd.read_csv(out)["disparity"].iloc[0] == pytest.approx(want)


def test_demo_is_one_explicit_list_of_steps(tmp_path, monkeypatch, capsys):
    from refusalstats import demo

    assert [s.__name__ for s in demo.STEPS] == [
        "demo_rates", "demo_persona_free", "demo_answers", "demo_p2", "demo_sensitivity",
        "demo_logit", "demo_hierarchical", "demo_report"]
    seen = []
    monkeypatch.setattr(demo, "STEPS", (lambda df, run: seen.append((len(df), run.seed)),
                                        demo.demo_rates))
    rc, out, _ = _run(["demo", "-o", str(tmp_path / "d"), "--scale", "0.005", "--seed", "4"], capsys)
    assert rc == 0
    table = rs.read_responses(tmp_path / "d" / "responses.parquet")
    assert seen == [(len(table), 4)]
    assert "Refusal rate (%) by model x task" in out and "demo finished" in out


def test_shared_options_are_defined_once():
    import argparse

    from refusalstats.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps: dict[str, set] = {}
    for name, p in sub.choices.items():
        opts = {o: a for a in p._actions for o in a.option_strings}
        assert "--debug" in opts, name  # every command documents --debug
        for o in ("--seed", "--conf", "--cluster", "--sep", "--debug", "--format"):
            if o in opts:
                helps.setdefault(o, set()).add((opts[o].help, opts[o].default, opts[o].type))
    assert {o: len(h) for o, h in helps.items()} == dict.fromkeys(helps, 1)
    assert set(helps) == {"--seed", "--conf", "--cluster", "--sep", "--debug", "--format"}


def test_bayes_command_streams_a_folder_and_takes_the_fit_defaults(table, tmp_path, capsys):
    import inspect

    from refusalstats.bayes import HierarchicalModel
    from refusalstats.cli import build_parser

    fit_sig = inspect.signature(HierarchicalModel.fit).parameters
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and "bayes" in a.choices)
    opts = {a.dest: a for a in sub.choices["bayes"]._actions}
    for name in ("draws", "tune", "chains", "sampler", "method", "target_accept"):
        assert opts[name].default == fit_sig[name].default, name
    assert "laplace" in opts["method"].choices

    df = rs.read_responses(table)
    folder = tmp_path / "b"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 2)):
        df.iloc[part].to_parquet(folder / f"part-{i}.parquet")
    formula = "refusal ~ task + (1|persona)"
    rc, _text, err = _run(["bayes", formula, str(folder), "--method", "laplace",
                          "--effects", "persona", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    want = rs.hierarchical(formula, df, method="laplace", seed=0, progress=False)
    got = pd.read_csv(tmp_path / "o" / "effects.csv")
    np.testing.assert_allclose(got["effect"], want.effects("persona")["effect"], rtol=1e-10)


# ------------------------------------------------------------------ issue 21: messages a newcomer meets
def test_generate_names_the_missing_prompts_table_and_how_to_make_it(tmp_path, capsys):
    pytest.importorskip("refusalstats.inference")
    rc, _, err = _run(["generate", str(tmp_path / "prompts.parquet"), "--model", "m",
                       "-o", str(tmp_path / "run")], capsys)
    _assert_one_line_error(rc, err, "prompts.parquet", "does not exist", "refusalstats design")


def test_a_bare_missing_path_is_called_a_missing_file(capsys, monkeypatch):
    from refusalstats import cli

    def boom(args):
        raise FileNotFoundError("prompts.parquet")  # what pyarrow raises

    monkeypatch.setattr(cli, "_cmd_rates", boom)
    rc, _, err = _run(["rates", "x.parquet"], capsys)
    _assert_one_line_error(rc, err, "no such file or folder: prompts.parquet")


def test_design_suggests_the_map_option_not_python(tmp_path, capsys):
    pytest.importorskip("refusalstats.inference")
    f = tmp_path / "pol.csv"
    f.write_text("text,rating\nhello,1\nbye,5\n")
    rc, _, err = _run(["design", "--task", f"politeness={f}", "-o", str(tmp_path / "p.parquet")],
                      capsys)
    _assert_one_line_error(rc, err, "--map politeness:gold_label=")
    assert "columns={" not in err


def test_debug_shows_the_original_error_not_the_cli_wrapper(table):
    from refusalstats.formula import FormulaError

    with pytest.raises(FormulaError, match="not a level"):
        main(["fit", "refusal ~ persona", str(table), "--reference", "persona=nobody", "--debug"])


def test_rates_prints_percentages_and_writes_proportions(table, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    rc, out, err = _run(["rates", str(table), "--by", "task", "--csv", str(csv)], capsys)
    assert rc == 0, err
    want = rs.refusal_rates(rs.read_responses(table), by="task")
    header = out.splitlines()[0].split()
    assert "%" in header and "rate" in header and "ci_low" in header
    assert f"{100 * want['rate'].iloc[0]:.2f}" in out
    np.testing.assert_allclose(pd.read_csv(csv)["rate"], want["rate"])


def test_percent_table_keeps_rare_rates_visible():
    from refusalstats.cli import _percent_table

    t = _percent_table(pd.DataFrame({"rate": [0.0, 0.000123, 0.5], "n": [1, 2, 3]}))
    assert list(t.columns) == ["rate %", "n"]
    assert t["rate %"].tolist() == ["0.00", "0.012", "50.00"]


def test_where_keeps_matching_rows_and_explains_typos(blocks, capsys):
    path, df = blocks
    rc, out, err = _run(["cochran", str(path), "--where", "model=a", "--method", "chi2"], capsys)
    assert rc == 0, err
    want = rs.cochran_q(df[df["model"] == "a"], method="chi2")
    assert f"{want['Q'].iloc[0]:.6g}" in out
    rc, _, err = _run(["cochran", str(path), "--where", "Model=a"], capsys)
    _assert_one_line_error(rc, err, "no column 'Model'", "did you mean 'model'")
    rc, _, err = _run(["disparity", str(path), "--where", "model=q"], capsys)
    _assert_one_line_error(rc, err, "no row has model = 'q'", "['a', 'b', 'c']")


def test_agreement_notes_blank_taus_of_a_model_that_never_refuses(blocks, capsys):
    _, df = blocks
    df = df.copy()
    df.loc[df["model"] == "c", "refusal"] = 0
    path = rs.write_responses(df, blocks[0].parent / "never.parquet")
    rc, out, err = _run(["agreement", str(path)], capsys)
    assert rc == 0, err
    assert "blank tau" in out and "c (0%)" in out


def test_simulate_full_study_writes_every_setting(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    rc, _, err = _run(["simulate", "--scale", "0.005", "--full-study", "-o", str(out)], capsys)
    assert rc == 0, err
    t = rs.read_responses(out)
    assert set(t["setting"].astype(str)) == {"persona", "persona-free"}
    assert set(t["design"].astype(str)) == {"p1", "complete"} and "response" in t.columns


def test_inference_commands_come_from_entry_points(monkeypatch, capsys):
    """design/generate/collect are the inference part's (refusalstats.inference.cli),
    registered through the refusalstats.commands entry points (#23); when the part does not
    import, the command still exists and says what to install (exit 2)."""
    import importlib.metadata as md

    from refusalstats import cli

    eps = list(md.entry_points(group=cli.COMMAND_ENTRY_POINTS))
    assert sorted(ep.name for ep in eps) == ["collect", "design", "generate"]
    assert {ep.value.split(":")[0] for ep in eps} == {"refusalstats.inference.cli"}

    class Broken:
        name, value = "design", "refusalstats.inference.cli:add_design"

        def load(self):
            raise ImportError("No module named 'torch'", name="torch")

    monkeypatch.setattr(md, "entry_points", lambda group: [Broken()])
    assert cli.main(["design", "--task", "nli=x.jsonl", "-o", "p.parquet"]) == 2
    err = capsys.readouterr().err
    assert "needs the inference part" in err and "pip install 'refusalstats[inference]'" in err
