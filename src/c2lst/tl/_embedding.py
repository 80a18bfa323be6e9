"""``tl.image_features`` and ``tl.mixing_score``: whether synthetic patches sit among real ones in image space.

The paper's fidelity claim is that synthetic and real spots overlap in an embedding. c2lst states it through
scanpy: image features go to ``obsm``, ``sc.pp.neighbors(use_rep=...)`` + ``sc.tl.umap`` draw the embedding,
and :func:`mixing_score` measures the overlap (share of synthetic neighbours of each real spot against the
share expected by chance).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .._logging import logger
from .._records import record_lineage, store, synthetic_mask
from .._tables import _patches
from .._utils import as_table, check_positive_int
from ..models import central_features
from ..models import features as _features
from ._central import FEATURES

DEFAULT_KEYS = {"morphometric": "c2lst_morph", "central": "c2lst_central_features"}


def image_features(
    adata: Any,
    *,
    table_key: str = "table",
    features: Literal["morphometric", "central"] = "morphometric",
    central: Any = None,
    central_timestep: int = 50,
    patch_key: str = "c2lst_patch",
    key_added: str | None = None,
    progress: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Compute image features of every patch into ``obsm[key_added]``, ready for ``sc.pp.neighbors``.

    ``features="morphometric"`` gives the offline features of :func:`c2lst.tl.evaluate_fidelity` (nuclei,
    colour, texture), with the nuclei threshold fixed on the real rows. ``features="central"`` gives the pooled
    activations of the frozen central denoiser (:func:`c2lst.models.central_features`): what the model learned
    from many slides, the space in which ``fit_predictor(features="central")`` fits its ridge head. Either way
    the features are standardised by the *real* rows' mean and standard deviation, so real and synthetic rows
    share one feature space.

    Parameters
    ----------
    adata
        A table with patches, e.g. :func:`c2lst.tl.concat_augmented` (real and synthetic rows, told apart by
        ``obs["c2lst_synthetic"]``).
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    features
        Feature space: ``"morphometric"`` (21 offline features) or ``"central"`` (the central denoiser's).
    central
        The central model for ``features="central"``: a :class:`~c2lst.models.CentralModel`, its directory, a key
        of ``uns["c2lst"]["central"]`` or a shipped name such as ``"tiny-sim"``. Patch sides must pass through
        its denoiser (the model's image size always does).
    central_timestep
        Noise timestep of ``features="central"`` (small: the patch stays visible to the denoiser).
    patch_key
        Patches in ``obsm``.
    key_added
        Where the features go; default ``"c2lst_morph"`` (morphometric) or ``"c2lst_central_features"``.
    progress
        Show a progress bar over batches (``features="central"``).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``obsm[key_added]`` : ndarray ``(n_obs, d)`` float32 (``d``
    = 21 for morphometric features) and ``uns["c2lst"]["features"][key_added]`` = ``{"features", "n_reference",
    "patch_key"}`` plus ``"threshold"`` (morphometric) or ``"central_sha256"`` and ``"central_timestep"``
    (central).

    Examples
    --------
    >>> aug = c2lst.tl.concat_augmented(sdata)  # doctest: +SKIP
    >>> c2lst.tl.image_features(aug)  # doctest: +SKIP
    >>> sc.pp.neighbors(aug, use_rep="c2lst_morph"); sc.tl.umap(aug)  # doctest: +SKIP
    >>> sc.pl.umap(aug, color="c2lst_synthetic")  # doctest: +SKIP

    The central model's view of the same patches:

    >>> c2lst.tl.image_features(aug, features="central", central="tiny-sim")  # doctest: +SKIP
    >>> sc.pp.neighbors(aug, use_rep="c2lst_central_features")  # doctest: +SKIP
    """
    adata = as_table(adata, table_key, arg="adata")
    if features not in FEATURES:
        raise ValueError(f"`features={features!r}` is unknown; use one of {list(FEATURES)}.")
    if key_added is None:
        key_added = DEFAULT_KEYS[features]
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if features != "central" and central is not None:
        raise ValueError("`central=` is only used with `features='central'`; drop it or pass `features='central'`.")
    patches = _patches(adata, patch_key)
    if len(patches) < 2:
        raise ValueError(f"`adata` has {len(patches)} patch(es); image features need at least 2.")
    syn = synthetic_mask(adata)
    record: dict[str, Any] = {"features": features, "patch_key": patch_key}
    if features == "central":
        feats = _central_features(adata, patches, central, central_timestep, progress, record)
    else:
        ref = patches[~syn] if (~syn).sum() >= 2 else patches
        thr = _features.hematoxylin_threshold(ref)
        feats = _features.morphometric_features(patches, threshold=thr)
        record["threshold"] = float(thr)
    base = feats[~syn] if (~syn).sum() >= 2 else feats
    mean, std = base.mean(axis=0), base.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    out = ((feats - mean) / std).astype(np.float32)
    record["n_reference"] = len(base)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = out
    store(target, "features", key_added, record)
    parameters = {"features": features, "patch_key": patch_key, "key_added": key_added}
    if features == "central":
        parameters["central_timestep"] = record["central_timestep"]
    record_lineage(target, function="c2lst.tl.image_features", parameters=parameters, seed=None, input_table=None)
    return target if copy else None


def _central_features(
    adata: AnnData, patches: np.ndarray, central: Any, timestep: Any, progress: bool, record: dict[str, Any]
) -> np.ndarray:
    """Features of the frozen central denoiser, checked before the forward passes; fills ``record``."""
    if central is None:
        raise ValueError(
            "`features='central'` needs the central model: pass `central=` (a CentralModel, its directory, a "
            "registry key or a shipped name such as 'tiny-sim')."
        )
    if isinstance(timestep, bool) or not isinstance(timestep, int | np.integer):
        raise TypeError(f"`central_timestep` must be an integer, got {timestep!r}.")
    from ._central import resolve_central

    model = resolve_central(central, adata)
    n_train = int(model.scheduler_config.get("num_train_timesteps", 1000))
    if not 0 <= int(timestep) < n_train:
        raise ValueError(f"`central_timestep={timestep}` must be in [0, {n_train}) (the model's training timesteps).")
    record.update(central_sha256=str(model.sha256 or ""), central_timestep=int(timestep))
    return central_features(model, patches, t=int(timestep), progress=progress)


def mixing_score(
    adata: Any,
    *,
    table_key: str = "table",
    use_rep: str = "c2lst_morph",
    n_neighbors: int = 15,
) -> dict[str, float]:
    """Measure how well synthetic rows mix with real rows in an embedding.

    For each real row, the share of synthetic rows among its ``n_neighbors`` nearest neighbours in
    ``obsm[use_rep]`` (Euclidean, itself excluded) is compared with the share expected by chance,
    ``n_synthetic / (n - 1)``. A ratio near 1 means synthetic rows sit among real ones; near 0 means they form
    their own cluster.

    Parameters
    ----------
    adata
        A table with real and synthetic rows (``obs["c2lst_synthetic"]``), e.g. from
        :func:`c2lst.tl.concat_augmented`.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    use_rep
        The embedding in ``obsm`` (e.g. from :func:`image_features`, or ``"X_umap"``).
    n_neighbors
        Neighbours per real row.

    Returns
    -------
    dict with ``observed`` (mean share over real rows), ``expected`` (chance), ``ratio``
    (observed / expected), ``n_real``, ``n_synthetic`` and ``n_neighbors``. ``adata`` is not modified.

    Examples
    --------
    >>> c2lst.tl.mixing_score(aug, use_rep="c2lst_morph")  # doctest: +SKIP
    """
    from sklearn.neighbors import NearestNeighbors

    adata = as_table(adata, table_key, arg="adata")
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
    if use_rep not in adata.obsm:
        raise KeyError(
            f"`use_rep={use_rep!r}` is not in `obsm` (keys: {sorted(adata.obsm)}); run "
            "`c2lst.tl.image_features(adata)` first."
        )
    x = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"`obsm[{use_rep!r}]` must be a finite 2-D array, got shape {x.shape}.")
    syn = synthetic_mask(adata)
    n, n_syn = len(x), int(syn.sum())
    if n_syn == 0 or n_syn == n:
        raise ValueError(
            f"`adata` holds {n - n_syn} real and {n_syn} synthetic rows; mixing needs both (use "
            "`c2lst.tl.concat_augmented`)."
        )
    if n_neighbors >= n:
        raise ValueError(f"`n_neighbors={n_neighbors}` must be below the number of rows ({n}).")
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(x)
    _, idx = nn.kneighbors(x[~syn])
    real_rows = np.flatnonzero(~syn)
    share = np.array([syn[[j for j in row if j != i][:n_neighbors]].mean() for i, row in zip(real_rows, idx, strict=True)])
    expected = n_syn / (n - 1)
    observed = float(share.mean())
    logger.info(f"mixing: {observed:.3f} synthetic neighbours per real row vs {expected:.3f} by chance")
    return {
        "observed": observed,
        "expected": float(expected),
        "ratio": float(observed / expected),
        "n_real": int(n - n_syn),
        "n_synthetic": n_syn,
        "n_neighbors": int(n_neighbors),
    }
