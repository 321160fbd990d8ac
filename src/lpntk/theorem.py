"""Theorem 1, numerically: lpNTK times the identity approaches the eNTK as the last layer widens.

For a network z(x) = W g(x) whose last hidden layer g has width w and whose last layer has LeCun
initialisation (W_ij ~ N(0, 1/w)), Theorem 1 (Eq. 4, App. B) states that
||(kappa((x, y), (x', y')) I_K - K(x, x')) / sqrt(w)||_F is in O(w^(-1/2)) with high probability,
K the K x K eNTK block and kappa the lpNTK. Here both kernels are computed exactly (float64) at
initialisation for random pairs of real samples with their labels, for several widths and seeds,
and the decay is fitted on log-log axes: the slope of the mean over pairs against log w, beside
the predicted -1/2. Also reported: the gap relative to the eNTK, ||kappa I_K - K||_F / ||K||_F,
and both for pairs with the same label and with different labels apart. (For the last layer's
own part, kappa holds (s(y) . s(y') / K) g(x) . g(x'), while the eNTK holds g(x) . g(x') I_K: the
two agree when y = y' and differ by a fixed factor (K - 4) / K otherwise, at any width.)

The network is ``mlp3`` with hidden widths ``(hidden, w)``: two ReLU layers, default init for the
first two layers, N(0, 1/w) weights and zero bias for the last.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ._errors import ConfigError
from ._io import atomic_path, output_folder, write_json
from ._progress import progress as progress_bar
from ._seed import derive_seed
from .kernel import compute_features, kernel_block
from .models import build_model

MEASURES = ("scaled", "relative")  # Eq. 4's quantity; the gap relative to the eNTK


def theorem1_network(input_shape, num_classes: int, width: int, hidden: int = 512) -> nn.Module:
    """``mlp3`` with last hidden width ``width`` and a LeCun-initialised last layer (float64)."""
    model = build_model("mlp3", input_shape, num_classes, widths=[hidden, width])
    last = model.net[-1]
    with torch.no_grad():
        nn.init.normal_(last.weight, 0.0, 1.0 / math.sqrt(width))
        nn.init.zeros_(last.bias)
    return model.double()


def kernel_gaps(model: nn.Module, data, pairs: np.ndarray, width: int) -> dict:
    """For each pair ``(i, j)`` of positions in ``data``: Eq. 4's ``scaled`` gap
    ||kappa I_K - K||_F / sqrt(width) and the ``relative`` gap ||kappa I_K - K||_F / ||K||_F."""
    used = np.unique(pairs)
    subset = torch.utils.data.Subset(data, used.tolist())
    where = {int(p): k for k, p in enumerate(used)}
    entk = compute_features(model, subset, "entk", dtype="float64", progress=False)
    lpntk = compute_features(model, subset, "lpntk", dtype="float64", progress=False)
    K, kappa = kernel_block(entk), kernel_block(lpntk)  # (n, n, K, K), (n, n)
    rows = torch.tensor([where[int(i)] for i in pairs[:, 0]])
    cols = torch.tensor([where[int(j)] for j in pairs[:, 1]])
    block = K[rows, cols]  # (P, K, K)
    eye = torch.eye(block.shape[-1], dtype=block.dtype)
    gap = torch.linalg.matrix_norm(kappa[rows, cols][:, None, None] * eye - block)
    return {
        "scaled": (gap / math.sqrt(width)).numpy(),
        "relative": (gap / torch.linalg.matrix_norm(block)).numpy(),
    }


def fit_slope(widths, values) -> float:
    """The least-squares slope of log(values) against log(widths)."""
    widths, values = np.asarray(widths, float), np.asarray(values, float)
    if len(values) < 2 or not (values > 0).all() or not np.isfinite(values).all():
        raise ConfigError(f"a slope needs two or more positive values; got {values.tolist()}")
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def theorem1(
    data,
    widths=(64, 256, 1024, 4096),
    seeds=range(3),
    pairs: int = 100,
    hidden: int = 512,
    out_dir=None,
    progress: bool = True,
) -> dict:
    """Measure Theorem 1 on ``data`` (an ArrayDataset: real samples with their labels); see the
    module doc. Each seed draws its own network and its own ``pairs`` random pairs of distinct
    samples. Returns (and with ``out_dir`` writes as ``results.json`` and ``theorem1.png``) the
    mean and std over pairs per width and seed, the slope of each seed's means, and the slope of
    the means over seeds."""
    widths, seeds = [int(w) for w in widths], [int(s) for s in seeds]
    if len(widths) < 2 or min(widths) < 1 or len(set(widths)) != len(widths):
        raise ConfigError(
            f"expected two or more distinct widths >= 1; got {widths}", param="widths"
        )
    if not seeds:
        raise ConfigError("expected one or more seeds", param="seeds")
    if not isinstance(pairs, int) or pairs < 1 or len(data) < 2:
        raise ConfigError(
            f"expected pairs >= 1 from two or more samples; got {pairs!r} from {len(data)}",
            param="pairs",
        )
    t0 = time.time()
    runs = []
    bar = progress_bar(len(widths) * len(seeds), "theorem 1", unit="net", enabled=progress)
    for seed in seeds:
        rng = np.random.default_rng(derive_seed(seed, 1))
        chosen = np.stack([rng.choice(len(data), size=2, replace=False) for _ in range(pairs)])
        same = data.labels[chosen[:, 0]] == data.labels[chosen[:, 1]]
        for width in widths:
            bar.set_postfix_str(f"seed {seed}, width {width}", refresh=False)
            torch.manual_seed(derive_seed(seed, width))
            model = theorem1_network(data.input_shape, data.num_classes, width, hidden)
            gaps = kernel_gaps(model, data, chosen, width)
            run = {"seed": seed, "width": width}
            for m in MEASURES:
                run[f"{m}_mean"] = float(gaps[m].mean())
                run[f"{m}_std"] = float(gaps[m].std(ddof=1)) if pairs > 1 else 0.0
                for group, mask in (("same_label", same), ("other_label", ~same)):
                    run[f"{m}_mean_{group}"] = float(gaps[m][mask].mean()) if mask.any() else None
            runs.append(run)
            bar.update(1)
    bar.close()
    result = {
        "widths": widths,
        "seeds": seeds,
        "pairs": pairs,
        "hidden": hidden,
        "predicted_slope_scaled": -0.5,
        "runs": runs,
        "seconds": round(time.time() - t0, 1),
    }
    for m in MEASURES:
        per_seed = [
            fit_slope(widths, [r[f"{m}_mean"] for r in runs if r["seed"] == s]) for s in seeds
        ]
        means = [np.mean([r[f"{m}_mean"] for r in runs if r["width"] == w]) for w in widths]
        result[f"{m}_mean_per_width"] = [float(v) for v in means]
        result[f"{m}_slope"] = fit_slope(widths, means)
        result[f"{m}_slope_per_seed"] = per_seed
        for group in ("same_label", "other_label"):
            values = [[r[f"{m}_mean_{group}"] for r in runs if r["width"] == w] for w in widths]
            if all(v is not None for row in values for v in row):
                means = [float(np.mean(row)) for row in values]
                result[f"{m}_mean_per_width_{group}"] = means
                result[f"{m}_slope_{group}"] = fit_slope(widths, means)
    if out_dir is not None:
        out = output_folder(out_dir)
        write_json(out / "results.json", result)
        plot(result, out / "theorem1.png")
    return result


def plot(result: dict, path) -> None:
    """Both gaps against the width on log-log axes, per seed, with the fitted and the predicted
    slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.asarray(result["widths"], float)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    titles = {
        "scaled": "||kappa I - K||_F / sqrt(w)  (Eq. 4)",
        "relative": "||kappa I - K||_F / ||K||_F",
    }
    for ax, m in zip(axes, MEASURES, strict=True):
        for s in result["seeds"]:
            v = [r[f"{m}_mean"] for r in result["runs"] if r["seed"] == s]
            ax.plot(widths, v, "o", alpha=0.4, color="tab:blue")
        for suffix, label, color in (
            ("", "all pairs", "tab:blue"),
            ("_same_label", "same label", "tab:green"),
            ("_other_label", "different labels", "tab:red"),
        ):
            if f"{m}_slope{suffix}" not in result:
                continue
            means = result[f"{m}_mean_per_width{suffix}"]
            slope = result[f"{m}_slope{suffix}"]
            ax.plot(widths, means, "-", color=color, label=f"{label}: slope {slope:.2f}")
        first = result[f"{m}_mean_per_width"][0]
        ax.plot(
            widths, first * (widths / widths[0]) ** -0.5, "--", color="gray", label="slope -1/2"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width of the last hidden layer")
        ax.set_title(titles[m], fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Theorem 1 at initialisation: {result['pairs']} pairs x {len(result['seeds'])} seeds"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
