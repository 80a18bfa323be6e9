"""Image -> expression regressors: a small CNN trained from scratch, or frozen features + ridge.

Engine code: numpy and torch only (no AnnData). The AnnData skin is :mod:`c2lst.tl._predict`.

Modes
-----
``"cnn"``
    A small convolutional network (conv-GroupNorm-ReLU blocks with max pooling, global average pooling, linear
    head; ~100k parameters with the default ``widths``) trained with AdamW on per-gene standardised targets, with
    random dihedral augmentation (flips and 90° rotations), through the loop shared with the denoisers
    (:func:`c2lst.models.train.train`: epoch-wise batches, warm-up then cosine learning rate). Inputs are scaled
    to [-1, 1]. With ``backbone=`` a user module replaces the convolutional trunk and is fine-tuned with the head
    (inputs in [0, 1]).
``"ridge"``
    Frozen features + ridge regression, in the style of HEST-Benchmark. Features are the offline
    :func:`~c2lst.models.features.morphometric_features` or the output of a user ``backbone`` (a
    :class:`torch.nn.Module` mapping ``(B, 3, H, W)`` float in [0, 1] to ``(B, D)``, e.g. a timm/torchvision
    model built with local weights), or, with a :class:`~c2lst.models.CentralFeatureExtractor`
    as ``backbone`` (``features="central"`` in :func:`c2lst.tl.fit_predictor`), the pooled activations of the
    frozen central denoiser. Features are standardised; the ridge penalty is chosen by exact
    leave-one-out error over a grid (closed form from one SVD) unless ``alpha`` is given; with ``groups`` (a
    real spot and its synthetic children) by grouped K-fold error on the real rows.

Row weights (``sample_weight``) let synthetic rows count less than real ones in both modes; a weight per row and
gene ``(n, n_genes)`` lets them teach only the genes they carry (each gene's loss is its own weighted mean over
rows, so a gene that ignores the synthetic rows learns from the real ones at full strength). ``n_steps`` fixes
the CNN's optimiser steps whatever the number of rows, so arms of a comparison get equal compute.

Weights are stored with safetensors next to a JSON config, atomically and with a sha256 fingerprint (no pickle);
see :meth:`ExpressionPredictor.save_pretrained`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._logging import progress as _progress
from .._utils import check_device, check_nonneg_float, check_positive_float, check_positive_int, check_seed
from . import features as _features
from ._nets import (
    PatchCNN,
    _BackboneHead,
    _init_weights,
    check_finetune,
    check_stack,
    default_device,
    fit_network,
    module_sha256,
)
from ._predictor_io import CONFIG_NAME, WEIGHTS_NAME, PredictorPersistence
from .denoiser_features import CentralFeatureExtractor
from .ridge import check_weights, fit_ridge_head
from .train import total_steps

__all__ = ["CONFIG_NAME", "MODES", "WEIGHTS_NAME", "ExpressionPredictor"]

MODES = ("cnn", "ridge")


class ExpressionPredictor(PredictorPersistence):
    """Predict prepared (log-normalised) expression of ``genes`` from uint8 RGB patches.

    Parameters
    ----------
    genes
        Names of the predicted genes, in output order.
    mode
        ``"cnn"`` (train a network) or ``"ridge"`` (frozen features + ridge); see the module docstring.
    widths
        Channels of the :class:`PatchCNN` blocks (``mode="cnn"`` without ``backbone``).
    stem_stride
        Stride of the CNN's first convolution; ``None`` = 2 for patches of 48 px or more (3x faster on CPU,
        nuclei of 64 px Visium patches stay resolved), else 1.
    backbone
        Optional :class:`torch.nn.Module` mapping ``(B, 3, H, W)`` float in [0, 1] to ``(B, D)``. In ``"ridge"``
        mode it is the frozen feature extractor (default: morphometric features; a
        :class:`~c2lst.models.CentralFeatureExtractor` gives ``feature_space="central"``); in
        ``"cnn"`` mode it replaces the trunk and is fine-tuned. It is never pickled: pass the same architecture
        again to :meth:`from_pretrained`.
    alpha
        Ridge penalty on standardised features; ``None`` picks it by leave-one-out error.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> patches = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    >>> expr = patches.mean(axis=(1, 2)).astype(np.float32)
    >>> model = ExpressionPredictor(["r", "g", "b"], mode="ridge").fit(patches, expr)
    >>> model.predict(patches).shape
    (16, 3)
    """

    def __init__(
        self,
        genes: Sequence[str],
        *,
        mode: str = "cnn",
        widths: Sequence[int] = (16, 32, 64, 128),
        stem_stride: int | None = None,
        backbone: nn.Module | None = None,
        alpha: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        genes = [str(g) for g in genes]
        if not genes or len(set(genes)) != len(genes):
            raise ValueError("`genes` must be a non-empty list of unique gene names.")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) <= 0:
            raise ValueError(f"`widths` must be positive channel counts, got {widths}.")
        if stem_stride is not None and stem_stride not in (1, 2):
            raise ValueError(f"`stem_stride` must be 1, 2 or None, got {stem_stride!r}.")
        if backbone is not None and not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be a torch.nn.Module, got {type(backbone).__name__}.")
        if alpha is not None and (
            not isinstance(alpha, int | float | np.number) or not np.isfinite(alpha) or alpha <= 0
        ):
            raise ValueError(f"`alpha` must be a finite number > 0 or None, got {alpha!r}.")
        self.genes = genes
        self.mode = mode
        self.widths = widths
        self.stem_stride = stem_stride
        self.backbone = backbone
        self.alpha = None if alpha is None else float(alpha)
        self.network: nn.Module | None = None
        self.patch_size: int | None = None
        self.threshold: float | None = None  # hematoxylin threshold of the morphometric features
        self.backbone_sha256 = ""
        self.training: dict[str, Any] = {}
        self.sha256: str | None = None  # fingerprint of the saved or loaded directory
        self._tensors: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ properties
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_pretrained`) has set the weights."""
        return "target_mean" in self._tensors

    @property
    def feature_space(self) -> str:
        """``"morphometric"``, ``"central"``, ``"backbone"`` or ``"cnn"``: what the regression head sees."""
        if isinstance(self.backbone, CentralFeatureExtractor):
            return "central"
        if self.backbone is not None:
            return "backbone"
        return "morphometric" if self.mode == "ridge" else "cnn"

    @property
    def n_parameters(self) -> int:
        """Number of fitted parameters (network weights, or ridge coefficients + intercepts)."""
        if self.mode == "cnn":
            net = self.network if self.network is not None else self._build_network()
            return sum(p.numel() for p in net.parameters())
        if not self.is_fitted:
            return 0
        return int(self._tensors["coef"].numel() + self._tensors["intercept"].numel())

    @property
    def target_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and spread (float32) of the fitted training expression: predictions are on this scale."""
        return self._tensors["target_mean"].numpy(), self._tensors["target_std"].numpy()

    def __repr__(self) -> str:
        return (f"ExpressionPredictor(mode={self.mode!r}, features={self.feature_space!r}, "
                f"n_genes={len(self.genes)}, {'fitted' if self.is_fitted else 'not fitted'})")

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        patches: np.ndarray,
        expression: np.ndarray,
        *,
        n_epochs: int = 30,
        n_steps: int | None = None,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        augment: bool = True,
        sample_weight: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        eval_mask: np.ndarray | None = None,
        finetune_mask: np.ndarray | None = None,
        finetune_fraction: float = 0.0,
        stack_mask: np.ndarray | None = None,
        callback: Callable[[ExpressionPredictor, int], bool | None] | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> ExpressionPredictor:
        """Fit on uint8 patches ``(n, S, S, 3)`` and expression ``(n, n_genes)``; return ``self``.

        Parameters
        ----------
        patches
            uint8 RGB patches.
        expression
            Prepared expression, columns in the order of :attr:`genes`.
        n_epochs, batch_size, lr, weight_decay, augment
            Training settings of ``mode="cnn"`` (ignored by ridge).
        n_steps
            Optimiser steps of ``mode="cnn"``; overrides ``n_epochs``. Fix it to compare training sets of
            different sizes on equal compute (epochs give more steps to more rows).
        sample_weight
            Loss weight per row ``(n,)`` (``None``: all 1), e.g. below 1 for synthetic rows, or per row and gene
            ``(n, n_genes)``, e.g. 0 for the genes a synthetic row does not carry; every gene needs a positive
            weight on some row.
        groups
            Group label per row for the ridge penalty's grouped cross-validation (``mode="ridge"``, ``alpha``
            not given): rows of one group (a real spot and its synthetic children) are held out together.
        eval_mask
            Rows whose held-out error chooses the ridge penalty (e.g. the real rows); default all.
        finetune_mask, finetune_fraction
            Staged training (``mode="cnn"``): the last ``finetune_fraction`` of the optimiser steps (in [0, 1))
            train on the rows of the boolean ``finetune_mask`` alone (e.g. the real rows, after a start on real
            and synthetic ones), with a learning-rate schedule of their own (warm-up, cosine to 0). Needs at
            least 2 such rows; ``finetune_fraction=0`` (the default) trains on all rows throughout.
        stack_mask
            Stacked batches (``mode="cnn"``): every step takes the batch of these rows (e.g. the real ones) that
            a fit on them alone would draw, plus a batch of at most ``batch_size`` other rows, so added rows do
            not thin how often these rows are visited in ``n_steps`` (each step processes more rows instead).
            ``n_epochs`` then counts passes over these rows, so without ``n_steps`` the fit takes the steps of a
            fit on them alone. ``None`` (default): all rows are shuffled together into batches of ``batch_size``.
        callback
            ``mode="cnn"``: called as ``callback(self, steps_done)`` after every optimiser step (``self`` predicts
            with the weights so far; restore ``self.network.train()`` after predicting); ``True`` ends the fit.
        seed
            Seed of initialisation, shuffling and augmentation.
        device
            Torch device; ``None`` = cuda if available, else cpu.
        progress
            Show a tqdm bar over the optimiser steps.

        Returns
        -------
        The fitted predictor.
        """
        patches = _features.check_patches(patches, min_n=2)
        n_epochs = check_positive_int(n_epochs, "n_epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed)
        lr = check_positive_float(lr, "lr")
        weight_decay = check_nonneg_float(weight_decay, "weight_decay")
        check_device(device)
        y = np.asarray(expression, dtype=np.float32)
        if y.shape != (len(patches), len(self.genes)):
            raise ValueError(
                f"`expression` must have shape (n_patches, n_genes) = ({len(patches)}, {len(self.genes)}), "
                f"got {y.shape}."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("`expression` contains NaN or inf; clean or re-prepare the expression first.")
        n_steps = None if n_steps is None else check_positive_int(n_steps, "n_steps")
        if callback is not None and not callable(callback):
            raise TypeError(f"`callback` must be callable as callback(predictor, steps_done), got {callback!r}.")
        w = check_weights(sample_weight, len(patches), "sample_weight", n_columns=len(self.genes))
        for name, value in (("groups", groups), ("eval_mask", eval_mask)):
            if value is not None and np.shape(value) != (len(patches),):
                raise ValueError(f"`{name}` must hold one value per patch ({len(patches)}), got {np.shape(value)}.")
        tune = check_finetune(finetune_mask, finetune_fraction, len(patches), self.mode)
        stack = check_stack(stack_mask, len(patches), self.mode)
        self.patch_size = int(patches.shape[1])
        wy = w if w.ndim == 2 else w[:, None]  # per-gene means and spreads under each gene's weights
        mean = ((wy * y).sum(axis=0) / wy.sum(axis=0)).astype(np.float32)
        std = np.sqrt((wy * (y - mean) ** 2).sum(axis=0) / wy.sum(axis=0))
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        self._tensors = {"target_mean": torch.from_numpy(mean), "target_std": torch.from_numpy(std)}
        z = (y - mean) / std
        if self.mode == "ridge":
            self._fit_ridge(patches, z, device, w, groups, eval_mask, progress)
        else:
            n_epoch = len(patches) if stack is None else len(stack)  # stacked: epochs over the stacked rows
            total = total_steps(n_steps, n_epochs, n_epoch, batch_size)
            self._fit_cnn(patches, z, w, total, batch_size, lr, weight_decay, augment, seed, device, progress,
                          tune, min(round(finetune_fraction * total), total - 1), stack, callback)
        self.training["n_train"] = len(patches)
        self.training["weighted"] = bool(sample_weight is not None)
        self.training["seed"] = int(seed)
        return self

    def _build_network(self, patch_size: int | None = None) -> nn.Module:
        size = patch_size or self.patch_size or 32
        if self.backbone is None:
            stride = self.stem_stride if self.stem_stride is not None else (2 if size >= 48 else 1)
            return PatchCNN(len(self.genes), self.widths, stem_stride=stride)
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            dev = next(iter(self.backbone.parameters()), torch.zeros(())).device
            d = self.backbone(torch.zeros(1, 3, size, size, device=dev)).shape[-1]
            self.backbone.train(was)
        return _BackboneHead(self.backbone, int(d), len(self.genes))

    def _input(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float()
        if self.backbone is None:
            return x.div_(127.5).sub_(1.0)
        return x.div_(255.0)

    def _fit_cnn(
        self, patches, z, w, total, batch_size, lr, weight_decay, augment, seed, device, bar, tune=None, n_tune=0,
        stack=None, callback=None,
    ) -> None:
        net = self._build_network(patches.shape[1])
        gen = torch.Generator().manual_seed(int(seed))
        _init_weights(net if self.backbone is None else net.head, gen)
        self.network = net  # a callback may predict with the weights so far
        self.training = fit_network(
            net,
            self._input,
            patches,
            z,
            w,
            n_steps=total,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            augment=augment,
            seed=seed,
            device=device,
            progress=bar,
            finetune_rows=tune,
            finetune_steps=n_tune,
            stack_rows=stack,
            callback=None if callback is None else (lambda done: callback(self, done)),
        )
        if self.backbone is not None:
            self.backbone_sha256 = module_sha256(self.backbone)

    def _features(
        self, patches: np.ndarray, device: str | torch.device | None, progress: bool = False
    ) -> np.ndarray:
        if self.backbone is None:
            return _features.morphometric_features(patches, threshold=self.threshold, progress=progress)
        return _features.torch_features(patches, self.backbone, device=device, progress=progress)

    def _fit_ridge(self, patches: np.ndarray, z: np.ndarray, device, w, groups, eval_mask, progress=False) -> None:
        if self.backbone is None:  # zero-weight rows shape nothing, the nuclei threshold included
            self.threshold = _features.hematoxylin_threshold(patches[(w > 0) if w.ndim == 1 else (w > 0).any(axis=1)])
        else:
            self.backbone_sha256 = module_sha256(self.backbone)
        arrays, self.training = fit_ridge_head(
            self._features(patches, device, progress), z, w, alpha=self.alpha, groups=groups, eval_mask=eval_mask
        )
        self._tensors.update({k: torch.from_numpy(v) for k, v in arrays.items()})

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        patches: np.ndarray,
        *,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Return predicted expression ``(n, n_genes)`` float32 for uint8 patches ``(n, S, S, 3)``.

        Parameters
        ----------
        patches
            uint8 RGB patches of the size the predictor was fitted on.
        batch_size
            Patches per forward pass.
        device
            Torch device; ``None`` = cuda if available, else cpu.
        progress
            Show a progress bar over patches (when there is more than one batch).

        Returns
        -------
        Predictions on the scale of the training expression.
        """
        if not self.is_fitted:
            raise RuntimeError("this ExpressionPredictor is not fitted; call `fit` or `from_pretrained`.")
        patches = _features.check_patches(patches)
        if patches.shape[1] != self.patch_size:
            raise ValueError(
                f"the predictor was fitted on {self.patch_size} px patches, got {patches.shape[1]} px; extract "
                f"patches with `size={self.patch_size}` (or resize them) before predicting."
            )
        if self.mode == "ridge":
            feats = self._features(patches, device, progress)
            xs = (feats - self._tensors["feature_mean"].numpy()) / self._tensors["feature_std"].numpy()
            z = xs @ self._tensors["coef"].numpy().astype(np.float64) + self._tensors["intercept"].numpy()
        else:
            dev = default_device(device)
            net = self.network.to(dev).eval()
            out = []
            with torch.no_grad():
                starts = range(0, len(patches), batch_size)
                for start in _progress(starts, enabled=progress and len(starts) > 1, desc="predict", unit="batch"):
                    x = self._input(torch.from_numpy(patches[start : start + batch_size]))
                    out.append(net(x.to(dev)).cpu())
            z = torch.cat(out).numpy()
        y = z * self._tensors["target_std"].numpy() + self._tensors["target_mean"].numpy()
        return y.astype(np.float32)
