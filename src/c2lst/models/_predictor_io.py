"""Persistence of :class:`~c2lst.models.ExpressionPredictor`: one directory, written atomically, verified on load.

:class:`PredictorPersistence` gives the predictor its verb pair, :meth:`~PredictorPersistence.save_pretrained` /
:meth:`~PredictorPersistence.from_pretrained` (``save`` / ``load`` remain as deprecated aliases).

A saved predictor is a directory with ``predictor.safetensors`` (weights) and ``predictor_config.json``
(everything else, with ``sha256``: one :func:`~c2lst.models.store.fingerprint` over the weights, the rest of the
config and the gene list). The directory is written under a temporary name beside the target and renamed into
place, so a failure mid-write leaves no half directory. Loading reads safetensors only (never a pickle) and
refuses weights or a config that do not match the recorded fingerprint.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import publish_directory
from .._version import __version__
from ._nets import PatchCNN, module_sha256
from .denoiser_features import CentralFeatureExtractor
from .store import FINGERPRINT_VERSION, fingerprint, load_safetensors, save_safetensors

CONFIG_NAME = "predictor_config.json"
WEIGHTS_NAME = "predictor.safetensors"
FORMAT = "c2lst.ExpressionPredictor"
#: 1: ``save`` of c2lst before issue 12 (no fingerprint); 2: ``save_pretrained`` (fingerprinted, atomic)
FORMAT_VERSION = 2
_OWN_KEYS = ("sha256", "fingerprint")


def predictor_fingerprint(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """Return the sha256 over ``tensors``, ``config`` (less its own ``sha256`` fields) and its gene list."""
    cfg = {k: v for k, v in config.items() if k not in _OWN_KEYS}
    return fingerprint(tensors, {CONFIG_NAME: cfg}, cfg.get("genes", ()))


def check_target(directory: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, holds other files, or holds a predictor without ``overwrite``."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; pass a directory path to save the predictor into.")
    if not directory.is_dir():
        return
    entries = sorted(p.name for p in directory.iterdir())
    other = [e for e in entries if e not in (CONFIG_NAME, WEIGHTS_NAME)]
    if other:
        raise FileExistsError(
            f"{directory} holds other files ({other[:5]}); save the predictor into a new or empty directory."
        )
    if entries and not overwrite:
        raise FileExistsError(f"{directory} holds a saved predictor; pass `overwrite=True` to replace it.")


def write_predictor(
    directory: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], *, overwrite: bool
) -> str:
    """Write ``tensors`` and ``config`` (plus its fingerprint) to ``directory`` atomically; return the sha256."""
    directory = Path(directory)
    check_target(directory, overwrite)  # before anything is written
    config = json.loads(json.dumps(dict(config)))  # exactly what a reader gets back
    sha = predictor_fingerprint(tensors, config)
    config = {**config, "sha256": sha, "fingerprint": FINGERPRINT_VERSION}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()  # mode from the process umask, like every other directory
    try:
        save_safetensors(tensors, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        publish_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha


def read_predictor(directory: str | Path, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return the config and the weights of a saved predictor, checked against its fingerprint."""
    from .._logging import logger

    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a saved ExpressionPredictor (needs {CONFIG_NAME} and {WEIGHTS_NAME})."
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({type(err).__name__}); save the predictor again.") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        fmt = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"{cfg_path} is not an ExpressionPredictor config (format={fmt!r}).")
    tensors = load_safetensors(weights_path)
    if "sha256" not in cfg:
        logger.warning(
            "%s was saved without a fingerprint (c2lst before issue 12) and is loaded unverified; save it again "
            "with `save_pretrained`.",
            directory,
        )
    elif not verify:
        logger.warning("loading %s without sha256 verification (verify=False)", directory)
    else:
        sha = predictor_fingerprint(tensors, cfg)
        if sha != cfg["sha256"]:
            raise ValueError(
                f"`directory={str(directory)!r}`: the weights or the configuration do not match the sha256 "
                f"recorded in {CONFIG_NAME} (recorded {str(cfg['sha256'])[:12]}…, computed {sha[:12]}…); the files "
                "were changed or corrupted after saving. Restore them or save the predictor again."
            )
    return cfg, tensors


def check_backbone(cfg: Mapping[str, Any], backbone: nn.Module | None) -> None:
    """Refuse a ``backbone`` that does not fit the saved predictor described by ``cfg``."""
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
    if needs_backbone and cfg["mode"] == "ridge":
        from .._logging import logger

        if cfg.get("format_version", 1) < 2:  # hashed another way before issue 12
            logger.warning("the backbone of a predictor saved before c2lst issue 12 cannot be checked by sha256")
        elif module_sha256(backbone) != cfg["backbone_sha256"]:
            raise ValueError(
                "the `backbone` weights differ from those the ridge head was fitted on (sha256 mismatch); "
                "load the same weights into the backbone."
            )


class PredictorPersistence:
    """The persistence verbs of :class:`~c2lst.models.ExpressionPredictor` (a mixin)."""

    def config(self) -> dict[str, Any]:
        """Return the JSON-serialisable description of this predictor (everything but the weights)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "c2lst_version": __version__,
            "mode": self.mode,
            "genes": list(self.genes),
            "widths": list(self.widths),
            "stem_stride": (
                int(self.network.trunk[0].stride[0]) if isinstance(self.network, PatchCNN) else self.stem_stride
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
        """Return all weights as CPU tensors (what :meth:`save_pretrained` writes)."""
        if not self.is_fitted:
            raise RuntimeError("this ExpressionPredictor is not fitted; nothing to save.")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors.items()}
        if self.mode == "cnn":
            for k, v in self.network.state_dict().items():
                tensors[f"network.{k}"] = v.detach().cpu().contiguous()
        return tensors

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the predictor to ``directory`` (safetensors weights + JSON config) atomically; return it.

        Parameters
        ----------
        directory
            Target directory: new, empty, or (with ``overwrite``) holding a saved predictor. It is written under
            a temporary name beside it and renamed into place, so a failure leaves no half-written directory.
        overwrite
            Replace a saved predictor in ``directory``.

        Returns
        -------
        The directory. ``predictor_config.json`` records ``sha256``, one fingerprint over the weights, the
        configuration and the genes (also set as :attr:`sha256`), which :meth:`from_pretrained` verifies.
        """
        directory = Path(directory)
        self.sha256 = write_predictor(directory, self.state_tensors(), self.config(), overwrite=overwrite)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, backbone: nn.Module | None = None, verify: bool = True
    ) -> Any:
        """Load a predictor written by :meth:`save_pretrained` (safetensors only, never a pickle).

        Parameters
        ----------
        directory
            Directory holding ``predictor_config.json`` and ``predictor.safetensors``.
        backbone
            Required when the predictor was fitted with a backbone: a module of the same architecture. In
            ``"ridge"`` mode its weights must be those used at fit time (checked by sha256); in ``"cnn"`` mode
            the saved fine-tuned weights are loaded into it. A ``"central"`` predictor needs a
            :class:`~c2lst.models.CentralFeatureExtractor` of the same central model built with the settings in
            ``config()["backbone_settings"]``.
        verify
            Check weights and configuration against the recorded sha256 (a mismatch is a :class:`ValueError`).

        Returns
        -------
        The fitted predictor.
        """
        cfg, tensors = read_predictor(directory, verify=verify)
        check_backbone(cfg, backbone)
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
        model.sha256 = cfg.get("sha256")
        net_state = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        model._tensors = {k: v for k, v in tensors.items() if not k.startswith("network.")}
        if model.mode == "cnn":
            net = model._build_network(model.patch_size)
            net.load_state_dict(net_state)
            model.network = net.eval()
        return model

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the predictor to ``path``; deprecated alias of :meth:`save_pretrained`."""
        warnings.warn(
            "`ExpressionPredictor.save` is deprecated; use `save_pretrained`.", FutureWarning, stacklevel=2
        )
        return self.save_pretrained(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, backbone: nn.Module | None = None) -> Any:
        """Load a saved predictor; deprecated alias of :meth:`from_pretrained`."""
        warnings.warn(
            "`ExpressionPredictor.load` is deprecated; use `ExpressionPredictor.from_pretrained`.",
            FutureWarning,
            stacklevel=2,
        )
        return cls.from_pretrained(path, backbone=backbone)
