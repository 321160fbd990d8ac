"""Datasets for lpntk: MNIST and CIFAR-10 as in-memory :class:`ArrayDataset` objects.

>>> ds = load_dataset("mnist", "train")          # doctest: +SKIP
>>> train, val = train_val_split(ds, 0.1, seed=0)  # doctest: +SKIP

Where files are looked for (explicit dir, ``$LPNTK_DATA_DIR``, the user cache, then a download) is
described in :mod:`lpntk.data.fetch`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from .._errors import ConfigError, DataError, MissingFileError
from . import cifar, mnist
from .dataset import ArrayDataset, stratified_subset, train_val_split
from .fetch import Attempts, cache_root, data_root, download_target, locate
from .idx import load_idx_dataset, read_idx, write_idx

DATASETS: tuple[str, ...] = ("mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")
_MODULES: dict[str, ModuleType] = {"mnist": mnist, "cifar10": cifar}


def _module(name: str) -> ModuleType:
    if name not in _MODULES:
        raise ConfigError(
            f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} or the path of a "
            "folder of MNIST-format IDX files",
            param="dataset",
        )
    return _MODULES[name]


def is_idx_folder(name) -> bool:
    """Whether dataset ``name`` is not a known name but the path of a folder (of IDX files)."""
    return isinstance(name, (str, os.PathLike)) and name not in _MODULES and Path(name).is_dir()


def _load_folder(folder: Path, split: str) -> ArrayDataset:
    """A folder of MNIST-format IDX files: both splits normalised with the training images'
    own statistics, named by the folder's absolute path (so checkpoints find it again)."""
    folder = folder.resolve()
    train = load_idx_dataset(folder, "train", name=str(folder))
    if split == "train":
        return train
    return load_idx_dataset(
        folder, split, name=str(folder), classes=train.classes, mean=train.mean, std=train.std
    )


def _check_data_dir(data_dir, may_create: bool = False) -> None:
    """A folder the user named must be a folder (``may_create``: or not exist yet)."""
    if data_dir is None:
        return
    d = Path(data_dir).expanduser()
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} is a file; expected a folder of datasets", param="data_dir")
    if not d.exists() and not may_create:
        raise MissingFileError(
            f"{d} does not exist; expected a folder holding mnist/ or cifar10/", param="data_dir"
        )


def _resolve(name: str, data_dir, split: str | None, download: bool, into_explicit: bool) -> Path:
    mod = _module(name)
    _check_data_dir(data_dir, may_create=into_explicit)
    attempts = Attempts()
    found = locate(name, data_dir, lambda folder: mod.find(folder, split), attempts)
    if found is not None:
        return found
    if not download:
        raise DataError(
            attempts.message(f"{name} files not found (downloading was disabled).", mod.MANUAL_HELP)
        )
    target = download_target(name, data_dir if into_explicit else None)
    try:
        found = mod.download(target, attempts)
    except OSError as e:  # e.g. the target folder cannot be created
        attempts.downloads.append(f"into {target}: {type(e).__name__}: {e}")
        found = None
    if found is None:
        raise DataError(
            attempts.message(
                f"{name} files not found and could not be downloaded into {target}.",
                mod.MANUAL_HELP,
            )
        )
    return found


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> ArrayDataset:
    """Load ``split`` ("train"/"test") of dataset ``name``: one of :data:`DATASETS`, or the path
    of a folder of MNIST-format IDX files (normalised with its own training images' statistics).

    Looks in ``data_dir`` (root or dataset folder), ``$LPNTK_DATA_DIR``, then the user cache, and
    downloads into the cache when allowed.  MNIST: ``(N, 1, 28, 28)``; CIFAR-10: ``(N, 3, 32, 32)``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if is_idx_folder(name):
        return _load_folder(Path(name), split)
    mod = _module(name)
    return mod.load(_resolve(name, data_dir, split, download, into_explicit=False), split)


def fetch(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure dataset ``name`` is available locally and verified; return its directory.

    Searches like :func:`load_dataset`; a download goes into ``<data_dir>/<name>`` when
    ``data_dir`` is given, else into the user cache.
    """
    mod = _module(name)
    folder = _resolve(name, data_dir, None, True, into_explicit=True)
    info = mod.info(folder)
    if info.get("checksums_ok") is False:
        raise DataError(
            f"{name} in {folder} failed verification: {info['checksums']}. Delete the "
            "bad files and fetch again."
        )
    return folder


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Where dataset ``name`` is and what it holds (sizes, per-class counts, checksum status).

    Never downloads; when nothing is found the result has ``found: False`` and ``looked_in``.
    """
    mod = _module(name)
    _check_data_dir(data_dir)
    attempts = Attempts()
    folder = locate(name, data_dir, lambda f: mod.find(f, None), attempts)
    if folder is None:
        return {
            "name": name,
            "found": False,
            "looked_in": attempts.looked,
            "how_to_provide": mod.MANUAL_HELP,
        }
    return {"name": name, "found": True, **mod.info(folder)}


__all__ = [
    "DATASETS",
    "ArrayDataset",
    "cache_root",
    "data_root",
    "dataset_info",
    "fetch",
    "is_idx_folder",
    "load_dataset",
    "load_idx_dataset",
    "read_idx",
    "stratified_subset",
    "train_val_split",
    "write_idx",
]
