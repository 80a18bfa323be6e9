"""Building blocks of the expression predictor: the small CNN, seeded initialisation, the fit.

The fit goes through the training loop shared with the denoisers (:func:`c2lst.models.train.train`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._logging import logger
from .store import sha256_tensors
from .train import TrainSettings, dihedral, epoch_rows, epoch_steps, train


def default_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or the best available one: ``cuda``, then Apple's ``mps``, then ``cpu``."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def _groups(width: int) -> int:
    """GroupNorm groups: 8 when the width allows groups of >= 4 channels, else the largest divisor that does."""
    for g in (8, 4, 2):
        if width % g == 0 and width // g >= 4:
            return g
    return 1


class PatchCNN(nn.Module):
    """Small CNN: ``len(widths)`` conv-GroupNorm-ReLU blocks (max pooling between), global average pooling, linear head.

    Parameters
    ----------
    n_outputs
        Number of predicted genes.
    widths
        Channels of the convolutional blocks.
    stem_stride
        Stride of the first convolution (2 halves the cost on large patches).
    """

    def __init__(
        self, n_outputs: int, widths: Sequence[int] = (16, 32, 64, 128), stem_stride: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, width in enumerate(widths):
            stride = stem_stride if i == 0 else 1
            layers += [
                nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, 3, H, W)`` to outputs ``(B, n_outputs)``."""
        return self.head(self.trunk(x).mean(dim=(2, 3)))


class _BackboneHead(nn.Module):
    """A user backbone ``(B, 3, H, W) -> (B, D)`` followed by a linear head."""

    def __init__(self, backbone: nn.Module, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(n_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, 3, H, W)`` to outputs ``(B, n_outputs)``."""
        return self.head(self.backbone(x))


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """(Re)initialise conv/linear weights from ``generator`` so initialisation is seeded without global state."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(max(m.weight[0].numel(), 1))
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def module_sha256(module: nn.Module) -> str:
    """Return the sha256 of a module's state dict (:func:`~c2lst.models.store.sha256_tensors`)."""
    return sha256_tensors(module.state_dict())


def fit_network(
    net: nn.Module,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    patches: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: bool,
    seed: int,
    device: str | torch.device | None,
    progress: bool,
    finetune_rows: np.ndarray | None = None,
    finetune_steps: int = 0,
    stack_rows: np.ndarray | None = None,
    callback: Callable[[int], bool | None] | None = None,
) -> dict[str, Any]:
    """Train ``net`` in place on the weighted MSE to ``targets`` through :func:`~c2lst.models.train.train`.

    ``weights`` are per row ``(n,)`` or per row and target ``(n, G)`` (each target's loss is then its weighted
    mean over the batch's rows; a target no row of the batch teaches adds 0).

    Staged training: the last ``finetune_steps`` of the ``n_steps`` visit only ``finetune_rows`` (indices, e.g.
    the real rows after a start on real and synthetic ones), epoch-wise, in batches of at most ``batch_size``,
    with a learning-rate schedule of their own (warm-up, then cosine to 0); the optimiser state carries on.

    Stacked batches: every step before such a stage takes the batch of ``stack_rows`` (indices, e.g. the real
    rows) that a fit on them alone would draw, epoch-wise, plus a batch of at most ``batch_size`` of the other
    rows, epoch-wise on their own; the loss is the weighted mean over both. Added rows then do not thin how often
    the stacked rows are visited in a fixed number of steps; each step processes more rows instead. The summary's
    epochs (``n_epochs``, ``loss_history``) then count passes over the stacked rows.

    ``callback(steps_done)`` runs after every step; returning ``True`` ends the fit there (the summary's ``n_steps``
    then counts the steps taken).

    Each epoch visits every row once (``rows=``); the learning rate warms up over 5 % of the steps, then follows a
    cosine to 0; gradients are clipped at norm 5; there is no EMA. Steps whose batch is a lone row (a user
    backbone may hold BatchNorm layers) or weighs 0 are skipped. Returns the training summary of the predictor.
    """
    n = len(patches)
    bs = min(batch_size, n)
    stacked = _stacked_rows(stack_rows, n, batch_size, seed)
    steps_per_epoch = epoch_steps(n if stacked is None else len(stack_rows), batch_size)
    x_all = torch.from_numpy(patches)
    y_all = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    w_all = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    rows: int | Callable[[int], torch.Tensor] = n
    start = n_steps - int(finetune_steps)
    is_staged = finetune_rows is not None and finetune_steps > 0
    first = stacked or (lambda step: epoch_rows(n, bs, seed, step))
    if is_staged:
        sub = torch.as_tensor(np.asarray(finetune_rows, dtype=np.int64))

        def staged(step: int) -> torch.Tensor:  # all rows, then only the fine-tuning rows
            if step < start:
                return first(step)
            return sub[epoch_rows(len(sub), bs, seed + 1, step - start)]

        rows = staged
    elif stacked is not None:
        rows = stacked

    def loss_fn(model: nn.Module, idx: torch.Tensor, gen: torch.Generator, dev: torch.device):
        if len(idx) < 2 < n:
            return None
        wb = w_all[idx].to(dev)
        if float(wb.sum()) <= 0:  # a batch of zero-weight rows teaches nothing
            return None
        x = to_input(x_all[idx])
        if augment:
            x = dihedral(x, gen)
        err = (model(x.to(dev)) - y_all[idx].to(dev)) ** 2
        if wb.dim() == 2:  # per gene: each gene's weighted mean over the rows that teach it, then the mean over genes
            return ((err * wb).sum(dim=0) / wb.sum(dim=0).clamp_min(1e-12)).mean()
        return (err.mean(dim=1) * wb).sum() / wb.sum()

    settings = TrainSettings(
        n_steps=n_steps,
        batch_size=bs,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=5.0,
        ema=False,
        seed=seed,
        progress=progress,
        desc="fit predictor",
        device=None if device is None else str(device),
        lr_schedule="cosine",
        warmup_steps=max(1, n_steps // 20),
        lr_restart=start if is_staged else None,
    )
    dev = torch.device(device) if device is not None else None
    taken = [n_steps]

    def after_step(done: int, _loss: float) -> bool:
        taken[0] = done
        return bool(callback(done)) if callback is not None else False

    # accelerate places a single process on the *current* CUDA device: make it the one asked for
    with torch.cuda.device(dev) if dev is not None and dev.type == "cuda" else contextlib.nullcontext():
        losses = train(net, loss_fn, settings, rows=rows, callback=after_step).losses
    net.eval()
    n_steps = taken[0]
    per_epoch = [float(np.mean(losses[i : i + steps_per_epoch])) for i in range(0, len(losses), steps_per_epoch)]
    summary = {
        "n_steps": int(n_steps),
        "n_epochs": round(n_steps / steps_per_epoch, 3),
        "batch_size": int(bs),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "augment": bool(augment),
        "final_loss": per_epoch[-1] if per_epoch else float("nan"),
        "loss_history": per_epoch,
    }
    if is_staged:
        summary["finetune_steps"] = int(finetune_steps)
    if stacked is not None:
        summary["stacked_rows"] = len(stack_rows)
    logger.info(f"predictor trained: {n_steps} steps, final standardised MSE {summary['final_loss']:.3f}")
    return summary


def _stacked_rows(
    stack_rows: np.ndarray | None, n: int, batch_size: int, seed: int
) -> Callable[[int], torch.Tensor] | None:
    """Return the batch schedule of stacked batches (see :func:`fit_network`), or None without ``stack_rows``."""
    if stack_rows is None:
        return None
    keep = np.zeros(n, dtype=bool)
    keep[np.asarray(stack_rows, dtype=np.int64)] = True
    anchor, other = (torch.as_tensor(np.flatnonzero(m)) for m in (keep, ~keep))
    if len(other) == 0:  # nothing to stack: the plain schedule
        return None

    def stacked(step: int) -> torch.Tensor:
        own = anchor[epoch_rows(len(anchor), min(batch_size, len(anchor)), seed, step)]
        return torch.cat([own, other[epoch_rows(len(other), min(batch_size, len(other)), seed + 2, step)]])

    return stacked


def check_stack(mask: np.ndarray | None, n: int, mode: str) -> np.ndarray | None:
    """Validate stacked batches (``stack_mask``); return the stacked row indices."""
    if mask is None:
        return None
    if mode != "cnn":
        raise ValueError(
            f"`stack_mask` sets the batches of `mode='cnn'`; the ridge head of `mode={mode!r}` is solved in one "
            "step on all rows. Pass `stack_mask=None` or use `mode='cnn'`."
        )
    mask = _row_mask(mask, n, "stack_mask")
    if not mask.any():
        raise ValueError("`stack_mask` selects no row; stack at least one row (e.g. the real ones).")
    return np.flatnonzero(mask)


def check_finetune(mask: np.ndarray | None, fraction: float, n: int, mode: str) -> np.ndarray | None:
    """Validate staged training (``finetune_mask``, ``finetune_fraction``); return the fine-tuning row indices."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise ValueError(f"`finetune_fraction={fraction!r}` must be a number in [0, 1); 0 trains on all rows throughout.")
    if fraction == 0:
        return None
    if mode != "cnn":
        raise ValueError(
            f"`finetune_fraction={fraction}` is staged training of `mode='cnn'`; the ridge head of `mode={mode!r}` "
            "is solved in one step. Pass `finetune_fraction=0` or use `mode='cnn'`."
        )
    if mask is None:
        raise ValueError(f"`finetune_fraction={fraction}` needs `finetune_mask`, the rows to fine-tune on.")
    mask = _row_mask(mask, n, "finetune_mask")
    if mask.sum() < 2:
        raise ValueError(f"`finetune_mask` selects {int(mask.sum())} row(s); staged training needs at least 2.")
    return np.flatnonzero(mask)


def _row_mask(mask: np.ndarray, n: int, name: str) -> np.ndarray:
    """Return ``mask`` as an array, or raise unless it is boolean with one value per patch (``n``)."""
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise ValueError(
            f"`{name}` must be a boolean array with one value per patch ({n}), got dtype {mask.dtype} and "
            f"shape {mask.shape}."
        )
    return mask
