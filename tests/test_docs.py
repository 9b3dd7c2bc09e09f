"""The built docs (``make docs``) work offline: no page loads a script or stylesheet from the
network, maths is rendered by a MathJax copy next to the pages, and every object has its page.

Skipped until the docs are built (``make docs`` builds them, then runs this file).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

HTML = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"

pytestmark = pytest.mark.skipif(not (HTML / "index.html").exists(),
                                reason="docs not built (make docs)")

#: a tag that makes the browser fetch something on load: script src, link href (stylesheet,
#: preload, icon), img/iframe/source src, CSS @import / url()
_FETCH = re.compile(
    r"<script[^>]*\bsrc=[\"']([^\"']+)|<link[^>]*\bhref=[\"']([^\"']+)|"
    r"<(?:img|iframe|source|embed)[^>]*\bsrc=[\"']([^\"']+)|@import\s+(?:url\()?[\"']?([^\"')\s;]+)",
    re.IGNORECASE)


def _pages() -> list[Path]:
    return sorted(HTML.rglob("*.html"))


def _remote(url: str) -> bool:
    return url.startswith(("http:", "https:", "//"))


def test_no_page_loads_anything_from_the_network():
    bad = []
    for page in _pages():
        for m in _FETCH.finditer(page.read_text(encoding="utf-8")):
            url = next(g for g in m.groups() if g)
            if _remote(url):
                bad.append(f"{page.relative_to(HTML)}: {url}")
    for css in HTML.rglob("*.css"):
        for url in re.findall(r"(?:@import\s+|url\()[\"']?([^\"')\s;]+)", css.read_text("utf-8")):
            if _remote(url):
                bad.append(f"{css.relative_to(HTML)}: {url}")
    assert not bad, bad[:20]


def test_the_scanner_sees_a_remote_script():  # the check above can fail
    page = '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">'
    assert [g for m in _FETCH.finditer(page) for g in m.groups() if g and _remote(g)]


def test_maths_is_rendered_by_a_local_mathjax():
    pages = [p for p in _pages() if "\\(" in p.read_text("utf-8") or "\\[" in p.read_text("utf-8")]
    assert pages, "no page has maths"
    for page in pages:
        text = page.read_text("utf-8")
        srcs = [s for s in re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", text) if "mathjax" in s.lower()]
        assert srcs, f"{page.name}: maths but no MathJax script"
        for s in srcs:
            assert not _remote(s)
            assert (page.parent / s.split("?")[0]).resolve().exists(), f"{page.name}: {s} missing"


def test_one_page_per_object_with_index_tables():
    gen = HTML / "generated"
    for name in ("refusalstats.logit", "refusalstats.LogitResults", "refusalstats.report",
                 "refusalstats.plot.coefficients", "refusalstats.dumps.xstest",
                 "refusalstats.inference.run_generation", "refusalstats.inference.load_task",
                 "refusalstats.inference.DecodingParams", "refusalstats.inference.collect_runs"):
        assert (gen / f"{name}.html").exists(), name
    api = (HTML / "api.html").read_text("utf-8")
    assert api.count('class="autosummary') >= 10
    assert "generated/refusalstats.inference.run_generation.html" in api


def test_footer_names_the_copyright_holder():
    text = (HTML / "index.html").read_text("utf-8")
    assert "©." not in text and "&#169;." not in text
    assert re.search(r"(©|&#169;|&copy;)\s*\S.*refusalstats contributors", text)
