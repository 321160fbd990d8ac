"""``lpntk experiment1``: its options and its handler.

Learning difficulty on the whole set against on subsets (Sec. 3.2).
"""

from __future__ import annotations

from .._errors import ConfigError
from ._options import add_quiet_options, path_arg, positive_float, positive_int, seed_arg


def add_options(p) -> None:
    p.add_argument(
        "--classes", type=int, nargs="+", default=[0, 1, 2, 3], metavar="C", help="MNIST digits"
    )
    p.add_argument(
        "--per-class", type=positive_int, default=500, help="random samples of each class"
    )
    p.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=[1, 5, 10, 40, 200, 1000],
        metavar="X",
        help="subset sizes (each must divide N)",
    )
    p.add_argument("--split-seeds", type=positive_int, default=3, help="random splits per size")
    p.add_argument("--epochs", type=positive_int, default=100, help="gradient steps (full batch)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate")
    p.add_argument(
        "--widths",
        type=positive_int,
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
        "--seed", type=seed_arg, default=0, help="seed of the samples and the initial model"
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=path_arg, metavar="DIR", help="output folder"
    )
    add_quiet_options(p)


def run(args, client, progress: bool) -> int:
    from ..data import load_dataset
    from ..difficulty import experiment1, per_class_subset

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
    return 0
