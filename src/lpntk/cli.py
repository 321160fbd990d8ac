"""Command line: a thin layer that parses arguments and calls the Python API.

Conventions every command follows: a mistake ends in one ``lpntk: error: ...`` line naming the
option (exit status 2 for usage errors, 1 for other failures, 130 after Ctrl-C, which keeps the
finished work); ``--debug`` or ``LPNTK_DEBUG=1`` shows the traceback instead; every option has
help text with its default; results go to files, stdout gets a short summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import warnings

from ._errors import ConfigError, LpntkError
from ._version import __version__

DESCRIPTION = """\
lpntk measures how labelled training samples interact during learning, with the labelled
pseudo neural tangent kernel (lpNTK): train a classifier (or bring a checkpoint), compute the
exact lpNTK, pNTK or eNTK over its data, and see which samples are interchangeable, unrelated
or contradictory.

typical use:
  lpntk data fetch mnist
  lpntk train --dataset mnist --model lenet5 --out runs/lenet5
  lpntk kernel --checkpoint runs/lenet5 --top-k 10 --out runs/lenet5-kernel
  lpntk demo                      # all of the above, end to end, in runs/demo

Datasets are looked up in --data-dir, then $LPNTK_DATA_DIR, then the user cache, and are
downloaded when missing. Long runs resume when started again with the same command.
Run 'lpntk COMMAND --help' for a command's options."""


COMMANDS = {  # name -> help: the one list of commands (the fast --help reads it too)
    "data": "fetch or describe a dataset",
    "train": "train a classifier and keep its best-validation checkpoint (resumes)",
    "kernel": "the lpNTK / pNTK / eNTK / loss kernel of a checkpoint (resumes)",
    "analyze": (
        "redundant samples, relationship types and farthest point clustering of a checkpoint's "
        "lpNTK (per_sample.csv, clusters.json, cluster_sizes.png)"
    ),
    "label-issues": (
        "samples whose label disagrees with the samples that look like them: a label-error "
        "score, rank and suggested label for each (per_sample.csv, label_issues.png)"
    ),
    "prune": "a pruned training set of a checkpoint (kept.npy, kept.csv, manifest)",
    "compare": (
        "retrain on the full set and on pruned sets over seeds: t-tests and accuracy curves"
    ),
    "dynamics": (
        "learning difficulty and forgetting events of the training samples, from runs trained "
        "with --log-per-sample (per_sample.csv, summary.json)"
    ),
    "experiment1": (
        "learning difficulty on the whole set against on subsets of X samples (Sec. 3.2, Fig. "
        "1; results.json, per_sample.csv, figure1.png)"
    ),
    "predict-forgetting": (
        "predict forgetting events from the eNTK, lpNTK and pNTK over a window of plain SGD "
        "steps, against the real steps (Sec. 3.3, Table 1; results.json, per_seed.csv, "
        "prediction.png)"
    ),
    "theorem1": (
        "Theorem 1 at initialisation: the gap between lpNTK x identity and the eNTK against the"
        " width of the last hidden layer (results.json, theorem1.png)"
    ),
    "reproduce": (
        "reproduce a claim of the paper on a dataset, with statistics (OUT/CLAIM/results.json, "
        "table.md, plots; resumes and shares models, kernels and clusterings between claims). "
        "Each claim is judged under its faithful reading (clusters per class, redundancy within"
        " class, Table 1 by the eNTK) and every other plausible one (whole-set clusters, one-"
        "sided search, the public code's pruning and forgetting window), under three accuracy "
        "rules (best validation, last epoch, max test: test-selected) and three tests (Welch, "
        "Student, paired); results.json holds the verdict, the protocol and the sensitivity "
        "rows"
    ),
    "report": ("one self-contained HTML page of a results folder (tables, settings, plots inline)"),
    "demo": (
        "the main job, end to end (resumes): train, lpNTK, redundancy, relationships and "
        "clusters, a pruned training set, and full vs pruned retrained over seeds"
    ),
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default to its help."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == [])
        shown = shown and default != argparse.SUPPRESS
        if shown and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: ``lpntk: error: <what> (see 'lpntk CMD --help')``."""

    def error(self, message):
        self.exit(2, f"lpntk: error: {message} (see '{self.prog} --help')\n")


STARTS_OVER = ("dynamics", "experiment1", "theorem1", "report")  # they keep no partial work


def _model_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _dataset(text: str) -> str:
    from .data import DATASETS, is_idx_folder

    if text in DATASETS or is_idx_folder(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(DATASETS)} or a folder of MNIST-format IDX files; got {text!r}"
    )


def _class_id(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _add_data_options(p: argparse.ArgumentParser, downloads: bool = True) -> None:
    then = ", then a download into the cache" if downloads else ""
    p.add_argument(
        "--data-dir",
        type=_path,
        metavar="DIR",
        help="folder holding the datasets, as DIR/mnist and DIR/cifar10 (default: "
        f"$LPNTK_DATA_DIR, then the user cache{then})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_data_options(p)
    p.add_argument(
        "--device",
        default="auto",
        help="where to compute: cpu, cuda, cuda:N, or auto (CUDA when available)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown on stderr)"
    )


def _add_train_options(p: argparse.ArgumentParser, one_run: bool = True) -> None:
    """The training settings; ``one_run=False`` leaves out those of a single run's folder (seed,
    logs, checkpoints), for commands that train several runs themselves."""
    from .data import DATASETS
    from .models import MODELS
    from .training import OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--dataset",
        default=d.dataset,
        type=_dataset,
        help=f"dataset to train on: {', '.join(DATASETS)}, or a folder of MNIST-format IDX files",
    )
    p.add_argument("--model", default=d.model, choices=sorted(MODELS), help="architecture")
    p.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model constructor option, repeatable; VALUE is JSON, e.g. batch_norm=false or "
        "'widths=[512,256]' (default: none)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        type=_class_id,
        metavar="CLASS",
        help="keep only these classes (ids or names), relabelled 0..k-1 (default: all)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="train on a stratified random subset of N samples (default: the whole split)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        metavar="N",
        help="test on a stratified random subset of N samples (default: the whole split)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="fraction of the training split held out to select the best checkpoint",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimiser")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule"
    )
    p.add_argument(
        "--step-size", type=int, default=d.step_size, help="epochs between decays (step schedule)"
    )
    p.add_argument("--gamma", type=float, default=d.gamma, help="decay factor (step schedule)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="random crop (pad 4) and horizontal flip, for CIFAR-10 (default: off)",
    )
    if not one_run:
        return
    p.add_argument("--seed", type=_seed, default=d.seed, help="seed of every random choice")
    p.add_argument(
        "--log-per-sample",
        action="store_true",
        help="record each sample's loss and correctness at every epoch in per_sample/ "
        "(default: off)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        metavar="STEPS",
        help="also save last.pt every STEPS steps; 0: at epoch ends only",
    )
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also keep each epoch's weights as checkpoints/epoch_NNN.pt, for kernels during "
        "training (default: off)",
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=None,
        metavar="RATE",
        help="flip this share of the training file's labels on purpose, to test label-error "
        "detection (lpntk.noise; the test set stays clean) (default: none)",
    )
    p.add_argument(
        "--noise-kind",
        choices=("uniform", "pairs"),
        help="uniform: to any other class; pairs: to a confusable class (with --label-noise) "
        "(default: uniform)",
    )
    p.add_argument(
        "--noise-seed", type=_seed, help="seed of the flips (with --label-noise) (default: 0)"
    )
    p.add_argument(
        "--noise-pairs",
        nargs="+",
        type=_class_pair,
        metavar="FROM:TO",
        help="the confusable pairs of --noise-kind pairs (implied), as class ids (default: "
        "Patrini et al.'s for MNIST and CIFAR-10)",
    )


def _class_pair(text: str) -> list[int]:
    try:
        a, b = text.split(":")
        return [int(a), int(b)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FROM:TO class ids, e.g. 2:7; got {text!r}"
        ) from None


def _label_noise(args) -> dict | None:
    """--label-noise and the options that shape it; those alone are an error, not ignored."""
    rate = getattr(args, "label_noise", None)
    given = [
        flag
        for flag, value in (
            ("--noise-kind", getattr(args, "noise_kind", None)),
            ("--noise-seed", getattr(args, "noise_seed", None)),
            ("--noise-pairs", getattr(args, "noise_pairs", None)),
        )
        if value is not None
    ]
    if rate is None:
        if given:
            raise ConfigError(f"{', '.join(given)} apply only with --label-noise RATE")
        return None
    kind = args.noise_kind or ("pairs" if args.noise_pairs else "uniform")
    if args.noise_pairs and kind != "pairs":
        raise ConfigError("--noise-pairs applies only with --noise-kind pairs, not uniform")
    noise = {"rate": rate, "kind": kind, "seed": 0 if args.noise_seed is None else args.noise_seed}
    return {**noise, **({"pairs": args.noise_pairs} if args.noise_pairs else {})}


def _train_config(args):
    from .training import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        model_options=dict(args.model_options),
        classes=args.classes,
        train_size=args.train_size,
        test_size=args.test_size,
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        step_size=args.step_size,
        gamma=args.gamma,
        augment=args.augment,
        **{
            k: getattr(args, k)
            for k in ("seed", "log_per_sample", "checkpoint_every", "keep_epochs")
            if hasattr(args, k)
        },
        label_noise=_label_noise(args),
    )


def _add_kernel_options(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS
    from .kernel import KINDS, PROJECTIONS, STRATEGIES
    from .kernel_stage import SPLITS

    p.add_argument(
        "--checkpoint",
        required=True,
        type=_path,
        metavar="PATH",
        help="a training run's folder (its best.pt) or any checkpoint it wrote: best.pt, "
        "last.pt, checkpoints/epoch_NNN.pt",
    )
    p.add_argument(
        "--out",
        dest="out_dir",
        required=True,
        type=_path,
        metavar="DIR",
        help="output folder (resumes)",
    )
    p.add_argument(
        "--kind",
        default="lpntk",
        choices=tuple(KINDS),
        help="lpntk: s(y)^T dz/dw (Eq. 3); pntk: all-ones; loss: the cross-entropy gradient; "
        "entk: the full K x K eNTK blocks",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=SPLITS,
        help="train/val: the checkpoint's own training/validation samples; test: the test set",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="take the split from this dataset instead (default: the checkpoint's dataset)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples (default: all)")
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="also write neighbours.csv: each sample's K most similar and K least similar "
        "(most contradictory) other samples; 0: none",
    )
    p.add_argument(
        "--against",
        choices=SPLITS,
        help="also the cross kernel split x AGAINST (e.g. --split test --against train) in "
        "cross_kernel.npy; neighbours are then taken from AGAINST (default: none)",
    )
    p.add_argument(
        "--against-limit",
        type=int,
        metavar="N",
        help="only the first N samples of --against (default: all)",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=STRATEGIES,
        help="how per-sample gradients are kept; all exact but projected (auto: factored, "
        "materialised for models that do not factor, projected with --proj-dim)",
    )
    p.add_argument(
        "--proj-dim",
        type=int,
        metavar="P",
        help="random projection to P dimensions (projected strategy; default: none)",
    )
    p.add_argument(
        "--projection",
        default="rademacher",
        choices=PROJECTIONS,
        help="random matrix of the projected strategy",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random projection")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="feature precision"
    )
    p.add_argument("--batch-size", type=int, default=128, help="samples per backward pass")
    _add_cluster_options(p)
    _add_run_options(p)


def _count_or_fraction(text: str):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a count (1, 2, ...) or a fraction in (0, 1), got {text!r}"
        )
    return int(value) if value >= 1 and value == int(value) and "." not in text else value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed, an integer >= 0; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        type=_path,
        metavar="PATH",
        help="a training run's folder (its best.pt) or any checkpoint it wrote",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=_path, metavar="DIR", help="output folder"
    )


def _add_proj_dim_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proj-dim",
        type=int,
        metavar="P",
        help="approximate: the kernel from features randomly projected to P dimensions, for "
        "models whose exact features do not fit (default: exact)",
    )


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster of this scheduler (tcp://host:8786, or the file it wrote "
        "with --scheduler-file); its workers must reach --out and the data (default: this "
        "process)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run on a local Dask cluster of N worker processes, one thread each (default: "
        "this process)",
    )


def _add_quiet_options(p: argparse.ArgumentParser) -> None:
    _add_data_options(p)
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown on stderr)"
    )


PRUNE_OPTIONS = {  # the options of each pruning strategy
    "redundant": ("kind", "rule", "one_sided", "within_class", "size"),
    "redundant_head": (
        "kind",
        "fraction",
        "clusters",
        "rule",
        "seed",
        "per_class",
        "one_sided",
        "within_class",
        "redundant",
    ),
    "head_budget": ("kind", "budget", "clusters", "seed", "per_class"),
    "random": ("size", "seed"),
    "el2n": ("size", "score_seeds", "score_epochs"),
    "forgetting": ("size", "score_seeds"),
}


def _add_analysis_commands(command) -> None:
    from .analysis import DESIGNS, MEASURES, RULES
    from .analysis.label_issues import DESIGN, NEIGHBOURS
    from .kernel_stage import SPLITS
    from .prune import STRATEGIES

    p = command("analyze")
    _add_checkpoint_options(p)
    p.add_argument("--split", default="train", choices=SPLITS, help="which samples")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N (default: all)")
    p.add_argument(
        "--one-sided",
        action="store_true",
        help="redundancy against later indices only, as the paper's public code (default: off)",
    )
    p.add_argument(
        "--across-classes",
        dest="within_class",
        action="store_false",
        help="redundancy against samples of every class (default: within each class, the "
        "paper's definition in App. E.1: 'two samples from the same class')",
    )
    p.add_argument("--t", type=float, default=0.75, help="interchangeable threshold, in (1/2, 1]")
    p.add_argument("--eps", type=float, default=0.05, help="unrelated tolerance around 0")
    p.add_argument(
        "--no-relationships",
        dest="relationships",
        action="store_false",
        help="skip the relationship counts (default: counted)",
    )
    p.add_argument(
        "--clusters",
        type=_count_or_fraction,
        default=0.1,
        metavar="M",
        help="farthest point clustering centroids: a count, or a fraction of N",
    )
    p.add_argument("--measure", default="lpntk", choices=MEASURES, help="clustering similarity")
    p.add_argument(
        "--per-class", action="store_true", help="cluster each class apart (default: off)"
    )
    _add_proj_dim_option(p)
    _add_cluster_options(p)
    _add_quiet_options(p)

    p = command("label-issues")
    _add_checkpoint_options(p)
    p.add_argument("--split", default="train", choices=SPLITS, help="which samples")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N (default: all)")
    p.add_argument(
        "--neighbours",
        type=int,
        default=NEIGHBOURS,
        metavar="K",
        help="nearest samples under the pNTK",
    )
    p.add_argument(
        "--design",
        default=DESIGN,
        choices=DESIGNS,
        help="the score (see lpntk.analysis.label_issues)",
    )
    p.add_argument("--top", type=int, default=32, help="suspects in the image grid and summary")
    _add_cluster_options(p)
    _add_quiet_options(p)

    p = command("prune")
    _add_checkpoint_options(p)
    p.add_argument("--strategy", required=True, choices=STRATEGIES, help="how to prune")
    p.add_argument(
        "--kind", choices=("lpntk", "pntk"), help="the kernel of the strategy (default: lpntk)"
    )
    p.add_argument("--rule", choices=RULES, help="redundant samples to drop (default: cover)")
    p.add_argument("--one-sided", action="store_true", help="see analyze (default: off)")
    p.add_argument(
        "--across-classes",
        action="store_true",
        help="redundancy against every class (default: within each class; see analyze)",
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="redundant_head, head_budget: cluster each class apart and use each class's own "
        "largest cluster, budgets balanced per class (the paper's public code; default: off)",
    )
    p.add_argument(
        "--keep-redundant",
        action="store_true",
        help="redundant_head: drop only from the largest cluster(s), no redundant samples "
        "first (the paper's public code, with --fraction 0.5 --per-class)",
    )
    p.add_argument(
        "--fraction", type=float, help="share of the largest cluster dropped (default: 0.1)"
    )
    p.add_argument("--budget", type=float, help="head_budget: fraction of N to keep (no default)")
    p.add_argument(
        "--clusters",
        type=_count_or_fraction,
        metavar="M",
        help="centroids: a count or a fraction of N (default: 0.1)",
    )
    p.add_argument(
        "--size",
        type=int,
        help="random, el2n, forgetting: samples to keep (no default); redundant: keep exactly "
        "this many, the most redundant dropped first (default: all that the rule drops)",
    )
    p.add_argument("--seed", type=_seed, help="seed of the random choices (default: 0)")
    p.add_argument(
        "--score-seeds",
        type=int,
        metavar="S",
        help="el2n, forgetting: scoring runs, seeds 0..S-1, averaged (default: 5)",
    )
    p.add_argument(
        "--score-epochs",
        type=int,
        metavar="E",
        help="el2n: epochs of each scoring run, at a constant learning rate (default: 2)",
    )
    p.add_argument(
        "--analysis",
        dest="analysis_dir",
        type=_path,
        metavar="DIR",
        help="a folder written by lpntk analyze on this checkpoint: its features and "
        "redundancy search are reused instead of computed again (default: computed here)",
    )
    _add_proj_dim_option(p)
    _add_cluster_options(p)
    _add_run_options(p)

    p = command("compare")
    _add_checkpoint_options(p)
    p.add_argument(
        "--pruned",
        nargs="+",
        type=_path,
        required=True,
        metavar="DIR",
        help="folders written by lpntk prune",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds per training set")
    p.add_argument(
        "--equal",
        choices=("epochs", "steps"),
        default="epochs",
        help="what a pruned set's runs get equal to the full set's: epochs (default) or SGD "
        "steps (more epochs for a smaller set)",
    )
    _add_run_options(p)


def _prune_parameters(args) -> dict:
    allowed = PRUNE_OPTIONS[args.strategy]
    given = {
        "rule": args.rule,
        "one_sided": args.one_sided or None,
        "within_class": False if args.across_classes else None,
        "per_class": args.per_class or None,
        "redundant": False if args.keep_redundant else None,
        "fraction": args.fraction,
        "budget": args.budget,
        "clusters": args.clusters,
        "size": args.size,
        "seed": args.seed,
        "kind": args.kind,
        "score_seeds": args.score_seeds,
        "score_epochs": args.score_epochs,
    }
    needs = {"random": "size", "el2n": "size", "forgetting": "size", "head_budget": "budget"}
    needs = needs.get(args.strategy)
    if needs and given[needs] is None:
        raise ConfigError(
            f"strategy {args.strategy} needs {{{needs}}}", param="strategy", mentions=[needs]
        )
    extra = [k for k, v in given.items() if v is not None and k not in allowed]
    if extra:
        raise LpntkError(
            f"{', '.join('{' + k + '}' for k in extra)} does not apply to strategy "
            f"{args.strategy}; its options: {', '.join('{' + k + '}' for k in allowed)}",
            mentions=[*extra, *allowed],
        ).as_usage()
    if "within_class" in allowed and given["within_class"] is None:
        given["within_class"] = given["redundant"] is not False  # the default: within class
    return {k: v for k, v in given.items() if v is not None}


def _top_parser():
    """The parser of ``lpntk`` itself and its (empty) subparsers action: enough to answer
    ``--help`` and ``--version`` without importing torch."""
    parser = _Parser(prog="lpntk", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument(
        "--version", action="version", version=f"lpntk {__version__}", help="print the version"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also LPNTK_DEBUG=1; default: off)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    return parser, sub


def _fast_answer(argv: list) -> None:
    """When no command is named (``--help``, ``--version``, a typo): answer from the command
    table alone, in milliseconds; always exits."""
    parser, sub = _top_parser()
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text)
    parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _top_parser()

    def command(name: str, text: str | None = None, parent=sub) -> argparse.ArgumentParser:
        text = COMMANDS[name] if text is None else text
        p = parent.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.set_defaults(parser=p)
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the full traceback of an error (default: off)",
        )
        return p

    data = command("data")
    dsub = data.add_subparsers(
        dest="data_command", required=True, metavar="ACTION", help="fetch or info"
    )
    for name, text in (
        ("fetch", "download a dataset if needed and verify its checksums"),
        ("info", "where a dataset's files are, their sizes and class counts (never downloads)"),
    ):
        p = command(name, text, dsub)
        p.add_argument("name", choices=("mnist", "cifar10"), help="dataset name")
        _add_data_options(p, downloads=name == "fetch")

    p = command("train")
    _add_train_options(p)
    p.add_argument(
        "--out",
        dest="out_dir",
        required=True,
        type=_path,
        metavar="DIR",
        help="output folder; an unfinished run there resumes",
    )
    _add_run_options(p)

    p = command("kernel")
    _add_kernel_options(p)

    _add_analysis_commands(command)

    p = command("dynamics")
    p.add_argument(
        "--runs", nargs="+", type=_path, required=True, metavar="RUN", help="training run folders"
    )
    p.add_argument(
        "--clusters",
        type=_path,
        metavar="CSV",
        help="per_sample.csv of lpntk analyze on the same samples: adds the share of the 10%% "
        "easiest samples in the largest cluster (default: none)",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=_path, metavar="DIR", help="output folder"
    )
    _add_data_options(p, downloads=False)

    p = command("experiment1")
    p.add_argument(
        "--classes", type=int, nargs="+", default=[0, 1, 2, 3], metavar="C", help="MNIST digits"
    )
    p.add_argument(
        "--per-class", type=_positive_int, default=500, help="random samples of each class"
    )
    p.add_argument(
        "--sizes",
        type=_positive_int,
        nargs="+",
        default=[1, 5, 10, 40, 200, 1000],
        metavar="X",
        help="subset sizes (each must divide N)",
    )
    p.add_argument("--split-seeds", type=_positive_int, default=3, help="random splits per size")
    p.add_argument("--epochs", type=_positive_int, default=100, help="gradient steps (full batch)")
    p.add_argument("--lr", type=_positive_float, default=0.1, help="learning rate")
    p.add_argument(
        "--widths",
        type=_positive_int,
        nargs=2,
        default=[256, 128],
        metavar="W",
        help="MLP hidden widths",
    )
    p.add_argument(
        "--mode",
        default="full_batch",
        choices=("full_batch", "per_sample"),
        help="one step per epoch on the whole (sub)set, or one per sample (Alg. 1)",
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed of the samples and the initial model"
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=_path, metavar="DIR", help="output folder"
    )
    _add_quiet_options(p)

    p = command("predict-forgetting")
    _add_train_options(p, one_run=False)
    p.set_defaults(lr=5e-4, momentum=0.0, weight_decay=0.0, schedule="none", epochs=20)
    p.add_argument("--seeds", type=int, default=10, help="training runs (seeds 0..S-1)")
    p.add_argument(
        "--iterations", type=int, default=30, help="plain SGD steps tracked after the training"
    )
    p.add_argument(
        "--tracked", type=int, default=1280, help="random training samples tracked (10 x 128)"
    )
    p.add_argument(
        "--window-lr",
        type=float,
        help="size of the tracked SGD steps (default: --lr, the training's own steps)",
    )
    p.add_argument(
        "--regime",
        choices=("plain", "public"),
        default="plain",
        help="plain: exact plain SGD steps, --tracked random samples (the paper's text); public: "
        "SGD momentum 0.9 steps, each step's previous batch tracked (the paper's public code; "
        "Eq. 1 ignores the momentum, so its F1 is a real test)",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=_path, metavar="DIR", help="output folder"
    )
    _add_run_options(p)

    p = command("theorem1")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"), help="samples")
    p.add_argument(
        "--widths",
        type=_positive_int,
        nargs="+",
        default=[64, 256, 1024, 4096],
        metavar="W",
        help="widths of the last hidden layer",
    )
    p.add_argument(
        "--seeds", type=_positive_int, default=3, help="networks per width (seeds 0..S-1)"
    )
    p.add_argument(
        "--pairs", type=_positive_int, default=100, help="random sample pairs per network"
    )
    p.add_argument(
        "--hidden", type=_positive_int, default=512, help="width of the first hidden layer"
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=_path, metavar="DIR", help="output folder"
    )
    _add_quiet_options(p)

    p = command("reproduce")
    from .models import MODELS
    from .reproduce import CLAIMS, SEEDS, SETTINGS

    p.add_argument("claim", choices=(*CLAIMS, "all"), help="what to reproduce")
    p.add_argument(
        "--dataset",
        default="mnist",
        type=_dataset,
        help="mnist, cifar10, or a folder of MNIST-format IDX files",
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        help="architecture (default: lenet5; resnet18 on cifar10)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="runs per claim (default: " + ", ".join(f"{c} {n}" for c, n in SEEDS.items()) + ")",
    )
    p.add_argument(
        "--setting",
        choices=SETTINGS,
        default="paper",
        help="paper: the paper's text (LeNet-5 on MNIST, its recipe); public: the paper's "
        "public code's network (mnist_cnn, 1.2M parameters) and recipe (SGD 0.1, momentum 0.9, "
        "StepLR 2 x 0.7, 30 epochs), MNIST-format data only; its Table 1 window starts from "
        "that training at 1e-3, and theorem1 and fig1 (their own MLPs) are the paper "
        "setting's. Either way the checkpoint is chosen on a validation split, never on the "
        "test set. On a GPU: lpntk reproduce all --setting public --device cuda",
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help="sized for a CPU, always labelled reduced: CIFAR-10 with 2,000 training and 2,000 "
        "test images, ResNet-18 of width 8, 10 epochs, a 256-sample 10-step Table 1 window; "
        "--setting public with 10,000 training images, 6 epochs and a 256-sample 10-step "
        "window (default: the full setting)",
    )
    p.add_argument("--train-size", type=int, metavar="N", help="train on N samples (default: all)")
    p.add_argument("--epochs", type=int, help="epochs of every training (default: the setting's)")
    p.add_argument(
        "--out",
        dest="out_dir",
        type=_path,
        metavar="DIR",
        help="output folder (default: runs/reproduce/DATASET-MODEL-HASH of the whole setting)",
    )
    _add_proj_dim_option(p)
    _add_run_options(p)

    p = command("report")
    p.add_argument("folder", type=_path, help="a folder written by lpntk (reproduce, demo, ...)")
    p.add_argument(
        "--out", type=_path, metavar="FILE", help="the page (default: FOLDER/report.html)"
    )

    p = command("demo")
    p.add_argument(
        "--out",
        dest="out_dir",
        default="runs/demo",
        type=_path,
        metavar="DIR",
        help="output folder",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="training runs per set in the comparison (>= 2)"
    )
    _add_run_options(p)
    return parser


def run(args) -> int:
    """Run the command of ``args``; on a Dask cluster when ``--scheduler`` or ``--workers``
    asks for one."""
    if args.command == "prune":  # options that do not fit: before a cluster or any data
        args.prune_parameters = _prune_parameters(args)
    if getattr(args, "device", None) is not None:  # a device no step of the command uses, too
        from ._device import resolve_device

        resolve_device(args.device)
    from .kernel.distributed import close, connect

    client = connect(getattr(args, "scheduler", None), getattr(args, "workers", None))
    try:
        return _run(args, client)
    finally:
        close(client)


def _run(args, client) -> int:
    progress = not getattr(args, "no_progress", True)
    if args.command == "data":
        from .data import dataset_info, fetch

        if args.data_command == "fetch":
            print(f"{args.name}: files verified in {fetch(args.name, args.data_dir)}")
        else:
            print(json.dumps(dataset_info(args.name, args.data_dir), indent=2, default=str))
    elif args.command == "train":
        from .training import run_training, summary

        result = run_training(
            _train_config(args),
            args.out_dir,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
        )
        print(summary(result))
    elif args.command == "kernel":
        from .kernel_stage import describe, kernel_from_checkpoint

        result = kernel_from_checkpoint(
            args.checkpoint,
            args.out_dir,
            kind=args.kind,
            split=args.split,
            dataset=args.dataset,
            strategy=args.strategy,
            limit=args.limit,
            against=args.against,
            against_limit=args.against_limit,
            top_k=args.top_k,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
            proj_dim=args.proj_dim,
            projection=args.projection,
            seed=args.seed,
            dtype=args.dtype,
            batch_size=args.batch_size,
            client=client,
        )
        print(describe(result, args.out_dir))
    elif args.command == "analyze":
        from .analysis_stage import analyze_checkpoint

        s = analyze_checkpoint(
            args.checkpoint,
            args.out_dir,
            split=args.split,
            limit=args.limit,
            one_sided=args.one_sided,
            within_class=args.within_class,
            t=args.t,
            eps=args.eps,
            relationships=args.relationships,
            clusters=args.clusters,
            measure=args.measure,
            per_class=args.per_class,
            data_dir=args.data_dir,
            progress=progress,
            proj_dim=args.proj_dim,
            client=client,
        )
        print(
            f"{s['n']} samples: {s['redundant_fraction']:.1%} redundant; {s['clusters']} "
            f"clusters, the largest {s['largest_cluster_share']:.1%} of the samples: "
            f"per_sample.csv, clusters.json, cluster_sizes.png in {args.out_dir}"
        )
    elif args.command == "label-issues":
        from .analysis_stage import label_issues_checkpoint

        s = label_issues_checkpoint(
            args.checkpoint,
            args.out_dir,
            split=args.split,
            limit=args.limit,
            k=args.neighbours,
            design=args.design,
            top=args.top,
            data_dir=args.data_dir,
            progress=progress,
            client=client,
        )
        first = s["table"][0]
        print(
            f"{s['n']} samples scored; the most suspect: #{first['index']} labelled "
            f"{first['label']}, suggested {first['suggested']}: per_sample.csv, "
            f"label_issues.png, summary.json in {args.out_dir}"
        )
    elif args.command == "prune":
        from .analysis_stage import prune_checkpoint

        pruned = prune_checkpoint(
            args.checkpoint,
            args.out_dir,
            args.strategy,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
            proj_dim=args.proj_dim,
            client=client,
            analysis_dir=args.analysis_dir,
            **args.prune_parameters,
        )
        m = pruned.manifest
        print(f"kept {m['kept']} of {m['n']} ({args.strategy}): kept.npy in {args.out_dir}")
    elif args.command == "compare":
        from .analysis_stage import compare_checkpoint

        c = compare_checkpoint(
            args.checkpoint,
            args.pruned,
            args.out_dir,
            seeds=args.seeds,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
            equal=args.equal,
        )
        for row in c.summary:
            p = f", Welch p = {row['welch_p']:.3g}" if "welch_p" in row else ""
            print(f"{row['subset']}: test accuracy {row['mean']:.4f} +- {row['std']:.4f}{p}")
        print(f"summary.csv, runs.csv, accuracy.png in {args.out_dir}")
    elif args.command == "dynamics":
        from .dynamics import write_dynamics

        s = write_dynamics(args.runs, args.out_dir, args.clusters, data_dir=args.data_dir)
        easy = s.get("easy_in_largest_cluster")
        note = (
            f"; {easy['share_in_largest']:.1%} of the 10% easiest in the largest cluster "
            f"(chance {easy['expected_share']:.1%}, p = {easy['p_value']:.3g})"
            if easy
            else ""
        )
        print(
            f"{s['n']} samples over {len(s['runs'])} runs: {s['unforgettable_share']:.1%} "
            f"never forgotten, {s['never_learned_share']:.1%} never learned{note}: "
            f"per_sample.csv, summary.json in {args.out_dir}"
        )
    elif args.command == "experiment1":
        from .data import load_dataset
        from .difficulty import experiment1, per_class_subset

        data = load_dataset("mnist", "train", args.data_dir)
        try:
            data = data.filter_classes(args.classes)
        except ConfigError as e:
            raise ConfigError(e.message, param="classes") from None
        if args.per_class < 1:
            raise ConfigError(f"expected at least 1; got {args.per_class}", param="per_class")
        data = per_class_subset(data, args.per_class, seed=args.seed)
        r = experiment1(
            data,
            sizes=args.sizes,
            split_seeds=range(args.split_seeds),
            epochs=args.epochs,
            lr=args.lr,
            widths=args.widths,
            mode=args.mode,
            seed=args.seed,
            out_dir=args.out_dir,
            progress=progress,
        )
        rhos = ", ".join(f"X={k}: {v['mean']:.3f}" for k, v in r["rho"].items())
        print(f"Pearson rho, whole set against subsets: {rhos}; results.json in {args.out_dir}")
    elif args.command == "predict-forgetting":
        from .prediction import forgetting_prediction

        if args.seeds < 1:
            raise ConfigError(f"expected at least 1 seed; got {args.seeds}", param="seeds")
        r = forgetting_prediction(
            _train_config(args),
            seeds=range(args.seeds),
            iterations=args.iterations,
            tracked=args.tracked,
            window_lr=args.window_lr,
            regime=args.regime,
            out_dir=args.out_dir,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
        )
        scores = "; ".join(
            f"{v} F1 {r[v]['f1']['mean']:.3f}" if "f1" in r[v] else f"{v} F1 undefined"
            for v in ("entk", "entk_softmax", "lpntk", "pntk", "margin", "margin_oracle")
        )
        print(
            f"{sum(r['events'])} forgetting events over {len(r['seeds'])} seeds; {scores}: "
            f"results.json, per_seed.csv, prediction.png in {args.out_dir}"
        )
    elif args.command == "theorem1":
        from .data import load_dataset
        from .theorem import theorem1

        if args.seeds < 1:
            raise ConfigError(f"expected at least 1 seed; got {args.seeds}", param="seeds")
        r = theorem1(
            load_dataset(args.dataset, "train", args.data_dir),
            widths=args.widths,
            seeds=range(args.seeds),
            pairs=args.pairs,
            hidden=args.hidden,
            out_dir=args.out_dir,
            progress=progress,
        )
        print(
            f"slope of ||kappa I - K||_F / sqrt(w) against w: {r['scaled_slope']:.3f} "
            f"(Theorem 1: -1/2 or steeper); relative gap {r['relative_slope']:.3f}: "
            f"results.json, theorem1.png in {args.out_dir}"
        )
    elif args.command == "reproduce":
        from .report import build_report
        from .reproduce import Reproduction, setup

        s = setup(
            args.dataset,
            args.model,
            args.reduced,
            args.train_size,
            args.epochs,
            args.proj_dim,
            args.setting,
        )
        r = Reproduction(s, args.out_dir, args.data_dir, args.device, progress)
        results = r.run(args.claim, args.seeds)
        done = results if args.claim == "all" else {args.claim: results}
        for claim, res in done.items():
            if "error" in res:
                print(f"{claim}: not run: {res['error']}")
            else:
                verdict = res.get("verdict", {}).get("verdict")
                note = f"{verdict}; " if verdict else ""
                print(f"{claim}: {note}{res['seconds']} s, {r.root / claim / 'table.md'}")
        if any("error" not in res for res in done.values()):
            print(f"report: {build_report(r.root)}")
        if any("error" in res for res in done.values()):
            return 1
    elif args.command == "report":
        from .report import build_report

        print(f"report: {build_report(args.folder, args.out)}")
    elif args.command == "demo":
        from .pipeline import run_demo

        summary = run_demo(
            args.out_dir,
            seeds=args.seeds,
            data_dir=args.data_dir,
            device=args.device,
            progress=progress,
        )
        print(f"results in {args.out_dir}; report: {summary['report']}")
    return 0


def _flag(parser: argparse.ArgumentParser | None, param: str | None) -> str | None:
    """The option string of the command's argument stored as ``param``."""
    for action in parser._actions if parser is not None and param else ():
        if action.dest == param:
            return action.option_strings[0] if action.option_strings else action.dest
    return None


def _message(e: BaseException, parser) -> str:
    if isinstance(e, LpntkError):
        text = e.render(lambda name: _flag(parser, name) or name)
        flag = _flag(parser, e.param)
        return f"argument {flag}: {text}" if flag else (f"{e.param}: {text}" if e.param else text)
    if isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("alloc" in str(e) or "out of memory" in str(e))
    ):
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return (
            f"out of memory ({first}); ask for less: fewer samples (--limit), a smaller "
            "--batch-size, --top-k or --proj-dim"
        )
    if isinstance(e, OSError):  # the user's files or disk: permissions, a file where a folder was
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}"
    return (
        f"unexpected {type(e).__name__}: {e}. This is a bug in lpntk; run again with --debug "
        "(or LPNTK_DEBUG=1) and report the traceback"
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # building the parser imports torch: Ctrl-C may come already
        if not any(a in COMMANDS for a in argv):
            _fast_answer(argv)
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("lpntk: interrupted", file=sys.stderr)
        return 130
    debug = getattr(args, "debug", False) or _env_debug()
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return run(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        saved = f"{e}; " if str(e) else ""
        again = "start over" if args.command in STARTS_OVER else "resume"
        print(f"lpntk: interrupted: {saved}run the same command again to {again}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        message = " ".join(_message(e, getattr(args, "parser", None)).split())  # one line
        print(f"lpntk: error: {message}", file=sys.stderr)
        return e.exit_code if isinstance(e, LpntkError) else 1


def entry() -> int:
    """The ``lpntk`` command: :func:`main`, then Ctrl-C is ignored while the interpreter shuts
    down (seconds under load, with torch loaded): the command has finished, saved and printed
    its result, and its exit status says so (a SIGINT there ended it with -2 and no message).
    An interrupted command leaves with 130 at once: CPython exits with -2 instead when the
    Ctrl-C landed in code run by ``exec`` (a dataclass being made, during an import), even
    though lpntk caught it; everything was saved and flushed by then."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


def _env_debug() -> bool:
    return os.environ.get("LPNTK_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"lpntk: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(entry())
