"""Reliability round 2 (issue 13): faults that need their own process, a timeout, file modes or a racing writer.

The bad-input matrix (``test_bad_input*.py``) holds the cases that only need an input and an expected error;
the tests here need special setup: a segfault must fail a test, not kill pytest, so degenerate counts run in a
subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import c2lst

SRC = str(Path(c2lst.__file__).resolve().parents[1])


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )


# ============================================================================ 1. never a crash
DEGENERATE = {
    "all-zero": ("np.zeros((20, 8), np.int64)", 3, "ValueError"),
    "all-equal": ("np.full((20, 8), 3, np.int64)", 3, "ValueError"),
    "one-spot": ("rng.poisson(3, (1, 8))", 3, "ValueError"),
    "one-gene": ("rng.poisson(3, (20, 1))", 1, "ok all"),
    "twelve-genes": ("rng.poisson(3, (20, 12))", 3, "ok seurat"),
    "two-spots": ("rng.poisson(3, (2, 12))", 3, "ok seurat"),
    "one-hot": ("np.eye(12, dtype=np.int64)", 3, "ok "),
    "sparse-twelve": ("sparse.csr_matrix(rng.poisson(1, (30, 12)))", 2, "ok seurat"),
}


def test_prepare_expression_degenerate_counts_do_not_crash():
    """Degenerate counts never reach skmisc's loess: a clear ValueError or a logged fallback flavour, no segfault.

    All cases run in one subprocess (one import of scanpy); a segfault there fails this test instead of killing
    pytest, and the cases printed before it show which input crashed.
    """
    cases = "\n".join(f"    ({name!r}, lambda: {x}, {n}, {exp!r})," for name, (x, n, exp) in DEGENERATE.items())
    proc = _run(
        """
import numpy as np, anndata as ad
from scipy import sparse
import c2lst
rng = np.random.default_rng(0)
CASES = [
"""
        + cases
        + """
]
for name, make, n_top, expected in CASES:
    a = ad.AnnData(make())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    try:
        c2lst.pp.prepare_expression(a, n_top_genes=n_top)
    except ValueError as err:
        assert "n_top_genes" in str(err) or "adata.X" in str(err), err
        got = "ValueError"
    else:
        rec = a.uns["c2lst"]["expr"]["c2lst_expr"]
        assert len(rec["genes"]) == n_top
        got = "ok " + rec["flavor"]
    assert got.startswith(expected), (name, got, expected)
    print(name, got, flush=True)
print("done")
"""
    )
    assert proc.returncode == 0, (
        f"rc={proc.returncode} (negative: killed by a signal)\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.strip().splitlines()[-1] == "done"


def test_prepare_expression_few_genes_logs_the_fallback(caplog):
    import anndata as ad

    a = ad.AnnData(np.random.default_rng(0).poisson(3, (20, 12)))
    a.var_names = [f"g{i}" for i in range(12)]
    with caplog.at_level("INFO", logger="c2lst"):
        c2lst.pp.prepare_expression(a, n_top_genes=3)
    assert a.uns["c2lst"]["expr"]["c2lst_expr"]["flavor"] == "seurat"
    assert "flavor='seurat_v3'" in caplog.text and "flavor='seurat'" in caplog.text
