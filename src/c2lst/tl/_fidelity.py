"""``tl.evaluate_fidelity`` (FID / KID in an offline feature space) and ``tl.evaluate_composition``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import metrics
from .._logging import logger
from .._tables import child_patches, parent_positions, side_patches
from .._utils import check_positive_int, check_seed
from ..models import features as _features

FEATURE_SPACES = ("morphometric", "custom")


def _check_two(real: np.ndarray, synthetic: np.ndarray) -> None:
    if len(real) < 2 or len(synthetic) < 2:
        raise ValueError(
            f"fidelity needs at least 2 patches per side, got {len(real)} real and {len(synthetic)} synthetic; "
            "synthesize more patches (`n_per_condition=`) or pass more real spots."
        )
    if real.shape[1:] != synthetic.shape[1:]:
        raise ValueError(
            f"real patches are {real.shape[1]} px and synthetic patches {synthetic.shape[1]} px; compare patches "
            "of one size (re-extract the real patches with the synthetic `size=`)."
        )


def evaluate_fidelity(
    real: AnnData | np.ndarray,
    synthetic: AnnData | np.ndarray,
    *,
    features: Literal["morphometric", "custom"] = "morphometric",
    patch_key: str = "c2lst_patch",
    feature_extractor: Any = None,
    n_subsets: int = 100,
    subset_size: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure how close synthetic patches are to real ones: FID and KID in an offline feature space.

    ``features="morphometric"`` uses :func:`c2lst.models.features.morphometric_features` (nuclei from
    colour deconvolution + colour + texture, 21 features; no download), with the nuclei threshold fixed on the
    real patches so both sides share one nuclei definition. Features are standardised by the real set's mean
    and standard deviation, so distances are in units of real variability. FID is the Fréchet distance of
    Gaussian fits (:func:`c2lst.metrics.frechet_distance`); KID the unbiased MMD² with the cubic polynomial
    kernel over ``n_subsets`` random subsets (seeded; :func:`c2lst.metrics.kernel_distance`). Both are ~0 for
    sets from one distribution.

    Parameters
    ----------
    real, synthetic
        AnnData tables with ``obsm[patch_key]`` or uint8 arrays ``(n, S, S, 3)``. When a table has an
        ``obs["c2lst_synthetic"]`` column (e.g. from :func:`c2lst.tl.concat_augmented`), ``real`` uses its
        real rows and ``synthetic`` its synthetic rows (a table holding only the other kind is used whole).
    features
        ``"morphometric"``, or ``"custom"`` for ``feature_extractor`` (implied when one is passed).
    patch_key
        Patches in ``obsm``.
    feature_extractor
        A :class:`torch.nn.Module` mapping ``(B, 3, H, W)`` float in [0, 1] to ``(B, D)`` (e.g. a pathology
        foundation model built with local weights).
    n_subsets, subset_size
        KID subsets (the subset size is capped by the smaller side).
    batch_size
        Batch size of the feature extractor.
    seed
        Seed of the KID subsets.
    progress
        Show progress bars while features are computed (for more than a few hundred patches).

    Returns
    -------
    dict with ``fid``, ``kid``, ``kid_std``, ``n_real``, ``n_synthetic``, ``features``, ``n_features``,
    ``hematoxylin_threshold`` (NaN for custom features) and ``seed``.

    Examples
    --------
    >>> import numpy as np, c2lst
    >>> rng = np.random.default_rng(0)
    >>> real = rng.integers(100, 256, (20, 32, 32, 3), dtype=np.uint8)
    >>> res = c2lst.tl.evaluate_fidelity(real, real.copy())
    >>> round(res["fid"], 6)
    0.0
    """
    if feature_extractor is not None and features == "morphometric":
        features = "custom"
    if features not in FEATURE_SPACES:
        raise ValueError(f"`features` must be one of {FEATURE_SPACES}, got {features!r}.")
    if features == "custom" and feature_extractor is None:
        raise ValueError("`features='custom'` needs a torch module as `feature_extractor=`.")
    if feature_extractor is not None:
        _features.check_feature_extractor(feature_extractor)
    n_subsets = check_positive_int(n_subsets, "n_subsets")
    subset_size = check_positive_int(subset_size, "subset_size")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    real_p, _ = side_patches(real, "real", patch_key, synthetic=False)
    syn_p, _ = side_patches(synthetic, "synthetic", patch_key, synthetic=True)
    _check_two(real_p, syn_p)

    if features == "morphometric":
        thr = _features.hematoxylin_threshold(real_p)
        f_real = _features.morphometric_features(real_p, threshold=thr, progress=progress)
        f_syn = _features.morphometric_features(syn_p, threshold=thr, progress=progress)
    else:
        thr = float("nan")
        f_real = _features.torch_features(real_p, feature_extractor, batch_size=batch_size, progress=progress)
        f_syn = _features.torch_features(syn_p, feature_extractor, batch_size=batch_size, progress=progress)
    fid = metrics.frechet_distance(f_real, f_syn)
    kid, kid_std = metrics.kernel_distance(
        f_real, f_syn, n_subsets=n_subsets, subset_size=subset_size, seed=seed
    )
    out = {
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "n_real": len(real_p),
        "n_synthetic": len(syn_p),
        "features": features,
        "n_features": int(f_real.shape[1]),
        "hematoxylin_threshold": thr,
        "seed": seed,
    }
    logger.info(f"fidelity ({features}): FID {fid:.4g}, KID {kid:.4g} ± {kid_std:.2g}")
    return out


def evaluate_composition(
    real: AnnData,
    synthetic: AnnData,
    *,
    patch_key: str = "c2lst_patch",
    parent_key: str = "c2lst_parent",
    truth_key: str = "c2lst_true_n_cells",
    composition_key: str = "c2lst_true_composition",
    progress: bool = True,
) -> pd.DataFrame:
    """Compare nuclei counts and sizes of synthetic patches with their real parent spots (and the truth).

    Nuclei are segmented by :func:`c2lst.models.features.segment_nuclei` with one hematoxylin threshold
    (Otsu of the real patches) for both sides.

    Parameters
    ----------
    real
        The real table: ``obs_names`` are the parent ids, ``obsm[patch_key]`` the real patches. Optional
        ground truth (simulated data): ``obs[truth_key]`` (cells per spot) and ``obsm[composition_key]``
        (cell-type fractions; a DataFrame keeps its column names).
    synthetic
        The synthetic table from :func:`c2lst.tl.synthesize`, with ``obs[parent_key]`` naming each row's parent.
    patch_key, parent_key, truth_key, composition_key
        Keys described above.
    progress
        Show progress bars while nuclei are segmented (for more than a few hundred patches).

    Returns
    -------
    One row per parent spot with at least one synthetic child (index = parent id): ``n_synthetic``,
    ``real_n_nuclei``, ``real_mean_area``, ``synthetic_n_nuclei`` and ``synthetic_mean_area`` (means over the
    children), ``synthetic_n_nuclei_std`` (mean areas are in pixels, NaN for patches without nuclei); with ground truth also ``true_n_cells`` and ``true_<type>``
    columns. ``df.attrs["spearman"]`` holds the Spearman correlations across parents, e.g.
    ``synthetic_vs_real_n_nuclei``, ``synthetic_n_nuclei_vs_true_n_cells``, ``real_n_nuclei_vs_true_n_cells``
    (NaN when undefined).

    Examples
    --------
    >>> df = c2lst.tl.evaluate_composition(real_table, synthetic_table)  # doctest: +SKIP
    >>> df.attrs["spearman"]["synthetic_vs_real_n_nuclei"]  # doctest: +SKIP
    """
    for name, t in (("real", real), ("synthetic", synthetic)):
        if not isinstance(t, AnnData):
            raise TypeError(f"`{name}` must be an AnnData table, got {type(t).__name__}.")
    real_p, real_t = side_patches(real, "real", patch_key, synthetic=False)
    syn_p, parents = child_patches(synthetic, patch_key, parent_key)
    real_index = pd.Index(real_t.obs_names.astype(str))
    pos = parent_positions(real_t, parents, parent_key)

    thr = _features.hematoxylin_threshold(real_p)
    real_stats = _patch_nuclei(real_p, thr, progress)
    syn_stats = _patch_nuclei(syn_p[pos >= 0], thr, progress)
    syn_df = pd.DataFrame(syn_stats, index=pd.Index(parents[pos >= 0], name="parent"))
    grouped = syn_df.groupby(level=0, sort=False)
    df = pd.DataFrame(
        {
            "n_synthetic": grouped.size(),
            "synthetic_n_nuclei": grouped["n_nuclei"].mean(),
            "synthetic_n_nuclei_std": grouped["n_nuclei"].std(ddof=0),
            "synthetic_mean_area": grouped["mean_area"].mean(),
        }
    )
    rpos = real_index.get_indexer(df.index)
    df.insert(1, "real_n_nuclei", real_stats["n_nuclei"][rpos])
    df.insert(2, "real_mean_area", real_stats["mean_area"][rpos])
    pairs = [("synthetic_vs_real_n_nuclei", "synthetic_n_nuclei", "real_n_nuclei")]
    pairs.append(("synthetic_vs_real_mean_area", "synthetic_mean_area", "real_mean_area"))
    if truth_key in real_t.obs:
        df["true_n_cells"] = real_t.obs[truth_key].to_numpy(dtype=np.float64)[rpos]
        pairs += [
            ("synthetic_n_nuclei_vs_true_n_cells", "synthetic_n_nuclei", "true_n_cells"),
            ("real_n_nuclei_vs_true_n_cells", "real_n_nuclei", "true_n_cells"),
        ]
    if composition_key in real_t.obsm:
        comp = real_t.obsm[composition_key]
        names = (
            list(comp.columns) if isinstance(comp, pd.DataFrame) else [str(i) for i in range(comp.shape[1])]
        )
        vals = np.asarray(comp, dtype=np.float64)[rpos]
        for j, name in enumerate(names):
            df[f"true_{name}"] = vals[:, j]
    df.index.name = "parent"
    df.attrs["spearman"] = {name: metrics.spearman(df[a], df[b]) for name, a, b in pairs}
    df.attrs["hematoxylin_threshold"] = thr
    return df


def _patch_nuclei(patches: np.ndarray, thr: float, progress: bool) -> dict[str, np.ndarray]:
    n = len(patches)
    nuc = _features.segment_nuclei(patches, threshold=thr, progress=progress)
    count = np.bincount(nuc["patch"], minlength=n).astype(np.float64)
    area = np.bincount(nuc["patch"], weights=nuc["area"], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_area = np.where(count > 0, area / np.maximum(count, 1), np.nan)
    return {"n_nuclei": count, "mean_area": mean_area}
