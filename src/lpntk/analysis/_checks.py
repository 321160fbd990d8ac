"""Argument checks shared by the analyses."""

from __future__ import annotations

import torch

from .._device import resolve_device
from .._errors import ConfigError
from ..kernel import Features


def scalar_features(X, what: str, device="cpu") -> torch.device:
    """Raise unless ``X`` is a Features store of a scalar kind; return the resolved device."""
    if not isinstance(X, Features):
        raise ConfigError(
            f"{what} needs a Features store (from compute_features or Features.load); "
            f"got {type(X).__name__}",
            param="X",
        )
    if X.m != 1:
        raise ConfigError(f"{what} needs a scalar kernel (lpntk, pntk, loss), not entk")
    return resolve_device(device)
