"""``lpntk dynamics``: its options and its handler.

Learning difficulty and forgetting events from logged runs.
"""

from __future__ import annotations

from ._options import add_data_options, path_arg


def add_options(p) -> None:
    p.add_argument(
        "--runs",
        nargs="+",
        type=path_arg,
        required=True,
        metavar="RUN",
        help="training run folders",
    )
    p.add_argument(
        "--clusters",
        type=path_arg,
        metavar="CSV",
        help="per_sample.csv of lpntk analyze on the same samples: adds the share of the 10%% "
        "easiest samples in the largest cluster (default: none)",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=path_arg, metavar="DIR", help="output folder"
    )
    add_data_options(p, downloads=False)


def run(args, client, progress: bool) -> int:
    from ..dynamics import write_dynamics

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
    return 0
