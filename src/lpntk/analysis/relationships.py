"""The three relationship types between samples (Sec. 3, App. C).

For a pair (u, o) the projection ratios are r_u = kappa(u, o) / kappa(u, u) and
r_o = kappa(u, o) / kappa(o, o), and the pair is

- *interchangeable* when both ratios are >= t (App. C.1, t in (1/2, 1]),
- *contradictory* when both are <= -t (App. C.3),
- *unrelated* when both |r_u| and |r_o| are <= eps (App. C.2, "approximately 0"),
- otherwise *mixed*.

Each comparison allows a typical rounding error (sqrt(entry length) x machine epsilon x
|u| |o|), so that a sample and its exact copy are interchangeable even at t = 1.

:func:`relationships` counts each sample's partners of each type, split into partners of the same
class and of other classes, and a class x class matrix of ordered pairs; one streamed pass over
the kernel (never N x N in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._errors import ConfigError
from .._frame import per_sample_frame
from ..kernel import Features, RowReducer, diagonal, ops, reduce_rows
from ._checks import scalar_features

TYPES = ("interchangeable", "contradictory", "unrelated")


@dataclass
class Relationships:
    """``counts[type]`` ``(N, 2)``: per sample (position), its partners of ``type`` in the same
    class (column 0) and in other classes (column 1). ``classes[type]`` ``(K, K)``: ordered pairs
    (u, o) of that type by the label of u (rows) and of o (columns); each unordered pair counts
    twice. ``t`` and ``eps`` are the thresholds used; ``indices`` the samples' original indices."""

    counts: dict
    classes: dict
    t: float
    eps: float
    indices: np.ndarray | None = None

    def to_frame(self):
        """:meth:`table` as one row per sample indexed by original index."""
        return per_sample_frame(self.indices, self.table())

    def table(self) -> dict:
        """The per-sample counts as flat columns, e.g. ``interchangeable_same``."""
        return {
            f"{kind}_{side}": self.counts[kind][:, i]
            for kind in TYPES
            for i, side in enumerate(("same", "other"))
        }


class _Counter(RowReducer):
    """Per block: the three masks from the ratios (as comparisons with kappa(u, u) and
    kappa(o, o), so no division), then per row the partners of each class by one product with
    the columns' one-hot labels; same class, other classes and the class matrix follow."""

    def __init__(
        self, diag: torch.Tensor, labels: torch.Tensor, t: float, eps: float, k: int, slack=0.0
    ):
        self.diag, self.labels, self.t, self.eps, self.k = diag, labels, t, eps, k
        self.slack = slack

    def start(self, n, dtype, rows=None):
        self.counts = torch.zeros(len(TYPES), self._rows(n, rows), 2, dtype=torch.long)
        self.classes = torch.zeros(len(TYPES), self.k, self.k, dtype=torch.long)
        self.diag = self.diag.to(dtype).clamp_min(torch.finfo(dtype).tiny)
        self.onehot = torch.nn.functional.one_hot(self.labels, self.k).to(dtype)

    def update(self, r0, k, c0):
        rows, cols = slice(r0, r0 + len(k)), slice(c0, c0 + k.shape[1])
        du, do = self.diag[rows, None], self.diag[None, cols]
        # both ratios >= t: kappa >= t max(du, do); both <= -t: kappa <= -t max(du, do);
        # both |ratio| <= eps: |kappa| <= eps min(du, do). NaN (a sample with itself) never counts.
        high, low = torch.maximum(du, do), torch.minimum(du, do)
        # rounding slack, times |u| |o|: an exact copy is interchangeable at t = 1 although
        # kappa(u, o) and kappa(u, u) are summed in different orders
        r = self.slack * torch.sqrt(du * do)
        masks = (k >= self.t * high - r, k <= -self.t * high + r, k.abs() <= self.eps * low + r)
        lu = self.labels[rows]
        own = torch.arange(len(k))
        held = slice(r0 - self.lo, r0 - self.lo + len(k))
        for i, mask in enumerate(masks):
            # (rows, K) partners by class: sums of at most one block's width of ones, exact
            per_class = (mask.to(k.dtype) @ self.onehot[cols]).round().long()
            same = per_class[own, lu]
            self.counts[i, held, 0] += same
            self.counts[i, held, 1] += per_class.sum(1) - same
            self.classes[i].index_add_(0, lu, per_class)

    def state(self):
        return self.counts, self.classes

    def merge(self, lo, state):
        counts, classes = state
        self.counts[:, lo - self.lo : lo - self.lo + counts.shape[1]] += counts
        self.classes += classes


def relationships(
    X: Features,
    t: float = 0.75,
    eps: float = 0.05,
    num_classes: int | None = None,
    memory: int | None = None,
    device="cpu",
    progress: bool = True,
    also=(),
    client=None,
) -> Relationships:
    """Count every sample's interchangeable, contradictory and unrelated partners in ``X`` (a
    scalar kind); see the module docstring. ``num_classes`` defaults to the largest label + 1.
    ``also``: more :class:`~lpntk.kernel.RowReducer` s fed the same blocks (one pass for all).
    ``client``: a ``dask.distributed.Client`` to run the pass on its workers (the same counts).

    >>> rel = relationships(feats, t=0.75)            # doctest: +SKIP
    >>> rel.counts["contradictory"][:, 1].argmax()   # doctest: +SKIP
    """
    if not 0.5 < t <= 1:
        raise ConfigError(f"expected a threshold in (1/2, 1] (App. C.1); got {t}", param="t")
    if not 0 <= eps < 0.5:
        raise ConfigError(f"expected a tolerance in [0, 1/2); got {eps}", param="eps")
    device = scalar_features(X, "relationships", device)
    labels = torch.tensor(np.asarray(X.labels, dtype=np.int64))
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    counter = _Counter(diagonal(X, memory, device), labels, t, eps, k, ops.tie_tolerance(X))
    reduce_rows(X, [counter, *also], memory=memory, device=device, progress=progress, client=client)
    return Relationships(
        {kind: counter.counts[i].numpy() for i, kind in enumerate(TYPES)},
        {kind: counter.classes[i].numpy() for i, kind in enumerate(TYPES)},
        t,
        eps,
        indices=np.asarray(X.indices).copy(),
    )
