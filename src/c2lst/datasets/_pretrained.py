"""Central models that ship inside the package (trained by ``scripts/train_pretrained_central.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.central import CentralModel

_ROOT = Path(__file__).parent / "_pretrained"

#: Shipped central models: name -> sha256 of the float16 weight files (``CentralModel.save_pretrained`` order),
#: recorded when the script installed them. A model whose files do not match is refused.
PRETRAINED: dict[str, dict[str, str | int]] = {
    "tiny-sim": {
        "sha256": "8856282f02159f09011c6c19eff64597bdf7f118787e9e6f10143bd9e0f006c1",
        "preset": "tiny",
        "image_size": 32,
        "description": "tiny preset (32 px, v-prediction) trained on simulated H&E of four non-local stains",
    },
}


def pretrained_names() -> tuple[str, ...]:
    """Return the names of the central models shipped with c2lst (see :func:`pretrained_central`)."""
    return tuple(PRETRAINED)


def pretrained_path(name: str) -> Path:
    """Return the directory of the shipped central model ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string naming a shipped model, got {type(name).__name__}.")
    if name not in PRETRAINED:
        raise KeyError(f"`name={name!r}` is not a shipped central model; valid names are {list(PRETRAINED)}.")
    path = _ROOT / name
    if not (path / "c2lst.json").is_file():
        raise FileNotFoundError(
            f"the shipped model {name!r} is missing from the installation ({path}); reinstall c2lst, or rebuild "
            "it with `python scripts/train_pretrained_central.py --out DIR --install`."
        )
    return path


def pretrained_central(name: str = "tiny-sim", *, device: str | None = None) -> CentralModel:
    """Load a central model that ships with c2lst, so adaptation starts from learned histology.

    The models are trained by c2lst's own code (``scripts/train_pretrained_central.py`` reproduces them bit for
    bit) on simulated multi-institution slides (:func:`simulated_visium` with four stains other than
    ``"local"``, tissue seeds other than the demo's), stored as float16 safetensors and upcast to float32 on
    load. The weights are checked against the sha256 recorded in c2lst. A lab's own cohort needs its own
    central model: see :func:`c2lst.tl.pretrain`. Wherever ``central=`` is accepted, the name works too
    (``c2lst.tl.adapt(adata, central="tiny-sim")``).

    Parameters
    ----------
    name
        One of :func:`pretrained_names`: ``"tiny-sim"`` (``tiny`` preset, 32 px patches at 1 µm/px, about
        0.5 M parameters, v-prediction; see the model card in the docs).
    device
        Move the model there (``None``: keep it on the CPU).

    Returns
    -------
    The :class:`~c2lst.models.CentralModel` in eval mode, with ``source`` set to ``name``.

    Examples
    --------
    >>> import c2lst
    >>> central = c2lst.datasets.pretrained_central("tiny-sim")
    >>> central.image_size
    32
    """
    from ..models.central import CentralModel

    path = pretrained_path(name)
    model = CentralModel.from_pretrained(path, verify=True)
    expected = str(PRETRAINED[name]["sha256"])
    if expected and model.sha256 != expected:
        raise ValueError(
            f"the shipped model {name!r} at {path} has sha256 {str(model.sha256)[:12]}…, c2lst recorded "
            f"{expected[:12]}…; the installation was changed. Reinstall c2lst."
        )
    model.source = name
    return model.to(device) if device is not None else model
