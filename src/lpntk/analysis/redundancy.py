"""Redundant samples (Sec. 4.2, App. E.1) and which of them to drop.

A sample x is *redundant* when some other sample x' has kappa(x, x') > kappa(x, x); its
*witness* is the x' with the largest kappa(x, x') (of several equal ones, the first in the order
of the feature store). "Larger" means by more than rounding (:func:`lpntk.kernel.ops.tie_tolerance`,
relative to kappa(x, x)): the same image twice with the same label is a tie, not redundant, and
neither copy witnesses the other. By Cauchy-Schwarz, kappa(x, x') <= |x| |x'|,
so a witness has a larger norm than its sample: each row needs only the columns of larger norm,
visited from the largest norm down, and a row stops as soon as no remaining column can beat its
best (its best >= |x| times the largest remaining norm). Never N x N in memory.

When one feature piece costs much more than its share of the kernel (the dense convolution
gradients of LeNet-5 hold 76% of the numbers and a small share of kappa(x, x)), each block first
computes the cheap pieces exactly and bounds the expensive ones by Cauchy-Schwarz per piece,
sum_p |x_p| |x'_p|, with a margin for rounding; only the entries whose bound can reach the row's
best (or kappa(x, x)) are then computed in full, in small tiles. The results are the same.

Variants: ``two_sided`` (the default) compares every sample with every other; ``one_sided``
compares sample i only with samples of a larger original index, as the paper's public code did;
``within_class`` compares samples of the same label only.

:func:`redundant_samples` is the search on its own. When a streamed pass over the whole kernel
runs anyway (``lpntk analyze`` counts the relationships and finds each sample's nearest and
farthest other sample), :class:`Witnesses` does the same search as one more reducer of that pass
(:func:`lpntk.kernel.reduce_rows`), with the same results: the row's largest kappa(x, x') over
every x' its variant compares is the witness whenever it beats kappa(x, x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._errors import ConfigError
from .._frame import original, per_sample_frame
from .._progress import progress as progress_bar
from ..kernel import Features, RowMax, block_size, diagonal, ops
from ..kernel.features import open_features, reference
from ..kernel.ops import _block, _shape, piece_norms, rounding_margin
from ._checks import scalar_features

RULES = ("all", "cover")


@dataclass
class Redundancy:
    """Per sample, in the order of the feature store (positions):

    ``redundant`` ``(N,)`` bool; ``witness`` ``(N,)`` the witness's position (-1 when not
    redundant); ``witness_kappa`` kappa(x, witness) (NaN when not redundant); ``self_kappa``
    kappa(x, x). ``one_sided`` and ``within_class`` record the variant; ``indices`` the samples'
    original indices (:meth:`to_frame` is indexed by them).
    """

    redundant: np.ndarray
    witness: np.ndarray
    witness_kappa: np.ndarray
    self_kappa: np.ndarray
    one_sided: bool = False
    within_class: bool = False
    indices: np.ndarray | None = None

    def to_frame(self):
        """One row per sample indexed by original index: ``redundant``, ``witness`` (its
        original index, -1 when not redundant), ``witness_kappa`` and ``self_kappa``."""
        return per_sample_frame(
            self.indices,
            {
                "redundant": self.redundant,
                "witness": original(self.indices, self.witness),
                "witness_kappa": self.witness_kappa,
                "self_kappa": self.self_kappa,
            },
        )

    @property
    def fraction(self) -> float:
        return float(self.redundant.mean())


def redundant_samples(
    X: Features,
    one_sided: bool = False,
    within_class: bool = False,
    memory: int | None = None,
    device="cpu",
    progress: bool = True,
    client=None,
) -> Redundancy:
    """The redundant samples of ``X`` (a scalar kind) and their witnesses; see the module doc.
    The feature rows are held in memory once, sorted by norm. ``client``: a
    ``dask.distributed.Client``; blocks of rows are then tasks on its workers (each worker holds
    the sorted rows once), with the same results.

    >>> r = redundant_samples(feats)                  # doctest: +SKIP
    >>> r.fraction, X.indices[r.witness[r.redundant]]  # doctest: +SKIP
    """
    device = scalar_features(X, "redundancy", device)
    d = diagonal(X, memory, device).double()
    best = torch.full((X.n,), -math.inf, dtype=torch.float64)
    witness = torch.full((X.n,), -1, dtype=torch.long)
    by_class = [np.flatnonzero(X.labels == c) for c in np.unique(X.labels)]
    passes = [by_class] if within_class else [[np.arange(X.n)]]
    some = X.rows(slice(0, X.n, max(1, X.n // 1000)))  # about 1,000 samples for the plan
    if not within_class and ops.bound_plan(X, piece_norms(X, some)):
        # with bounds, a good threshold saves most entries: each row's best within its own
        # class first (a fraction of the pairs), then every class against it
        passes.insert(0, by_class)
    b = block_size(X, memory, device)
    if torch.device(device).type == "cpu":  # the masks and sums per entry run from the cache
        b = min(b, CPU_BLOCK)
    bar = progress_bar(X.n * len(passes), "redundancy", enabled=progress)

    def keep(found) -> None:
        positions, values, witnesses = found
        best[positions], witness[positions] = values, witnesses

    for groups in passes:
        if client is not None:
            _distributed_pass(client, X, groups, d, b, one_sided, best, device, keep, bar)
            continue
        for group in groups:
            rows = _Sorted(X, group, d, device)
            for s in range(0, len(group), b):
                keep(_best_larger(X, rows, s, b, one_sided, best))
                bar.update(min(b, len(group) - s))
    bar.close()
    d = d.numpy()
    best, witness = best.numpy(), witness.numpy()
    redundant = best > d * (1 + ops.tie_tolerance(X))  # a tie through rounding is not redundant
    witness[~redundant] = -1
    return Redundancy(
        redundant,
        witness,
        np.where(redundant, best, np.nan),
        d,
        one_sided=one_sided,
        within_class=within_class,
        indices=np.asarray(X.indices).copy(),
    )


class Witnesses(RowMax):
    """The search of :func:`redundant_samples` as a row reducer, to share a pass over the kernel
    with other reducers (:func:`lpntk.kernel.reduce_rows` of ``X`` with itself): each row's
    largest kappa(x, x') over the x' != x that the variant compares (all; a larger original
    index; the same label), and where it is (the first in the store's order among equal ones).
    After the pass, :meth:`redundancy` gives the result of :func:`redundant_samples`.

    >>> w = Witnesses(X)                              # doctest: +SKIP
    >>> reduce_rows(X, [w, RowCount(0.0)])            # doctest: +SKIP
    >>> w.redundancy(diagonal(X)).fraction             # doctest: +SKIP
    """

    def __init__(self, X: Features, one_sided: bool = False, within_class: bool = False):
        scalar_features(X, "redundancy", "cpu")
        self.one_sided, self.within_class = one_sided, within_class
        self.n, self.tolerance = X.n, ops.tie_tolerance(X)
        self.indices = np.asarray(X.indices).copy()
        self._labels = torch.as_tensor(np.asarray(X.labels)) if within_class else None
        self._index = torch.as_tensor(self.indices) if one_sided else None

    def start(self, n, dtype, rows=None):
        if n != self.n:
            raise ConfigError(
                f"these witnesses are of {self.n} samples; got a pass over {n}: feed them to "
                "the pass of their own features with themselves"
            )
        super().start(n, dtype, rows)

    def update(self, r0, k, c0):
        rows, cols = slice(r0, r0 + len(k)), slice(c0, c0 + k.shape[1])
        skip = None
        if self._labels is not None:
            skip = self._labels[rows, None] != self._labels[None, cols]
        if self._index is not None:
            smaller = self._index[None, cols] <= self._index[rows, None]
            skip = smaller if skip is None else skip | smaller
        super().update(r0, k if skip is None else k.masked_fill(skip, math.nan), c0)

    def redundancy(self, self_kappa) -> Redundancy:
        """The :class:`Redundancy` from the finished pass; ``self_kappa``: kappa(x, x) of every
        sample (:func:`lpntk.kernel.diagonal`)."""
        if not hasattr(self, "values"):
            raise ConfigError("no pass has fed these witnesses yet: reduce_rows(X, [witnesses])")
        d = torch.as_tensor(self_kappa).double().numpy()
        if d.shape != (self.n,):
            raise ConfigError(f"expected {self.n} values of kappa(x, x); got {d.shape}")
        best = self.values.double().numpy()
        redundant = best > d * (1 + self.tolerance)  # a tie through rounding is not redundant
        return Redundancy(
            redundant,
            np.where(redundant, self.argmax_position.numpy(), -1),
            np.where(redundant, best, np.nan),
            d,
            one_sided=self.one_sided,
            within_class=self.within_class,
            indices=self.indices.copy(),
        )


class _Sorted:
    """The samples ``group`` sorted by norm, largest first: their rows in memory on ``device``,
    squared norms, original indices and the per-piece bound plan."""

    def __init__(self, X: Features, group, d: torch.Tensor, device):
        self.order = torch.as_tensor(group)[torch.argsort(-d[group], stable=True)]
        self.rows = X.rows(self.order.numpy(), device)
        self.d = d[self.order].to(device)
        self.index = torch.as_tensor(X.indices)[self.order].to(device)
        self.split = _split(X, self.rows, device)


def _distributed_pass(client, X, groups, d, b, one_sided, best, device, keep, bar) -> None:
    """One pass of :func:`redundant_samples` as tasks: each worker sorts a group's rows once."""
    from ..kernel import distributed as dist

    ref, shared_d = reference(client, X), dist.share(client, d)
    futures = {}
    for g, group in enumerate(groups):
        shared_group = dist.share(client, group)
        order = torch.as_tensor(group)[torch.argsort(-d[group], stable=True)]
        for s in range(0, len(group), b):
            fut = client.submit(
                _redundancy_task,
                ref,
                shared_group,
                shared_d,
                s,
                b,
                one_sided,
                best[order[s : s + b]],
                str(device),
                key=f"lpntk-redundancy-{g}-{s}-{shared_d[0]}",
                retries=dist.RETRIES,
                pure=False,
            )
            futures[fut] = min(b, len(group) - s)

    def done(count, found):
        keep(found)
        bar.update(count)

    dist.run_tasks(client, futures, done, "the redundancy search")
    client.run(dist.forget, "sorted")  # the next pass sorts other groups


def _redundancy_task(ref, group, d, s, b, one_sided, row_best, device):
    from .._device import resolve_device
    from ..kernel import distributed as dist

    X, dev = open_features(ref), resolve_device(device)
    rows = dist.cached(
        ("sorted", group[0]), lambda: _Sorted(X, dist.unshare(group), dist.unshare(d), dev)
    )
    best = torch.full((X.n,), -math.inf, dtype=torch.float64)
    best[rows.order[s : s + b]] = row_best
    return _best_larger(X, rows, s, b, one_sided, best)


@dataclass
class _Split:
    """Pieces computed exactly in every block (``exact``) and the norms of the others, whose
    sum_p |x_p| |x'_p| bounds their part of kappa (``norms``, ``(N, len(bounded))``)."""

    exact: list
    norms: torch.Tensor
    margin: float  # relative rounding allowance, times |x| |x'|
    total: torch.Tensor  # |x|, for the margin


CPU_BLOCK = 1024  # rows per block on a CPU (LeNet-5, 60,000 images: 70 s against 95 s at 8,192)
TILE = 256  # rows and columns of the tiles in which the remaining entries are computed in full


def _split(X: Features, rows: dict, device) -> _Split | None:
    norms = piece_norms(X, rows, device)  # (N, pieces)
    bounded = ops.bound_plan(X, norms)
    if not bounded:
        return None
    exact = [i for i in range(len(X.pieces)) if i not in bounded]
    total = torch.sqrt((norms**2).sum(1)).to(X.dtype)
    return _Split(exact, norms[:, bounded].to(X.dtype), rounding_margin(X), total)


def _candidates(X, rx, ry, rows, cols, threshold, bad, split: _Split) -> torch.Tensor:
    """The block kappa(rows, cols) where it can reach ``threshold`` (per row) and is not ``bad``;
    -inf elsewhere. Exact pieces first, then the full kernel on the tiles that need it."""
    k = _shape(X, _block(X, rx, ry, split.exact))
    k += split.norms[rows] @ split.norms[cols].T
    k += split.margin * split.total[rows][:, None] * split.total[cols][None, :]
    need = (k >= threshold.to(k.dtype)[:, None]) & ~bad
    out = torch.full_like(k, -math.inf)
    for r0 in range(0, len(need), TILE):
        tiles = need[r0 : r0 + TILE]
        busy = torch.nonzero(tiles.any(0)).flatten()
        for c0 in torch.unique(busy // TILE).tolist():
            t = tiles[:, c0 * TILE : (c0 + 1) * TILE]
            ri = torch.nonzero(t.any(1)).flatten()
            ci = torch.nonzero(t.any(0)).flatten()
            sub_x = {key: v[r0 + ri] for key, v in rx.items()}
            sub_y = {key: v[c0 * TILE + ci] for key, v in ry.items()}
            full = _shape(X, _block(X, sub_x, sub_y))
            full = full.masked_fill(~t[ri][:, ci], -math.inf)
            out[(r0 + ri)[:, None], (c0 * TILE + ci)[None, :]] = full
    return out


def _best_larger(X, rows: _Sorted, s, b, one_sided, best) -> tuple:
    """For the rows ``s..s+b`` of the norm-sorted samples ``rows``, the largest kappa(row, j)
    over the samples j with d[j] >= d[row], j != row (and a larger original index when
    one-sided), where it beats ``best`` (a row's best so far, from an earlier pass). Returns
    ``(positions, values, witnesses)`` of the rows that found a better one. With a bound plan,
    values below both d[row] and the row's best so far are left out."""
    d, order, index, split = rows.d, rows.order, rows.index, rows.split
    rows = rows.rows
    e = min(s + b, len(d))
    # the columns that can matter: every sample at least as large as the block's smallest
    n_cols = int(torch.searchsorted(-d, -d[e - 1], right=True))
    active = torch.arange(s, e, device=d.device)
    positions = order[s:e]
    row_best = best[positions].to(d.device)
    row_arg = torch.full((e - s,), -1, dtype=torch.long, device=d.device)
    for c0 in range(0, n_cols, b):
        c1 = min(c0 + b, n_cols)
        rx = {k: v[active] for k, v in rows.items()}
        ry = {k: v[c0:c1] for k, v in rows.items()}
        cols = torch.arange(c0, c1, device=d.device)
        local = active - s
        bad = (d[c0:c1][None, :] < d[active][:, None]) | (cols[None, :] == active[:, None])
        if one_sided:
            bad |= index[c0:c1][None, :] <= index[active][:, None]
        if split is None:
            k = _shape(X, _block(X, rx, ry)).masked_fill_(bad, -math.inf)
        else:
            threshold = torch.maximum(row_best[local], d[active])
            k = _candidates(X, rx, ry, active, cols, threshold, bad, split)
        v, j = k.max(dim=1)
        v = v.double()
        better = v > row_best[local]
        row_best[local[better]] = v[better]
        row_arg[local[better]] = j[better] + c0
        if c1 >= n_cols:
            break
        # a row is settled when no later (smaller) column can beat its best (Cauchy-Schwarz)
        # or when all its candidates are behind it
        next_d = d[c1]
        still = (row_best[local] < torch.sqrt(d[active] * next_d)) & (next_d >= d[active])
        active = active[still]
        if len(active) == 0:
            break
    found = (row_arg >= 0).cpu()
    return positions[found], row_best.cpu()[found], order[row_arg.cpu()[found]]


def drop_redundant(red: Redundancy, rule: str = "cover", size: int | None = None) -> np.ndarray:
    """``(N,)`` bool: the samples to keep after dropping redundant ones, by ``rule``:

    - ``all``: drop every redundant sample (the paper's literal rule); a dropped sample's witness
      may itself be dropped.
    - ``cover``: visit samples by decreasing norm and drop a sample only when its witness is
      kept, so every dropped sample is represented by a kept one (witnesses have larger norms,
      so they are decided first).

    ``size`` (with ``cover``): keep exactly ``size`` samples, dropping the most redundant first,
    by kappa(x, witness) / kappa(x, x), again each only while its witness is kept (a witness of
    a dropped sample is never dropped); an error when fewer can be dropped.
    """
    if not isinstance(red, Redundancy):
        raise ConfigError(
            f"expected the Redundancy of redundant_samples; got {type(red).__name__}", param="red"
        )
    if rule not in RULES:
        raise ConfigError(
            f"unknown rule {rule!r}; expected one of {', '.join(RULES)}", param="rule"
        )
    if size is not None:
        check_size(rule, size, len(red.redundant))
        return _drop_to_size(red, size)
    if rule == "all":
        return ~red.redundant
    keep = np.ones(len(red.redundant), dtype=bool)
    for i in np.argsort(-red.self_kappa, kind="stable"):
        if red.redundant[i] and keep[red.witness[i]]:
            keep[i] = False
    return keep


def check_size(rule: str, size, n: int) -> None:
    """The checks of :func:`drop_redundant`'s ``size`` for ``n`` samples, before any search."""
    if rule != "cover":
        raise ConfigError(f"a size needs the cover rule; got {rule!r}", param="rule")
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise ConfigError(f"expected a number of samples in 1..{n}; got {size!r}", param="size")


def _greedy_drop(red: Redundancy, order: np.ndarray, count: int) -> np.ndarray:
    """Visit samples in ``order`` and drop up to ``count`` redundant ones, each only while its
    witness is kept, never one that witnesses a dropped sample; ``(N,)`` bool kept."""
    keep, needed = np.ones(len(red.redundant), dtype=bool), np.zeros(len(red.redundant), bool)
    for i in order:
        if count == 0:
            break
        if red.redundant[i] and keep[red.witness[i]] and not needed[i]:
            keep[i], needed[red.witness[i]] = False, True
            count -= 1
    return keep


def _drop_to_size(red: Redundancy, size: int) -> np.ndarray:
    """Keep ``size`` samples: the most redundant (kappa(x, witness) / kappa(x, x)) dropped first
    by :func:`_greedy_drop`. When that order blocks itself (a dropped witness keeps its own
    samples), drop instead from the largest set that can be dropped together, the samples whose
    witnesses are all kept: witnesses have larger norms (Cauchy-Schwarz), so the witness links form
    a forest, and visiting by increasing norm (leaves first) finds a largest such set; from it, the
    most redundant."""
    n, r = len(red.redundant), red.redundant
    ratio = np.full(n, -np.inf)
    ratio[r] = red.witness_kappa[r] / np.maximum(red.self_kappa[r], np.finfo(float).tiny)
    by_ratio = np.argsort(-ratio, kind="stable")
    keep = _greedy_drop(red, by_ratio, n - size)
    if keep.sum() == size:
        return keep
    droppable = ~_greedy_drop(red, np.argsort(red.self_kappa, kind="stable"), n)
    if droppable.sum() < n - size:
        raise ConfigError(
            f"at most {int(droppable.sum())} redundant samples can be dropped while their "
            f"witnesses are kept; expected a size of at least {n - int(droppable.sum())}",
            param="size",
        )
    keep = np.ones(n, dtype=bool)
    keep[[i for i in by_ratio if droppable[i]][: n - size]] = False
    return keep
