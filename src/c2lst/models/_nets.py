"""Building blocks of the expression predictor: the small CNN, seeded initialisation, dihedral augmentation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import nn


def default_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or ``cuda`` when available and ``cpu`` otherwise."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def dihedral(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 dihedral transforms per image: ``ops % 4`` quarter turns, then a flip if ``ops >= 4``.

    Parameters
    ----------
    x
        Images ``(B, C, H, W)`` with ``H == W``.
    ops
        Integer tensor ``(B,)`` with values in ``[0, 8)``.

    Returns
    -------
    The transformed images (a new tensor).

    Examples
    --------
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> dihedral(x, torch.tensor([4]))[0, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
    """
    out = x.clone()
    for op in range(1, 8):
        sel = ops == op
        if not bool(sel.any()):
            continue
        y = torch.rot90(x[sel], k=op % 4, dims=(2, 3))
        out[sel] = torch.flip(y, dims=(3,)) if op >= 4 else y
    return out


def _state_sha256(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
