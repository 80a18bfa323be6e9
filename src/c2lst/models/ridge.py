"""Closed-form ridge regression: weighted fits and the choice of the penalty.

Without weights or groups the penalty is chosen by exact leave-one-out error (one SVD for all candidates).
With ``groups`` (e.g. a real spot and its synthetic children) it is chosen by grouped K-fold error measured on
the ``eval_mask`` rows only, so siblings of a held-out row never vote on their own penalty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_weights(weights: np.ndarray | None, n: int, name: str = "weights", n_columns: int | None = None) -> np.ndarray:
    """Return validated row weights ``(n,)`` (all 1 for ``None``); raise a :class:`ValueError` naming ``name``.

    With ``n_columns``, weights per row and target column ``(n, n_columns)`` are accepted too; each column needs
    a positive weight on some row.
    """
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    shapes = [(n,)] if n_columns is None else [(n,), (n, n_columns)]
    ok = w.shape in shapes and bool(np.all(np.isfinite(w))) and not np.any(w < 0)
    if not ok or np.any(w.reshape(n, -1).sum(axis=0) <= 0):
        raise ValueError(
            f"`{name}` must hold finite, non-negative values of shape {' or '.join(map(str, shapes))}, not all "
            f"zero{' in any column' if n_columns is not None else ''}; got shape {w.shape}."
        )
    return w


def _centred_svd(x: np.ndarray, z: np.ndarray, w: np.ndarray):
    """Weighted means of ``x`` and ``z``, and the SVD of the weighted centred ``x`` with ``U^T z`` (centred)."""
    mx = w @ x / w.sum()
    mz = w @ z / w.sum()
    sw = np.sqrt(w)[:, None]
    u, s, vt = np.linalg.svd((x - mx) * sw, full_matrices=False)
    return mx, mz, s, vt, u.T @ ((z - mz) * sw)


def ridge_fit(
    x: np.ndarray, z: np.ndarray, alpha: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ridge coefficients ``(D, G)`` and intercept ``(G,)`` of ``z ~ x``, rows weighted by ``weights``.

    Parameters
    ----------
    x
        Features ``(n, D)``.
    z
        Targets ``(n, G)``.
    alpha
        Penalty.
    weights
        Row weights ``(n,)`` (``None``: all 1); the loss is ``sum_i w_i ||z_i - x_i B - b||²``.

    Returns
    -------
    ``(coef, intercept)``; predictions are ``x @ coef + intercept``.

    Examples
    --------
    >>> x = np.eye(3)
    >>> coef, b = ridge_fit(x, x, 1e-9)
    >>> np.allclose(x @ coef + b, x, atol=1e-6)
    True
    """
    mx, mz, s, vt, uz = _centred_svd(x, z, check_weights(weights, len(x)))
    coef = vt.T @ ((s / (s**2 + alpha))[:, None] * uz)
    return coef, mz - mx @ coef


def ridge_solve(x: np.ndarray, z: np.ndarray, alpha: float) -> np.ndarray:
    """Return unweighted ridge coefficients ``(D, G)`` (see :func:`ridge_fit` for weights and the intercept).

    Examples
    --------
    >>> x = np.eye(3)
    >>> ridge_solve(x, x, 1e-9).round(3).shape
    (3, 3)
    """
    return ridge_fit(x, z, alpha)[0]


def _default_alphas(n: int, alphas: Sequence[float] | None) -> np.ndarray:
    # features are standardised, so x.T @ x ~ n
    return np.asarray(n * np.logspace(-4, 3, 15) if alphas is None else alphas, dtype=float)


def ridge_alpha(
    x: np.ndarray,
    z: np.ndarray,
    alphas: Sequence[float] | None = None,
    *,
    weights: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    eval_mask: np.ndarray | None = None,
    n_folds: int = 10,
) -> tuple[float, float]:
    """Choose the ridge penalty by held-out mean squared error.

    Parameters
    ----------
    x
        Features ``(n, D)``.
    z
        Targets ``(n, G)``.
    alphas
        Candidates; default ``n * logspace(-4, 3, 15)``.
    weights
        Row weights of the fits (see :func:`ridge_fit`).
    groups
        Group label per row (e.g. the parent spot of each synthetic row, a real row's own name). Rows of a
        group are held out together in grouped K-fold cross-validation.
    eval_mask
        Rows whose held-out error counts (e.g. the real rows); default all.
    n_folds
        Folds of the grouped cross-validation (capped by the number of groups).

    Returns
    -------
    ``(alpha, mse)`` of the best candidate (mean over genes and evaluated rows). Without ``weights`` and
    ``groups`` the error is the exact leave-one-out error.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(30, 2))
    >>> a, err = ridge_alpha(x, x @ np.ones((2, 1)))
    >>> bool(err < 0.01)
    True
    """
    n = len(x)
    cand = _default_alphas(n, alphas)
    if weights is None and groups is None and eval_mask is None:
        return _loo_alpha(x, z, cand)
    w = check_weights(weights, n)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"`groups` must hold one label per row ({n}), got shape {groups.shape}.")
    ev = np.ones(n, dtype=bool) if eval_mask is None else np.asarray(eval_mask, dtype=bool)
    labels, inverse = np.unique(groups, return_inverse=True)
    k = int(min(max(2, n_folds), len(labels)))
    if k < 2:
        raise ValueError("grouped cross-validation needs at least 2 groups.")
    fold_of_group = np.random.default_rng(0).permutation(len(labels)) % k
    fold = fold_of_group[inverse]
    err = np.zeros(len(cand))
    count = 0
    for f in range(k):
        test = (fold == f) & ev
        train = fold != f
        if not test.any() or w[train].sum() <= 0:
            continue
        mx, mz, s, vt, uz = _centred_svd(x[train], z[train], w[train])
        xt = (x[test] - mx) @ vt.T
        for j, alpha in enumerate(cand):
            pred = xt @ ((s / (s**2 + alpha))[:, None] * uz) + mz
            err[j] += float(((z[test] - pred) ** 2).sum())
        count += int(test.sum()) * z.shape[1]
    if count == 0:
        raise ValueError("no evaluated rows could be held out; pass `eval_mask` with rows in several groups.")
    best = int(np.argmin(err))
    return float(cand[best]), float(err[best] / count)


def _loo_alpha(x: np.ndarray, z: np.ndarray, alphas: np.ndarray) -> tuple[float, float]:
    """Exact leave-one-out choice of the penalty (one SVD for all candidates)."""
    n = len(x)
    xc = x - x.mean(axis=0)
    zc = z - z.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    uz = u.T @ zc
    best = (float(alphas[0]), np.inf)
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink[:, None] * uz)
        hat = 1.0 / n + (u**2) @ shrink
        loo = ((zc - fitted) / np.maximum(1.0 - hat, 1e-9)[:, None]) ** 2
        err = float(loo.mean())
        if err < best[1]:
            best = (float(alpha), err)
    return best


def fit_ridge_head(
    features: np.ndarray,
    z: np.ndarray,
    weights: np.ndarray,
    *,
    alpha: float | None = None,
    groups: np.ndarray | None = None,
    eval_mask: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Standardise ``features`` (weighted), choose the penalty unless ``alpha`` is given and fit ``z ~ features``.

    Parameters
    ----------
    features
        Features ``(n, D)``.
    z
        Targets ``(n, G)``.
    weights
        Row weights ``(n,)`` (all 1: the plain, unweighted fit and leave-one-out penalty), or weights per row and
        target ``(n, G)``: the targets that share a weight column are fitted together, each group with its own
        penalty (features are standardised with the mean weight of each row).
    alpha
        Ridge penalty on the standardised features; ``None`` chooses it with :func:`ridge_alpha`.
    groups, eval_mask
        Grouped cross-validation of the penalty (see :func:`ridge_alpha`).

    Returns
    -------
    ``coef`` ``(D, G)`` and ``intercept`` ``(G,)`` (float32), ``feature_mean`` and ``feature_std`` ``(D,)``
    (float64), and the summary ``{"alpha", "loo_mse", "n_features"}`` (with per-target weights, ``alpha`` and
    ``loo_mse`` are the means over targets and ``alpha_per_target`` lists each target's penalty).
    """
    w = np.asarray(weights, dtype=float)
    row_w = w if w.ndim == 1 else w.mean(axis=1)
    f_mean = row_w @ features / row_w.sum()
    f_std = np.sqrt(row_w @ (features - f_mean) ** 2 / row_w.sum())
    f_std = np.where(f_std > 1e-12, f_std, 1.0)
    xs = (features - f_mean) / f_std
    if w.ndim == 1:
        coef, intercept, alpha, loo = _ridge_head(xs, z, w, alpha, groups, eval_mask)
        summary: dict[str, Any] = {"alpha": float(alpha), "loo_mse": float(loo)}
    else:
        coef, intercept = np.zeros((xs.shape[1], z.shape[1])), np.zeros(z.shape[1])
        alphas, loos = np.zeros(z.shape[1]), np.zeros(z.shape[1])
        columns, which = np.unique(w.T, axis=0, return_inverse=True)
        for k, col in enumerate(columns):
            cols = np.flatnonzero(which.ravel() == k)
            coef[:, cols], intercept[cols], alphas[cols], loos[cols] = _ridge_head(
                xs, z[:, cols], col, alpha, groups, eval_mask
            )
        summary = {"alpha": float(alphas.mean()), "loo_mse": float(loos.mean()),
                   "alpha_per_target": [float(a) for a in alphas]}
    arrays = {
        "coef": coef.astype(np.float32),
        "intercept": intercept.astype(np.float32),
        "feature_mean": f_mean.astype(np.float64),
        "feature_std": f_std.astype(np.float64),
    }
    return arrays, {**summary, "n_features": int(xs.shape[1])}


def _ridge_head(xs, z, w, alpha, groups, eval_mask):
    """Penalty (given or chosen) and ridge fit of ``z ~ xs`` under row weights ``w``."""
    plain = groups is None and eval_mask is None and np.all(w == 1)
    if alpha is not None:
        alpha, loo = float(alpha), float("nan")
    elif plain:
        alpha, loo = ridge_alpha(xs, z)
    else:
        alpha, loo = ridge_alpha(xs, z, weights=w, groups=groups, eval_mask=eval_mask)
    coef, intercept = ridge_fit(xs, z, alpha, weights=None if plain else w)
    return coef, intercept, alpha, loo
