"""``c2lst.pp.prepare_expression`` and the private helpers that replay its normalisation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _reliability_helpers import state as snapshot
from scipy import sparse

import c2lst
from c2lst.pp import prepare_expression
from c2lst.pp._expression import apply_expression, expression_genes, expression_params


def _counts(n_obs=60, n_vars=40, seed=0, sparse_x=True):
    rng = np.random.default_rng(seed)
    mean = rng.gamma(1.0, 2.0, size=n_vars)
    disp = np.where(np.arange(n_vars) % 4 == 0, 0.2, 20.0)  # every 4th gene overdispersed (variable)
    lib = rng.uniform(0.5, 2.0, size=(n_obs, 1))
    p = disp / (disp + mean * lib)
    x = rng.negative_binomial(disp, p).astype(np.float32)
    adata = ad.AnnData(
        sparse.csr_matrix(x) if sparse_x else x,
        obs=pd.DataFrame(index=[f"spot{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]),
    )
    return adata


def _dense(m):
    return m.toarray() if sparse.issparse(m) else np.asarray(m)


def _manual_lognorm(x, genes_idx):
    x = _dense(x).astype(np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)[:, genes_idx]


def test_counts_use_seurat_v3_and_normalize_log1p():
    adata = _counts()
    x_before = _dense(adata.X).copy()
    assert prepare_expression(adata, n_top_genes=10) is None
    rec = adata.uns["c2lst"]["expr"]["c2lst_expr"]
    genes = list(rec["genes"])
    assert len(genes) == 10
    assert rec["flavor"] == "seurat_v3"
    assert rec["normalization"] == "normalize_total+log1p"
    assert rec["target_sum"] == 1e4
    assert rec["layer"] == "X"
    assert rec["n_top_genes"] == 10
    idx = adata.var_names.get_indexer(genes)
    assert (np.diff(idx) > 0).all()  # kept in var order
    assert np.mean(idx % 4 == 0) >= 0.8  # the overdispersed genes are found
    m = adata.obsm["c2lst_expr"]
    assert m.dtype == np.float32
    assert m.shape == (60, 10)
    np.testing.assert_allclose(m, _manual_lognorm(x_before, idx), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_dense(adata.X), x_before)  # .X untouched
    assert expression_genes(adata) == genes


def test_log_normalised_input_is_used_as_is_with_seurat_flavor():
    adata = _counts(sparse_x=False)
    adata.X = np.log1p(adata.X / adata.X.sum(1, keepdims=True) * 1e4)
    x_before = adata.X.copy()
    prepare_expression(adata, n_top_genes=8, key_added="c2lst_log")
    rec = adata.uns["c2lst"]["expr"]["c2lst_log"]
    assert rec["flavor"] == "seurat"
    assert rec["normalization"].startswith("none")
    assert rec["target_sum"] == 0.0
    idx = adata.var_names.get_indexer(list(rec["genes"]))
    np.testing.assert_allclose(adata.obsm["c2lst_log"], x_before[:, idx], rtol=1e-6)
    np.testing.assert_array_equal(adata.X, x_before)


def test_given_genes_in_given_order_from_a_layer_with_copy():
    adata = _counts()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
    before = snapshot(adata)
    out = prepare_expression(adata, genes=["g7", "g2", "g30"], layer="counts", copy=True)
    assert snapshot(adata) == before  # copy=True leaves the input alone
    rec = out.uns["c2lst"]["expr"]["c2lst_expr"]
    assert list(rec["genes"]) == ["g7", "g2", "g30"]
    assert rec["flavor"] == "given"
    assert rec["layer"] == "counts"
    exp = _manual_lognorm(adata.layers["counts"], [7, 2, 30])
    np.testing.assert_allclose(out.obsm["c2lst_expr"], exp, rtol=1e-5, atol=1e-5)


def test_integer_dtype_counts():
    adata = _counts(sparse_x=False)
    adata.X = adata.X.astype(np.int64)
    prepare_expression(adata, n_top_genes=5)
    assert adata.uns["c2lst"]["expr"]["c2lst_expr"]["flavor"] == "seurat_v3"


def test_apply_expression_replays_the_recorded_normalisation(tmp_path):
    adata = _counts()
    prepare_expression(adata, n_top_genes=12)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")  # params survive serialisation
    params = expression_params(back)
    genes = expression_genes(back)
    # another table: same spots, genes shuffled, gene names matched by name
    order = np.random.default_rng(1).permutation(adata.n_vars)
    other = adata[:, order].copy()
    np.testing.assert_allclose(
        apply_expression(other, genes=genes, params=params), adata.obsm["c2lst_expr"], rtol=1e-5, atol=1e-5
    )
    # a raw matrix over the genes, with totals over all genes
    sub = _dense(adata[:, genes].X)
    totals = _dense(adata.X).sum(axis=1)
    got = apply_expression(sub, genes=genes, params=params, totals=totals)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, adata.obsm["c2lst_expr"], rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match=r"g3.*not in `var_names`|not in `var_names`.*g3"):
        apply_expression(
            other[:, [g for g in other.var_names if g != "g3"]], genes=["g3", "g4"], params=params
        )
    with pytest.raises(ValueError, match=r"one column per gene"):
        apply_expression(sub[:, :3], genes=genes, params=params)


def test_expression_params_missing_key():
    with pytest.raises(KeyError, match=r"key='c2lst_expr'.*prepare_expression"):
        expression_genes(_counts())


def _nan():
    a = _counts(sparse_x=False)
    a.X[3, 4] = np.nan
    return a


def _negative():
    a = _counts(sparse_x=False)
    a.X[0, 0] = -1
    return a


@pytest.mark.parametrize(
    ("make", "kwargs", "exc", "match"),
    [
        (_nan, {}, ValueError, r"adata\.X.*NaN"),
        (_negative, {}, ValueError, r"adata\.X.*negative"),
        (_counts, {"n_top_genes": 41}, ValueError, r"n_top_genes=41.*40"),
        (_counts, {"n_top_genes": 0}, ValueError, r"n_top_genes"),
        (_counts, {"genes": ["g1", "nope", "nada"]}, KeyError, r"genes.*\['nope', 'nada'\]"),
        (_counts, {"genes": ["g1", "g1"]}, ValueError, r"genes.*more than once"),
        (_counts, {"genes": "g1"}, TypeError, r"genes"),
        (_counts, {"layer": "counts"}, KeyError, r"layer='counts'"),
        (_counts, {"key_added": ""}, TypeError, r"key_added"),
        (lambda: _counts()[:0].copy(), {}, ValueError, r"adata.*empty"),
    ],
    ids=["nan", "negative", "too_many_genes", "zero_genes", "unknown", "dup", "str", "layer", "key", "empty"],
)
def test_bad_input_leaves_adata_unchanged(make, kwargs, exc, match):
    adata = make()
    before = snapshot(adata)
    with pytest.raises(exc, match=match):
        prepare_expression(adata, **kwargs)
    assert snapshot(adata) == before


def test_not_an_anndata():
    with pytest.raises(TypeError, match=r"adata"):
        prepare_expression(np.ones((3, 3)))


def test_on_the_simulated_visium_table():
    import c2lst

    table = c2lst.datasets.simulated_visium(n_spots=40, seed=2).tables["table"]
    prepare_expression(table, n_top_genes=25)
    rec = expression_params(table)
    assert rec["flavor"] == "seurat_v3"  # raw counts detected
    assert table.obsm["c2lst_expr"].shape == (40, 25)
    assert np.isfinite(table.obsm["c2lst_expr"]).all()


def test_prepare_expression_keeps_torch_thread_count():
    """scanpy's numba kernels reset the shared OpenMP thread count; c2lst restores torch's afterwards."""
    import torch

    sdata = c2lst.datasets.simulated_visium(n_spots=30, seed=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c2lst.pp.prepare_expression(sdata.tables["table"], n_top_genes=10)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
