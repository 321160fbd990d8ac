"""``lpntk label-issues``: its options and its handler.

Label-error scores of a checkpoint's samples.
"""

from __future__ import annotations

from ._options import add_checkpoint_options, add_cluster_options, add_quiet_options


def add_options(p) -> None:
    from ..analysis import DESIGNS
    from ..analysis.label_issues import DESIGN, NEIGHBOURS
    from ..kernel_stage import SPLITS

    add_checkpoint_options(p)
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
    add_cluster_options(p)
    add_quiet_options(p)


def run(args, client, progress: bool) -> int:
    from ..analysis_stage import label_issues_checkpoint

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
    return 0
