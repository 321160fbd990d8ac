"""Farthest point clustering with lpNTK (Gonzalez 1985; Alg. 3 of the paper, App. D.4).

The first centroid is the sample with the largest kappa(x, x). Each step takes as the new
centroid the sample least similar to its own centroid, then moves to it every sample that is more
similar to it than to its own centroid. Each step costs one kernel column (N entries): O(N M) in
all, never N x N. Centroids never move: a centroid stays in the cluster it founded, and the
clusters are not refined afterwards (no k-means step). Ties go to the first: the first sample
of the largest kappa(x, x), the least similar sample first in the store's order, and a sample
equally similar to two centroids stays with its own.

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
from .._frame import original, per_sample_frame
from .._progress import progress as progress_bar
from ..kernel import Features, diagonal, ops
from ..kernel.features import open_features, reference
from ..kernel.ops import _block, _shape
from ._checks import scalar_features

MEASURES = ("lpntk", "metric", "cosine")


@dataclass
class Clusters:
    """``cluster`` ``(N,)``: each sample's cluster id, 0..M-1 in order of creation;
    ``centroids`` ``(M,)``: the centroid of each cluster (positions in the feature store);
    ``similarity`` ``(N,)``: each sample's similarity to its centroid under ``measure``;
    ``indices``: the samples' original indices (:meth:`to_frame` is indexed by them)."""

    cluster: np.ndarray
    centroids: np.ndarray
    similarity: np.ndarray
    measure: str
    indices: np.ndarray | None = None

    def to_frame(self):
        """One row per sample indexed by original index: ``cluster``, ``cluster_size``,
        ``centroid`` (the original index of its cluster's centroid) and ``similarity``."""
        return per_sample_frame(
            self.indices,
            {
                "cluster": self.cluster,
                "cluster_size": self.sizes[self.cluster],
                "centroid": original(self.indices, self.centroids[self.cluster]),
                "similarity": self.similarity,
            },
        )

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
    client=None,
) -> Clusters:
    """Cluster the samples of ``X`` (a scalar kind) around ``m`` centroids (a count, or a fraction
    of N when a float in (0, 1); the paper uses 10% of N) by Alg. 3. ``per_class``: cluster each
    label separately, with ``m`` split in proportion to the class sizes (at least one each).
    ``client``: a ``dask.distributed.Client``; the samples are then split into one shard per
    worker, each holding its rows, and every step's column and arg-min run on all shards at
    once (the same clusters).

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
    some = X.rows(slice(0, X.n, max(1, X.n // 1000)))  # about 1,000 samples for the plan
    plan = ops.bound_plan(X, ops.piece_norms(X, some))
    cluster = np.empty(X.n, dtype=np.int64)
    similarity = np.empty(X.n)
    centroids = []
    bar = progress_bar(total, f"clusters ({measure})", unit="centroid", enabled=progress)
    for group, quota in zip(groups, quotas, strict=True):
        args = (X, group, diag[group], plan, measure, device)
        if client is None:
            ids, cents, sims = _fpc(_calls([_Shard(*args)]), 1, diag[group], quota, bar)
        else:
            ids, cents, sims = _fpc_on_cluster(client, *args, quota, bar)
        cluster[group] = ids.numpy() + len(centroids)
        similarity[group] = sims.numpy()
        centroids += [int(group[c]) for c in cents]
    bar.close()
    centroids = np.asarray(centroids, dtype=np.int64)
    return Clusters(cluster, centroids, similarity, measure, np.asarray(X.indices).copy())


class _Shard:
    """Alg. 3's state for some samples of a group (``members``, positions in the store, in
    group order): their rows, squared norms ``d``, per-piece norms, each one's similarity to
    its centroid and cluster id. Each step computes kernel entries only for the members whose
    Cauchy-Schwarz bound lets them move to the new centroid."""

    def __init__(self, X, members, d: torch.Tensor, plan: list, measure: str, device="cpu"):
        X = open_features(X) if not isinstance(X, Features) else X
        self.X, self.measure, self.plan = X, measure, plan
        self.rows = X.rows(np.asarray(members), device)
        self.d = d.double()
        norms = ops.piece_norms(X, self.rows, device)
        self.norms, self.total = norms, torch.sqrt((norms**2).sum(1))
        self.exact = [i for i in range(norms.shape[1]) if i not in plan]
        self.margin = ops.rounding_margin(X)
        self.sims = torch.empty(len(self.d), dtype=torch.float64)
        self.ids = torch.zeros(len(self.d), dtype=torch.long)
        self.is_centroid = torch.zeros(len(self.d), dtype=torch.bool)

    def centroid(self, j: int) -> dict:
        """What every shard needs of member ``j`` as a centroid."""
        return {
            "row": {k: v[j : j + 1] for k, v in self.rows.items()},
            "norms": self.norms[j],
            "d": self.d[j],
            "total": self.total[j],
        }

    def _transform(self, k: torch.Tensor, rows, c: dict) -> torch.Tensor:
        """The measure from kappa(rows, c)."""
        if self.measure == "lpntk":
            return k
        if self.measure == "metric":
            return -(self.d[rows] + c["d"] - 2 * k)
        return k / torch.sqrt(torch.clamp(self.d[rows] * c["d"], min=1e-300))

    def _needed(self, c: dict) -> torch.Tensor:
        """The kappa(i, c) above which member i would move (the inverse of the transform)."""
        if self.measure == "lpntk":
            return self.sims
        if self.measure == "metric":
            return (self.sims + self.d + c["d"]) / 2
        return self.sims * torch.sqrt(self.d * c["d"])

    def _column(self, c: dict, rows: torch.Tensor | None = None, pieces=None) -> torch.Tensor:
        """kappa(rows, c); gathering rows costs about as much as reading them all, so a
        whole column when there are many."""
        if rows is not None and len(rows) >= 0.2 * len(self.d):
            return self._column(c, None, pieces)[rows]
        some = self.rows if rows is None else {k: v[rows] for k, v in self.rows.items()}
        return _shape(self.X, _block(self.X, some, c["row"], pieces))[:, 0]

    def begin(self, c: dict, own: int):
        """The first centroid ``c`` (member ``own`` here, or -1)."""
        self.sims = self._transform(self._column(c).double(), slice(None), c)
        if own >= 0:
            self.is_centroid[own] = True
        return self._next()

    def step(self, c: dict, own: int, step: int):
        """Centroid number ``step`` is ``c`` (member ``own`` here, or -1): move to it every
        member more similar to it than to its own centroid."""
        needed = self._needed(c)
        slack = self.margin * self.total * c["total"]  # rounding, as below
        can_move = (self.norms @ c["norms"] + slack >= needed) & ~self.is_centroid
        if own >= 0:
            can_move[own] = True
        rows = torch.nonzero(can_move).flatten()
        if self.plan:  # the cheap pieces exactly, the others bounded: then fewer full entries
            part = self._column(c, rows, self.exact).double()
            bounded = self.norms[rows][:, self.plan] @ c["norms"][self.plan]
            part += bounded + self.margin * self.total[rows] * c["total"]
            rows = rows[(part >= needed[rows]) | (rows == own)]
        k = self._column(c, rows)
        s = self._transform(k.double(), rows, c)
        move = (s > self.sims[rows]) & ~self.is_centroid[rows]
        move[rows == own] = True
        moved = rows[move]
        self.ids[moved] = step
        self.sims[moved] = s[move]
        if own >= 0:
            self.is_centroid[own] = True
        return self._next()

    def _next(self):
        """This shard's candidate for the next centroid: its least similar member (the first
        on ties), and what the shards need of it."""
        if bool(self.is_centroid.all()):
            return math.inf, -1, None
        masked = self.sims.masked_fill(self.is_centroid, math.inf)
        j = int(torch.argmin(masked))
        return float(masked[j]), j, self.centroid(j)

    def result(self):
        return self.ids, self.sims


def _calls(shards: list, remote: bool = False):
    """``call(method, args)``: the method run on every shard whose args are not None (all at
    once when the shards are remote), and their results."""

    def call(name: str, args: list) -> list:
        out = [getattr(s, name)(*a) for s, a in zip(shards, args, strict=True) if a is not None]
        return [f.result() for f in out] if remote else out

    return call


def _fpc(call, count: int, d: torch.Tensor, m: int, bar):
    """Alg. 3 over ``count`` shards that together hold a group in order (``d``: its squared
    norms), run through ``call`` (see :func:`_calls`); returns cluster ids (0..m-1) and
    similarities for the group's samples and the centroids' positions in the group."""
    offsets = np.cumsum([0, *(len(x) for x in np.array_split(np.arange(len(d)), count))])
    first = int(torch.argmax(d))  # the first on ties
    owner = int(np.searchsorted(offsets, first, side="right") - 1)
    j = first - int(offsets[owner])
    (c,) = call("centroid", [(j,) if i == owner else None for i in range(count)])
    found = call("begin", [(c, j if i == owner else -1) for i in range(count)])
    centroids = [first]
    bar.update(1)
    for step in range(1, m):
        # the least similar sample of all: the smallest value, the first shard on ties
        owner = int(np.argmin([f[0] for f in found]))
        _, j, c = found[owner]
        centroids.append(int(offsets[owner]) + j)
        found = call("step", [(c, j if i == owner else -1, step) for i in range(count)])
        bar.update(1)
    parts = call("result", [() for _ in range(count)])
    ids = torch.cat([p[0] for p in parts])
    sims = torch.cat([p[1] for p in parts])
    return ids, centroids, sims


def _fpc_on_cluster(client, X, group, d, plan, measure, device, m, bar):
    """:func:`_fpc` with one shard per worker (a Dask actor holding its members' rows); a
    worker lost on the way starts the group again on the workers left (Alg. 3 is
    deterministic, so the result is the same)."""
    from ..kernel import distributed as dist

    ref = reference(client, X)
    for attempt in range(dist.RETRIES + 1):
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        parts = np.array_split(np.arange(len(group)), max(1, min(len(workers), len(group))))
        shards = [
            client.submit(
                _Shard,
                ref,
                group[p],
                d[p],
                plan,
                measure,
                str(device),
                actor=True,
                workers=[w],
                pure=False,
            ).result()
            for p, w in zip(parts, workers, strict=False)
        ]

        start = bar.n
        try:
            return _fpc(_calls(shards, remote=True), len(shards), d, m, bar)
        except OSError:  # a worker was lost (its connection closed)
            if attempt == dist.RETRIES:
                raise
            bar.update(start - bar.n)  # count this group's centroids again


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


def class_heads(cluster, labels) -> dict[int, np.ndarray]:
    """Each class's head: per label, the positions of the largest cluster among that class's
    samples (ties: the cluster created first). With per-class clustering every cluster holds
    one class; otherwise a class's head is its largest share of any cluster."""
    cluster, labels = np.asarray(cluster), np.asarray(labels)
    heads = {}
    for y in np.unique(labels):
        own = np.flatnonzero(labels == y)
        ids, counts = np.unique(cluster[own], return_counts=True)
        heads[int(y)] = own[cluster[own] == ids[np.argmax(counts)]]
    return heads


def class_cluster_stats(cluster, labels) -> dict:
    """For cluster ids ``cluster`` ``(N,)`` and ``labels`` ``(N,)``, per class (labels as
    keys): its size, the clusters that hold its samples, its head's
    size and share of the class (:func:`class_heads`), its clusters of more than one sample
    and its singletons; and over the classes, the head share's mean, min and max and the
    median number of clusters of more than one sample besides the head."""
    cluster, labels = np.asarray(cluster), np.asarray(labels)
    heads = class_heads(cluster, labels)
    per = {}
    for y, head in heads.items():
        own = cluster[labels == y]
        sizes = np.unique(own, return_counts=True)[1]
        per[str(y)] = {
            "samples": int(len(own)),
            "clusters": int(len(sizes)),
            "head_size": int(len(head)),
            "head_share": float(len(head) / len(own)),
            "more_than_one": int((sizes > 1).sum()),
            "singletons": int((sizes == 1).sum()),
        }
    shares = np.array([v["head_share"] for v in per.values()])
    others = np.array([v["more_than_one"] - 1 for v in per.values()])
    return {
        "per_class": per,
        "head_share_mean": float(shares.mean()),
        "head_share_min": float(shares.min()),
        "head_share_max": float(shares.max()),
        "heads_share_of_all": float(sum(len(h) for h in heads.values()) / len(labels)),
        "more_than_one_besides_head_median": float(np.median(others)),
    }


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
