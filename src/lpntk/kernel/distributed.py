"""The kernel's work as tasks on a Dask cluster (``client=`` in the API, ``--scheduler`` /
``--workers`` on the command line).

Workers open feature stores by their location (a folder they share with the client, or a URL),
so the rows never pass through the client; in-memory features are sent to each worker once.
Feature extraction runs ranges of whole chunks (retried when a worker dies; a range is marked
done in the store once written). Row reductions run one task per block pair of the single
process's block grid, with the same arithmetic, and merge the partial results exactly: maxima
and top-k by value, ties to the smaller position, counts by addition. Without a client,
nothing here is used.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import re
import time
import uuid
from collections import OrderedDict

import torch

from .._device import resolve_device
from .._errors import ConfigError, DataError, Interrupted, MissingFileError
from .._interrupt import deferred_interrupt
from .._io import read_json
from .features import DTYPES, Features, _Store, extract_range

RETRIES = 3  # a task whose worker raised is tried this many more times (a lost worker is not a try)
_CACHE: OrderedDict = OrderedDict()  # per worker process: what its tasks opened, newest last
_CACHE_SIZE = 64  # the large entries (sorted rows, shards' stores) are few


def connect(scheduler: str | None = None, workers: int | None = None, threads: int = 1):
    """A ``dask.distributed.Client``: to the scheduler at ``scheduler`` (``tcp://host:8786``, or
    a scheduler file), or to a new LocalCluster of ``workers`` processes with ``threads`` threads
    each; None when neither is given (the single-process path)."""
    if scheduler is None and workers is None:
        return None
    if scheduler is not None and workers is not None:
        raise ConfigError(
            "give a scheduler to join or a number of local workers, not both",
            param="scheduler",
            mentions=["workers"],
        )
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError as e:  # a dependency of lpntk, so a broken installation
        raise ConfigError(f"needs dask[distributed] ({e}): pip install 'dask[distributed]'") from e
    if workers is not None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"expected at least 1 worker; got {workers!r}", param="workers")
        # Dask sets MALLOC_TRIM_THRESHOLD_ in its workers, which turns off glibc's adaptive
        # mmap threshold: each large temporary is then mapped afresh, and the kernel's blocks
        # ran 1.6x slower (measured on LeNet-5 redundancy); its workers are started without it
        unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        with dask.config.set(unset):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=":0",  # any free port
            )
        return Client(cluster)
    scheduler = str(scheduler)
    if "://" not in scheduler and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", scheduler):
        if not os.path.isfile(scheduler):  # not an address: the file a scheduler wrote
            what = "is a folder" if os.path.isdir(scheduler) else "does not exist"
            raise MissingFileError(
                f"scheduler file {scheduler} {what}; expected the file a running "
                "dask scheduler wrote (dask scheduler --scheduler-file FILE)",
                param="scheduler",
            )
        written = "expected the file a running dask scheduler wrote"
        info = read_json(scheduler, "scheduler file", written)
        if not isinstance(info, dict) or not isinstance(info.get("address"), str):
            raise DataError(f"scheduler file {scheduler} holds no scheduler address; {written}")
        try:
            return Client(info["address"], timeout="30s")
        except (OSError, ValueError) as e:  # a stale file: that scheduler has stopped
            raise ConfigError(
                f"cannot reach the Dask scheduler of {scheduler} at {info['address']} ({e}); "
                f"{written}, still running",
                param="scheduler",
            ) from None
    try:
        return Client(scheduler, timeout="30s")
    except (OSError, ValueError) as e:  # nothing there, or no valid address
        raise ConfigError(
            f"cannot reach a Dask scheduler at {scheduler} ({e}); expected an address such as "
            "tcp://host:8786 of a running dask scheduler",
            param="scheduler",
        ) from None


def close(client) -> None:
    """Close ``client`` and, when it started one, its LocalCluster."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def cached(key, make):
    """``make()`` once per worker process for ``key`` (the few newest are kept)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def forget(kind: str) -> None:
    """Drop this worker process's cached objects of ``kind`` (run on every worker)."""
    for key in [k for k in _CACHE if k[0] == kind]:
        del _CACHE[key]


def share(client, obj) -> tuple:
    """``obj`` for tasks to :func:`unshare`: pickled once, held as the result of a task, so a
    worker that dies takes no copy with it that cannot be made again (scattered data could
    not be)."""
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    name = f"lpntk-shared-{type(obj).__name__}-{uuid.uuid4().hex[:12]}"
    return name, client.submit(_bytes, blob, key=name, pure=False)


def _bytes(blob: bytes) -> bytes:
    return blob


def unshare(shared):
    """The object of :func:`share`, unpickled once per worker process."""
    name, blob = shared
    return cached(("shared", name), lambda: pickle.loads(blob))


def reference(client, X: Features):
    """What a task needs to open ``X``: its store's location, or X itself, shared."""
    if X.source is not None:
        return X.source
    return share(client, X)


def open_features(ref) -> Features:
    """The features of :func:`reference` on a worker (a store is opened once per process)."""
    if isinstance(ref, tuple):
        return unshare(ref)
    return cached(("features", ref), lambda: Features.load(ref))


def run_tasks(client, futures: dict, on_result, what: str) -> None:
    """Wait for ``futures`` (future -> label) and pass each result to ``on_result`` as it
    comes; Ctrl-C cancels the rest and raises Interrupted."""
    from dask.distributed import as_completed

    with deferred_interrupt() as interrupt:
        done = as_completed(list(futures), with_results=False)
        pending = set(futures)
        while pending:
            batch = done.next_batch(block=False)
            if not batch:
                if interrupt.requested:
                    client.cancel(list(pending))
                    raise Interrupted(f"stopped {what} with {len(pending)} tasks left")
                time.sleep(0.05)
                continue
            for fut in batch:
                pending.discard(fut)
                on_result(futures[fut], fut.result())


# -- feature extraction ---------------------------------------------------------------------------
def extract_ranges(client, job, model, dataset, store, todo, device, bar) -> None:
    """The ranges ``todo`` as tasks, each written into ``store`` by its worker."""
    model_f = share(client, copy.deepcopy(model).cpu())  # workers move it to their device
    data_f = share(client, dataset)
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
            retries=RETRIES,
            pure=False,
        ): (start, end)
        for start, end in todo
    }
    try:
        run_tasks(client, futures, lambda r, _: bar.update(r[1] - r[0]), "feature extraction")
    except Interrupted:
        raise Interrupted(
            f"stopped with {store.done_samples()} of {store.meta['n']} samples done, which are "
            f"saved in {location}"
        ) from None


def _extract_task(job, model, dataset, location, start: int, end: int, device: str):
    dev = resolve_device(device)

    def make():
        work = unshare(model).to(dev, DTYPES[job.dtype]).eval()
        return job.extractor(work)

    extractor = cached(("extractor", model[0], job), make)
    arrays, labels = extract_range(job, extractor, unshare(dataset), start, end, dev)
    store = cached(("store", location), lambda: _Store.open(location, "r+"))
    store.write(start, end, arrays, labels)
    return start, end


# -- row reductions -------------------------------------------------------------------------------
def reduce_blocks(client, X, Y, templates, symmetric, exclude_self, b, device, bar) -> list:
    """Partial reductions of every block pair of the grid of ``b`` rows (as in
    :func:`~lpntk.kernel.reduce_rows`), merged into fresh copies of ``templates``."""
    from .ops import RowReducer

    for t in templates:
        if type(t).state is RowReducer.state or type(t).merge is RowReducer.merge:
            raise ConfigError(
                f"{type(t).__name__} has no state() and merge(), which a reduction on a cluster "
                "needs to send a task's part back and add it up; define them, or run without "
                "a client"
            )
    reducers = [copy.copy(t) for t in templates]
    for r in reducers:
        r.start(X.n, X.dtype)
    xr = reference(client, X)
    yr = xr if symmetric else reference(client, Y)
    tmpl = share(client, templates)
    dtype = str(X.dtype).split(".")[-1]
    futures, run = {}, uuid.uuid4().hex[:12]  # keys of this pass only (an id() is reused)
    for i0 in range(0, X.n, b):
        for j0 in range(i0 if symmetric else 0, Y.n, b):
            i1, j1 = min(i0 + b, X.n), min(j0 + b, Y.n)
            fut = client.submit(
                _block_task,
                xr,
                yr,
                tmpl,
                (i0, i1, j0, j1),
                symmetric,
                exclude_self,
                dtype,
                str(device),
                key=f"lpntk-block-{i0}-{j0}-{run}",
                retries=RETRIES,
                pure=False,
            )
            same = symmetric and j0 == i0
            futures[fut] = (i1 - i0) * (i1 - i0 + 1) // 2 if same else (i1 - i0) * (j1 - j0)

    def merge(pairs, parts):
        for lo, states in parts:
            for r, state in zip(reducers, states, strict=True):
                r.merge(lo, state)
        bar.update(pairs)

    run_tasks(client, futures, merge, "the kernel pass")
    return reducers


def _block_task(xr, yr, templates, box, symmetric, exclude_self, dtype, device):
    from .ops import _block, _shape

    X, Y = open_features(xr), open_features(yr)
    i0, i1, j0, j1 = box
    dev = resolve_device(device)
    rx = X.rows(slice(i0, i1), dev)
    ry = rx if symmetric and j0 == i0 else Y.rows(slice(j0, j1), dev)
    k = _shape(X, _block(X, rx, ry)).cpu()
    if symmetric and j0 == i0 and exclude_self:
        k.diagonal().fill_(math.nan)
    torch_dtype = getattr(torch, dtype)
    templates = unshare(templates)
    parts = []
    sides = [(i0, i1, k, j0)]
    if symmetric and j0 != i0:
        sides.append((j0, j1, k.T.contiguous(), i0))
    for lo, hi, block, c0 in sides:
        states = []
        for t in templates:
            r = copy.copy(t)
            r.start(X.n, torch_dtype, rows=(lo, hi))
            r.update(lo, block, c0)
            states.append(r.state())
        parts.append((lo, states))
    return parts
