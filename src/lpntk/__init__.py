"""lpntk: the labelled pseudo neural tangent kernel (lpNTK) for PyTorch classifiers.

Public API; the implementation lives in the submodules. Names are imported on first use, so
``import lpntk`` (and the command line's start) stays fast until torch is needed.
"""

from __future__ import annotations

import importlib

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

_LAZY = {
    "ArrayDataset": ".data",
    "dataset_info": ".data",
    "fetch": ".data",
    "load_dataset": ".data",
    "stratified_subset": ".data",
    "train_val_split": ".data",
    "checkpoint_data": ".kernel_stage",
    "kernel_from_checkpoint": ".kernel_stage",
    "MODELS": ".models",
    "build_model": ".models",
    "count_parameters": ".models",
    "run_demo": ".pipeline",
    "SampleKernel": ".samples",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "evaluate": ".training",
    "load_checkpoint": ".training",
    "run_training": ".training",
    "train": ".training",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lpntk' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "LpntkError",
    "MissingFileError",
    "ModelError",
    *_LAZY,
]
