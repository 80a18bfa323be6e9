"""The synthetic and augmented tables work with scverse's spatial plots (issue 14, item 7)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import c2lst

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def augmented(sim_sdata_base, adapted_base):
    from spatialdata import SpatialData

    sdata = SpatialData(
        images=dict(sim_sdata_base.images),
        shapes={k: v.copy() for k, v in sim_sdata_base.shapes.items()},
        tables={"table": adapted_base.copy()},
    )
    c2lst.tl.synthesize(sdata, n_per_condition=2, n_steps=2, seed=0, progress=False)
    return sdata.tables["c2lst_synthetic"], c2lst.tl.concat_augmented(sdata)


def test_augmented_synthetic_rows_sit_on_their_parents_coordinates(augmented):
    syn, aug = augmented
    is_syn = aug.obs["c2lst_synthetic"].to_numpy()
    real, children = aug[~is_syn], aug[is_syn]
    pos = real.obs_names.get_indexer(children.obs["c2lst_parent"].astype(str))
    assert (pos >= 0).all() and children.n_obs == syn.n_obs
    np.testing.assert_array_equal(children.obsm["spatial"], real.obsm["spatial"][pos])
    # the synthetic table itself places rows in its own image element, not on the tissue
    assert not np.array_equal(np.asarray(syn.obsm["spatial"], float)[:, :2], children.obsm["spatial"])


def test_scanpy_embedding_draws_the_synthetic_table_in_space(augmented):
    import matplotlib.pyplot as plt
    import scanpy as sc

    syn, aug = augmented
    for table in (syn, aug):
        ax = sc.pl.embedding(table, basis="spatial", color=table.var_names[0], show=False)
        assert len(ax.collections[0].get_offsets()) == table.n_obs
        plt.close("all")


def test_squidpy_spatial_scatter_draws_the_synthetic_table_as_the_docs_say(augmented):
    sq = pytest.importorskip("squidpy")  # not a c2lst dependency; the docs give this call
    import matplotlib.pyplot as plt

    syn, _ = augmented
    sq.pl.spatial_scatter(syn, shape=None, color=syn.var_names[0])
    assert plt.gcf().axes
    plt.close("all")
