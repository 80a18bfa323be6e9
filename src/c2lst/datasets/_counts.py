"""Gene-expression model of the simulated Visium slide: cell-type programs -> spot counts.

Per spot ``s`` and gene ``g`` the expected count is

``mu[s, g] = eff[s] * (sum_k n[s, k] * beta[k, g] * exp(w[g] * field[f(g), s]) + ambient[g])``

with ``n[s, k]`` the nuclei of type ``k`` under the spot, ``beta`` the per-cell rates (marker genes are
high in one type, housekeeping genes similar in all, smooth genes follow a spatial field ``f(g)``
unrelated to the cell types), ``eff`` a log-normal capture efficiency and a small ambient term.
Pure-noise genes have a constant mean. Counts are negative binomial (gamma-Poisson) with a per-gene
dispersion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

GENE_KINDS = ("marker", "smooth", "noise", "housekeeping")
MIN_GENES_EXTRA = 3  # besides one marker per type: >= 1 smooth, noise and housekeeping gene


@dataclass
class GenePanel:
    """Per-gene annotation and parameters."""

    var: pd.DataFrame
    beta: np.ndarray  # (n_types, n_genes) counts per cell
    field: np.ndarray  # (n_genes,) index of the spatial field (-1: none)
    weight: np.ndarray  # (n_genes,) strength of the spatial modulation
    noise_mean: np.ndarray  # (n_genes,) constant mean of pure-noise genes (0 otherwise)
    theta: np.ndarray  # (n_genes,) NB inverse dispersion


def make_panel(
    n_genes: int, cell_types: tuple[str, ...], n_fields: int, rng: np.random.Generator
) -> GenePanel:
    """Draw the gene panel: kinds, marker assignments and per-type rates."""
    n_types = len(cell_types)
    n_marker = max(n_types, round(0.4 * n_genes))
    n_house = max(1, round(0.15 * n_genes))
    n_smooth = max(1, round(0.25 * n_genes))
    n_noise = n_genes - n_marker - n_house - n_smooth
    while n_noise < 1:  # tiny panels: take from the largest group above its minimum
        if n_marker > n_types:
            n_marker -= 1
        elif n_smooth > 1:
            n_smooth -= 1
        else:
            n_house -= 1
        n_noise += 1
    kind = np.array(
        ["marker"] * n_marker + ["housekeeping"] * n_house + ["smooth"] * n_smooth + ["noise"] * n_noise
    )
    marker_of = np.array([cell_types[i % n_types] for i in range(n_marker)] + [""] * (n_genes - n_marker))
    order = rng.permutation(n_genes)
    kind, marker_of = kind[order], marker_of[order]

    beta = np.zeros((n_types, n_genes))
    field = np.full(n_genes, -1)
    weight = np.zeros(n_genes)
    noise_mean = np.zeros(n_genes)
    for g in range(n_genes):
        if kind[g] == "marker":
            k = cell_types.index(marker_of[g])
            high = rng.lognormal(np.log(3.0), 0.6)
            beta[:, g] = high / rng.uniform(8.0, 40.0, n_types)
            if rng.random() < 0.25:  # shared, weaker expression in one other type
                other = (k + 1 + rng.integers(n_types - 1)) % n_types
                beta[other, g] = high * rng.uniform(0.2, 0.5)
            beta[k, g] = high
        elif kind[g] == "housekeeping":
            beta[:, g] = rng.lognormal(np.log(6.0), 0.5) * rng.lognormal(0.0, 0.15, n_types)
        elif kind[g] == "smooth":
            beta[:, g] = rng.lognormal(np.log(1.5), 0.5)
            field[g] = rng.integers(n_fields)
            weight[g] = rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])
        else:
            noise_mean[g] = rng.lognormal(np.log(15.0), 0.6)
    var = pd.DataFrame(
        {"c2lst_gene_kind": kind, "c2lst_marker_of": marker_of},
        index=pd.Index([f"gene_{i:03d}" for i in range(n_genes)]),
    )
    theta = rng.uniform(2.0, 15.0, n_genes)
    return GenePanel(var=var, beta=beta, field=field, weight=weight, noise_mean=noise_mean, theta=theta)


def draw_counts(
    panel: GenePanel, cell_counts: np.ndarray, fields_at_spots: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Return ``(n_spots, n_genes)`` integer counts for cell counts ``(n_spots, n_types)``."""
    n_spots = cell_counts.shape[0]
    per_cell = cell_counts.astype(np.float64) @ panel.beta  # (n_spots, n_genes)
    has_field = panel.field >= 0
    if has_field.any():
        mod = fields_at_spots[panel.field[has_field]].T * panel.weight[has_field]  # (n_spots, n_smooth)
        per_cell[:, has_field] *= np.exp(mod - mod.mean(0))
    ambient = 0.3 * panel.beta.mean(0)
    eff = rng.lognormal(0.0, 0.3, n_spots)[:, None]
    mu = eff * (per_cell + ambient)
    is_noise = panel.noise_mean > 0
    mu[:, is_noise] = panel.noise_mean[is_noise]
    lam = rng.gamma(panel.theta, mu / panel.theta)
    return rng.poisson(lam)
