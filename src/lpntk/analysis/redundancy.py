"""Redundant samples (Sec. 4.2, App. E.1) and which of them to drop.

A sample x is *redundant* when some other sample x' has kappa(x, x') > kappa(x, x); its
*witness* is the x' with the largest kappa(x, x'). By Cauchy-Schwarz, kappa(x, x') <= |x| |x'|,
so a witness has a larger norm than its sample: each row needs only the columns of larger norm,
visited from the largest norm down, and a row stops as soon as no remaining column can beat its
best (its best >= |x| times the largest remaining norm). Never N x N in memory.

Variants: ``two_sided`` (the default) compares every sample with every other; ``one_sided``
compares sample i only with samples of a larger original index, as the paper's public code did;
``within_class`` compares samples of the same label only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._errors import ConfigError
from .._progress import progress as progress_bar
from ..kernel import Features, block_size, diagonal
from ..kernel.ops import _block, _shape
from ._checks import scalar_features

RULES = ("all", "cover")


@dataclass
class Redundancy:
    """Per sample, in the order of the feature store (positions):

    ``redundant`` ``(N,)`` bool; ``witness`` ``(N,)`` the witness's position (-1 when not
    redundant); ``witness_kappa`` kappa(x, witness) (NaN when not redundant); ``self_kappa``
    kappa(x, x). ``one_sided`` and ``within_class`` record the variant.
    """

    redundant: np.ndarray
    witness: np.ndarray
    witness_kappa: np.ndarray
    self_kappa: np.ndarray
    one_sided: bool = False
    within_class: bool = False

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
) -> Redundancy:
    """The redundant samples of ``X`` (a scalar kind) and their witnesses; see the module doc.
    The feature rows are held in memory once, sorted by norm.

    >>> r = redundant_samples(feats)                  # doctest: +SKIP
    >>> r.fraction, X.indices[r.witness[r.redundant]]  # doctest: +SKIP
    """
    device = scalar_features(X, "redundancy", device)
    d = diagonal(X, memory, device).double()
    best = torch.full((X.n,), -math.inf, dtype=torch.float64)
    witness = torch.full((X.n,), -1, dtype=torch.long)
    groups = [np.arange(X.n)]
    if within_class:
        groups = [np.flatnonzero(X.labels == c) for c in np.unique(X.labels)]
    b = block_size(X, memory, device)
    bar = progress_bar(X.n, "redundancy", enabled=progress)
    for group in groups:
        order = torch.as_tensor(group)[torch.argsort(-d[group], stable=True)]  # largest first
        sorted_rows = X.rows(order.numpy(), device)
        sorted_d = d[order].to(device)
        index = torch.as_tensor(X.indices)[order].to(device)
        for s in range(0, len(order), b):
            _best_larger(X, sorted_rows, sorted_d, index, s, b, one_sided, order, best, witness)
            bar.update(min(b, len(order) - s))
    bar.close()
    d = d.numpy()
    best, witness = best.numpy(), witness.numpy()
    redundant = best > d
    witness[~redundant] = -1
    return Redundancy(
        redundant,
        witness,
        np.where(redundant, best, np.nan),
        d,
        one_sided=one_sided,
        within_class=within_class,
    )


def _best_larger(X, rows, d, index, s, b, one_sided, order, best, witness) -> None:
    """For the rows ``s..s+b`` of the norm-sorted arrays, the largest kappa(row, j) over the
    samples j with d[j] >= d[row], j != row (and a larger original index when one-sided)."""
    e = min(s + b, len(d))
    # the columns that can matter: every sample at least as large as the block's smallest
    n_cols = int(torch.searchsorted(-d, -d[e - 1], right=True))
    active = torch.arange(s, e, device=d.device)
    row_best = torch.full((e - s,), -math.inf, dtype=torch.float64, device=d.device)
    row_arg = torch.full((e - s,), -1, dtype=torch.long, device=d.device)
    for c0 in range(0, n_cols, b):
        c1 = min(c0 + b, n_cols)
        rx = {k: v[active] for k, v in rows.items()}
        ry = {k: v[c0:c1] for k, v in rows.items()}
        k = _shape(X, _block(X, rx, ry))
        cols = torch.arange(c0, c1, device=d.device)
        bad = (d[c0:c1][None, :] < d[active][:, None]) | (cols[None, :] == active[:, None])
        if one_sided:
            bad |= index[c0:c1][None, :] <= index[active][:, None]
        v, j = k.masked_fill_(bad, -math.inf).max(dim=1)
        v = v.double()
        local = active - s
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
    found = row_arg >= 0
    positions = order[s:e]
    best[positions] = row_best.cpu()
    witness[positions[found.cpu()]] = order[row_arg[found].cpu()]


def drop_redundant(red: Redundancy, rule: str = "cover") -> np.ndarray:
    """``(N,)`` bool: the samples to keep after dropping redundant ones, by ``rule``:

    - ``all``: drop every redundant sample (the paper's literal rule); a dropped sample's witness
      may itself be dropped.
    - ``cover``: visit samples by decreasing norm and drop a sample only when its witness is
      kept, so every dropped sample is represented by a kept one (witnesses have larger norms,
      so they are decided first).
    """
    if not isinstance(red, Redundancy):
        raise ConfigError(
            f"expected the Redundancy of redundant_samples; got {type(red).__name__}", param="red"
        )
    if rule not in RULES:
        raise ConfigError(
            f"unknown rule {rule!r}; expected one of {', '.join(RULES)}", param="rule"
        )
    if rule == "all":
        return ~red.redundant
    keep = np.ones(len(red.redundant), dtype=bool)
    for i in np.argsort(-red.self_kappa, kind="stable"):
        if red.redundant[i] and keep[red.witness[i]]:
            keep[i] = False
    return keep
