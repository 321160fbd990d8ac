"""In-memory labelled image datasets, their subsets and seeded stratified splits.

Every sample carries its index in the ORIGINAL dataset order (``indices``), which subsetting never
renumbers, so per-sample results (difficulty, forgetting, lpNTK rows) can always be traced back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._errors import ConfigError, DataError


class ArrayDataset(Dataset):
    """Labelled uint8 images held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64 in ``0 .. num_classes - 1``.
        indices: ``(N,)`` int64, each sample's index in the original dataset order (unique).
        classes: class names; ``num_classes == len(classes)``.
        class_ids: ``(num_classes,)`` each class's id in the original dataset (differs from
            ``0..num_classes-1`` after :meth:`filter_classes` relabelled the samples).
        name, split, source: what the data is, which part of it, where it was loaded from.
        mean, std: per-channel normalisation on the ``[0, 1]`` scale (computed when not given).

    ``ds[i]`` is ``(x, y)``: ``x`` float32 ``(C, H, W)`` normalised as ``(pixel/255 - mean)/std``,
    ``y`` a Python int.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        classes: Sequence[str],
        *,
        indices: np.ndarray | Sequence[int] | None = None,
        name: str = "dataset",
        split: str = "train",
        source: str = "",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_ids: Sequence[int] | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(
                f"{name}: images must be a 4-D uint8 array (N, C, H, W); "
                f"got shape {images.shape} dtype {images.dtype}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise DataError(
                f"{name}: labels must be a 1-D integer array of length {len(images)} (one per "
                f"image); got shape {labels.shape} dtype {labels.dtype}"
            )
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise DataError(f"{name}: classes is empty; expected at least one class name")
        if len(set(classes)) != len(classes):
            raise DataError(f"{name}: class names must be unique; got {classes}")
        if len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(classes):
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"{name}: label {bad} is out of range; expected labels in "
                    f"0..{len(classes) - 1} for {len(classes)} classes"
                )
        if indices is None:
            indices = np.arange(len(images), dtype=np.int64)
        indices = np.asarray(indices)
        if indices.shape != (len(images),) or indices.dtype.kind not in "iu":
            raise DataError(
                f"{name}: indices must be a 1-D integer array of length {len(images)}; "
                f"got shape {indices.shape} dtype {indices.dtype}"
            )
        if len(np.unique(indices)) != len(indices):
            raise DataError(f"{name}: original indices must be unique")

        self.images = np.ascontiguousarray(images)
        self.labels = labels.astype(np.int64, copy=False)
        self.indices = indices.astype(np.int64, copy=False)
        self.classes = classes
        self.class_ids = tuple(range(len(classes)) if class_ids is None else map(int, class_ids))
        if len(self.class_ids) != len(classes):
            raise DataError(
                f"{name}: class_ids need one id per class ({len(classes)}); "
                f"got {len(self.class_ids)}"
            )
        self.name, self.split, self.source = name, split, source
        channels = images.shape[1]
        if mean is None or std is None:
            m, s = _channel_stats(self.images)
            mean = m if mean is None else mean
            std = s if std is None else std
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{name}: mean/std need one value per channel ({channels}); "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"{name}: std values must be positive; got {self.std}")
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(-1, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)]).view(
            -1, 1, 1
        )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[int(i)]).float()
        return x * self._scale - self._shift, int(self.labels[int(i)])

    def lpntk_batch(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start..end`` (positions) as one batch: the tensors their items collate to,
        without the item-by-item work (feature extraction reads the data this way)."""
        x = torch.from_numpy(self.images[start:end]).float()
        return x * self._scale - self._shift, torch.from_numpy(self.labels[start:end]).long()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def class_counts(self) -> np.ndarray:
        """``(num_classes,)`` int64: number of samples of each class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, classes={self.num_classes})"
        )

    def tensors(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples: ``X`` ``(N, C, H, W)`` normalised, in ``dtype``; ``y`` ``(N,)`` int64.

        The uint8 images are moved to ``device`` before conversion (4x less to transfer).
        """
        x = torch.from_numpy(self.images).to(device)
        scale = self._scale.to(device=x.device, dtype=dtype)
        shift = self._shift.to(device=x.device, dtype=dtype)
        x = x.to(dtype).mul_(scale).sub_(shift)
        return x, torch.from_numpy(self.labels).to(device)

    # ------------------------------------------------------------------ subsets
    def _derive(
        self,
        positions: np.ndarray,
        split: str | None = None,
        *,
        labels=None,
        classes=None,
        class_ids=None,
    ) -> ArrayDataset:
        if len(positions) == 0:
            raise DataError(
                f"{self.name}/{self.split}: the selection is empty; expected at least one sample"
            )
        return ArrayDataset(
            self.images[positions],
            self.labels[positions] if labels is None else labels,
            self.classes if classes is None else classes,
            indices=self.indices[positions],
            name=self.name,
            split=self.split if split is None else split,
            source=self.source,
            mean=self.mean,
            std=self.std,
            class_ids=self.class_ids if class_ids is None else class_ids,
        )

    def subset(
        self, positions: Iterable[int] | np.ndarray, split: str | None = None
    ) -> ArrayDataset:
        """Samples at ``positions`` of THIS dataset (ints in given order, or a boolean mask).

        Original indices are kept.  Empty, out-of-range or repeated positions raise DataError.
        """
        pos = _as_array(positions)
        if pos.dtype == bool:
            if pos.shape != (len(self),):
                raise DataError(f"boolean mask has shape {pos.shape}; expected ({len(self)},)")
            pos = np.flatnonzero(pos)
        if pos.size == 0:
            raise DataError(
                f"{self.name}/{self.split}: empty subset; expected at least one position"
            )
        if pos.ndim != 1 or pos.dtype.kind not in "iu":
            raise DataError(
                f"positions must be a 1-D sequence of integers; got shape {pos.shape} "
                f"dtype {pos.dtype}"
            )
        bad = pos[(pos < 0) | (pos >= len(self))]
        if bad.size:
            raise DataError(
                f"{self.name}/{self.split}: positions out of range: {bad[:5].tolist()}; expected "
                f"0..{len(self) - 1}"
            )
        if len(np.unique(pos)) != len(pos):
            raise DataError("positions contain repeats; expected each sample at most once")
        return self._derive(pos.astype(np.int64), split)

    def positions_of(self, original_indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """Positions in this dataset of the given original indices (DataError if any is absent)."""
        want = _as_array(original_indices)
        if want.size and want.dtype.kind not in "iu":
            raise DataError(f"original indices must be integers; got dtype {want.dtype}")
        want = want.astype(np.int64).ravel()
        order = np.argsort(self.indices, kind="stable")
        sorted_idx = self.indices[order]
        where = np.clip(np.searchsorted(sorted_idx, want), 0, max(len(sorted_idx) - 1, 0))
        found = sorted_idx[where] == want if len(sorted_idx) else np.zeros(len(want), bool)
        if not found.all():
            missing = want[~found]
            raise DataError(
                f"{self.name}/{self.split}: {len(missing)} original indices are not in this "
                f"dataset, e.g. {missing[:5].tolist()}"
            )
        return order[where]

    def select(self, original_indices: Iterable[int] | np.ndarray) -> ArrayDataset:
        """Samples by ORIGINAL index, in the given order; unknown indices raise DataError."""
        pos = self.positions_of(original_indices)
        if len(np.unique(pos)) != len(pos):
            raise DataError("original indices contain repeats; expected each at most once")
        return self._derive(pos)

    def filter_classes(self, keep: Iterable[int | str], relabel: bool = True) -> ArrayDataset:
        """Only the samples of the classes in ``keep`` (class ids or names).

        With ``relabel`` the labels become ``0..len(keep)-1`` in the order of ``keep`` and
        ``classes`` is narrowed to match; otherwise labels and classes are unchanged.
        """
        if isinstance(keep, (str, int, np.integer)):
            keep = [keep]
        keep = list(keep)
        ids = []
        for k in keep:
            if isinstance(k, str):
                if k not in self.classes:
                    raise ConfigError(f"unknown class name {k!r}; expected one of {self.classes}")
                ids.append(self.classes.index(k))
            elif isinstance(k, (int, np.integer)) and 0 <= int(k) < self.num_classes:
                ids.append(int(k))
            else:
                raise ConfigError(
                    f"unknown class {k!r}; expected a class id in 0..{self.num_classes - 1} or "
                    f"a name in {self.classes}"
                )
        if len(set(ids)) != len(ids):
            raise ConfigError(f"classes to keep contain repeats: {list(keep)}")
        pos = np.flatnonzero(np.isin(self.labels, ids))
        if pos.size == 0:
            raise DataError(
                f"{self.name}/{self.split}: no samples of classes {ids}; the result would be empty"
            )
        if not relabel:
            return self._derive(pos)
        mapping = np.full(self.num_classes, -1, dtype=np.int64)
        mapping[ids] = np.arange(len(ids))
        return self._derive(
            pos,
            labels=mapping[self.labels[pos]],
            classes=tuple(self.classes[i] for i in ids),
            class_ids=tuple(self.class_ids[i] for i in ids),
        )


def _as_array(values) -> np.ndarray:
    """A numpy array from an ndarray, a torch tensor, or any iterable of numbers."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    return np.asarray(list(values))


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of ``(N, C, H, W)`` uint8 images."""
    if images.size == 0:
        return (0.0,) * images.shape[1], (1.0,) * images.shape[1]
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        v = np.arange(256) / 255.0
        n = counts.sum()
        m = float((counts * v).sum() / n)
        s = float(np.sqrt(max((counts * (v - m) ** 2).sum() / n, 0.0)))
        mean.append(m)
        std.append(s if s > 0 else 1.0)
    return tuple(mean), tuple(std)


# --------------------------------------------------------------------------- splits


def _class_positions(ds: ArrayDataset) -> list[np.ndarray]:
    order = np.argsort(ds.labels, kind="stable")
    bounds = np.cumsum(ds.class_counts())[:-1]
    return np.split(order, bounds)


def train_val_split(
    ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Seeded stratified split into ``(train, val)``.

    Each class gives ``round(val_fraction * count)`` samples to validation, at least one when it
    has two or more and never all of them.  Both parts keep the original indices and the sorted
    order of ``ds``; the validation part is named split ``"val"``.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be strictly between 0 and 1; got {val_fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for pos in _class_positions(ds):
        n = len(pos)
        if n < 2:
            continue
        k = min(max(int(round(val_fraction * n)), 1), n - 1)
        val.append(rng.permutation(pos)[:k])
    val_pos = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    if val_pos.size == 0:
        raise DataError(
            f"{ds.name}/{ds.split}: no class has 2 samples, cannot make a validation split"
        )
    mask = np.ones(len(ds), dtype=bool)
    mask[val_pos] = False
    return ds.subset(np.flatnonzero(mask)), ds.subset(val_pos, split="val")


def stratified_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Per-class counts summing to ``size``, proportional to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * (size / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    rest = size - int(quota.sum())
    if rest:
        frac = exact - quota
        order = np.lexsort((np.arange(len(counts)), -frac))  # largest remainder, ties by class id
        quota[order[:rest]] += 1
    return quota


def stratified_subset(ds: ArrayDataset, size: int, seed: int = 0) -> ArrayDataset:
    """A seeded random subset of ``size`` samples preserving class proportions, in sorted order."""
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= len(ds):
        raise DataError(f"subset size must be an integer in 1..{len(ds)}; got {size!r}")
    rng = np.random.default_rng(seed)
    quota = stratified_quotas(ds.class_counts(), int(size))
    parts = [
        rng.choice(pos, size=q, replace=False)
        for pos, q in zip(_class_positions(ds), quota, strict=True)
        if q
    ]
    return ds.subset(np.sort(np.concatenate(parts)))
