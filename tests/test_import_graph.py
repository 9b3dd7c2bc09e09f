"""The package's import graph has no circles (#23): benchmarks/import_graph.py draws it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"
if not _PATH.exists():  # an installed package without the repository around it
    pytest.skip("benchmarks/import_graph.py is not here", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("import_graph", _PATH)
ig = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = ig
_spec.loader.exec_module(ig)

# Circles through imports inside functions that are still open in #23: none. (bayes/ has one
# through type hints only, under TYPE_CHECKING, which the graph does not count.) The last two
# closed: ppi reuses no helper of rates or persona_disparity (intervals, spread,
# _validation.column_names, vocabulary.level_slug hold them; detector_card lives in labels),
# and read_responses lives in sources, which reads one file with table's reader.
STILL_OPEN: set[tuple[str, ...]] = set()


def test_the_circle_finder_finds_circles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert ig.circles(g) == [["a", "b", "c"], ["p", "p.x"]]
    # a package importing its own submodules (and they it) is not a circle between rooms
    assert ig.room_circles(g) == [["a", "b", "c"]]


def test_module_level_imports_have_no_circle():
    """Imports run at import time (TYPE_CHECKING blocks aside) form no circle."""
    graph = ig.import_graph(lazy=False)
    assert len(graph) >= 40  # the walk saw the package, sub-packages and inference/
    assert "refusalstats.counts" in graph["refusalstats.rates"]
    assert ig.room_circles(graph) == []


def test_lazy_imports_add_no_new_circle():
    """With the imports inside functions counted too, no circle remains (formula<->table,
    cli<->demo are gone: default_levels lives in table.py, the report prints itself,
    RankAgreement writes its own blank-tau note; regression model<->results: results refit
    through the model object they hold; rates->ppi->rates, persona_disparity: the shared
    helpers live below both; table<->sources: read_responses lives in sources)."""
    graph = ig.import_graph(lazy=True)  # (one walk: it parses every module of the tree)
    found = {tuple(c) for c in ig.room_circles(graph)}
    assert found <= STILL_OPEN, sorted(found - STILL_OPEN)
    # the lazy walk does see the dispatch arrows that once closed the circles
    assert "refusalstats.ppi" in graph["refusalstats.rates"]
    assert "refusalstats.table" in graph["refusalstats.sources"]


def test_architecture_page_names_every_room():
    """docs/architecture.md is kept true to the tree: every top-level module and
    sub-package of the core is named there (a new room gets its line)."""
    root = _PATH.parents[1]
    page = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    core = root / "src" / "refusalstats"
    rooms = [p.stem for p in core.glob("*.py") if p.stem != "__init__"]
    rooms += [p.name for p in core.iterdir() if (p / "__init__.py").exists()]
    assert len(rooms) >= 20
    missing = [r for r in rooms if f"`{r}.py`" not in page and f"`{r}/`" not in page
               and f"`{r}`" not in page]
    assert missing == [], missing
