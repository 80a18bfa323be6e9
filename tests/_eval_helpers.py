"""Generated H&E-like patches with known nuclei, and tiny tables, for the predictor / fidelity / plot tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from skimage.draw import disk

BACKGROUND = (235, 160, 205)  # eosin pink
NUCLEUS = (70, 45, 130)  # hematoxylin purple


def disc_patches(n, *, size=32, seed=0, max_nuclei=5, radius=(2, 3), shift=0.0, noise=5.0):
    """Return ``(patches, counts)``: uint8 patches with ``counts[i]`` separate discs drawn on a pink background."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    counts = np.zeros(n, dtype=int)
    for i in range(n):
        img = np.tile(np.asarray(BACKGROUND, float), (size, size, 1))
        target = rng.integers(0, max_nuclei + 1)
        placed = []
        for _ in range(400):
            if len(placed) == target:
                break
            r = int(rng.integers(radius[0], radius[1] + 1))
            c = rng.integers(r + 1, size - r - 1, 2)
            if all(np.hypot(*(c - p)) > r + pr + 3 for p, pr in placed):
                placed.append((c, r))
                rr, cc = disk(tuple(c), r, shape=(size, size))
                img[rr, cc] = NUCLEUS
        counts[i] = len(placed)
        img += rng.normal(0.0, noise, img.shape) + shift
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, counts


def make_table(n=64, *, size=32, seed=0, genes=("g_nuclei", "g_colour", "g_noise"), expr_key="c2lst_expr"):
    """Return a table whose first gene is the nuclei count, second the patch brightness, third noise."""
    rng = np.random.default_rng(seed + 1000)
    patches, counts = disc_patches(n, size=size, seed=seed)
    bright = patches.astype(float).mean(axis=(1, 2, 3))
    expr = np.stack(
        [
            counts + rng.normal(0, 0.2, n),
            (bright - bright.mean()) / (bright.std() + 1e-9) + rng.normal(0, 0.2, n),
            rng.normal(0, 1, n),
        ][: len(genes)],
        axis=1,
    ).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1).astype(float) * 100.0
    adata = ad.AnnData(
        X=np.zeros((n, len(genes)), np.float32),
        obs=pd.DataFrame(index=[f"spot_{i}" for i in range(n)]),
        var=pd.DataFrame(index=list(genes)),
    )
    adata.obsm["c2lst_patch"] = patches
    adata.obsm[expr_key] = expr
    adata.obsm["spatial"] = xy
    adata.uns["c2lst"] = {"expr": {expr_key: {"genes": np.asarray(genes, dtype=object)}}}
    return adata


def tiny_budget(sdata, central, **kwargs):
    """A budget curve small enough for a test: fractions 0.5 and 1, the added arms at 0.5, 3 repeats, 2-step fits.

    ``kwargs`` override these settings (e.g. ``arms=``, ``synthetic_weight=``, ``predictor_kwargs=``).
    """
    import c2lst

    settings = {
        "fractions": (0.5, 1.0),
        "synthetic_fractions": (0.5,),
        "arms": ("real", "real+synthetic"),
        "n_repeats": 3,
        "n_per_condition": 1,
        "adapt_kwargs": {"n_steps": 2, "batch_size": 8},
        "synthesize_kwargs": {"n_steps": 2},
        "predictor_kwargs": {"n_steps": 2},
        "progress": False,
    }
    return c2lst.tl.budget_curve(sdata, central=central, **{**settings, **kwargs})


def assert_budget_refuses(sdata, central, kwargs, match):
    """``tiny_budget(**kwargs)`` raises a ``ValueError`` matching ``match`` and leaves the table untouched."""
    import pytest
    from _reliability_helpers import state

    table = sdata.tables["table"]
    before = state(table)
    with pytest.raises(ValueError, match=match):
        tiny_budget(sdata, central, **kwargs)
    assert state(table) == before


def child_rows(real, n_per_spot=3):
    """Synthetic rows: each real spot's patch and profile again, ``n_per_spot`` times, named as its children."""
    syn = ad.concat([real] * n_per_spot, index_unique="-")
    syn.obs_names = [f"syn_{i}" for i in range(syn.n_obs)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.tile(real.obs_names.to_numpy(), n_per_spot)
    return syn
