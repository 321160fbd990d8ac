"""Scale-out benchmarks: prints markdown tables (recorded in docs/BENCHMARKS.md).

    python benchmarks/scale_out.py single             # full MNIST on one process (any version)
    python benchmarks/scale_out.py workers 1 2        # full MNIST redundancy on local workers
    python benchmarks/scale_out.py synthetic --n 500000 --dim 32 --workers 8

``single`` runs the full-MNIST work of ``benchmarks/kernel.py full`` and ``benchmarks/analysis.py``
(features, diagonal, row max, two-sided redundancy, farthest point clustering) with the API that
every version has, so the same file times the store before and after a change (run it with
``PYTHONPATH=<old checkout>/src`` for the old code). ``workers`` times exact redundancy (and the
row max) of full MNIST on a LocalCluster of N worker processes of one thread each, against this
process. ``synthetic`` writes N random projected features into a Zarr store with the workers and
times a row max over all N^2 / 2 pairs with per-task timings and the scheduler's own overhead
(a graph of as many empty tasks). The LeNet-5 of ``benchmarks/kernel.py`` (one epoch, seed 0) is
used, trained first when missing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path("runs/bench")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def lenet_and_mnist():
    from lpntk import TrainConfig, load_checkpoint, run_training
    from lpntk.data import load_dataset

    run = run_training(TrainConfig(epochs=1, seed=0), OUT / "train-lenet5", progress=False)
    return load_checkpoint(run.best_checkpoint)[0], load_dataset("mnist", "train")


def single(clusters: int) -> None:
    import lpntk
    from lpntk.analysis import farthest_point_clusters, redundant_samples
    from lpntk.kernel import compute_features, diagonal, row_max

    model, data = lenet_and_mnist()
    store = OUT / "single-features"
    shutil.rmtree(store, ignore_errors=True)
    rows = []
    feats, t = timed(compute_features, model, data, "lpntk", out_dir=store, batch_size=256)
    rows.append(("features (60,000 samples, batch 256)", t))
    _, t = timed(diagonal, feats)
    rows.append(("diagonal", t))
    _, t = timed(row_max, feats, progress=False)
    rows.append(("row max + argmax", t))
    red, t = timed(redundant_samples, feats, progress=False)
    rows.append((f"redundant samples, two-sided ({red.fraction:.1%})", t))
    _, t = timed(farthest_point_clusters, feats, clusters, progress=False)
    rows.append((f"farthest point clustering, M = {clusters}", t))
    fmt = "Zarr" if (store / "zarr.json").exists() else ".npy + meta.json"
    print(
        f"\nlpntk from {Path(lpntk.__file__).parent}, store: {fmt}, torch threads "
        f"{torch.get_num_threads()}\n"
    )
    print("| step | seconds |\n| --- | --- |")
    for what, t in rows:
        print(f"| {what} | {t:.1f} |")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


def workers(counts: list[int], row_max_too: bool) -> None:
    from lpntk.analysis import redundant_samples
    from lpntk.kernel import compute_features, row_max
    from lpntk.kernel.distributed import close, connect

    model, data = lenet_and_mnist()
    feats = compute_features(
        model, data, "lpntk", out_dir=OUT / "workers-features", batch_size=256, progress=False
    )
    ref, t_ref = timed(redundant_samples, feats, progress=False)
    rows = [("this process", torch.get_num_threads(), t_ref, "reference", None)]
    if row_max_too:
        (v_ref, p_ref), t_row = timed(row_max, feats, progress=False)
        rows[0] = (*rows[0][:4], t_row)
    for n in counts:
        client = connect(workers=n)
        try:
            red, t = timed(redundant_samples, feats, progress=False, client=client)
            kappa = np.nanmax(np.abs(red.witness_kappa - ref.witness_kappa) / ref.self_kappa)
            same = (
                f"witnesses {'identical' if np.array_equal(red.witness, ref.witness) else 'DIFFER'}"
                f", kappa(x, witness) within {kappa:.1e} x kappa(x, x)"
            )
            t_row = None
            if row_max_too:
                (v, p), t_row = timed(row_max, feats, progress=False, client=client)
                same += (
                    f"; row max {'identical' if np.array_equal(v, v_ref) else 'DIFFERS'}, argmax "
                    f"{'identical' if np.array_equal(p, p_ref) else 'DIFFERS'}"
                )
        finally:
            close(client)
        rows.append((f"LocalCluster, {n} worker(s)", 1, t, same, t_row))
    print(
        f"\nfull MNIST, LeNet-5, exact lpNTK (float32, {feats.floats_per_sample():,} floats a "
        f"sample); redundant: {ref.fraction:.1%}\n"
    )
    print("| where | threads each | redundancy s | row max s | results |")
    print("| --- | --- | --- | --- | --- |")
    for where, threads, t, same, t_row in rows:
        r = f"{t_row:.1f}" if t_row is not None else ""
        print(f"| {where} | {threads} | {t:.1f} | {r} | {same} |")


def _write_random(location: str, start: int, end: int, dim: int) -> tuple[int, int]:
    """Rows start..end of the synthetic store: low-rank Gaussian plus noise, spread norms."""
    from lpntk.kernel.features import _Store

    g = np.random.default_rng(start)
    base = np.random.default_rng(0).standard_normal((8, dim))
    x = g.standard_normal((end - start, 8)) @ base + 0.5 * g.standard_normal((end - start, dim))
    x *= np.exp(0.5 * g.standard_normal((end - start, 1)))
    store = _Store.open(location, "r+")
    labels = g.integers(0, 1000, end - start)
    store.write(start, end, {"0.F": x[:, None, :].astype(np.float32)}, labels)
    return start, end


def _nothing(i: int) -> int:
    return i


def _synthetic_store(client, n: int, dim: int, chunk: int):
    """A Zarr feature store of ``n`` random projected features, written by the workers."""
    from dask.distributed import wait

    from lpntk.kernel import Features
    from lpntk.kernel.extract import Piece
    from lpntk.kernel.features import _Store

    location = str(OUT / f"synthetic-{n}-{dim}")
    shutil.rmtree(location, ignore_errors=True)
    identity = {
        "format": 2,
        "kind": "lpntk",
        "dtype": "float32",
        "n": n,
        "strategy": "projected",
        "proj_dim": dim,
        "model_hash": "synthetic",
        "outputs": 1,
    }
    store = _Store.create(location, identity)
    piece = Piece("projected", "dense", {"F": (1, dim)})
    store.allocate([piece], {"0.F": ((1, dim), "float32")}, chunk, np.arange(n))
    futures = [
        client.submit(_write_random, location, s, min(s + chunk, n), dim, pure=False)
        for s in range(0, n, chunk)
    ]
    wait(futures)
    store.finish({**store.meta, "pieces": [piece.to_dict()], "complete": True, "done": n})
    return Features.load(location)


def synthetic(n: int, dim: int, count: int, chunk: int, fpc_n: int, fpc_m: int) -> None:
    from dask.distributed import wait

    from lpntk.analysis import farthest_point_clusters
    from lpntk.kernel import RowMax, reduce_rows
    from lpntk.kernel.distributed import close, connect

    client = connect(workers=count)
    try:
        t0 = time.perf_counter()
        X = _synthetic_store(client, n, dim, chunk)
        t_write = time.perf_counter() - t0
        client.get_task_stream(start=time.time())  # start recording
        t0 = time.time()
        (r,) = reduce_rows(X, [RowMax()], progress=False, client=client)
        wall = time.time() - t0
        stream = client.get_task_stream(start=t0)
        spans = [
            ss["stop"] - ss["start"]
            for task in stream
            if str(task["key"]).startswith("lpntk-block")
            for ss in task["startstops"]
            if ss["action"] == "compute"
        ]
        t0 = time.perf_counter()
        wait([client.submit(_nothing, i, pure=False) for i in range(len(spans))])
        t_empty = time.perf_counter() - t0
        small = _synthetic_store(client, fpc_n, dim, chunk)
        here, t_fpc_here = timed(farthest_point_clusters, small, fpc_m, progress=False)
        there, t_fpc = timed(farthest_point_clusters, small, fpc_m, progress=False, client=client)
        same_fpc = np.array_equal(here.cluster, there.cluster)
    finally:
        close(client)
    spans = np.array(spans)
    pairs = n * (n + 1) // 2
    print(
        f"\nsynthetic N = {n:,}, projected p = {dim}, float32, {count} local worker processes "
        f"(1 thread each) on {os.cpu_count()} cores\n"
    )
    print("| what | value |\n| --- | --- |")
    print(f"| writing the store ({-(-n // chunk)} range tasks) | {t_write:.1f} s |")
    print(f"| row max + argmax, wall | {wall:.1f} s |")
    print(f"| block tasks | {len(spans)} |")
    print(
        f"| task time, median / 90th percentile / max | {np.median(spans):.2f} / "
        f"{np.percentile(spans, 90):.2f} / {spans.max():.2f} s |"
    )
    print(f"| task time, sum | {spans.sum():.0f} s |")
    print(f"| pairs per second | {pairs / wall:.3g} |")
    print(
        f"| {len(spans)} empty tasks on the same cluster | {t_empty:.2f} s "
        f"({1000 * t_empty / len(spans):.2f} ms a task) |"
    )
    print(f"| samples without an argmax | {int((r.argmax_position < 0).sum())} |")
    print(
        f"| farthest point clustering of {fpc_n:,} samples, M = {fpc_m:,}: this process | "
        f"{t_fpc_here:.1f} s |"
    )
    same = "identical" if same_fpc else "DIFFERENT"
    print(
        f"| ... on the {count} workers (one shard each) | {t_fpc:.1f} s, "
        f"{1000 * t_fpc / fpc_m:.1f} ms a step; clusters {same} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("single", "workers", "synthetic"))
    ap.add_argument("counts", nargs="*", type=int, default=[1, 2], help="workers: cluster sizes")
    ap.add_argument("--clusters", type=int, default=6000, help="single: M")
    ap.add_argument("--row-max", action="store_true", help="workers: also the row max")
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--fpc-n", type=int, default=50_000, help="synthetic: samples clustered")
    ap.add_argument("--fpc-m", type=int, default=2_000, help="synthetic: centroids")
    args = ap.parse_args()
    if args.what == "single":
        single(args.clusters)
    elif args.what == "workers":
        workers(args.counts, args.row_max)
    else:
        synthetic(args.n, args.dim, args.workers, args.chunk, args.fpc_n, args.fpc_m)


if __name__ == "__main__":
    main()
