"""Farthest point clustering with lpNTK (Gonzalez 1985; Alg. 3 of the paper, App. D.4).

The first centroid is the sample with the largest kappa(x, x). Each step takes as the new
centroid the sample least similar to its own centroid, then moves to it every sample that is more
similar to it than to its own centroid. Each step costs one kernel column (N entries): O(N M) in
all, never N x N.

Similarities (``measure``):

- ``lpntk``: kappa(x, c), the paper's Alg. 3.
- ``metric``: minus the kernel distance, d^2 = kappa(x,x) + kappa(c,c) - 2 kappa(x,c); with it the
  algorithm is Gonzalez's farthest point clustering, a 2-approximation of the k-center problem.
- ``cosine``: kappa(x, c) / sqrt(kappa(x,x) kappa(c,c)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._errors import ConfigError
from .._progress import progress as progress_bar
from ..kernel import Features, diagonal, ops
from ..kernel.ops import ColumnSource
from ._checks import scalar_features

MEASURES = ("lpntk", "metric", "cosine")


@dataclass
class Clusters:
    """``cluster`` ``(N,)``: each sample's cluster id, 0..M-1 in order of creation;
    ``centroids`` ``(M,)``: the centroid of each cluster (positions in the feature store);
    ``similarity`` ``(N,)``: each sample's similarity to its centroid under ``measure``."""

    cluster: np.ndarray
    centroids: np.ndarray
    similarity: np.ndarray
    measure: str

    @property
    def sizes(self) -> np.ndarray:
        """``(M,)`` the number of samples in each cluster."""
        return np.bincount(self.cluster, minlength=len(self.centroids))


def farthest_point_clusters(
    X: Features,
    m: int | float,
    measure: str = "lpntk",
    per_class: bool = False,
    device="cpu",
    progress: bool = True,
) -> Clusters:
    """Cluster the samples of ``X`` (a scalar kind) around ``m`` centroids (a count, or a fraction
    of N when a float in (0, 1); the paper uses 10% of N) by Alg. 3. ``per_class``: cluster each
    label separately, with ``m`` split in proportion to the class sizes (at least one each).

    >>> c = farthest_point_clusters(feats, 0.1)          # doctest: +SKIP
    >>> np.sort(c.sizes)[::-1][:5]                        # doctest: +SKIP
    """
    device = scalar_features(X, "clustering", device)
    if measure not in MEASURES:
        raise ConfigError(
            f"unknown measure {measure!r}; expected one of {', '.join(MEASURES)}", param="measure"
        )
    total = cluster_count(m, X.n)
    groups = [np.arange(X.n)]
    if per_class:
        groups = [np.flatnonzero(X.labels == c) for c in np.unique(X.labels)]
    quotas = _split(total, [len(g) for g in groups])
    diag = diagonal(X, device=device).double()
    source = ColumnSource(X, device)
    cluster = np.empty(X.n, dtype=np.int64)
    similarity = np.empty(X.n)
    centroids = []
    bar = progress_bar(total, f"clusters ({measure})", unit="centroid", enabled=progress)
    for group, quota in zip(groups, quotas, strict=True):
        ids, cents, sims = _fpc(source, diag, torch.as_tensor(group), quota, measure, bar)
        cluster[group] = ids.numpy() + len(centroids)
        similarity[group] = sims.numpy()
        centroids += cents
    bar.close()
    return Clusters(cluster, np.asarray(centroids, dtype=np.int64), similarity, measure)


def _fpc(source: ColumnSource, diag, group: torch.Tensor, m: int, measure: str, bar):
    """Alg. 3 on the samples ``group``; returns cluster ids (0..m-1) and similarities for the
    group's samples, and the centroids' positions. Each step computes kernel entries only for
    the samples whose Cauchy-Schwarz bound lets them move to the new centroid."""
    d = diag[group]

    def transform(k: torch.Tensor, rows, c: int) -> torch.Tensor:
        """The measure from kappa(rows, c)."""
        if measure == "lpntk":
            return k
        if measure == "metric":
            return -(d[rows] + d[c] - 2 * k)
        return k / torch.sqrt(torch.clamp(d[rows] * d[c], min=1e-300))

    def needed(sims: torch.Tensor, c: int) -> torch.Tensor:
        """The kappa(i, c) above which sample i would move (the inverse of ``transform``)."""
        if measure == "lpntk":
            return sims
        if measure == "metric":
            return (sims + d + d[c]) / 2
        return sims * torch.sqrt(d * d[c])

    def column(c: int, rows: torch.Tensor, pieces=None) -> torch.Tensor:
        """kappa(rows, c); gathering rows costs about as much as reading them all, so a
        whole column when there are many."""
        if len(rows) >= 0.2 * source.X.n:
            return source.column(c, pieces=pieces)[rows]
        return source.column(c, rows, pieces)

    norms = source.piece_norms
    bounded = ops.bound_plan(source.X, norms)
    exact = [i for i in range(norms.shape[1]) if i not in bounded]
    margin = ops.rounding_margin(source.X)
    total = torch.sqrt((norms**2).sum(1))
    norms = norms[:, bounded]
    first = int(torch.argmax(d))  # the first on ties
    everyone = torch.arange(len(group))
    sims = transform(source.column(int(group[first]))[group].double(), everyone, first)
    ids = torch.zeros(len(group), dtype=torch.long)
    is_centroid = torch.zeros(len(group), dtype=torch.bool)
    is_centroid[first] = True
    centroids = [first]
    bar.update(1)
    for step in range(1, m):
        new = int(torch.argmin(sims.masked_fill(is_centroid, math.inf)))  # least similar
        c = int(group[new])
        slack = margin * total[group] * total[c]  # rounding, as below
        can_move = (source.bound(c)[group] + slack >= needed(sims, new)) & ~is_centroid
        can_move[new] = True
        rows = torch.nonzero(can_move).flatten()
        if bounded:  # the cheap pieces exactly, the others bounded: then fewer full entries
            part = column(c, group[rows], exact).double()
            part += norms[group[rows]] @ norms[c] + margin * total[group[rows]] * total[c]
            rows = rows[(part >= needed(sims, new)[rows]) | (rows == new)]
        k = column(c, group[rows])
        s = transform(k.double(), rows, new)
        move = (s > sims[rows]) & ~is_centroid[rows]
        move[rows == new] = True
        moved = rows[move]
        ids[moved] = step
        sims[moved] = s[move]
        is_centroid[new] = True
        centroids.append(new)
        bar.update(1)
    return ids, [int(group[c]) for c in centroids], sims


def cluster_count(m, n: int) -> int:
    if isinstance(m, (bool, np.bool_)):
        raise ConfigError(f"expected a count or a fraction; got {m!r}", param="m")
    if isinstance(m, (float, np.floating)):
        if not 0 < m < 1:
            raise ConfigError(f"a fraction of N must lie in (0, 1); got {m}", param="m")
        return max(1, int(round(m * n)))
    if not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ConfigError(f"expected 1..{n} clusters; got {m!r}", param="m")
    return int(m)


def _split(total: int, sizes: list[int]) -> list[int]:
    """``total`` split in proportion to ``sizes`` (largest remainder), at least 1 and at most
    the size for each."""
    if total < len(sizes):
        raise ConfigError(
            f"{total} clusters cannot cover {len(sizes)} classes; expected at least one per class",
            param="m",
        )
    sizes_a = np.asarray(sizes, dtype=np.float64)
    exact = sizes_a * total / sizes_a.sum()
    quota = np.maximum(np.floor(exact).astype(np.int64), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while quota.sum() < total:
        j = order[i % len(order)]
        if quota[j] < sizes[j]:
            quota[j] += 1
        i += 1
    while quota.sum() > total:
        j = int(np.argmax(quota))
        quota[j] -= 1
    return [int(min(q, s)) for q, s in zip(quota, sizes, strict=True)]


def cluster_stats(c: Clusters, labels, top: int = 5) -> dict:
    """Cluster sizes sorted (largest first), the largest cluster's share, the number of
    singletons and the per-class composition of the ``top`` largest clusters."""
    sizes = c.sizes
    order = np.argsort(-sizes, kind="stable")
    labels = np.asarray(labels)
    largest = []
    for cl in order[:top]:
        values, counts = np.unique(labels[c.cluster == cl], return_counts=True)
        largest.append(
            {
                "cluster": int(cl),
                "size": int(sizes[cl]),
                "centroid": int(c.centroids[cl]),
                "classes": {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
            }
        )
    return {
        "measure": c.measure,
        "clusters": int(len(sizes)),
        "samples": int(sizes.sum()),
        "largest_share": float(sizes.max() / sizes.sum()),
        "singletons": int((sizes == 1).sum()),
        "more_than_one": int((sizes > 1).sum()),
        "sizes_sorted": sizes[order].tolist(),
        "largest": largest,
    }


def plot_cluster_sizes(c: Clusters, path) -> None:
    """Cluster size against rank on log-log axes (a long tail is a straight-ish falling line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_path

    sizes = np.sort(c.sizes)[::-1]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.loglog(np.arange(1, len(sizes) + 1), sizes, marker=".", linestyle="none")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("cluster size (samples)")
    ax.set_title(f"{len(sizes)} clusters ({c.measure}), largest {sizes[0]} samples")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
