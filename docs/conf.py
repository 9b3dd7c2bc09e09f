"""Sphinx configuration of the refusalstats docs: the method pages (Markdown, MyST) and the
API reference generated from the numpy-style docstrings (``make docs``).

The build is offline: no intersphinx inventories, MathJax served from ``_static/mathjax``
(the ``sphinx-mathjax-offline`` package) and no theme asset from the network;
``tests/test_docs.py`` checks the built pages for any http(s) script or stylesheet.
"""

from __future__ import annotations

from importlib.metadata import version as _version

project = "refusalstats"
author = "refusalstats contributors"
copyright = f"2025–2026, {author}"
release = _version("refusalstats")
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax: maths render offline
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "make_p2_fixture.py"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["refusalstats.css"]

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True  # one page per object (docs/generated/), index tables in api.rst
autosummary_imported_members = False
autodoc_typehints = "none"  # the numpy docstrings say the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # members are listed by the autosummary class template
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

intersphinx_mapping = {}  # offline build: no inventories fetched

html_theme = "alabaster"
html_title = f"refusalstats {release}"
html_theme_options = {
    "page_width": "1180px",
    "sidebar_width": "260px",
    "fixed_sidebar": False,
    "show_powered_by": False,
}
