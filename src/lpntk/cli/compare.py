"""``lpntk compare``: its options and its handler.

Retrain on the full set and pruned sets over seeds.
"""

from __future__ import annotations

from ._options import add_checkpoint_options, add_run_options, path_arg


def add_options(p) -> None:
    add_checkpoint_options(p)
    p.add_argument(
        "--pruned",
        nargs="+",
        type=path_arg,
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
    add_run_options(p)


def run(args, client, progress: bool) -> int:
    from ..analysis_stage import compare_checkpoint

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
    return 0
