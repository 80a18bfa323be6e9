"""A diffusers pipeline over a saved c2lst central model: ``C2LSTPipeline.from_pretrained(folder)`` samples from it.

A central model directory (``CentralModel.save_pretrained``) carries a ``model_index.json`` naming this class, its
``unet``/``scheduler`` (and ``vae``) components, and the null condition embedding in
``c2lst_condition.safetensors``. Plain :class:`diffusers.DDPMPipeline` cannot sample from it (the UNet's condition
slot needs ``class_labels``); this pipeline feeds the null embedding, or a condition embedding you pass.

diffusers resolves a ``_class_name`` of ``model_index.json`` inside the diffusers package only, so
``DiffusionPipeline.from_pretrained(folder)`` needs the class named: ``custom_pipeline=`` this file
(``c2lst.models.pipeline.__file__``, with ``trust_remote_code=True`` since diffusers executes the file it is given)
or, simpler, ``C2LSTPipeline.from_pretrained(folder)``. This module therefore uses absolute imports only, so that
diffusers can load it as a stand-alone file, and defines exactly one pipeline class.
"""

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from c2lst.models.sampling import to_uint8
from c2lst.models.store import load_safetensors, save_safetensors

#: File of a central model directory holding the null condition embedding (safetensors, key ``null_embedding``).
CONDITION_FILE = "c2lst_condition.safetensors"
_OUTPUT_TYPES = ("pil", "np", "uint8", "pt")


class C2LSTPipeline(DiffusionPipeline):
    """Sample histology patches from a c2lst central model, the diffusers way.

    Parameters
    ----------
    unet
        The central :class:`~diffusers.UNet2DModel` (condition slot: ``class_embed_type="identity"``).
    scheduler
        Any diffusers scheduler built from the model's training configuration (the saved one is a
        :class:`~diffusers.DDPMScheduler`; swap it with ``Scheduler.from_config(pipe.scheduler.config)``).
    vae
        The frozen :class:`~diffusers.AutoencoderKL` of a latent model, else ``None``.
    null_embedding
        The null condition embedding ``(cond_dim,)``; read from ``c2lst_condition.safetensors`` when loading a
        folder.

    Examples
    --------
    >>> from c2lst.models import C2LSTPipeline
    >>> pipe = C2LSTPipeline.from_pretrained("my_central")  # a folder written by CentralModel.save_pretrained
    >>> patches = pipe(4, generator=torch.Generator().manual_seed(0), num_inference_steps=50).images
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: Any,
        vae: AutoencoderKL | None = None,
        null_embedding: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.null_embedding = None if null_embedding is None else self._check_condition(null_embedding, "null")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_central(cls, central: Any) -> "C2LSTPipeline":
        """Wrap an in-memory :class:`~c2lst.models.CentralModel` (its UNet, training scheduler, VAE, null embedding)."""
        from diffusers import DDPMScheduler

        return cls(
            unet=central.unet,
            scheduler=DDPMScheduler(**central.scheduler_config),
            vae=central.vae,
            null_embedding=central.null_embedding.detach().clone(),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "C2LSTPipeline":
        """Load the pipeline of a central model directory (diffusers' loader) and its null embedding."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if pipe.null_embedding is None and Path(pretrained_model_name_or_path, CONDITION_FILE).is_file():
            pipe.load_condition(pretrained_model_name_or_path)
        return pipe

    def load_condition(self, directory: str | os.PathLike) -> None:
        """Read the null embedding from ``directory/c2lst_condition.safetensors`` (safetensors, never pickle)."""
        tensors = load_safetensors(Path(directory) / CONDITION_FILE)
        if "null_embedding" not in tensors:
            raise ValueError(f"`directory={str(directory)!r}`: {CONDITION_FILE} holds no `null_embedding` tensor.")
        self.null_embedding = self._check_condition(tensors["null_embedding"], "null")

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the components and ``model_index.json`` (diffusers) plus the null embedding."""
        super().save_pretrained(save_directory, **kwargs)
        if self.null_embedding is not None:
            save_safetensors({"null_embedding": self.null_embedding}, Path(save_directory) / CONDITION_FILE)

    # ------------------------------------------------------------------ sampling
    @property
    def cond_dim(self) -> int:
        """Width of the UNet's condition slot (its time-embedding width)."""
        return int(self.unet.time_embedding.linear_2.out_features)

    def _check_condition(self, value: Any, what: str) -> torch.Tensor:
        t = torch.as_tensor(value).detach().float().cpu()
        shape = (self.cond_dim,) if what == "null" else (int(t.shape[0]) if t.ndim else -1, self.cond_dim)
        if tuple(t.shape) != shape or not torch.isfinite(t).all():
            raise ValueError(
                f"`{what}_embedding` must be a finite tensor of shape {shape} (the UNet's condition width), got "
                f"shape {tuple(t.shape)}; pass the embedding of this central model."
            )
        return t

    def _null(self) -> torch.Tensor:
        if self.null_embedding is None and self.name_or_path and Path(self.name_or_path, CONDITION_FILE).is_file():
            self.load_condition(self.name_or_path)  # loaded by DiffusionPipeline.from_pretrained(custom_pipeline=)
        if self.null_embedding is None:
            raise ValueError(
                f"the pipeline has no null condition embedding (no {CONDITION_FILE} in {self.name_or_path!r}); "
                "load a folder written by `CentralModel.save_pretrained`, or call `pipe.load_condition(folder)`."
            )
        return self.null_embedding

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        inp = self.scheduler.scale_model_input(x, t)
        n = x.shape[0]
        if emb.shape[0] == 2 * n:  # classifier-free guidance: null and conditional branches in one batch
            eps_null, eps_cond = self.unet(torch.cat([inp, inp]), t.expand(2 * n), class_labels=emb).sample.chunk(2)
            return eps_null + guidance_scale * (eps_cond - eps_null)
        return self.unet(inp, t.expand(n), class_labels=emb).sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        condition: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` patches (null condition unless ``condition`` is given).

        Parameters
        ----------
        batch_size
            Number of patches.
        generator
            One CPU :class:`torch.Generator`, or one per patch; the initial noise is drawn on the CPU, so the
            patches match :meth:`CentralModel.sample <c2lst.models.CentralModel.sample>` for the same seed, steps
            and scheduler.
        num_inference_steps
            Denoising steps of ``self.scheduler``.
        output_type
            ``"pil"`` (list of images), ``"np"`` (float array in [0, 1]), ``"uint8"`` (uint8 array, as
            ``CentralModel.sample``) or ``"pt"`` (float tensor in [0, 1], ``(n, 3, H, W)``).
        return_dict
            Return an :class:`~diffusers.ImagePipelineOutput` (else a 1-tuple).
        condition
            Condition embeddings ``(batch_size, cond_dim)`` (e.g. ``LocalModel.condition(expr)``); ``None`` uses the
            null embedding.
        guidance_scale
            Classifier-free guidance weight with ``condition``: ``eps_null + w (eps_cond - eps_null)``.
        """
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type={output_type!r}` is unknown; valid types are {list(_OUTPUT_TYPES)}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size={batch_size!r}` must be a positive integer.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` holds {len(generator)} generators for batch_size={batch_size}.")
        device, dtype = self.unet.device, self.unet.dtype
        null = self._null().to(device, dtype).unsqueeze(0).expand(batch_size, -1)
        if condition is None or guidance_scale == 0:
            emb = null
        else:
            cond = self._check_condition(condition, "condition").to(device, dtype)
            if cond.shape[0] != batch_size:
                raise ValueError(f"`condition` has {cond.shape[0]} rows for batch_size={batch_size}.")
            emb = cond if guidance_scale == 1 else torch.cat([null, cond])
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, int(self.unet.config.in_channels), *size)
        x = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        x = x.to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = self._denoise(x, t, emb, float(guidance_scale))
            x = self.scheduler.step(eps, t, x, **step_kwargs).prev_sample
        if self.vae is not None:
            scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
            x = self.vae.decode(x.to(self.vae.dtype) / scale).sample
        if output_type in ("pil", "uint8"):
            images = to_uint8(x)  # c2lst's own rounding, so "uint8" equals CentralModel.sample bit for bit
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype("float32") / 255.0)
        else:
            images = (x.float() / 2 + 0.5).clamp(0, 1).cpu()
            if output_type == "np":
                images = images.permute(0, 2, 3, 1).numpy()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
