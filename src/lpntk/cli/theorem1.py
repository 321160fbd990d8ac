"""``lpntk theorem1``: its options and its handler (Theorem 1 at initialisation)."""

from __future__ import annotations

from ._options import add_quiet_options, path_arg, positive_int


def add_options(p) -> None:
    p.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"), help="samples")
    p.add_argument(
        "--widths",
        type=positive_int,
        nargs="+",
        default=[64, 256, 1024, 4096],
        metavar="W",
        help="widths of the last hidden layer",
    )
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="networks per width (seeds 0..S-1)"
    )
    p.add_argument(
        "--pairs", type=positive_int, default=100, help="random sample pairs per network"
    )
    p.add_argument(
        "--hidden", type=positive_int, default=512, help="width of the first hidden layer"
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=path_arg, metavar="DIR", help="output folder"
    )
    add_quiet_options(p)


def run(args, client, progress: bool) -> int:
    from ..data import load_dataset
    from ..theorem import theorem1

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
    return 0
