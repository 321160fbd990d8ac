"""Analysis benchmarks on all 60,000 MNIST training images: prints a markdown table (recorded in
docs/BENCHMARKS.md).

    python benchmarks/analysis.py --checkpoint runs/demo/train     # LeNet-5 of `lpntk demo`
    python benchmarks/analysis.py --checkpoint RUN --clusters 6000 --skip-variants
    python benchmarks/analysis.py --checkpoint RUN --measures lpntk metric cosine --plain

The exact lpNTK features of every training image are computed with the checkpoint, then timed:
redundant samples (two-sided, one-sided, within class; with --plain also without the per-piece
Cauchy-Schwarz bound, to show what it saves) and farthest point clustering with M = --clusters
centroids for each of --measures (Alg. 3 with lpNTK similarity; the kernel distance; cosine).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from lpntk import load_checkpoint
from lpntk._io import write_json
from lpntk.analysis import (
    cluster_stats,
    drop_redundant,
    farthest_point_clusters,
    redundancy,
    redundant_samples,
)
from lpntk.data import load_dataset
from lpntk.kernel import compute_features, ops


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    ap.add_argument("--clusters", type=int, default=6000, help="M for farthest point clustering")
    ap.add_argument("--out", default="runs/bench/analysis-features", help="feature store folder")
    ap.add_argument("--skip-variants", action="store_true", help="two-sided redundancy only")
    ap.add_argument("--plain", action="store_true", help="also without the per-piece bound")
    ap.add_argument("--measures", nargs="+", default=["lpntk"], help="clustering measures")
    args = ap.parse_args()
    model, _ = load_checkpoint(args.checkpoint)
    data = load_dataset("mnist", "train")
    feats, t_feat = timed(
        compute_features, model, data, "lpntk", out_dir=Path(args.out), progress=False
    )
    rows = [("features (60,000 samples)", t_feat, "")]
    variants = [("two-sided", {})]
    if not args.skip_variants:
        variants += [("one-sided", {"one_sided": True}), ("within class", {"within_class": True})]
    red_by_name = {}
    for name, kw in variants:
        red, t = timed(redundant_samples, feats, progress=False, **kw)
        red_by_name[name] = red
        cover = drop_redundant(red, "cover")
        rows.append(
            (
                f"redundant samples, {name}",
                t,
                f"{red.fraction:.1%} redundant; cover rule keeps {cover.mean():.1%}",
            )
        )
    if args.plain:  # the same search without the bound, then also with the former blocks
        two_sided = red_by_name["two-sided"].witness
        plan, cpu_block = ops.bound_plan, redundancy.CPU_BLOCK
        ops.bound_plan = lambda X, norms: []  # every piece computed in every block
        for what, rows_per_block in (("1,024", cpu_block), ("8,192 (before)", 8192)):
            redundancy.CPU_BLOCK = rows_per_block
            red_plain, t = timed(redundant_samples, feats, progress=False)
            same = np.array_equal(red_plain.witness, two_sided)
            rows.append(
                (
                    f"redundant samples, two-sided, no per-piece bound, {what}-row blocks",
                    t,
                    f"{red_plain.fraction:.1%} redundant; same witnesses: {same}",
                )
            )
        ops.bound_plan, redundancy.CPU_BLOCK = plan, cpu_block
    for measure in args.measures:
        clusters, t = timed(farthest_point_clusters, feats, args.clusters, measure, progress=False)
        s = cluster_stats(clusters, feats.labels)
        write_json(Path(args.out).parent / f"fpc-{measure}-{args.clusters}.json", s)
        sizes = np.asarray(s["sizes_sorted"])
        top10 = sizes[:10].sum() / feats.n
        rows.append(
            (
                f"farthest point clustering ({measure}), M = {args.clusters}",
                t,
                f"largest {sizes[0]} ({sizes[0] / feats.n:.1%}), 10 largest {top10:.1%}, "
                f"singletons {s['singletons']}, median size {np.median(sizes):.0f}",
            )
        )
    print("| what | seconds | result |\n| --- | --- | --- |")
    for what, seconds, result in rows:
        print(f"| {what} | {seconds:.0f} | {result} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
