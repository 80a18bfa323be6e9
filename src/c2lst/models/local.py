"""Local adaptation: a gene encoder in the central model's condition slot plus LoRA adapters (peft).

The slot is the UNet's FiLM embedding, or the caption tokens of a transformer backbone (see
:mod:`c2lst.models.transformer`). The central UNet stays frozen. A :class:`GeneEncoder` maps a prepared expression profile to an offset of the
null condition embedding (its last layer starts at zero, so an untrained adapter reproduces the central
model), and LoRA adapters on the attention projections, ``time_emb_proj`` and the decoder's ``conv2`` let the UNet bend
to the local slide. Condition dropout trains the null branch too, so classifier-free guidance works.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

from ._nets import default_device
from .central import CentralModel
from .sampling import DEFAULT_SCHEDULER
from .store import ADAPTER_FORMAT, fingerprint, numpy_to_tensors, sha256_tensors, tensors_to_numpy
from .train import check_mixed_precision

__all__ = ["DEFAULT_TARGETS", "GeneEncoder", "LocalModel", "central_fingerprint", "check_stored_targets"]

#: Module-name patterns (regex, full match) that receive LoRA adapters.
DEFAULT_TARGETS = r".*(to_q|to_k|to_v|to_out\.0|time_emb_proj|up_blocks.*conv2)$"
#: Patterns an adapter record may hold instead of module names (records written before the names were stored).
#: Nothing else read from a record is ever compiled as a regex.
KNOWN_TARGET_PATTERNS = (DEFAULT_TARGETS,)


def _is_module_name(name: Any) -> bool:
    """Whether ``name`` is a dotted module path (``up_blocks.0.resnets.1.conv2``), checked without a regex."""
    if not isinstance(name, str) or not name or len(name) > 512:
        return False
    return all(part.isidentifier() or part.isdigit() for part in name.split("."))


def check_stored_targets(value: Any, unet: nn.Module | None = None, where: str = "adapter config") -> str | list[str]:
    """Validate the ``target_modules`` read from a stored adapter configuration.

    A list of module names is returned as a list (each a dotted path of identifiers, and, with ``unet``, a module
    of it). A string is accepted only when it is one of :data:`KNOWN_TARGET_PATTERNS` (what older c2lst versions
    stored): a pattern read from a file or ``.uns`` is never compiled, so a crafted one cannot hang the process.
    """
    if isinstance(value, str):
        if value in KNOWN_TARGET_PATTERNS:
            return value
        raise ValueError(
            f"{where}: `target_modules={value[:80]!r}` is a pattern, not a list of module names; c2lst does not "
            "compile patterns read from files or `.uns`. Re-run `c2lst.tl.adapt` (which stores the module names) "
            "or export the adapter again with the current c2lst."
        )
    if isinstance(value, list | tuple | np.ndarray) and len(value) and all(_is_module_name(v) for v in value):
        names = [str(v) for v in value]
        if unet is not None:
            known = {n for n, _ in unet.named_modules()}
            missing = [n for n in names if n not in known]
            if missing:
                raise ValueError(
                    f"{where}: `target_modules` names modules the central UNet does not have ({missing[:5]}); "
                    "pass the central model the adapter was trained on."
                )
        return names
    raise ValueError(
        f"{where}: `target_modules` must be a non-empty list of module names (dotted identifiers), got "
        f"{str(value)[:80]!r}; re-run `c2lst.tl.adapt` or export the adapter again with the current c2lst."
    )


def central_fingerprint(central: CentralModel) -> str:
    """Return the sha256 of the central model's own tensors (UNet + null embedding, without adapters)."""
    state = {k: v for k, v in central.state_dict().items() if "lora_" not in k}
    state = {k.replace(".base_layer", ""): v for k, v in state.items()}
    return sha256_tensors(state)


class GeneEncoder(nn.Module):
    """Map a prepared expression profile ``(B, G)`` to a condition offset ``(B, cond_dim)``.

    Inputs are standardised with per-gene statistics of the training spots (buffers), then pass through
    ``Linear -> SiLU -> LayerNorm -> Linear``. The last layer is zero-initialised.
    """

    def __init__(self, n_genes: int, cond_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))
        self.net = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.SiLU(), nn.LayerNorm(hidden), nn.Linear(hidden, cond_dim)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def set_statistics(self, expr: np.ndarray) -> None:
        """Set the standardisation from training expression ``(n, G)``."""
        expr = torch.as_tensor(np.asarray(expr), dtype=torch.float32)
        self.mean.copy_(expr.mean(0))
        self.scale.copy_(expr.std(0, unbiased=False).clamp_min(1e-3))

    def forward(self, expr: torch.Tensor) -> torch.Tensor:
        """Return the condition offset."""
        return self.net((expr - self.mean) / self.scale)


class LocalModel(nn.Module):
    """A frozen central model with LoRA adapters and a gene encoder in its condition slot.

    Parameters
    ----------
    central
        The central model. It is deep-copied unless ``copy_central=False``; its weights are frozen.
    genes
        The adapter's gene list (order of the expression columns).
    rank, alpha
        LoRA rank and scaling (``alpha`` defaults to ``rank``).
    target_modules
        Regex of module names receiving LoRA (see :data:`DEFAULT_TARGETS`), or a list of module names. The
        configuration records the resolved module names.
    hidden
        Width of the gene encoder's hidden layer.
    cond_dropout
        Probability of replacing the condition by the null embedding during training.
    """

    def __init__(
        self,
        central: CentralModel,
        genes: Sequence[str],
        *,
        rank: int = 8,
        alpha: float | None = None,
        target_modules: str | Sequence[str] = DEFAULT_TARGETS,
        hidden: int = 64,
        cond_dropout: float = 0.1,
        copy_central: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.central_sha256 = central_fingerprint(central)
        self.central = copy.deepcopy(central) if copy_central else central
        self.central.requires_grad_(False)
        self.genes = [str(g) for g in genes]
        self.adapter_config = {
            "format": ADAPTER_FORMAT,
            "rank": int(rank),
            "alpha": float(alpha if alpha is not None else rank),
            "target_modules": target_modules,
            "hidden": int(hidden),
            "cond_dropout": float(cond_dropout),
            "cond_dim": int(central.cond_dim),
            "n_genes": len(self.genes),
        }
        if central.backbone_kind != "unet":  # UNet records stay as they were (their sha256 covers this config)
            self.adapter_config["backbone"] = central.backbone_kind
        if not isinstance(target_modules, str):
            target_modules = check_stored_targets(list(target_modules), self.central.denoiser, "`target_modules`")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lora = LoraConfig(r=int(rank), lora_alpha=float(alpha or rank), target_modules=target_modules,
                              init_lora_weights=True)
            inject_adapter_in_model(lora, self.central.denoiser)
            self.encoder = GeneEncoder(len(self.genes), central.cond_dim, hidden)
        # store the resolved module names, never the pattern: a record is read back without compiling anything
        from peft.tuners.lora import LoraLayer

        self.adapter_config["target_modules"] = sorted(
            name for name, module in self.central.denoiser.named_modules() if isinstance(module, LoraLayer)
        )
        for name, p in self.central.denoiser.named_parameters():
            p.requires_grad_("lora_" in name)
        self.encoder.to(self.central.device)
        self.fused = False

    def to(self, *args: Any, **kwargs: Any) -> LocalModel:  # noqa: D102
        super().to(*args, **kwargs)
        self.central.to(*args, **kwargs)  # moves the central model's frozen VAE too (kept out of the modules)
        return self

    # ------------------------------------------------------------------ maths
    def condition(self, expr: torch.Tensor) -> torch.Tensor:
        """Return condition embeddings (null embedding + encoder offset) for expression ``(B, G)``."""
        expr = expr.to(self.central.device, self.central.null_embedding.dtype)
        return self.central.null_condition(expr.shape[0]) + self.encoder(expr)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """Predict noise; ``condition`` is ``(expr, drop_mask)``, an embedding tensor, or ``None`` (null)."""
        if isinstance(condition, tuple):
            expr, drop = condition
            emb = self.condition(expr)
            emb = torch.where(drop[:, None].to(emb.device), self.central.null_condition(emb.shape[0]), emb)
            condition = emb
        return self.central(noisy, timesteps, condition)

    def generate(
        self,
        expr: np.ndarray,
        *,
        n_per_condition: int = 1,
        seed: int = 0,
        steps: int = 25,
        scheduler: str = DEFAULT_SCHEDULER,
        guidance_scale: float = 2.0,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        mixed_precision: str = "no",
        progress: bool = False,
    ) -> np.ndarray:
        """Generate ``n_per_condition`` patches for each expression profile, reproducibly per row.

        Output row ``i`` shows profile ``i // n_per_condition`` and is drawn with its own generator seeded
        ``seed + i`` (initial and per-step noise), so a row is the same whatever ``batch_size`` and whichever
        other rows are generated with it.

        Parameters
        ----------
        expr
            Prepared expression profiles ``(m, n_genes)`` in the order of :attr:`genes`.
        n_per_condition
            Patches per profile.
        seed
            Seed of the first row; row ``i`` uses ``seed + i``.
        steps
            Denoising steps.
        scheduler
            One of :data:`~c2lst.models.sampling.SCHEDULERS`.
        guidance_scale
            Classifier-free guidance weight (0: null condition only, 1: condition only, > 1: stronger).
        batch_size
            Patches per UNet call.
        device
            Torch device; ``None`` picks CUDA (or MPS) when available, else the model's device. The model is moved
            there.
        mixed_precision
            ``"no"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU): the UNet runs under :func:`torch.autocast` in
            that precision (faster on GPUs; the sampler's arithmetic stays float32).
        progress
            Show a progress bar over batches.

        Returns
        -------
        uint8 array ``(m * n_per_condition, H, W, 3)``; rows of one profile are contiguous.

        Examples
        --------
        >>> local = LocalModel(CentralModel.from_preset("tiny"), ["a", "b"])
        >>> local.generate(np.zeros((2, 2), np.float32), n_per_condition=3, steps=2).shape
        (6, 32, 32, 3)
        """
        from .._utils import check_positive_int, check_seed, check_seed_range

        n_per_condition = check_positive_int(n_per_condition, "n_per_condition")
        seed = check_seed(seed)
        expr = np.asarray(expr)
        if expr.ndim != 2 or expr.shape[1] != len(self.genes) or expr.dtype.kind not in "fiu":
            raise ValueError(
                f"`expr` must be a numeric array (n_profiles, {len(self.genes)}) over the adapter's genes, got "
                f"shape {expr.shape} and dtype {expr.dtype}."
            )
        if not np.isfinite(expr).all():
            raise ValueError("`expr` contains NaN or Inf values; pass prepared (log-normalised) profiles.")
        m = expr.shape[0]
        n = m * n_per_condition
        check_seed_range(seed, n)
        mixed_precision = check_mixed_precision(mixed_precision, None if device is None else str(device))
        target = default_device(device)
        if device is not None or target.type != "cpu":
            self.to(target)
        rows = np.ascontiguousarray(np.repeat(expr, n_per_condition, axis=0))
        with torch.inference_mode():
            emb = self.condition(torch.from_numpy(rows))
        gens = [torch.Generator().manual_seed(int(seed + i)) for i in range(n)]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        autocast = torch.autocast(self.central.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            return self.central.sample(
                n, steps=steps, scheduler=scheduler, condition=emb, guidance_scale=guidance_scale, generator=gens,
                batch_size=batch_size, progress=progress,
            )  # fmt: skip

    def fuse_adapters(self) -> LocalModel:
        """Merge the LoRA weights into the frozen layers and drop the LoRA wrappers, for fast inference.

        After fusing, a UNet forward costs exactly what the central UNet's does (no extra low-rank
        products, no wrapper calls). The model can no longer be trained or export its adapter state, so fuse
        only a copy used for sampling (models built by :meth:`from_adapter` own their copy of the central
        model). Returns ``self``.
        """
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.central.denoiser.named_modules()):
            if not isinstance(module, LoraLayer):
                continue
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = self.central.denoiser.get_submodule(parent_name) if parent_name else self.central.denoiser
            setattr(parent, child, module.get_base_layer())
        self.fused = True
        return self

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> int:
        """Number of trainable parameters (LoRA + gene encoder)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> dict[str, Any]:
        """Return trainable counts and their ratio to the denoiser's own parameters.

        Keys: ``lora``, ``encoder``, ``trainable``, the denoiser's size under its kind (``unet`` or
        ``transformer``, see :attr:`CentralModel.backbone_kind <c2lst.models.CentralModel.backbone_kind>`) and
        ``ratio``.
        """
        lora = sum(p.numel() for n, p in self.central.denoiser.named_parameters() if "lora_" in n)
        enc = sum(p.numel() for p in self.encoder.parameters())
        base = sum(p.numel() for n, p in self.central.denoiser.named_parameters() if "lora_" not in n)
        return {"lora": lora, "encoder": enc, "trainable": lora + enc, self.central.backbone_kind: base,
                "ratio": (lora + enc) / base}

    # ------------------------------------------------------------------ state
    def adapter_state(self) -> dict[str, np.ndarray]:
        """Return the adapter weights (LoRA + encoder incl. statistics) as float32 arrays."""
        if self.fused:
            raise RuntimeError("the adapters were fused into the UNet; their weights can no longer be exported.")
        lora = get_peft_model_state_dict(self.central.denoiser)
        state = {f"lora.{k}": v for k, v in lora.items()}
        state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        return tensors_to_numpy(state)

    def adapter_sha256(self) -> str:
        """Return the adapter's fingerprint: one sha256 over its weights, configuration and gene list."""
        return fingerprint(self.adapter_state(), {"config": self.adapter_config}, self.genes)

    def load_adapter_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load weights produced by :meth:`adapter_state` (exact key set required)."""
        tensors = numpy_to_tensors(arrays)
        lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
        enc = {k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")}
        expected = set(get_peft_model_state_dict(self.central.denoiser))
        if set(lora) != expected or set(enc) != set(self.encoder.state_dict()):
            missing = sorted((expected - set(lora)) | (set(self.encoder.state_dict()) - set(enc)))[:5]
            raise ValueError(f"adapter weights do not match the adapter architecture (e.g. missing {missing}).")
        result = set_peft_model_state_dict(self.central.denoiser, lora)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter weights have unexpected keys {result.unexpected_keys[:5]}.")
        self.encoder.load_state_dict(enc)

    @classmethod
    def from_adapter(
        cls, central: CentralModel, genes: Sequence[str], config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> LocalModel:
        """Rebuild an adapted model from a central model, its gene list, config and weights."""
        kind = str(config.get("backbone", "unet"))
        if kind != central.backbone_kind:
            raise ValueError(
                f"the adapter was trained on a {kind} central model, the central model given is a "
                f"{central.backbone_kind}; pass the central model the adapter was trained on."
            )
        if int(config.get("cond_dim", central.cond_dim)) != central.cond_dim:
            raise ValueError(
                f"the adapter was trained for condition width {config['cond_dim']}, the central model has "
                f"{central.cond_dim}; pass the central model the adapter was trained on."
            )
        targets = check_stored_targets(config.get("target_modules"), central.denoiser)
        model = cls(
            central,
            genes,
            rank=int(config["rank"]),
            alpha=float(config["alpha"]),
            target_modules=targets,
            hidden=int(config["hidden"]),
            cond_dropout=float(config["cond_dropout"]),
        )
        model.load_adapter_state(arrays)
        return model.eval()

    def config_json(self) -> str:
        """Return the adapter configuration as a JSON string."""
        return json.dumps(self.adapter_config, sort_keys=True)
