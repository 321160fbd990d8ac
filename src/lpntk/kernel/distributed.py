"""The Dask plumbing of the kernel's work on a cluster (``client=`` in the API,
``--scheduler`` / ``--workers`` on the command line): connecting, sharing objects with the
workers, a per-worker cache, and waiting for tasks with Ctrl-C. Nothing of the engine is
imported here; the tasks live beside the code they run (:mod:`lpntk.kernel.features`: feature
extraction in ranges of whole chunks, and how a worker opens a feature store;
:mod:`lpntk.kernel.ops`: one task per block pair of the row reductions, merged exactly).

Workers open feature stores by their location (a folder they share with the client, or a URL),
so the rows never pass through the client; in-memory features are sent to each worker once.
Without a client, nothing here is used.
"""

from __future__ import annotations

import os
import pickle
import re
import time
import uuid
from collections import OrderedDict

from .._errors import ConfigError, DataError, Interrupted, MissingFileError
from .._interrupt import deferred_interrupt
from .._io import read_json

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
