"""``lpntk demo``: its options and its handler (the main job, end to end)."""

from __future__ import annotations

from ._options import add_run_options, path_arg


def add_options(p) -> None:
    p.add_argument(
        "--out",
        dest="out_dir",
        default="runs/demo",
        type=path_arg,
        metavar="DIR",
        help="output folder",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="training runs per set in the comparison (>= 2)"
    )
    add_run_options(p)


def run(args, client, progress: bool) -> int:
    from ..pipeline import run_demo

    summary = run_demo(
        args.out_dir,
        seeds=args.seeds,
        data_dir=args.data_dir,
        device=args.device,
        progress=progress,
    )
    print(f"results in {args.out_dir}; report: {summary['report']}")
    return 0
