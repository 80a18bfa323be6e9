"""``tl.predict_expression``: a fitted image -> expression predictor applied to a table's patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anndata import AnnData

from .. import _records as records
from .._records import gene_names
from .._tables import _gene_diff, _patches, expression_genes
from .._utils import as_table, check_positive_int
from ..models import ExpressionPredictor

__all__ = ["predict_expression", "resolve_predictor"]


def resolve_predictor(predictor: Any, fit_hint: str = "first") -> ExpressionPredictor:
    """Return a fitted predictor from an object or a saved directory (verified on load), or raise."""
    if isinstance(predictor, str | Path):
        predictor = ExpressionPredictor.from_pretrained(predictor)
    if not isinstance(predictor, ExpressionPredictor):
        raise TypeError(
            f"`predictor` must be an ExpressionPredictor or a saved predictor directory, got {type(predictor).__name__}."
        )
    if not predictor.is_fitted:
        raise ValueError(f"`predictor` is not fitted; fit it with `c2lst.tl.fit_predictor` {fit_hint}.")
    return predictor


def predict_expression(
    adata: Any,
    *,
    table_key: str = "table",
    predictor: ExpressionPredictor | str | Path,
    patch_key: str = "c2lst_patch",
    expr_key: str = "c2lst_expr",
    key_added: str = "c2lst_pred",
    batch_size: int = 256,
    device: str | None = None,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Predict expression from the patches of ``adata``.

    Parameters
    ----------
    adata
        Table with ``obsm[patch_key]``.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    predictor
        A fitted :class:`~c2lst.models.predictor.ExpressionPredictor` or the directory it was saved to with
        :meth:`~c2lst.models.ExpressionPredictor.save_pretrained` (verified on load).
    patch_key
        Patches (:func:`c2lst.pp.extract_patches`).
    expr_key
        When the table has prepared expression under this key, its genes must equal the predictor's genes.
        Tables without it (image-only slides) are predicted without the check.
    key_added
        Predictions go to ``obsm[key_added]`` (float32, spots x genes) and their genes, mode and run id to
        ``uns["c2lst"]["pred"][key_added]``.
    batch_size
        Patches per forward pass.
    device
        Torch device; ``None`` = cuda if available, else cpu.
    progress
        Show a progress bar over patches (when there is more than one batch).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the changed copy of the table when ``copy=True``. Writes:

    ``obsm[key_added]`` : ndarray ``(n_obs, n_genes)`` float32
        predicted expression, in the predictor's gene order (read it as a DataFrame with
        :func:`c2lst.get.predictions`);
    ``uns["c2lst"]["pred"][key_added]`` : dict
        ``genes``, ``mode``, ``feature_space``, ``patch_key`` and ``run_id``;
    ``uns["c2lst"]["lineage"][run_id]`` : dict
        the call's parameters and the predictor's seed.

    Examples
    --------
    With ``table`` and ``model`` from the example of :func:`fit_predictor`, directly or from a saved directory:

    >>> c2lst.tl.predict_expression(table, predictor=model)
    >>> table.obsm["c2lst_pred"].shape
    (60, 10)
    >>> path = model.save_pretrained("predictor")
    >>> c2lst.tl.predict_expression(table, predictor=path, key_added="c2lst_pred_saved")
    """
    adata = as_table(adata, table_key, arg="adata")
    predictor = resolve_predictor(predictor)
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    batch_size = check_positive_int(batch_size, "batch_size")
    patches = _patches(adata, patch_key)
    if expr_key in adata.obsm:
        genes = expression_genes(adata, expr_key)
        if list(genes) != list(predictor.genes):
            raise ValueError(
                f"`predictor` was fitted on other genes than `obsm[{expr_key!r}]` of this table "
                f"({_gene_diff(predictor.genes, genes)}); prepare the table with "
                f"`c2lst.pp.prepare_expression(adata, genes=predictor.genes)`."
            )
    if patches.shape[0] and patches.shape[1] != predictor.patch_size:
        raise ValueError(
            f"`obsm[{patch_key!r}]` holds {patches.shape[1]} px patches but the predictor was fitted on "
            f"{predictor.patch_size} px; re-extract with `c2lst.pp.extract_patches(..., size={predictor.patch_size})`."
        )
    pred = predictor.predict(patches, batch_size=batch_size, device=device, progress=progress)

    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = pred
    run_id = records.record_lineage(
        adata,
        function="c2lst.tl.predict_expression",
        parameters={"patch_key": patch_key, "expr_key": expr_key, "key_added": key_added, **predictor.config()},
        seed=predictor.training.get("seed"),
        input_table=None,
    )
    pred_record = {
        "genes": gene_names(predictor.genes),
        "mode": predictor.mode,
        "feature_space": predictor.feature_space,
        "patch_key": patch_key,
        "run_id": run_id,
    }
    records.store(adata, "pred", key_added, pred_record)
    return adata if copy else None
