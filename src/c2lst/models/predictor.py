"""Image -> expression regressors: a small CNN trained from scratch, or frozen features + ridge.

Engine code: numpy and torch only (no AnnData). The AnnData skin is :mod:`c2lst.tl._predict`.

Modes
-----
``"cnn"``
    A small convolutional network (conv-GroupNorm-ReLU blocks with max pooling, global average pooling, linear
    head; ~100k parameters with the default ``widths``) trained with AdamW on per-gene standardised targets, with
    random dihedral augmentation (flips and 90° rotations). Inputs are scaled to [-1, 1]. With ``backbone=`` a
    user module replaces the convolutional trunk and is fine-tuned with the head (inputs in [0, 1]).
``"ridge"``
    Frozen features + ridge regression, in the style of HEST-Benchmark. Features are the offline
    :func:`~c2lst.models.features.morphometric_features` or the output of a user ``backbone`` (a
    :class:`torch.nn.Module` mapping ``(B, 3, H, W)`` float in [0, 1] to ``(B, D)``, e.g. a timm/torchvision
    model built with local weights), or, with a :class:`~c2lst.models.CentralFeatureExtractor`
    as ``backbone`` (``features="central"`` in :func:`c2lst.tl.fit_predictor`), the pooled activations of the
    frozen central denoiser. Features are standardised; the ridge penalty is chosen by exact
    leave-one-out error over a grid (closed form from one SVD) unless ``alpha`` is given; with ``groups`` (a
    real spot and its synthetic children) by grouped K-fold error on the real rows.

Row weights (``sample_weight``) let synthetic rows count less than real ones in both modes. ``n_steps`` fixes
the CNN's optimiser steps whatever the number of rows, so arms of a comparison get equal compute.

Weights are stored with safetensors next to a JSON config (no pickle); see :meth:`ExpressionPredictor.save`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._logging import logger
from .._logging import progress as _progress
from .._utils import check_nonneg_float, check_positive_float, check_positive_int, check_seed
from .._version import __version__
from . import features as _features
from ._nets import PatchCNN, _BackboneHead, _init_weights, _state_sha256, default_device, dihedral
from .denoiser_features import CentralFeatureExtractor
from .ridge import check_weights, ridge_alpha, ridge_fit

MODES = ("cnn", "ridge")
CONFIG_NAME = "predictor_config.json"
WEIGHTS_NAME = "predictor.safetensors"
_FORMAT = "c2lst.ExpressionPredictor"


class ExpressionPredictor:
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
        again to :meth:`load`.
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
        self._tensors: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ properties
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has set the weights."""
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

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return (
            f"ExpressionPredictor(mode={self.mode!r}, features={self.feature_space!r}, "
            f"n_genes={len(self.genes)}, {state})"
        )

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
            Loss weight per row ``(n,)`` (``None``: all 1), e.g. below 1 for synthetic rows.
        groups
            Group label per row for the ridge penalty's grouped cross-validation (``mode="ridge"``, ``alpha``
            not given): rows of one group (a real spot and its synthetic children) are held out together.
        eval_mask
            Rows whose held-out error chooses the ridge penalty (e.g. the real rows); default all.
        seed
            Seed of initialisation, shuffling and augmentation.
        device
            Torch device; ``None`` = cuda if available, else cpu.
        progress
            Show a tqdm bar over epochs.

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
        y = np.asarray(expression, dtype=np.float32)
        if y.shape != (len(patches), len(self.genes)):
            raise ValueError(
                f"`expression` must have shape (n_patches, n_genes) = ({len(patches)}, {len(self.genes)}), "
                f"got {y.shape}."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("`expression` contains NaN or inf; clean or re-prepare the expression first.")
        if n_steps is not None:
            n_steps = check_positive_int(n_steps, "n_steps")
        w = check_weights(sample_weight, len(patches), "sample_weight")
        for name, value in (("groups", groups), ("eval_mask", eval_mask)):
            if value is not None and np.shape(value) != (len(patches),):
                raise ValueError(f"`{name}` must hold one value per patch ({len(patches)}), got {np.shape(value)}.")
        self.patch_size = int(patches.shape[1])
        mean = (w @ y / w.sum()).astype(np.float32)
        std = np.sqrt(w @ (y - mean) ** 2 / w.sum())
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        self._tensors = {"target_mean": torch.from_numpy(mean), "target_std": torch.from_numpy(std)}
        z = (y - mean) / std
        if self.mode == "ridge":
            self._fit_ridge(patches, z, device, w, groups, eval_mask)
        else:
            total = n_steps if n_steps is not None else n_epochs * math.ceil(len(patches) / min(batch_size, len(patches)))
            self._fit_cnn(patches, z, w, total, batch_size, lr, weight_decay, augment, seed, device, progress)
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
        self, patches, z, w, total, batch_size, lr, weight_decay, augment, seed, device, bar
    ) -> None:
        dev = default_device(device)
        gen = torch.Generator().manual_seed(int(seed))
        net = self._build_network(patches.shape[1])
        if self.backbone is None:
            _init_weights(net, gen)
        else:
            _init_weights(net.head, gen)
        net.to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        n = len(patches)
        bs = min(batch_size, n)
        steps_per_epoch = math.ceil(n / bs)  # GroupNorm: a ragged last batch is fine
        warm = max(1, total // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                (s + 1) / warm
                if s < warm
                else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))
            ),
        )
        x_all = torch.from_numpy(patches)
        y_all = torch.from_numpy(z)
        w_all = torch.from_numpy(np.asarray(w, dtype=np.float32))
        losses: list[float] = []
        net.train()
        bar_ = _progress(range(total), enabled=bar, desc="fit predictor", unit="step")
        order = torch.randperm(n, generator=gen)
        for step in bar_:
            pos = step % steps_per_epoch
            if step and pos == 0:
                order = torch.randperm(n, generator=gen)
            idx = order[pos * bs : (pos + 1) * bs]
            if len(idx) < 2 < n:  # a user backbone may hold BatchNorm layers
                continue
            wb = w_all[idx].to(dev)
            if float(wb.sum()) <= 0:  # a batch of zero-weight rows teaches nothing
                continue
            x = self._input(x_all[idx])
            if augment:
                x = dihedral(x, torch.randint(0, 8, (len(idx),), generator=gen))
            pred = net(x.to(dev))
            per_row = ((pred - y_all[idx].to(dev)) ** 2).mean(dim=1)
            loss = (per_row * wb).sum() / wb.sum()
            if not torch.isfinite(loss):
                raise FloatingPointError("predictor loss became NaN/inf; lower `lr` or check the inputs.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar_.set_postfix(loss=f"{losses[-1]:.3f}")
        net.eval()
        self.network = net
        if self.backbone is not None:
            self.backbone_sha256 = _state_sha256(self.backbone)
        per_epoch = [float(np.mean(losses[i : i + steps_per_epoch])) for i in range(0, len(losses), steps_per_epoch)]
        self.training = {
            "n_steps": int(total),
            "n_epochs": round(total / steps_per_epoch, 3),
            "batch_size": int(bs),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "augment": bool(augment),
            "final_loss": per_epoch[-1] if per_epoch else float("nan"),
            "loss_history": per_epoch,
        }
        logger.info(
            f"predictor trained: {total} steps, final standardised MSE {self.training['final_loss']:.3f}"
        )

    def _features(self, patches: np.ndarray, device: str | torch.device | None) -> np.ndarray:
        if self.backbone is None:
            return _features.morphometric_features(patches, threshold=self.threshold)
        return _features.torch_features(patches, self.backbone, device=device)

    def _fit_ridge(self, patches: np.ndarray, z: np.ndarray, device, w, groups, eval_mask) -> None:
        if self.backbone is None:  # zero-weight rows shape nothing, the nuclei threshold included
            self.threshold = _features.hematoxylin_threshold(patches[w > 0])
        else:
            self.backbone_sha256 = _state_sha256(self.backbone)
        feats = self._features(patches, device)
        f_mean = w @ feats / w.sum()
        f_std = np.sqrt(w @ (feats - f_mean) ** 2 / w.sum())
        f_std = np.where(f_std > 1e-12, f_std, 1.0)
        xs = (feats - f_mean) / f_std
        plain = groups is None and eval_mask is None and np.all(w == 1)
        if self.alpha is not None:
            alpha, loo = self.alpha, float("nan")
        elif plain:
            alpha, loo = ridge_alpha(xs, z)
        else:
            alpha, loo = ridge_alpha(xs, z, weights=w, groups=groups, eval_mask=eval_mask)
        coef, intercept = ridge_fit(xs, z, alpha, weights=None if plain else w)
        self._tensors.update(
            {
                "coef": torch.from_numpy(coef.astype(np.float32)),
                "intercept": torch.from_numpy(intercept.astype(np.float32)),
                "feature_mean": torch.from_numpy(f_mean.astype(np.float64)),
                "feature_std": torch.from_numpy(f_std.astype(np.float64)),
            }
        )
        self.training = {"alpha": float(alpha), "loo_mse": float(loo), "n_features": int(xs.shape[1])}

    # ------------------------------------------------------------------ prediction
    def predict(
        self, patches: np.ndarray, *, batch_size: int = 256, device: str | torch.device | None = None
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

        Returns
        -------
        Predictions on the scale of the training expression.
        """
        if not self.is_fitted:
            raise RuntimeError(
                "this ExpressionPredictor is not fitted; call `fit` or `ExpressionPredictor.load`."
            )
        patches = _features.check_patches(patches)
        if patches.shape[1] != self.patch_size:
            raise ValueError(
                f"the predictor was fitted on {self.patch_size} px patches, got {patches.shape[1]} px; extract "
                f"patches with `size={self.patch_size}` (or resize them) before predicting."
            )
        if self.mode == "ridge":
            feats = self._features(patches, device)
            xs = (feats - self._tensors["feature_mean"].numpy()) / self._tensors["feature_std"].numpy()
            z = xs @ self._tensors["coef"].numpy().astype(np.float64) + self._tensors["intercept"].numpy()
        else:
            dev = default_device(device)
            net = self.network.to(dev).eval()
            out = []
            with torch.no_grad():
                for start in range(0, len(patches), batch_size):
                    x = self._input(torch.from_numpy(patches[start : start + batch_size]))
                    out.append(net(x.to(dev)).cpu())
            z = torch.cat(out).numpy()
        y = z * self._tensors["target_std"].numpy() + self._tensors["target_mean"].numpy()
        return y.astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Return the JSON-serialisable description of this predictor (everything but the weights)."""
        return {
            "format": _FORMAT,
            "format_version": 1,
            "c2lst_version": __version__,
            "mode": self.mode,
            "genes": list(self.genes),
            "widths": list(self.widths),
            "stem_stride": (
                int(self.network.trunk[0].stride[0])
                if isinstance(self.network, PatchCNN)
                else self.stem_stride
            ),
            "feature_space": self.feature_space,
            "backbone_class": "" if self.backbone is None else type(self.backbone).__name__,
            "backbone_sha256": self.backbone_sha256,
            "backbone_settings": (
                self.backbone.settings() if isinstance(self.backbone, CentralFeatureExtractor) else {}
            ),
            "alpha": self.alpha,
            "patch_size": self.patch_size,
            "threshold": self.threshold,
            "training": self.training,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Return all weights as CPU tensors (what :meth:`save` writes)."""
        if not self.is_fitted:
            raise RuntimeError("this ExpressionPredictor is not fitted; nothing to save.")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors.items()}
        if self.mode == "cnn":
            for k, v in self.network.state_dict().items():
                tensors[f"network.{k}"] = v.detach().cpu().contiguous()
        return tensors

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the predictor to directory ``path`` (safetensors weights + JSON config) and return it.

        Parameters
        ----------
        path
            Target directory (created).
        overwrite
            Replace an existing saved predictor in ``path``.

        Returns
        -------
        The directory.
        """
        path = Path(path)
        if (path / WEIGHTS_NAME).exists() and not overwrite:
            raise FileExistsError(f"{path / WEIGHTS_NAME} exists; pass `overwrite=True` to replace it.")
        tensors = self.state_tensors()
        path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": _FORMAT})
        (path / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path, *, backbone: nn.Module | None = None) -> ExpressionPredictor:
        """Load a predictor written by :meth:`save` (no pickle).

        Parameters
        ----------
        path
            Directory holding ``predictor_config.json`` and ``predictor.safetensors``.
        backbone
            Required when the predictor was fitted with a backbone: a module of the same architecture. In
            ``"ridge"`` mode its weights must be those used at fit time (checked by sha256); in ``"cnn"`` mode
            the saved fine-tuned weights are loaded into it.
            A ``"central"`` predictor needs a
            :class:`~c2lst.models.CentralFeatureExtractor` of the same central model built with
            the settings in ``config()["backbone_settings"]``.

        Returns
        -------
        The fitted predictor.
        """
        path = Path(path)
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a saved ExpressionPredictor (needs {CONFIG_NAME} and {WEIGHTS_NAME})."
            )
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != _FORMAT:
            raise ValueError(
                f"{cfg_path} is not an ExpressionPredictor config (format={cfg.get('format')!r})."
            )
        needs_backbone = cfg["feature_space"] in ("backbone", "central")
        if cfg["feature_space"] == "central":
            if not isinstance(backbone, CentralFeatureExtractor):
                raise ValueError(
                    "this predictor was fitted on central-denoiser features; pass "
                    "`backbone=CentralFeatureExtractor(central, **settings)` with the same central model and the "
                    f"recorded settings {cfg.get('backbone_settings', {})}."
                )
            if backbone.settings() != cfg.get("backbone_settings", {}):
                raise ValueError(
                    f"the `backbone` settings {backbone.settings()} differ from those the predictor was fitted "
                    f"with {cfg.get('backbone_settings', {})}; build the extractor with the recorded settings."
                )
        if needs_backbone and backbone is None:
            raise ValueError(
                f"this predictor was fitted with a backbone ({cfg['backbone_class']}); pass the same architecture "
                "as `backbone=`."
            )
        if not needs_backbone and backbone is not None:
            raise ValueError("this predictor was fitted without a backbone; do not pass `backbone=`.")
        model = cls(
            cfg["genes"],
            mode=cfg["mode"],
            widths=cfg["widths"],
            stem_stride=cfg["stem_stride"],
            backbone=backbone,
            alpha=cfg["alpha"],
        )
        model.patch_size = cfg["patch_size"]
        model.threshold = cfg["threshold"]
        model.training = cfg["training"]
        model.backbone_sha256 = cfg["backbone_sha256"]
        tensors = load_file(str(path / WEIGHTS_NAME))
        net_state = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        model._tensors = {k: v for k, v in tensors.items() if not k.startswith("network.")}
        if model.mode == "cnn":
            net = model._build_network(model.patch_size)
            net.load_state_dict(net_state)
            model.network = net.eval()
        elif needs_backbone and _state_sha256(backbone) != cfg["backbone_sha256"]:
            raise ValueError(
                "the `backbone` weights differ from those the ridge head was fitted on (sha256 mismatch); "
                "load the same weights into the backbone."
            )
        return model
