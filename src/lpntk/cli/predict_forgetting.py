"""``lpntk predict-forgetting``: its options and its handler.

Forgetting events predicted by the kernels (Sec. 3.3).
"""

from __future__ import annotations

from .._errors import ConfigError
from ._options import add_run_options, add_train_options, path_arg, train_config


def add_options(p) -> None:
    add_train_options(p, one_run=False)
    p.set_defaults(lr=5e-4, momentum=0.0, weight_decay=0.0, schedule="none", epochs=20)
    p.add_argument("--seeds", type=int, default=10, help="training runs (seeds 0..S-1)")
    p.add_argument(
        "--iterations", type=int, default=30, help="plain SGD steps tracked after the training"
    )
    p.add_argument(
        "--tracked", type=int, default=1280, help="random training samples tracked (10 x 128)"
    )
    p.add_argument(
        "--window-lr",
        type=float,
        help="size of the tracked SGD steps (default: --lr, the training's own steps)",
    )
    p.add_argument(
        "--regime",
        choices=("plain", "public"),
        default="plain",
        help="plain: exact plain SGD steps, --tracked random samples (the paper's text); public: "
        "SGD momentum 0.9 steps, each step's previous batch tracked (the paper's public code; "
        "Eq. 1 ignores the momentum, so its F1 is a real test)",
    )
    p.add_argument(
        "--out", dest="out_dir", required=True, type=path_arg, metavar="DIR", help="output folder"
    )
    add_run_options(p)


def run(args, client, progress: bool) -> int:
    from ..prediction import forgetting_prediction

    if args.seeds < 1:
        raise ConfigError(f"expected at least 1 seed; got {args.seeds}", param="seeds")
    r = forgetting_prediction(
        train_config(args),
        seeds=range(args.seeds),
        iterations=args.iterations,
        tracked=args.tracked,
        window_lr=args.window_lr,
        regime=args.regime,
        out_dir=args.out_dir,
        data_dir=args.data_dir,
        device=args.device,
        progress=progress,
    )
    scores = "; ".join(
        f"{v} F1 {r[v]['f1']['mean']:.3f}" if "f1" in r[v] else f"{v} F1 undefined"
        for v in ("entk", "entk_softmax", "lpntk", "pntk", "margin", "margin_oracle")
    )
    print(
        f"{sum(r['events'])} forgetting events over {len(r['seeds'])} seeds; {scores}: "
        f"results.json, per_seed.csv, prediction.png in {args.out_dir}"
    )
    return 0
