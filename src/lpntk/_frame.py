"""Per-sample results as pandas DataFrames indexed by original dataset index.

Every result object keeps its arrays in the order of its samples (the feature store's, or the
training split's); ``to_frame()`` turns them into one table indexed by ``index`` (the original
dataset index, sorted), which is the order of every file lpntk writes.
"""

from __future__ import annotations

import numpy as np


def per_sample_frame(indices, columns: dict):
    """A DataFrame of ``columns`` (each ``(N,)``, in the order of ``indices``) indexed by
    ``indices`` (the original indices; positions ``0 .. N-1`` when None), sorted by it."""
    import pandas as pd

    n = len(next(iter(columns.values())))
    index = np.arange(n) if indices is None else np.asarray(indices)
    frame = pd.DataFrame(columns, index=pd.Index(index, name="index"))
    return frame.sort_index(kind="stable")


def original(indices, positions: np.ndarray) -> np.ndarray:
    """Positions (-1: none) as original indices (-1 kept): ``indices[positions]``."""
    positions = np.asarray(positions)
    if indices is None:
        return positions
    return np.where(positions >= 0, np.asarray(indices)[np.maximum(positions, 0)], -1)
