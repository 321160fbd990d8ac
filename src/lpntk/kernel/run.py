"""The kernel of a trained checkpoint on its data: features on disk plus per-sample summaries.

Outputs in ``out_dir``: ``features/`` (the feature store), ``diagonal.npy`` (kappa(i, i)), and for
scalar kinds ``row_max.npy`` / ``row_argmax.npy`` (the largest kappa(i, j) over j != i and the
original index of that j) and ``per_sample.csv`` (one row per sample, original order).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from .._errors import ConfigError
from .._io import atomic_path, write_json
from ..data import ArrayDataset, load_dataset
from ..models import check_input
from ..train import load_checkpoint
from .features import Features, compute_features
from .ops import diagonal, row_max

SPLITS = ("train", "val", "test")


def checkpoint_data(
    ckpt: dict, split: str = "train", dataset: str | None = None, data_dir=None
) -> ArrayDataset:
    """The samples a checkpoint was trained (``train``) or validated (``val``) on, or the test set,
    with the class filter of its run; ``dataset`` another dataset name to use its whole split."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    name = dataset or ckpt["dataset"]
    if name != ckpt["dataset"] and split == "val":
        raise ConfigError("the validation split exists only for the checkpoint's own dataset")
    full = load_dataset(name, "test" if split == "test" else "train", data_dir)
    classes = ckpt["config"].get("classes")
    if classes is not None:
        full = full.filter_classes(classes)
    if name != ckpt["dataset"] or split == "test":
        return full
    data = full.select(ckpt[f"{split}_indices"])
    data.split = split
    return data


def kernel_from_checkpoint(
    checkpoint,
    out_dir,
    kind: str = "lpntk",
    split: str = "train",
    dataset: str | None = None,
    strategy: str = "auto",
    limit=None,
    data_dir=None,
    device="auto",
    progress: bool = True,
    **feature_options,
) -> dict:
    """Compute the ``kind`` kernel of ``checkpoint`` (a ``best.pt``) on ``split`` and write the
    outputs listed in the module docstring; returns a summary (also in ``summary.json``)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    model, ckpt = load_checkpoint(checkpoint, device="cpu")
    data = checkpoint_data(ckpt, split, dataset, data_dir)
    check_input(model, data.input_shape, data.num_classes)
    if limit is not None:
        data = data.subset(np.arange(min(int(limit), len(data))))
    desc = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "dataset": data.name,
        "split": split,
        "source": data.source,
    }
    feats = compute_features(
        model,
        data,
        kind,
        strategy,
        out_dir=out_dir / "features",
        device=device,
        progress=progress,
        description=desc,
        **feature_options,
    )
    t_feat = time.time() - t0
    done = _finished_summary(out_dir, feats)
    if done is not None:
        return done
    diag = diagonal(feats).numpy()
    _save(out_dir / "diagonal.npy", diag)
    summary = {
        "kind": feats.kind,
        "strategy": feats.meta["strategy"],
        "n": feats.n,
        "split": split,
        "dataset": data.name,
        "features_seconds": round(t_feat, 1),
        "floats_per_sample": feats.floats_per_sample(),
        "features": feats.meta,
    }
    if feats.m == 1:
        values, pos = row_max(feats, progress=progress)
        nearest = np.where(pos >= 0, feats.indices[pos], -1)  # -1: no other sample
        _save(out_dir / "row_max.npy", values)
        _save(out_dir / "row_argmax.npy", nearest)
        _write_table(out_dir / "per_sample.csv", feats, diag, values, nearest)
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(out_dir / "summary.json", summary)
    return summary


def _finished_summary(out_dir: Path, feats: Features) -> dict | None:
    """The summary of an earlier run on these very features, if all its outputs are there."""
    path = out_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    outputs = ["diagonal.npy"]
    if feats.m == 1:
        outputs += ["row_max.npy", "row_argmax.npy", "per_sample.csv"]
    if summary.get("features") != feats.meta:
        return None
    return summary if all((out_dir / f).exists() for f in outputs) else None


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_table(path: Path, feats: Features, diag, values, argmax_index) -> None:
    order = np.argsort(feats.indices, kind="stable")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "self_kernel", "max_kernel_other", "argmax_index"])
        for i in order:
            w.writerow(
                [
                    int(feats.indices[i]),
                    int(feats.labels[i]),
                    f"{diag[i]:.8g}",
                    f"{values[i]:.8g}",
                    int(argmax_index[i]),
                ]
            )
