"""The torch device a method computes on: 'cpu', 'cuda' (or 'cuda:N'), or 'auto' (cuda when available)."""
from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve(name: str) -> torch.device:
    """torch.device for a config's `device` option; a clear ConfigError when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here; use device=cpu (or auto)")
    return dev
