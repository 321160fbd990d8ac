"""Prune-and-retrain comparison (Sec. 4.2-4.3, Figs. 2-3, 7): the same architecture and
hyperparameters trained from scratch on the full training set and on pruned subsets, over several
seeds, with the checkpoint chosen on validation accuracy only.

Every run has the same validation split (``split_seed``) so that pruned subsets, which hold
original indices of that split's training samples, are valid for every seed. Finished runs are
not trained again: an interrupted comparison resumes.

Accuracy rules (:data:`RULES`), all read from each run's per-epoch accuracies: ``best_val``
(the default: the test accuracy of the epoch with the best validation accuracy; the test set is
never used to choose), ``last`` (the last epoch's, the paper's "converged test accuracy") and
``max_test`` (the largest test accuracy over the epochs, the paper's public code's rule: the test
set chooses the epoch, so it is optimistic, and labelled test-selected).

Outputs in ``out_dir``: one training run per ``<subset>/seed_<s>/``, ``runs.csv`` (one row per
run, with the accuracy of every rule), ``summary.csv`` (per subset, the default rule's mean and
std, and Student's, Welch's and the paired-by-seed t-tests against ``full``), ``rules.csv`` (the
same for every rule), ``comparison.json`` (all of it, with per-epoch test accuracy) and
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
RULES = {  # rule -> the runs.csv column that holds its test accuracy
    "best_val": "test_acc",
    "last": "last_test_acc",
    "max_test": "max_test_acc",
}


@dataclass
class Comparison:
    """``runs``: one dict per (subset, seed) run; ``summary``: one dict per subset;
    ``curves``: per subset, the ``(seeds, epochs)`` test accuracy after each epoch; ``rules``:
    one dict per (subset, rule) of :data:`RULES`, the summary under that accuracy rule."""

    runs: list
    summary: list
    curves: dict
    rules: list = dataclasses.field(default_factory=list)


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
            test = [row["test_acc"] for row in result.history]
            rows.append(test)
            runs.append(
                {
                    "subset": name,
                    "seed": seed,
                    "n_train": len(kept) if kept is not None else None,
                    "best_epoch": result.best_epoch,
                    "val_acc": result.best_val_acc,
                    "test_acc": result.test_acc,
                    "last_test_acc": test[-1],
                    "max_test_acc": max(test),
                    "max_test_epoch": int(np.argmax(test)) + 1,
                }
            )
        curves[name] = np.asarray(rows, dtype=float)
    rules = [dict(row, rule=rule) for rule in RULES for row in rule_summary(runs, rule)]
    summary = [{k: v for k, v in row.items() if k != "rule"} for row in rules[: len(curves)]]
    comparison = Comparison(runs, summary, curves, rules)
    _write(comparison, out if summary_dir is None else output_folder(summary_dir), cfg, seeds)
    return comparison


def rule_summary(runs: list, rule: str = "best_val", against: str = FULL) -> list:
    """Per subset of ``runs`` (rows of ``runs.csv``), under accuracy ``rule``: the runs, the
    mean and std of their test accuracy and, against the set ``against`` (default the full
    set), Student's and Welch's two-sample t-tests and the paired t-test over the seeds both
    have (t > 0: ``against`` is better), each with its degrees of freedom."""
    if rule not in RULES:
        raise ConfigError(
            f"unknown rule {rule!r}; expected one of {', '.join(RULES)}", param="rule"
        )
    column, by = RULES[rule], {}
    for r in runs:
        by.setdefault(r["subset"], {})[r["seed"]] = float(r[column])
    if against not in by:
        raise ConfigError(f"expected runs of the {against!r} set to compare with", param="runs")
    full = by[against]
    rows = []
    for name, accs in by.items():
        a = np.asarray(list(accs.values()))
        std = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
        row = {"subset": name, "runs": len(a), "mean": float(a.mean()), "std": std}
        if name != against:
            f = np.asarray(list(full.values()))
            for test, equal in (("student", True), ("welch", False)):
                t = stats.ttest_ind(f, a, equal_var=equal)
                row[f"{test}_t"], row[f"{test}_p"] = float(t.statistic), float(t.pvalue)
                row[f"{test}_df"] = float(t.df)
            seeds = sorted(set(full) & set(accs))
            if len(seeds) > 1:
                t = stats.ttest_rel([full[s] for s in seeds], [accs[s] for s in seeds])
                row["paired_t"], row["paired_p"] = float(t.statistic), float(t.pvalue)
                row["paired_df"] = len(seeds) - 1
        rows.append(row)
    return rows


def _write(c: Comparison, out: Path, cfg: TrainConfig, seeds: list) -> None:
    for name, rows in (("runs.csv", c.runs), ("summary.csv", c.summary), ("rules.csv", c.rules)):
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
            "rules": c.rules,
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
