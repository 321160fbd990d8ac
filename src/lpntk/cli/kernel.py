"""``lpntk kernel``: its options and its handler (the kernel of a checkpoint)."""

from __future__ import annotations

from ._options import add_cluster_options, add_run_options, path_arg, seed_arg


def add_options(p) -> None:
    _add_samples(p)
    _add_computation(p)
    add_cluster_options(p)
    add_run_options(p)


def _add_samples(p) -> None:
    """The checkpoint, the output and which samples (and partners) the kernel is of."""
    from ..data import DATASETS
    from ..kernel import KINDS
    from ..kernel_stage import SPLITS

    p.add_argument(
        "--checkpoint",
        required=True,
        type=path_arg,
        metavar="PATH",
        help="a training run's folder (its best.pt) or any checkpoint it wrote: best.pt, "
        "last.pt, checkpoints/epoch_NNN.pt",
    )
    p.add_argument(
        "--out",
        dest="out_dir",
        required=True,
        type=path_arg,
        metavar="DIR",
        help="output folder (resumes)",
    )
    p.add_argument(
        "--kind",
        default="lpntk",
        choices=tuple(KINDS),
        help="lpntk: s(y)^T dz/dw (Eq. 3); pntk: all-ones; loss: the cross-entropy gradient; "
        "entk: the full K x K eNTK blocks",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=SPLITS,
        help="train/val: the checkpoint's own training/validation samples; test: the test set",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="take the split from this dataset instead (default: the checkpoint's dataset)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples (default: all)")
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="also write neighbours.csv: each sample's K most similar and K least similar "
        "(most contradictory) other samples; 0: none",
    )
    p.add_argument(
        "--against",
        choices=SPLITS,
        help="also the cross kernel split x AGAINST (e.g. --split test --against train) in "
        "cross_kernel.npy; neighbours are then taken from AGAINST (default: none)",
    )
    p.add_argument(
        "--against-limit",
        type=int,
        metavar="N",
        help="only the first N samples of --against (default: all)",
    )


def _add_computation(p) -> None:
    """How the per-sample gradients are computed and kept."""
    from ..kernel import PROJECTIONS, STRATEGIES

    p.add_argument(
        "--strategy",
        default="auto",
        choices=STRATEGIES,
        help="how per-sample gradients are kept; all exact but projected (auto: factored, "
        "materialised for models that do not factor, projected with --proj-dim)",
    )
    p.add_argument(
        "--proj-dim",
        type=int,
        metavar="P",
        help="random projection to P dimensions (projected strategy; default: none)",
    )
    p.add_argument(
        "--projection",
        default="rademacher",
        choices=PROJECTIONS,
        help="random matrix of the projected strategy",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the random projection")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="feature precision"
    )
    p.add_argument("--batch-size", type=int, default=128, help="samples per backward pass")


def run(args, client, progress: bool) -> int:
    from ..kernel_stage import describe, kernel_from_checkpoint

    result = kernel_from_checkpoint(
        args.checkpoint,
        args.out_dir,
        kind=args.kind,
        split=args.split,
        dataset=args.dataset,
        strategy=args.strategy,
        limit=args.limit,
        against=args.against,
        against_limit=args.against_limit,
        top_k=args.top_k,
        data_dir=args.data_dir,
        device=args.device,
        progress=progress,
        proj_dim=args.proj_dim,
        projection=args.projection,
        seed=args.seed,
        dtype=args.dtype,
        batch_size=args.batch_size,
        client=client,
    )
    print(describe(result, args.out_dir))
    return 0
