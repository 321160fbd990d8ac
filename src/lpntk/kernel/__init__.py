"""Exact lpNTK, pNTK, eNTK and loss-gradient kernels for any PyTorch classifier.

>>> feats = compute_features(model, dataset, kind="lpntk")     # doctest: +SKIP
>>> K = gram(feats)                                             # (N, N), small N
>>> best, where = row_max(feats)                                # streamed, any N
"""

from .extract import PROJECTIONS, STRATEGIES, Extractor, NotFactorable, Piece
from .features import Features, compute_features, model_hash
from .kinds import ENTK, KINDS, PNTK, Kind, LossGradient, LpNTK, get_kind
from .ops import (
    RowCount,
    RowMax,
    RowReducer,
    RowTopK,
    WriteKernel,
    block_size,
    columns,
    diagonal,
    gram,
    kernel_block,
    reduce_rows,
    row_max,
)

__all__ = [
    "ENTK",
    "KINDS",
    "PNTK",
    "PROJECTIONS",
    "STRATEGIES",
    "Extractor",
    "Features",
    "Kind",
    "LossGradient",
    "NotFactorable",
    "LpNTK",
    "Piece",
    "RowCount",
    "RowMax",
    "RowReducer",
    "RowTopK",
    "WriteKernel",
    "block_size",
    "columns",
    "compute_features",
    "diagonal",
    "get_kind",
    "gram",
    "kernel_block",
    "model_hash",
    "reduce_rows",
    "row_max",
]
