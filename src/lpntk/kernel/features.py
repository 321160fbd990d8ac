"""Computing, storing and loading the per-sample features of a kernel.

With ``out_dir`` the features go to memory-mapped ``.npy`` files beside a ``meta.json`` (model and
data hashes, kind, strategy, dtype, pieces, date, progress). Extraction flushes every few seconds,
and an interrupted run started again with the same model, data and settings continues where the last
flush left it. Without ``out_dir`` the features stay in memory.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    Subset,
    default_collate,
)

from .._device import resolve_device
from .._errors import ConfigError, DataError, Interrupted, MissingFileError, ModelError
from .._interrupt import deferred_interrupt
from .._io import atomic_path, output_folder, read_json, write_json
from .._progress import progress as progress_bar
from .._version import __version__
from .extract import Extractor, Piece, trainable
from .kinds import Kind, get_kind

FORMAT = 1
FLUSH_SECONDS = 10.0  # the store's progress is saved at least this often
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Features:
    """Per-sample features of one kernel kind for ``n`` samples: pieces whose kernels add up.

    ``arrays["<i>.F"]`` is ``(n, m, p)`` for a dense piece ``i``; ``arrays["<i>.A"]`` ``(n, T, pa)``
    and ``arrays["<i>.B"]`` ``(n, m, T, pb)`` for a factored one. ``m`` is 1 for scalar kinds
    (lpntk, pntk, loss) and K for entk. ``labels`` and ``indices`` (original dataset order) are
    ``(n,)``. Arrays are NumPy arrays or read-only memory maps.
    """

    def __init__(self, pieces: list[Piece], arrays: dict, labels, indices, meta: dict):
        self.pieces, self.arrays, self.meta = pieces, arrays, meta
        self.labels, self.indices = np.asarray(labels), np.asarray(indices)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def m(self) -> int:
        return int(self.meta["outputs"])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]

    def __len__(self) -> int:
        return self.n

    def floats_per_sample(self) -> int:
        return sum(int(np.prod(a.shape[1:])) for a in self.arrays.values())

    def rows(self, rows, device="cpu") -> dict[str, torch.Tensor]:
        """The feature arrays of samples ``rows`` (a slice or positions) as tensors."""
        return {
            k: torch.from_numpy(np.array(a[rows], copy=True)).to(device)
            for k, a in self.arrays.items()
        }

    def compatible(self, other: Features) -> None:
        """Raise unless ``other`` can be paired with these features in one kernel."""
        keys = ("kind", "strategy", "dtype", "model_hash", "proj_dim", "projection", "seed")
        diff = [k for k in keys if self.meta.get(k) != other.meta.get(k)]
        if diff or [p.shapes for p in self.pieces] != [p.shapes for p in other.pieces]:
            raise ConfigError(
                f"these feature sets come from different models or settings "
                f"({', '.join(diff) or 'pieces'} differ); compute both with the "
                "same checkpoint, kind and strategy"
            )

    @classmethod
    def load(cls, path: str | Path) -> Features:
        """Open a finished feature store (memory-mapped, read-only).

        A missing, truncated or corrupt part raises a DataError that names it.
        """
        path = Path(path)
        if not (path / "meta.json").exists():
            raise MissingFileError(
                f"{path} holds no feature store (no meta.json); create one with "
                "lpntk kernel or compute_features(..., out_dir=...)"
            )
        meta = _read_meta(path)
        if not meta.get("complete"):
            raise DataError(
                f"the feature store in {path} is unfinished ({meta.get('done', 0)} of "
                f"{meta['n']} samples); run the same computation again to resume it"
            )
        pieces, arrays, labels = _open_arrays(path, meta, "r")
        return cls(pieces, arrays, np.asarray(labels), _load_array(path, "indices", meta), meta)


_BROKEN = "delete the folder and compute the features again"


def _read_meta(path: Path) -> dict:
    meta = read_json(path / "meta.json", "the feature store's metadata", _BROKEN)
    if not isinstance(meta, dict) or not isinstance(meta.get("n"), int) or meta["n"] < 1:
        raise DataError(f"{path / 'meta.json'} is not a feature store's metadata; {_BROKEN}")
    done = meta.get("done", 0)
    if not isinstance(done, int) or not 0 <= done <= meta["n"]:
        raise DataError(
            f"{path / 'meta.json'} says {done!r} of {meta['n']} samples are done; {_BROKEN}"
        )
    pieces = meta.get("pieces")
    if (meta.get("complete") or pieces is not None) and (
        not isinstance(pieces, list) or not pieces
    ):
        raise DataError(f"{path / 'meta.json'} describes no feature pieces; {_BROKEN}")
    return meta


def _load_array(path: Path, name: str, meta: dict, mode: str | None = None, shape=None):
    """``path/name.npy`` (memory-mapped with ``mode``), checked to have ``shape`` (default
    ``(n,)``); a clear DataError when it is missing, truncated or of another shape."""
    file = path / f"{name}.npy"
    shape = tuple(shape) if shape is not None else (meta["n"],)
    try:
        a = np.load(file, mmap_mode=mode)
    except FileNotFoundError:
        raise DataError(f"the feature store in {path} lacks {file.name}; {_BROKEN}") from None
    except (OSError, ValueError, EOFError) as e:  # truncated or not an .npy file
        raise DataError(f"{file} is truncated or corrupt ({e}); {_BROKEN}") from None
    if a.shape != shape:
        raise DataError(f"{file} has shape {a.shape}, expected {shape}; {_BROKEN}")
    return a


def _open_arrays(path: Path, meta: dict, mode: str):
    """The pieces, feature arrays and labels of a store described by ``meta``."""
    try:
        pieces = [Piece.from_dict(p) for p in meta["pieces"]]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise DataError(f"{path / 'meta.json'} describes no valid pieces; {_BROKEN}") from None
    arrays = {
        f"{i}.{name}": _load_array(path, f"{i}.{name}", meta, mode, (meta["n"], *shape))
        for i, p in enumerate(pieces)
        for name, shape in p.shapes.items()
    }
    return pieces, arrays, _load_array(path, "labels", meta, mode)


def model_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the names and values of the model's parameters and buffers."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _dataset_of(data) -> tuple[Dataset, int | None]:
    """The map-style dataset behind ``data`` and the loader batch size, if a DataLoader."""
    if isinstance(data, DataLoader):
        bs = data.batch_sampler
        in_order = (
            type(bs) is BatchSampler
            and isinstance(bs.sampler, SequentialSampler)
            and not bs.drop_last
        )
        if not in_order:
            raise ConfigError(
                "pass a DataLoader that visits every sample once in order "
                "(shuffle=False, drop_last=False), or the dataset itself"
            )
        return data.dataset, data.batch_size
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ConfigError(
            f"expected a map-style Dataset or a DataLoader; got {type(data).__name__}"
        )
    return data, None


def _batches(data, dataset, start: int, batch_size: int, fields):
    """Batches ``(x, y)`` from position ``start`` on."""
    if isinstance(data, DataLoader):
        pos = 0
        for batch in data:
            x, y = _pick(batch, fields)
            if start < pos + len(y):
                if start > pos:
                    raise DataError(
                        "cannot resume inside a DataLoader batch; use the batch size "
                        "of the interrupted run"
                    )
                yield x, y
            pos += len(y)
        return
    subset = Subset(dataset, range(start, len(dataset)))
    for batch in DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=_collate):
        yield _pick(batch, fields)


def _collate(items):
    try:
        return default_collate(items)
    except (TypeError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"the dataset's items cannot be batched ({first}); expected items of tensors, "
            "arrays or numbers of the same shape"
        ) from None


def _pick(batch, fields):
    """The input and the labels of a collated batch; ``fields`` names them (None: a pair)."""
    hint = (
        "pass fields=(input, label) to compute_features, the keys or positions of the input "
        "and the label in each item"
    )
    if isinstance(batch, dict):
        if fields is None:
            raise DataError(
                f"the dataset's items are dicts with keys {sorted(batch)}; expected (input, "
                f"label) pairs, or {hint}, e.g. fields=('image', 'label')"
            )
        missing = [f for f in fields if f not in batch]
        if missing:
            raise DataError(
                f"the dataset's items have no field {missing[0]!r}; keys: {sorted(batch)}"
            )
    elif isinstance(batch, (list, tuple)):
        if fields is None and len(batch) != 2:
            raise DataError(
                f"each item of the dataset has {len(batch)} fields; expected (input, label), "
                f"or {hint}, e.g. fields=(0, 2)"
            )
        if fields is not None and any(
            not isinstance(f, int) or not -len(batch) <= f < len(batch) for f in fields
        ):
            raise DataError(
                f"fields={tuple(fields)} do not fit items of {len(batch)} fields; "
                f"expected positions in 0..{len(batch) - 1}"
            )
    else:
        raise DataError(
            f"each item of the dataset must hold an input and a label; got a single "
            f"{type(batch).__name__} (a dataset of inputs alone has no labels for lpNTK)"
        )
    x, y = (batch[0], batch[1]) if fields is None else (batch[fields[0]], batch[fields[1]])
    return x, y


def _as_tensor_labels(y) -> torch.Tensor:
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"labels must be integers; got {type(y).__name__} values such as {_first_of(y)!r}"
        ) from None
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"labels must be integers; got dtype {y.dtype}")
    return y.long()


def compute_features(
    model: torch.nn.Module,
    data,
    kind: str | Kind = "lpntk",
    strategy: str = "auto",
    *,
    proj_dim: int | None = None,
    projection: str = "rademacher",
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    out_dir: str | Path | None = None,
    progress: bool = True,
    description: dict | None = None,
    fields: tuple | None = None,
) -> Features:
    """Per-sample features of ``model`` (logits ``(B, K)``, evaluated in eval mode) on ``data``.

    ``data`` is a map-style Dataset or an in-order DataLoader yielding ``(x, y)``; for items of
    another form, ``fields=(input, label)`` gives the keys (dict items) or positions (tuples) of
    the input and the label, e.g. ``fields=("image", "label")``. ``kind``: lpntk,
    pntk, entk or loss. ``strategy``: auto (factored, or projected when ``proj_dim`` is given),
    factored, materialised or projected. ``dtype``: "float32" or "float64". ``description`` is
    stored in the metadata (dataset name, checkpoint path, ...).

    >>> feats = compute_features(model, dataset, "lpntk")   # doctest: +SKIP
    >>> from lpntk.kernel import gram; gram(feats).shape     # doctest: +SKIP
    (N, N)
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"expected a torch.nn.Module that returns logits; got {type(model).__name__}",
            param="model",
        )
    kind = get_kind(kind)
    if dtype not in DTYPES:
        raise ConfigError(f"expected one of {', '.join(DTYPES)}; got {dtype!r}", param="dtype")
    dataset, loader_bs = _dataset_of(data)
    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty; expected at least one sample")
    batch_size = loader_bs or batch_size
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"expected at least 1; got {batch_size}", param="batch_size")
    if fields is not None and (not isinstance(fields, (tuple, list)) or len(fields) != 2):
        raise ConfigError(f"expected (input, label); got {fields!r}", param="fields")
    if out_dir is not None and not str(out_dir).strip():
        raise ConfigError("expected a folder, got an empty path", param="out_dir")
    device = resolve_device(device)
    first = next(iter(trainable(model).values()))
    # never move or cast the caller's model: work on a copy when device or dtype differ
    work = model
    if first.dtype != DTYPES[dtype] or not _same_device(first.device, device):
        work = copy.deepcopy(model).to(device, DTYPES[dtype])
    modes = {m: m.training for m in model.modules()}
    try:
        work.eval()
        extractor = Extractor(work, kind, strategy, proj_dim, projection, seed)
        indices = np.asarray(getattr(dataset, "indices", np.arange(n)), dtype=np.int64)
        identity = _json_safe(
            {
                "format": FORMAT,
                "kind": kind.name,
                "requested_strategy": strategy,
                "dtype": dtype,
                "proj_dim": proj_dim if extractor.strategy == "projected" else None,
                "projection": projection if extractor.strategy == "projected" else None,
                "seed": seed if extractor.strategy == "projected" else None,
                "model_hash": model_hash(work),
                "model_class": type(model).__name__,
                "n": n,
                "indices_hash": hashlib.sha256(indices.tobytes()).hexdigest(),
                "labels_hash": _labels_hash(dataset),
            }
        )
        store = _Store(output_folder(out_dir), identity, indices) if out_dir is not None else None
        if store is not None and store.complete:
            return Features.load(out_dir)
        start = store.done if store is not None else 0
        arrays = store.arrays if store is not None else None
        labels = store.labels if store is not None else np.empty(n, dtype=np.int64)
        bar = progress_bar(n, f"{kind.name} features", initial=start, enabled=progress)
        pos, last_flush = start, time.time()
        with deferred_interrupt() as interrupt:
            for x, y in _batches(data, dataset, start, batch_size, fields):
                y = _as_tensor_labels(y)
                x = _inputs(x, device, dtype)
                out = None
                if pos == start:  # validate the output and the factored decomposition once
                    out = _first_batch(extractor, x, y.to(device))
                if out is None:
                    out = extractor(x, y.to(device))
                if arrays is None:
                    arrays = _allocate(extractor.pieces, n, out, store)
                    labels = store.labels if store is not None else labels
                elif store is not None and store.pieces != extractor.pieces:
                    raise DataError(
                        f"the unfinished store in {out_dir} has other feature shapes; "
                        "delete it to start again"
                    )
                b = len(y)
                for k, v in out.items():
                    arrays[k][pos : pos + b] = v.detach().cpu().numpy()
                labels[pos : pos + b] = y.numpy()
                pos += b
                bar.update(b)
                if store is not None and time.time() - last_flush > FLUSH_SECONDS:
                    store.flush(pos)
                    last_flush = time.time()
                if interrupt.requested:
                    bar.close()
                    raise _interrupted(store, pos, n)
        bar.close()
    finally:
        for m, mode in modes.items():
            m.training = mode
    meta = {
        **identity,
        "strategy": extractor.strategy,
        "outputs": _outputs(extractor.pieces),
        "pieces": [p.to_dict() for p in extractor.pieces],
        "done": n,
        "complete": True,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "lpntk": __version__,
        "description": _json_safe(description or {}),
    }
    if store is not None:
        store.flush(n, meta)
        return Features.load(out_dir)
    return Features(extractor.pieces, arrays, labels, indices, meta)


def _interrupted(store, done: int, n: int) -> Interrupted:
    """Save the finished samples (when there is a store) and say how to go on."""
    if store is None or store.arrays is None:
        return Interrupted(f"stopped after {done} of {n} samples; nothing was saved (no out_dir)")
    store.flush(done)
    return Interrupted(f"stopped after {done} of {n} samples, which are saved in {store.path}")


def _labels_hash(dataset) -> str | None:
    """Hash of the labels when the dataset exposes them (``.labels``, as ArrayDataset does)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _same_device(have: torch.device, want: torch.device) -> bool:
    """``want`` without an index ("cuda") matches the current device of that type."""
    if have.type != want.type:
        return False
    if want.index is None and want.type == "cuda":
        return have.index == torch.cuda.current_device()
    return want.index is None or have.index == want.index


def _first_of(values):
    try:
        return values[0]
    except (TypeError, IndexError, KeyError):
        return values


def _first_batch(extractor: Extractor, x, y):
    """``extractor.check`` on the first batch; a model that cannot take the data (shape, dtype)
    fails here, and says so."""
    try:
        return extractor.check(x, y)
    except (RuntimeError, TypeError, IndexError) as e:
        if "alloc" in str(e) or "out of memory" in str(e):
            raise  # too little memory for the batch, not a model that does not fit
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(
            f"the model failed on the first batch, inputs of shape {tuple(x.shape)} and dtype "
            f"{x.dtype} ({first}); check that the data fits the model"
        ) from e


def _inputs(x, device, dtype: str) -> torch.Tensor:
    """A batch on ``device``; floating-point inputs in ``dtype``, others (token ids) unchanged."""
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"inputs must be tensors or arrays of numbers; got {type(x).__name__}"
        ) from None
    return x.to(device, DTYPES[dtype]) if x.is_floating_point() else x.to(device)


def _json_safe(obj):
    """``obj`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, default=str))


def _outputs(pieces: list[Piece]) -> int:
    p = pieces[0]
    return p.shapes["F"][0] if p.form == "dense" else p.shapes["B"][0]


def _allocate(pieces: list[Piece], n: int, first: dict, store) -> dict:
    if store is not None:
        return store.allocate(pieces, first)
    return {
        k: np.empty((n, *v.shape[1:]), dtype=v.detach().cpu().numpy().dtype)
        for k, v in first.items()
    }


class _Store:
    """On disk: ``meta.json``, ``labels.npy``, ``indices.npy`` and one ``.npy`` per array."""

    def __init__(self, path: Path, identity: dict, indices: np.ndarray):
        self.path, self.identity, self.indices = path, identity, indices
        path.mkdir(parents=True, exist_ok=True)
        meta_path = path / "meta.json"
        self.done, self.complete = 0, False
        self.arrays = self.pieces = self.labels = None
        if not meta_path.exists():
            return
        meta = _read_meta(path)
        differ = [k for k in identity if meta.get(k) != identity[k]]
        if differ:
            raise ConfigError(
                f"{path} holds features of another model, dataset or setting (its "
                f"{', '.join(differ)} differ); choose another output folder or delete it",
                param="out_dir",
            )
        self.complete = bool(meta.get("complete"))
        if not self.complete and meta.get("pieces"):  # resume; a finished store is only read
            self.pieces, self.arrays, self.labels = _open_arrays(path, meta, "r+")
            self.done = int(meta.get("done", 0))

    def allocate(self, pieces: list[Piece], first: dict) -> dict:
        """Create the arrays of a new store from the first batch's shapes and dtypes."""
        n = self.identity["n"]
        self.pieces = pieces
        self.arrays = {
            k: np.lib.format.open_memmap(
                self.path / f"{k}.npy", "w+", v.detach().cpu().numpy().dtype, (n, *v.shape[1:])
            )
            for k, v in first.items()
        }
        self.labels = np.lib.format.open_memmap(self.path / "labels.npy", "w+", np.int64, (n,))
        with atomic_path(self.path / "indices.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.indices)
        return self.arrays

    def flush(self, done: int, meta: dict | None = None) -> None:
        for a in self.arrays.values():
            a.flush()
        self.labels.flush()
        meta = meta or {
            **self.identity,
            "pieces": [p.to_dict() for p in self.pieces],
            "done": done,
            "complete": False,
        }
        write_json(self.path / "meta.json", meta)
