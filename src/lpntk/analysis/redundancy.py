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

from .._errors import ConfigError
from .._progress import progress as progress_bar
from ..kernel import Features, block_size, diagonal, kernel_block

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

    >>> r = redundant_samples(feats)                  # doctest: +SKIP
    >>> r.fraction, X.indices[r.witness[r.redundant]]  # doctest: +SKIP
    """
    if X.m != 1:
        raise ConfigError("redundancy needs a scalar kernel (lpntk, pntk, loss), not entk")
    d = diagonal(X, memory, device).double().numpy()
    witness = np.full(X.n, -1, dtype=np.int64)
    best = np.full(X.n, -math.inf)
    groups = [np.arange(X.n)]
    if within_class:
        groups = [np.flatnonzero(X.labels == c) for c in np.unique(X.labels)]
    b = block_size(X, memory, device)
    bar = progress_bar(X.n, "redundancy", enabled=progress)
    for group in groups:
        order = group[np.argsort(-d[group], kind="stable")]  # largest norm first
        for s in range(0, len(order), b):
            rows = order[s : s + b]
            _best_larger(X, d, rows, order, one_sided, b, best, witness, device)
            bar.update(len(rows))
    bar.close()
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


def _best_larger(X, d, rows, order, one_sided, b, best, witness, device) -> None:
    """For ``rows`` (positions, norms descending), the largest kappa(row, j) over the samples j
    of ``order`` with d[j] >= d[row], j != row (and a larger original index when one-sided)."""
    # the columns that can matter: every sample at least as large as the block's smallest
    n_cols = int(np.searchsorted(-d[order], -d[rows].min(), side="right"))
    norm_rows = np.sqrt(d[rows])
    active = np.arange(len(rows))
    for c0 in range(0, n_cols, b):
        cols = order[c0 : min(c0 + b, n_cols)]
        r = rows[active]
        k = kernel_block(X, r, Y=None, cols=cols, device=device).double().cpu().numpy()
        bad = (d[cols][None, :] < d[r][:, None]) | (cols[None, :] == r[:, None])
        if one_sided:
            bad |= X.indices[cols][None, :] <= X.indices[r][:, None]
        k[bad] = -math.inf
        j = k.argmax(axis=1)
        v = k[np.arange(len(r)), j]
        better = v > best[r]
        best[r[better]] = v[better]
        witness[r[better]] = cols[j[better]]
        if c0 + b >= n_cols:
            break
        # a row is settled when no later (smaller) column can beat its best (Cauchy-Schwarz)
        # or when all its candidates are behind it
        next_norm = math.sqrt(d[order[c0 + b]])
        open_ = (best[r] < norm_rows[active] * next_norm) & (d[order[c0 + b]] >= d[r])
        active = active[open_]
        if len(active) == 0:
            break


def drop_redundant(red: Redundancy, rule: str = "cover") -> np.ndarray:
    """``(N,)`` bool: the samples to keep after dropping redundant ones, by ``rule``:

    - ``all``: drop every redundant sample (the paper's literal rule); a dropped sample's witness
      may itself be dropped.
    - ``cover``: visit samples by decreasing norm and drop a sample only when its witness is
      kept, so every dropped sample is represented by a kept one (witnesses have larger norms,
      so they are decided first).
    """
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
