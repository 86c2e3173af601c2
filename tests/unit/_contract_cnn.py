"""A tiny CNN for the method contract test, importable as an --arch factory (tests/unit/_contract_cnn.py:build)."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv-BN-ReLU x2 with a residual-free chain, pool, linear: what the CNN methods all handle."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def build() -> TinyCNN:
    torch.manual_seed(0)
    m = TinyCNN().eval()
    with torch.no_grad():
        for b in (m.b1, m.b2):
            b.running_mean.uniform_(-0.3, 0.3)
            b.running_var.uniform_(0.5, 1.5)
    return m
