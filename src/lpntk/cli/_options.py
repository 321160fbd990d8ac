"""The command line's shared conventions: the help formatter, one-line usage errors, the
argument types and the option groups that several commands share."""

from __future__ import annotations

import argparse
import json
import math

from .._errors import ConfigError


def add_command(parent, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` of ``parent`` (a subparsers action) with ``text`` as its help and
    description, its own --debug, and itself as ``args.parser`` (for the error messages)."""
    p = parent.add_parser(name, help=text, description=text, formatter_class=Formatter)
    p.set_defaults(parser=p)
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error (default: off)",
    )
    return p


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default to its help."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == [])
        shown = shown and default != argparse.SUPPRESS
        if shown and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Usage errors as one line: ``lpntk: error: <what> (see 'lpntk CMD --help')``."""

    def error(self, message):
        self.exit(2, f"lpntk: error: {message} (see '{self.prog} --help')\n")


def model_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def path_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def dataset_arg(text: str) -> str:
    from ..data import DATASETS, is_idx_folder

    if text in DATASETS or is_idx_folder(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(DATASETS)} or a folder of MNIST-format IDX files; got {text!r}"
    )


def class_id(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def add_data_options(p: argparse.ArgumentParser, downloads: bool = True) -> None:
    then = ", then a download into the cache" if downloads else ""
    p.add_argument(
        "--data-dir",
        type=path_arg,
        metavar="DIR",
        help="folder holding the datasets, as DIR/mnist and DIR/cifar10 (default: "
        f"$LPNTK_DATA_DIR, then the user cache{then})",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_data_options(p)
    p.add_argument(
        "--device",
        default="auto",
        help="where to compute: cpu, cuda, cuda:N, or auto (CUDA when available)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown on stderr)"
    )


def add_train_options(p: argparse.ArgumentParser, one_run: bool = True) -> None:
    """The training settings; ``one_run=False`` leaves out those of a single run's folder (seed,
    logs, checkpoints), for commands that train several runs themselves."""
    from ..data import DATASETS
    from ..models import MODELS
    from ..training import OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--dataset",
        default=d.dataset,
        type=dataset_arg,
        help=f"dataset to train on: {', '.join(DATASETS)}, or a folder of MNIST-format IDX files",
    )
    p.add_argument("--model", default=d.model, choices=sorted(MODELS), help="architecture")
    p.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        type=model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model constructor option, repeatable; VALUE is JSON, e.g. batch_norm=false or "
        "'widths=[512,256]' (default: none)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        type=class_id,
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
    if one_run:
        add_run_folder_options(p, d)


def add_run_folder_options(p: argparse.ArgumentParser, d) -> None:
    """A single run's own settings (``d``: the default TrainConfig): its seed, logs,
    checkpoints and the labels flipped on purpose."""
    p.add_argument("--seed", type=seed_arg, default=d.seed, help="seed of every random choice")
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
    add_label_noise_options(p)


def add_label_noise_options(p: argparse.ArgumentParser) -> None:
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
        "--noise-seed", type=seed_arg, help="seed of the flips (with --label-noise) (default: 0)"
    )
    p.add_argument(
        "--noise-pairs",
        nargs="+",
        type=class_pair,
        metavar="FROM:TO",
        help="the confusable pairs of --noise-kind pairs (implied), as class ids (default: "
        "Patrini et al.'s for MNIST and CIFAR-10)",
    )


def class_pair(text: str) -> list[int]:
    try:
        a, b = text.split(":")
        return [int(a), int(b)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FROM:TO class ids, e.g. 2:7; got {text!r}"
        ) from None


def label_noise(args) -> dict | None:
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


def train_config(args):
    from ..training import TrainConfig

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
        label_noise=label_noise(args),
    )


def count_or_fraction(text: str):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a count (1, 2, ...) or a fraction in (0, 1), got {text!r}"
        )
    return int(value) if value >= 1 and value == int(value) and "." not in text else value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed, an integer >= 0; got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        type=path_arg,
        metavar="PATH",
        help="a training run's folder (its best.pt) or any checkpoint it wrote",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=path_arg, metavar="DIR", help="output folder"
    )


def add_proj_dim_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proj-dim",
        type=int,
        metavar="P",
        help="approximate: the kernel from features randomly projected to P dimensions, for "
        "models whose exact features do not fit (default: exact)",
    )


def add_cluster_options(p: argparse.ArgumentParser) -> None:
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


def add_quiet_options(p: argparse.ArgumentParser) -> None:
    add_data_options(p)
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown on stderr)"
    )
