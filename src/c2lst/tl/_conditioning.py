"""``tl.evaluate_conditioning``: how much of its conditioning profile a synthetic patch carries."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger
from .._records import EXPR_HINT
from .._tables import child_rows, expression_genes, parent_positions, side_patches
from .._utils import check_positive_int, check_seed
from ..metrics import pearson
from ..models import ExpressionPredictor
from ._predict_expression import resolve_predictor


def evaluate_conditioning(
    real: AnnData,
    synthetic: AnnData,
    *,
    predictor: ExpressionPredictor | str | Path,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    parent_key: str = "c2lst_parent",
    n_shuffles: int = 20,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure how much of its conditioning profile a predictor reads back from each synthetic patch.

    A predictor trained on real spots (``predictor``) is applied to the synthetic patches; per gene, the
    Pearson r between its predictions and the profile each patch was conditioned on (``synthetic.obsm[expr_key]``)
    says how much of the expression the generator put into the image. Two brackets make the figure readable,
    both with the same predictor and genes:

    - ``real_r``, the ceiling: the predictor on the parents' *real* patches against their observed profiles
      (what a perfect generator would reach);
    - ``shuffled_r``, the null: the synthetic predictions against conditioning profiles permuted across rows
      (mean over ``n_shuffles`` permutations; what a generator that ignores the condition reaches).

    This is the second conditioning measure of the budget benchmark, next to the nuclei counts of
    :func:`evaluate_composition`.

    .. warning::
       Train ``predictor`` on real spots **other** than the synthetic rows' parents (e.g. the rest of the slide,
       or another slide). A predictor fitted on the parents themselves has seen their patches, so ``real_r`` is
       in-sample and the ceiling is inflated.

    Parameters
    ----------
    real
        The real table the synthetic rows were generated from: ``obs_names`` are the parent ids,
        ``obsm[patch_key]`` the real patches and ``obsm[expr_key]`` the prepared expression.
    synthetic
        The synthetic table from :func:`c2lst.tl.synthesize`: ``obs[parent_key]`` names each row's parent and
        ``obsm[expr_key]`` holds the profile it was conditioned on (the parent's, or the mixture for
        ``conditions="mixup"``).
    predictor
        A fitted :class:`~c2lst.models.predictor.ExpressionPredictor` (or its saved directory) over genes that
        are all in both tables' ``obsm[expr_key]``.
    expr_key, patch_key, parent_key
        Keys described above.
    n_shuffles
        Permutations averaged for ``shuffled_r``.
    seed
        Seed of the permutations.
    batch_size, device
        Prediction settings (see :func:`c2lst.tl.predict_expression`).
    progress
        Show a progress bar while predicting (for more than one batch).

    Returns
    -------
    One row per predictor gene (index ``gene``): ``synthetic_r``, ``real_r``, ``shuffled_r`` and ``recovery``
    (``synthetic_r / real_r``; NaN where ``real_r <= 0``). ``df.attrs`` holds the means over genes
    (``mean_synthetic_r``, ``mean_real_r``, ``mean_shuffled_r``), ``recovery`` (mean synthetic r over mean real r,
    NaN when the latter is <= 0), ``n_synthetic`` and ``n_parents``.

    Examples
    --------
    >>> held_out = c2lst.tl.fit_predictor(other_spots, mode="ridge")  # doctest: +SKIP
    >>> df = c2lst.tl.evaluate_conditioning(table, synthetic, predictor=held_out)  # doctest: +SKIP
    >>> df.attrs["recovery"]  # doctest: +SKIP
    """
    for name, t in (("real", real), ("synthetic", synthetic)):
        if not isinstance(t, AnnData):
            raise TypeError(f"`{name}` must be an AnnData table, got {type(t).__name__}.")
    predictor = resolve_predictor(predictor, "on real spots first")
    n_shuffles = check_positive_int(n_shuffles, "n_shuffles")
    seed = check_seed(seed)
    batch_size = check_positive_int(batch_size, "batch_size")

    real_p, real_t = side_patches(real, "real", patch_key, synthetic=False)
    syn_p, syn_t, parents = child_rows(synthetic, patch_key, parent_key)
    genes = list(predictor.genes)
    real_c = _profiles(real_t, "real", expr_key, genes)
    syn_c = _profiles(syn_t, "synthetic", expr_key, genes)
    for name, p in (("real", real_p), ("synthetic", syn_p)):
        if p.shape[1] != predictor.patch_size:
            raise ValueError(
                f"`{name}.obsm[{patch_key!r}]` holds {p.shape[1]} px patches but the predictor was fitted on "
                f"{predictor.patch_size} px; use patches of the predictor's size."
            )
    pos = parent_positions(real_t, parents, parent_key)
    keep = pos >= 0
    parent_rows = np.unique(pos[keep])
    if parent_rows.size < 3:
        raise ValueError(
            f"the synthetic rows have {parent_rows.size} parent(s) in `real`; a correlation across parents needs "
            "at least 3: synthesize from more spots."
        )

    syn_pred = predictor.predict(syn_p[keep], batch_size=batch_size, device=device, progress=progress).astype(
        np.float64
    )
    real_pred = predictor.predict(
        real_p[parent_rows], batch_size=batch_size, device=device, progress=progress
    )
    cond = syn_c[keep]
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        syn_r = np.asarray(pearson(syn_pred, cond), dtype=np.float64)
        real_r = np.asarray(pearson(real_pred.astype(np.float64), real_c[parent_rows]), dtype=np.float64)
        shuffled = np.stack([pearson(syn_pred, cond[rng.permutation(len(cond))]) for _ in range(n_shuffles)])
        shuf_r = np.nanmean(shuffled, axis=0)
        recovery = np.where(real_r > 0, syn_r / np.where(real_r > 0, real_r, 1.0), np.nan)
        df = pd.DataFrame(
            {"synthetic_r": syn_r, "real_r": real_r, "shuffled_r": shuf_r, "recovery": recovery},
            index=pd.Index([str(g) for g in genes], name="gene"),
        )
        means = {c: float(np.nanmean(df[c])) if df[c].notna().any() else float("nan") for c in df.columns[:3]}
    df.attrs.update(
        {
            "mean_synthetic_r": means["synthetic_r"],
            "mean_real_r": means["real_r"],
            "mean_shuffled_r": means["shuffled_r"],
            "recovery": means["synthetic_r"] / means["real_r"] if means["real_r"] > 0 else float("nan"),
            "n_synthetic": int(keep.sum()),
            "n_parents": int(parent_rows.size),
        }
    )
    logger.info(
        f"conditioning: mean r {means['synthetic_r']:.3f} on {int(keep.sum())} synthetic patches vs "
        f"{means['real_r']:.3f} on their {parent_rows.size} real parents (shuffled {means['shuffled_r']:.3f})"
    )
    return df


def _profiles(table: AnnData, name: str, expr_key: str, genes: list[str]) -> np.ndarray:
    """Return ``table.obsm[expr_key]`` in the order of ``genes`` (float64), or raise naming the missing ones."""
    if expr_key not in table.obsm:
        raise KeyError(
            f"`expr_key={expr_key!r}` is not in `{name}.obsm` (keys: {sorted(table.obsm)}); {EXPR_HINT}"
        )
    have = pd.Index(expression_genes(table, expr_key))
    idx = have.get_indexer(genes)
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx, strict=True) if i < 0]
        raise ValueError(
            f"{len(missing)} of the predictor's genes are not in `{name}.obsm[{expr_key!r}]`: {missing[:10]}; use a "
            "predictor fitted on the genes the tables were prepared with."
        )
    values = np.asarray(table.obsm[expr_key], dtype=np.float64)[:, idx]
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}.obsm[{expr_key!r}]` contains NaN or inf.")
    return values
