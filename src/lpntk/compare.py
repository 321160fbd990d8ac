"""Prune-and-retrain comparison (Sec. 4.2-4.3, Figs. 2-3, 7): the same architecture and
hyperparameters trained from scratch on the full training set and on pruned subsets, over several
seeds, with the checkpoint chosen on validation accuracy only.

Every run has the same validation split (``split_seed``) so that pruned subsets, which hold
original indices of that split's training samples, are valid for every seed. Finished runs are
not trained again: an interrupted comparison resumes.

Outputs in ``out_dir``: one training run per ``<subset>/seed_<s>/``, ``runs.csv`` (one row per
run), ``summary.csv`` (mean and std of the final test accuracy per subset, Student's and Welch's
t-tests against ``full``), ``comparison.json`` (all of it, with per-epoch test accuracy) and
``accuracy.png`` (test accuracy over epochs, mean with a one-std band).
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ._errors import ConfigError
from ._io import atomic_path, output_folder, write_json
from .training import TrainConfig, run_training

FULL = "full"


@dataclass
class Comparison:
    """``runs``: one dict per (subset, seed) run; ``summary``: one dict per subset;
    ``curves``: per subset, the ``(seeds, epochs)`` test accuracy after each epoch."""

    runs: list
    summary: list
    curves: dict


def compare_training(
    cfg: TrainConfig,
    subsets: dict,
    seeds=range(10),
    out_dir="runs/compare",
    data_dir=None,
    device="auto",
    progress: bool = True,
    summary_dir=None,
) -> Comparison:
    """Train ``cfg`` on the full training split and on each subset of ``subsets`` (name ->
    original indices, e.g. ``Pruned.kept``) for every seed in ``seeds``; see the module doc.
    ``summary_dir``: where the tables and the plot go instead of ``out_dir`` (the runs stay in
    ``out_dir``, where several comparisons can share them)."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"expected two or more distinct seeds; got {seeds}", param="seeds")
    if FULL in subsets:
        raise ConfigError(f"{FULL!r} is the name of the full set; rename that subset")
    out = output_folder(out_dir)
    cfg = cfg.with_fixed_split()
    runs, curves = [], {}
    for name, kept in {FULL: None, **subsets}.items():
        rows = []
        for seed in seeds:
            run_cfg = dataclasses.replace(cfg, seed=seed)
            result = run_training(
                run_cfg,
                out / name / f"seed_{seed}",
                data_dir=data_dir,
                device=device,
                progress=progress,
                train_indices=None if kept is None else np.asarray(kept),
            )
            rows.append([row["test_acc"] for row in result.history])
            runs.append(
                {
                    "subset": name,
                    "seed": seed,
                    "n_train": len(kept) if kept is not None else None,
                    "best_epoch": result.best_epoch,
                    "val_acc": result.best_val_acc,
                    "test_acc": result.test_acc,
                }
            )
        curves[name] = np.asarray(rows, dtype=float)
    summary = _summary(runs)
    comparison = Comparison(runs, summary, curves)
    _write(comparison, out if summary_dir is None else output_folder(summary_dir), cfg, seeds)
    return comparison


def _summary(runs: list) -> list:
    by = {}
    for r in runs:
        by.setdefault(r["subset"], []).append(r["test_acc"])
    full = np.asarray(by[FULL])
    rows = []
    for name, accs in by.items():
        a = np.asarray(accs)
        row = {"subset": name, "runs": len(a), "mean": a.mean(), "std": a.std(ddof=1)}
        if name != FULL:
            for test, equal in (("student", True), ("welch", False)):
                t = stats.ttest_ind(full, a, equal_var=equal)
                row[f"{test}_t"], row[f"{test}_p"] = float(t.statistic), float(t.pvalue)
            row["df_student"] = len(full) + len(a) - 2
        rows.append(row)
    return rows


def _write(c: Comparison, out: Path, cfg: TrainConfig, seeds: list) -> None:
    for name, rows in (("runs.csv", c.runs), ("summary.csv", c.summary)):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(out / name) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    write_json(
        out / "comparison.json",
        {
            "config": dataclasses.asdict(cfg),
            "seeds": seeds,
            "runs": c.runs,
            "summary": c.summary,
            "test_acc_per_epoch": {k: v.tolist() for k, v in c.curves.items()},
        },
    )
    plot_curves(c.curves, out / "accuracy.png")


def plot_curves(curves: dict, path: Path) -> None:
    """Test accuracy over epochs per subset: the mean with a one-std band (like Figs. 2-3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    many = len(curves) > 6  # then distinct colours, and the legend beside the axes
    fig, ax = plt.subplots(figsize=(9, 4.5) if many else (6, 4), dpi=120)
    colours = plt.get_cmap("tab20" if many else "tab10").colors
    for i, (name, acc) in enumerate(curves.items()):
        epochs = np.arange(1, acc.shape[1] + 1)
        mean, std = acc.mean(0), acc.std(0, ddof=1)
        c = colours[i % len(colours)]
        ax.plot(epochs, mean, marker="o", markersize=3, color=c, label=f"{name} ({len(acc)} seeds)")
        low, high = np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1)  # accuracies
        ax.fill_between(epochs, low, high, color=c, alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (mean, one-std band)")
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    else:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
