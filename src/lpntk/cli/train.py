"""``lpntk train``: its options and its handler (train a classifier)."""

from __future__ import annotations

from ._options import add_run_options, add_train_options, path_arg, train_config


def add_options(p) -> None:
    add_train_options(p)
    p.add_argument(
        "--out",
        dest="out_dir",
        required=True,
        type=path_arg,
        metavar="DIR",
        help="output folder; an unfinished run there resumes",
    )
    add_run_options(p)


def run(args, client, progress: bool) -> int:
    from ..training import run_training, summary

    result = run_training(
        train_config(args),
        args.out_dir,
        data_dir=args.data_dir,
        device=args.device,
        progress=progress,
    )
    print(summary(result))
    return 0
