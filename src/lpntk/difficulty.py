"""Experiment 1 (Sec. 3.2, App. D.2, Alg. 1): learning difficulty on the whole set and on subsets.

Learning difficulty (Jiang et al. 2021) is a sample's training loss integrated over the training
iterations: here the sum, over the update steps, of its loss just before each step. One model is
trained on the whole set, then the set is split at random into N / X disjoint class-mixed subsets
of X samples and one model is trained on each, all from the same initial parameters with the same
hyperparameters. The Pearson correlation between a sample's difficulty on the whole set and on its
subset shows how much of the difficulty comes from the other samples.

The many small models are trained together: their parameters are stacked and one
``torch.func.vmap`` of the gradient serves all of them, so X = 1 (N models) costs about as much as
one model on the whole set. ``mode="full_batch"`` (the text; default) takes one gradient step per
epoch on each model's whole subset; ``"per_sample"`` (Alg. 1) one step per sample, in order.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ._errors import ConfigError
from ._io import atomic_path, output_folder, write_json
from ._progress import Stages
from ._progress import progress as progress_bar
from ._seed import derive_seed
from .models import build_model

MODES = ("full_batch", "per_sample")


def train_many(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    mode: str = "full_batch",
    progress: bool = False,
) -> torch.Tensor:
    """Train ``M`` copies of ``model`` (its current parameters as the shared start) with plain
    gradient descent on the cross-entropy, copy ``m`` on ``x[m]`` ``(M, X, ...)`` with labels
    ``y[m]`` ``(M, X)``. Returns each sample's learning difficulty ``(M, X)``: the sum of its loss
    just before every update. ``model`` itself is not changed."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}", "mode")
    if x.shape[:2] != y.shape or y.ndim != 2:
        raise ConfigError(f"expected x (M, X, ...) and y (M, X); got {tuple(x.shape)}, {y.shape}")
    m = len(x)
    params = {k: v.detach().expand(m, *v.shape).clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xb, yb):
        z = functional_call(model, (p, buffers), (xb,))
        each = F.cross_entropy(z, yb, reduction="none")
        return each.mean(), each.detach()

    step = vmap(grad(loss, has_aux=True))
    difficulty = torch.zeros(y.shape, dtype=torch.float64)
    chunks = [slice(None)] if mode == "full_batch" else [slice(i, i + 1) for i in range(y.shape[1])]
    bar = progress_bar(epochs * len(chunks), "models", unit="step", enabled=progress)
    for _ in range(epochs):
        for c in chunks:
            g, each = step(params, x[:, c], y[:, c])
            difficulty[:, c] += each.double()
            for k in params:
                params[k].sub_(lr * g[k])
            bar.update(1)
    bar.close()
    return difficulty


def per_class_subset(data, per_class: int, seed: int = 0):
    """``per_class`` random samples of every class of ``data`` (an ArrayDataset), in their
    original order."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(data.num_classes):
        members = np.flatnonzero(data.labels == c)
        if len(members) < per_class:
            raise ConfigError(
                f"class {c} has {len(members)} samples; expected at least {per_class}",
                param="per_class",
            )
        picks.append(rng.choice(members, size=per_class, replace=False))
    return data.subset(np.sort(np.concatenate(picks)))


def split_subsets(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``(N / size, size)`` positions: the N samples shuffled at random (so each subset draws
    from all classes) and cut into disjoint subsets of ``size``."""
    n = len(labels)
    if size < 1 or n % size:
        raise ConfigError(f"a subset size must divide N = {n}; got {size}", param="sizes")
    return np.random.default_rng(seed).permutation(n).reshape(n // size, size)


def experiment1(
    data,
    sizes=(1, 5, 10, 40, 200, 1000),
    split_seeds=range(3),
    epochs: int = 100,
    lr: float = 0.1,
    widths=(256, 128),
    mode: str = "full_batch",
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
) -> dict:
    """Alg. 1 on ``data`` (an ArrayDataset, e.g. 500 MNIST images of each of the digits 0-3):
    difficulty on the whole set, then for each subset size X and split seed, on N / X subsets;
    Pearson rho per X (mean and 95% t-interval over the split seeds). With ``out_dir``: writes
    ``results.json``, ``per_sample.csv`` and ``figure1.png`` (one scatter panel per X). The paper
    gives no widths, epochs or learning rate; the defaults here are ours (mlp3 256-128, 100
    full-batch steps at lr 0.1)."""
    from scipy import stats

    sizes, split_seeds = [int(s) for s in sizes], [int(s) for s in split_seeds]
    checks = {
        "sizes": (bool(sizes), f"expected one or more subset sizes; got {sizes}"),
        "split_seeds": (bool(split_seeds), "expected one or more split seeds"),
        "epochs": (epochs >= 1, f"expected at least 1 epoch; got {epochs}"),
        "lr": (math.isfinite(lr) and lr > 0, f"expected a finite learning rate > 0; got {lr}"),
    }
    for param, (ok, message) in checks.items():
        if not ok:
            raise ConfigError(message, param=param)
    for size in sizes:  # before any training
        split_subsets(data.labels, size, 0)
    t0 = time.time()
    x, y = data.tensors()
    torch.manual_seed(derive_seed(seed, 0))
    model = build_model("mlp3", data.input_shape, data.num_classes, widths=list(widths))
    stages = Stages(1 + len(sizes) * len(split_seeds), enabled=progress)
    stages.start(f"the whole set, {len(y)} samples")
    whole = train_many(model, x[None], y[None], epochs, lr, mode, progress)[0].numpy()
    stages.finish()
    result = {
        "n": len(y),
        "sizes": sizes,
        "split_seeds": split_seeds,
        "epochs": epochs,
        "lr": lr,
        "widths": list(widths),
        "mode": mode,
        "seed": seed,
        "rho": {},
    }
    subset_difficulty = {}
    for size in sizes:
        rhos = []
        for s in split_seeds:
            parts = split_subsets(data.labels, size, derive_seed(s, size))
            stages.start(f"{len(parts)} subsets of X = {size}, split seed {s}")
            t = torch.as_tensor(parts)
            d = train_many(model, x[t], y[t], epochs, lr, mode, progress).numpy()
            stages.finish()
            sub = np.empty(len(y))
            sub[parts.ravel()] = d.ravel()
            rhos.append(float(stats.pearsonr(whole, sub).statistic))
            if s == split_seeds[0]:
                subset_difficulty[size] = sub
        mean = float(np.mean(rhos))
        half = (
            float(stats.t.ppf(0.975, len(rhos) - 1) * np.std(rhos, ddof=1) / np.sqrt(len(rhos)))
            if len(rhos) > 1
            else None
        )
        result["rho"][str(size)] = {"per_split": rhos, "mean": mean, "ci95_half_width": half}
    result["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        out = output_folder(out_dir)
        write_json(out / "results.json", result)
        import pandas as pd

        table = pd.DataFrame({"index": data.indices, "label": data.labels, "whole": whole})
        for size, sub in subset_difficulty.items():
            table[f"subset_{size}"] = sub
        with atomic_path(out / "per_sample.csv") as tmp:
            table.sort_values("index").to_csv(tmp, index=False, float_format="%.8g")
        _plot(whole, subset_difficulty, data.labels, result, out / "figure1.png")
    return result


def _plot(whole, subsets: dict, labels, result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(subsets)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), dpi=110, squeeze=False)
    for ax, (size, sub) in zip(axes[0], subsets.items(), strict=True):
        ax.scatter(whole, sub, c=labels, cmap="tab10", s=3, vmin=0, vmax=9)
        rho = result["rho"][str(size)]["mean"]
        ax.set_title(f"{result['n']} vs {size}: rho = {rho:.2f}", fontsize=9)
        ax.set_xlabel("difficulty, whole set", fontsize=8)
    axes[0][0].set_ylabel("difficulty, subset", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
