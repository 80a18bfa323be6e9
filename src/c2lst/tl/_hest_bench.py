"""``tl.hest_bench``: image -> expression scored like HEST-Bench (held-out samples, fixed genes, Pearson r)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._logging import logger
from .._logging import progress as _progress
from .._records import section, synthetic_mask
from .._utils import as_table, check_kwargs, require_obsm
from ..metrics import pearson
from ._predict import fit_predictor

SPLITS = ("sample", "patient")
NORMALIZATIONS = ("log1p", "none")
_EXPR_KEY = "hest_target"


def read_gene_list(genes: Any) -> list[str]:
    """Return the gene list of ``genes``: a list of names, or a HEST-Bench JSON file ``{"genes": [...]}``."""
    if isinstance(genes, str | os.PathLike) and Path(genes).suffix.lower() == ".json":
        path = Path(genes)
        if not path.is_file():
            raise FileNotFoundError(f"`genes={str(path)!r}` does not exist; pass a HEST-Bench gene-list JSON.")
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"`genes={str(path)!r}` is not valid JSON ({err}).") from None
        if not isinstance(content, dict) or "genes" not in content:
            raise ValueError(f"`genes={str(path)!r}` must hold a JSON object with a 'genes' list, like HEST-Bench's.")
        genes = content["genes"]
    if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray):
        raise TypeError(f"`genes` must be a list of gene names or a path to a '.json' gene list, got {genes!r}.")
    out = [str(g) for g in genes]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"`genes` must be a non-empty list of distinct names, got {len(out)} with repeats or none.")
    return out


def _named(samples: Any, table_key: str) -> list[tuple[str, AnnData]]:
    if isinstance(samples, Mapping):
        pairs = [(str(k), v) for k, v in samples.items()]
    elif isinstance(samples, Sequence) and not isinstance(samples, str):
        pairs = [(None, v) for v in samples]
    else:
        raise TypeError(f"`samples` must be a list or a dict of SpatialData/AnnData, got {type(samples).__name__}.")
    out = []
    for i, (name, item) in enumerate(pairs):
        table = as_table(item, table_key, f"samples[{i}]")
        sid = section(table, "source").get("sample_id") if name is None else name
        out.append((str(sid) if sid else f"sample{i}", table))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"`samples` repeat the sample names {names}; pass a dict {{name: sample}} with distinct names.")
    if len(out) < 2:
        raise ValueError(f"`samples` holds {len(out)} sample(s); held-out evaluation needs at least 2.")
    return out


def _patient(name: str, table: AnnData) -> str:
    try:
        patient = json.loads(section(table, "source").get("metadata", "{}")).get("patient")
    except (TypeError, ValueError):
        patient = None
    if patient in (None, "") or (isinstance(patient, float) and not np.isfinite(patient)):
        raise ValueError(
            f"sample {name!r} records no patient (`uns['c2lst']['source']['metadata']['patient']`, written by "
            "`c2lst.datasets.read_hest`); use `split='sample'` or `splits_dir=`."
        )
    return str(patient)


def _folds(names: list[str], tables: list[AnnData], split: str, splits_dir: Any) -> list[tuple[list[str], list[str]]]:
    """Return ``[(train names, test names)]``: HEST-Bench split CSVs, or leave one sample / patient out."""
    if splits_dir is not None:
        folder = Path(splits_dir)
        tests = sorted(folder.glob("test_*.csv"), key=lambda p: p.stem)
        if not folder.is_dir() or not tests:
            raise FileNotFoundError(
                f"`splits_dir={str(splits_dir)!r}` holds no HEST-Bench `test_{{i}}.csv` / `train_{{i}}.csv` files."
            )
        folds = []
        for test_csv in tests:
            train_csv = folder / test_csv.name.replace("test_", "train_", 1)
            sets = []
            for csv in (train_csv, test_csv):
                if not csv.is_file():
                    raise FileNotFoundError(f"`splits_dir`: {str(csv)!r} is missing; each test CSV needs its train CSV.")
                frame = pd.read_csv(csv)
                if "sample_id" not in frame:
                    raise ValueError(f"`splits_dir`: {str(csv)!r} has no `sample_id` column.")
                ids = [str(s) for s in frame["sample_id"]]
                unknown = sorted(set(ids) - set(names))
                if unknown:
                    raise KeyError(f"`splits_dir`: {str(csv)!r} names samples {unknown} not in `samples` ({names}).")
                sets.append(ids)
            folds.append((sets[0], sets[1]))
        return folds
    groups = names if split == "sample" else [_patient(n, t) for n, t in zip(names, tables, strict=True)]
    if len(set(groups)) < 2:
        raise ValueError(f"all samples belong to one {split} ({groups[0]!r}); held-out evaluation needs two.")
    out = []
    for g in dict.fromkeys(groups):
        test = [n for n, gg in zip(names, groups, strict=True) if gg == g]
        out.append(([n for n in names if n not in test], test))
    return out


def _targets(table: AnnData, name: str, genes: list[str], layer: str | None, normalize: str) -> np.ndarray:
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise KeyError(
            f"sample {name!r} lacks {len(missing)} of the `genes` (e.g. {missing[:5]}); HEST-Bench gene lists are "
            "chosen per task, pass the list that goes with these samples."
        )
    if layer is not None and layer not in table.layers:
        raise KeyError(f"`layer={layer!r}` is not a layer of sample {name!r} (layers: {sorted(table.layers)}).")
    cols = table.var_names.get_indexer(genes)
    matrix = table.X if layer is None else table.layers[layer]
    y = matrix[:, cols]
    y = np.asarray(y.toarray() if sparse.issparse(y) else y, dtype=np.float64)
    if not np.isfinite(y).all() or (normalize == "log1p" and (y < 0).any()):
        raise ValueError(f"sample {name!r}: the counts of `genes` hold negative or non-finite values; pass raw counts.")
    return np.log1p(y) if normalize == "log1p" else y


def hest_bench(
    samples: Sequence[Any] | Mapping[str, Any],
    *,
    genes: Sequence[str] | str | os.PathLike,
    split: Literal["sample", "patient"] = "sample",
    splits_dir: str | os.PathLike | None = None,
    normalize: Literal["log1p", "none"] = "log1p",
    layer: str | None = None,
    mode: Literal["cnn", "ridge"] = "ridge",
    table_key: str = "table",
    patch_key: str = "c2lst_patch",
    predictor_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Score c2lst's image -> expression predictor like HEST-Bench: held-out samples, a fixed gene list, Pearson r.

    For each fold a predictor (:func:`c2lst.tl.fit_predictor`) is fitted on the patches and expression of the
    training samples and predicts the held-out samples' spots; each gene is scored by Pearson's r over the
    pooled test spots. As in HEST-Bench, the targets are ``log1p`` of the raw counts of the listed genes, a
    fold's score is the mean r over genes, and the task's score is the mean (± std) of the fold scores.

    Parameters
    ----------
    samples
        Two or more samples (e.g. from :func:`c2lst.datasets.read_hest`), SpatialData or AnnData, with patches in
        ``obsm[patch_key]`` (of one size) and counts in ``X``; a dict names them, else the sample id a reader
        recorded names them. Synthetic rows (``obs["c2lst_synthetic"]``) are left out: only measured spots are
        scored and trained on.
    genes
        The genes to predict: a list, or a HEST-Bench gene-list JSON (``{"genes": [...]}``, e.g.
        ``var_50genes.json``). Every sample must have them all.
    split
        ``"sample"``: leave one sample out; ``"patient"``: leave one patient out (the patient recorded by
        :func:`~c2lst.datasets.read_hest`), HEST-Bench's patient-level split.
    splits_dir
        A HEST-Bench ``splits/`` folder (``train_{i}.csv`` / ``test_{i}.csv`` with a ``sample_id`` column); it
        overrides ``split`` so the folds are exactly the published ones.
    normalize
        ``"log1p"`` (HEST-Bench) or ``"none"`` (the values as stored).
    layer
        Read counts from this layer instead of ``X``.
    mode
        Predictor mode of :func:`c2lst.tl.fit_predictor`.
    table_key
        Table of each SpatialData.
    patch_key
        Patches in ``obsm``.
    predictor_kwargs
        More keywords of :func:`c2lst.tl.fit_predictor` (e.g. ``features="central"``, ``central=``,
        ``n_steps=``).
    seed
        Seed of every predictor.
    progress
        Show a progress bar over folds.

    Returns
    -------
    A DataFrame with one row per fold and gene: ``fold``, ``test`` (held-out samples, comma-joined), ``gene``,
    ``pearson_r`` (NaN when a gene is constant in the test spots), ``n_train`` and ``n_test`` spots.
    ``df.attrs["hest_bench"]`` holds the HEST-style summary: ``pearson_mean`` and ``pearson_std`` over fold
    means (NaN genes skipped), ``mean_per_fold``, ``pearson_per_gene`` (mean over folds) and the settings. The
    samples are not modified.

    Examples
    --------
    >>> import c2lst
    >>> samples = [c2lst.datasets.read_hest("hest_data", s, patches=True, size=64) for s in ("TENX95", "TENX99")]  # doctest: +SKIP
    >>> df = c2lst.tl.hest_bench(samples, genes="bench_data/IDC/var_50genes.json")  # doctest: +SKIP
    >>> df.attrs["hest_bench"]["pearson_mean"]  # doctest: +SKIP
    """
    gene_list = read_gene_list(genes)
    if split not in SPLITS:
        raise ValueError(f"`split={split!r}` is unknown; pass one of {list(SPLITS)}.")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"`normalize={normalize!r}` is unknown; pass one of {list(NORMALIZATIONS)}.")
    if not isinstance(patch_key, str) or not patch_key:
        raise TypeError(f"`patch_key` must be a non-empty string, got {patch_key!r}.")
    reserved = {"mode": "`mode=`", "seed": "`seed=`", "patch_key": "`patch_key=`", "expr_key": "set by hest_bench",
                "include_synthetic": "real spots only", "progress": "`progress=`"}  # fmt: skip
    kwargs = check_kwargs(predictor_kwargs, "predictor_kwargs", reserved)
    named = _named(samples, table_key)
    names = [n for n, _ in named]
    data = {}
    for name, table in named:
        patches = np.asarray(require_obsm(table, patch_key, "patch_key", "run `c2lst.pp.extract_patches` first."))
        real = ~synthetic_mask(table)
        if not real.any():
            raise ValueError(f"sample {name!r} holds only synthetic rows; HEST-Bench scores measured spots.")
        data[name] = (patches[real], _targets(table, name, gene_list, layer, normalize)[real])
    sizes = sorted({p.shape[1:] for p, _ in data.values()})
    if len(sizes) > 1:
        raise ValueError(f"`samples` mix patch shapes {sizes}; extract all samples with the same `size=`.")
    folds = _folds(names, [t for _, t in named], split, splits_dir)

    rows = []
    for k, (train, test) in enumerate(_progress(folds, enabled=progress, desc="hest_bench", unit="fold")):
        x_tr = np.concatenate([data[n][0] for n in train])
        y_tr = np.concatenate([data[n][1] for n in train]).astype(np.float32)
        fold_table = AnnData(y_tr, obsm={patch_key: x_tr, _EXPR_KEY: y_tr})
        fold_table.var_names = gene_list
        fold_table.obs_names = [f"{n}:{i}" for n in train for i in range(len(data[n][0]))]
        model = fit_predictor(
            fold_table, expr_key=_EXPR_KEY, patch_key=patch_key, mode=mode, seed=seed, progress=False, **kwargs
        )
        x_te = np.concatenate([data[n][0] for n in test])
        y_te = np.concatenate([data[n][1] for n in test])
        r = np.atleast_1d(pearson(y_te, model.predict(x_te).astype(np.float64)))
        for gene, value in zip(gene_list, r, strict=True):
            rows.append({"fold": k, "test": ",".join(test), "gene": gene, "pearson_r": float(value),
                         "n_train": len(x_tr), "n_test": len(x_te)})  # fmt: skip
        logger.info(f"hest_bench fold {k} (test {test}): mean r = {np.nanmean(r):.3f}")
    frame = pd.DataFrame(rows)
    per_fold = frame.groupby("fold")["pearson_r"].mean()  # pandas skips NaN genes
    frame.attrs["hest_bench"] = {
        "pearson_mean": float(per_fold.mean()),
        "pearson_std": float(per_fold.std(ddof=0)) if len(per_fold) > 1 else 0.0,
        "mean_per_fold": [float(v) for v in per_fold],
        "pearson_per_gene": {g: float(v) for g, v in frame.groupby("gene", sort=False)["pearson_r"].mean().items()},
        "n_nan": int(frame["pearson_r"].isna().sum()),
        "folds": [{"train": tr, "test": te} for tr, te in folds],
        "split": "splits_dir" if splits_dir is not None else split,
        "normalize": normalize,
        "mode": mode,
        "genes": gene_list,
    }
    return frame
