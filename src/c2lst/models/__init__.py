"""The engine: torch + diffusers + peft + accelerate. No AnnData / SpatialData imports here."""

from .central import PRESETS, CentralModel, preset_config
from .denoiser_features import CentralFeatureExtractor, central_features
from .diffusion import denoising_loss
from .features import MORPHOMETRIC_FEATURE_NAMES, morphometric_features
from .fit import fit_denoiser
from .local import DEFAULT_TARGETS, GeneEncoder, LocalModel, central_fingerprint, check_stored_targets
from .pipeline import C2LSTPipeline
from .predictor import ExpressionPredictor
from .sampling import DEFAULT_SCHEDULER, SCHEDULERS
from .train import TrainingDivergedError, TrainResult, check_mixed_precision
from .transformer import transformer_config

__all__: list[str] = [
    "DEFAULT_SCHEDULER",
    "DEFAULT_TARGETS",
    "MORPHOMETRIC_FEATURE_NAMES",
    "PRESETS",
    "SCHEDULERS",
    "C2LSTPipeline",
    "CentralFeatureExtractor",
    "CentralModel",
    "ExpressionPredictor",
    "GeneEncoder",
    "LocalModel",
    "TrainResult",
    "TrainingDivergedError",
    "central_features",
    "central_fingerprint",
    "check_mixed_precision",
    "check_stored_targets",
    "denoising_loss",
    "fit_denoiser",
    "morphometric_features",
    "preset_config",
    "transformer_config",
]
