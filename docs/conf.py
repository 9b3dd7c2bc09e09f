"""Sphinx configuration of the refusalstats docs: the method pages (Markdown, MyST) and the
API reference generated from the numpy-style docstrings (``make docs``)."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "refusalstats"
author = "refusalstats contributors"
release = _version("refusalstats")
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "make_p2_fixture.py"]

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_typehints = "none"  # the numpy docstrings say the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # members are listed with :members: in api.rst
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

intersphinx_mapping = {}  # offline build: no inventories fetched

html_theme = "alabaster"
html_title = f"refusalstats {release}"
