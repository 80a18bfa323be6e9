"""Package-level behaviour: lazy subpackages and warning hygiene."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import c2lst
from c2lst._utils import quiet_io_warnings


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (so imports and logging start clean); return its stderr."""
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stderr


def test_import_is_lazy_and_cli_help_is_light():
    code = (
        "import sys, c2lst, c2lst._cli; heavy = {'torch', 'diffusers', 'spatialdata', 'scanpy'} & set(sys.modules);"
        " assert not heavy, heavy"
    )
    _python(code)


def test_spatial_evaluation_does_not_import_squidpy():
    """Moran's I comes from scanpy: squidpy (seconds of import) is not a dependency."""
    code = (
        "import sys, numpy as np, c2lst.tl._evaluate_prediction as e; rng = np.random.default_rng(0);"
        " xy = rng.uniform(0, 9, (30, 2)); i = e.morans_i(np.c_[xy[:, 0], rng.normal(size=30)], xy);"
        " assert i[0] > 0.5 and 'squidpy' not in sys.modules, (i, 'squidpy' in sys.modules)"
    )
    _python(code)


def test_metrics_do_not_import_torch():
    """``c2lst.metrics`` is numpy/scipy (scanpy on first use of Moran's I): no torch, no AnnData bookkeeping."""
    code = (
        "import sys, c2lst; m = c2lst.metrics; import c2lst.metrics as mm; assert m is mm;"
        " assert m.pearson([1., 2., 3.], [3., 5., 7.]) > 0.999;"
        " heavy = {'torch', 'diffusers', 'spatialdata', 'anndata'} & set(sys.modules); assert not heavy, heavy"
    )
    _python(code)


def test_logger_propagates_and_falls_back_to_stderr():
    """Users' logging configuration receives c2lst's records; without one, c2lst prints them itself, once."""
    code = (
        "import logging, c2lst._logging as L; L.logger.warning('first');"
        " logging.basicConfig(format='ROOT %(name)s %(message)s'); L.logger.warning('second')"
    )
    assert _python(code).splitlines() == ["c2lst: first", "ROOT c2lst second"]


def test_lazy_attributes():
    assert {"datasets", "metrics", "models", "pl", "pp", "tl"} <= set(dir(c2lst))
    assert c2lst.tl.synthesize.__module__.startswith("c2lst.tl")
    from c2lst import pl

    assert pl is c2lst.pl
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        c2lst.nope  # noqa: B018


def test_quiet_io_warnings_only_drops_known_noise():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_io_warnings():
            warnings.warn("zarr v3 autosharding will be the default in the next minor release.", UserWarning,
                          stacklevel=1)
            warnings.warn("something about your data", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something about your data"]


def _engine_imports(path) -> list[str]:
    """Return the torch imports and private ``models`` imports of one source file (anywhere in it)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "torch"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".")
            if node.level == 0 and parts[0] == "torch":
                found.append(f"from {module} import ...")
                continue
            if node.level == 0 and parts[:2] == ["c2lst", "models"]:
                parts = parts[1:]
            elif node.level == 2 and parts[0] == "models":
                pass
            else:
                continue
            private = [p for p in parts if p.startswith("_")] + [a.name for a in node.names if a.name.startswith("_")]
            if private:
                found.append(f"from {'.' * node.level}{module} import {', '.join(a.name for a in node.names)}")
    return found


def test_tl_does_no_engine_imports():
    """The skin (``c2lst.tl``) imports neither torch nor private names of ``c2lst.models`` (issue 12)."""
    from pathlib import Path

    root = Path(c2lst.__file__).parent / "tl"
    found = {p.name: _engine_imports(p) for p in sorted(root.glob("*.py"))}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"tl files import torch or private models names: {found}"


def test_engine_import_check_has_teeth(tmp_path):
    src = tmp_path / "x.py"
    src.write_text(
        "import numpy\nfrom ..models import CentralModel\n"
        "def f():\n    import torch.nn\n    from ..models._nets import default_device\n"
        "    from c2lst.models import _private\n    from torch import nn\n"
    )
    assert _engine_imports(src) == [
        "import torch.nn",
        "from ..models._nets import default_device",
        "from c2lst.models import _private",
        "from torch import ...",
    ]
