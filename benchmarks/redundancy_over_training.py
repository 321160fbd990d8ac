"""Redundant fractions over training (issue 7, item 3): prints a markdown table.

    lpntk train --keep-epochs --out runs/keep15            # LeNet-5, MNIST, seed 0, 15 epochs
    python benchmarks/redundancy_over_training.py --run runs/keep15 --epochs 1 5 15

For each listed epoch's checkpoint, the exact lpNTK of all 60,000 MNIST training images is
computed and the fraction of redundant samples (kappa(x, x') > kappa(x, x) for some x' != x) is
reported for the two-sided and the one-sided (public code) comparison, over the whole set and
within each class, with the fraction the ``cover`` rule would drop. ``--samples run``: the run's
own training samples instead (e.g. the public code's network on 10,000 images:

    lpntk train --model mnist_cnn --lr 0.1 --schedule step --epochs 30 --train-size 10000 \
        --keep-epochs --out runs/cnn30
    python benchmarks/redundancy_over_training.py --run runs/cnn30 --epochs 1 5 15 30 \
        --samples run
)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lpntk import load_checkpoint
from lpntk.analysis import drop_redundant, redundant_samples
from lpntk.data import load_dataset
from lpntk.kernel import compute_features
from lpntk.kernel_stage import checkpoint_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a training run made with --keep-epochs")
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 15])
    ap.add_argument("--out", default="runs/bench/redundancy", help="feature stores go here")
    ap.add_argument(
        "--samples",
        choices=("all", "run"),
        default="all",
        help="all: the 60,000 MNIST training images; run: the run's own training samples",
    )
    args = ap.parse_args()
    if args.samples == "all":
        data = load_dataset("mnist", "train")
    else:
        _, ckpt = load_checkpoint(Path(args.run) / "last.pt")
        data = checkpoint_data(ckpt, "train")
    print("| epoch | comparison | set | redundant | dropped by cover | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for epoch in args.epochs:
        model, _ = load_checkpoint(Path(args.run) / "checkpoints" / f"epoch_{epoch:03d}.pt")
        feats = compute_features(
            model, data, "lpntk", out_dir=Path(args.out) / f"epoch_{epoch}", progress=False
        )
        for one_sided in (False, True):
            for within in (False, True):
                t = time.perf_counter()
                red = redundant_samples(feats, one_sided, within, progress=False)
                dropped = 1 - drop_redundant(red, "cover").mean()
                print(
                    f"| {epoch} | {'one' if one_sided else 'two'}-sided | "
                    f"{'within class' if within else 'whole set'} | {red.fraction:.1%} | "
                    f"{dropped:.1%} | {time.perf_counter() - t:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
