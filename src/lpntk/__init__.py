"""lpntk: the labelled pseudo neural tangent kernel (lpNTK) for PyTorch classifiers.

Public API; the implementation lives in the submodules.
"""

from ._errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    LpntkError,
    MissingFileError,
    ModelError,
)
from ._version import __version__
from .data import (
    ArrayDataset,
    dataset_info,
    fetch,
    load_dataset,
    stratified_subset,
    train_val_split,
)
from .kernel_stage import checkpoint_data, kernel_from_checkpoint
from .models import MODELS, build_model, count_parameters
from .pipeline import run_demo
from .train import TrainConfig, TrainResult, evaluate, load_checkpoint, run_training, train

__all__ = [
    "__version__",
    "ArrayDataset",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "LpntkError",
    "MissingFileError",
    "ModelError",
    "MODELS",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "checkpoint_data",
    "count_parameters",
    "dataset_info",
    "evaluate",
    "fetch",
    "kernel_from_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "run_demo",
    "run_training",
    "stratified_subset",
    "train",
    "train_val_split",
]
