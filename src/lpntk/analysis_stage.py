"""The analyses of a trained checkpoint on its data, as files (``lpntk analyze`` / ``prune`` /
``compare``).

``analyze_checkpoint`` writes into ``out_dir``: ``features/`` (the lpNTK feature store, reused
when present), ``per_sample.csv`` (:meth:`SampleKernel.table`: one row per sample in original
order), ``clusters.json`` (cluster statistics), ``cluster_sizes.png`` (log-log rank/size),
image grids ``redundant_pairs.png`` (the most redundant samples beside their witnesses),
``contradictory_pairs.png`` (the pairs with the most negative lpNTK relative to both norms) and
``clusters.png`` (members of the largest clusters and singleton clusters), and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ._errors import ConfigError
from ._io import atomic_path, output_folder, write_json
from .analysis import cluster_stats, plot_cluster_sizes
from .analysis.clustering import cluster_count
from .compare import compare_training
from .kernel import RowTopK, reduce_rows
from .prune import Pruned, write_pruned
from .report import pair_grid, sample_grid
from .samples import SampleKernel
from .training import TrainConfig, load_checkpoint


def _kernel(checkpoint, out_dir: Path, split: str, limit, data_dir, progress):
    """The SampleKernel of a checkpoint's ``split`` samples, and those samples."""
    from .kernel_stage import checkpoint_data, first_samples

    model, ckpt = load_checkpoint(checkpoint)
    data = first_samples(checkpoint_data(ckpt, split, data_dir=data_dir), limit, "limit")
    sk = SampleKernel(model, data, "lpntk", out_dir=out_dir / "features", progress=progress)
    return sk, data


def _pictures(sk: SampleKernel, data, red, c, out: Path, progress: bool, count: int = 8) -> None:
    """redundant_pairs.png, contradictory_pairs.png and clusters.png."""
    X, d = sk.features, sk.self_kernel()
    idx, lab = X.indices, X.labels
    ratio = np.where(red.redundant, red.witness_kappa / d, -np.inf)
    top = [p for p in np.argsort(-ratio, kind="stable")[:count] if red.redundant[p]]
    pair_grid(
        data,
        [(idx[p], idx[red.witness[p]]) for p in top],
        [
            (
                f"#{idx[p]} y={lab[p]} (redundant)",
                f"witness #{idx[red.witness[p]]} y={lab[red.witness[p]]}, "
                f"k(x,w)/k(x,x)={ratio[p]:.2f}",
            )
            for p in top
        ],
        "most redundant samples beside their witnesses",
        out / "redundant_pairs.png",
    )
    (least,) = reduce_rows(X, [RowTopK(1, largest=False)], progress=progress)
    j = least.positions[:, 0].numpy()
    k = least.values[:, 0].double().numpy()
    weaker = np.where(j >= 0, k / np.maximum(d, d[np.maximum(j, 0)]), np.inf)
    pairs, seen = [], set()
    for p in np.argsort(weaker, kind="stable"):
        key = tuple(sorted((int(p), int(j[p]))))
        if j[p] >= 0 and key not in seen:
            seen.add(key)
            pairs.append(p)
        if len(pairs) == count:
            break
    pair_grid(
        data,
        [(idx[p], idx[j[p]]) for p in pairs],
        [
            (
                f"#{idx[p]} y={lab[p]}",
                f"#{idx[j[p]]} y={lab[j[p]]}, k={k[p]:.3g}, both ratios <= {weaker[p]:.2f}",
            )
            for p in pairs
        ],
        "most contradictory pairs",
        out / "contradictory_pairs.png",
    )
    order = np.argsort(-c.sizes, kind="stable")
    rng = np.random.default_rng(0)
    groups = []
    for rank, cl in enumerate(order[:3]):
        members = np.flatnonzero(c.cluster == cl)
        pick = rng.choice(members, size=min(count, len(members)), replace=False)
        groups.append((f"cluster #{rank + 1}\n{len(members)} samples", idx[pick].tolist()))
    tail = [cl for cl in order[::-1] if c.sizes[cl] == 1][:count]
    groups.append(("singleton\nclusters", [int(idx[c.centroids[cl]]) for cl in tail]))
    sample_grid(
        data, groups, "largest clusters (random members) and tail clusters", out / "clusters.png"
    )


def analyze_checkpoint(
    checkpoint,
    out_dir,
    split: str = "train",
    limit: int | None = None,
    one_sided: bool = False,
    within_class: bool = False,
    t: float = 0.75,
    eps: float = 0.05,
    relationships: bool = True,
    clusters: int | float = 0.1,
    measure: str = "lpntk",
    per_class: bool = False,
    data_dir=None,
    progress: bool = True,
) -> dict:
    """Redundancy, relationship types and farthest point clustering of a checkpoint's lpNTK on
    its ``split`` samples; writes the files listed in the module doc, returns the summary."""
    out = output_folder(out_dir)
    try:  # before any work: a count >= 1 or a fraction in (0, 1)
        cluster_count(clusters, 2**62)
    except ConfigError as e:
        raise ConfigError(e.message, param="clusters") from None
    sk, data = _kernel(checkpoint, out, split, limit, data_dir, progress)
    red = sk.redundant(one_sided, within_class)
    rel = sk.relationships(t, eps) if relationships else None
    try:
        c = sk.clusters(clusters, measure, per_class)
    except ConfigError as e:
        if e.param != "m":
            raise
        raise ConfigError(e.message, param="clusters") from None
    table = sk.table()
    with atomic_path(out / "per_sample.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    stats = cluster_stats(c, sk.features.labels)
    write_json(out / "clusters.json", stats)
    plot_cluster_sizes(c, out / "cluster_sizes.png")
    _pictures(sk, data, red, c, out, progress)
    summary = {
        "checkpoint": str(checkpoint),
        "split": split,
        "n": sk.features.n,
        "redundant_fraction": red.fraction,
        "one_sided": one_sided,
        "within_class": within_class,
        "clusters": len(c.centroids),
        "measure": measure,
        "largest_cluster_share": stats["largest_share"],
        "singletons": stats["singletons"],
        "relationships": None
        if rel is None
        else {"t": t, "eps": eps, **{k: int(v.sum()) for k, v in rel.counts.items()}},
    }
    write_json(out / "summary.json", summary)
    return summary


def prune_checkpoint(
    checkpoint,
    out_dir,
    strategy: str,
    data_dir=None,
    progress: bool = True,
    **parameters,
) -> Pruned:
    """Kept training samples of a checkpoint by ``strategy``; writes ``kept.npy``, ``kept.csv``,
    ``manifest.json`` (with the checkpoint) and the feature store ``features/``."""
    out = output_folder(out_dir)
    sk, _ = _kernel(checkpoint, out, "train", None, data_dir, progress)
    pruned = sk.prune(strategy, **parameters)
    pruned.manifest["checkpoint"] = str(Path(checkpoint).resolve())
    write_pruned(pruned, out)
    return pruned


def compare_checkpoint(
    checkpoint, pruned_dirs, out_dir, seeds=5, data_dir=None, device="auto", progress=True
):
    """Retrain the checkpoint's configuration on its full training split and on each pruned set
    (folders written by :func:`prune_checkpoint`), for ``seeds`` seeds; see
    :func:`lpntk.compare.compare_training`."""
    _, ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg = dataclasses.replace(
        cfg, split_seed=cfg.seed if cfg.split_seed is None else cfg.split_seed
    )
    subsets = {}
    for folder in pruned_dirs:
        folder = Path(folder)
        if not (folder / "kept.npy").exists():
            raise ConfigError(
                f"{folder} holds no kept.npy; expected a folder written by lpntk prune",
                param="pruned",
            )
        subsets[folder.name] = np.load(folder / "kept.npy")
    if len(subsets) != len(pruned_dirs):
        raise ConfigError("two pruned folders have the same name", param="pruned")
    if not isinstance(seeds, int) or seeds < 2:
        raise ConfigError(f"expected at least 2 seeds; got {seeds!r}", param="seeds")
    return compare_training(
        cfg, subsets, range(seeds), out_dir, data_dir=data_dir, device=device, progress=progress
    )
