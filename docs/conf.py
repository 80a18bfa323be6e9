"""Sphinx configuration for c2lst (cookiecutter-scverse style, builds offline)."""

from __future__ import annotations

import os
import sys
import warnings
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

# Keep notebook execution small and single-threaded (the docs build runs on 2 CPU cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# sphinx-autodoc-typehints calls a Sphinx API deprecated in Sphinx 9; the Python warning is noise, not a doc issue.
warnings.filterwarnings("ignore", message=r".*sphinx_autodoc_typehints.*", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r".*sphinx_autodoc_typehints.*", category=PendingDeprecationWarning)

# -- Project information -----------------------------------------------------

info = metadata("c2lst")
project = "c2lst"
author = info.get("Author") or "c2lst developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

# -- General configuration ---------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]

templates_path = ["_templates"]
# no html_static_path: the docs ship no static files, and git keeps no empty `_static` folder for it
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}
master_doc = "index"
default_role = "literal"
nitpicky = False
# The build must work without network access: no intersphinx inventories are fetched.
intersphinx_mapping: dict[str, tuple[str, None]] = {}

# -- autodoc / autosummary / napoleon ----------------------------------------

autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
autodoc_typehints = "description"
typehints_defaults = "comma"
always_document_param_types = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
# c2lst's numpydoc "Returns" sections are prose (what is returned and what is written where), not
# ``name : type`` fields: render them as a paragraph under a "Returns" heading.
napoleon_custom_sections = ["Returns"]

# -- MyST / myst-nb ----------------------------------------------------------

myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("C2LST_NB_EXECUTION_MODE", "cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"

# -- HTML output -------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = "c2lst"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "use_edit_page_button": False,
}
html_show_sourcelink = False


def _drop_typehints_returns_marker(app, what, name, obj, options, lines) -> None:
    """Undo sphinx-autodoc-typehints' ``:`` marker under "Returns" (our Returns sections are prose)."""
    for i in range(len(lines) - 2):
        if lines[i].strip() == "Returns" and set(lines[i + 1].strip()) == {"-"} and lines[i + 2] == ":":
            del lines[i + 2]
            return


def setup(app) -> None:
    """Register the docstring fix between sphinx-autodoc-typehints (priority 499) and napoleon (500)."""
    app.connect("autodoc-process-docstring", _drop_typehints_returns_marker, priority=499)
