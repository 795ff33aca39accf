"""Sphinx configuration for sctorch."""

from importlib import metadata

project = "sctorch"
author = "sctorch developers"
copyright = "2026, sctorch developers"
try:
    release = metadata.version("sctorch")
except metadata.PackageNotFoundError:  # pragma: no cover
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
typehints_document_rtype = False
always_use_bars_union = True
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_theme = "furo"
html_title = "sctorch"
nitpicky = False
suppress_warnings = ["myst.header"]
