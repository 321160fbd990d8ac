"""``lpntk analyze``: its options and its handler.

Redundancy, relationship types and clusters of a checkpoint's lpNTK.
"""

from __future__ import annotations

from ._options import (
    add_checkpoint_options,
    add_cluster_options,
    add_proj_dim_option,
    add_quiet_options,
    count_or_fraction,
)


def add_options(p) -> None:
    from ..analysis import MEASURES
    from ..kernel_stage import SPLITS

    add_checkpoint_options(p)
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
        type=count_or_fraction,
        default=0.1,
        metavar="M",
        help="farthest point clustering centroids: a count, or a fraction of N",
    )
    p.add_argument("--measure", default="lpntk", choices=MEASURES, help="clustering similarity")
    p.add_argument(
        "--per-class", action="store_true", help="cluster each class apart (default: off)"
    )
    add_proj_dim_option(p)
    add_cluster_options(p)
    add_quiet_options(p)


def run(args, client, progress: bool) -> int:
    from ..analysis_stage import analyze_checkpoint

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
    return 0
