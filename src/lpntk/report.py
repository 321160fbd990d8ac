"""Pictures users look at: image grids of samples and of sample pairs, with labels and kappa in
the captions (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import atomic_path
from .data import ArrayDataset


def _image(data: ArrayDataset, index: int) -> np.ndarray:
    """Sample ``index`` (original) as an (H, W) or (H, W, 3) uint8 array."""
    img = data.images[int(data.positions_of([index])[0])]
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def pair_grid(data: ArrayDataset, pairs: list, captions: list, title: str, path) -> None:
    """One row per pair ``(i, j)`` of original indices: the two images side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(pairs))
    fig, axes = plt.subplots(rows, 2, figsize=(4.4, 1.9 * rows), dpi=100, squeeze=False)
    for r, ((i, j), caption) in enumerate(zip(pairs, captions, strict=True)):
        for c, index in enumerate((i, j)):
            ax = axes[r, c]
            ax.imshow(_image(data, index), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(caption[c], fontsize=7)
    for ax in axes.ravel()[2 * len(pairs) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def sample_grid(data: ArrayDataset, groups: list, title: str, path, per_row: int = 8) -> None:
    """One row per ``(caption, [original indices])`` group, up to ``per_row`` images each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(groups))
    fig, axes = plt.subplots(
        rows, per_row, figsize=(1.1 * per_row, 1.4 * rows), dpi=100, squeeze=False
    )
    for r, (caption, indices) in enumerate(groups):
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(indices):
                ax.imshow(_image(data, indices[c]), cmap="gray")
                label = int(data.labels[data.positions_of([indices[c]])[0]])
                ax.set_title(f"#{indices[c]} y={label}", fontsize=6)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(caption, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))
