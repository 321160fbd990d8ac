"""Kernel benchmarks: prints markdown tables (recorded in docs/BENCHMARKS.md).

    python benchmarks/kernel.py gram        # exact Gram, N = 4096: factored, materialised, naive
    python benchmarks/kernel.py throughput  # factored extraction vs training throughput
    python benchmarks/kernel.py full --model lenet5     # all 60,000 MNIST: diagonal + row max
    python benchmarks/kernel.py projected --model lenet5 --dims 2048 8192

Models are trained for one epoch (seed 0) on MNIST first, so the kernels are those of a real
network; timings do not depend on the weights. Run each ``full``/``projected`` case in its own
process: the peak resident memory reported is the process's.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from lpntk import TrainConfig, load_checkpoint, run_training
from lpntk.data import load_dataset
from lpntk.kernel import compute_features, diagonal, gram, kernel_block, row_max

OUT = Path("runs/bench")


def trained(model: str):
    """A model trained for one epoch on MNIST (cached under runs/bench)."""
    result = run_training(
        TrainConfig(model=model, epochs=1, seed=0), OUT / f"train-{model}", progress=False
    )
    return load_checkpoint(result.best_checkpoint)[0]


def mnist(n: int | None = None):
    ds = load_dataset("mnist", "train")
    return ds if n is None else ds.subset(np.arange(n))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def naive_pairs(model, x, y, pairs: int) -> float:
    """Seconds per pair of the public code's method: both samples' full K x d Jacobians
    recomputed for every pair, then contracted to the K x K block and weighted by s s^T / K."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logits(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    def jac(xi):
        j = jacrev(logits)(params, xi)
        return torch.cat([v.reshape(v.shape[0], -1) for v in j.values()], dim=1)

    k = 10
    t = time.perf_counter()
    done = 0
    for i in range(len(x)):
        for j in range(len(x)):
            ji, jj = jac(x[i]), jac(x[j])
            s_i = -torch.ones(k)
            s_i[y[i]] = 1
            s_j = -torch.ones(k)
            s_j[y[j]] = 1
            _ = (s_i @ (ji @ jj.T) @ s_j) / k
            done += 1
            if done >= pairs:
                return (time.perf_counter() - t) / done
    return (time.perf_counter() - t) / done


def bench_gram(n: int) -> None:
    print(f"\n### Exact lpNTK Gram of N = {n} MNIST training samples\n")
    print(
        "| model | parameters | method | N computed | extraction s | Gram s | total s "
        "| total at N = 4096 | max rel. diff. to factored |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    data = mnist(n)
    for name in ("lenet5", "mnist_cnn"):
        model = trained(name)
        d = sum(p.numel() for p in model.parameters())
        feats, t_fx = timed(compute_features, model, data, "lpntk", "factored", progress=False)
        g_f, t_fg = timed(gram, feats)
        total_f = t_fx + t_fg
        print(
            f"| {name} | {d:,} | factored | {n} | {t_fx:.1f} | {t_fg:.1f} | {total_f:.1f} "
            f"| {total_f * (4096 / n) ** 2:.1f} | 0 |"
        )
        # materialised: the full per-sample gradient (N x d floats) must fit in memory
        n_mat = min(n, max(256, int(4e9 / (4 * d)) // 256 * 256))
        sub = data.subset(np.arange(n_mat))
        mat, t_mx = timed(compute_features, model, sub, "lpntk", "materialised", progress=False)
        g_m, t_mg = timed(gram, mat)
        scale_x, scale_g = n / n_mat, (n / n_mat) ** 2
        est = t_mx * scale_x + t_mg * scale_g
        ref = g_f[:n_mat, :n_mat]
        diff = ((g_m - ref).abs().max() / ref.abs().max()).item()
        label = f"{est:.1f}" if n_mat == n else f"{est:.0f} (extrapolated from {n_mat})"
        print(
            f"| {name} | {d:,} | materialised (vmap + GEMM) | {n_mat} | {t_mx:.1f} | "
            f"{t_mg:.1f} | {t_mx + t_mg:.1f} | {label} | {diff:.1e} |"
        )
        del mat, g_m
        x, y = data.tensors()
        n_pairs = 64 if name == "lenet5" else 16
        per_pair = naive_pairs(model.eval(), x[:16], y[:16], n_pairs)
        est = per_pair * n * (n + 1) / 2
        print(
            f"| {name} | {d:,} | naive per-pair Jacobians (public code) | {n_pairs} pairs | "
            f"| | {per_pair * n_pairs:.1f} | {est:.0f} (extrapolated, N(N+1)/2 pairs) | |"
        )
        print(
            f"| {name} | | speed-up of factored | | | | | materialised / factored: "
            f"{(t_mx * scale_x + t_mg * scale_g) / total_f:.1f}x; naive / factored: "
            f"{est / total_f:.0f}x | |"
        )
    print(f"\npeak resident memory {peak_rss_gb():.1f} GB")


def bench_throughput(batch: int = 128, seconds: float = 5.0) -> None:
    print(f"\n### Throughput, batch {batch}, samples/s\n")
    print(
        "| model | training (forward + backward + SGD step) | factored lpNTK extraction | ratio |"
    )
    print("| --- | --- | --- | --- |")
    data = mnist(8192)
    x, y = data.tensors()
    from lpntk.kernel import Extractor, get_kind

    for name in ("lenet5", "mnist_cnn"):
        model = trained(name)
        train_model = trained(name).train()
        opt = torch.optim.SGD(train_model.parameters(), lr=1e-3, momentum=0.9)

        def train_step(i, opt=opt, train_model=train_model):
            opt.zero_grad()
            F.cross_entropy(train_model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()

        ex = Extractor(model.eval(), get_kind("lpntk"), "factored")

        def extract_step(i, ex=ex):
            ex(x[i : i + batch], y[i : i + batch])

        rates = []
        for step in (train_step, extract_step):
            step(0)
            t, done, i = time.perf_counter(), 0, 0
            while time.perf_counter() - t < seconds:
                step(i)
                done += batch
                i = (i + batch) % (len(x) - batch)
            rates.append(done / (time.perf_counter() - t))
        print(f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[1] / rates[0]:.0%} |")


def bench_full(name: str, proj_dim: int | None = None, keep: bool = False) -> None:
    data = mnist()
    model = trained(name)
    tag = f"{name}-p{proj_dim}" if proj_dim else f"{name}-exact"
    store = OUT / f"features-{tag}"
    if store.exists() and not keep:
        shutil.rmtree(store)
    t0 = time.perf_counter()
    feats = compute_features(
        model, data, "lpntk", "auto", proj_dim=proj_dim, out_dir=store, batch_size=256
    )
    t_fx = time.perf_counter() - t0
    diag, t_d = timed(diagonal, feats)
    (values, pos), t_r = timed(row_max, feats)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.iterdir()) / 2**30
    np.save(OUT / f"rowmax-{tag}.npy", np.stack([values, pos.astype(np.float64)]))
    np.save(OUT / f"diag-{tag}.npy", diag.numpy())
    print(
        f"\n### Full MNIST (N = {feats.n}), {name}, lpNTK, strategy {feats.meta['strategy']}"
        f"{f', p = {proj_dim}' if proj_dim else ''}\n"
    )
    print(
        "| features s | diagonal s | row max + argmax s | total wall s | peak RSS GB | "
        "store GB | floats per sample |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {t_fx:.0f} | {t_d:.1f} | {t_r:.0f} | {wall:.0f} | {peak_rss_gb():.2f} | "
        f"{size:.2f} | {feats.floats_per_sample():,} |"
    )
    exact = OUT / f"rowmax-{name}-exact.npy"
    if proj_dim and exact.exists():
        ev, ep = np.load(exact)
        ed = np.load(OUT / f"diag-{name}-exact.npy")
        same = np.mean(ep.astype(np.int64) == pos)
        rel_max = np.median(np.abs(values - ev) / np.abs(ev))
        rel_diag = np.median(np.abs(diag.numpy() - ed) / ed)
        print(
            f"\nagainst the exact run: same argmax for {same:.1%} of samples; median relative "
            f"error of the row max {rel_max:.2%}, of the diagonal {rel_diag:.2%}"
        )
    if proj_dim:
        sub = data.subset(np.arange(2000))
        ex = compute_features(model, sub, "lpntk", "factored", progress=False)
        pr = compute_features(model, sub, "lpntk", "projected", proj_dim=proj_dim, progress=False)
        g, gp = kernel_block(ex), kernel_block(pr)
        off = ~torch.eye(len(g), dtype=torch.bool)
        rel = ((gp - g).norm() / g.norm()).item()
        pair = ((gp - g).abs()[off] / g.abs()[off]).median().item()
        print(
            f"first 2,000 samples: relative Frobenius error of the Gram {rel:.2%}; median "
            f"relative error of an off-diagonal entry {pair:.2%}"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=("gram", "throughput", "full", "projected"))
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dims", type=int, nargs="+", default=[2048, 8192])
    args = p.parse_args(argv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d')}",
        file=sys.stderr,
    )
    if args.what == "gram":
        bench_gram(args.n)
    elif args.what == "throughput":
        bench_throughput()
    elif args.what == "full":
        bench_full(args.model)
    else:
        for d in args.dims:
            bench_full(args.model, proj_dim=d)


if __name__ == "__main__":
    main()
