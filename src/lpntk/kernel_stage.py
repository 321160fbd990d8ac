"""The kernel of a trained checkpoint on its data: features on disk plus per-sample tables.

Outputs in ``out_dir`` (arrays in the order of the feature store, its ``indices`` giving
each row's original dataset index; tables in original dataset order):

- ``features/``: the feature store of the ``split`` samples (``against/features/``: of the
  ``against`` samples).
- ``diagonal.npy``: kappa(i, i), ``(N,)``; ``(N, K, K)`` for entk.
- ``per_sample.csv``: one row per sample: ``index``, ``split``, ``label`` (``original_label``
  too when the run kept only some classes and relabelled them), the model's ``prediction``,
  ``loss`` and ``correct``, ``self_kernel`` (entk: ``self_kernel_trace``) and, for scalar kinds,
  the most similar other sample (``max_kernel_other``, ``argmax_index``, ``argmax_label``) and the
  least similar one (``min_kernel_other``, ``argmin_index``, ``argmin_label``). "Other" means the
  other samples of the set, or the ``against`` set.
- scalar kinds: ``row_max.npy``, ``row_argmax_index.npy``, ``row_min.npy``,
  ``row_argmin_index.npy`` (the same as the table, as arrays; -1 where there is no other sample).
- with ``top_k``: ``neighbours.csv``, each sample's ``top_k`` most and least similar others
  (``relation`` most_similar / least_similar, ``rank``, ``other_index``, ``other_label``,
  ``kappa``).
- with ``against``: ``cross_kernel.npy``, kappa(split sample, against sample), ``(N, M)`` or
  ``(N, M, K, K)`` for entk, rows as in ``features/``, columns as in ``against/features/``.
- ``summary.json``: what was computed, with the feature stores' metadata.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from ._device import resolve_device
from ._errors import CheckpointError, ConfigError, DataError
from ._io import atomic_path, output_folder, read_json, write_json
from .data import DATASETS, ArrayDataset, is_idx_folder, load_dataset, stratified_subset
from .kernel import Features, RowTopK, WriteKernel, compute_features, diagonal, reduce_rows
from .kernel.ops import block_size, kernel_block
from .models import check_input
from .noise import noisy_dataset
from .training import TrainConfig, load_checkpoint, predict

SPLITS = ("train", "val", "test")
OUTPUTS = (  # every file a run may write besides summary.json and the feature stores
    "diagonal.npy",
    "per_sample.csv",
    "row_max.npy",
    "row_argmax_index.npy",
    "row_min.npy",
    "row_argmin_index.npy",
    "neighbours.csv",
    "cross_kernel.npy",
)


def checkpoint_data(
    ckpt: dict, split: str = "train", dataset: str | None = None, data_dir=None
) -> ArrayDataset:
    """The samples a checkpoint was trained (``train``), validated (``val``) or tested (``test``:
    the test split, or its run's ``test_size`` subset) on, with the class filter of its run;
    ``dataset`` another dataset name to use its whole split.

    >>> model, ckpt = load_checkpoint("runs/lenet5")        # doctest: +SKIP
    >>> train = checkpoint_data(ckpt, "train")               # doctest: +SKIP
    """
    if split not in SPLITS:
        raise ConfigError(
            f"unknown split {split!r}; expected one of {', '.join(SPLITS)}", param="split"
        )
    missing = [k for k in ("dataset", "config", "train_indices", "val_indices") if k not in ckpt]
    if missing or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(
            f"the checkpoint lacks {', '.join(missing) or 'a config'}; expected one loaded with "
            "load_checkpoint from a file written by lpntk train"
        )
    if ckpt["dataset"] not in DATASETS and not is_idx_folder(ckpt["dataset"]):
        raise CheckpointError(
            f"the checkpoint names dataset {ckpt['dataset']!r}, which lpntk cannot load "
            f"(known: {', '.join(DATASETS)}, or a folder of IDX files that exists)"
        )
    name = dataset or ckpt["dataset"]
    if name != ckpt["dataset"] and split == "val":
        raise ConfigError(
            f"the validation split exists only for the checkpoint's own dataset "
            f"({ckpt['dataset']}), not {name}",
            param="split",
        )
    full = load_dataset(name, "test" if split == "test" else "train", data_dir)
    classes = ckpt["config"].get("classes")
    if classes is not None:
        try:
            full = full.filter_classes(classes)
        except ConfigError:
            raise ConfigError(
                f"the checkpoint was trained on classes {classes}, which {name} does not have",
                param="dataset",
            ) from None
    if name != ckpt["dataset"]:
        return full
    if split == "test":  # the run's own test samples: all, or its test_size subset
        cfg = TrainConfig.from_dict(ckpt["config"]).with_fixed_split()
        if cfg.test_size is None:
            return full
        return stratified_subset(full, cfg.test_size, seed=cfg.split_seed)
    if split != "test":  # the labels the run was trained on, injected noise included
        full = noisy_dataset(full, ckpt["config"].get("label_noise"), ckpt["dataset"])
    data = full.select(ckpt[f"{split}_indices"])
    data.split = split
    return data


def first_samples(data: ArrayDataset, limit, param: str) -> ArrayDataset:
    if limit is None:
        return data
    if not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(f"expected a positive number of samples; got {limit!r}", param=param)
    return data.subset(np.arange(min(int(limit), len(data))))


def kernel_from_checkpoint(
    checkpoint,
    out_dir,
    kind: str = "lpntk",
    split: str = "train",
    dataset: str | None = None,
    strategy: str = "auto",
    limit: int | None = None,
    against: str | None = None,
    against_limit: int | None = None,
    top_k: int = 0,
    data_dir=None,
    device="auto",
    progress: bool = True,
    client=None,
    **feature_options,
) -> dict:
    """Compute the ``kind`` kernel of ``checkpoint`` (any checkpoint of a run, or its folder) on
    ``split`` and write the outputs listed in the module docstring; returns the summary that is
    also written to ``summary.json``. An interrupted run resumes where it stopped.

    ``limit``: only the first N samples of ``split``. ``against``: also the cross kernel of
    ``split`` x ``against`` (e.g. test x train), with the neighbours taken from the ``against``
    samples (its first ``against_limit``). ``top_k``: write each sample's K most and least
    similar others. ``client``: a ``dask.distributed.Client``; the features and the streamed
    pass then run on its workers, which must reach ``out_dir``.
    """
    t0 = time.time()
    out_dir = output_folder(out_dir)
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ConfigError(f"expected a number >= 0; got {top_k!r}", param="top_k")
    if top_k and kind == "entk":
        raise ConfigError("needs a scalar kind (lpntk, pntk, loss), not entk", param="top_k")
    if against is not None and against not in SPLITS:
        raise ConfigError(
            f"unknown split {against!r}; expected one of {', '.join(SPLITS)}", param="against"
        )
    if against is None and against_limit is not None:
        raise ConfigError(
            "applies only together with {against}", param="against_limit", mentions=["against"]
        )
    if against is not None and against == split:
        raise ConfigError(
            f"is the split itself ({split}); leave it out for the kernel of a set with itself "
            "({top_k} gives each sample's neighbours)",
            param="against",
            mentions=["top_k"],
        )
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, device=dev)
    rows = first_samples(checkpoint_data(ckpt, split, dataset, data_dir), limit, "limit")
    try:
        check_input(model, rows.input_shape, rows.num_classes)
    except ConfigError:
        raise ConfigError(
            f"{rows.name} has images of shape {rows.input_shape} and {rows.num_classes} classes, "
            f"but the checkpoint's model takes {tuple(model.input_shape)} and "
            f"{model.num_classes} classes",
            param="dataset",
        ) from None
    cols = None
    if against is not None:
        cols = first_samples(
            checkpoint_data(ckpt, against, dataset, data_dir), against_limit, "against_limit"
        )

    def features(data: ArrayDataset, folder: Path) -> Features:
        desc = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "dataset": data.name,
            "split": data.split,
            "source": data.source,
        }
        return compute_features(
            model,
            data,
            kind,
            strategy,
            out_dir=folder,
            device=dev,
            progress=progress,
            description=desc,
            client=client,
            **feature_options,
        )

    feats = features(rows, out_dir / "features")
    other = features(cols, out_dir / "against" / "features") if cols is not None else None
    t_feat = time.time() - t0
    options = {"top_k": int(top_k), "against": against}
    done = _finished_summary(out_dir, feats, other, options)
    if done is not None:
        return done
    for name in (*OUTPUTS, "summary.json"):  # an earlier run's outputs: none may mix with these
        (out_dir / name).unlink(missing_ok=True)

    summary = {
        "kind": feats.kind,
        "strategy": feats.meta["strategy"],
        "n": feats.n,
        "split": split,
        "dataset": rows.name,
        **options,
        "n_against": other.n if other is not None else None,
        "features_seconds": round(t_feat, 1),
        "floats_per_sample": feats.floats_per_sample(),
        "features": feats.meta,
        "against_features": other.meta if other is not None else None,
    }
    diag = diagonal(feats).numpy()
    _save(out_dir / "diagonal.npy", diag)
    outputs = ["diagonal.npy", "per_sample.csv"]
    x, y = rows.tensors(dev)
    pred, loss = predict(model, x, y)
    del x
    table = _base_columns(rows, feats, pred.numpy(), loss.numpy())
    if feats.m == 1:
        table["self_kernel"] = diag
        neighbours = _neighbours(feats, other, top_k, out_dir, progress, client)
        table.update(neighbours.columns())
        for name, array in neighbours.arrays().items():
            _save(out_dir / name, array)
            outputs.append(name)
        if top_k:
            neighbours.write_csv(out_dir / "neighbours.csv", top_k)
            outputs.append("neighbours.csv")
    else:
        table["self_kernel_trace"] = np.einsum("nkk->n", diag)
        if other is not None:
            _entk_cross(feats, other, out_dir / "cross_kernel.npy")
    if other is not None:
        outputs.append("cross_kernel.npy")
    _write_table(out_dir / "per_sample.csv", feats.indices, table)
    summary["outputs"] = outputs
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(out_dir / "summary.json", summary)
    return summary


def describe(summary: dict, out_dir) -> str:
    """One line saying what a kernel run computed and where it wrote it."""
    against = f" x {summary['n_against']} {summary['against']}" if summary["against"] else ""
    note = ""
    if summary["kind"] == "entk":
        note = " (entk: K x K blocks; the neighbour columns need a scalar kind)"
    return (
        f"{summary['kind']} kernel of {summary['n']} {summary['split']} samples{against} "
        f"({summary['strategy']}, {summary['seconds']:.0f} s){note}: "
        f"{', '.join(summary['outputs'])} in {out_dir}"
    )


# -- per-sample columns ---------------------------------------------------------------------------
def _base_columns(rows: ArrayDataset, feats: Features, pred, loss) -> dict:
    if not np.array_equal(feats.labels, rows.labels):
        raise DataError("the feature store's labels differ from the dataset's; delete it")
    table = {"split": np.full(len(rows), rows.split), "label": rows.labels}
    ids = np.asarray(rows.class_ids)
    relabelled = not np.array_equal(ids, np.arange(rows.num_classes))
    if relabelled:
        table["original_label"] = ids[rows.labels]
    table["prediction"] = pred
    if relabelled:
        table["original_prediction"] = ids[pred]
    table["loss"] = loss
    table["correct"] = (pred == rows.labels).astype(np.int8)
    return table


class Neighbours:
    """Each row's ``k`` most and least similar others, from one streamed pass."""

    def __init__(self, most: RowTopK, least: RowTopK, rows: Features, cols: Features):
        self.most, self.least, self.rows, self.cols = most, least, rows, cols

    def _where(self, reducer: RowTopK):
        pos = reducer.positions.numpy()
        found = pos >= 0
        values = np.where(found, reducer.values.numpy(), np.nan)
        index = np.where(found, self.cols.indices[np.maximum(pos, 0)], -1)
        label = np.where(found, self.cols.labels[np.maximum(pos, 0)], -1)
        return values, index, label

    def columns(self) -> dict:
        out = {}
        for prefix, reducer, name in (("max", self.most, "argmax"), ("min", self.least, "argmin")):
            values, index, label = self._where(reducer)
            out[f"{prefix}_kernel_other"] = values[:, 0]
            out[f"{name}_index"] = index[:, 0]
            out[f"{name}_label"] = label[:, 0]
        return out

    def arrays(self) -> dict:
        (vmax, imax, _), (vmin, imin, _) = self._where(self.most), self._where(self.least)
        return {
            "row_max.npy": vmax[:, 0],
            "row_argmax_index.npy": imax[:, 0],
            "row_min.npy": vmin[:, 0],
            "row_argmin_index.npy": imin[:, 0],
        }

    def write_csv(self, path: Path, k: int) -> None:
        rows = self.rows
        order = np.argsort(rows.indices, kind="stable")
        header = ["index", "label", "relation", "rank", "other_index", "other_label", "kappa"]
        parts = [
            ("most_similar", self._where(self.most)),
            ("least_similar", self._where(self.least)),
        ]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in order:
                head = [int(rows.indices[i]), int(rows.labels[i])]
                for relation, (values, index, label) in parts:
                    for r in range(min(k, index.shape[1])):  # at most every other sample
                        if index[i, r] >= 0:
                            w.writerow(
                                [
                                    *head,
                                    relation,
                                    r + 1,
                                    int(index[i, r]),
                                    int(label[i, r]),
                                    f"{values[i, r]:.8g}",
                                ]
                            )


def _neighbours(
    feats: Features, other, top_k: int, out_dir: Path, progress: bool, client=None
) -> Neighbours:
    others = other.n if other is not None else feats.n - 1
    k = max(1, min(top_k, others))  # at most every other sample
    reducers = [RowTopK(k), RowTopK(k, largest=False)]
    with ExitStack() as stack:
        if other is not None:  # the same streamed blocks also fill the cross kernel
            shape = (feats.n, other.n)
            cross = stack.enter_context(_matrix_file(out_dir / "cross_kernel.npy", shape, feats))
            reducers.append(WriteKernel(cross))
        reduce_rows(feats, reducers, other, progress=progress, client=client)
    return Neighbours(reducers[0], reducers[1], feats, other if other is not None else feats)


# -- the cross kernel on disk ---------------------------------------------------------------------
@contextmanager
def _matrix_file(path: Path, shape: tuple, feats: Features):
    """A new ``.npy`` memory map of ``shape``, written beside ``path`` and moved onto it when the
    block succeeds (deleted if not, so no partial matrix is ever left under ``path``)."""
    dtype = np.dtype(np.float64 if feats.dtype == torch.float64 else np.float32)
    need = math.prod(shape) * dtype.itemsize
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if need > 0.95 * free:
        raise ConfigError(
            f"the cross kernel {shape} needs {need / 2**30:.1f} GiB but {path.parent} has "
            f"{free / 2**30:.1f} GiB free; choose fewer samples (limit, against_limit)",
            param="against_limit",
        )
    tmp = path.with_name(f".{path.name}.partial")
    out = np.lib.format.open_memmap(tmp, "w+", dtype, shape)
    try:
        yield out
        out.flush()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _entk_cross(feats: Features, other: Features, path: Path) -> None:
    """The ``(N, M, K, K)`` eNTK cross kernel, block by block."""
    m, b = feats.m, block_size(feats)
    with _matrix_file(path, (feats.n, other.n, m, m), feats) as cross:
        for i0 in range(0, feats.n, b):
            for j0 in range(0, other.n, b):
                rows, cols = slice(i0, min(i0 + b, feats.n)), slice(j0, min(j0 + b, other.n))
                cross[rows, cols] = kernel_block(feats, rows, other, cols).numpy()


# -- files ----------------------------------------------------------------------------------------
def _finished_summary(out_dir: Path, feats: Features, other, options: dict) -> dict | None:
    """The summary of an earlier run on these very features and options, if all its outputs are
    there (an unreadable summary counts as none)."""
    path = out_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = read_json(path, "summary", "")
    except DataError:
        return None
    if not isinstance(summary, dict) or summary.get("features") != feats.meta:
        return None
    if summary.get("against_features") != (other.meta if other is not None else None):
        return None
    if any(summary.get(k) != v for k, v in options.items()):
        return None
    outputs = summary.get("outputs") or []
    return summary if outputs and all((out_dir / f).exists() for f in outputs) else None


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_table(path: Path, indices: np.ndarray, table: dict) -> None:
    """A CSV with ``index`` and ``table``'s columns, one row per sample, in original order."""
    order = np.argsort(indices, kind="stable")
    names = list(table)
    cols = [np.asarray(table[c]) for c in names]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", *names])
        for i in order:
            w.writerow([int(indices[i]), *(_cell(c[i]) for c in cols)])


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.8g}"
    if isinstance(v, (np.integer, np.bool_)):
        return int(v)
    return v
