"""Samples whose label disagrees with the samples that look like them: a label-error score and
a suggested label, from the eNTK features of one trained model.

The lpNTK of two labelled samples is ``s(y)^T Theta(x, x') s(y') / K`` with ``Theta`` the K x K
eNTK block (Eq. 3), so one eNTK store gives the lpNTK of every sample under *every* label, not
only its own. For sample i:

1. its ``k`` (default 40) nearest other samples j under the label-free pNTK (cosine), with weights
   ``w_ij`` = that cosine, clipped at 0;
2. the agreement of each candidate label c with them: ``A_i(c)``, the weighted mean over j of
   the lpNTK cosine between ``(x_i, c)`` and ``(x_j, y_j)``;
3. scores (larger: more suspect):

   - ``agreement``: ``max_{c != y_i} A_i(c) - A_i(y_i)``, how much better the best other
     label agrees with the neighbours than the given one;
   - ``contradiction``: ``-A_i(y_i)``, the contradiction mass of the given label alone (no
     other label is consulted; Sec. 3's contradictory pairs, as a continuous score);
   - ``vote`` (the default ``score``): the weighted share of the neighbours whose label
     differs from ``y_i`` (a nearest-neighbour vote under the pNTK: the labels, but not the
     labelled kernel).

The suggested label is ``argmax_{c != y_i} A_i(c)`` (the labelled kernel's answer to "which
label would agree with the neighbours") and its score ``A_i(c)``, whatever the design. A sample
with non-finite features (a diverged model) gets NaN scores and ranks last; it carries no weight
as a neighbour. The
defaults (``vote``, k = 40) were chosen on a development noise setting that the benchmark does
not use, where ``vote`` had the best AUROC and average precision under both noise kinds from
k = 20 on, and k = 40 to 160 tied; docs/RESULTS.md, "Finding mislabelled samples".

Cost: one pNTK nearest-neighbour pass (a scalar kernel's row reduction), then ``N k`` products
``Theta(x_i, x_j) s(y_j)`` of a sample's eNTK rows with its neighbours' label-signed rows (each
sample's eNTK rows read once: :func:`~lpntk.kernel.ops.neighbour_kernel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._errors import ConfigError
from .._frame import per_sample_frame
from ..kernel import Features, RowTopK, diagonal, reduce_rows
from ..kernel.ops import contract, neighbour_kernel

DESIGNS = ("agreement", "contradiction", "vote")
DESIGN, NEIGHBOURS = "vote", 40  # the defaults, chosen on the development setting (module doc)


@dataclass
class LabelIssues:
    """Per sample, in the order of the feature store (positions):

    ``score`` ``(N,)`` the chosen design's label-error score (larger: more suspect);
    ``scores`` every design's score by name; ``suggested`` the best other label and
    ``suggested_score`` its agreement ``A_i(c)``; ``given_score`` ``A_i(y_i)``; ``agreement``
    ``(N, K)`` ``A_i(c)`` for every label; ``rank`` 1 for the most suspect sample;
    ``neighbours`` ``(N, k)`` positions (-1 where fewer) and ``weights`` their pNTK cosines.
    """

    indices: np.ndarray
    labels: np.ndarray
    score: np.ndarray
    scores: dict
    suggested: np.ndarray
    suggested_score: np.ndarray
    given_score: np.ndarray
    agreement: np.ndarray
    rank: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    design: str
    k: int

    def top(self, count: int) -> np.ndarray:
        """Positions of the ``count`` most suspect samples, most suspect first."""
        return np.argsort(self.rank, kind="stable")[:count]

    def to_frame(self):
        """One row per sample indexed by original index: ``label`` and :meth:`table`."""
        return per_sample_frame(self.indices, {"label": self.labels, **self.table()})

    def table(self) -> dict:
        """Columns for a per-sample table (store order)."""
        cols = {
            "label_error_score": self.score,
            "label_error_rank": self.rank,
            "suggested_label": self.suggested,
            "suggested_agreement": self.suggested_score,
            "given_agreement": self.given_score,
        }
        cols.update({f"label_error_{d}": v for d, v in self.scores.items()})
        return cols


def lpntk_of(X: Features, labels=None) -> Features:
    """The lpNTK features of ``labels`` (default: the samples' own) from eNTK features, exact
    (see :func:`~lpntk.kernel.ops.contract`)."""
    labels = X.labels if labels is None else np.asarray(labels)
    s = -np.ones((X.n, X.m))
    s[np.arange(X.n), labels] = 1.0
    return contract(X, s / math.sqrt(X.m), "lpntk")


def rank_of(score: np.ndarray) -> np.ndarray:
    """1 for the largest score, ties broken by position (NaN last)."""
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank


def label_issues(
    X: Features,
    k: int = NEIGHBOURS,
    design: str = DESIGN,
    memory: int | None = None,
    device="cpu",
    progress: bool = True,
    client=None,
) -> LabelIssues:
    """Label-error scores and suggested labels of the samples of ``X``, eNTK features (kind
    ``entk``) of a trained model on its labelled training samples; see the module doc.

    >>> E = compute_features(model, train_set, "entk")   # doctest: +SKIP
    >>> li = label_issues(E)                             # doctest: +SKIP
    >>> E.indices[li.top(50)], li.suggested[li.top(50)]  # doctest: +SKIP
    """
    if not isinstance(X, Features):
        raise ConfigError(
            f"label issues need a Features store of kind entk; got {type(X).__name__}", param="X"
        )
    if X.m == 1:
        raise ConfigError(
            f"label issues need eNTK features (kind entk: every class's gradient, to score "
            f"every label); got kind {X.kind}",
            param="kind",
        )
    if design not in DESIGNS:
        raise ConfigError(
            f"unknown design {design!r}; expected one of {', '.join(DESIGNS)}", param="design"
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"expected a number of neighbours >= 1; got {k!r}", param="k")
    if X.n < 2:
        raise ConfigError(f"label issues need at least 2 samples; got {X.n}", param="X")
    n, K = X.n, X.m
    labels = np.asarray(X.labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= K:
        raise ConfigError(
            f"labels must lie in 0..{K - 1} (the model's {K} classes); got {labels.min()}.."
            f"{labels.max()}",
            param="labels",
        )
    k = int(min(k, n - 1))
    signs = 2 * torch.eye(K, dtype=torch.float64) - 1  # row c: s(c)
    theta = diagonal(X, memory, device).double().cpu()  # (N, K, K)
    # |s(c)|_Theta_ii for every sample and label, and the pNTK norms, from the diagonal blocks
    norm_c = torch.einsum("ck,nkl,cl->nc", signs, theta, signs).clamp_min(0).sqrt()
    pntk_norm = theta.sum((1, 2)).clamp_min(0).sqrt() / math.sqrt(K)

    # 1. nearest neighbours under the pNTK cosine: features scaled by 1 / |phi_pntk(x)|
    scale = torch.where(pntk_norm > 0, 1.0 / (math.sqrt(K) * pntk_norm), 0.0)
    cosine = contract(X, scale[:, None].expand(n, K).numpy(), "pntk", memory)
    (top,) = reduce_rows(
        cosine, [RowTopK(k)], memory=memory, device=device, progress=progress, client=client
    )
    nbr, w = top.positions.numpy(), top.values.double().numpy()
    w = np.where(nbr >= 0, np.clip(np.nan_to_num(w, nan=0.0), 0.0, None), 0.0)

    # 2. agreement of every label with the neighbours: u_ij = Theta_ij s(y_j), each row read once
    partners = np.where(nbr >= 0, nbr, np.arange(n)[:, None])  # missing ones get weight 0
    signed = contract(X, signs[labels].numpy(), "signed", memory)  # rows s(y_j)^T dz(x_j)/dw
    u = neighbour_kernel(X, partners, signed, memory, device, progress).double().cpu()
    num = torch.einsum("ck,nkt->nct", signs, u).numpy()  # s(c)^T Theta_ij s(y_j): (N, K, k)
    den = norm_c.numpy()[:, :, None] * norm_c.numpy()[partners, labels[partners]][:, None, :]
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    total = w.sum(1)
    agreement = np.einsum("nct,nt->nc", cos, w) / np.where(total > 0, total, 1.0)[:, None]

    # 3. scores
    given = agreement[np.arange(n), labels]
    others = agreement.copy()
    others[np.arange(n), labels] = -np.inf
    suggested = others.argmax(1)
    best_other = others[np.arange(n), suggested]
    differ = ((labels[np.maximum(nbr, 0)] != labels[:, None]) & (nbr >= 0)) * w
    vote = np.where(total > 0, differ.sum(1) / np.where(total > 0, total, 1.0), 0.0)
    scores = {"agreement": best_other - given, "contradiction": -given, "vote": vote}
    broken = ~torch.isfinite(theta).all(2).all(1).numpy()  # non-finite features: no score
    if broken.any():
        scores = {d: np.where(broken, np.nan, v) for d, v in scores.items()}
    score = scores[design]
    return LabelIssues(
        indices=np.asarray(X.indices).copy(),
        labels=labels,
        score=score,
        scores=scores,
        suggested=suggested,
        suggested_score=best_other,
        given_score=given,
        agreement=agreement,
        rank=rank_of(score),
        neighbours=nbr,
        weights=w,
        design=design,
        k=k,
    )
