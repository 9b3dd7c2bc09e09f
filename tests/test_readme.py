"""Every `refusalstats` line of the README's CLI quickstart runs on the README's own table.

The lines are read from README.md (section "Quickstart on the command line"), so a line
added or changed there is tested as written. Only three things differ from a user's run:
the table is simulated at a smaller ``--scale`` (seconds, not minutes), replicate and
draw counts are lowered, the `bayes` line fits by the nested Laplace approximation
(``--method laplace``) rather than NUTS, and the report skips its hierarchical model (fitted
by the `bayes` line already) and builds its figures without rasterizing them (the drawn
page is tested in tests/test_report.py, the CLI's drawn report in its test_cli_report). Lines that need the user's own files (a dump, task files, model
weights) are skipped by name, and the test fails if the README gains a command that is
neither run nor listed here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from refusalstats.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

#: Commands whose README line needs the user's own files.
NEEDS_USER_FILES = {
    "import": "a clone of peluz/persona-behavior",
    "design": "the user's task files (XNLI / POPQUORN)",
    "generate": "model weights",
}

#: Options set lower than the README's so that the test takes seconds.
FASTER = {"--scale": "0.005", "--boot": "40", "--n-boot": "39", "--perm": "20"}
#: Options added to a command (same reason).
EXTRA = {
    # the nested Laplace fit (about 5 s) instead of NUTS (about 45 s under load): the line's
    # formula, table and printout are what this test checks; NUTS itself is tested in
    # tests/test_hierarchical.py and the CLI's laplace path in tests/test_cli.py
    "bayes": ["--method", "laplace", "--draws", "40", "--tune", "40", "--chains", "2"],
    "report": ["--no-hierarchical", "--n-boot", "20", "--n-perm", "20", "--quiet"],
}


def readme_cli_lines(text: str) -> list[list[str]]:
    """The `refusalstats` command lines of the CLI quickstart, as argument lists."""
    section = text.split("## Quickstart on the command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    block = block.replace("\\\n", " ")  # continuation lines
    lines = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "refusalstats":
            lines.append(words[1:])
    return lines


def _faster(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in FASTER:
            out[i + 1] = FASTER[a]
    return out + EXTRA.get(out[0], [])


LINES = readme_cli_lines(README.read_text())


def test_the_quickstart_is_found_and_every_command_is_accounted_for():
    commands = [a[0] for a in LINES]
    assert commands[0] == "simulate" and "--help" in commands
    run = {"simulate", "rates", "fit", "sensitivity", "bayes", "cochran", "disparity",
           "agreement", "report", "--help"}
    assert set(commands) <= run | set(NEEDS_USER_FILES), set(commands) - run - set(NEEDS_USER_FILES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the README's table, written by the README's own simulate line."""
    import os

    path = tmp_path_factory.mktemp("readme")
    old = os.getcwd()
    os.chdir(path)
    try:
        simulate = next(a for a in LINES if a[0] == "simulate")
        assert main(_faster(simulate)) == 0
        assert Path("table.parquet").exists()
    finally:
        os.chdir(old)
    return path


@pytest.mark.parametrize("args", [a for a in LINES if a[0] != "simulate"],
                         ids=[" ".join(a[:1]) for a in LINES if a[0] != "simulate"])
def test_readme_line_runs(args, workdir, monkeypatch, capsys, request):
    if args[0] in NEEDS_USER_FILES:
        pytest.skip(f"needs {NEEDS_USER_FILES[args[0]]}")
    if args[0] == "report":
        request.getfixturevalue("undrawn_figures")
    monkeypatch.chdir(workdir)
    try:
        rc = main(_faster(args))
    except SystemExit as exc:  # --help exits through argparse
        rc = exc.code
    _out, err = capsys.readouterr()
    assert rc == 0, f"refusalstats {' '.join(args)} -> exit {rc}\n{err[-2000:]}"
    assert "error:" not in err
