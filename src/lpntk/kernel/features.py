"""Computing, storing and loading the per-sample features of a kernel.

With ``out_dir`` the features go to a Zarr store (a local folder, or a URL such as
``s3://bucket/features`` where fsspec reaches it): one array per feature piece, chunked by rows so
that a worker reads and writes whole chunks, with the identity (model and data hashes, kind,
strategy, dtype, pieces) in the group's attributes. Samples are computed in ranges of whole
chunks, on this process or as tasks on a Dask cluster (``client=``); each finished range is
marked in the store, so an interrupted run started again with the same model, data and settings
computes only the ranges that are missing. Without ``out_dir`` the features stay in memory.
Stores of the first format (``.npy`` files beside ``meta.json``) are still read.
"""

from __future__ import annotations

import copy
import datetime as _dt
import errno
import hashlib
import json
import uuid
from dataclasses import dataclass
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
from .._io import naming, output_folder, read_json
from .._progress import progress as progress_bar
from .._version import __version__
from . import distributed as dist
from .extract import Extractor, Piece, trainable
from .kinds import Kind, get_kind

FORMAT = 2  # 1: .npy files and meta.json; 2: a Zarr group
CHUNK_ROWS = 1024  # rows per chunk (and per task), at most
CHUNK_BYTES = 64 << 20  # ... and at most this many bytes in one chunk of one array
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Features:
    """Per-sample features of one kernel kind for ``n`` samples: pieces whose kernels add up.

    ``arrays["<i>.F"]`` is ``(n, m, p)`` for a dense piece ``i``; ``arrays["<i>.A"]`` ``(n, T, pa)``
    and ``arrays["<i>.B"]`` ``(n, m, T, pb)`` for a factored one. ``m`` is 1 for scalar kinds
    (lpntk, pntk, loss) and K for entk. ``labels`` and ``indices`` (original dataset order) are
    ``(n,)``. Arrays are NumPy arrays, Zarr arrays or read-only memory maps (the first format).
    ``source`` is the store's location when loaded from one (workers open it there).
    """

    def __init__(self, pieces: list[Piece], arrays: dict, labels, indices, meta: dict, source=None):
        self.pieces, self.arrays, self.meta = pieces, arrays, meta
        self.labels, self.indices = np.asarray(labels), np.asarray(indices)
        self.source = None if source is None else str(source)  # the store it was loaded from

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
        return {k: torch.from_numpy(_take(a, rows)).to(device) for k, a in self.arrays.items()}

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
        """Open a finished feature store (Zarr, or the first format's memory-mapped ``.npy``).

        A missing, unfinished, truncated or corrupt store raises an error that says so.
        """
        if not _is_url(path) and (Path(path) / "meta.json").exists():
            return _load_format1(Path(path))
        store = _Store.open(path)
        if store is None:
            raise MissingFileError(
                f"{path} holds no feature store; create one with lpntk kernel or "
                "compute_features(..., out_dir=...)"
            )
        meta = store.meta
        if not meta.get("complete"):
            raise DataError(
                f"the feature store in {path} is unfinished ({store.done_samples()} of "
                f"{meta['n']} samples); run the same computation again to resume it"
            )
        pieces, arrays = store.arrays()
        labels, indices = _take(arrays.pop("labels"), slice(None)), arrays.pop("indices")[:]
        return cls(pieces, arrays, labels, indices, meta, source=path)


def _take(a, rows) -> np.ndarray:
    """``a[rows]`` as a new NumPy array; ``rows`` a slice or positions (any order, repeats)."""
    if not hasattr(a, "oindex"):
        return np.array(a[rows], copy=True)
    try:
        if isinstance(rows, slice):
            return a[rows]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return np.empty((0, *a.shape[1:]), dtype=a.dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        if len(unique) * 4 >= hi - lo:  # dense: one slice read costs less than a selection
            out = a[lo:hi][unique - lo]
        else:
            out = a.oindex[unique]
    except (ValueError, OSError) as e:  # a chunk file cut short or damaged
        raise DataError(f"{a.store_path} is truncated or corrupt ({e}); {_BROKEN}") from None
    return out if len(unique) == len(rows) and np.array_equal(unique, rows) else out[inverse]


def _is_url(path) -> bool:
    return "://" in str(path)


def _load_format1(path: Path) -> Features:
    """A finished store of the first format: ``.npy`` files memory-mapped, ``meta.json``."""
    meta = _read_meta(path)
    if not meta.get("complete"):
        raise DataError(
            f"the feature store in {path} is unfinished ({meta.get('done', 0)} of "
            f"{meta['n']} samples) and of an older format that lpntk no longer extends; "
            "delete it and run the computation again"
        )
    pieces, arrays, labels = _open_arrays(path, meta, "r")
    indices = _load_array(path, "indices", meta)
    return Features(pieces, arrays, np.asarray(labels), indices, meta, source=path)


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


def _dataset_of(data) -> tuple[Dataset, int | None, object]:
    """The map-style dataset behind ``data``, and the loader's batch size and collate function
    if a DataLoader (else None and lpntk's own)."""
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
        return data.dataset, data.batch_size, data.collate_fn
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ConfigError(
            f"expected a map-style Dataset or a DataLoader; got {type(data).__name__}"
        )
    return data, None, _collate


CHECK_ROWS = 16  # samples of the first-batch check (its true gradient costs a backward pass)


def _range_batches(dataset, start: int, end: int, batch_size: int, collate, fields):
    """Batches ``(x, y)`` of the samples ``start..end``, in order. A dataset with a method
    ``lpntk_batch(start, end)`` (lpntk's ArrayDataset) gives each batch at once, the same
    tensors its items would collate to; any other is collated item by item."""
    whole = getattr(dataset, "lpntk_batch", None)
    if whole is not None and collate is _collate and fields is None:
        for s in range(start, end, batch_size):
            yield whole(s, min(s + batch_size, end))
        return
    subset = Subset(dataset, range(start, end))
    for batch in DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate):
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
    chunk_rows: int | None = None,
    client=None,
) -> Features:
    """Per-sample features of ``model`` (logits ``(B, K)``, evaluated in eval mode) on ``data``.

    ``data`` is a map-style Dataset or an in-order DataLoader yielding ``(x, y)``; for items of
    another form, ``fields=(input, label)`` gives the keys (dict items) or positions (tuples) of
    the input and the label, e.g. ``fields=("image", "label")``. ``kind``: lpntk,
    pntk, entk or loss. ``strategy``: auto (factored, or projected when ``proj_dim`` is given),
    factored, materialised or projected. ``dtype``: "float32" or "float64". ``description`` is
    stored in the metadata (dataset name, checkpoint path, ...).

    ``out_dir``: the Zarr store to write (resumed when unfinished, read when finished).
    ``chunk_rows``: rows per chunk and per task (default: up to 1,024, at most 64 MiB a chunk).
    ``client``: a ``dask.distributed.Client``; its workers compute ranges of samples as tasks
    (retried when a worker dies) and write them into ``out_dir``, which they must reach. The
    results are the same as on this process.

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
    dataset, loader_bs, collate = _dataset_of(data)
    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty; expected at least one sample")
    batch_size = loader_bs or batch_size
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"expected at least 1; got {batch_size}", param="batch_size")
    if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ConfigError(f"expected at least 1; got {chunk_rows!r}", param="chunk_rows")
    if fields is not None and (not isinstance(fields, (tuple, list)) or len(fields) != 2):
        raise ConfigError(f"expected (input, label); got {fields!r}", param="fields")
    if out_dir is not None and not str(out_dir).strip():
        raise ConfigError("expected a folder, got an empty path", param="out_dir")
    if client is not None and out_dir is None:
        raise ConfigError(
            "workers write their rows into a store; give out_dir (a folder they can reach)",
            param="client",
            mentions=["out_dir"],
        )
    requested_device = device
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
        store = None
        if out_dir is not None:
            location = out_dir if _is_url(out_dir) else output_folder(out_dir)
            store = _Store.create(location, identity)
            if store.complete:
                return Features.load(location)
        # a first small batch validates the model's output and the factored decomposition,
        # and gives the pieces' shapes
        first = min(n, batch_size, CHECK_ROWS)
        x, y = next(_range_batches(dataset, 0, first, batch_size, collate, fields))
        y = _as_tensor_labels(y).to(device)
        out = _first_batch(extractor, _inputs(x, device, dtype), y)
        if out is None:
            out = extractor(_inputs(x, device, dtype), y)
        shapes = {
            k: (tuple(v.shape[1:]), str(v.detach().cpu().numpy().dtype)) for k, v in out.items()
        }
        chunk = min(n, chunk_rows or _chunk_rows(shapes))
        if store is not None:
            store.allocate(extractor.pieces, shapes, chunk, indices)
            sink = store
        else:
            sink = _Memory(n, shapes, chunk)
        chunk = sink.chunk  # a resumed store keeps its own
        todo = sink.todo()
        bar = progress_bar(
            n, f"{kind.name} features", initial=n - sum(e - s for s, e in todo), enabled=progress
        )
        job = _Job(
            kind.name,
            extractor.strategy,
            proj_dim,
            projection,
            seed,
            batch_size,
            collate,
            fields,
            dtype,
        )
        if client is None:
            _extract_here(job, extractor, dataset, todo, sink, device, bar)
        else:
            extract_ranges(client, job, work, dataset, store, todo, requested_device, bar)
        bar.close()
    finally:
        for m, mode in modes.items():
            m.training = mode
    meta = {
        **identity,
        "strategy": extractor.strategy,
        "outputs": _outputs(extractor.pieces),
        "pieces": [p.to_dict() for p in extractor.pieces],
        "chunk_rows": chunk,
        "done": n,
        "complete": True,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "lpntk": __version__,
        "description": _json_safe(description or {}),
    }
    if store is not None:
        store.finish(meta)
        return Features.load(store.location)
    return Features(extractor.pieces, sink.arrays, sink.labels, indices, meta)


@dataclass(frozen=True)
class _Job:
    """What a range of samples needs besides the model and the data (sent to workers)."""

    kind: str
    strategy: str
    proj_dim: int | None
    projection: str
    seed: int
    batch_size: int
    collate: object
    fields: tuple | None
    dtype: str

    def extractor(self, model) -> Extractor:
        return Extractor(
            model, get_kind(self.kind), self.strategy, self.proj_dim, self.projection, self.seed
        )


def extract_range(
    job: _Job, extractor: Extractor, dataset, start: int, end: int, device, interrupt=None
) -> tuple[dict, np.ndarray] | None:
    """The feature arrays and labels of samples ``start..end``; None when ``interrupt`` was
    requested before the range finished."""
    arrays, labels, pos = {}, np.empty(end - start, dtype=np.int64), 0
    for x, y in _range_batches(dataset, start, end, job.batch_size, job.collate, job.fields):
        y = _as_tensor_labels(y)
        out = extractor(_inputs(x, device, job.dtype), y.to(device))
        b = len(y)
        for k, v in out.items():
            v = v.detach().cpu().numpy()
            if k not in arrays:
                arrays[k] = np.empty((end - start, *v.shape[1:]), dtype=v.dtype)
            arrays[k][pos : pos + b] = v
        labels[pos : pos + b] = y.numpy()
        pos += b
        if interrupt is not None and interrupt.requested:
            return None
    return arrays, labels


def _extract_here(job, extractor, dataset, todo, sink, device, bar) -> None:
    """The missing ranges on this process, each written (and marked done) when finished; a
    range is written by a second thread while the next one is computed."""
    from concurrent.futures import ThreadPoolExecutor

    writing = None
    with deferred_interrupt() as interrupt, ThreadPoolExecutor(1) as writer:
        for start, end in todo:
            got = extract_range(job, extractor, dataset, start, end, device, interrupt)
            if writing is not None:
                writing.result()  # at most one range waits to be written
            if got is None:
                bar.close()
                raise _interrupted(sink, dataset)
            writing = writer.submit(sink.write, start, end, *got)
            bar.update(end - start)
        if writing is not None:
            writing.result()


def _chunk_rows(shapes: dict) -> int:
    """Rows per chunk: up to CHUNK_ROWS, with no array's chunk over CHUNK_BYTES."""
    widest = max(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes.values())
    return int(max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(widest, 1))))


class _Memory:
    """Features kept in memory (no ``out_dir``)."""

    location = None

    def __init__(self, n: int, shapes: dict, chunk: int):
        self.n, self.chunk = n, chunk
        self.arrays = {k: np.empty((n, *s), dtype=d) for k, (s, d) in shapes.items()}
        self.labels = np.empty(n, dtype=np.int64)

    def todo(self) -> list[tuple[int, int]]:
        return _ranges(self.n, self.chunk)

    def write(self, start: int, end: int, arrays: dict, labels: np.ndarray) -> None:
        for k, v in arrays.items():
            self.arrays[k][start:end] = v
        self.labels[start:end] = labels


def _interrupted(sink, dataset) -> Interrupted:
    """Say what was kept and how to go on."""
    n = len(dataset)
    if sink.location is None:
        return Interrupted(
            f"stopped before all {n} samples were done; nothing was saved (no out_dir)"
        )
    return Interrupted(
        f"stopped with {sink.done_samples()} of {n} samples done, which are saved in "
        f"{sink.location}"
    )


def _ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


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


class _Store:
    """A Zarr group: the metadata in its attribute ``lpntk``; arrays ``labels``, ``indices``,
    one per feature piece (``<i>.F``, or ``<i>.A`` and ``<i>.B``), chunked by ``chunk_rows``
    rows, and ``done``, one flag per range of ``chunk_rows`` samples, set once the range's rows
    are written (workers write whole chunks, so they never write the same chunk)."""

    def __init__(self, location, group):
        self.location, self.group = location, group
        self.meta = dict(group.attrs.get("lpntk") or {})
        self.complete = bool(self.meta.get("complete"))
        self.chunk = self.meta.get("chunk_rows")
        self._opened: dict = {}

    @classmethod
    def open(cls, location, mode: str = "r") -> _Store | None:
        """The store at ``location``, or None when there is none."""
        import zarr

        try:
            group = zarr.open_group(str(location), mode=mode)
        except (
            FileNotFoundError,
            zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError,
        ):
            return None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(
                f"the feature store's metadata in {location} (zarr.json) is unreadable or "
                f"corrupt ({e}); {_BROKEN}"
            ) from None
        store = cls(location, group)
        if mode == "r" and not isinstance(store.meta.get("n"), int):
            return None
        return store

    @classmethod
    def create(cls, location, identity: dict) -> _Store:
        """Open the store at ``location`` for ``identity``, or start a new one; refuse one of
        another model, dataset or setting."""
        if not _is_url(location) and (Path(location) / "meta.json").exists():
            meta = _read_meta(Path(location))
            _check_identity(location, meta, identity)
            if not meta.get("complete"):
                raise DataError(
                    f"{location} holds an unfinished feature store of an older format; delete "
                    "it and run the computation again"
                )
            return _Finished(location)
        local = None if _is_url(location) else Path(location)
        if local is not None and local.is_dir() and not (local / "zarr.json").exists():
            if any(local.iterdir()):  # never write into (or over) a folder of other files
                raise ConfigError(
                    f"{local} holds other files and no feature store; expected a new or empty "
                    "folder, or a feature store to reuse",
                    param="out_dir",
                )
        with naming(location):
            store = cls.open(location, mode="a")
        if store is None:  # a folder that cannot be made (under /proc, say)
            raise OSError(errno.ENOENT, "cannot create a feature store there", str(location))
        group = store.group
        if not store.meta:
            if any(True for _ in group.keys()):
                raise ConfigError(
                    f"{location} holds a Zarr group that is not an lpntk feature store; "
                    "choose another output folder",
                    param="out_dir",
                )
            with naming(location):
                group.attrs["lpntk"] = {**identity, "complete": False}
            return cls(location, group)
        _check_identity(location, store.meta, identity)
        return store

    def allocate(self, pieces: list[Piece], shapes: dict, chunk: int, indices) -> None:
        """Create the arrays of a new store (a resumed one keeps its own, when they match)."""
        if self.meta.get("pieces") is not None:
            if self.meta["pieces"] != [p.to_dict() for p in pieces]:
                raise DataError(
                    f"the unfinished store in {self.location} has other feature shapes; "
                    "delete it to start again"
                )
            self.chunk = int(self.meta["chunk_rows"])
            return
        n, g = self.meta["n"], self.group
        self.chunk = chunk
        with naming(self.location):
            for k, (shape, dtype) in shapes.items():
                _array(g, k, (n, *shape), dtype, chunk)
            _array(g, "labels", (n,), "int64", chunk)
            _array(g, "indices", (n,), "int64", max(chunk, 1 << 16))[:] = indices
            _array(g, "done", (len(_ranges(n, chunk)),), "bool", 1)
            self.meta = {**self.meta, "pieces": [p.to_dict() for p in pieces], "chunk_rows": chunk}
            g.attrs["lpntk"] = self.meta

    def arrays(self) -> tuple[list[Piece], dict]:
        """The pieces and the arrays of a finished store (with ``labels`` and ``indices``),
        checked against the metadata; a clear DataError for any part missing or damaged."""
        meta, where = self.meta, self.location
        try:
            pieces = [Piece.from_dict(p) for p in meta["pieces"]]
        except (KeyError, TypeError, AttributeError, ValueError):
            pieces = []
        if not pieces:
            raise DataError(f"the feature store in {where} describes no feature pieces; {_BROKEN}")
        shapes = {
            f"{i}.{k}": (meta["n"], *s) for i, p in enumerate(pieces) for k, s in p.shapes.items()
        }
        shapes.update(labels=(meta["n"],), indices=(meta["n"],))
        arrays = {}
        for name, shape in shapes.items():
            if name not in self.group:
                raise DataError(f"the feature store in {where} lacks the array {name}; {_BROKEN}")
            a = self.group[name]
            if a.shape != shape:
                raise DataError(f"{where}/{name} has shape {a.shape}, expected {shape}; {_BROKEN}")
            if a.nchunks_initialized < a.nchunks:
                missing = a.nchunks - a.nchunks_initialized
                raise DataError(
                    f"{where}/{name} lacks {missing} of its {a.nchunks} chunks; {_BROKEN}"
                )
            arrays[name] = a
        return pieces, arrays

    def todo(self) -> list[tuple[int, int]]:
        """The ranges not yet written."""
        done = self.group["done"][:]
        return [r for r, d in zip(_ranges(self.meta["n"], self.chunk), done, strict=True) if not d]

    def done_samples(self) -> int:
        if "done" not in self.group:
            return 0
        done = self.group["done"][:]
        return sum(
            e - s for (s, e), d in zip(_ranges(self.meta["n"], self.chunk), done, strict=True) if d
        )

    def write(self, start: int, end: int, arrays: dict, labels: np.ndarray) -> None:
        """Rows ``start..end`` (a whole range), then their done flag."""
        with naming(self.location):  # a full disk names the store
            for k, v in arrays.items():
                self._array(k)[start:end] = v
            self._array("labels")[start:end] = labels
            self._array("done")[start // self.chunk] = True

    def _array(self, name: str):
        """The array ``name``, opened once (each opening reads its metadata)."""
        if name not in self._opened:
            self._opened[name] = self.group[name]
        return self._opened[name]

    def finish(self, meta: dict) -> None:
        with naming(self.location):
            self.group.attrs["lpntk"] = meta


class _Finished:
    """A finished store of the first format, found where a computation would write."""

    complete = True

    def __init__(self, location):
        self.location = location


def _array(group, name: str, shape: tuple, dtype: str, chunk: int):
    """A new uncompressed array chunked by rows (features compress little; reads stay fast);
    every chunk is stored, zeros too, so that a missing one is seen."""
    return group.create_array(
        name,
        shape=shape,
        chunks=(max(1, min(chunk, shape[0])), *shape[1:]),
        dtype=dtype,
        compressors=None,
        fill_value=0,
        overwrite=True,
        config={"write_empty_chunks": True},
    )


def _check_identity(location, meta: dict, identity: dict) -> None:
    differ = [k for k in identity if k != "format" and meta.get(k) != identity[k]]
    if differ:
        raise ConfigError(
            f"{location} holds features of another model, dataset or setting (its "
            f"{', '.join(differ)} differ); choose another output folder or delete it",
            param="out_dir",
        )


# -- on a Dask cluster (lpntk.kernel.distributed) -------------------------------------------------
def extract_ranges(client, job, model, dataset, store, todo, device, bar) -> None:
    """The ranges ``todo`` as tasks, each written into ``store`` by its worker."""
    model_f = dist.share(client, copy.deepcopy(model).cpu())  # workers move it to their device
    data_f = dist.share(client, dataset)
    location = str(store.location)
    run = uuid.uuid4().hex[:12]  # not id(): a freed object's id returns, and so would its keys
    futures = {
        client.submit(
            _extract_task,
            job,
            model_f,
            data_f,
            location,
            start,
            end,
            str(device),
            key=f"lpntk-features-{start}-{end}-{run}",
            retries=dist.RETRIES,
            pure=False,
        ): (start, end)
        for start, end in todo
    }
    try:
        dist.run_tasks(client, futures, lambda r, _: bar.update(r[1] - r[0]), "feature extraction")
    except Interrupted:
        raise Interrupted(
            f"stopped with {store.done_samples()} of {store.meta['n']} samples done, which are "
            f"saved in {location}"
        ) from None


def _extract_task(job, model, dataset, location, start: int, end: int, device: str):
    dev = resolve_device(device)

    def make():
        work = dist.unshare(model).to(dev, DTYPES[job.dtype]).eval()
        return job.extractor(work)

    extractor = dist.cached(("extractor", model[0], job), make)
    arrays, labels = extract_range(job, extractor, dist.unshare(dataset), start, end, dev)
    store = dist.cached(("store", location), lambda: _Store.open(location, "r+"))
    store.write(start, end, arrays, labels)
    return start, end


def reference(client, X: Features):
    """What a task needs to open ``X``: its store's location, or X itself, shared."""
    if X.source is not None:
        return X.source
    return dist.share(client, X)


def open_features(ref) -> Features:
    """The features of :func:`reference` on a worker (a store is opened once per process)."""
    if isinstance(ref, tuple):
        return dist.unshare(ref)
    return dist.cached(("features", ref), lambda: Features.load(ref))
