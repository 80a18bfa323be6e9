"""Tools: one public function per C2L-ST step (pretrain, adapt, synthesize, predict, evaluate)."""

from ._adapt import adapt
from ._adapters import export_adapter, load_adapter
from ._augment import concat_augmented
from ._budget import budget_curve
from ._conditioning import evaluate_conditioning
from ._embedding import image_features, mixing_score
from ._evaluate_prediction import evaluate_prediction, prediction_metrics
from ._export import export_hest
from ._fidelity import evaluate_composition, evaluate_fidelity
from ._hest_bench import hest_bench
from ._plan import plan_budget
from ._predict import fit_predictor
from ._predict_expression import predict_expression
from ._pretrain import pretrain, pretrained_on
from ._select import select_synthetic
from ._synthesize import synthesize

__all__: list[str] = [
    "adapt",
    "budget_curve",
    "concat_augmented",
    "evaluate_composition",
    "evaluate_conditioning",
    "evaluate_fidelity",
    "evaluate_prediction",
    "export_adapter",
    "export_hest",
    "fit_predictor",
    "hest_bench",
    "image_features",
    "load_adapter",
    "mixing_score",
    "plan_budget",
    "predict_expression",
    "prediction_metrics",
    "pretrain",
    "pretrained_on",
    "select_synthetic",
    "synthesize",
]
