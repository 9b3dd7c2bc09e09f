"""The command line's error contract: user errors exit 2 with one line `error: ...` on stderr.

Each case is a kind of bad input a new user tried (issue: "a command line that never shows
a traceback"); `--debug` brings the traceback back for bug reports.
"""

from __future__ import annotations

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
