"""Embedded and real datasets: a simulated Visium H&E sample with ground truth, real histology patches.

- :func:`simulated_visium`: Visium-like SpatialData (H&E image, 55 µm spots, counts) with the true
  cell-type composition of every spot.
- :func:`ihc_patches`: unpaired real patches from the IHC image that scikit-image ships.
- :func:`from_visium_crop`, :func:`he_patches`: real Visium crops and real H&E tiles from user files.
- :func:`read_hest`: one HEST-1k sample (lazy pyramidal slide, spots, expression, optional patches).
- :func:`write_spaceranger_outs`: write a sample as a 10x Space Ranger ``outs/`` folder.
- :func:`pretrained_central`: the central model that ships with c2lst (``"tiny-sim"``).
"""

from ._hest import read_hest
from ._ihc import ihc_patches
from ._pretrained import pretrained_central, pretrained_names
from ._real import from_visium_crop, he_patches
from ._simulate import simulated_visium, stain_presets
from ._spaceranger import write_spaceranger_outs

__all__ = [
    "from_visium_crop",
    "he_patches",
    "ihc_patches",
    "pretrained_central",
    "pretrained_names",
    "read_hest",
    "simulated_visium",
    "stain_presets",
    "write_spaceranger_outs",
]
