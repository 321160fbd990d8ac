"""Command line: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys

from ._errors import LpntkError
from .train import TrainConfig


def _model_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _class_id(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help="dataset name (default %(default)s)")
    p.add_argument("--model", default=d.model, help="model name (default %(default)s)")
    p.add_argument(
        "--model-option",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model constructor option, e.g. batch_norm=false",
    )
    p.add_argument("--classes", nargs="+", type=_class_id, help="keep only these classes")
    p.add_argument("--train-size", type=int, help="stratified random subset of the training split")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=("none", "step", "cosine"), default=d.schedule)
    p.add_argument("--step-size", type=int, default=d.step_size, help="epochs between decays")
    p.add_argument("--gamma", type=float, default=d.gamma, help="decay factor of --schedule step")
    p.add_argument("--augment", action="store_true", help="random crop (pad 4) + horizontal flip")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--log-per-sample",
        action="store_true",
        help="record each sample's loss and correctness at every epoch",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="also checkpoint every N steps (default: at epoch ends)",
    )


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        model_options=dict(args.model_option),
        classes=args.classes,
        train_size=args.train_size,
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
        seed=args.seed,
        log_per_sample=args.log_per_sample,
        checkpoint_every=args.checkpoint_every,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="folder holding the datasets (default: $LPNTK_DATA_DIR, "
        "then the user cache, then download)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpntk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch or describe a dataset")
    dsub = data.add_subparsers(dest="data_command", required=True)
    for name, text in (("fetch", "download and verify a dataset"), ("info", "describe a dataset")):
        p = dsub.add_parser(name, help=text)
        p.add_argument("name", help="dataset name: mnist or cifar10")
        p.add_argument("--dir", help="folder to look in / download into")

    p = sub.add_parser("train", help="train a classifier; keep the best-validation checkpoint")
    _add_train_options(p)
    _common(p)
    p.add_argument("--out", required=True, help="output folder (an unfinished run there resumes)")

    p = sub.add_parser("kernel", help="lpNTK / pNTK / eNTK / loss kernel of a checkpoint")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a training run's folder (its best.pt is used) or a checkpoint file",
    )
    p.add_argument("--kind", default="lpntk", choices=("lpntk", "pntk", "entk", "loss"))
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "val", "test"),
        help="train/val: the checkpoint's own samples; test: the test set",
    )
    p.add_argument("--limit", type=int, help="only the first N samples of the split")
    p.add_argument(
        "--strategy", default="auto", choices=("auto", "factored", "materialised", "projected")
    )
    p.add_argument("--proj-dim", type=int, help="projection dimension (projected strategy)")
    p.add_argument("--projection", default="rademacher", choices=("rademacher", "gaussian"))
    p.add_argument("--seed", type=int, default=0, help="seed of the random projection")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", required=True, help="output folder (an unfinished run resumes)")
    _common(p)

    p = sub.add_parser("demo", help="the main job: train and analyse end to end (resumable)")
    _common(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    return parser


def run(args) -> int:
    if args.command == "data":
        from .data import dataset_info, fetch

        if args.data_command == "fetch":
            print(f"{args.name}: files verified in {fetch(args.name, args.dir)}")
        else:
            print(json.dumps(dataset_info(args.name, args.dir), indent=2, default=str))
    elif args.command == "train":
        from .train import run_training, summary

        result = run_training(
            _train_config(args),
            args.out,
            data_dir=args.data_dir,
            device=args.device,
            progress=not args.no_progress,
        )
        print(summary(result))
    elif args.command == "kernel":
        from .kernel.run import kernel_from_checkpoint

        summary = kernel_from_checkpoint(
            args.checkpoint,
            args.out,
            kind=args.kind,
            split=args.split,
            dataset=args.dataset,
            strategy=args.strategy,
            limit=args.limit,
            data_dir=args.data_dir,
            device=args.device,
            progress=not args.no_progress,
            proj_dim=args.proj_dim,
            projection=args.projection,
            seed=args.seed,
            dtype=args.dtype,
            batch_size=args.batch_size,
        )
        print(json.dumps(summary, indent=2))
        print(f"results in {args.out}")
    elif args.command == "demo":
        from .pipeline import run_demo

        run_demo(
            args.out, data_dir=args.data_dir, device=args.device, progress=not args.no_progress
        )
        print(f"results in {args.out}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except LpntkError as e:
        print(f"lpntk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lpntk: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
