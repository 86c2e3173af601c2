"""A small CNN edgekit has never seen, loaded by file path (`--arch tests/cli/own_cnn.py:build --arch-args width=8`):
its factory needs an argument, and it lives outside any package on the import path."""
from __future__ import annotations

import torch
from torch import nn


class OwnCNN(nn.Module):
    """conv-BN-ReLU x2 -> pool -> linear; `width` sets the channels."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def build(width: int, classes: int = 10) -> OwnCNN:
    """The factory --arch names; no default for `width`, so calling it bare must fail with a clear line."""
    return OwnCNN(width, classes).eval()


def trained(width: int = 8, seed: int = 0) -> OwnCNN:
    """Weights with spread-out logits (random init gives near-ties, which makes top-1 agreement pure noise)."""
    g = torch.Generator().manual_seed(seed)
    m = build(width)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d):
                b.running_mean.uniform_(-0.2, 0.2, generator=g)
                b.running_var.uniform_(0.5, 1.5, generator=g)
    return m.eval()
