"""``lpntk prune``: its options and its handler (a pruned training set of a checkpoint)."""

from __future__ import annotations

from .._errors import ConfigError, LpntkError
from ._options import (
    add_checkpoint_options,
    add_cluster_options,
    add_proj_dim_option,
    add_run_options,
    count_or_fraction,
    path_arg,
    seed_arg,
)

PRUNE_OPTIONS = {  # the options of each pruning strategy
    "redundant": ("kind", "rule", "one_sided", "within_class", "size"),
    "redundant_head": (
        "kind",
        "fraction",
        "clusters",
        "rule",
        "seed",
        "per_class",
        "one_sided",
        "within_class",
        "redundant",
    ),
    "head_budget": ("kind", "budget", "clusters", "seed", "per_class"),
    "random": ("size", "seed"),
    "el2n": ("size", "score_seeds", "score_epochs"),
    "forgetting": ("size", "score_seeds"),
}


def add_options(p) -> None:
    from ..analysis import RULES
    from ..prune import STRATEGIES

    add_checkpoint_options(p)
    p.add_argument("--strategy", required=True, choices=STRATEGIES, help="how to prune")
    p.add_argument(
        "--kind", choices=("lpntk", "pntk"), help="the kernel of the strategy (default: lpntk)"
    )
    p.add_argument("--rule", choices=RULES, help="redundant samples to drop (default: cover)")
    p.add_argument("--one-sided", action="store_true", help="see analyze (default: off)")
    p.add_argument(
        "--across-classes",
        action="store_true",
        help="redundancy against every class (default: within each class; see analyze)",
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="redundant_head, head_budget: cluster each class apart and use each class's own "
        "largest cluster, budgets balanced per class (the paper's public code; default: off)",
    )
    p.add_argument(
        "--keep-redundant",
        action="store_true",
        help="redundant_head: drop only from the largest cluster(s), no redundant samples "
        "first (the paper's public code, with --fraction 0.5 --per-class)",
    )
    p.add_argument(
        "--fraction", type=float, help="share of the largest cluster dropped (default: 0.1)"
    )
    p.add_argument("--budget", type=float, help="head_budget: fraction of N to keep (no default)")
    p.add_argument(
        "--clusters",
        type=count_or_fraction,
        metavar="M",
        help="centroids: a count or a fraction of N (default: 0.1)",
    )
    p.add_argument(
        "--size",
        type=int,
        help="random, el2n, forgetting: samples to keep (no default); redundant: keep exactly "
        "this many, the most redundant dropped first (default: all that the rule drops)",
    )
    p.add_argument("--seed", type=seed_arg, help="seed of the random choices (default: 0)")
    p.add_argument(
        "--score-seeds",
        type=int,
        metavar="S",
        help="el2n, forgetting: scoring runs, seeds 0..S-1, averaged (default: 5)",
    )
    p.add_argument(
        "--score-epochs",
        type=int,
        metavar="E",
        help="el2n: epochs of each scoring run, at a constant learning rate (default: 2)",
    )
    p.add_argument(
        "--analysis",
        dest="analysis_dir",
        type=path_arg,
        metavar="DIR",
        help="a folder written by lpntk analyze on this checkpoint: its features and "
        "redundancy search are reused instead of computed again (default: computed here)",
    )
    add_proj_dim_option(p)
    add_cluster_options(p)
    add_run_options(p)


def check(args) -> None:
    """The strategy's parameters from the options, or a usage error naming the ones that do
    not apply."""
    args.prune_parameters = prune_parameters(args)


def run(args, client, progress: bool) -> int:
    from ..analysis_stage import prune_checkpoint

    pruned = prune_checkpoint(
        args.checkpoint,
        args.out_dir,
        args.strategy,
        data_dir=args.data_dir,
        device=args.device,
        progress=progress,
        proj_dim=args.proj_dim,
        client=client,
        analysis_dir=args.analysis_dir,
        **args.prune_parameters,
    )
    m = pruned.manifest
    print(f"kept {m['kept']} of {m['n']} ({args.strategy}): kept.npy in {args.out_dir}")
    return 0


def prune_parameters(args) -> dict:
    allowed = PRUNE_OPTIONS[args.strategy]
    given = {
        "rule": args.rule,
        "one_sided": args.one_sided or None,
        "within_class": False if args.across_classes else None,
        "per_class": args.per_class or None,
        "redundant": False if args.keep_redundant else None,
        "fraction": args.fraction,
        "budget": args.budget,
        "clusters": args.clusters,
        "size": args.size,
        "seed": args.seed,
        "kind": args.kind,
        "score_seeds": args.score_seeds,
        "score_epochs": args.score_epochs,
    }
    needs = {"random": "size", "el2n": "size", "forgetting": "size", "head_budget": "budget"}
    needs = needs.get(args.strategy)
    if needs and given[needs] is None:
        raise ConfigError(
            f"strategy {args.strategy} needs {{{needs}}}", param="strategy", mentions=[needs]
        )
    extra = [k for k, v in given.items() if v is not None and k not in allowed]
    if extra:
        raise LpntkError(
            f"{', '.join('{' + k + '}' for k in extra)} does not apply to strategy "
            f"{args.strategy}; its options: {', '.join('{' + k + '}' for k in allowed)}",
            mentions=[*extra, *allowed],
        ).as_usage()
    if "within_class" in allowed and given["within_class"] is None:
        given["within_class"] = given["redundant"] is not False  # the default: within class
    return {k: v for k, v in given.items() if v is not None}
