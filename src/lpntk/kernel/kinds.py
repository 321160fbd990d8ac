"""Kernel kinds as "what to differentiate": the cotangent applied to the logits.

A kind turns a batch of logits ``(B, K)`` and labels ``(B,)`` into cotangents ``(B, m, K)``. Sample
``i``'s feature rows are ``c_ik^T dz(x_i)/dw`` for ``k < m``, and the kernel is their dot product:

- ``lpntk``: ``s(y) / sqrt(K)``, s = +1 at the label and -1 elsewhere (Eq. 3); m = 1.
- ``pntk``: the all-ones vector over ``sqrt(K)`` (Mohamadi & Sutherland, 2022); m = 1.
- ``loss``: the gradient of the cross-entropy w.r.t. the logits, ``softmax(z) - onehot(y)``; m = 1.
- ``entk``: the K unit vectors, giving the full K x K eNTK block of Eq. 1; m = K.

Adding a kind is a subclass with one method.
"""

from __future__ import annotations

import math

import torch

from .._errors import ConfigError


class Kind:
    """Base class. ``outputs(K)`` is the number m of feature rows per sample."""

    name = ""

    def outputs(self, num_classes: int) -> int:
        return 1

    def cotangents(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, m, K)`` cotangents for logits ``(B, K)`` and labels ``(B,)``."""
        raise NotImplementedError


class LpNTK(Kind):
    name = "lpntk"

    def cotangents(self, logits, labels):
        k = logits.shape[1]
        s = -torch.ones_like(logits)
        s[torch.arange(len(labels), device=labels.device), labels] = 1.0
        return (s / math.sqrt(k)).unsqueeze(1)


class PNTK(Kind):
    name = "pntk"

    def cotangents(self, logits, labels):
        return torch.full_like(logits, 1.0 / math.sqrt(logits.shape[1])).unsqueeze(1)


class LossGradient(Kind):
    name = "loss"

    def cotangents(self, logits, labels):
        g = torch.softmax(logits, dim=1)
        g[torch.arange(len(labels), device=labels.device), labels] -= 1.0
        return g.unsqueeze(1)


class ENTK(Kind):
    name = "entk"

    def outputs(self, num_classes):
        return num_classes

    def cotangents(self, logits, labels):
        b, k = logits.shape
        return torch.eye(k, dtype=logits.dtype, device=logits.device).expand(b, k, k)


KINDS: dict[str, type[Kind]] = {c.name: c for c in (LpNTK, PNTK, LossGradient, ENTK)}


def get_kind(kind: str | Kind) -> Kind:
    if isinstance(kind, Kind):
        return kind
    if kind not in KINDS:
        raise ConfigError(
            f"unknown kernel kind {kind!r}; expected one of {', '.join(KINDS)}", param="kind"
        )
    return KINDS[kind]()
