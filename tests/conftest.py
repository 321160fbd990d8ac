"""Shared fixtures. Data fixtures (``data_*``) build tiny datasets in tmp_path; no downloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """Isolate dataset lookup: no ``$LPNTK_DATA_DIR``, an empty cache in tmp; returns the cache."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("LPNTK_DATA_DIR", raising=False)
    monkeypatch.setenv("LPNTK_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return cache


@pytest.fixture
def data_make_mnist(monkeypatch):
    """Factory ``make(folder, n_train=30, n_test=10, gz=True, seed=0) -> folder``.

    Writes the four MNIST IDX files with random 28x28 images and labels 0..9 (every class present)
    and points ``lpntk.data.mnist.SHA256`` at their hashes, so they verify like the real files.
    """
    from lpntk.data import mnist
    from lpntk.data.idx import idx_bytes, write_idx

    hashes = dict(mnist.SHA256)
    monkeypatch.setattr(mnist, "SHA256", hashes)

    def make(folder, n_train=30, n_test=10, gz=True, seed=0) -> Path:
        folder = Path(folder)
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("test", n_test)):
            img_name, lab_name = mnist.FILES[split]
            arrays = {
                img_name: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
                lab_name: (np.arange(n) % 10).astype(np.uint8),
            }
            for name, arr in arrays.items():
                write_idx(folder / (name + (".gz" if gz else "")), arr)
                hashes[name] = hashlib.sha256(idx_bytes(arr)).hexdigest()
        return folder

    return make


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny LeNet-5 run on MNIST classes 1, 3, 5 (relabelled 0, 1, 2), with epoch checkpoints;
    its best.pt. Only for tests marked ``needs_mnist``."""
    from lpntk.cli import main

    from .test_cli import DATA_DIR

    out = tmp_path_factory.mktemp("train")
    argv = (
        "train --model lenet5 --epochs 1 --train-size 600 --batch-size 32 --classes 1 3 5 "
        f"--keep-epochs --out {out} --data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    return out / "best.pt"
