"""Pruning strategies: which training samples to keep, from a kernel's feature store.

Each strategy returns a :class:`Pruned`: the kept samples' ORIGINAL dataset indices (sorted,
unique) and a manifest (strategy, parameters, seed, the feature store it came from, counts).
:func:`write_pruned` saves them as ``kept.npy``, ``kept.csv`` and ``manifest.json``, ready for
``run_training(..., train_indices=kept)``.

- ``redundant``: drop redundant samples (Sec. 4.2) by the ``all`` or ``cover`` rule.
- ``redundant_head``: drop redundant samples, cluster the rest with farthest point clustering and
  randomly drop a fraction (default 10%) of the largest cluster (Sec. 4.3); ``per_class``: of
  each class's own largest cluster, the clusters made within each class.
- ``head_budget``: keep a budget sampled from the largest cluster only (App. E, Fig. 7);
  ``per_class``: from the union of the classes' own largest clusters, balanced per class.
- ``random``: a seeded random subset of the same size, the baseline of every comparison.
- ``el2n``: keep the samples with the largest EL2N score (Paul et al. 2021), the hardest ones;
  the scores come from short training runs (:mod:`lpntk.scores`), not from the kernel.
- ``forgetting``: keep the most forgotten samples (Toneva et al. 2018), never-learned ones first;
  from full training runs with per-sample logs (:mod:`lpntk.scores`).
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._errors import ConfigError
from ._io import atomic_path, output_folder, write_json
from ._version import __version__
from .analysis import (
    Clusters,
    Redundancy,
    class_heads,
    drop_redundant,
    farthest_point_clusters,
    redundant_samples,
)
from .analysis.redundancy import check_size
from .kernel import Features

if TYPE_CHECKING:
    from .scores import Scores

STRATEGIES = ("redundant", "redundant_head", "head_budget", "random", "el2n", "forgetting")


@dataclass
class Pruned:
    """``kept``: original dataset indices of the kept samples, sorted; ``manifest``: how."""

    kept: np.ndarray
    manifest: dict


def _manifest(n: int, strategy: str, kept: np.ndarray, source: dict, **parameters) -> dict:
    return {
        "strategy": strategy,
        "parameters": parameters,
        "source": source,
        "n": int(n),
        "kept": int(len(kept)),
        "dropped": int(n - len(kept)),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "lpntk": __version__,
    }


def _result(X: Features, keep: np.ndarray, strategy: str, **parameters) -> Pruned:
    kept = np.sort(X.indices[keep])
    source = {
        "kind": X.meta.get("kind"),
        "strategy": X.meta.get("strategy"),
        "model_hash": X.meta.get("model_hash"),
        "description": X.meta.get("description"),
    }
    return Pruned(kept, _manifest(X.n, strategy, kept, source, **parameters))


def prune_redundant(
    X: Features,
    rule: str = "cover",
    one_sided: bool = False,
    within_class: bool = False,
    size: int | None = None,
    progress: bool = True,
    client=None,
    redundancy: Redundancy | None = None,
) -> Pruned:
    """Keep the samples that survive removing redundant ones (Sec. 4.2) by ``rule``; with
    ``size``, exactly ``size`` samples, the most redundant dropped first (see
    :func:`lpntk.analysis.drop_redundant`). ``client``: a Dask client for the search;
    ``redundancy``: the finished search of these options, to reuse."""
    if size is not None:  # before the search
        check_size(rule, size, X.n)
    red = _redundancy(X, one_sided, within_class, progress, client, redundancy)
    keep = drop_redundant(red, rule, size)
    if size is None:
        _warn_if_small(int(keep.sum()), X.n, f"rule {rule!r}")
    parameters = {"size": size} if size is not None else {}
    return _result(
        X,
        keep,
        "redundant",
        rule=rule,
        one_sided=one_sided,
        within_class=within_class,
        **parameters,
    )


def prune_redundant_head(
    X: Features,
    fraction: float = 0.1,
    clusters: int | float = 0.1,
    rule: str = "cover",
    seed: int = 0,
    progress: bool = True,
    client=None,
    per_class: bool = False,
    within_class: bool = False,
    one_sided: bool = False,
    redundant: bool = True,
    redundancy: Redundancy | None = None,
) -> Pruned:
    """Sec. 4.3: drop redundant samples (by ``rule``; ``redundant=False``: keep them, as the
    paper's public code does), cluster the rest around ``clusters`` centroids (a count or a
    fraction of them) and randomly drop ``fraction`` of the largest cluster. ``per_class``:
    cluster each class on its own (M split in proportion to the classes) and drop ``fraction``
    of every class's own largest cluster, as the paper's public code does; ``within_class`` /
    ``one_sided``: the redundancy search's variant. ``client``: a Dask client for the search
    and the clustering; ``redundancy``: the finished search, to reuse."""
    _fraction(fraction, "fraction")
    keep = np.ones(X.n, dtype=bool)
    if redundant:
        red = _redundancy(X, one_sided, within_class, progress, client, redundancy)
        keep = drop_redundant(red, rule)
        _warn_if_small(int(keep.sum()), X.n, f"rule {rule!r}")
    rest = np.flatnonzero(keep)
    sub = _subset(X, rest) if len(rest) < X.n else X
    c = farthest_point_clusters(
        sub, clusters, per_class=per_class, progress=progress, client=client
    )
    heads = class_heads(c.cluster, sub.labels) if per_class else {None: _largest(c)}
    rng = np.random.default_rng(seed)
    for head in heads.values():
        keep[rng.choice(rest[head], size=int(round(fraction * len(head))), replace=False)] = False
    return _result(
        X,
        keep,
        "redundant_head",
        fraction=fraction,
        clusters=clusters,
        rule=rule if redundant else None,
        seed=seed,
        per_class=per_class,
        within_class=within_class,
        one_sided=one_sided,
        redundant=redundant,
        head_size=int(sum(len(h) for h in heads.values())),
    )


def head_budget(
    X: Features,
    budget: float,
    clusters: int | float = 0.1,
    seed: int = 0,
    progress: bool = True,
    client=None,
    per_class: bool = False,
    clustering: Clusters | None = None,
) -> Pruned:
    """App. E: keep ``budget`` x N samples drawn at random from the largest cluster only.
    ``per_class``: cluster each class on its own and draw from the union of the classes' own
    largest clusters, balanced: as equal a number from each class as its head allows.
    ``client``: a Dask client for the clustering; ``clustering``: the finished clustering of
    these options (its ``per_class`` must match), to reuse."""
    _fraction(budget, "budget")
    c = clustering
    if c is None:
        c = farthest_point_clusters(
            X, clusters, per_class=per_class, progress=progress, client=client
        )
    heads = class_heads(c.cluster, X.labels) if per_class else {None: _largest(c)}
    size = max(1, int(round(budget * X.n)))
    available = sum(len(h) for h in heads.values())
    if size > available:
        where = "the classes' largest clusters" if per_class else "the largest cluster"
        raise ConfigError(
            f"a budget of {size} samples is larger than {where} ({available}); "
            "expected a smaller budget or fewer clusters",
            param="budget",
        )
    quotas = balanced_quotas(size, [len(h) for h in heads.values()])
    rng = np.random.default_rng(seed)
    keep = np.zeros(X.n, dtype=bool)
    for head, quota in zip(heads.values(), quotas, strict=True):
        keep[rng.choice(head, size=quota, replace=False)] = True
    return _result(
        X,
        keep,
        "head_budget",
        budget=budget,
        clusters=clusters,
        seed=seed,
        per_class=per_class,
        head_size=int(available),
    )


def balanced_quotas(total: int, capacities: list[int]) -> list[int]:
    """``total`` split as equally as possible over groups of the given ``capacities`` (water
    filling: no group above its capacity, a group that fills up leaves its share to the others;
    the remainder of an uneven split goes to the groups of the largest capacities)."""
    if total > sum(capacities):
        raise ConfigError(f"cannot draw {total} from groups of {sum(capacities)}", param="size")
    quota, left = [0] * len(capacities), total
    order = sorted(range(len(capacities)), key=lambda i: capacities[i])  # the smallest first
    for rank, i in enumerate(order):
        quota[i] = min(capacities[i], left // (len(order) - rank))
        left -= quota[i]
    while left:
        for i in range(len(capacities)):
            if left and quota[i] < capacities[i]:
                quota[i] += 1
                left -= 1
    return quota


def _largest(c: Clusters) -> np.ndarray:
    return np.flatnonzero(c.cluster == int(np.argmax(c.sizes)))


def _redundancy(X, one_sided, within_class, progress, client, redundancy) -> Redundancy:
    """``redundancy`` when given (checked against the options), else a new search."""
    if redundancy is None:
        return redundant_samples(X, one_sided, within_class, progress=progress, client=client)
    if (redundancy.one_sided, redundancy.within_class) != (one_sided, within_class) or len(
        redundancy.witness
    ) != X.n:
        raise ConfigError(
            "the given redundancy is of another variant or of other samples; expected the "
            f"search with one_sided={one_sided}, within_class={within_class} of these samples",
            param="redundancy",
        )
    return redundancy


def random_subset(
    indices: np.ndarray, size: int, seed: int = 0, labels: np.ndarray | None = None
) -> Pruned:
    """A seeded random subset of ``size`` of the original ``indices`` (the baseline at the same
    budget). ``labels`` (one per index): balanced per class, as equal a number from each class
    as it holds (:func:`balanced_quotas`), the baseline of a class-balanced draw."""
    indices = np.asarray(indices)
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= len(indices):
        raise ConfigError(f"expected a size in 1..{len(indices)}; got {size!r}", param="size")
    rng = np.random.default_rng(seed)
    if labels is None:
        kept = np.sort(indices[rng.choice(len(indices), size=int(size), replace=False)])
        return Pruned(kept, _manifest(len(indices), "random", kept, {}, size=int(size), seed=seed))
    labels = np.asarray(labels)
    if labels.shape != indices.shape:
        raise ConfigError(
            f"expected one label per index ({indices.shape}); got {labels.shape}", param="labels"
        )
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quotas = balanced_quotas(int(size), [len(g) for g in groups])
    picked = [rng.choice(g, size=q, replace=False) for g, q in zip(groups, quotas, strict=True)]
    kept = np.sort(indices[np.concatenate(picked)])
    return Pruned(
        kept,
        _manifest(len(indices), "random", kept, {}, size=int(size), seed=seed, balanced=True),
    )


def hardest(scores: Scores, size: int) -> Pruned:
    """Keep the ``size`` samples with the largest score (ties: the smaller original index)."""
    n = len(scores.indices)
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise ConfigError(f"expected a size in 1..{n}; got {size!r}", param="size")
    order = np.lexsort((scores.indices, -scores.score))
    kept = np.sort(scores.indices[order[: int(size)]])
    name = scores.parameters.get("score", "score")
    source = {k: v for k, v in scores.parameters.items() if k != "score"}
    return Pruned(kept, _manifest(n, name, kept, source, size=int(size)))


def write_pruned(pruned: Pruned, out_dir: str | os.PathLike) -> Path:
    """Write ``kept.npy``, ``kept.csv`` (one original index a line) and ``manifest.json``."""
    out = output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "kept.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, pruned.kept)
    with atomic_path(out / "kept.csv") as tmp:
        tmp.write_text("index\n" + "".join(f"{i}\n" for i in pruned.kept))
    write_json(out / "manifest.json", pruned.manifest)
    return out


def _warn_if_small(kept: int, n: int, what: str) -> None:
    """A redundancy rule decides the size itself: say so when it keeps less than half."""
    if kept < n / 2:
        warnings.warn(
            f"{what} kept {kept} of {n} samples ({kept / n:.0%}), less than half of the set; "
            "give a budget (size=, --size) to keep a number you choose",
            stacklevel=3,
        )


def _fraction(value: float, param: str) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"expected a fraction in (0, 1); got {value}", param=param)


def _subset(X: Features, positions: np.ndarray) -> Features:
    """The features of ``positions`` only, in memory."""
    arrays = {k: v.numpy() for k, v in X.rows(positions).items()}
    return Features(X.pieces, arrays, X.labels[positions], X.indices[positions], X.meta)
