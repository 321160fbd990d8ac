"""The kernel and its analyses on a Dask LocalCluster of 2 worker processes: the same results as
the single process (bit for bit where the arithmetic is the same), a worker killed mid-job, and
a client interrupted mid-job that resumes without computing finished ranges again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import Dataset

from lpntk import ConfigError
from lpntk.analysis import Witnesses, farthest_point_clusters, redundant_samples, relationships
from lpntk.kernel import (
    Features,
    Piece,
    RowCount,
    RowMax,
    RowTopK,
    compute_features,
    ops,
    reduce_rows,
)
from lpntk.kernel.distributed import close, connect

from .test_cli import DATA_DIR, needs_mnist
from .test_kernel_helpers import make_data, make_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    c = connect(workers=2)
    yield c
    close(c)


@pytest.fixture(autouse=True)
def one_thread():
    """The single process on one thread, as each worker: BLAS sums may depend on the thread
    count (seen on an Intel CPU), and these tests ask for identical bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Slow(Dataset):
    """``base`` served slowly (``delay`` s an item); items in ``forbidden`` raise: a test that
    they are not computed again."""

    def __init__(self, base, delay=0.0, forbidden=()):
        self.base, self.delay, self.forbidden = base, delay, set(forbidden)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i in self.forbidden:
            raise RuntimeError(f"sample {i} was computed again")
        time.sleep(self.delay)
        return self.base[i]


def features(model, data, out_dir=None, **kw):
    kw = {"dtype": "float64", "batch_size": 4, "progress": False, "chunk_rows": 8, **kw}
    return compute_features(model, data, out_dir=out_dir, **kw)


def assert_same_features(a: Features, b: Features, exact: bool = True):
    """Equal features; with ``exact`` False, to float64 rounding (a worker's single thread may
    take other convolution kernels than the test's two threads)."""
    assert a.pieces == b.pieces
    for key in a.arrays:
        x, y = a.rows(slice(None))[key], b.rows(slice(None))[key]
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.indices, b.indices)
    keep = {k: v for k, v in a.meta.items() if k != "created"}
    assert keep == {k: v for k, v in b.meta.items() if k != "created"}


def bounded_features(n=90, seed=0) -> Features:
    """Random features whose costly piece holds a small share of kappa(x, x), so that the
    per-piece bound plan is taken (on the workers too, where no test can patch it)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    base = torch.randn(3, 8, generator=g, dtype=torch.float64)
    mix = torch.randn(n, 3, generator=g, dtype=torch.float64).abs()
    cheap = (mix @ base + 0.3 * torch.randn(n, 8, generator=g, dtype=torch.float64)) * scale[
        :, None
    ]
    costly = 0.02 * torch.randn(n, 1, 300, generator=g, dtype=torch.float64)
    pieces = [Piece("costly", "dense", {"F": (1, 300)}), Piece("cheap", "dense", {"F": (1, 8)})]
    arrays = {"0.F": costly.numpy(), "1.F": cheap[:, None, :].numpy()}
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    X = Features(pieces, arrays, np.arange(n) % 3, np.arange(n)[::-1].copy(), meta)
    assert ops.bound_plan(X, ops.piece_norms(X, X.rows(slice(None)))) == [0]
    return X


@pytest.mark.parametrize(
    ("name", "kind", "extra", "exact"),
    [
        ("cnn", "lpntk", {}, True),
        ("cnn_generic", "entk", {}, False),  # generic convolutions: autograd's kernels
        ("mlp", "pntk", {"strategy": "projected", "proj_dim": 16}, True),
    ],
)
def test_features_on_workers_equal_the_single_process(client, tmp_path, name, kind, extra, exact):
    model, data = make_model(name), make_data(name, n=37)
    here = features(model, data, tmp_path / "here", kind=kind, **extra)
    there = features(model, data, tmp_path / "there", kind=kind, client=client, **extra)
    assert_same_features(here, there, exact)
    assert zarr.open_group(str(tmp_path / "there"), mode="r")["done"][:].all()


def test_workers_need_a_store(client):
    with pytest.raises(ConfigError, match="out_dir"):
        features(make_model("mlp"), make_data("mlp"), client=client)


@pytest.mark.parametrize("stored", [False, True])
def test_row_reductions_on_workers_are_identical(client, tmp_path, stored):
    model = make_model("cnn")
    X = features(model, make_data("cnn", n=70), tmp_path / "x" if stored else None)
    Y = features(model, make_data("cnn", n=23, seed=5), tmp_path / "y" if stored else None)
    thresholds = np.linspace(-1, 1, X.n)

    def reducers(other):
        both = [RowMax(), RowTopK(4), RowTopK(1, largest=False), RowCount(thresholds)]
        return both if other is not None else both + [Witnesses(X, True, True)]

    for other in (None, Y):
        for memory in (None, 1):  # one block, and the smallest blocks (16 rows): 15 tasks
            a = reduce_rows(X, reducers(other), other, memory=memory, progress=False)
            b = reduce_rows(X, reducers(other), other, memory=memory, progress=False, client=client)
            for ra, rb in zip(a, b, strict=True):
                for key, value in vars(ra).items():
                    if isinstance(value, torch.Tensor):
                        assert torch.equal(value, getattr(rb, key)), (type(ra).__name__, key)


def test_ties_go_to_the_smaller_position_in_any_merge_order(client):
    """Small integer features: every kernel entry is exact, so ties are exact in any block and
    any merge order; each path keeps the smaller position, as a sort by (value, position)."""
    rng = np.random.default_rng(0)
    F = rng.integers(-2, 3, size=(50, 1, 4)).astype(np.float64)
    F[25:] = F[:25]  # each sample twice: many ties
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    X = Features(
        [Piece("d", "dense", {"F": (1, 4)})], {"0.F": F}, np.zeros(50, int), np.arange(50), meta
    )
    K = F[:, 0] @ F[:, 0].T
    np.fill_diagonal(K, -np.inf)
    want = np.stack([np.lexsort((np.arange(50), -row))[:3] for row in K])
    for memory in (None, 1):
        here = reduce_rows(X, [RowMax(), RowTopK(3)], memory=memory, progress=False)
        there = reduce_rows(X, [RowMax(), RowTopK(3)], memory=memory, progress=False, client=client)
        for r in (here, there):
            np.testing.assert_array_equal(r[0].argmax_position.numpy(), want[:, 0])
            np.testing.assert_array_equal(r[1].positions.numpy(), want)


@pytest.mark.parametrize("bounded", [False, True])
def test_redundancy_and_relationships_on_workers_are_identical(client, tmp_path, bounded):
    if bounded:
        X = bounded_features()
    else:
        X = features(make_model("cnn"), make_data("cnn", n=80), tmp_path / "f")
    for variant in ({}, {"one_sided": True}, {"within_class": True}):
        a = redundant_samples(X, memory=1, progress=False, **variant)
        b = redundant_samples(X, memory=1, progress=False, client=client, **variant)
        assert a.fraction > 0
        np.testing.assert_array_equal(a.witness, b.witness)
        np.testing.assert_array_equal(a.witness_kappa, b.witness_kappa)
        np.testing.assert_array_equal(a.self_kappa, b.self_kappa)
    ra = relationships(X, 0.6, 0.2, memory=1, progress=False)
    rb = relationships(X, 0.6, 0.2, memory=1, progress=False, client=client)
    for kind in ra.counts:
        np.testing.assert_array_equal(ra.counts[kind], rb.counts[kind])
        np.testing.assert_array_equal(ra.classes[kind], rb.classes[kind])


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("measure", ["lpntk", "metric", "cosine"])
def test_clusters_on_workers_are_identical(client, tmp_path, measure, bounded):
    if bounded:
        X = bounded_features()
    else:
        X = features(make_model("cnn"), make_data("cnn", n=61), tmp_path / "f")
    for per_class in (False, True):
        a = farthest_point_clusters(X, 12, measure, per_class, progress=False)
        b = farthest_point_clusters(X, 12, measure, per_class, progress=False, client=client)
        np.testing.assert_array_equal(a.cluster, b.cluster)
        np.testing.assert_array_equal(a.centroids, b.centroids)
        np.testing.assert_allclose(a.similarity, b.similarity, rtol=1e-13, atol=0)


def kill_a_worker_when(client, ready, killed: list, timeout=60):
    """SIGKILL one worker process (its nanny starts another) once ``ready()`` holds; append to
    ``killed`` whether it held then."""
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline:
        time.sleep(0.01)
    pids = client.run(os.getpid)
    killed.append(ready())
    os.kill(next(iter(pids.values())), signal.SIGKILL)


def done_ranges(path) -> np.ndarray:
    try:
        return zarr.open_group(str(path), mode="r")["done"][:]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return np.zeros(0, dtype=bool)


def test_a_killed_worker_changes_nothing(tmp_path):
    model, data = make_model("cnn"), make_data("cnn", n=96)
    want = features(model, data)
    with connect(workers=2) as c:
        out = tmp_path / "f"
        killed = []
        killer = threading.Thread(
            target=kill_a_worker_when, args=(c, lambda: 0 < done_ranges(out).sum() < 6, killed)
        )
        killer.start()
        got = features(model, Slow(data, delay=0.01), out, client=c)
        killer.join()
        assert killed == [True]  # mid-job
        assert_same_features(want, got)
        # and in the middle of the clustering, whose shards are started again
        X = bounded_features(400)
        here = farthest_point_clusters(X, 200, progress=False)
        count = {"steps": 0}
        bar = ops.progress_bar

        def counting(*args, **kwargs):
            b = bar(*args, **kwargs)
            update = b.update

            def counted(k=1):
                count["steps"] += k
                return update(k)

            b.update = counted
            return b

        import lpntk.analysis.clustering as clustering

        clustering.progress_bar = counting
        try:
            killer = threading.Thread(
                target=kill_a_worker_when, args=(c, lambda: 50 < count["steps"] < 150, killed)
            )
            killer.start()
            there = farthest_point_clusters(X, 200, progress=False, client=c)
            killer.join()
        finally:
            clustering.progress_bar = bar
        assert killed == [True, True] and count["steps"] > 200  # some steps done twice
        np.testing.assert_array_equal(here.cluster, there.cluster)
        np.testing.assert_array_equal(here.centroids, there.centroids)
    close(c)


INTERRUPTED = """
import sys
sys.path.insert(0, {root!r})
from lpntk.kernel import compute_features
from lpntk.kernel.distributed import connect, close
from tests.test_distributed import Slow
from tests.test_kernel_helpers import make_data, make_model

client = connect(workers=2)
try:
    compute_features(make_model("cnn"), Slow(make_data("cnn", n=96), delay=0.02), "lpntk",
                     out_dir={out!r}, dtype="float64", batch_size=4, chunk_rows=8,
                     progress=False, client=client)
finally:
    close(client)
"""


def test_an_interrupted_client_resumes_without_computing_finished_ranges(tmp_path):
    out = tmp_path / "f"
    script = textwrap.dedent(INTERRUPTED.format(root=str(ROOT), out=str(out)))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while done_ranges(out).sum() < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0 and "Interrupted" in stderr, stderr
    assert "samples done, which are saved in" in stderr, stderr
    done = done_ranges(out)
    assert 3 <= done.sum() < len(done), done
    finished = [i for r in np.flatnonzero(done) for i in range(8 * r, 8 * r + 8)]
    # the first batch (samples 0-3) checks the model on the client; nothing else is redone
    forbidden = [i for i in finished if i >= 4]
    model, data = make_model("cnn"), make_data("cnn", n=96)
    with connect(workers=2) as c:
        got = features(model, Slow(data, forbidden=forbidden), out, client=c)
    close(c)
    assert_same_features(features(model, data), got)


@needs_mnist
def test_kernel_and_analyze_commands_on_local_workers(checkpoint, tmp_path):
    """``--workers 2``: the same files as the single process, the cross kernel included."""
    from lpntk.cli import main

    common = f"--checkpoint {checkpoint} --data-dir {DATA_DIR} --no-progress"
    kernel = f"kernel {common} --split test --limit 60 --against train --against-limit 90 "
    kernel += "--top-k 3 --dtype float64 --out"
    analyze = f"analyze {common} --limit 120 --clusters 12 --out"
    for command, files in (
        (kernel, ["per_sample.csv", "neighbours.csv", "cross_kernel.npy", "row_max.npy"]),
        (analyze, ["per_sample.csv", "clusters.json"]),
    ):
        name = command.split()[0]
        here, there = tmp_path / f"{name}-here", tmp_path / f"{name}-there"
        assert main([*command.split(), str(here)]) == 0
        assert main([*command.split(), str(there), "--workers", "2"]) == 0
        for f in files:
            assert (here / f).read_bytes() == (there / f).read_bytes(), (name, f)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--workers", "0"], ["argument --workers", "at least 1 worker"]),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], ["--scheduler", "not both"]),
    ],
)
def test_cluster_option_errors(tmp_path, capsys, extra, words):
    from lpntk.cli import main

    argv = ["analyze", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_a_reducer_without_merge_is_refused_on_a_cluster(client):
    from lpntk.kernel import RowReducer

    class Sum(RowReducer):  # a user's reducer written for the single process only
        def start(self, n, dtype, rows=None):
            self.total = 0.0

        def update(self, r0, k, c0):
            self.total += float(torch.nan_to_num(k).sum())

    X = bounded_features(20)
    assert reduce_rows(X, [Sum()], progress=False)[0].total != 0
    with pytest.raises(ConfigError, match="Sum has no state"):
        reduce_rows(X, [Sum()], progress=False, client=client)
