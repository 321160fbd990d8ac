"""Device names: "auto", "cpu", "cuda", "cuda:1", ... checked once, with a clear error."""

from __future__ import annotations

import torch

from ._errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device that ``device`` names; "auto" is CUDA when available, else the CPU."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N", param="device"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"device {device!r} is not supported; expected auto, cpu, cuda or cuda:N",
            param="device",
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was asked for but no CUDA device is available; use cpu",
                param="device",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s), cuda:0..",
                param="device",
            )
    return dev
