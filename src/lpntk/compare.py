"""Prune-and-retrain comparison (Sec. 4.2-4.3, Figs. 2-3, 7): the same architecture and
hyperparameters trained from scratch on the full training set and on pruned subsets, over several
seeds, with the checkpoint chosen on validation accuracy only.

Every run has the same validation split (``split_seed``) so that pruned subsets, which hold
original indices of that split's training samples, are valid for every seed. Finished runs are
not trained again: an interrupted comparison resumes.

Your own model and training loop: give a :class:`Recipe` (make a model for a seed, train it on a
dataset, evaluate it) instead of a :class:`~lpntk.training.TrainConfig`; the runs, t-tests,
tables and plot are the same, under the one accuracy rule ``final`` (what your ``evaluate``
returns after your ``fit``).

What a subset's runs get equal to the full set's (``equal``): ``epochs`` (the default) trains
every subset for the same number of epochs, so a small subset gets few SGD steps; ``steps``
raises a subset's epochs so that it takes at least as many SGD steps as the full set (the
schedule stretched over them).

Accuracy rules (:data:`RULES`), all read from each run's per-epoch accuracies: ``best_val``
(the default: the test accuracy of the epoch with the best validation accuracy; the test set is
never used to choose), ``last`` (the last epoch's, the paper's "converged test accuracy") and
``max_test`` (the largest test accuracy over the epochs, the paper's public code's rule: the test
set chooses the epoch, so it is optimistic, and labelled test-selected); for a recipe, ``final``.

Outputs in ``out_dir``: one training run per ``<subset>/seed_<s>/`` (``<subset>.equal_steps/``
with ``equal='steps'``), ``runs.csv`` (one row per run, with the accuracy of every rule, the
epochs and the SGD steps), ``summary.csv`` (per subset, the default rule's mean and std, and
Student's, Welch's and the paired-by-seed t-tests against ``full``), ``rules.csv`` (the same for
every rule), ``comparison.json`` (all of it, with per-epoch test accuracy) and ``accuracy.png``
(test accuracy over epochs, mean with a one-std band; per subset when there are no epochs).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ._errors import ConfigError, ModelError
from ._io import atomic_path, output_folder, torch_save, write_json
from ._progress import Stages
from ._seed import derive_seed
from .training import TrainConfig, prepare_data, run_training

FULL = "full"
RULES = {  # rule -> the runs.csv column that holds its test accuracy
    "best_val": "test_acc",
    "last": "last_test_acc",
    "max_test": "max_test_acc",
}
RECIPE_RULE = "final"  # a Recipe's one rule: what its evaluate returned after its fit
COLUMNS = {**RULES, RECIPE_RULE: "test_acc"}
EQUAL = ("epochs", "steps")


@dataclass
class Recipe:
    """Your own model and training loop, for :func:`compare_training`.

    ``make_model(seed)``: a fresh, untrained ``nn.Module`` that returns logits (the global torch
    generator is seeded from ``seed`` before it is called, so initialisations are reproducible).
    ``fit(model, dataset, seed)``: train ``model`` in place on ``dataset`` (a
    ``torch.utils.data.Subset`` of ``dataset`` below, or the whole of it); it may return the
    test accuracy after each epoch (a list of floats), which gives the plot its curves.
    ``evaluate(model)``: the model's test accuracy, a number in [0, 1], on your own test set.
    ``dataset``: the full training set. Subsets hold original indices as the kernel reads them:
    ``dataset.indices`` when it has them (a ``Subset``), else positions ``0 .. N-1``.
    """

    make_model: Callable[[int], Any]
    fit: Callable[[Any, Any, int], Any]
    evaluate: Callable[[Any], float]
    dataset: Any

    def indices(self) -> np.ndarray:
        """The original index of every sample of :attr:`dataset`, in its order."""
        n = len(self.dataset)
        return np.asarray(getattr(self.dataset, "indices", np.arange(n)), dtype=np.int64)

    def subset(self, kept):
        """The samples of :attr:`dataset` with original indices ``kept`` (in dataset order)."""
        from torch.utils.data import Subset

        if kept is None:
            return self.dataset
        index = self.indices()
        order = np.argsort(index, kind="stable")
        kept = np.asarray(kept)
        at = np.searchsorted(index[order], kept)
        found = (at < len(index)) & (index[order][np.minimum(at, len(index) - 1)] == kept)
        if not found.all():
            raise ConfigError(
                f"{int((~found).sum())} kept indices (e.g. {kept[~found][:5].tolist()}) are not "
                "samples of the recipe's dataset; expected original indices of its samples",
                param="subsets",
            )
        return Subset(self.dataset, np.sort(order[at]).tolist())


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
    cfg: TrainConfig | Recipe,
    subsets: dict,
    seeds=range(10),
    out_dir="runs/compare",
    data_dir=None,
    device="auto",
    progress: bool = True,
    summary_dir=None,
    equal: str = "epochs",
    full_runs: dict | None = None,
) -> Comparison:
    """Train ``cfg`` (a :class:`~lpntk.training.TrainConfig`, or your own :class:`Recipe`) on
    the full training set and on each subset of ``subsets`` (name -> original indices, e.g.
    ``Pruned.kept``) for every seed in ``seeds``; see the module doc. ``summary_dir``: where the
    tables and the plot go instead of ``out_dir`` (the runs stay in ``out_dir``, where several
    comparisons can share them). ``equal``: ``epochs`` or ``steps`` (equal SGD steps).
    ``full_runs``: seed -> the folder of a finished run of ``cfg`` at that seed on the full set
    (e.g. the checkpoint being pruned), used instead of training it again."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"expected two or more distinct seeds; got {seeds}", param="seeds")
    if FULL in subsets:
        raise ConfigError(f"{FULL!r} is the name of the full set; rename that subset")
    if equal not in EQUAL:
        raise ConfigError(f"unknown {equal!r}; expected one of {', '.join(EQUAL)}", param="equal")
    recipe = isinstance(cfg, Recipe)
    if recipe and equal != "epochs":
        raise ConfigError(
            "a Recipe's fit decides its own number of steps: scale it with len(dataset) there, "
            "and keep equal='epochs'",
            param="equal",
        )
    if not recipe and not isinstance(cfg, TrainConfig):
        raise ConfigError(
            f"expected a TrainConfig or a Recipe; got {type(cfg).__name__}", param="cfg"
        )
    out = output_folder(out_dir)
    if not recipe:
        cfg = cfg.with_fixed_split()
        cfg.validate()
    steps_of = _equal_steps(cfg, data_dir) if equal == "steps" else None
    runs, curves = [], {}
    stages = Stages((1 + len(subsets)) * len(seeds), enabled=progress)
    for name, kept in {FULL: None, **subsets}.items():
        rows = []
        folder = f"{name}.equal_steps" if steps_of and kept is not None else name
        size = "the full set" if kept is None else f"{len(kept)} samples"
        for seed in seeds:
            given = not recipe and name == FULL and seed in (full_runs or {})
            where = Path(full_runs[seed]) if given else out / folder / f"seed_{seed}"
            stages.start(f"{name}, seed {seed}, {size}")
            ran_before = (where / ("result.json" if recipe else "metrics.json")).exists()
            if recipe:
                run, test = _recipe_run(cfg, kept, seed, where)
            else:
                run, test = _config_run(
                    cfg, kept, seed, where, steps_of, data_dir, device, progress, given
                )
            stages.finish(trained=not ran_before)
            rows.append(test)
            runs.append({"subset": name, "seed": seed, **run, "run_dir": str(where)})
        width = max(len(r) for r in rows)  # a recipe's curves may be missing or uneven
        curves[name] = np.asarray([r + [np.nan] * (width - len(r)) for r in rows], dtype=float)
    names = (RECIPE_RULE,) if recipe else RULES
    rules = [dict(row, rule=rule) for rule in names for row in rule_summary(runs, rule)]
    summary = [{k: v for k, v in row.items() if k != "rule"} for row in rules[: len(curves)]]
    comparison = Comparison(runs, summary, curves, rules)
    target = out if summary_dir is None else output_folder(summary_dir)
    _write(comparison, target, cfg, seeds, equal)
    return comparison


def _equal_steps(cfg: TrainConfig, data_dir) -> Callable[[int], int]:
    """n -> the epochs that give a training set of n samples at least the SGD steps that the
    full training split takes in ``cfg.epochs``."""
    n_full = len(prepare_data(cfg, data_dir)[0])
    steps = cfg.epochs * math.ceil(n_full / cfg.batch_size)
    return lambda n: math.ceil(steps / math.ceil(n / cfg.batch_size))


def _config_run(cfg, kept, seed, where, steps_of, data_dir, device, progress, given=False):
    """One run of a TrainConfig: its row of runs.csv and its per-epoch test accuracies.
    ``given``: ``where`` is a finished run handed in to reuse, read under its own settings."""
    run_cfg = dataclasses.replace(cfg, seed=seed)
    if steps_of is not None and kept is not None:
        run_cfg = dataclasses.replace(run_cfg, epochs=steps_of(len(kept)))
    if given:
        run_cfg = TrainConfig.from_dict(
            json.loads((Path(where) / "config.json").read_text())["config"]
        )
    result = run_training(
        run_cfg,
        where,
        data_dir=data_dir,
        device=device,
        progress=progress,
        train_indices=None if kept is None else np.asarray(kept),
    )
    test = [row["test_acc"] for row in result.history]
    n_train = (
        len(kept)
        if kept is not None
        else json.loads((Path(result.out_dir) / "config.json").read_text()).get("n_train")
    )
    row = {
        "n_train": n_train,
        "epochs": run_cfg.epochs,
        "steps": run_cfg.epochs * math.ceil(n_train / run_cfg.batch_size) if n_train else None,
        "best_epoch": result.best_epoch,
        "val_acc": result.best_val_acc,
        "test_acc": result.test_acc,
        "last_test_acc": test[-1],
        "max_test_acc": max(test),
        "max_test_epoch": int(np.argmax(test)) + 1,
    }
    return row, test


def _recipe_run(recipe: Recipe, kept, seed: int, where: Path):
    """One run of a Recipe, or the finished one in ``where`` (``result.json``, with the
    weights in ``model.pt``) when it trained the same samples."""
    import torch

    dataset = recipe.subset(kept)
    indices = recipe.indices() if kept is None else np.sort(np.asarray(kept, dtype=np.int64))
    digest = hashlib.sha256(indices.tobytes()).hexdigest()
    done = where / "result.json"
    if done.exists():
        finished = json.loads(done.read_text())
        if finished.get("indices_hash") == digest:
            return finished["row"], finished["test_acc_per_epoch"]
    torch.manual_seed(derive_seed(seed, 0))
    model = recipe.make_model(seed)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"the recipe's make_model({seed}) returned a {type(model).__name__}; expected a "
            "torch.nn.Module"
        )
    curve = recipe.fit(model, dataset, seed)
    acc = recipe.evaluate(model)
    try:
        acc = float(acc)
        curve = [] if curve is None else [float(a) for a in curve]
    except (TypeError, ValueError):
        raise ConfigError(
            f"expected evaluate to return a number and fit None or a list of numbers; got "
            f"{type(acc).__name__} and {type(curve).__name__}",
            param="recipe",
        ) from None
    if not 0.0 <= acc <= 1.0:  # also catches NaN
        raise ConfigError(
            f"the recipe's evaluate returned {acc}; expected a test accuracy in [0, 1]",
            param="recipe",
        )
    row = {"n_train": len(dataset), "test_acc": acc}
    where.mkdir(parents=True, exist_ok=True)
    torch_save(model.state_dict(), where / "model.pt")
    curve = curve or [acc]
    write_json(done, {"row": row, "test_acc_per_epoch": curve, "indices_hash": digest})
    return row, curve


def rule_summary(runs: list, rule: str = "best_val", against: str = FULL) -> list:
    """Per subset of ``runs`` (rows of ``runs.csv``), under accuracy ``rule``: the runs, the
    mean and std of their test accuracy and, against the set ``against`` (default the full
    set), Student's and Welch's two-sample t-tests and the paired t-test over the seeds both
    have (t > 0: ``against`` is better), each with its degrees of freedom."""
    if rule not in COLUMNS:
        raise ConfigError(
            f"unknown rule {rule!r}; expected one of {', '.join(COLUMNS)}", param="rule"
        )
    column, by = COLUMNS[rule], {}
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


def _write(c: Comparison, out: Path, cfg, seeds: list, equal: str) -> None:
    for name, rows in (("runs.csv", c.runs), ("summary.csv", c.summary), ("rules.csv", c.rules)):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(out / name) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    write_json(
        out / "comparison.json",
        {
            "config": dataclasses.asdict(cfg) if isinstance(cfg, TrainConfig) else "recipe",
            "seeds": seeds,
            "equal": equal,
            "runs": c.runs,
            "summary": c.summary,
            "summary_columns": list(dict.fromkeys(k for r in c.summary for k in r)),  # sorted
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

    if all(acc.shape[1] == 1 for acc in curves.values()):  # no epochs (a recipe): per subset
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(curves) + 2), 4), dpi=120)
        for i, acc in enumerate(curves.values()):
            a = acc[:, 0]
            ax.plot(np.full(len(a), i), a, "o", color="tab:blue", alpha=0.5)
            ax.errorbar(i + 0.15, a.mean(), a.std(ddof=1), fmt="s", color="black", capsize=4)
        ax.set_xticks(range(len(curves)), [f"{n} ({len(a)} seeds)" for n, a in curves.items()])
        ax.set_ylabel("test accuracy (runs; mean +- std)")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return
    many = len(curves) > 6  # then distinct colours, and the legend beside the axes
    fig, ax = plt.subplots(figsize=(9, 4.5) if many else (6, 4), dpi=120)
    colours = plt.get_cmap("tab20" if many else "tab10").colors
    for i, (name, acc) in enumerate(curves.items()):
        epochs = np.arange(1, acc.shape[1] + 1)
        mean, std = np.nanmean(acc, 0), np.nanstd(acc, 0, ddof=1)  # NaN: a shorter curve
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
