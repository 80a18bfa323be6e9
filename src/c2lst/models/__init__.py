"""The engine: torch + diffusers + peft + accelerate. No AnnData / SpatialData imports here."""

from .central import PRESETS, CentralModel, preset_config
from .denoiser_features import CentralFeatureExtractor, central_features
from .features import MORPHOMETRIC_FEATURE_NAMES, morphometric_features
from .local import GeneEncoder, LocalModel
from .predictor import ExpressionPredictor
from .train import TrainingDivergedError

__all__: list[str] = [
    "MORPHOMETRIC_FEATURE_NAMES",
    "PRESETS",
    "CentralFeatureExtractor",
    "CentralModel",
    "ExpressionPredictor",
    "GeneEncoder",
    "LocalModel",
    "TrainingDivergedError",
    "central_features",
    "morphometric_features",
    "preset_config",
]
