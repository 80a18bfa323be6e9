"""An adapter's LoRA weights as a peft folder (``adapter_config.json`` + ``adapter_model.safetensors``).

c2lst injects LoRA into the central UNet with :func:`peft.inject_adapter_in_model` and stores
:func:`peft.get_peft_model_state_dict` of that UNet under ``lora.*`` keys. A folder written here is what
``PeftModel(unet, config).save_pretrained`` writes for the same adapter: peft's own configuration file (written by
:meth:`peft.LoraConfig.save_pretrained`) and the weights under peft's ``base_model.model.`` key prefix, so
``peft.PeftModel.from_pretrained(unet, folder)`` loads it onto a plain central ``UNet2DModel``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from peft import LoraConfig

from .store import load_safetensors, save_safetensors

__all__ = ["PEFT_CONFIG_FILE", "PEFT_WEIGHTS_FILE", "read_peft_lora", "write_peft_lora"]

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
#: Key prefix of the state dict a :class:`peft.PeftModel` saves for a model without a task type.
_PREFIX = "base_model.model."


def write_peft_lora(
    directory: str | Path, config: Mapping[str, Any], weights: Mapping[str, np.ndarray], base_model: str = ""
) -> None:
    """Write the ``lora.*`` arrays of an adapter record and its configuration as a peft LoRA folder.

    Parameters
    ----------
    directory
        An existing directory (the caller makes the write atomic).
    config
        The adapter configuration (``rank``, ``alpha``, ``target_modules``: the resolved module names, or the
        default pattern of records written before the names were stored).
    weights
        The record's weights; keys ``lora.<peft key>`` are written, others ignored.
    base_model
        Recorded as ``base_model_name_or_path`` (the central model's path, when known).
    """
    from .local import check_stored_targets

    targets = check_stored_targets(config.get("target_modules"), None, "the adapter configuration")
    lora = LoraConfig(
        r=int(config["rank"]),
        lora_alpha=float(config["alpha"]),
        target_modules=targets if isinstance(targets, str) else sorted(targets),
        init_lora_weights=True,
        inference_mode=True,
        base_model_name_or_path=base_model or None,
    )
    lora.save_pretrained(str(directory))
    arrays = {_PREFIX + k[len("lora.") :]: np.asarray(v, np.float32) for k, v in weights.items() if k.startswith("lora.")}
    if not arrays:
        raise ValueError("the adapter record holds no LoRA weights (`lora.*`); adapt again before exporting.")
    save_safetensors(arrays, Path(directory) / PEFT_WEIGHTS_FILE, metadata={"format": "pt"})


def read_peft_lora(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a folder written by :func:`write_peft_lora`: the ``lora.*`` arrays and peft's configuration dict."""
    directory = Path(directory)
    try:
        conf = json.loads((directory / PEFT_CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"`path={str(directory)!r}`: no readable {PEFT_CONFIG_FILE} ({err}).") from None
    if not isinstance(conf, dict) or conf.get("peft_type") != "LORA":
        raise ValueError(f"`path={str(directory)!r}`: {PEFT_CONFIG_FILE} does not describe a peft LoRA adapter.")
    tensors = load_safetensors(directory / PEFT_WEIGHTS_FILE)
    bad = [k for k in tensors if not k.startswith(_PREFIX)]
    if bad:
        raise ValueError(f"`path={str(directory)!r}`: {PEFT_WEIGHTS_FILE} has keys outside peft's naming ({bad[:3]}).")
    return {"lora." + k[len(_PREFIX) :]: v.float().numpy() for k, v in tensors.items()}, conf
